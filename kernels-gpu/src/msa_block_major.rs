//! MSA block-sparse prefill, KV-block-major: a device-side CSR plan, a
//! tensor-core run over each selected block, and an LSE combine.
//!
//! The query-major kernel (`msa_attention`) gives each (row, KV head) its own
//! CTA, which re-reads every block a row selected; in prefill thousands of
//! rows select the same block. Here the selections are inverted so that a
//! block is loaded once and multiplied against all the rows that chose it:
//!
//! 1. `msa_prefill_count`: one thread per edge (KV head, row, slot) whose
//!    block is attended; counts the edges of each plan *key*.
//! 2. `msa_prefill_scan` (one CTA): exclusive scan of the counts into CSR
//!    offsets, work items of at most `BM_ITEM_TILES * (16 / group)` edges each
//!    (a block chosen by thousands of rows becomes many items), the item count
//!    (read by the run on the device: the host never waits), and the counts
//!    zeroed for the next call.
//! 3. `msa_prefill_scatter`: every edge goes to its place in its key's list
//!    (the count's atomics gave each edge its rank).
//! 4. `msa_prefill_run_wg` (the default) / `msa_prefill_run`: one CTA per
//!    work item loads the key's K and V block into shared memory once; each
//!    warp takes 16-row m-tiles of (row, head) pairs of the item's rows (one
//!    row × 16 heads for group 16; `16 / group` rows otherwise), computes
//!    S = Q·Kᵀ, the block's softmax and P·V (bf16 in, f32 accumulate) and
//!    writes the unnormalised partial output (bf16) and its (max, sum) (f32)
//!    for the edge's (row, slot). `_wg`: the 4 warps are one warpgroup and
//!    issue `wgmma.m64n128k16` (A from registers, B from shared memory), so
//!    each K/V fragment is read once per 64 rows; each round's output is
//!    stored while the next round's S product runs. Without `_wg`:
//!    `mma.m16n8k16` per warp, K/V through `ldmatrix` (shared-memory bound at
//!    about 190 TFLOP/s; kept for comparison).
//! 5. `msa_prefill_combine`: one warp per (row, head) merges the row's valid
//!    slots in slot order (bit-reproducible); no valid slot gives 0 and -inf.
//!
//! A plan key is (KV head, window, sequence, block): `key = kh * n_keys +
//! row_key_base + block`, where the host gives every row the base of its
//! (window of `BM_WINDOW` rows, sequence) range. Keying by window keeps the
//! items that run together on the queries of one window (L2-resident).
//!
//! The CSR order inside a key depends on atomics and differs between runs;
//! the results do not: every mma row depends only on its own query row, and
//! partials are addressed by (row, slot), not by list position.
//!
//! Edges (the spec's rule): slot id `>= 0`, `< ceil(seqlen_k / 128)` and not
//! past the row's own block; keys `pos > q_pos` of the diagonal block are
//! masked, and V rows `pos >= seqlen_k` (the unwritten page tail) are zeroed
//! so that garbage there (even NaN) cannot reach the output.

use sparse_attn_abi::msa::*;
use crate::arch::*;

const ROW_BYTES: u32 = MSA_HEAD_DIM * 2;
const ROW_CHUNKS: u32 = ROW_BYTES / 16;
const WARPS: u32 = BM_THREADS / 32;
const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2: f32 = core::f32::consts::LN_2;

/// A row's `(sequence, seqlen_k, q_pos, key_base)`, `q_pos` clamped below
/// `seqlen_k` (so key 0 of every attended block is visible).
#[inline(always)]
unsafe fn row_of(row_info: *const u32, t: u32) -> (u32, u32, u32, u32) {
    let r = row_info.add(ATT_ROW_WORDS * t as usize);
    let sk = ld_global_nc_u32(r.add(1));
    let qp = ld_global_nc_u32(r.add(2)).min(sk.max(1) - 1);
    (ld_global_nc_u32(r), sk, qp, ld_global_nc_u32(r.add(3)))
}

