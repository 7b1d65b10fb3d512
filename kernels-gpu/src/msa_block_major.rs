//! MSA block-sparse attention, KV-block-major (the prefill path): a device-side CSR plan, a
//! tensor-core run over each selected block, and an LSE combine.
//!
//! The query-major kernel (`msa_attention`) gives each (row, KV head) its own
//! CTA, which re-reads every block a row selected; in prefill thousands of
//! rows select the same block. Here the selections are inverted so that a
//! block is loaded once and multiplied against all the rows that chose it:
//!
//! 1. `msa_block_major_count` ([`BlockMajorEdgeParams`]): one thread per edge (KV head, row, slot) whose
//!    block is attended; counts the edges of each plan *key*.
//! 2. `msa_block_major_scan` (one CTA, [`BlockMajorScanParams`]): exclusive scan of the counts into CSR
//!    offsets, work items of at most `BM_ITEM_TILES * (16 / group)` edges each
//!    (a block chosen by thousands of rows becomes many items), the item count
//!    (read by the run on the device: the host never waits), and the counts
//!    zeroed for the next call.
//! 3. `msa_block_major_scatter`: every edge goes to its place in its key's list
//!    (the count's atomics gave each edge its rank).
//! 4. `msa_block_major_run` ([`BlockMajorRunParams`]): one CTA per work item
//!    loads the key's K and V block into shared memory once; its 4 warps are
//!    one warpgroup and take 16-row m-tiles of (row, head) pairs of the
//!    item's rows (one row × 16 heads for group 16; `16 / group` rows
//!    otherwise), 4 at a time: S = Q·Kᵀ and O = P·V with
//!    `wgmma.m64n128k16` (A from registers, B from 128-byte-swizzled shared
//!    memory, so each K/V fragment is read once per 64 rows), the block's
//!    softmax in between (f32), and writes the unnormalised partial output
//!    (bf16) and its (max, sum) (f32) for the edge's (row, slot); each
//!    round's output is stored while the next round's S product runs.
//! 5. `msa_block_major_combine` ([`BlockMajorCombineParams`]): one warp per (row, head) merges the row's valid
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

//!
//! A NaN score (a NaN in the query row) never reaches the output: a
//! row-head whose merged sum is NaN attends nothing (`out = 0`, `lse =
//! -inf`), as on the query-major path.

use core::mem::size_of;

use sparse_attn_abi::msa::*;

use crate::arch::*;
use crate::tile::paged::{page_of, PagedBlock};
use crate::tile::softmax::{finite_or_zero, merge_weight, LseState, LN2, LOG2E};
use crate::tile::swizzle::{Rows256, Slabs128, TileLayout};

const WARPS: u32 = BM_THREADS / 32;

/// A K or V tile of one KV head, 128 tokens of 256 bytes.
type KvBlock = PagedBlock<MSA_BLOCK, 256>;
/// K and V as `wgmma` wants them: two 64-dim slabs of 128-byte rows.
type KvTile = Slabs128<MSA_BLOCK>;

/// Shared memory of the run kernel.
#[repr(C)]
struct RunSmem {
    k: [u8; MSA_BLOCK_BYTES as usize],
    v: [u8; MSA_BLOCK_BYTES as usize],
    /// Two 16-row query tiles per warp: the next one streams in while the
    /// current one is computed; a consumed one stages the output tile.
    q: [[[u8; BM_Q_TILE_BYTES as usize]; 2]; WARPS as usize],
    /// The item's edges, staged once.
    edges: [PlanEdge; BM_MAX_ITEM_EDGES as usize],
    /// Per m-tile row `r`: `r / group | (r % group) << 8` (all ones past the
    /// tile's rows), so the tile loop divides by nothing.
    row_table: [u32; 16],
}
const _: () = assert!(size_of::<RunSmem>() as u32 == BM_SMEM);

// ------------------------------------------------------------------ plan

/// A row's info with `q_pos` clamped below `seqlen_k` (so key 0 of every
/// attended block is visible).
#[inline(always)]
unsafe fn row_of(row_info: *const RowInfo, t: u32) -> RowInfo {
    let mut r = ld_record(row_info.add(t as usize));
    r.q_pos = r.q_pos.min(r.seqlen_k.max(1) - 1);
    r
}

