//! The dense flash prefill (`shared/spec/dense-prefill.md`), warp-specialized
//! for Hopper.
//!
//! One CTA per (work tile, query head), tiles longest first (the host sorts
//! them), the heads of a tile adjacent so that the heads sharing a KV head
//! run together and read its K/V from L2. Two instances of one body: key
//! tiles of [`DP_BLOCK_N`] = 128 keys (`dense_prefill`, every K/V layout)
//! and of [`DP_WIDE_N`] = 176 (`dense_prefill_wide`, contiguous K/V only:
//! a TMA box is one key tile, which a page of 128 would not divide):
//!
//! - **scheduler** ([`schedule`]): the tile's rows, KV head and the range
//!   of key tiles its mask leaves;
//! - **producer** (warpgroup 0; warp 0 issues, 24 registers): Q once,
//!   then K and V of every key tile into a ring of [`DP_STAGES`] stages
//!   with TMA (`cp.async.bulk.tensor`, 128-byte swizzle), each stage guarded
//!   by full / empty mbarriers ([`MbarRing`]); paged K/V take one box per
//!   page (or one per 128 keys for pages of 128 and more), one lane per
//!   box, page ids from the page table, clamped;
//! - **consumers** (warpgroups 1 and 2, 240 registers, 64 query rows each):
//!   S = Q Kᵀ with `wgmma` (both operands from shared memory), the mask
//!   only on the tiles that need it, the online softmax in f32 registers,
//!   O += P V with `wgmma` (P from registers); tile `i`'s S and tile
//!   `i - 1`'s P V in flight together, and the two warpgroups taking turns
//!   to issue ([`PingPong`]);
//! - **epilogue**: the sink (one more partial), normalise, bf16 out, lse.
//!
//! Keys past a sequence's end inside its last tile are masked, and their V
//! rows zeroed in shared memory before P V (the unwritten tail of a page may
//! hold NaN, and 0 · NaN is NaN). Rows of Q or K/V past a tensor's end are
//! zero-filled by TMA: corrupt offsets cannot read out of bounds.
//!
//! A NaN or infinity in a visible q, K or V value gives NaN in the rows
//! that see it, as in FlashAttention and cuDNN.

use core::mem::size_of;

use sparse_attn_abi::dense::*;

use crate::arch::*;
use crate::tile::mask::{mask_fragment, KeyRange};
use crate::tile::paged::PagedBlock;
use crate::tile::pipeline::{MbarRing, PingPong};
use crate::tile::softmax::{LseState, LN2, LOG2E};
use crate::tile::swizzle::Slabs128;

/// The Q tile: 128 rows of 128 bf16 as two 64-dim slabs.
pub(crate) type QTile = Slabs128<DP_BLOCK_M>;
/// A K or V tile of `BN` keys: two 64-dim slabs of `BN` rows (e4m3: one).
pub(crate) type Tile<const BN: u32> = Slabs128<BN>;
/// The ring of K (or V) stages.
type Ring = MbarRing<DP_STAGES>;
/// Threads of one consumer warpgroup.
const WG: u32 = 128;
/// Consumer warps: each arrives once on a stage's empty barrier.
const CONSUMER_WARPS: u32 = DP_CONSUMERS * 4;
/// A row's running max moves only when a tile's max passes it by more
/// than this (log2 units, [`LseState::advance_lazy`]): P stays ≤ 2⁸, within
/// bf16 and e4m3 (448), and O is rescaled only on the rare tiles where some
/// row of the warp moved (the warp votes), instead of 64 multiplies a
/// thread every tile.
const RESCALE_SLACK: f32 = 8.0;

/// Bytes of the K (or V) stages: the wide kernel's, of which the narrow
/// one uses the first `DP_STAGES · 32 KiB`.
const KV_BYTES: usize = (DP_STAGES * DP_WIDE_N * 256) as usize;

