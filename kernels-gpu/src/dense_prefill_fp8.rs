//! The dense flash prefill in FP8 e4m3 (`shared/spec/dense-prefill.md`:
//! "bf16 and FP8 e4m3 Q/K/V with per-tensor f32 scales"): the bf16 kernel's
//! scheduler, masks, online softmax, ping-pong and epilogue
//! ([`crate::dense_prefill`]) on e4m3 tiles (one 128-byte swizzle span a
//! row) with e4m3 `wgmma` (k32, f32 accumulation).
//!
//! - **producer** warp 0 (warpgroup 0): Q, K and V tiles by TMA, as in bf16;
//! - **transposers**, warps 1–3: each V stage into a transposed copy Vᵀ (a
//!   row per dim, the keys along it), since an e4m3 `wgmma` takes its B
//!   operand K-major only (FlashAttention-3 transposes in the kernel too).
//!   Keys past the sequence's end are written as zeros, so garbage in a
//!   page's tail cannot give NaN. Inside each 32-key step the keys are
//!   stored in the order the S accumulator holds them ([`key_of`]), so P
//!   goes from the S registers to the A operand of P V by rounding alone;
//! - **consumers**: S = Q Kᵀ (both operands in shared memory; bf16 queries
//!   are quantised row by row into register A fragments first,
//!   [`quantize_rows`]), the online softmax with `scale · q_descale ·
//!   k_descale` (times the row's factor) in the exponent, P rounded
//!   to e4m3 for O += P V (the row sums add the unrounded f32 P, as
//!   FlashAttention-3 does; the reference's tolerance bounds the rounding),
//!   and the epilogue multiplies by `v_descale`.

use core::mem::size_of;

use sparse_attn_abi::dense::*;

use crate::arch::*;
use crate::dense_prefill::{consume, produce, schedule, Acc, Dst, Operands, Stages, Work};
use crate::tile::pipeline::MbarRing;
use crate::tile::swizzle::{Slabs128, TileLayout};

/// An e4m3 tile: one slab of 128 rows of 128 bytes (a k32 step is 32 bytes,
/// as a bf16 k16 step of the first slab).
type Tile = Slabs128<128>;
/// The K, V and Vᵀ rings.
type Ring = MbarRing<DP8_STAGES>;
/// Consumer warps: each arrives once on a K or Vᵀ stage's empty barrier.
const CONSUMER_WARPS: u32 = DP_CONSUMERS * 4;
/// No A fragments: `wgmma_fence` / `wait` of a shared-memory-A product.
const NO_A: [[u32; 4]; 4] = [[0; 4]; 4];

/// Shared memory of the kernel.
#[repr(C)]
struct Smem {
    /// e4m3 queries use the first half; bf16 queries both (two slabs).
    q: [u8; 2 * DP8_TILE_BYTES as usize],
    k: [[u8; DP8_TILE_BYTES as usize]; DP8_STAGES as usize],
    v: [[u8; DP8_TILE_BYTES as usize]; DP8_STAGES as usize],
    vt: [[u8; DP8_TILE_BYTES as usize]; DP8_STAGES as usize],
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
    run::<false>(&p);
}

/// [`dense_prefill_fp8`] on bf16 queries (`q` is `bf16 [num_rows, n_heads,
/// 128]`, `q_descale` is not read) against e4m3 K and V: each query row is
/// quantised to e4m3 in the kernel ([`E4m3::load_q`]).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill_fp8_qbf16(p: DensePrefillFp8Params) {
    run::<true>(&p);
}

/// The kernel on e4m3 (`QBF16` false) or bf16 queries.
#[inline(always)]
unsafe fn run<const QBF16: bool>(p: &DensePrefillFp8Params) {
    grid_prologue();
    let Some(w) = schedule(&p.base) else {
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
                produce::<2, 1, DP8_STAGES>(&p.base, &w, at, q_full, &kr, &vr);
            } else {
                produce::<1, 1, DP8_STAGES>(&p.base, &w, at, q_full, &kr, &vr);
            }
        } else {
            transpose_v(&w, thread_idx_x() - 32);
        }
        return;
    }
    setmaxnreg_inc::<DP8_CONSUMER_REGS>();
    consume_fp8::<QBF16>(p, &w, wg - 1);
}

// ------------------------------------------------------------------ transposers

/// Key (row of the V tile) at position `pos` of a 32-key step of Vᵀ: the
/// S accumulator gives lane quad position `t` the keys `2t, 2t + 1` of
/// each 8-key n-tile, and the e4m3 A operand wants positions `4t .. 4t + 4`
/// of each 16, so position `16h + 4t + i` holds key `16h + 8 (i / 2) + 2t
/// + i % 2`.
#[inline(always)]
const fn key_of(pos: u32) -> u32 {
    let (h, t, i) = (pos / 16, (pos % 16) / 4, pos % 4);
    16 * h + 8 * (i / 2) + 2 * t + i % 2
}