/// The block that `d_indices[at]` selects if that edge is attended: id `>= 0`,
/// inside the sequence, not past the row's own block (and inside the page
/// table).
#[inline(always)]
unsafe fn edge_block(d_indices: *const i32, at: usize, row: &RowInfo, max_pages: u32) -> Option<u32> {
    let blk = ld_global_nc_u32(d_indices.add(at) as *const u32) as i32;
    let nblocks = row.seqlen_k.div_ceil(MSA_BLOCK).min(row.q_pos / MSA_BLOCK + 1).min(max_pages);
    if blk >= 0 && (blk as u32) < nblocks {
        Some(blk as u32)
    } else {
        None
    }
}

/// The attended edge of thread `e` of the count / scatter grid: `e`, its
/// plan key and its CSR record.
#[inline(always)]
unsafe fn edge_key(p: &BlockMajorEdgeParams) -> Option<(u32, u32, PlanEdge)> {
    let e = block_idx_x() * BM_EDGE_THREADS + thread_idx_x();
    if e >= p.n_kv_heads * p.num_rows * p.topk {
        return None;
    }
    let (kh, t, slot) = (e / (p.num_rows * p.topk), (e / p.topk) % p.num_rows, e % p.topk);
    let row = row_of(p.row_info.ptr(), t);
    let blk = edge_block(p.d_indices.ptr(), e as usize, &row, p.max_pages)?;
    Some((e, kh * p.n_keys + row.key_base + blk, PlanEdge::new(t, slot, row.q_pos)))
}

/// Plan step 1: `counts[key] += 1` for every attended edge, keeping the
/// count before it as the edge's place in its key's list (`ranks[e]`).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_block_major_count(p: BlockMajorEdgeParams) {
    grid_prologue();
    if let Some((e, key, _)) = edge_key(&p) {
        st_global(p.ranks.ptr().add(e as usize), atomic_add_global_u32(p.counts.ptr().add(key as usize), 1));
    }
}

/// Plan step 2 (one CTA of `BM_SCAN_THREADS`): `offsets[key]` = CSR offset
/// of the key, work items of at most `item_edges` edges each, with the key's
/// page, `n_items[0]` = their number; `counts` is zeroed. Dynamic shared
/// memory: `BM_SCAN_THREADS * 8` bytes.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_block_major_scan(p: BlockMajorScanParams) {
    grid_prologue();
    let tid = thread_idx_x();
    let per = p.total_keys.div_ceil(BM_SCAN_THREADS);
    let k0 = (tid * per).min(p.total_keys);
    let k1 = (k0 + per).min(p.total_keys);
    let counts = p.counts.ptr();
    // (items << 32) | edges of this thread's keys; both stay below 2^32.
    let mut own = 0u64;
    for k in k0..k1 {
        let c = ld_global(counts.add(k as usize));
        own += c as u64 | ((c.div_ceil(p.item_edges) as u64) << 32);
    }
    let incl = block_inclusive_scan(own);
    let excl = incl - own;
    let (mut eo, mut io) = (excl as u32, (excl >> 32) as u32);
    for k in k0..k1 {
        let c = ld_global(counts.add(k as usize));
        st_global(counts.add(k as usize), 0);
        st_global(p.offsets.ptr().add(k as usize), eo);
        // The key's page, so that a run CTA can start its K/V copies after one
        // load (the item) instead of three dependent ones.
        let mut page = 0;
        if c > 0 && p.num_pages > 0 {
            let key = ld_record(p.keys.ptr().add((k % p.n_keys.max(1)) as usize));
            let cache = sparse_attn_abi::PagedKv { num_pages: p.num_pages, max_pages: p.max_pages, ..Default::default() };
            page = page_of(p.lookup.ptr(), &cache, key.seq, key.block);
        }
        let mut e = 0;
        while e < c {
            let n = (c - e).min(p.item_edges);
            st_record(p.items.ptr().add(io as usize), BlockMajorItem { key: k, edge0: eo + e, edge1: eo + e + n, page });
            io += 1;
            e += n;
        }
        eo += c;
    }
    if tid == BM_SCAN_THREADS - 1 {
        st_global(p.n_items.ptr(), (incl >> 32) as u32);
    }
}

/// Inclusive Hillis–Steele scan of one value per thread over the CTA
/// (`BM_SCAN_THREADS` threads, `BM_SCAN_THREADS * 8` bytes of dynamic
/// shared memory).
#[inline(always)]
unsafe fn block_inclusive_scan(own: u64) -> u64 {
    let (s, tid) = (dynamic_smem(), thread_idx_x());
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
    ld_shared_u64(s + tid * 8)
}