/// Shared memory of the kernel.
#[repr(C)]
struct Smem {
    q: [u8; DP_TILE_BYTES as usize],
    /// `DP_STAGES` stages of `BN · 256` bytes.
    k: [u8; KV_BYTES],
    v: [u8; KV_BYTES],
    q_full: u64,
    k_full: [u64; DP_STAGES as usize],
    k_empty: [u64; DP_STAGES as usize],
    v_full: [u64; DP_STAGES as usize],
    v_empty: [u64; DP_STAGES as usize],
}
const _: () = assert!(size_of::<Smem>() as u32 <= DP_SMEM);

/// A CTA's work.
pub(crate) struct Work {
    pub(crate) t: DenseTile,
    pub(crate) h: u32,
    pub(crate) kh: u32,
    /// Key tiles `n0 .. n1`.
    pub(crate) n0: u32,
    pub(crate) n1: u32,
    /// Keys of the first row and of the last row.
    first: KeyRange,
    last: KeyRange,
}

impl Work {
    /// Whether key tile `j` (of `BN` keys) needs the mask: some row of the
    /// CTA does not see all of it (the last row has the highest window
    /// start, the first row the lowest end).
    #[inline(always)]
    pub(crate) fn masked<const BN: u32>(&self, j: u32) -> bool {
        let kb = j * BN;
        !(kb >= self.last.lo && kb + BN <= self.first.hi)
    }
}

/// The K and V rings.
#[inline(always)]
fn rings() -> (Ring, Ring) {
    let k = Ring {
        full: crate::smem_addr!(Smem, k_full),
        empty: crate::smem_addr!(Smem, k_empty),
    };
    let v = Ring {
        full: crate::smem_addr!(Smem, v_full),
        empty: crate::smem_addr!(Smem, v_empty),
    };
    (k, v)
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill(p: DensePrefillParams) {
    run::<DP_BLOCK_N, 16>(&p);
}

/// [`dense_prefill`] with key tiles of [`DP_WIDE_N`] keys, on contiguous
/// K/V (`page_size` must be 0; the host launches it only then).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn dense_prefill_wide(p: DensePrefillParams) {
    run::<DP_WIDE_N, 22>(&p);
}

/// The kernel with key tiles of `BN = 8 NT` keys.
#[inline(always)]
unsafe fn run<const BN: u32, const NT: usize>(p: &DensePrefillParams)
where
    [[f32; 4]; NT]: ScoreAcc,
{
    const { assert!(BN as usize == 8 * NT) };
    grid_prologue();
    let Some(w) = schedule::<BN>(p) else {
        return;
    };
    let (kr, vr) = rings();
    if thread_idx_x() == 0 {
        mbarrier_init(crate::smem_addr!(Smem, q_full), 1);
        kr.init(CONSUMER_WARPS);
        vr.init(CONSUMER_WARPS);
        fence_mbarrier_init();
    }
    sync_threads();
    let wg = warp_id_uniform() / 4;
    if wg == 0 {
        setmaxnreg_dec::<DP_PRODUCER_REGS>();
        if warp_id() == 0 {
            let at = Dst {
                q: crate::smem_addr!(Smem, q),
                k: crate::smem_addr!(Smem, k),
                v: crate::smem_addr!(Smem, v),
            };
            produce::<2, 2, DP_STAGES, BN>(p, &w, at, crate::smem_addr!(Smem, q_full), &kr, &vr);
        }
        return;
    }
    setmaxnreg_inc::<DP_CONSUMER_REGS>();
    let c = wg - 1;
    let at = Stages {
        qa: crate::smem_addr!(Smem, q) + c * 64 * 128,
        k: crate::smem_addr!(Smem, k),
        kr,
        v: crate::smem_addr!(Smem, v),
        vr,
        q_full: crate::smem_addr!(Smem, q_full),
    };
    consume::<Bf16, DP_STAGES, BN, NT>(p, &w, c, &at, (p.scale_log2, 1.0));
}