/// The block that `d_indices[at]` selects if that edge is attended: id `>= 0`,
/// inside the sequence, not past the row's own block (and inside the page
/// table).
#[inline(always)]
unsafe fn edge_block(d_indices: *const i32, at: usize, sk: u32, qp: u32, max_pages: u32) -> Option<u32> {
    let blk = ld_global_nc_u32(d_indices.add(at) as *const u32) as i32;
    let nblocks = sk.div_ceil(MSA_BLOCK).min(qp / MSA_BLOCK + 1).min(max_pages);
    if blk >= 0 && (blk as u32) < nblocks {
        Some(blk as u32)
    } else {
        None
    }
}

/// The attended edge of thread `e` of the count / scatter grid: its index
/// `e`, key, packed `(row << 8) | slot` and the row's `q_pos`.
#[inline(always)]
unsafe fn edge_key(
    d_indices: *const i32,
    row_info: *const u32,
    rows: u32,
    n_kv_heads: u32,
    topk: u32,
    n_keys: u32,
    max_pages: u32,
) -> Option<(u32, u32, u32, u32)> {
    let e = block_idx_x() * BM_EDGE_THREADS + thread_idx_x();
    if e >= n_kv_heads * rows * topk {
        return None;
    }
    let (kh, t, slot) = (e / (rows * topk), (e / topk) % rows, e % topk);
    let (_, sk, qp, key_base) = row_of(row_info, t);
    let blk = edge_block(d_indices, e as usize, sk, qp, max_pages)?;
    Some((e, kh * n_keys + key_base + blk, (t << 8) | slot, qp))
}

/// Plan step 1: `counts[key] += 1` for every attended edge, keeping the
/// count before it as the edge's place in its key's list (`ranks[e]`).
/// `d_indices` i32 `[n_kv_heads, rows, topk]`, `row_info` `[rows, 4]`,
/// `counts` `[n_kv_heads * n_keys]` (zero on entry), `ranks` `[n_kv_heads *
/// rows * topk]`.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_prefill_count(
    d_indices: *const i32,
    row_info: *const u32,
    counts: *mut u32,
    ranks: *mut u32,
    rows: u32,
    n_kv_heads: u32,
    topk: u32,
    n_keys: u32,
    max_pages: u32,
) {
    grid_prologue();
    if let Some((e, key, _, _)) = edge_key(d_indices, row_info, rows, n_kv_heads, topk, n_keys, max_pages) {
        *ranks.add(e as usize) = atomic_add_global_u32(counts.add(key as usize), 1);
    }
}

/// Plan step 2 (one CTA of `BM_SCAN_THREADS`): `cursor[key]` = CSR offset of
/// the key, `items` `[*, 4]` = `(key, edge0, edge1, 0)` with at most
/// `item_edges` edges each, `n_items[0]` = their number; `counts` is zeroed.
/// Dynamic shared memory: `BM_SCAN_THREADS * 8` bytes.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_prefill_scan(
    counts: *mut u32,
    cursor: *mut u32,
    items: *mut u32,
    n_items: *mut u32,
    key_info: *const u32,
    lookup: *const u32,
    nk: u32,
    n_keys: u32,
    max_pages: u32,
    num_pages: u32,
    item_edges: u32,
) {
    grid_prologue();
    let tid = thread_idx_x();
    let per = nk.div_ceil(BM_SCAN_THREADS);
    let k0 = (tid * per).min(nk);
    let k1 = (k0 + per).min(nk);
    // (items << 32) | edges of this thread's keys; both stay below 2^32.
    let mut own = 0u64;
    for k in k0..k1 {
        let c = *counts.add(k as usize);
        own += c as u64 | ((c.div_ceil(item_edges) as u64) << 32);
    }
    // Inclusive Hillis–Steele scan over the threads.
    let s = dynamic_smem();
    st_shared_u64(s + tid * 8, own);
    sync_threads();
    let mut off = 1;
    while off < BM_SCAN_THREADS {
        let add = if tid >= off { ld_shared_u64(s + (tid - off) * 8) } else { 0 };
        sync_threads();
        st_shared_u64(s + tid * 8, ld_shared_u64(s + tid * 8) + add);
        sync_threads();
        off *= 2;
    }
    let incl = ld_shared_u64(s + tid * 8);
    let excl = incl - own;
    let (mut eo, mut io) = (excl as u32, (excl >> 32) as u32);
    for k in k0..k1 {
        let c = *counts.add(k as usize);
        *counts.add(k as usize) = 0;
        *cursor.add(k as usize) = eo;
        // The key's page, so that a run CTA can start its K/V copies after one
        // load (the item) instead of three dependent ones.
        let mut page = 0;
        if c > 0 && num_pages > 0 {
            let ki = key_info.add(BM_KEY_WORDS * (k % n_keys.max(1)) as usize);
            let (seq, blk) = (*ki, *ki.add(1));
            page = (*lookup.add((seq * max_pages + blk) as usize)).min(num_pages - 1);
        }
        let mut e = 0;
        while e < c {
            let n = (c - e).min(item_edges);
            let it = items.add(BM_ITEM_WORDS * io as usize);
            *it = k;
            *it.add(1) = eo + e;
            *it.add(2) = eo + e + n;
            *it.add(3) = page;
            io += 1;
            e += n;
        }
        eo += c;
    }
    if tid == BM_SCAN_THREADS - 1 {
        *n_items = (incl >> 32) as u32;
    }
}

