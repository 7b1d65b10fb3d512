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
//! - **consumers**: S = Q Kᵀ (both operands in shared memory), the online
//!   softmax with `scale · q_descale · k_descale` in the exponent, P rounded
//!   to e4m3 for O += P V (the row sums add the unrounded f32 P, as
//!   FlashAttention-3 does; the reference's tolerance bounds the rounding),
//!   and the epilogue multiplies by `v_descale`.

use core::mem::size_of;

use sparse_attn_abi::dense::*;

use crate::arch::*;
use crate::dense_prefill::{
    epilogue, my_rows, produce, release, rescale, schedule, softmax_step, Dst, PingPong, Work,
};
use crate::tile::mask::{mask_fragment, KeyRange};
use crate::tile::pipeline::MbarRing;
use crate::tile::softmax::LseState;
use crate::tile::swizzle::Slabs128;

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
    q: [u8; DP8_TILE_BYTES as usize],
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
            produce::<1, DP8_STAGES>(&p.base, &w, at, crate::smem_addr!(Smem, q_full), &kr, &vr);
        } else {
            transpose_v(&w, thread_idx_x() - 32);
        }
        return;
    }
    setmaxnreg_inc::<DP8_CONSUMER_REGS>();
    consume(&p, &w, wg - 1);
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

/// Consumer warpgroup `c`: as the bf16 kernel's (`dense_prefill::consume`)
/// on e4m3 operands, P V reading the Vᵀ ring.
#[inline(always)]
unsafe fn consume(p: &DensePrefillFp8Params, w: &Work, c: u32) {
    let b = &p.base;
    let (kr, _, tr) = rings();
    let rows = my_rows(c);
    let causal = b.causal != 0;
    let lim =
        rows.map(|r| KeyRange::of(w.t.q_pos0.saturating_add(r), w.t.num_keys, causal, b.window));
    let at = (w.kh * p.descale_stride) as usize;
    let sl2 =
        b.scale_log2 * ld_global_nc(p.q_descale.ptr()) * ld_global_nc(p.k_descale.ptr().add(at));
    // The row maxima are taken on the raw scores: a product of descales
    // that is not finite and > 0 makes the rows NaN, not wrong.
    let sl2 = if sl2 > 0.0 && sl2 < f32::INFINITY {
        sl2
    } else {
        f32::NAN
    };
    let vscale = ld_global_nc(p.v_descale.ptr().add(at));
    let qa = crate::smem_addr!(Smem, q) + c * 64 * 128;
    let (ks, ts) = (crate::smem_addr!(Smem, k), crate::smem_addr!(Smem, vt));
    let stage = |i: u32| (i % DP8_STAGES) * DP8_TILE_BYTES;
    let mut st = [LseState::EMPTY; 2];
    let mut o = [[0f32; 4]; 16];
    let n = w.n1 - w.n0;
    mbarrier_wait(crate::smem_addr!(Smem, q_full), 0);
    if n == 0 {
        return epilogue(b, w, rows, st, &o, vscale);
    }
    // Tile 0: S alone.
    let turn = PingPong::start(c);
    turn.wait();
    kr.wait(0);
    let mut s = [[0f32; 4]; 16];
    scores_issue(&mut s, qa, ks);
    turn.pass(false);
    wgmma_wait0_e4m3(&mut s, &NO_A);
    release(&kr, 0);
    if w.masked(w.n0) {
        mask_fragment(&mut s, w.n0 * DP_BLOCK_N, lim);
    }
    softmax_step(&mut st, &mut s, sl2);
    let mut pa = pack_p(&s);
    // Tile i's S with tile i - 1's P V, tile i's softmax while P V runs.
    for i in 1..n {
        let j = w.n0 + i;
        wgmma_fence_e4m3(&mut o, &pa);
        turn.wait();
        kr.wait(i);
        scores_issue(&mut s, qa, ks + stage(i));
        tr.wait(i - 1);
        pv_issue(&mut o, &pa, ts + stage(i - 1));
        turn.pass(false);
        wgmma_wait1_e4m3(&mut s, &NO_A);
        release(&kr, i);
        if w.masked(j) {
            mask_fragment(&mut s, j * DP_BLOCK_N, lim);
        }
        let corr = softmax_step(&mut st, &mut s, sl2);
        wgmma_wait0_e4m3(&mut o, &pa);
        release(&tr, i - 1);
        pa = pack_p(&s);
        rescale(&mut o, corr);
    }
    // The last tile's P V (its keys past the sequence's end are zeros in Vᵀ).
    wgmma_fence_e4m3(&mut o, &pa);
    turn.wait();
    tr.wait(n - 1);
    pv_issue(&mut o, &pa, ts + stage(n - 1));
    turn.pass(true);
    wgmma_wait0_e4m3(&mut o, &pa);
    release(&tr, n - 1);
    epilogue(b, w, rows, st, &o, vscale);
}

/// Issues S = Q Kᵀ (e4m3, 4 k32 steps) for the warpgroup's 64 rows (`qa`)
/// and the 128 keys of the stage `ks` (committed, not waited for).
#[inline(always)]
fn scores_issue(s: &mut [[f32; 4]; 16], qa: u32, ks: u32) {
    wgmma_fence_e4m3(s, &NO_A);
    crate::unroll!(4, KS => {
        let (a, b) = (Tile::k_major_desc(qa, KS as u32), Tile::k_major_desc(ks, KS as u32));
        wgmma_m64n128k32_e4m3_ss(s, a, b, KS > 0);
    });
    wgmma_commit();
}

/// P (f32, the accumulator layout) as e4m3 A fragments: k32 step `ks` is
/// n-tiles `4 ks .. 4 ks + 4`; register 0 (row g) holds this thread's two
/// keys of n-tiles `4 ks` and `4 ks + 1`, register 1 the same of row g + 8,
/// registers 2 and 3 those of n-tiles `4 ks + 2` and `+ 3` ([`key_of`]).
#[inline(always)]
fn pack_p(p: &[[f32; 4]; 16]) -> [[u32; 4]; 4] {
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

/// Issues O += P V (e4m3, 4 k32 steps; B: the Vᵀ stage at `ts`, K-major;
/// committed, not waited for).
#[inline(always)]
fn pv_issue(o: &mut [[f32; 4]; 16], pa: &[[u32; 4]; 4], ts: u32) {
    wgmma_fence_e4m3(o, pa);
    crate::unroll!(4, KS => {
        wgmma_m64n128k32_e4m3(o, pa[KS], Tile::k_major_desc(ts, KS as u32), true);
    });
    wgmma_commit();
}