/// The CTA's tile, head and key tiles (of `BN` keys); `None` past the last
/// tile.
#[inline(always)]
pub(crate) unsafe fn schedule<const BN: u32>(p: &DensePrefillParams) -> Option<Work> {
    let nh = p.n_heads.max(1);
    let (ti, h) = (block_idx_x() / nh, block_idx_x() % nh);
    if ti >= p.num_tiles || p.n_kv_heads == 0 {
        return None;
    }
    let mut t = ld_record(p.tiles.ptr().add(ti as usize));
    t.rows = t.rows.clamp(1, DP_BLOCK_M);
    let kh = (h / (nh / p.n_kv_heads).max(1)).min(p.n_kv_heads - 1);
    let causal = p.causal != 0;
    let first = KeyRange::of(t.q_pos0, t.num_keys, causal, p.window);
    let last = KeyRange::of(
        t.q_pos0.saturating_add(t.rows - 1),
        t.num_keys,
        causal,
        p.window,
    );
    let n0 = first.lo / BN;
    let n1 = last.hi.div_ceil(BN).max(n0);
    Some(Work {
        t,
        h,
        kh,
        n0,
        n1,
        first,
        last,
    })
}

// ------------------------------------------------------------------ producer

/// Shared addresses of the Q tile and of the first K and V stages.
#[derive(Clone, Copy)]
pub(crate) struct Dst {
    pub(crate) q: u32,
    pub(crate) k: u32,
    pub(crate) v: u32,
}

/// The producer warp: Q, then K and V of every key tile, each stage once
/// the consumers have released it. K and V tiles are `SLABS` slabs of `BN`
/// rows of 128 bytes (bf16: 2, dims 0..64 and 64..128; e4m3: 1), the Q tile
/// `Q_SLABS` of 128 rows (bf16 queries of the FP8 kernel: 2). Only the
/// narrow kernels (`BN` = [`DP_BLOCK_N`]) read paged K/V; the wide ones
/// take every K/V as contiguous. Lane 0 waits for
/// the stage and posts its bytes; for paged K/V, lane `b` looks up and
/// copies the tile's box `b` (a page, or 128 keys of a larger one), the
/// page looked up once for K and V and before the wait. (One thread doing
/// the 8 lookups and 32 copies of a tile of 16-token pages one after
/// another: `-paged16` 454–459 TFLOP/s; a lane per page: 493–514, H200,
/// 2026-12-02.)
#[inline(always)]
pub(crate) unsafe fn produce<const Q_SLABS: u32, const SLABS: u32, const STAGES: u32, const BN: u32>(
    p: &DensePrefillParams,
    w: &Work,
    at: Dst,
    q_full: u32,
    kr: &MbarRing<STAGES>,
    vr: &MbarRing<STAGES>,
) {
    let tile = SLABS * Tile::<BN>::SLAB_BYTES;
    let maps = p.tmaps.ptr();
    let (qmap, kmap, vmap) = (maps, maps.add(DP_TMAP_BYTES), maps.add(2 * DP_TMAP_BYTES));
    let lane = lane_id();
    if lane == 0 {
        mbarrier_arrive_expect_tx(q_full, Q_SLABS * QTile::SLAB_BYTES);
        for slab in 0..Q_SLABS {
            let at_q = [64 * slab as i32, w.h as i32, w.t.row0 as i32];
            tma_load_3d(at.q + slab * QTile::SLAB_BYTES, qmap, q_full, at_q);
        }
    }
    let paged = BN == DP_BLOCK_N && p.page_size != 0;
    let box_rows = if paged { p.box_rows.clamp(1, BN) } else { BN };
    let mine = lane < BN / box_rows;
    let plane = |paged_off: u32| if paged { paged_off } else { 0 };
    for j in w.n0..w.n1 {
        let i = j - w.n0;
        let stage = (i % STAGES) * tile;
        let tok = j * BN + lane * box_rows;
        let row = if !mine {
            0
        } else if !paged {
            w.t.kv_row0 + tok
        } else {
            page_id(p, w.t.seq, tok / p.page_size) * p.page_rows + tok % p.page_size
        };
        for (ring, map, dst, off) in [
            (kr, kmap, at.k, plane(p.k_row_off)),
            (vr, vmap, at.v, plane(p.v_row_off)),
        ] {
            if lane == 0 {
                ring.acquire(i, tile);
            }
            sync_warp();
            if mine {
                let dst = dst + stage + lane * box_rows * 128;
                for slab in 0..SLABS {
                    let at_kv = [64 * slab as i32, w.kh as i32, (row + off) as i32];
                    tma_load_3d(dst + slab * Tile::<BN>::SLAB_BYTES, map, ring.full_bar(i), at_kv);
                }
            }
        }
    }
}