/// Plan step 3: every attended edge goes to its place in its key's list,
/// `edges[offsets[key] + ranks[e]]` (no atomics: the count took the places).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_block_major_scatter(p: BlockMajorEdgeParams) {
    grid_prologue();
    if let Some((e, key, edge)) = edge_key(&p) {
        let at = ld_global_nc_u32(p.offsets.ptr().add(key as usize)) + ld_global_nc_u32(p.ranks.ptr().add(e as usize));
        st_record(p.edges.ptr().add(at as usize), edge);
    }
}

// ------------------------------------------------------------------ run

/// One run CTA's work item and the shape of its m-tiles.
struct RunCta {
    kh: u32,
    /// Edges of the item (at most `BM_MAX_ITEM_EDGES`).
    ne: u32,
    group: u32,
    /// Rows per m-tile (`16 / group`).
    tpt: u32,
    ntiles: u32,
    blk_base: u32,
    sk: u32,
    /// Group 16 (M3): an m-tile is one edge, and its 16 query rows and 16
    /// partial rows are each one contiguous 4 KiB run.
    whole: bool,
    es: u32,
    rt: u32,
}

impl RunCta {
    /// Row `r` of m-tile `j` is head `kh * group + r % group` of the item's
    /// edge `j * tpt + r / group`: `(row, slot, head, edge)`; `None` for
    /// padding rows.
    #[inline(always)]
    unsafe fn edge_of(&self, j: u32, r: u32) -> Option<(u32, u32, u32, u32)> {
        let v = ld_shared_u32(self.rt + 4 * r);
        let e = j * self.tpt + (v & 0xff);
        if v != u32::MAX && e < self.ne {
            let edge = PlanEdge { row_slot: ld_shared_u32(self.es + e * 8), q_pos: 0 };
            Some((edge.row(), edge.slot(), self.kh * self.group + (v >> 8), e))
        } else {
            None
        }
    }

    /// The packed `(row << 8) | slot` of edge `e` and its `q_pos`.
    #[inline(always)]
    unsafe fn edge(&self, e: u32) -> PlanEdge {
        PlanEdge { row_slot: ld_shared_u32(self.es + e * 8), q_pos: ld_shared_u32(self.es + e * 8 + 4) }
    }

    /// Issues this lane's copies of m-tile `j`'s 16 query rows into `buf`.
    /// Lane l moves 16-byte chunk l % 16 of rows l / 16 + 2 i of a tile.
    #[inline(always)]
    unsafe fn load_q(&self, p: &BlockMajorRunParams, j: u32, buf: u32) {
        let (lane, cc) = (lane_id(), lane_id() % 16);
        if self.whole {
            let t = self.edge(j).row();
            let src = p.q.ptr().add((t * p.n_heads + self.kh * 16) as usize * MSA_HEAD_DIM as usize) as *const u8;
            for i in 0..8 {
                let r = lane / 16 + 2 * i;
                cp_async_16(buf + Rows256::at(r, cc), src.add((r * 256 + cc * 16) as usize));
            }
            return;
        }
        for i in 0..8 {
            let r = lane / 16 + 2 * i;
            if let Some((t, _, h, _)) = self.edge_of(j, r) {
                let src = p.q.ptr().add((t * p.n_heads + h) as usize * MSA_HEAD_DIM as usize) as *const u8;
                cp_async_16(buf + Rows256::at(r, cc), src.add(cc as usize * 16));
            }
        }
    }
}

/// Partial index of `(row t, slot, head h)` in `part_o` / `part_ml`.
#[inline(always)]
fn part_at(p: &BlockMajorRunParams, t: u32, slot: u32, h: u32) -> usize {
    ((t * p.topk + slot) * p.n_heads + h) as usize
}

