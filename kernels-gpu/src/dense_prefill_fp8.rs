//! The dense flash prefill in FP8 e4m3 (`shared/spec/dense-prefill.md`:
//! "bf16 and FP8 e4m3 Q/K/V with per-tensor f32 scales"): the bf16 kernel's
//! scheduler, masks, online softmax, ping-pong and epilogue
//! ([`crate::dense_prefill`]) on e4m3 tiles (one 128-byte swizzle span a
//! row) with e4m3 `wgmma` (k32, f32 accumulation).
//!
//! Two key-tile widths, as in bf16: [`DP_BLOCK_N`] = 128 keys (every K/V
//! layout) and [`DP8_WIDE_N`] = 192 (the `_wide` kernels, contiguous K/V).
//!
//! - **producer** warp 0 (warpgroup 0): Q, K and V tiles by TMA, as in bf16;
//! - **transposers**, warps 1–3: each V stage into a transposed copy Vᵀ (a
//!   row per dim, the keys along it), since an e4m3 `wgmma` takes its B
//!   operand K-major only (FlashAttention-3 transposes in the kernel too).
//!   Keys past the sequence's end are written as zeros, so garbage in a
//!   page's tail cannot give NaN. Inside each 16-key group the keys are
//!   stored in the order the S accumulator holds them ([`transpose_v`]),
//!   so P goes from the S registers to the A operand of P V by rounding
//!   alone;
//! - **consumers**: S = Q Kᵀ (both operands in shared memory; bf16 queries
//!   are quantised row by row to e4m3 in place first,
//!   [`quantize_rows`]), the online softmax with `scale · q_descale ·
//!   k_descale` (times the row's factor) in the exponent, P rounded
//!   to e4m3 for O += P V (the row sums add the unrounded f32 P, as
//!   FlashAttention-3 does; the reference's tolerance bounds the rounding),
//!   and the epilogue multiplies by `v_descale`.

use core::mem::size_of;

use sparse_attn_abi::dense::*;

use crate::arch::*;
use crate::dense_prefill::{
    consume, produce, schedule, Acc, Dst, Operands, QTile, Stages, Tile, Work,
};
use crate::tile::pipeline::MbarRing;
use crate::tile::swizzle::{Slabs128, TileLayout};

/// A Vᵀ stage: 128 dim rows of 128-key spans (`Slabs128`'s slabs: keys
/// 0..128, then 128..256 of which the wide kernel uses 192; a k32 step is
/// 32 bytes of a span, as a bf16 k16 step). Q and K tiles are one slab of
/// their rows ([`QTile`], [`Tile`]).
type VtTile = Slabs128<128>;
/// The K, V and Vᵀ rings.
type Ring = MbarRing<DP8_STAGES>;
/// Consumer warps: each arrives once on a K or Vᵀ stage's empty barrier.
const CONSUMER_WARPS: u32 = DP_CONSUMERS * 4;

/// Shared memory of the kernel.
#[repr(C)]
struct Smem {
    /// e4m3 queries use the first half; bf16 queries both (two slabs).
    q: [u8; 2 * DP8_TILE_BYTES as usize],
    /// `DP8_STAGES` stages of `BN · 128` bytes (the wide kernel's size).
    k: [u8; (DP8_STAGES * DP8_WIDE_N * DP_HEAD_DIM) as usize],
    v: [u8; (DP8_STAGES * DP8_WIDE_N * DP_HEAD_DIM) as usize],
    /// `DP8_STAGES` stages of `BN.div_ceil(128) · 16 KiB`.
    vt: [u8; (DP8_STAGES * DP8_WIDE_VT_BYTES) as usize],
    q_full: u64,
    k_full: [u64; DP8_STAGES as usize],
    k_empty: [u64; DP8_STAGES as usize],
    v_full: [u64; DP8_STAGES as usize],
    v_empty: [u64; DP8_STAGES as usize],
    vt_full: [u64; DP8_STAGES as usize],
    vt_empty: [u64; DP8_STAGES as usize],
}
const _: () = assert!(size_of::<Smem>() as u32 <= DP8_SMEM);