/// Plan step 3: every attended edge goes to its place in its key's list:
/// `edges[offset[key] + ranks[e]] = ((row << 8) | slot, q_pos)` (no
/// atomics: the places were taken by the count).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_prefill_scatter(
    d_indices: *const i32,
    row_info: *const u32,
    offset: *const u32,
    ranks: *const u32,
    edges: *mut u32,
    rows: u32,
    n_kv_heads: u32,
    topk: u32,
    n_keys: u32,
    max_pages: u32,
) {
    grid_prologue();
    if let Some((e, key, packed, qp)) = edge_key(d_indices, row_info, rows, n_kv_heads, topk, n_keys, max_pages) {
        let at = ld_global_nc_u32(offset.add(key as usize)) + ld_global_nc_u32(ranks.add(e as usize));
        *(edges as *mut u64).add(at as usize) = packed as u64 | (qp as u64) << 32;
    }
}

/// Both run kernels (one argument list): the entry point calls
/// `run_body::<WG>`.
macro_rules! run_kernel {
    ($(#[$doc:meta])* $name:ident, $wg:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(
            q: *const u16,
            kv: *const u16,
            key_info: *const u32,
            items: *const u32,
            n_items: *const u32,
            edges: *const u32,
            part_o: *mut u16,
            part_ml: *mut f32,
            n_heads: u32,
            n_kv_heads: u32,
            n_keys: u32,
            num_pages: u32,
            page_stride: u64,
            k_off: u64,
            v_off: u64,
            topk: u32,
            scale: f32,
        ) {
            grid_prologue();
            run_body::<$wg>(
                q, kv, key_info, items, n_items, edges, part_o, part_ml, n_heads, n_kv_heads,
                n_keys, num_pages, page_stride, k_off, v_off, topk, scale,
            );
        }
    };
}

run_kernel!(
/// [`msa_prefill_run`] with `wgmma` (sm_90a): the CTA's 4 warps are one
/// warpgroup and multiply 4 m-tiles (64 rows) at a time, reading each K and
/// V fragment from shared memory once for all of them (the K and V tiles are
/// stored as two 64-dim slabs of 128-byte swizzled rows, as `wgmma`'s
/// canonical layouts want). Same arguments, same results.
    msa_prefill_run_wg,
    true
);

