//! MSA indexer: block scores on tensor cores, then a top-k per (head, row).
//!
//! Two steps (the host's `MsaIndexer::run` launches both on one stream):
//!
//! 1. **Scores** (`msa_indexer_scores_prefill` / `_decode`, [`IdxScoreParams`]).
//!    Each CTA takes a work item ([`IdxWorkItem`]: rows `row0..row0+nrows` of
//!    one sequence against KV blocks `blk0..blk1`) and streams the index-K
//!    blocks through an `IDX_STAGES`-deep `cp.async` ring (`tile::pipeline`;
//!    the block loader of `tile::paged`, rows swizzled so `ldmatrix` is
//!    bank-conflict free). The query rows × index heads form the M side of a
//!    bf16 `mma.m16n8k16` (q is `[rows, H, 128]`, so flattened (row, head)
//!    pairs are contiguous 256-byte rows); the block's 128 keys are N. For
//!    every M row the kernel keeps `max(scale · q·k)` over the causally visible
//!    keys (`pos <= q_pos`) and writes it to `scores[H, num_rows, stride]`.
//!    Prefill: 4 warps × 2 m-tiles = 128 M rows per CTA, every warp sweeps all
//!    128 keys. Decode: one m-tile (H ≤ 16 rows), the 4 warps split the keys
//!    and meet in shared memory.
//! 2. **Top-k** (`msa_indexer_topk` / `_long`, [`IdxTopkParams`]): the block
//!    scores of a (head, row) become 64-bit keys ([`BlockKeys`]: forced
//!    init/local overrides applied, then `tile::topk::key_of`, so "larger
//!    key" means "higher score, then lower id"), selected by `tile::topk`'s
//!    warp arg-max picks (one warp per row) or, for long rows, its CTA
//!    threshold select (one CTA per row).
//!
//! Max semantics (our choice, shared with the reference): the block max is
//! IEEE maxNum, so a NaN product loses to any number, and a block whose every
//! product is NaN scores NaN, which ranks below every number.

use core::mem::{offset_of, size_of};

use sparse_attn_abi::msa::*;

use crate::arch::*;
use crate::tile::frag::load_row_frags;
use crate::tile::graph::{header_epoch, header_items, set_fault, stale};
use crate::tile::paged::{page_of, PagedBlock};
use crate::tile::pipeline::CpAsyncRing;
use crate::tile::swizzle::{Rows256, TileLayout};
use crate::tile::topk::{
    cta_threshold_select, cta_threshold_smem, key_index, key_of, warp_select, KeySource,
};

/// n-tiles (8 keys each) per block.
const N_TILES: u32 = MSA_BLOCK / 8;
/// n-tiles computed together (independent accumulator chains).
const NG: usize = 4;
const WARPS: u32 = IDX_THREADS / 32;

/// Forced scores of the spec.
const FORCED_INIT: f32 = 1e30;
const FORCED_LOCAL: f32 = 1e29;

/// An index-K block: 128 tokens of 256 bytes, one head.
type IndexBlock = PagedBlock<MSA_BLOCK, 256>;
/// The score kernels' stages.
type Ring = CpAsyncRing<IDX_STAGES, { IDX_STAGES - 2 }, MSA_BLOCK_BYTES>;

/// Shared memory of the score kernels (the prefill kernel stops before
/// `red`).
#[repr(C)]
struct ScoreSmem {
    stages: [[u8; MSA_BLOCK_BYTES as usize]; IDX_STAGES as usize],
    /// The item's page ids, staged once so issuing a block's copies never
    /// waits on a dependent global load.
    pages: [u32; IDX_MAX_ITEM_BLOCKS as usize],
    /// Decode: every warp's partial maximum per (block, M row).
    red: [[[f32; 16]; WARPS as usize]; IDX_MAX_ITEM_BLOCKS as usize],
}
const _: () = assert!(offset_of!(ScoreSmem, red) as u32 == IDX_SMEM_PREFILL);
const _: () = assert!(size_of::<ScoreSmem>() as u32 == IDX_SMEM_DECODE);

/// Block scores for prefill work items: `IDX_PREFILL_M_ROWS` (query row,
/// head) pairs per CTA against every block of the item.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_scores_prefill(p: IdxScoreParams) {
    grid_prologue();
    scores::<2, 1>(&p);
}

/// Block scores for decode work items (one query row, `num_index_heads <=
/// 16`): the 4 warps split each block's keys and meet in shared memory.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_scores_decode(p: IdxScoreParams) {
    grid_prologue();
    scores::<1, WARPS>(&p);
}

