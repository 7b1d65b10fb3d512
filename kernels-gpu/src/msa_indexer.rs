//! MSA indexer: block scores on tensor cores, then a top-k per (head, row).
//!
//! Two steps (the host's `MsaIndexer::run` launches both on one stream):
//!
//! 1. **Scores** (`msa_indexer_scores_prefill` / `_decode`). Each CTA takes a
//!    work item (rows `row0..row0+nrows` of one sequence against KV blocks
//!    `blk0..blk1`) and streams the index-K blocks through a `IDX_STAGES`-deep
//!    `cp.async` pipeline (16-byte copies, rows XOR-swizzled so `ldmatrix` is
//!    bank-conflict free). The query rows × index heads form the M side of a
//!    bf16 `mma.m16n8k16` (q is `[rows, H, 128]`, so flattened (row, head)
//!    pairs are contiguous 256-byte rows); the block's 128 keys are N. For
//!    every M row the kernel keeps `max(scale · q·k)` over the causally visible
//!    keys (`pos <= q_pos`) and writes it to `scores[H, num_rows, stride]`.
//!    Prefill: 4 warps × 2 m-tiles = 128 M rows per CTA, every warp sweeps all
//!    128 keys. Decode: one m-tile (H ≤ 16 rows), the 4 warps split the keys
//!    and meet in shared memory.
//! 2. **Top-k** (`msa_indexer_topk`): one warp per (head, row) turns the
//!    block scores into 64-bit keys (forced init/local overrides applied,
//!    ordered float bits high, inverted block id low, so "larger key" means
//!    "higher score, then lower id") and picks the largest `topk` by repeated
//!    warp arg-max; only the lane that held the winner rescans its keys.
//!
//! Max semantics (our choice, shared with the reference): the block max is
//! IEEE maxNum, so a NaN product loses to any number, and a block whose every
//! product is NaN scores NaN, which ranks below every number.

use sparse_attn_abi::msa::*;
use crate::arch::*;

const ROW_BYTES: u32 = MSA_HEAD_DIM * 2;
/// 16-byte chunks per K row.
const ROW_CHUNKS: u32 = ROW_BYTES / 16;
/// n-tiles (8 keys each) per block.
const N_TILES: u32 = MSA_BLOCK / 8;
/// n-tiles computed together (independent accumulator chains).
const NG: usize = 4;
/// k-steps (16 dims each) per head.
const K_STEPS: usize = (MSA_HEAD_DIM / 16) as usize;
const WARPS: u32 = IDX_THREADS / 32;

/// Forced scores of the spec.
const FORCED_INIT: f32 = 1e30;
const FORCED_LOCAL: f32 = 1e29;

/// Kernel arguments common to both score kernels (see [`scores`]).
struct ScoreArgs {
    q: *const u16,
    k_cache: *const u16,
    lookup: *const u32,
    items: *const u32,
    n_items: u32,
    scores: *mut f32,
    num_rows: u32,
    num_heads: u32,
    batch: u32,
    max_pages: u32,
    num_pages: u32,
    page_stride: u64,
    layer_offset: u64,
    score_stride: u32,
    scale: f32,
}

/// Block scores for prefill work items: `IDX_PREFILL_M_ROWS` (query row,
/// head) pairs per CTA against every block of the item.
///
/// * `q`: bf16 `[num_rows, num_heads, 128]`
/// * `k_cache`: bf16 index-K cache; token `s` of page `p` at element
///   `p * page_stride + layer_offset + s * 128`
/// * `lookup`: `[batch, max_pages]` page ids (clamped to `num_pages - 1`)
/// * `items`: `[n_items, IDX_ITEM_WORDS]` work items (clamped to the shapes)
/// * `scores`: f32 `[num_heads, num_rows, score_stride]`
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_scores_prefill(
    q: *const u16,
    k_cache: *const u16,
    lookup: *const u32,
    items: *const u32,
    n_items: u32,
    scores_out: *mut f32,
    num_rows: u32,
    num_heads: u32,
    batch: u32,
    max_pages: u32,
    num_pages: u32,
    page_stride: u64,
    layer_offset: u64,
    score_stride: u32,
    scale: f32,
) {
    grid_prologue();
    let a = ScoreArgs {
        q,
        k_cache,
        lookup,
        items,
        n_items,
        scores: scores_out,
        num_rows,
        num_heads,
        batch,
        max_pages,
        num_pages,
        page_stride,
        layer_offset,
        score_stride,
        scale,
    };
    scores::<2, 1>(&a);
}