/// The run: one CTA per work item (CTAs past `n_items[0]` return).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_block_major_run(p: BlockMajorRunParams) {
    grid_prologue();
    let Some(cta) = start_run(&p) else {
        return;
    };
    let qbuf = crate::smem_addr!(RunSmem, q) + warp_id() * 2 * BM_Q_TILE_BYTES;
    if warp_id() < cta.ntiles {
        cta.load_q(&p, warp_id(), qbuf);
    }
    cp_async_commit();
    cp_async_wait::<1>(); // this thread's K and V copies have landed
    fence_proxy_async_shared(); // ... and wgmma will see them
    sync_threads();
    let vs = crate::smem_addr!(RunSmem, v);
    if cta.blk_base + MSA_BLOCK > cta.sk {
        KvBlock::zero_tail::<KvTile, BM_THREADS>(vs, cta.sk.max(cta.blk_base) - cta.blk_base, thread_idx_x());
        fence_proxy_async_shared();
        sync_threads();
    }
    run_rounds(&p, &cta, qbuf);
}

/// The scheduler half of the run: reads the item, issues the block's K and
/// V copies, stages the item's edges and the m-tile row table.
#[inline(always)]
unsafe fn start_run(p: &BlockMajorRunParams) -> Option<RunCta> {
    let cta = block_idx_x();
    if p.n_kv_heads == 0 || p.n_keys == 0 || p.cache.num_pages == 0 || cta >= ld_global_nc_u32(p.n_items.ptr()) {
        return None;
    }
    let item = ld_record(p.items.ptr().add(cta as usize));
    let ne = (item.edge1 - item.edge0).min(BM_MAX_ITEM_EDGES); // the plan never makes larger items
    let kh = item.key / p.n_keys;
    let page = item.page.min(p.cache.num_pages - 1);
    let tid = thread_idx_x();
    for (dst, plane) in [(crate::smem_addr!(RunSmem, k), p.cache.k_off), (crate::smem_addr!(RunSmem, v), p.cache.v_off)] {
        KvBlock::new(p.kv.ptr(), &p.cache, page, plane, kh, p.n_kv_heads).load::<KvTile, BM_THREADS>(dst, tid);
    }
    cp_async_commit();
    let key = ld_record(p.keys.ptr().add((item.key % p.n_keys) as usize));
    let group = (p.n_heads / p.n_kv_heads).clamp(1, 16);
    let tpt = 16 / group;
    let (es, rt) = (crate::smem_addr!(RunSmem, edges), crate::smem_addr!(RunSmem, row_table));
    let edges = p.edges.ptr().add(item.edge0 as usize) as *const u32;
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
    Some(RunCta {
        kh,
        ne,
        group,
        tpt,
        ntiles: ne.div_ceil(tpt),
        blk_base: key.block * MSA_BLOCK,
        sk: key.seqlen_k,
        whole: group == 16,
        es,
        rt,
    })
}

/// An m-tile's output waiting to be stored: bf16 pairs of rows g and g + 8
/// for each 8-dim column, and its rows' (max, sum).
struct TileOut {
    j: u32,
    opk: [[u32; 2]; 16],
    m: [f32; 2],
    l: [f32; 2],
}

/// The main loop: all 4 warps take part in every round (one m-tile each;
/// past its last tile a warp computes masked padding rows and writes
/// nothing). Each round's output is written during the next round's S
/// product (the tensor cores work while the warp stores).
#[inline(always)]
unsafe fn run_rounds(p: &BlockMajorRunParams, cta: &RunCta, qbuf: u32) {
    let (ks, vs) = (crate::smem_addr!(RunSmem, k), crate::smem_addr!(RunSmem, v));
    let sl2 = p.scale * LOG2E;
    let rounds = cta.ntiles.div_ceil(WARPS);
    let mut prev = TileOut { j: u32::MAX, opk: [[0u32; 2]; 16], m: [0f32; 2], l: [0f32; 2] };
    let (mut j, mut n) = (warp_id(), 0u32);
    while n < rounds {
        let live = j < cta.ntiles;
        let cur = qbuf + (n % 2) * BM_Q_TILE_BYTES;
        if j + WARPS < cta.ntiles {
            cta.load_q(p, j + WARPS, qbuf + ((n + 1) % 2) * BM_Q_TILE_BYTES);
        }
        cp_async_commit();
        cp_async_wait::<1>(); // tile j's rows have landed (this lane's)
        sync_warp(); // ... and every lane's
        let lim = if live { key_limits(cta, j) } else { [-1; 2] };
        let mut s = scores_wg(ks, cur, || {
            // The query tile is in registers now: it stages the previous
            // round's output while the product runs.
            if prev.j != u32::MAX {
                store_tile(p, cta, cur, &prev);
            }
        });
        mask_diagonal(&mut s, lim);
        let (mx, pa, l4) = block_softmax(&s, sl2);
        let (o, l) = pv_wg(vs, &pa, &l4);
        prev.opk = pack_rows(&o);
        (prev.j, prev.m, prev.l) = (if live { j } else { u32::MAX }, mx, l);
        sync_warp(); // the tile is free for the prefetch of the next round
        j += WARPS;
        n += 1;
    }
    if prev.j != u32::MAX {
        store_tile(p, cta, qbuf, &prev);
    }
}