/// The K ring (TMA → consumers), the V ring (TMA → transposers) and the
/// Vᵀ ring (transposers → consumers).
#[inline(always)]
fn rings() -> (Ring, Ring, Ring) {
    let k = Ring {
        full: crate::smem_addr!(Smem, k_full),
        empty: crate::smem_addr!(Smem, k_empty),
    };
    let v = Ring {
        full: crate::smem_addr!(Smem, v_full),
        empty: crate::smem_addr!(Smem, v_empty),
    };
    let t = Ring {
        full: crate::smem_addr!(Smem, vt_full),
        empty: crate::smem_addr!(Smem, vt_empty),
    };
    (k, v, t)
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill_fp8(p: DensePrefillFp8Params) {
    run::<false, DP_BLOCK_N, 16>(&p);
}

/// [`dense_prefill_fp8`] on bf16 queries (`q` is `bf16 [num_rows, n_heads,
/// 128]`, `q_descale` is not read) against e4m3 K and V: each query row is
/// quantised to e4m3 in the kernel ([`E4m3::load_q`]).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill_fp8_qbf16(p: DensePrefillFp8Params) {
    run::<true, DP_BLOCK_N, 16>(&p);
}

/// [`dense_prefill_fp8`] with key tiles of [`DP8_WIDE_N`] keys, on
/// contiguous K/V (`page_size` 0).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill_fp8_wide(p: DensePrefillFp8Params) {
    run::<false, DP8_WIDE_N, 24>(&p);
}

/// [`dense_prefill_fp8_qbf16`] with key tiles of [`DP8_WIDE_N`] keys, on
/// contiguous K/V.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill_fp8_qbf16_wide(p: DensePrefillFp8Params) {
    run::<true, DP8_WIDE_N, 24>(&p);
}

/// The kernel on e4m3 (`QBF16` false) or bf16 queries, key tiles of `BN =
/// 8 NT` keys.
#[inline(always)]
unsafe fn run<const QBF16: bool, const BN: u32, const NT: usize>(p: &DensePrefillFp8Params)
where
    [[f32; 4]; NT]: ScoreAcc,
{
    const { assert!(BN as usize == 8 * NT && BN % 32 == 0 && BN <= DP8_WIDE_N) };
    grid_prologue();
    let Some(w) = schedule::<BN>(&p.base) else {
        return;
    };
    let (kr, vr, tr) = rings();
    if thread_idx_x() == 0 {
        mbarrier_init(crate::smem_addr!(Smem, q_full), 1);
        kr.init(CONSUMER_WARPS);
        vr.init(DP8_TRANSPOSERS);
        tr.init_counts(DP8_TRANSPOSERS, CONSUMER_WARPS);
        fence_mbarrier_init();
    }
    sync_threads();
    let wg = warp_id_uniform() / 4;
    if wg == 0 {
        setmaxnreg_dec::<DP8_PRODUCER_REGS>();
        if warp_id() == 0 {
            let at = Dst {
                q: crate::smem_addr!(Smem, q),
                k: crate::smem_addr!(Smem, k),
                v: crate::smem_addr!(Smem, v),
            };
            let q_full = crate::smem_addr!(Smem, q_full);
            if QBF16 {
                produce::<2, 1, DP8_STAGES, BN>(&p.base, &w, at, q_full, &kr, &vr);
            } else {
                produce::<1, 1, DP8_STAGES, BN>(&p.base, &w, at, q_full, &kr, &vr);
            }
        } else {
            transpose_v::<BN>(&w, thread_idx_x() - 32);
        }
        return;
    }
    setmaxnreg_inc::<DP8_CONSUMER_REGS>();
    consume_fp8::<QBF16, BN, NT>(p, &w, wg - 1);
}

// ------------------------------------------------------------------ transposers