/// Block scores for decode work items (one query row, `num_heads <= 16`):
/// the 4 warps split each block's keys. Arguments as the prefill kernel.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_scores_decode(
    q: *const u16,
    k_cache: *const u16,
    lookup: *const u32,
    items: *const u32,
    n_items: u32,
    scores_out: *mut f32,
    num_rows: u32,
    num_heads: u32,
    batch: u32,
    max_pages: u32,
    num_pages: u32,
    page_stride: u64,
    layer_offset: u64,
    score_stride: u32,
    scale: f32,
) {
    grid_prologue();
    let a = ScoreArgs {
        q,
        k_cache,
        lookup,
        items,
        n_items,
        scores: scores_out,
        num_rows,
        num_heads,
        batch,
        max_pages,
        num_pages,
        page_stride,
        layer_offset,
        score_stride,
        scale,
    };
    scores::<1, WARPS>(&a);
}

/// The score kernel body. `MT`: 16-row m-tiles per warp; `WN`: warps that
/// split a block's keys (1: every warp owns its own M rows and sweeps all
/// keys; `WARPS`: all warps share the M rows and take `16 / WN` n-tiles each).
#[inline(always)]
unsafe fn scores<const MT: usize, const WN: u32>(p: &ScoreArgs) {
    let item = block_idx_x();
    if item >= p.n_items || p.batch == 0 || p.num_pages == 0 || p.num_heads == 0 {
        return;
    }
    // Work item, clamped so corrupt metadata can never address out of bounds.
    let w = p.items.add(item as usize * IDX_ITEM_WORDS);
    let seq = ld_global_nc_u32(w).min(p.batch - 1);
    let row0 = ld_global_nc_u32(w.add(1)).min(p.num_rows);
    let nrows = ld_global_nc_u32(w.add(2)).min(p.num_rows - row0);
    let qpos0 = ld_global_nc_u32(w.add(3));
    let blk1 = ld_global_nc_u32(w.add(5))
        .min(p.max_pages)
        .min(p.score_stride);
    let blk0 = ld_global_nc_u32(w.add(4)).min(blk1);
    let blk1 = blk1.min(blk0 + IDX_MAX_ITEM_BLOCKS);
    let nblk = blk1 - blk0;
    let m_valid = nrows * p.num_heads;

    let warp = warp_id();
    let lane = lane_id();
    let (g, c) = (lane >> 2, lane & 3);
    let m_warp = if WN == 1 { warp * (MT as u32) * 16 } else { 0 };

    // Q fragments for the warp's m-tiles, straight from global memory (rows
    // past the item are zero). M row m is q row row0 + m / H, head m % H.
    let qt =
        p.q.add(row0 as usize * p.num_heads as usize * MSA_HEAD_DIM as usize);
    // A negative scale is folded into q (negating bf16 is exact), so the
    // block max of the raw dot products times |scale| is the spec's score.
    let sign = if p.scale < 0.0 { 0x8000_8000u32 } else { 0 };
    let abs_scale = if p.scale < 0.0 { -p.scale } else { p.scale };
    let mut a = [[[0u32; 4]; K_STEPS]; MT];
    let mut qpos = [[0u32; 2]; MT]; // query position of the thread's two rows per m-tile
    let mut out_off = [[usize::MAX; 2]; MT]; // scores offset of those rows (MAX: no row)
                                             // MT <= 2: the kernels instantiate MT = 1 and 2.
    crate::unroll!(2, mt => { if mt < MT {
        crate::unroll!(2, HALF => {
            let m = m_warp + mt as u32 * 16 + g + 8 * HALF as u32;
            let r = m / p.num_heads;
            qpos[mt][HALF] = qpos0 + r;
            let valid = m < m_valid;
            let h = m % p.num_heads;
            if valid {
                out_off[mt][HALF] = (h as usize * p.num_rows as usize + (row0 + r) as usize)
                    * p.score_stride as usize;
            }
            let qrow = qt.add(if valid { m as usize * MSA_HEAD_DIM as usize } else { 0 });
            crate::unroll!(8, KS => {
                let k0 = KS * 16 + 2 * c as usize;
                if valid {
                    a[mt][KS][HALF] = ld_global_nc_u32(qrow.add(k0) as *const u32) ^ sign;
                    a[mt][KS][2 + HALF] = ld_global_nc_u32(qrow.add(k0 + 8) as *const u32) ^ sign;
                }
            });
        });
    }});

    let smem = dynamic_smem();
    let pages = smem + IDX_STAGES * MSA_BLOCK_BYTES; // [IDX_MAX_ITEM_BLOCKS] u32
    let red = pages + IDX_MAX_ITEM_BLOCKS * 4; // decode: [blocks, WARPS, 16] f32
    let tid = thread_idx_x();
    // Stage the item's page ids once, so issuing a block's copies never
    // waits on a dependent global load.
    if tid < nblk {
        let lk = p.lookup.add(seq as usize * p.max_pages as usize);
        let page = ld_global_nc_u32(lk.add((blk0 + tid) as usize)).min(p.num_pages - 1);
        st_shared_u32(pages + tid * 4, page);
    }
    sync_threads();
    let load = |i: u32| {
        let page = ld_shared_u32(pages + i * 4);
        let src = p
            .k_cache
            .add(page as usize * p.page_stride as usize + p.layer_offset as usize)
            as *const u8;
        let dst = smem + (i % IDX_STAGES) * MSA_BLOCK_BYTES;
        let mut ch = tid;
        while ch < MSA_BLOCK_BYTES / 16 {
            let (r, cc) = (ch / ROW_CHUNKS, ch % ROW_CHUNKS);
            cp_async_16(
                dst + r * ROW_BYTES + ((cc ^ (r & 7)) << 4),
                src.add(ch as usize * 16),
            );
            ch += IDX_THREADS;
        }
    };

    // Pipeline: IDX_STAGES - 1 blocks in flight while one is computed.
    for s in 0..IDX_STAGES - 1 {
        if s < nblk {
            load(s);
        }
        cp_async_commit();
    }
    // Warp's n-tiles per block, taken NG at a time so that NG * MT
    // accumulator chains are in flight between dependent mma's.
    let nt_count = N_TILES / WN;
    let nt0 = if WN == 1 { 0 } else { warp * nt_count };
    for i in 0..nblk {
        cp_async_wait::<{ IDX_STAGES - 2 }>();
        sync_threads();
        if i + IDX_STAGES - 1 < nblk {
            load(i + IDX_STAGES - 1);
        }
        cp_async_commit();

        let sb = smem + (i % IDX_STAGES) * MSA_BLOCK_BYTES;
        let kbase = (blk0 + i) * MSA_BLOCK;
        // Every row of the item sees the whole block: no per-key mask.
        let full = kbase + MSA_BLOCK - 1 <= qpos0;
        let mut rmax = [[f32::NAN; 2]; MT];
        for t in (0..nt_count).step_by(NG) {
            let mut acc = [[[0f32; 4]; MT]; NG];
            const _: () = assert!(K_STEPS == 8, "the unroll below covers 4 pairs of k-steps");
            crate::unroll!(4, KK => {
                // keys (nt0+t+j)*8 .. +8, dims KK*32 .. +32: B fragments of two k-steps
                let mut b = [[0u32; 4]; NG];
                for (j, bj) in b.iter_mut().enumerate() {
                    let r = (nt0 + t + j as u32) * 8 + (lane & 7);
                    let cc = KK as u32 * 4 + (lane >> 3);
                    *bj = ldmatrix_x4(sb + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                }
                for j in 0..NG {
                    for mt in 0..MT {
                        let x = mma_bf16_16816(a[mt][2 * KK], [b[j][0], b[j][1]], acc[j][mt]);
                        acc[j][mt] = mma_bf16_16816(a[mt][2 * KK + 1], [b[j][2], b[j][3]], x);
                    }
                }
            });
            for (j, accj) in acc.iter().enumerate() {
                let col = kbase + (nt0 + t + j as u32) * 8 + 2 * c;
                for mt in 0..MT {
                    for e in 0..4 {
                        let half = e >> 1;
                        if full || col + (e as u32 & 1) <= qpos[mt][half] {
                            rmax[mt][half] = fmax(rmax[mt][half], accj[mt][e]);
                        }
                    }
                }
            }
        }
        // max(scale * dot) = |scale| * max(sign(scale) * dot) exactly (rounding
        // is monotonic); the sign was folded into q.
        for row in rmax.iter_mut() {
            for v in row.iter_mut() {
                *v *= abs_scale;
            }
        }
        for mt in 0..MT {
            for half in 0..2 {
                let v = quad_max_f32(rmax[mt][half]);
                if WN == 1 {
                    if c == 0 && out_off[mt][half] != usize::MAX {
                        *p.scores.add(out_off[mt][half] + (blk0 + i) as usize) = v;
                    }
                } else if c == 0 {
                    let m = g + 8 * half as u32;
                    st_shared_f32(red + (((i * WARPS + warp) * 16 + m) << 2), v);
                }
            }
        }
    }
    cp_async_wait::<0>();

    if WN > 1 {
        // Decode: merge the warps' partial maxima of every block of the item.
        sync_threads();
        let mut idx = tid;
        while idx < nblk * 16 {
            let (i, m) = (idx / 16, idx % 16);
            if m < m_valid {
                let mut v = f32::NAN;
                for wi in 0..WARPS {
                    v = fmax(v, ld_shared_f32(red + (((i * WARPS + wi) * 16 + m) << 2)));
                }
                let (h, row) = (m % p.num_heads, row0 + m / p.num_heads);
                let off =
                    (h as usize * p.num_rows as usize + row as usize) * p.score_stride as usize;
                *p.scores.add(off + (blk0 + i) as usize) = v;
            }
            idx += IDX_THREADS;
        }
    }
}

/// Ordering key of block `j`: larger means selected first (higher score, then
/// lower id). Forced blocks get the spec's scores; NaN ranks below every
/// number; `-0.0` counts as `+0.0`. Never 0 (0 marks "no block").
#[inline(always)]
fn block_key(score: f32, j: u32, num_blocks: u32, init_blocks: u32, local_blocks: u32) -> u64 {
    let mut s = score;
    if j < init_blocks {
        s = FORCED_INIT;
    }
    if j + local_blocks >= num_blocks {
        s = FORCED_LOCAL;
    }
    let ord = if s != s {
        0
    } else {
        let bits = if s == 0.0 { 0 } else { s.to_bits() };
        if bits & 0x8000_0000 != 0 {
            !bits
        } else {
            bits | 0x8000_0000
        }
    };
    ((ord as u64) << 32) | (u32::MAX - j) as u64
}

/// Picks, with the whole warp (`KPL <= 32`), the `topk` largest keys of a lane-strided set
/// and hands each to `emit(slot, key)` in descending order; returns how many
/// (fewer than `topk` when the set runs out). Lane `l` owns the keys
/// `key(base + l + stride * i)` for the indices below `end`; the first `KPL`
/// of them live in registers, any further ones are re-read on every pick.
/// Each pick is a warp arg-max; only the lane that held the winner rescans.
#[inline(always)]
fn select<const KPL: usize>(
    base: u32,
    stride: u32,
    end: u32,
    key: impl Fn(u32) -> u64,
    topk: u32,
    mut emit: impl FnMut(u32, u64),
) -> u32 {
    let first = base + lane_id();
    // Register arrays of the largest size; entries past KPL stay constant
    // zeros and compile away. Explicit unrolls keep them in registers.
    let mut keys = [0u64; 32];
    crate::unroll!(32, I => {
        if I < KPL {
            let j = first + stride * I as u32;
            keys[I] = if j < end { key(j) } else { 0 };
        }
    });
    // Largest key of this lane below `bound` (keys are unique).
    let best_below = |keys: &[u64; 32], bound: u64| {
        let mut m = [0u64; 32];
        crate::unroll!(32, I => {
            m[I] = if keys[I] < bound { keys[I] } else { 0 };
        });
        // tree: log2(32) dependent steps
        crate::unroll!(16, I => { m[I] = m[I].max(m[I + 16]); });
        crate::unroll!(8, I => { m[I] = m[I].max(m[I + 8]); });
        crate::unroll!(4, I => { m[I] = m[I].max(m[I + 4]); });
        crate::unroll!(2, I => { m[I] = m[I].max(m[I + 2]); });
        m[0] = m[0].max(m[1]);
        let mut best = m[0];
        let mut j = first + stride * KPL as u32;
        while j < end {
            let k = key(j);
            if k < bound && k > best {
                best = k;
            }
            j += stride;
        }
        best
    };
    let mut best = best_below(&keys, u64::MAX);
    let mut slot = 0;
    while slot < topk {
        let win = warp_max_u64(best);
        if win == 0 {
            break;
        }
        emit(slot, win);
        if best == win {
            best = best_below(&keys, win);
        }
        slot += 1;
    }
    slot
}

/// Block id held in a key.
#[inline(always)]
fn key_block(key: u64) -> i32 {
    (u32::MAX - key as u32) as i32
}

/// Row metadata of the top-k kernels: number of blocks and the key reader.
#[inline(always)]
unsafe fn row_keys(
    scores: *const f32,
    row_qpos: *const u32,
    pair: u32,
    num_rows: u32,
    score_stride: u32,
    init_blocks: u32,
    local_blocks: u32,
) -> (u32, impl Fn(u32) -> u64) {
    let row = pair % num_rows;
    let nb = (ld_global_nc_u32(row_qpos.add(row as usize)) / MSA_BLOCK + 1).min(score_stride);
    let srow = scores.add(pair as usize * score_stride as usize);
    let key = move |j: u32| {
        let s = f32::from_bits(ld_global_nc_u32(srow.add(j as usize) as *const u32));
        block_key(s, j, nb, init_blocks, local_blocks)
    };
    (nb, key)
}

/// Top-k block ids per (index head, query row): one warp per pair.
///
/// * `scores`: f32 `[num_heads, num_rows, score_stride]` from a score kernel
/// * `row_qpos`: `[num_rows]` query position of each row (`num_blocks =
///   q_pos / 128 + 1`, clamped to `score_stride`)
/// * `out`: i32 `[num_heads, num_rows, topk]`, descending score, ties by lower
///   id, `-1` padding
///
/// Keys per lane in registers follow the row's length (1, 8 or 32), so short
/// prefill rows cost a few instructions per pick.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_topk(
    scores: *const f32,
    row_qpos: *const u32,
    out: *mut i32,
    num_rows: u32,
    num_heads: u32,
    score_stride: u32,
    topk: u32,
    init_blocks: u32,
    local_blocks: u32,
) {
    grid_prologue();
    let pair = block_idx_x() * IDX_TOPK_WARPS + warp_id();
    if num_rows == 0 || pair >= num_rows * num_heads {
        return;
    }
    let (nb, key) = row_keys(
        scores,
        row_qpos,
        pair,
        num_rows,
        score_stride,
        init_blocks,
        local_blocks,
    );
    let o = out.add(pair as usize * topk as usize);
    let emit = |slot: u32, k: u64| {
        if lane_id() == 0 {
            *o.add(slot as usize) = key_block(k);
        }
    };
    let n = if nb <= 32 {
        select::<1>(0, 32, nb, key, topk, emit)
    } else if nb <= 256 {
        select::<8>(0, 32, nb, key, topk, emit)
    } else {
        select::<{ IDX_TOPK_KEYS_PER_LANE as usize }>(0, 32, nb, key, topk, emit)
    };
    let mut s = n + lane_id();
    while s < topk {
        *o.add(s as usize) = -1;
        s += 32;
    }
}