#[inline(always)]
unsafe fn run_body<const WG: bool>(
    q: *const u16,
    kv: *const u16,
    key_info: *const u32,
    items: *const u32,
    n_items: *const u32,
    edges: *const u32,
    part_o: *mut u16,
    part_ml: *mut f32,
    n_heads: u32,
    n_kv_heads: u32,
    n_keys: u32,
    num_pages: u32,
    page_stride: u64,
    k_off: u64,
    v_off: u64,
    topk: u32,
    scale: f32,
) {
    let cta = block_idx_x();
    if n_kv_heads == 0 || n_keys == 0 || num_pages == 0 || cta >= ld_global_nc_u32(n_items) {
        return;
    }
    let [key, e0, e1, page] = ld_global_nc_v4(items.add(BM_ITEM_WORDS * cta as usize) as *const u8);
    let ne = (e1 - e0).min(BM_MAX_ITEM_EDGES); // the plan never makes larger items
    let edges = edges.add(2 * e0 as usize);
    let kh = key / n_keys;
    let page = page.min(num_pages - 1);
    let group = (n_heads / n_kv_heads).clamp(1, 16);
    let tpt = 16 / group; // rows per m-tile
    let ntiles = ne.div_ceil(tpt);
    let (warp, lane, tid) = (warp_id(), lane_id(), thread_idx_x());
    let (g, c) = (lane >> 2, lane & 3);

    // The block's K and V tiles (rows XOR-swizzled by 16-byte chunk).
    let smem = dynamic_smem();
    let (ks, vs) = (smem, smem + MSA_BLOCK_BYTES);
    let qbuf = smem + 2 * MSA_BLOCK_BYTES + warp * 2 * BM_Q_TILE_BYTES;
    let tok_stride = (n_kv_heads * MSA_HEAD_DIM) as usize;
    let base = kv.add(page as usize * page_stride as usize + (kh * MSA_HEAD_DIM) as usize);
    // Byte offset of 16-byte chunk `cc` of key row `r` in a K or V tile:
    // 256-byte rows (ldmatrix), or for wgmma two slabs of dims 0..64 and
    // 64..128 with 128-byte rows; either way chunk-swizzled by `r % 8`.
    let kv_at = |r: u32, cc: u32| -> u32 {
        if WG {
            (cc / 8) * (MSA_BLOCK_BYTES / 2) + r * 128 + (((cc % 8) ^ (r & 7)) << 4)
        } else {
            r * ROW_BYTES + ((cc ^ (r & 7)) << 4)
        }
    };
    for (dst, off) in [(ks, k_off), (vs, v_off)] {
        let src = base.add(off as usize) as *const u8;
        let mut ch = tid;
        while ch < MSA_BLOCK_BYTES / 16 {
            let (r, cc) = (ch / ROW_CHUNKS, ch % ROW_CHUNKS);
            cp_async_16(dst + kv_at(r, cc), src.add(r as usize * tok_stride * 2 + cc as usize * 16));
            ch += BM_THREADS;
        }
    }
    cp_async_commit();
    let ki = key_info.add(BM_KEY_WORDS * (key % n_keys) as usize);
    let (blk, sk) = (ld_global_nc_u32(ki.add(1)), ld_global_nc_u32(ki.add(2)));

    // The item's edges, (packed, q_pos) pairs, staged once; then, per m-tile
    // row r, `r / group | (r % group) << 8` (all
    // ones past the tile's rows), so the tile loop divides by nothing.
    let es = qbuf - warp * 2 * BM_Q_TILE_BYTES + WARPS * 2 * BM_Q_TILE_BYTES;
    let rt = es + BM_MAX_ITEM_EDGES * 8;
    let mut e = tid;
    while e < ne {
        st_shared_u32(es + e * 8, ld_global_nc_u32(edges.add(2 * e as usize)));
        st_shared_u32(es + e * 8 + 4, ld_global_nc_u32(edges.add(2 * e as usize + 1)));
        e += BM_THREADS;
    }
    if tid < 16 {
        let tok = tid / group;
        st_shared_u32(rt + 4 * tid, if tok < tpt { tok | (tid % group) << 8 } else { u32::MAX });
    }
    sync_threads();

    // Row r of m-tile j is head kh * group + r % group of the item's edge
    // j * tpt + r / group: `(row, slot, head, edge)`; `None` for padding rows.
    let edge_of = |j: u32, r: u32| -> Option<(u32, u32, u32, u32)> {
        let v = ld_shared_u32(rt + 4 * r);
        let e = j * tpt + (v & 0xff);
        if v != u32::MAX && e < ne {
            let packed = ld_shared_u32(es + e * 8);
            Some((packed >> 8, packed & 255, kh * group + (v >> 8), e))
        } else {
            None
        }
    };
    // Group 16 (M3): an m-tile is one edge, and its 16 query rows and 16
    // partial rows are each one contiguous 4 KiB run; other groups go row by
    // row. Lane l moves 16-byte chunk l % 16 of rows l / 16 + 2 i of a tile.
    let whole = group == 16;
    let part_at = |t: u32, slot: u32, h: u32| ((t * topk + slot) * n_heads + h) as usize;
    let load_q = |j: u32, buf: u32| {
        let cc = lane % 16;
        if whole {
            let t = ld_shared_u32(es + j * 8) >> 8;
            let src = q.add((t * n_heads + kh * 16) as usize * MSA_HEAD_DIM as usize) as *const u8;
            for i in 0..8 {
                let r = lane / 16 + 2 * i;
                cp_async_16(buf + r * ROW_BYTES + ((cc ^ (r & 7)) << 4), src.add((r * ROW_BYTES + cc * 16) as usize));
            }
            return;
        }
        for i in 0..8 {
            let r = lane / 16 + 2 * i;
            if let Some((t, _, h, _)) = edge_of(j, r) {
                let src = q.add((t * n_heads + h) as usize * MSA_HEAD_DIM as usize) as *const u8;
                cp_async_16(buf + r * ROW_BYTES + ((cc ^ (r & 7)) << 4), src.add(cc as usize * 16));
            }
        }
    };

    let mut j = warp;
    if j < ntiles {
        load_q(j, qbuf);
    }
    cp_async_commit();
    cp_async_wait::<1>(); // this thread's K and V copies have landed
    if WG {
        fence_proxy_async_shared(); // ... and wgmma will see them
    }
    sync_threads();
    let blk_base = blk * MSA_BLOCK;
    if blk_base + MSA_BLOCK > sk {
        // The last page's unwritten tail: P is 0 there, but 0 · NaN is NaN.
        let r0 = sk.max(blk_base) - blk_base;
        let mut ch = tid;
        while ch < (MSA_BLOCK - r0) * ROW_CHUNKS {
            st_shared_zero16(vs + kv_at(r0 + ch / ROW_CHUNKS, ch % ROW_CHUNKS));
            ch += BM_THREADS;
        }
        if WG {
            fence_proxy_async_shared();
        }
        sync_threads();
    }

    let sl2 = scale * LOG2E;

    // Writes m-tile `jj`'s output (`opk`: bf16 pairs of rows g and g + 8 for
    // each 8-dim column) and its (max, sum) stats: staged through `buf` (a
    // consumed query tile) for 16-byte stores.
    let store_tile = |jj: u32, buf: u32, opk: &[[u32; 2]; 16], mx: [f32; 2], l: [f32; 2]| {
        sync_warp();
        crate::unroll!(16, D => {
            crate::unroll!(2, H => {
                let r = g + 8 * H as u32;
                st_shared_u32(buf + r * ROW_BYTES + (((D as u32) ^ (r & 7)) << 4) + 4 * c, opk[D][H]);
            });
        });
        sync_warp();
        let cc = lane % 16;
        if whole {
            let packed = ld_shared_u32(es + jj * 8);
            let at = part_at(packed >> 8, packed & 255, kh * 16);
            let dst = part_o.add(at * MSA_HEAD_DIM as usize) as *mut u8;
            for i in 0..8 {
                let r = lane / 16 + 2 * i;
                let v = ld_shared_v4(buf + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                st_global_v4(dst.add((r * ROW_BYTES + cc * 16) as usize), v);
            }
            if c == 0 {
                for h in 0..2 {
                    let ml = part_ml.add(2 * (at + (g + 8 * h as u32) as usize));
                    *ml = mx[h];
                    *ml.add(1) = l[h];
                }
            }
        } else {
            for i in 0..8 {
                let r = lane / 16 + 2 * i;
                if let Some((t, slot, h, _)) = edge_of(jj, r) {
                    let at = part_at(t, slot, h) * MSA_HEAD_DIM as usize + cc as usize * 8;
                    let v = ld_shared_v4(buf + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                    st_global_v4(part_o.add(at) as *mut u8, v);
                }
            }
            if c == 0 {
                for h in 0..2 {
                    if let Some((t, slot, head, _)) = edge_of(jj, g + 8 * h as u32) {
                        let ml = part_ml.add(2 * part_at(t, slot, head));
                        *ml = mx[h];
                        *ml.add(1) = l[h];
                    }
                }
            }
        }
    };

    let mut n = 0u32;
    // wgmma: all 4 warps take part in every round; past its last tile a warp
    // computes masked padding rows and writes nothing. Each round's output
    // is written during the next round's S product (the tensor cores work
    // while the warp stores).
    let rounds = ntiles.div_ceil(WARPS);
    let mut opk = [[0u32; 2]; 16];
    let (mut prev_j, mut prev_m, mut prev_l) = (u32::MAX, [0f32; 2], [0f32; 2]);
    while if WG { n < rounds } else { j < ntiles } {
        let live = j < ntiles;
        let cur = qbuf + (n % 2) * BM_Q_TILE_BYTES;
        if j + WARPS < ntiles {
            load_q(j + WARPS, qbuf + ((n + 1) % 2) * BM_Q_TILE_BYTES);
        }
        cp_async_commit();
        cp_async_wait::<1>(); // tile j's rows have landed (this lane's)
        sync_warp(); // ... and every lane's

        // Keys visible to rows g and g + 8: index <= lim (lim < 0: padding).
        let mut lim = [-1i32; 2];
        if !live {
        } else if whole {
            lim = [ld_shared_u32(es + j * 8 + 4) as i32 - blk_base as i32; 2];
        } else {
            for h in 0..2 {
                if let Some((_, _, _, e)) = edge_of(j, g + 8 * h as u32) {
                    lim[h] = ld_shared_u32(es + e * 8 + 4) as i32 - blk_base as i32;
                }
            }
        }

        // S = Q Kᵀ over the block's 128 keys (16 n-tiles).
        let mut s = [[0f32; 4]; 16];
        if WG {
            // A: this warp's 16 rows, all 8 k-steps; B: the K tile, K-major.
            let mut af = [[0u32; 4]; 8];
            crate::unroll!(8, KS => {
                let (mi, r) = (lane >> 3, (lane & 7) + 8 * ((lane >> 3) & 1));
                let cc = KS as u32 * 2 + (mi >> 1);
                af[KS] = ldmatrix_x4(cur + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
            });
            wgmma_fence(&mut s, &af);
            crate::unroll!(8, KS => {
                let at = ks + (KS as u32 / 4) * (MSA_BLOCK_BYTES / 2) + (KS as u32 % 4) * 32;
                wgmma_m64n128k16_bf16::<0>(&mut s, af[KS], wgmma_desc_sw128(at, 16, 1024), KS > 0);
            });
            wgmma_commit();
            // The query tile is in registers now: it stages the previous
            // round's output while the product runs.
            if prev_j != u32::MAX {
                store_tile(prev_j, cur, &opk, prev_m, prev_l);
            }
            wgmma_wait0(&mut s, &af);
        } else {
            crate::unroll!(4, KK => {
                let mut a = [[0u32; 4]; 2];
                crate::unroll!(2, H => {
                    let (mi, r) = (lane >> 3, (lane & 7) + 8 * ((lane >> 3) & 1));
                    let cc = (2 * KK + H) as u32 * 2 + (mi >> 1);
                    a[H] = ldmatrix_x4(cur + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                });
                crate::unroll!(16, J => {
                    let r = J as u32 * 8 + (lane & 7);
                    let cc = KK as u32 * 4 + (lane >> 3);
                    let b = ldmatrix_x4(ks + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                    s[J] = mma_bf16_16816(a[0], [b[0], b[1]], s[J]);
                    s[J] = mma_bf16_16816(a[1], [b[2], b[3]], s[J]);
                });
            });
        }
        // Causal mask, only where a row's own block is this one (lim < 127),
        // then the row max of the raw scores (scale > 0: the host checks).
        if lim[0] < MSA_BLOCK as i32 - 1 || lim[1] < MSA_BLOCK as i32 - 1 {
            crate::unroll!(16, J => {
                crate::unroll!(4, E => {
                    let kidx = (J * 8) as i32 + 2 * c as i32 + (E & 1) as i32;
                    if kidx > lim[E >> 1] {
                        s[J][E] = f32::NEG_INFINITY;
                    }
                });
            });
        }
        // Row maxima as trees (a 32-long chain of dependent max ops would
        // stall the warp; the SM holds only 2 warps per scheduler).
        let mut t8 = [[f32::NEG_INFINITY; 2]; 8];
        crate::unroll!(8, J => {
            crate::unroll!(2, H => {
                let a = fmax(s[2 * J][2 * H], s[2 * J][2 * H + 1]);
                let b = fmax(s[2 * J + 1][2 * H], s[2 * J + 1][2 * H + 1]);
                t8[J][H] = fmax(a, b);
            });
        });
        let mut mx = [f32::NEG_INFINITY; 2];
        crate::unroll!(2, H => {
            let a = fmax(fmax(t8[0][H], t8[1][H]), fmax(t8[2][H], t8[3][H]));
            let b = fmax(fmax(t8[4][H], t8[5][H]), fmax(t8[6][H], t8[7][H]));
            mx[H] = fmax(a, b);
        });
        let mut l4 = [[0f32; 2]; 4]; // row sums in 4 interleaved chains
        let mut msc = [0f32; 2]; // -max · scale · log2 e
        for h in 0..2 {
            mx[h] = quad_max_f32(mx[h]) * sl2;
            if mx[h] == f32::NEG_INFINITY {
                mx[h] = 0.0; // padding row: p = 0 everywhere
            }
            msc[h] = -mx[h];
        }
        // P = exp2(S · scale · log2 e - m) as A fragments (two n-tiles = one
        // k16 step).
        let mut pa = [[0u32; 4]; 8];
        crate::unroll!(16, J => {
            let mut p = [0f32; 4];
            crate::unroll!(4, E => { p[E] = exp2(fma(s[J][E], sl2, msc[E >> 1])); });
            l4[J % 4][0] += p[0] + p[1];
            l4[J % 4][1] += p[2] + p[3];
            pa[J / 2][2 * (J & 1)] = pack_bf16x2(p[0], p[1]);
            pa[J / 2][2 * (J & 1) + 1] = pack_bf16x2(p[2], p[3]);
        });
        // Row sums: f32 sums of the unrounded p. (Summing the bf16 P on the
        // tensor cores, P · 1, moved the LSE by up to 1e-3, past the spec's
        // bound.)
        let row_sums = |l4: &[[f32; 2]; 4]| {
            let mut l = [0f32; 2];
            for h in 0..2 {
                let s0 = (l4[0][h] + l4[1][h]) + (l4[2][h] + l4[3][h]);
                let s1 = s0 + shfl_xor_f32(s0, 1);
                l[h] = s1 + shfl_xor_f32(s1, 2);
            }
            l
        };
        // O = P V.
        let mut o = [[0f32; 4]; 16];
        let l;
        if WG {
            // B: the V tile, N-major (dims contiguous), 16 keys per k-step.
            wgmma_fence(&mut o, &pa);
            crate::unroll!(8, KS => {
                let desc = wgmma_desc_sw128(vs + KS as u32 * 2048, MSA_BLOCK_BYTES / 2, 1024);
                wgmma_m64n128k16_bf16::<1>(&mut o, pa[KS], desc, KS > 0);
            });
            wgmma_commit();
            l = row_sums(&l4);
            wgmma_wait0(&mut o, &pa);
        } else {
            // V rows are keys: ldmatrix.trans gives the B fragments.
            crate::unroll!(8, KS => {
                crate::unroll!(8, DP => {
                    let r = KS as u32 * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                    let cc = DP as u32 * 2 + (lane >> 4);
                    let bv = ldmatrix_x4_trans(vs + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                    o[2 * DP] = mma_bf16_16816(pa[KS], [bv[0], bv[1]], o[2 * DP]);
                    o[2 * DP + 1] = mma_bf16_16816(pa[KS], [bv[2], bv[3]], o[2 * DP + 1]);
                });
            });
            l = row_sums(&l4);
        }
        crate::unroll!(16, D => {
            crate::unroll!(2, H => { opk[D][H] = pack_bf16x2(o[D][2 * H], o[D][2 * H + 1]); });
        });
        if WG {
            (prev_j, prev_m, prev_l) = (if live { j } else { u32::MAX }, mx, l);
        } else {
            store_tile(j, cur, &opk, mx, l);
        }
        sync_warp(); // the tile is free for the prefetch of the next round
        j += WARPS;
        n += 1;
    }
    if prev_j != u32::MAX {
        store_tile(prev_j, qbuf, &opk, prev_m, prev_l);
    }
}

/// Merges each (row, head)'s partials over its attended slots in slot order
/// (one warp per (row, head), `BM_COMBINE_WARPS` per CTA; lane `l` owns dims
/// `4l .. 4l + 4`). `out` bf16 `[rows, n_heads, 128]`; `lse` f32
/// `[rows, n_heads]` (natural log) or null.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_prefill_combine(
    part_o: *const u16,
    part_ml: *const f32,
    d_indices: *const i32,
    row_info: *const u32,
    out: *mut u16,
    lse: *mut f32,
    rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    topk: u32,
    max_pages: u32,
) {
    grid_prologue();
    let w = block_idx_x() * BM_COMBINE_WARPS + warp_id();
    if n_kv_heads == 0 || w >= rows * n_heads {
        return;
    }
    let lane = lane_id();
    let (t, h) = (w / n_heads, w % n_heads);
    let kh = h / (n_heads / n_kv_heads).max(1);
    let (_, sk, qp, _) = row_of(row_info, t);
    let slots = (kh * rows + t) * topk;
    // Slot s of (t, h) is partial (t * topk + s) * n_heads + h.
    let part = |s: u32| ((t * topk + s) * n_heads + h) as usize;
    // Slots in chunks of 8: the chunk's loads are all in flight together;
    // an online max keeps one pass (fixed order: the same bits every run).
    // out = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s, M = max_s m_s.
    const CHUNK: u32 = 8;
    let mut mx = f32::NEG_INFINITY;
    let mut acc = [0f32; 4];
    let mut wsum = 0f32;
    let mut s0 = 0;
    while s0 < topk {
        let mut m = [f32::NEG_INFINITY; CHUNK as usize];
        let mut l = [0f32; CHUNK as usize];
        let mut v = [[0u32; 2]; CHUNK as usize];
        crate::unroll!(8, S => {
            let s = s0 + S as u32;
            if s < topk && edge_block(d_indices, (slots + s) as usize, sk, qp, max_pages).is_some() {
                let [mb, lb] = ld_global_nc_v2(part_ml.add(2 * part(s)) as *const u8);
                (m[S], l[S]) = (f32::from_bits(mb), f32::from_bits(lb));
                let at = part(s) * MSA_HEAD_DIM as usize + 4 * lane as usize;
                v[S] = ld_global_nc_v2(part_o.add(at) as *const u8);
            }
        });
        let mut cm = mx;
        crate::unroll!(8, S => { cm = fmax(cm, m[S]); });
        if cm != f32::NEG_INFINITY {
            let corr = exp2(mx - cm); // mx = -inf: 0 (nothing to rescale)
            wsum *= corr;
            crate::unroll!(4, D => { acc[D] *= corr; });
            crate::unroll!(8, S => {
                let wt = exp2(m[S] - cm); // -inf (skipped slot): 0
                wsum += wt * l[S];
                let (x0, x1) = bf16x2_to_f32(v[S][0]);
                let (x2, x3) = bf16x2_to_f32(v[S][1]);
                acc[0] += wt * x0;
                acc[1] += wt * x1;
                acc[2] += wt * x2;
                acc[3] += wt * x3;
            });
            mx = cm;
        }
        s0 += CHUNK;
    }
    let inv = if wsum > 0.0 { 1.0 / wsum } else { 0.0 };
    let o = out.add(w as usize * MSA_HEAD_DIM as usize + 4 * lane as usize) as *mut u32;
    *o = pack_bf16x2(acc[0] * inv, acc[1] * inv);
    *o.add(1) = pack_bf16x2(acc[2] * inv, acc[3] * inv);
    if lane == 0 && !lse.is_null() {
        *lse.add(w as usize) = if wsum > 0.0 {
            (mx + log2(wsum)) * LN2
        } else {
            f32::NEG_INFINITY
        };
    }
}