/// Pool page of logical page `blk` of sequence `seq`, both clamped (a
/// corrupt table or tile addresses a valid page, never outside the pool).
#[inline(always)]
unsafe fn page_id(p: &DensePrefillParams, seq: u32, blk: u32) -> u32 {
    let at = seq as usize * p.max_pages as usize + blk.min(p.max_pages.max(1) - 1) as usize;
    ld_global_nc_u32(p.lookup.ptr().add(at)).min(p.num_pages.max(1) - 1)
}

// ------------------------------------------------------------------ consumers

/// This thread's two rows (`g` and `g + 8` of its warp's 16) in the tile.
#[inline(always)]
pub(crate) fn my_rows(c: u32) -> [u32; 2] {
    let r = c * 64 + (warp_id() % 4) * 16 + lane_id() / 4;
    [r, r + 8]
}

/// The element type's part of the consumer loop for key tiles of `BN = 8
/// NT` keys: its two products and P as the A operand of P V. `bf16` here,
/// `e4m3` in `dense_prefill_fp8`. S is `[[f32; 4]; NT]` (n-tile `j` the
/// keys `8 j .. 8 j + 8`), O an [`Acc`].
pub(crate) trait Operands<const BN: u32, const NT: usize> {
    /// P in the A-operand layout of P V.
    type P: Copy + Regs;
    /// Q as the A operand of S: the shared address of the warpgroup's
    /// rows, or (queries quantised in the kernel) this thread's fragments.
    type Q: Copy;
    /// Loads [`Self::Q`] from the warpgroup's 64 rows at `qa`.
    unsafe fn load_q(qa: u32) -> Self::Q;
    /// The factors of this thread's two rows' scores beyond `sl2` (1 but
    /// where Q is quantised in the kernel, row by row).
    fn q_scale(q: &Self::Q) -> [f32; 2];
    /// Bytes of a K stage and of a stage P V reads (V, or Vᵀ in FP8).
    const K_STAGE: u32;
    const V_STAGE: u32;
    /// Whether V rows past the sequence's end must be zeroed in the last
    /// stage before P V (the FP8 transposer writes zeros there itself).
    const ZERO_V_TAIL: bool;
    /// Issues S = Q Kᵀ for the warpgroup's 64 rows and the stage `ks`
    /// (committed, not waited for).
    fn scores_issue(s: &mut [[f32; 4]; NT], q: &Self::Q, ks: u32);
    /// Issues O += P V from the stage `vs` (committed, not waited for).
    fn pv_issue(o: &mut Acc, pa: &Self::P, vs: u32);
    /// P (f32, the accumulator layout) as A fragments.
    fn pack_p(s: &[[f32; 4]; NT]) -> Self::P;
}

/// An `M64N128` f32 accumulator (O of a warpgroup; S of a 128-key tile).
pub(crate) type Acc = [[f32; 4]; 16];

/// bf16 operands: `NT / 2` k16 steps of P V, 8 of S.
struct Bf16;