/// Transposer thread `x` (0 .. [`DP8_TRANSPOSERS`]): every V stage of the
/// CTA into its Vᵀ stage. A unit is 4 keys × 4 dims: 4 word loads, 8 byte
/// permutes, 4 word stores. The 32 lanes of a warp take 4 positions each
/// of one 32-key step (`h`, `t`) and 4 dims each of 16 (`dg`), and lanes
/// with `h = 1` the other 16 dims of a pair of steps: loads and stores
/// then fall in 32 different banks (the stores' order rotated by `dg / 2`).
#[inline(always)]
unsafe fn transpose_v(w: &Work, x: u32) {
    let (_, vr, tr) = rings();
    let (vs, ts) = (crate::smem_addr!(Smem, v), crate::smem_addr!(Smem, vt));
    let (warp, lane) = (x / 32, x % 32);
    let (t, h, dg) = (lane % 4, (lane / 4) % 2, lane / 8);
    let rot = 2 * (dg / 2);
    for i in 0..w.n1 - w.n0 {
        let stage = (i % DP8_STAGES) * DP8_TILE_BYTES;
        let live = w.t.num_keys.saturating_sub((w.n0 + i) * DP_BLOCK_N);
        vr.wait(i);
        tr.wait_free(i);
        let mut it = warp;
        while it < 32 {
            let (step, db) = (it % 4, it / 4);
            let d0 = 16 * (db ^ h) + 4 * dg;
            let mut wv = [0u32; 4];
            crate::unroll!(4, K => {
                let key = 32 * step + key_of(16 * h + 4 * t + K as u32);
                if key < live {
                    wv[K] = ld_shared_u32(vs + stage + key * 128 + (((d0 / 16) ^ (key % 8)) << 4) + d0 % 16);
                }
            });
            let out = transpose_bytes4x4(wv);
            let out = if rot == 0 {
                out
            } else {
                [out[2], out[3], out[0], out[1]]
            };
            let pos = 32 * step + 16 * h + 4 * t;
            crate::unroll!(4, J => {
                let row = d0 + (J as u32 ^ rot);
                st_shared_u32(ts + stage + row * 128 + (((pos / 16) ^ (row % 8)) << 4) + pos % 16, out[J]);
            });
            it += DP8_TRANSPOSERS / 32;
        }
        fence_proxy_async_shared();
        vr.release(i);
        tr.post(i);
    }
}

// ------------------------------------------------------------------ consumers

/// e4m3 operands: 4 k32 steps a product; P V reads the Vᵀ stages. Q is
/// e4m3, or bf16 (`QBF16`) quantised here.
struct E4m3<const QBF16: bool>;

/// Q as the A operand of S.
#[derive(Clone, Copy)]
struct Query {
    /// e4m3 queries: the shared address of the warpgroup's rows.
    smem: u32,
    /// bf16 queries: the quantised A fragments and this thread's two rows'
    /// factors that undo the quantisation ([`quantize_rows`]; 1 otherwise).
    frags: [[u32; 4]; 4],
    row_scale: [f32; 2],
}

impl<const QBF16: bool> Operands for E4m3<QBF16> {
    type P = [[u32; 4]; 4];
    type Q = Query;
    const STAGE_BYTES: u32 = DP8_TILE_BYTES;
    const ZERO_V_TAIL: bool = false;

    #[inline(always)]
    unsafe fn load_q(qa: u32) -> Self::Q {
        if QBF16 {
            let (r, t) = ((warp_id() % 4) * 16 + lane_id() / 4, lane_id() % 4);
            let (frags, row_scale) = quantize_rows(qa, r, t);
            return Query { smem: qa, frags, row_scale };
        }
        Query { smem: qa, frags: [[0; 4]; 4], row_scale: [1.0; 2] }
    }

    #[inline(always)]
    fn q_scale(q: &Self::Q) -> [f32; 2] {
        q.row_scale
    }

    /// Both operands K-major; A from registers for bf16 queries, from
    /// shared memory for e4m3 ones.
    #[inline(always)]
    fn scores_issue(s: &mut Acc, q: &Self::Q, ks: u32) {
        wgmma_fence_e4m3(s, &NO_A);
        let (qd, kd) = (Tile::k_major_desc(q.smem, 0), Tile::k_major_desc(ks, 0));
        crate::unroll!(4, KS => {
            let b = Tile::k_major_step(kd, KS as u32);
            if QBF16 {
                wgmma_m64n128k32_e4m3(s, q.frags[KS], b, KS > 0);
            } else {
                wgmma_m64n128k32_e4m3_ss(s, Tile::k_major_step(qd, KS as u32), b, KS > 0);
            }
        });
        wgmma_commit();
    }