/// Keys visible to rows g and g + 8 of m-tile `j`: index `<= lim` (`lim < 0`:
/// padding).
#[inline(always)]
unsafe fn key_limits(cta: &RunCta, j: u32) -> [i32; 2] {
    let bb = cta.blk_base as i32;
    if cta.whole {
        return [cta.edge(j).q_pos as i32 - bb; 2];
    }
    let mut lim = [-1i32; 2];
    for (h, l) in lim.iter_mut().enumerate() {
        if let Some((_, _, _, e)) = cta.edge_of(j, (lane_id() >> 2) + 8 * h as u32) {
            *l = cta.edge(e).q_pos as i32 - bb;
        }
    }
    lim
}

/// S = Q Kᵀ over the block's 128 keys with `wgmma` (A: this warp's 16 rows
/// from the query tile `cur`, all 8 k-steps; B: the K tile, K-major);
/// `overlap` runs while the product is in flight.
#[inline(always)]
unsafe fn scores_wg(ks: u32, cur: u32, overlap: impl FnOnce()) -> [[f32; 4]; 16] {
    let lane = lane_id();
    let mut s = [[0f32; 4]; 16];
    let mut af = [[0u32; 4]; 8];
    crate::unroll!(8, KS => {
        let (mi, r) = (lane >> 3, (lane & 7) + 8 * ((lane >> 3) & 1));
        af[KS] = ldmatrix_x4(cur + Rows256::at(r, KS as u32 * 2 + (mi >> 1)));
    });
    wgmma_fence(&mut s, &af);
    crate::unroll!(8, KS => {
        wgmma_m64n128k16_bf16::<0>(&mut s, af[KS], KvTile::k_major_desc(ks, KS as u32), KS > 0);
    });
    wgmma_commit();
    overlap();
    wgmma_wait::<0, _, _>(&mut s, &af);
    s
}

/// Causal mask, only where a row's own block is this one (`lim < 127`).
#[inline(always)]
fn mask_diagonal(s: &mut [[f32; 4]; 16], lim: [i32; 2]) {
    let c = (lane_id() & 3) as i32;
    if lim[0] < MSA_BLOCK as i32 - 1 || lim[1] < MSA_BLOCK as i32 - 1 {
        crate::unroll!(16, J => {
            crate::unroll!(4, E => {
                if (J * 8) as i32 + 2 * c + (E & 1) as i32 > lim[E >> 1] {
                    s[J][E] = f32::NEG_INFINITY;
                }
            });
        });
    }
}

/// The block's softmax for rows g and g + 8: their maxima `m` (`scale ·
/// q·k · log2 e` domain; 0 for padding rows, whose p are all 0), P =
/// exp2(S · scale · log2 e - m) as A fragments (two n-tiles = one k16 step)
/// and the row sums in 4 interleaved chains. Row maxima as trees: a 32-long
/// chain of dependent max ops would stall the warp (the SM holds only 2
/// warps per scheduler). `scale > 0` (the host checks), so the max of the
/// raw scores scales.
#[inline(always)]
fn block_softmax(s: &[[f32; 4]; 16], sl2: f32) -> ([f32; 2], [[u32; 4]; 8], [[f32; 2]; 4]) {
    let mut t8 = [[f32::NEG_INFINITY; 2]; 8];
    crate::unroll!(8, J => {
        crate::unroll!(2, H => {
            let a = fmax(s[2 * J][2 * H], s[2 * J][2 * H + 1]);
            let b = fmax(s[2 * J + 1][2 * H], s[2 * J + 1][2 * H + 1]);
            t8[J][H] = fmax(a, b);
        });
    });
    let mut mx = [f32::NEG_INFINITY; 2];
    let mut msc = [0f32; 2]; // -max · scale · log2 e
    crate::unroll!(2, H => {
        let a = fmax(fmax(t8[0][H], t8[1][H]), fmax(t8[2][H], t8[3][H]));
        let b = fmax(fmax(t8[4][H], t8[5][H]), fmax(t8[6][H], t8[7][H]));
        mx[H] = finite_or_zero(quad_max_f32(fmax(a, b)) * sl2);
        msc[H] = -mx[H];
    });
    let mut l4 = [[0f32; 2]; 4];
    let mut pa = [[0u32; 4]; 8];
    crate::unroll!(16, J => {
        let mut pr = [0f32; 4];
        crate::unroll!(4, E => { pr[E] = exp2(fma(s[J][E], sl2, msc[E >> 1])); });
        l4[J % 4][0] += pr[0] + pr[1];
        l4[J % 4][1] += pr[2] + pr[3];
        pa[J / 2][2 * (J & 1)] = pack_bf16x2(pr[0], pr[1]);
        pa[J / 2][2 * (J & 1) + 1] = pack_bf16x2(pr[2], pr[3]);
    });
    (mx, pa, l4)
}