impl<const BN: u32, const NT: usize> Operands<BN, NT> for Bf16
where
    [[f32; 4]; NT]: ScoreAcc,
{
    /// A fragment `ks` is n-tiles `2 ks` and `2 ks + 1`: each n-tile's
    /// row-`g` pair, then its row-`g + 8` pair.
    type P = [[u32; 2]; NT];
    /// The shared address of the warpgroup's Q rows.
    type Q = u32;
    const K_STAGE: u32 = 2 * Tile::<BN>::SLAB_BYTES;
    const V_STAGE: u32 = 2 * Tile::<BN>::SLAB_BYTES;
    const ZERO_V_TAIL: bool = true;

    #[inline(always)]
    fn q_scale(_: &Self::Q) -> [f32; 2] {
        [1.0; 2]
    }

    #[inline(always)]
    unsafe fn load_q(qa: u32) -> Self::Q {
        qa
    }

    #[inline(always)]
    fn scores_issue(s: &mut [[f32; 4]; NT], q: &Self::Q, ks: u32) {
        wgmma_fence(s, &NO_A);
        let (qd, kd) = (QTile::k_major_desc(*q, 0), Tile::<BN>::k_major_desc(ks, 0));
        crate::unroll!(8, KS => {
            let (a, b) = (QTile::k_major_step(qd, KS as u32), Tile::<BN>::k_major_step(kd, KS as u32));
            s.bf16_ss(a, b, KS > 0);
        });
        wgmma_commit();
    }

    /// B: the V stage, N-major, 16 keys per k-step.
    #[inline(always)]
    fn pv_issue(o: &mut Acc, pa: &Self::P, vs: u32) {
        wgmma_fence(o, pa);
        let vd = Tile::<BN>::mn_major_desc(vs, 0);
        crate::unroll_to!(NT / 2, KS => {
            let a = [pa[2 * KS][0], pa[2 * KS][1], pa[2 * KS + 1][0], pa[2 * KS + 1][1]];
            wgmma_m64n128k16_bf16::<1>(o, a, Tile::<BN>::mn_major_step(vd, KS as u32), true);
        });
        wgmma_commit();
    }

    #[inline(always)]
    fn pack_p(p: &[[f32; 4]; NT]) -> Self::P {
        let mut pa = [[0u32; 2]; NT];
        crate::unroll_to!(NT, J => {
            pa[J] = [pack_bf16x2(p[J][0], p[J][1]), pack_bf16x2(p[J][2], p[J][3])];
        });
        pa
    }
}

/// Shared addresses and rings of the consumer loop.
pub(crate) struct Stages<const S: u32> {
    /// This warpgroup's 64 query rows.
    pub(crate) qa: u32,
    /// The first K stage and the K ring.
    pub(crate) k: u32,
    pub(crate) kr: MbarRing<S>,
    /// The first stage P V reads (V, or Vᵀ in FP8) and its ring.
    pub(crate) v: u32,
    pub(crate) vr: MbarRing<S>,
    /// Q's full barrier.
    pub(crate) q_full: u32,
}