/// Transposer thread `x` (0 .. [`DP8_TRANSPOSERS`]): every V stage of the
/// CTA (`BN` keys) into its Vᵀ stage. Inside each 16-key group of Vᵀ,
/// position `2p + b` holds key `p + 8b`: the pair of positions a lane quad
/// `t` fills in the A operand of P V (`4t .. 4t + 4`) then holds keys `2t,
/// 2t + 8, 2t + 1, 2t + 9`, two f32 of the S accumulator each
/// ([`E4m3::pack_p`]), and two keys 8 apart are one b16 element here.
///
/// A unit is 32 keys (`32 s ..`, one k32 step of P V) × 16 dims (`16 c ..`),
/// 512 bytes: [`ldmatrix_x4`] gives lane `l` dims `16c + 4 (l % 4) ..` of
/// keys `32 s + 8 m + l / 4` in register `m`; two byte permutes pair keys
/// `k`, `k + 8` dim by dim into b16 elements; [`stmatrix_x4_trans`] writes
/// them as dim rows (matrix row `j` of a pair of matrices is dim `4 (j / 2)
/// + j % 2`, `+ 2` for the second of the pair). Warp `w` takes the dim
/// chunks `c = w, w + 3, ..` and every step `s` of each, unrolled, so a
/// unit's addresses are the chunk's plus constants: about 9 instructions a
/// unit, against 70 for the 4 × 4-byte word transpose this replaced, whose
/// issue slots the consumer warps on the same sub-partitions lacked
/// (BENCHMARKS.md, 2026-12-07 fourth session). Keys past the sequence's end
/// (the last tile only) are zeroed in the V stage first
/// ([`transpose_stage`]), so garbage in a page's tail cannot give NaN. The
/// loads are free of bank conflicts; the stores' 8 dim rows fall on 4
/// swizzle phases (2-way: removing it measured no faster).
#[inline(always)]
unsafe fn transpose_v<const BN: u32>(w: &Work, x: u32) {
    let (v_stage, t_stage) = (BN * DP_HEAD_DIM, BN.div_ceil(128) * DP8_TILE_BYTES);
    let (_, vr, tr) = rings();
    let (vs, ts) = (crate::smem_addr!(Smem, v), crate::smem_addr!(Smem, vt));
    let (warp, lane) = (x / 32, x % 32);
    for i in 0..w.n1 - w.n0 {
        let (vsi, tsi) = (vs + (i % DP8_STAGES) * v_stage, ts + (i % DP8_STAGES) * t_stage);
        let live = w.t.num_keys.saturating_sub((w.n0 + i) * BN);
        vr.wait(i);
        tr.wait_free(i);
        transpose_stage::<BN>(vsi, tsi, live, warp, lane);
        fence_proxy_async_shared();
        vr.release(i);
        tr.post(i);
    }
}

/// Warp `warp`'s units of one stage ([`transpose_v`]). In the last tile,
/// the warp first zeroes its own chunks of the V rows `live ..` (no other
/// warp reads them; a branch in the unrolled units instead got its 16
/// comparisons hoisted into a register's bits, and spilled).
#[inline(always)]
unsafe fn transpose_stage<const BN: u32>(vsi: u32, tsi: u32, live: u32, warp: u32, lane: u32) {
    let chunks = || (warp..DP_HEAD_DIM / 16).step_by((DP8_TRANSPOSERS / 32) as usize);
    if live < BN {
        let mut key = live + lane;
        while key < BN {
            for c in chunks() {
                st_shared_zero16(vsi + Tile::<BN>::at(key, c % 8));
            }
            key += 32;
        }
        sync_warp();
    }
    // Stores: lane `l` gives the row of matrix `l / 8` (16-key group `h`,
    // dims `+ 2 (m % 2)`), row `l % 8`. Its 16-byte chunk in the row, `(2s
    // + h) ^ (dm % 8)` ([`VtTile`]'s swizzle), is `2s ^ q`.
    let (m, j) = (lane / 8, lane % 8);
    let (h, dm) = (m / 2, 4 * (j / 2) + 2 * (m % 2) + j % 2);
    let q = h ^ (dm % 8);
    for c in chunks() {
        // Key `32 s + lane` of chunk `c` (the swizzle phase is the lane's;
        // `c % 8`: the one slab of a 128-byte row, which the compiler then
        // knows).
        let ld = vsi + Tile::<BN>::at(lane, c % 8);
        // `VtTile::at(16c + dm, 2s + h)` is `st` plus `chunk` below.
        let st = tsi + (16 * c + dm) * 128;
        crate::unroll_to!(BN as usize / 32, S => {
            transpose_unit(ldmatrix_x4(ld + 32 * 128 * S as u32), st, S as u32, q);
        });
    }
}