/// O = P V with `wgmma` (B: the V tile, N-major, 16 keys per k-step); the
/// row sums (f32 sums of the unrounded p) are reduced while it runs.
/// (Summing the bf16 P on the tensor cores, P · 1, moved the LSE by up to
/// 1e-3, past the spec's bound.)
#[inline(always)]
fn pv_wg(vs: u32, pa: &[[u32; 4]; 8], l4: &[[f32; 2]; 4]) -> ([[f32; 4]; 16], [f32; 2]) {
    let mut o = [[0f32; 4]; 16];
    wgmma_fence(&mut o, pa);
    crate::unroll!(8, KS => {
        wgmma_m64n128k16_bf16::<1>(&mut o, pa[KS], KvTile::mn_major_desc(vs, KS as u32), KS > 0);
    });
    wgmma_commit();
    let mut l = [0f32; 2];
    for h in 0..2 {
        let s0 = (l4[0][h] + l4[1][h]) + (l4[2][h] + l4[3][h]);
        let s1 = s0 + shfl_xor_f32(s0, 1);
        l[h] = s1 + shfl_xor_f32(s1, 2);
    }
    wgmma_wait::<0, _, _>(&mut o, pa);
    (o, l)
}

/// The accumulator rows g and g + 8 as bf16 pairs per 8-dim column.
#[inline(always)]
fn pack_rows(o: &[[f32; 4]; 16]) -> [[u32; 2]; 16] {
    let mut opk = [[0u32; 2]; 16];
    crate::unroll!(16, D => {
        crate::unroll!(2, H => { opk[D][H] = pack_bf16x2(o[D][2 * H], o[D][2 * H + 1]); });
    });
    opk
}

/// Writes m-tile `t.j`'s output and its (max, sum) stats, staged through
/// `buf` (a consumed query tile) for 16-byte stores: group 16 as two
/// contiguous runs, other groups row by row.
#[inline(always)]
unsafe fn store_tile(p: &BlockMajorRunParams, cta: &RunCta, buf: u32, t: &TileOut) {
    let lane = lane_id();
    let (g, c, cc) = (lane >> 2, lane & 3, lane % 16);
    sync_warp();
    crate::unroll!(16, D => {
        crate::unroll!(2, H => {
            let r = g + 8 * H as u32;
            st_shared_u32(buf + Rows256::at(r, D as u32) + 4 * c, t.opk[D][H]);
        });
    });
    sync_warp();
    let write_ml = |at: usize, h: usize| {
        let ml = p.part_ml.ptr().add(2 * at);
        st_global(ml, t.m[h]);
        st_global(ml.add(1), t.l[h]);
    };
    if cta.whole {
        let edge = cta.edge(t.j);
        let at = part_at(p, edge.row(), edge.slot(), cta.kh * 16);
        let dst = p.part_o.ptr().add(at * MSA_HEAD_DIM as usize) as *mut u8;
        for i in 0..8 {
            let r = lane / 16 + 2 * i;
            st_global_v4(dst.add((r * 256 + cc * 16) as usize), ld_shared_v4(buf + Rows256::at(r, cc)));
        }
        if c == 0 {
            for h in 0..2 {
                write_ml(at + (g + 8 * h as u32) as usize, h);
            }
        }
        return;
    }
    for i in 0..8 {
        let r = lane / 16 + 2 * i;
        if let Some((row, slot, h, _)) = cta.edge_of(t.j, r) {
            let at = part_at(p, row, slot, h) * MSA_HEAD_DIM as usize + cc as usize * 8;
            st_global_v4(p.part_o.ptr().add(at) as *mut u8, ld_shared_v4(buf + Rows256::at(r, cc)));
        }
    }
    if c == 0 {
        for h in 0..2 {
            if let Some((row, slot, head, _)) = cta.edge_of(t.j, g + 8 * h as u32) {
                write_ml(part_at(p, row, slot, head), h);
            }
        }
    }
}