/// The work items to run: `n_items`, or in graph mode the header's count
/// (at most `n_items`, the grid), none when the launch is stale.
#[inline(always)]
unsafe fn live_items(p: &IdxScoreParams) -> u32 {
    if p.graph.is_null() {
        return p.n_items;
    }
    // Both words loaded before either is tested: one round trip.
    let (epoch, n) = (header_epoch(p.graph, p.graph_epoch), header_items(p.graph));
    if epoch != p.graph_epoch {
        if thread_idx_x() == 0 {
            set_fault(p.graph);
        }
        0
    } else {
        n.min(p.n_items)
    }
}

/// A work item, clamped so corrupt metadata can never address out of bounds.
struct Item {
    seq: u32,
    row0: u32,
    qpos0: u32,
    blk0: u32,
    nblk: u32,
    /// M rows (query rows × heads) of the item.
    m_valid: u32,
}

#[inline(always)]
unsafe fn clamp_item(p: &IdxScoreParams, w: IdxWorkItem) -> Item {
    let seq = w.seq.min(p.batch - 1);
    let row0 = w.row0.min(p.num_rows);
    let nrows = w.nrows.min(p.num_rows - row0);
    let blk1 = w.blk1.min(p.cache.max_pages).min(p.score_stride);
    let blk0 = w.blk0.min(blk1);
    let blk1 = blk1.min(blk0 + IDX_MAX_ITEM_BLOCKS);
    let m_valid = nrows * p.num_index_heads;
    Item { seq, row0, qpos0: w.qpos0, blk0, nblk: blk1 - blk0, m_valid }
}

/// This thread's query rows: the A fragments of the warp's `MT` m-tiles,
/// and per (m-tile, half) the row's query position and its offset in
/// `scores` (`usize::MAX`: no row).
struct QRows<const MT: usize> {
    a: [[[u32; 4]; 8]; MT],
    qpos: [[u32; 2]; MT],
    out_off: [[usize; 2]; MT],
}

/// M row `m` is q row `row0 + m / H`, head `m % H` (rows past the item are
/// zero). A negative scale is folded into q (negating bf16 is exact), so
/// the block max of the raw dot products times |scale| is the spec's score.
#[inline(always)]
unsafe fn load_q_rows<const MT: usize, const WN: u32>(p: &IdxScoreParams, it: &Item) -> QRows<MT> {
    let (g, c) = (lane_id() >> 2, lane_id() & 3);
    let m_warp = if WN == 1 { warp_id() * (MT as u32) * 16 } else { 0 };
    let qt = p.q.ptr().add(it.row0 as usize * p.num_index_heads as usize * MSA_HEAD_DIM as usize);
    let sign = if p.scale < 0.0 { 0x8000_8000u32 } else { 0 };
    let mut q = QRows { a: [[[0u32; 4]; 8]; MT], qpos: [[0u32; 2]; MT], out_off: [[usize::MAX; 2]; MT] };
    // MT <= 2: the kernels instantiate MT = 1 and 2.
    crate::unroll!(2, mt => { if mt < MT {
        crate::unroll!(2, HALF => {
            let m = m_warp + mt as u32 * 16 + g + 8 * HALF as u32;
            let r = m / p.num_index_heads;
            q.qpos[mt][HALF] = it.qpos0 + r;
            if m < it.m_valid {
                let h = m % p.num_index_heads;
                q.out_off[mt][HALF] =
                    (h as usize * p.num_rows as usize + (it.row0 + r) as usize) * p.score_stride as usize;
                load_row_frags(&mut q.a[mt], HALF, qt.add(m as usize * MSA_HEAD_DIM as usize), c, sign);
            }
        });
    }});
    q
}