/// Consumer warpgroup `c`: the online softmax of its 64 rows over the key
/// tiles (scores times `sl2`, the scale in log2 units), then the epilogue
/// (times `vscale`).
///
/// FA3's two overlaps: inside the warpgroup, tile `i`'s S = Q Kᵀ and tile
/// `i - 1`'s O += P V are issued together and tile `i`'s softmax is written
/// to run while P V is in flight (O is rescaled after it lands); between
/// the two warpgroups, [`PingPong`] lets one issue its products while the
/// other runs its softmax.
///
/// In the SASS, ptxas moves the wait for P V (`wgmma_wait::<0, _, _>(&mut o, &pa)` below) up to
/// the top of the softmax, by its own estimate of when P V lands, so the
/// softmax runs after P V and only the other warpgroup's products overlap
/// it. Holding the wait after the softmax (a shared store of the row sums
/// just before it, which ptxas does not move it above) measured slower:
/// `dense-prefill-16k` 578–579 TFLOP/s against 584–586, `-8x2k` 456–457
/// against 490 (H200, 2026-12-02, the two builds back to back; with V
/// loaded a tile behind K as well, 563 and 469).
#[inline(always)]
pub(crate) unsafe fn consume<E: Operands<BN, NT>, const S: u32, const BN: u32, const NT: usize>(
    p: &DensePrefillParams,
    w: &Work,
    c: u32,
    at: &Stages<S>,
    (sl2, vscale): (f32, f32),
) {
    let (kr, vr) = (&at.kr, &at.vr);
    let rows = my_rows(c);
    let causal = p.causal != 0;
    let lim =
        rows.map(|r| KeyRange::of(w.t.q_pos0.saturating_add(r), w.t.num_keys, causal, p.window));
    let (kstage, vstage) = (|i: u32| (i % S) * E::K_STAGE, |i: u32| (i % S) * E::V_STAGE);
    let mut st = [LseState::EMPTY; 2];
    let mut o = [[0f32; 4]; 16];
    // `n` broadcast from lane 0 (the same value in every lane): ptxas then
    // keeps the loop's counter, stage addresses and wgmma descriptors in
    // uniform registers (the FP8 loop 486 -> 461 SASS instructions, no
    // R2UR; FP8 16k 687 -> 716 TFLOP/s, H100, 2026-12-06).
    let n = shfl_lane0_u32(w.n1 - w.n0);
    mbarrier_wait(at.q_full, 0);
    let q = E::load_q(at.qa);
    let sl2 = E::q_scale(&q).map(|f| positive_or_nan(sl2 * f));
    if n == 0 {
        return epilogue(p, w, rows, st, &o, vscale);
    }
    // Tile 0: S alone.
    let turn = PingPong::start(c);
    turn.wait();
    kr.wait(0);
    let mut s = [[0f32; 4]; NT];
    E::scores_issue(&mut s, &q, at.k);
    turn.pass(false);
    wgmma_wait::<0, _, _>(&mut s, &NO_A);
    release(kr, 0);
    if w.masked::<BN>(w.n0) {
        mask_fragment(&mut s, w.n0 * BN, lim);
    }
    softmax_step(&mut st, &mut s, sl2);
    let mut pa = E::pack_p(&s);
    // Tile i's S with tile i - 1's P V, tile i's softmax while P V runs.
    for i in 1..n {
        let j = w.n0 + i;
        wgmma_fence(&mut o, &pa); // O's rescale and P are written before the S product starts
        turn.wait();
        kr.wait(i);
        E::scores_issue(&mut s, &q, at.k + kstage(i));
        vr.wait(i - 1);
        E::pv_issue(&mut o, &pa, at.v + vstage(i - 1));
        turn.pass(false);
        wgmma_wait::<1, _, _>(&mut s, &NO_A);
        release(kr, i);
        if w.masked::<BN>(j) {
            mask_fragment(&mut s, j * BN, lim);
        }
        let corr = softmax_step(&mut st, &mut s, sl2);
        wgmma_wait::<0, _, _>(&mut o, &pa);
        release(vr, i - 1);
        // P is packed once P V has landed: packed while it runs, the new
        // P took registers of the P that P V reads and ptxas serialized
        // every wgmma (C7513).
        pa = E::pack_p(&s);
        if vote_any(corr != [1.0; 2]) {
            rescale(&mut o, corr);
        }
    }
    // The last tile's P V, its keys past the sequence's end zeroed first.
    wgmma_fence(&mut o, &pa);
    turn.wait();
    vr.wait(n - 1);
    let kb = (w.n1 - 1) * BN;
    if E::ZERO_V_TAIL && kb + BN > w.t.num_keys {
        zero_v_tail::<BN>(at.v + vstage(n - 1), w.t.num_keys.max(kb) - kb, c);
    }
    E::pv_issue(&mut o, &pa, at.v + vstage(n - 1));
    turn.pass(true);
    wgmma_wait::<0, _, _>(&mut o, &pa);
    release(vr, n - 1);
    epilogue(p, w, rows, st, &o, vscale);
}

/// `v` if it is finite and > 0, else NaN: the row maxima are taken on the
/// raw scores, so a scale that is not makes the row NaN, never wrong.
#[inline(always)]
fn positive_or_nan(v: f32) -> f32 {
    if v > 0.0 && v < f32::INFINITY {
        v
    } else {
        f32::NAN
    }
}

/// One arrival per consumer warp on use `i`'s empty barrier.
#[inline(always)]
pub(crate) unsafe fn release<const S: u32>(r: &MbarRing<S>, i: u32) {
    if lane_id() == 0 {
        r.release(i);
    }
}