/// Top-k for long rows (decode): one CTA of `T = IDX_TOPK_WARPS * 32`
/// threads per (head, row), no sequential picks.
///
/// Thread `t` owns the keys of blocks `t, t + T, ...` (the first 8 in
/// registers). The `topk`-th largest of the `T` per-thread maxima is a lower
/// bound `L` of the row's `topk`-th largest key, and only keys `>= L`
/// survive: at most `topk * ceil(nb / T)` of them (`cap`, sized by the host),
/// gathered in shared memory. Each survivor's slot is its rank among the
/// survivors (keys are unique), so the output is deterministic.
///
/// Shared memory: `[T]` u64 maxima, u64 bound, u32 count, `[cap]` u64
/// survivors. Other arguments as [`msa_indexer_topk`].
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_indexer_topk_long(
    scores: *const f32,
    row_qpos: *const u32,
    out: *mut i32,
    num_rows: u32,
    num_heads: u32,
    score_stride: u32,
    topk: u32,
    init_blocks: u32,
    local_blocks: u32,
    cap: u32,
) {
    grid_prologue();
    const T: u32 = IDX_TOPK_WARPS * 32;
    const REG: usize = 8;
    let pair = block_idx_x();
    if num_rows == 0 || pair >= num_rows * num_heads || topk == 0 {
        return;
    }
    let (nb, key) = row_keys(
        scores,
        row_qpos,
        pair,
        num_rows,
        score_stride,
        init_blocks,
        local_blocks,
    );
    let t = thread_idx_x();
    let smem = dynamic_smem();
    let (maxima, bound, count) = (smem, smem + T * 8, smem + T * 8 + 8);
    let surv = smem + T * 8 + 16;
    if t == 0 {
        st_shared_u64(bound, 0);
        st_shared_u32(count, 0);
    }
    let mut keys = [0u64; REG];
    crate::unroll!(8, I => {
        let j = t + T * I as u32;
        keys[I] = if j < nb { key(j) } else { 0 };
    });
    let mut lmax = 0u64;
    crate::unroll!(8, I => { lmax = lmax.max(keys[I]); });
    let mut j = t + T * REG as u32;
    while j < nb {
        lmax = lmax.max(key(j));
        j += T;
    }
    st_shared_u64(maxima + t * 8, lmax);
    sync_threads();
    // L: the maximum ranked topk - 1 (0 when fewer than topk threads hold keys).
    if lmax != 0 {
        let mut rank = 0;
        for d in 0..T {
            rank += (ld_shared_u64(maxima + d * 8) > lmax) as u32;
        }
        if rank == topk - 1 {
            st_shared_u64(bound, lmax);
        }
    }
    sync_threads();
    let l = ld_shared_u64(bound);
    let keep = |k: u64| {
        if k != 0 && k >= l {
            let at = atomic_add_shared_u32(count, 1);
            if at < cap {
                st_shared_u64(surv + at * 8, k);
            }
        }
    };
    crate::unroll!(8, I => { keep(keys[I]); });
    let mut j = t + T * REG as u32;
    while j < nb {
        keep(key(j));
        j += T;
    }
    sync_threads();
    let n = ld_shared_u32(count).min(cap);
    let o = out.add(pair as usize * topk as usize);
    let mut c = t;
    while c < n {
        let kc = ld_shared_u64(surv + c * 8);
        let mut rank = 0;
        for d in 0..n {
            rank += (ld_shared_u64(surv + d * 8) > kc) as u32;
        }
        if rank < topk {
            *o.add(rank as usize) = key_block(kc);
        }
        c += T;
    }
    let mut s = nb.min(topk) + t;
    while s < topk {
        *o.add(s as usize) = -1;
        s += T;
    }
}