// ------------------------------------------------------------------ combine

/// Merges each (row, head)'s partials over its attended slots in slot order
/// (one warp per (row, head), `BM_COMBINE_WARPS` per CTA; lane `l` owns dims
/// `4l .. 4l + 4`): `out = Σ_s 2^(m_s - M) O_s / Σ_s 2^(m_s - M) l_s`.
/// Slots in chunks of 8: the chunk's loads are all in flight together; an
/// online max keeps one pass (fixed order: the same bits every run).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_block_major_combine(p: BlockMajorCombineParams) {
    grid_prologue();
    let w = block_idx_x() * BM_COMBINE_WARPS + warp_id();
    if p.n_kv_heads == 0 || w >= p.num_rows * p.n_heads {
        return;
    }
    let lane = lane_id();
    let (t, h) = (w / p.n_heads, w % p.n_heads);
    let kh = h / (p.n_heads / p.n_kv_heads).max(1);
    let row = row_of(p.row_info.ptr(), t);
    let slots = (kh * p.num_rows + t) * p.topk;
    // Slot s of (t, h) is partial (t * topk + s) * n_heads + h.
    let part = |s: u32| ((t * p.topk + s) * p.n_heads + h) as usize;
    const CHUNK: u32 = 8;
    let mut st = LseState::EMPTY;
    let mut acc = [0f32; 4];
    let mut s0 = 0;
    while s0 < p.topk {
        let mut m = [f32::NEG_INFINITY; CHUNK as usize];
        let mut l = [0f32; CHUNK as usize];
        let mut v = [[0u32; 2]; CHUNK as usize];
        crate::unroll!(8, S => {
            let s = s0 + S as u32;
            if s < p.topk && edge_block(p.d_indices.ptr(), (slots + s) as usize, &row, p.max_pages).is_some() {
                let [mb, lb] = ld_global_nc_v2(p.part_ml.ptr().add(2 * part(s)) as *const u8);
                (m[S], l[S]) = (f32::from_bits(mb), f32::from_bits(lb));
                let at = part(s) * MSA_HEAD_DIM as usize + 4 * lane as usize;
                v[S] = ld_global_nc_v2(p.part_o.ptr().add(at) as *const u8);
            }
        });
        let mut cm = f32::NEG_INFINITY;
        crate::unroll!(8, S => { cm = fmax(cm, m[S]); });
        let (corr, _) = st.advance(cm);
        crate::unroll!(4, D => { acc[D] *= corr; });
        crate::unroll!(8, S => {
            // 0 for skipped slots (-inf) and while every slot so far is empty.
            let wt = merge_weight(m[S], st.m);
            st.l += wt * l[S];
            let (x0, x1) = bf16x2_to_f32(v[S][0]);
            let (x2, x3) = bf16x2_to_f32(v[S][1]);
            acc[0] += wt * x0;
            acc[1] += wt * x1;
            acc[2] += wt * x2;
            acc[3] += wt * x3;
        });
        s0 += CHUNK;
    }
    // A NaN sum (a NaN score) attends nothing: finish() gives (0, -inf),
    // and the NaN accumulators are replaced by 0. (Checked once here, not
    // per slot: per-slot selects cost about 1.5% on msa-prefill-8k, and a
    // branch per slot let the compiler sink the chunk's loads into it,
    // +29%; H200, 2026-12-02.)
    let (inv, lse2) = st.finish();
    let norm = |x: f32| if inv == 0.0 { 0.0 } else { x * inv };
    let o = p.out.ptr().add(w as usize * MSA_HEAD_DIM as usize + 4 * lane as usize) as *mut u32;
    st_global(o, pack_bf16x2(norm(acc[0]), norm(acc[1])));
    st_global(o.add(1), pack_bf16x2(norm(acc[2]), norm(acc[3])));
    if lane == 0 && !p.lse.is_null() {
        st_global(p.lse.ptr().add(w as usize), lse2 * LN2);
    }
}