/// The score kernel body. `MT`: 16-row m-tiles per warp; `WN`: warps that
/// split a block's keys (1: every warp owns its own M rows and sweeps all
/// keys; `WARPS`: all warps share the M rows and take `16 / WN` n-tiles each).
#[inline(always)]
unsafe fn scores<const MT: usize, const WN: u32>(p: &IdxScoreParams) {
    let cta = block_idx_x();
    if cta >= live_items(p) || p.batch == 0 || p.cache.num_pages == 0 || p.num_index_heads == 0 {
        return;
    }
    let it = clamp_item(p, ld_record(p.items.ptr().add(cta as usize)));
    let q = load_q_rows::<MT, WN>(p, &it);
    let (pages, red) = (crate::smem_addr!(ScoreSmem, pages), crate::smem_addr!(ScoreSmem, red));
    let tid = thread_idx_x();
    if tid < it.nblk {
        st_shared_u32(pages + tid * 4, page_of(p.lookup.ptr(), &p.cache, it.seq, it.blk0 + tid));
    }
    sync_threads();
    let ring = Ring { base: crate::smem_addr!(ScoreSmem, stages) };
    let issue = |i: u32, dst: u32| {
        let page = ld_shared_u32(pages + i * 4);
        IndexBlock::new(p.k_cache.ptr(), &p.cache, page, p.cache.k_off, 0, 1).load::<Rows256, IDX_THREADS>(dst, tid);
    };
    let abs_scale = if p.scale < 0.0 { -p.scale } else { p.scale };
    let (g, c) = (lane_id() >> 2, lane_id() & 3);
    ring.run(it.nblk, issue, |i, tile| {
        let kbase = (it.blk0 + i) * MSA_BLOCK;
        let mut rmax = block_max::<MT, WN>(&q, tile, kbase, it.qpos0);
        for mt in 0..MT {
            for half in 0..2 {
                // max(scale * dot) = |scale| * max(sign(scale) * dot) exactly
                // (rounding is monotonic); the sign was folded into q.
                rmax[mt][half] *= abs_scale;
                let v = quad_max_f32(rmax[mt][half]);
                if WN == 1 {
                    if c == 0 && q.out_off[mt][half] != usize::MAX {
                        st_global(p.scores.ptr().add(q.out_off[mt][half] + (it.blk0 + i) as usize), v);
                    }
                } else if c == 0 {
                    let m = g + 8 * half as u32;
                    st_shared_f32(red + (((i * WARPS + warp_id()) * 16 + m) << 2), v);
                }
            }
        }
    });
    if WN > 1 {
        sync_threads();
        merge_warp_maxima(p, &it, red);
    }
}

/// This thread's maxima of the scores of the block in `tile` (keys from
/// `kbase`) over the keys its rows see causally (`pos <= q_pos`), per
/// (m-tile, half); NaN where none (maxNum: a NaN product loses).
#[inline(always)]
unsafe fn block_max<const MT: usize, const WN: u32>(q: &QRows<MT>, tile: u32, kbase: u32, qpos0: u32) -> [[f32; 2]; MT] {
    let lane = lane_id();
    let c = lane & 3;
    // The warp's n-tiles, taken NG at a time so that NG * MT accumulator
    // chains are in flight between dependent mma's.
    let nt_count = N_TILES / WN;
    let nt0 = if WN == 1 { 0 } else { warp_id() * nt_count };
    // Every row of the item sees the whole block: no per-key mask.
    let full = kbase + MSA_BLOCK - 1 <= qpos0;
    let mut rmax = [[f32::NAN; 2]; MT];
    for t in (0..nt_count).step_by(NG) {
        let mut acc = [[[0f32; 4]; MT]; NG];
        crate::unroll!(4, KK => {
            // keys (nt0+t+j)*8 .. +8, dims KK*32 .. +32: B fragments of two k-steps
            let mut b = [[0u32; 4]; NG];
            for (j, bj) in b.iter_mut().enumerate() {
                let r = (nt0 + t + j as u32) * 8 + (lane & 7);
                *bj = ldmatrix_x4(tile + Rows256::at(r, KK as u32 * 4 + (lane >> 3)));
            }
            for j in 0..NG {
                for mt in 0..MT {
                    let x = mma_bf16_16816(q.a[mt][2 * KK], [b[j][0], b[j][1]], acc[j][mt]);
                    acc[j][mt] = mma_bf16_16816(q.a[mt][2 * KK + 1], [b[j][2], b[j][3]], x);
                }
            }
        });
        for (j, accj) in acc.iter().enumerate() {
            let col = kbase + (nt0 + t + j as u32) * 8 + 2 * c;
            for mt in 0..MT {
                for e in 0..4 {
                    let half = e >> 1;
                    if full || col + (e as u32 & 1) <= q.qpos[mt][half] {
                        rmax[mt][half] = fmax(rmax[mt][half], accj[mt][e]);
                    }
                }
            }
        }
    }
    rmax
}

/// Decode: merges the warps' partial maxima of every block of the item
/// (`red`, `[blocks, WARPS, 16]`) and writes the scores.
#[inline(always)]
unsafe fn merge_warp_maxima(p: &IdxScoreParams, it: &Item, red: u32) {
    let mut idx = thread_idx_x();
    while idx < it.nblk * 16 {
        let (i, m) = (idx / 16, idx % 16);
        if m < it.m_valid {
            let mut v = f32::NAN;
            for wi in 0..WARPS {
                v = fmax(v, ld_shared_f32(red + (((i * WARPS + wi) * 16 + m) << 2)));
            }
            let (h, row) = (m % p.num_index_heads, it.row0 + m / p.num_index_heads);
            let off = (h as usize * p.num_rows as usize + row as usize) * p.score_stride as usize;
            st_global(p.scores.ptr().add(off + (it.blk0 + i) as usize), v);
        }
        idx += IDX_THREADS;
    }
}