/// Pairs keys `k`, `k + 8` of the unit's registers `r` into b16 elements
/// and stores them as step `s`'s dim rows from `st` ([`transpose_stage`]).
#[inline(always)]
unsafe fn transpose_unit(r: [u32; 4], st: u32, s: u32, q: u32) {
    let u = [
        prmt(r[0], r[1], 0x5140),
        prmt(r[0], r[1], 0x7362),
        prmt(r[2], r[3], 0x5140),
        prmt(r[2], r[3], 0x7362),
    ];
    let chunk = (2 * s / 8) * VtTile::SLAB_BYTES + (((2 * s % 8) ^ q) << 4);
    stmatrix_x4_trans(st + chunk, u);
}

// ------------------------------------------------------------------ consumers

/// e4m3 operands: 4 k32 steps for S, `NT / 4` for P V (from the Vᵀ
/// stages). Q is e4m3, or bf16 (`QBF16`) quantised here.
struct E4m3<const QBF16: bool>;

/// Q as the A operand of S.
#[derive(Clone, Copy)]
struct Query {
    /// The shared address of the warpgroup's e4m3 rows.
    smem: u32,
    /// This thread's two rows' factors that undo the quantisation of bf16
    /// queries ([`quantize_rows`]; 1 for e4m3 queries).
    row_scale: [f32; 2],
}

impl<const QBF16: bool, const BN: u32, const NT: usize> Operands<BN, NT> for E4m3<QBF16>
where
    [[f32; 4]; NT]: ScoreAcc,
{
    /// A fragment `ks` is words `4 ks .. 4 ks + 4` ([`E4m3::pack_p`]).
    type P = [u32; NT];
    type Q = Query;
    const K_STAGE: u32 = BN * DP_HEAD_DIM;
    const V_STAGE: u32 = BN.div_ceil(128) * DP8_TILE_BYTES;
    const ZERO_V_TAIL: bool = false;

    #[inline(always)]
    unsafe fn load_q(qa: u32) -> Self::Q {
        let row_scale = if QBF16 { quantize_rows(qa) } else { [1.0; 2] };
        Query { smem: qa, row_scale }
    }

    #[inline(always)]
    fn q_scale(q: &Self::Q) -> [f32; 2] {
        q.row_scale
    }

    /// Both operands K-major, from shared memory.
    #[inline(always)]
    fn scores_issue(s: &mut [[f32; 4]; NT], q: &Self::Q, ks: u32) {
        wgmma_fence(s, &NO_A);
        let (qd, kd) = (QTile::k_major_desc(q.smem, 0), Tile::<BN>::k_major_desc(ks, 0));
        crate::unroll!(4, KS => {
            s.e4m3_ss(QTile::k_major_step(qd, KS as u32), Tile::<BN>::k_major_step(kd, KS as u32), KS > 0);
        });
        wgmma_commit();
    }

    /// B: the Vᵀ stage, K-major.
    #[inline(always)]
    fn pv_issue(o: &mut Acc, pa: &Self::P, ts: u32) {
        wgmma_fence(o, pa);
        let td = VtTile::k_major_desc(ts, 0);
        crate::unroll_to!(NT / 4, KS => {
            let a = [pa[4 * KS], pa[4 * KS + 1], pa[4 * KS + 2], pa[4 * KS + 3]];
            wgmma_m64n128k32_e4m3(o, a, VtTile::k_major_step(td, KS as u32), true);
        });
        wgmma_commit();
    }

    /// n-tiles `2 m` and `2 m + 1` are words `2 m` (row g: this thread's
    /// two keys of each) and `2 m + 1` (row g + 8), so k32 step `ks` (n-tiles
    /// `4 ks .. 4 ks + 4`) is words `4 ks .. 4 ks + 4` (key order of
    /// [`transpose_v`]).
    #[inline(always)]
    fn pack_p(p: &[[f32; 4]; NT]) -> Self::P {
        let mut pa = [0u32; NT];
        crate::unroll_to!(NT / 2, M => {
            let (a, b) = (p[2 * M], p[2 * M + 1]);
            // Keys 2t, 2t + 8, 2t + 1, 2t + 9 of the 16 ([`transpose_v`]).
            pa[2 * M] = pack_e4m3x4(a[0], b[0], a[1], b[1]);
            pa[2 * M + 1] = pack_e4m3x4(a[2], b[2], a[3], b[3]);
        });
        pa
    }
}