/// O rows g and g + 8 times their softmax corrections.
#[inline(always)]
pub(crate) fn rescale(o: &mut [[f32; 4]; 16], corr: [f32; 2]) {
    crate::unroll!(16, D => {
        crate::unroll!(4, E => { o[D][E] *= corr[E >> 1]; });
    });
}

/// One online-softmax step for rows g and g + 8: the running maxima move
/// to the tile's, the (per-thread partial) sums are rescaled, and S is
/// replaced by P = 2^(S · scale · log2 e - m) (f32). Returns the factors O
/// must be rescaled by. The row maximum is taken over the raw scores
/// (`scale > 0`).
#[inline(always)]
pub(crate) fn softmax_step<const NT: usize>(
    st: &mut [LseState; 2],
    s: &mut [[f32; 4]; NT],
    sl2: [f32; 2],
) -> [f32; 2] {
    let mut mx = [f32::NEG_INFINITY; 2];
    crate::unroll_to!(NT, J => {
        crate::unroll!(2, H => { mx[H] = fmax(mx[H], fmax(s[J][2 * H], s[J][2 * H + 1])); });
    });
    let (mut m_use, mut corr) = ([0f32; 2], [1f32; 2]);
    crate::unroll!(2, H => {
        let (cr, m) = st[H].advance_lazy(quad_max_f32(mx[H]) * sl2[H], RESCALE_SLACK);
        (m_use[H], corr[H]) = (-m, cr);
    });
    crate::unroll_to!(NT, J => {
        crate::unroll!(4, E => { s[J][E] = exp2(fma(s[J][E], sl2[E >> 1], m_use[E >> 1])); });
        st[0].l += s[J][0] + s[J][1];
        st[1].l += s[J][2] + s[J][3];
    });
    corr
}

/// Zeroes V rows `from ..` of the stage at `vs` (keys past the sequence's
/// end) for consumer warpgroup `c`. Both warpgroups write the same zeros
/// before their own P V, so neither can see the other's garbage.
#[inline(always)]
unsafe fn zero_v_tail<const BN: u32>(vs: u32, from: u32, c: u32) {
    PagedBlock::<BN, 256>::zero_tail::<Tile<BN>, WG>(vs, from, thread_idx_x() % WG);
    fence_proxy_async_shared();
    named_barrier_sync(1 + c, WG);
}

// ------------------------------------------------------------------ epilogue

/// Sums each row's partial sums over its quad, adds the sink, normalises
/// (and multiplies by `vscale`, V's descale in FP8) and writes the rows of
/// the tile (bf16 pairs) and their lse.
#[inline(always)]
pub(crate) unsafe fn epilogue(
    p: &DensePrefillParams,
    w: &Work,
    rows: [u32; 2],
    mut st: [LseState; 2],
    o: &[[f32; 4]; 16],
    vscale: f32,
) {
    let sink = if p.sinks.is_null() {
        f32::NEG_INFINITY
    } else {
        ld_global_nc(p.sinks.ptr().add(w.h as usize)) * LOG2E
    };
    let c2 = 2 * (lane_id() & 3) as usize;
    crate::unroll!(2, H => {
        let l = st[H].l + shfl_xor_f32(st[H].l, 1);
        st[H].l = l + shfl_xor_f32(l, 2);
        let mut corr = 1.0;
        if sink != f32::NEG_INFINITY {
            let (cr, m) = st[H].advance(sink);
            st[H].l += exp2(sink - m);
            corr = cr;
        }
        let (inv, lse2) = st[H].finish();
        let f = inv * corr * vscale;
        let (r, row) = (rows[H], w.t.row0 + rows[H]);
        if r < w.t.rows && row < p.num_rows {
            let at = (row * p.n_heads + w.h) as usize;
            let dst = p.out.ptr().add(at * DP_HEAD_DIM as usize + c2) as *mut u32;
            crate::unroll!(16, D => {
                st_global(dst.add(4 * D), pack_bf16x2(o[D][2 * H] * f, o[D][2 * H + 1] * f));
            });
            if c2 == 0 && !p.lse.is_null() {
                st_global(p.lse.ptr().add(at), lse2 * LN2);
            }
        }
    });
}