    /// B: the Vᵀ stage, K-major.
    #[inline(always)]
    fn pv_issue(o: &mut Acc, pa: &Self::P, ts: u32) {
        wgmma_fence_e4m3(o, pa);
        let td = Tile::k_major_desc(ts, 0);
        crate::unroll!(4, KS => {
            wgmma_m64n128k32_e4m3(o, pa[KS], Tile::k_major_step(td, KS as u32), true);
        });
        wgmma_commit();
    }

    /// k32 step `ks` is n-tiles `4 ks .. 4 ks + 4`: register 0 (row g)
    /// holds this thread's two keys of n-tiles `4 ks` and `4 ks + 1`,
    /// register 1 the same of row g + 8, registers 2 and 3 those of n-tiles
    /// `4 ks + 2` and `+ 3` ([`key_of`]).
    #[inline(always)]
    fn pack_p(p: &Acc) -> Self::P {
        let mut pa = [[0u32; 4]; 4];
        crate::unroll!(4, KS => {
            crate::unroll!(2, H => {
                let (a, b) = (p[4 * KS + 2 * H], p[4 * KS + 2 * H + 1]);
                pa[KS][2 * H] = pack_e4m3x4(a[0], a[1], b[0], b[1]);
                pa[KS][2 * H + 1] = pack_e4m3x4(a[2], a[3], b[2], b[3]);
            });
        });
        pa
    }

    #[inline(always)]
    fn fence(o: &mut Acc, pa: &Self::P) {
        wgmma_fence_e4m3(o, pa);
    }

    #[inline(always)]
    fn wait_s<const PENDING: u32>(s: &mut Acc) {
        if PENDING == 0 {
            wgmma_wait0_e4m3(s, &NO_A);
        } else {
            wgmma_wait1_e4m3(s, &NO_A);
        }
    }

    #[inline(always)]
    fn wait_o(o: &mut Acc, pa: &Self::P) {
        wgmma_wait0_e4m3(o, pa);
    }
}

/// This thread's e4m3 A fragments of bf16 query rows `r` and `r + 8` of
/// the tile at `qa` (two 64-dim slabs), each row quantised on its own:
/// `e4m3(q · 448 / amax)`, with `amax` the row's largest magnitude (over
/// the quad's 4 × 32 values), and the factors `amax / 448` that undo it
/// (1 for an all-zero row; a row with an infinite value gets an infinite
/// factor, hence NaN). The same f32 steps as `reference-cpu`'s
/// `quantize_row_e4m3`.
#[inline(always)]
unsafe fn quantize_rows(qa: u32, r: u32, t: u32) -> ([[u32; 4]; 4], [f32; 2]) {
    let mut x = [[[0f32; 4]; 4]; 4];
    let mut amax = [0f32; 2];
    crate::unroll!(4, KS => {
        crate::unroll!(4, J => {
            let byte = 2 * (32 * KS as u32 + 16 * (J as u32 / 2) + 4 * t);
            let at = qa + Tile::at(r + 8 * (J as u32 & 1), byte / 16) + byte % 16;
            let (a, b) = (bf16x2_to_f32(ld_shared_u32(at)), bf16x2_to_f32(ld_shared_u32(at + 4)));
            x[KS][J] = [a.0, a.1, b.0, b.1];
            crate::unroll!(4, E => { amax[J & 1] = fmax(amax[J & 1], fabs(x[KS][J][E])); });
        });
    });
    let amax = amax.map(quad_max_f32);
    let inv = amax.map(|m| if m > 0.0 { 448.0 / m } else { 1.0 });
    let mut a = [[0u32; 4]; 4];
    crate::unroll!(4, KS => {
        crate::unroll!(4, J => {
            let (v, f) = (x[KS][J], inv[J & 1]);
            a[KS][J] = pack_e4m3x4(v[0] * f, v[1] * f, v[2] * f, v[3] * f);
        });
    });
    (a, amax.map(|m| if m > 0.0 { m / 448.0 } else { 1.0 }))
}

/// Consumer warpgroup `c`: the bf16 kernel's loop
/// ([`crate::dense_prefill::consume`]) on e4m3 operands, the descales
/// folded into the exponent's scale and the epilogue's factor.
#[inline(always)]
unsafe fn consume_fp8<const QBF16: bool>(p: &DensePrefillFp8Params, w: &Work, c: u32) {
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
    consume::<E4m3<QBF16>, DP8_STAGES>(&p.base, w, c, &stages, (sl2, vscale));
}