/// Quantises the warpgroup's 64 bf16 query rows at `qa` (two 64-dim
/// slabs) to e4m3 rows in place (the first slab's rows, one 128-byte span
/// a row, the layout of e4m3 queries), each row on its own: `e4m3(q · 448
/// / amax)`, with `amax` the row's largest magnitude, and returns the
/// factors `amax / 448` that undo it for this thread's rows `g` and `g +
/// 8` (1 for an all-zero row; a row with an infinite value gets an
/// infinite factor, hence NaN). The same f32 steps as `reference-cpu`'s
/// `quantize_row_e4m3`. Each thread takes the values of its A fragments
/// (rows `r` and `r + 8`, 32 dims of each); the warpgroup's named barrier
/// `1 + c` separates the reads from the writes over them. (Kept in
/// registers as A fragments instead, the 16 words spilled the 224-key
/// kernel.)
#[inline(always)]
unsafe fn quantize_rows(qa: u32) -> [f32; 2] {
    let (r, t, c) = ((warp_id() % 4) * 16 + lane_id() / 4, lane_id() % 4, warp_id() / 4 - 1);
    let mut x = [[[0f32; 4]; 4]; 4];
    let mut amax = [0f32; 2];
    crate::unroll!(4, KS => {
        crate::unroll!(4, J => {
            let byte = 2 * (32 * KS as u32 + 16 * (J as u32 / 2) + 4 * t);
            let at = qa + QTile::at(r + 8 * (J as u32 & 1), byte / 16) + byte % 16;
            let (a, b) = (bf16x2_to_f32(ld_shared_u32(at)), bf16x2_to_f32(ld_shared_u32(at + 4)));
            x[KS][J] = [a.0, a.1, b.0, b.1];
            crate::unroll!(4, E => { amax[J & 1] = fmax(amax[J & 1], fabs(x[KS][J][E])); });
        });
    });
    let amax = amax.map(quad_max_f32);
    let inv = amax.map(|m| if m > 0.0 { 448.0 / m } else { 1.0 });
    named_barrier_sync(1 + c, 128);
    crate::unroll!(4, KS => {
        crate::unroll!(4, J => {
            let (v, f) = (x[KS][J], inv[J & 1]);
            let d = 32 * KS as u32 + 16 * (J as u32 / 2) + 4 * t;
            let at = qa + QTile::at(r + 8 * (J as u32 & 1), d / 16) + d % 16;
            st_shared_u32(at, pack_e4m3x4(v[0] * f, v[1] * f, v[2] * f, v[3] * f));
        });
    });
    fence_proxy_async_shared();
    named_barrier_sync(1 + c, 128);
    amax.map(|m| if m > 0.0 { m / 448.0 } else { 1.0 })
}

/// Consumer warpgroup `c`: the bf16 kernel's loop
/// ([`crate::dense_prefill::consume`]) on e4m3 operands, the descales
/// folded into the exponent's scale and the epilogue's factor.
#[inline(always)]
unsafe fn consume_fp8<const QBF16: bool, const BN: u32, const NT: usize>(
    p: &DensePrefillFp8Params,
    w: &Work,
    c: u32,
)
where
    [[f32; 4]; NT]: ScoreAcc,
{
    let (kr, _, tr) = rings();
    let at = (w.kh * p.descale_stride) as usize;
    let q_descale = if QBF16 { 1.0 } else { ld_global_nc(p.q_descale.ptr()) };
    // (`consume` turns a product that is not finite and > 0 into NaN rows.)
    let sl2 = p.base.scale_log2 * q_descale * ld_global_nc(p.k_descale.ptr().add(at));
    let vscale = ld_global_nc(p.v_descale.ptr().add(at));
    let stages = Stages {
        qa: crate::smem_addr!(Smem, q) + c * 64 * 128,
        k: crate::smem_addr!(Smem, k),
        kr,
        v: crate::smem_addr!(Smem, vt),
        vr: tr,
        q_full: crate::smem_addr!(Smem, q_full),
    };
    consume::<E4m3<QBF16>, DP8_STAGES, BN, NT>(&p.base, w, c, &stages, (sl2, vscale));
}