/// The block scores of one (index head, row) as selection keys: forced
/// blocks get the spec's scores (init first, then local), NaN ranks below
/// every number, ties go to the lower block id.
struct BlockKeys {
    srow: *const f32,
    num_blocks: u32,
    init_blocks: u32,
    local_blocks: u32,
}

impl BlockKeys {
    /// Row `pair` (head-major) of the scores: `num_blocks = q_pos / 128 +
    /// 1`, clamped to `score_stride`.
    #[inline(always)]
    unsafe fn new(p: &IdxTopkParams, pair: u32) -> Self {
        let row = pair % p.num_rows;
        let nb = (ld_global_nc_u32(p.row_qpos.ptr().add(row as usize)) / MSA_BLOCK + 1).min(p.score_stride);
        BlockKeys {
            srow: p.scores.ptr().add(pair as usize * p.score_stride as usize),
            num_blocks: nb,
            init_blocks: p.init_blocks,
            local_blocks: p.local_blocks,
        }
    }
}

impl KeySource for BlockKeys {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.num_blocks
    }

    #[inline(always)]
    fn key(&self, j: u32) -> u64 {
        // SAFETY: j < num_blocks <= score_stride: inside the row.
        let mut s = f32::from_bits(unsafe { ld_global_nc_u32(self.srow.add(j as usize) as *const u32) });
        if j < self.init_blocks {
            s = FORCED_INIT;
        }
        if j + self.local_blocks >= self.num_blocks {
            s = FORCED_LOCAL;
        }
        key_of(s, j)
    }
}

/// Top-k block ids per (index head, query row): one warp per pair. Keys
/// per lane in registers follow the row's length (1, 8 or 32), so short
/// prefill rows cost a few instructions per pick.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_topk(p: IdxTopkParams) {
    grid_prologue();
    let pair = block_idx_x() * IDX_TOPK_WARPS + warp_id();
    if p.num_rows == 0 || pair >= p.num_rows * p.num_index_heads {
        return;
    }
    if stale(p.graph, p.graph_epoch) {
        fill_none(&p, pair, lane_id(), 32);
        return;
    }
    let keys = BlockKeys::new(&p, pair);
    let o = p.out.ptr().add(pair as usize * p.topk as usize);
    let emit = |slot: u32, k: u64| {
        if lane_id() == 0 {
            st_global(o.add(slot as usize), key_index(k) as i32);
        }
    };
    let nb = keys.len();
    let n = if nb <= 32 {
        warp_select::<1>(&keys, p.topk, emit)
    } else if nb <= 256 {
        warp_select::<8>(&keys, p.topk, emit)
    } else {
        warp_select::<{ IDX_TOPK_KEYS_PER_LANE as usize }>(&keys, p.topk, emit)
    };
    let mut s = n + lane_id();
    while s < p.topk {
        st_global(o.add(s as usize), -1);
        s += 32;
    }
}

/// A stale graph launch's output for `pair`: every slot `-1` (thread `i`
/// of `n` writes slots `i, i + n, …`).
#[inline(always)]
unsafe fn fill_none(p: &IdxTopkParams, pair: u32, i: u32, n: u32) {
    let o = p.out.ptr().add(pair as usize * p.topk as usize);
    let mut s = i;
    while s < p.topk {
        st_global(o.add(s as usize), -1);
        s += n;
    }
}

const _: () = assert!(idx_smem_topk_long(7) == cta_threshold_smem(IDX_TOPK_WARPS * 32, 7));

/// Top-k for long rows (decode): one CTA of `IDX_TOPK_WARPS * 32` threads
/// per (head, row), `tile::topk::cta_threshold_select` with at most `cap`
/// survivors (sized by the host; dynamic shared memory
/// `idx_smem_topk_long(cap)`).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_topk_long(p: IdxTopkParams) {
    grid_prologue();
    const T: u32 = IDX_TOPK_WARPS * 32;
    let pair = block_idx_x();
    if p.num_rows == 0 || pair >= p.num_rows * p.num_index_heads || p.topk == 0 {
        return;
    }
    if stale(p.graph, p.graph_epoch) {
        fill_none(&p, pair, thread_idx_x(), T);
        return;
    }
    let keys = BlockKeys::new(&p, pair);
    let o = p.out.ptr().add(pair as usize * p.topk as usize);
    cta_threshold_select::<T>(&keys, p.topk, p.cap, dynamic_smem(), |slot, k| {
        st_global(o.add(slot as usize), key_index(k) as i32);
    });
    let mut s = keys.len().min(p.topk) + thread_idx_x();
    while s < p.topk {
        st_global(o.add(s as usize), -1);
        s += T;
    }
}
