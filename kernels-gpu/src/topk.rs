//! The standalone top-k ([`TopkParams`]): the `k` largest entries of each
//! row of an f32 matrix, as indices in descending order of score, ties to
//! the lower index, `-1` past the row's entries. NaN ranks below every
//! number (it is still an entry); `-0.0` ties with `+0.0`.
//!
//! One thread-block cluster per row, CTA `c` taking entries `c · chunk ..`
//! of it, each entry a unique 56-bit selection key (score bits, then the
//! inverted index: `tile::radix`):
//! 1. **count** ([`RadixSelect::step`]): each CTA counts its keys by their
//!    top 12 bits; one cluster barrier, and every CTA finds the same
//!    threshold bin from the cluster's sums (64 coarse, then 64 fine bins
//!    read through distributed shared memory). Keys above the bin are kept.
//! 2. **resolve**: the keys inside the bin take the next 12-bit digits the
//!    same way, until every key inside the cut is kept. A chunk of at most
//!    [`TOPK_RESIDENT_CHUNK`] entries stays in shared memory from the first
//!    read (a row of 128K over 16 CTAs is read once). A longer chunk is
//!    read a second time to collect its keys above the bin (kept) and
//!    inside it (candidates, in shared memory); the further digits count
//!    only those. Before that, a long chunk tries a **sampled cut**
//!    (`sampled_candidates`): two digits over 2048 samples a CTA give a
//!    score the row's `k` largest lie above with near certainty, and one
//!    pass gathers the keys above it as the candidates (no first-digit
//!    count, no second read); where the sample misled, the count and
//!    second read follow. Fallback, where a CTA holds more than [`TOPK_CAND_CAP`]
//!    keys of the bin (e.g. 100K equal scores): every further digit
//!    re-reads the chunk (at most 4 more: 44 bits), then one pass collects
//!    the kept keys.
//! 3. **sort**: in a cluster, every CTA stores the keys it keeps into CTA
//!    0's shared memory (after one cluster barrier, at the sum of the
//!    counts of the CTAs below it; at most `k` in all) and leaves; CTA 0
//!    sorts the row's keys (`tile::sort`: by buckets over their range, or
//!    bitonic where they bunch) and writes their indices, then the `-1`
//!    padding. (Before, each CTA sorted its own keys and wrote each at its
//!    rank, found by binary searches of the other CTAs' lists: about 11
//!    µs of `mla-idx-decode-b1-128k`'s 38 on the H100, 2026-12-07.)
//!
//! Worst case: a row of equal scores resolves every digit (5 steps, the
//! last 4 over the index bits), each a cluster barrier and, for a long
//! chunk, a pass over it: 6 reads of the chunk in all. A typical row: 2 or
//! 3 steps (uniform scores: the threshold bin holds 1/32 of the row, 4096
//! keys of 128K, and one more digit leaves about 1); 1 read of a resident
//! chunk, 2 of a longer one.
//!
//! Deterministic: which keys are kept follows from the keys alone (counts
//! are integers, summed in the same order everywhere), and every kept key's
//! place in the output is its rank among the kept keys (keys are unique).
//! The order in which threads append to shared lists varies from run to
//! run; nothing downstream depends on it.

use core::mem::size_of;

use sparse_attn_abi::topk::*;

use crate::arch::*;
use crate::tile::sort::{cta_sort_desc, SORT_MAX};
use crate::tile::radix::{
    self, first_digit, radix_key_floor, radix_sel_index, radix_sel_key, KeySet, RadixCut,
    RadixSelect, RadixSmem, RADIX_INDEX_BITS,
};
use crate::tile::row_chunk::{RowChunk, SmemChunk, SmemKeys, RESIDENT, SAMPLES};

const _: () = assert!(
    TOPK_THREADS == radix::THREADS
        && TOPK_BINS == radix::BINS
        && TOPK_COARSE_BINS == radix::COARSE_BINS
        && TOPK_INDEX_BITS == radix::RADIX_INDEX_BITS
        && TOPK_MAX_CLUSTER == radix::MAX_CLUSTER
        && TOPK_RESIDENT_CHUNK == RESIDENT
        && TOPK_MAX_K == SORT_MAX
);
/// Standard deviations of the sampled cut's estimate between its target
/// and either end of the window the candidates must land in
/// (`sampled_candidates`): 5 leaves a row of uniform scores about one
/// chance in 3 million of the fallback.
const SAMPLE_SIGMAS: u32 = 5;

// The candidate list doubles as a resident chunk and the sort's two
// exchange buffers.
const _: () = assert!(TOPK_CAND_CAP * 8 >= RESIDENT * 4 && TOPK_CAND_CAP >= 2 * SORT_MAX);

/// Shared memory of the kernel.
#[repr(C)]
struct Smem {
    /// Keys this CTA keeps (at most `k`); in CTA 0, then every CTA's,
    /// sorted.
    kept: [u64; TOPK_MAX_K as usize],
    /// Keys of the threshold bin (long chunks), or the chunk's scores
    /// (short ones); then the sort's buffers.
    cand: [u64; TOPK_CAND_CAP as usize],
    hist: [[u32; TOPK_BINS as usize]; 2],
    coarse: [[u32; TOPK_COARSE_BINS as usize]; 2],
    pick: [u32; 8],
    nkept: u32,
    ncand: u32,
}
const _: () = assert!(size_of::<Smem>() as u32 <= TOPK_SMEM);

#[no_mangle]
pub unsafe extern "ptx-kernel" fn topk_rows(p: TopkParams) {
    // Before any read: with programmatic launch the scores' producer (the
    // lightning indexer's logits kernel) may still be running. Missing
    // here, the indexer's top-k read half-written logits.
    grid_prologue();
    let ncta = cluster_nctarank();
    let row = block_idx_x() / ncta;
    if row >= p.rows || p.k == 0 {
        return; // the whole cluster: its CTAs share the row
    }
    let k = p.k.min(TOPK_MAX_K);
    let n = if p.row_lens.is_null() { p.n } else { ld_global_nc(p.row_lens.ptr().add(row as usize)).min(p.n) };
    let src = p.scores.ptr().add(row as usize * p.row_stride as usize);
    let j0 = cluster_ctarank() * p.chunk;
    // SAFETY: entries below `p.n` of the row are readable (the host's
    // plan), the scores buffer is 16-byte aligned.
    let chunk = RowChunk::new(src, j0, n.saturating_sub(j0).min(p.chunk), p.n);
    let sel = RadixSelect::new(k, n);
    // The same in every CTA of the row (`chunk` a multiple of 4 keeps each
    // CTA's misalignment that of the row).
    let mis = if p.chunk.is_multiple_of(4) { (src as usize as u32 & 15) / 4 } else { 3 };
    if n.min(p.chunk) + mis <= TOPK_RESIDENT_CHUNK {
        // The candidate list is free: the chunk goes there.
        let keys = SmemChunk::load(chunk, crate::smem_addr!(Smem, cand));
        clear_smem();
        keep(&keys, resolve(&keys, sel));
    } else {
        clear_smem();
        if let Some(cut) = select_streaming(&chunk, sel, &p, n) {
            keep(&chunk, cut);
        }
    }
    let mut m = ld_shared_u32(crate::smem_addr!(Smem, nkept)).min(TOPK_MAX_K);
    if ncta > 1 {
        m = gather_row(m);
        if cluster_ctarank() != 0 {
            return;
        }
    }
    cta_sort_desc(crate::smem_addr!(Smem, kept), m, crate::smem_addr!(Smem, cand));
    write_sorted(&p, row, m);
}

/// The select's shared memory.
#[inline(always)]
fn radix_smem() -> RadixSmem {
    RadixSmem {
        hist: crate::smem_addr!(Smem, hist),
        coarse: crate::smem_addr!(Smem, coarse),
        pick: crate::smem_addr!(Smem, pick),
    }
}

/// Zeroes the first histogram and the list counters.
#[inline(always)]
unsafe fn clear_smem() {
    radix::clear_hist(crate::smem_addr!(Smem, hist));
    if thread_idx_x() == 0 {
        st_shared_u32(crate::smem_addr!(Smem, nkept), 0);
        st_shared_u32(crate::smem_addr!(Smem, ncand), 0);
    }
    sync_threads();
}

/// Steps the select over `keys` until it is done; the final cut.
#[inline(always)]
unsafe fn resolve(keys: &impl KeySet, mut sel: RadixSelect) -> RadixCut {
    while !sel.done {
        sel.step(keys, radix_smem());
    }
    sel.cut
}

/// Appends `key` to the shared list at `list` (`cap` slots) whose length
/// is the counter at `count`.
#[inline(always)]
unsafe fn push(list: u32, count: u32, cap: u32, key: u64) {
    let slot = atomic_add_shared_u32(count, 1);
    if slot < cap {
        st_shared_u64(list + 8 * slot, key);
    }
}

/// Appends the keys `cut` keeps to this CTA's `kept` list.
#[inline(always)]
unsafe fn keep(keys: &impl KeySet, cut: RadixCut) {
    let (list, count) = (crate::smem_addr!(Smem, kept), crate::smem_addr!(Smem, nkept));
    keys.for_each(|key| {
        if cut.keeps(key) {
            push(list, count, TOPK_MAX_K, key);
        }
    });
    sync_threads();
}

/// The select over a chunk too long to keep: the first digit over the
/// chunk, then, where every CTA's part of the threshold bin fits
/// [`TOPK_CAND_CAP`], a second pass keeps the keys above the bin and
/// gathers those inside it, and the further digits count those alone (they
/// are kept here: `None`). Otherwise the further digits over the chunk,
/// and the final cut returned for one more pass to keep its keys.
///
/// Both passes over the chunk look at the score keys alone (the first
/// digit is their top bits, [`first_digit`]): no 64-bit selection key is built
/// except for the keys kept or gathered.
#[inline(always)]
unsafe fn select_streaming(chunk: &RowChunk, mut sel: RadixSelect, p: &TopkParams, n: u32) -> Option<RadixCut> {
    if sel.done {
        return Some(sel.cut);
    }
    if let Some(cands) = sampled_candidates(chunk, &mut sel, p, n) {
        keep(&cands, resolve(&cands, sel));
        return None;
    }
    let hist = sel.hist(radix_smem());
    chunk.for_each_score(|r, _| red_add_shared_u32(hist + 4 * first_digit(r), 1));
    let pick = sel.finish_step(radix_smem());
    // The sampled pass's candidates are no more (every CTA has read the
    // counts: they were before this step's cluster barrier).
    if thread_idx_x() == 0 {
        st_shared_u32(crate::smem_addr!(Smem, ncand), 0);
    }
    sync_threads();
    if pick.max_inbin <= TOPK_CAND_CAP {
        let cands = gather_bin(chunk, pick.digit);
        keep(&cands, resolve(&cands, sel));
        return None;
    }
    Some(resolve(chunk, sel))
}

/// The sampled threshold: one pass over a long chunk instead of two.
///
/// Every CTA samples its chunk at the same stride ([`RowChunk::sample`]);
/// two radix steps over the cluster's samples find the 24-bit score prefix
/// at or above which about `target` of the row's entries lie (`target /
/// stride` samples), and one pass over the chunk gathers the keys at or
/// above it as candidates, a float compare an entry. Where the row's
/// candidates are at least `k` (then they hold its `k` largest) and no
/// CTA's exceed [`TOPK_CAND_CAP`], the select goes on over them alone:
/// `Some`. Else (`None`, the same in every CTA) the caller counts the
/// chunk's first digit as before: a sample that misleads costs time, never
/// a wrong key.
///
/// `target` is the middle of `[k, ncta · cap]`, and the path is taken
/// where it lies [`SAMPLE_SIGMAS`] standard deviations of the estimate
/// (`1 / sqrt(samples above the cut)`, relative) from either end: `k` =
/// 2048 over 2 CTAs of 64K (stride 32): 160 samples, 2560 ± 200
/// candidates a CTA; one CTA of 16K (stride 8): 384 samples, 3072 ± 160.
#[inline(always)]
unsafe fn sampled_candidates(
    chunk: &RowChunk,
    sel: &mut RadixSelect,
    p: &TopkParams,
    n: u32,
) -> Option<SmemKeys> {
    let ncta = cluster_nctarank();
    let (k, space) = (sel.need, ncta * TOPK_CAND_CAP);
    let stride = p.chunk / SAMPLES;
    if stride == 0 || k >= space {
        return None;
    }
    let target = (k + space) / 2;
    let need = target.div_ceil(stride);
    // need · ((space - k) / (space + k))² >= SAMPLE_SIGMAS²
    let (gap, sum) = ((space - k) as u64, (space + k) as u64);
    if need as u64 * gap * gap < (SAMPLE_SIGMAS * SAMPLE_SIGMAS) as u64 * sum * sum {
        return None;
    }
    // The row's samples: entries `c · chunk + stride · i` below `n`.
    let mut total = 0;
    for c in 0..ncta {
        let len = n.saturating_sub(c * p.chunk).min(p.chunk);
        total += len.div_ceil(stride).min(SAMPLES);
    }
    if need >= total {
        return None;
    }
    let samples = chunk.sample(stride);
    let mut s = RadixSelect { cut: RadixCut::ALL, need, steps: sel.steps, done: false };
    s.step(&samples, radix_smem());
    if !s.done {
        s.step(&samples, radix_smem());
    }
    sel.steps = s.steps; // which histogram is clear
    // The least score key the cut keeps (two digits: the index bits are
    // below it).
    let r_min = ((s.cut.prefix << s.cut.shift) >> RADIX_INDEX_BITS) as u32;
    if r_min <= 1 {
        return None; // NaN too: every entry a candidate
    }
    let (cand, ncand) = (crate::smem_addr!(Smem, cand), crate::smem_addr!(Smem, ncand));
    chunk.for_each_at_least(r_min, radix_key_floor(r_min), |r, j| {
        push(cand, ncand, TOPK_CAND_CAP, radix_sel_key(r, j));
    });
    cluster_sync(); // every CTA's count is final
    // Every warp reads the counts itself: no barrier to broadcast them.
    let lane = lane_id();
    let c = if lane < ncta { ld_shared_cluster_u32(map_shared_rank(ncand, lane)) } else { 0 };
    let (sum, most) = (warp_sum_u32(c), warp_max_u32(c));
    (sum >= sel.need && most <= TOPK_CAND_CAP).then(|| SmemKeys { addr: cand, count: ld_shared_u32(ncand) })
}

/// The second pass over a chunk: keeps the keys above the first digit's
/// bin `digit`, gathers those inside it in shared memory (at most
/// [`TOPK_CAND_CAP`]).
#[inline(always)]
unsafe fn gather_bin(chunk: &RowChunk, digit: u32) -> SmemKeys {
    let (cand, ncand) = (crate::smem_addr!(Smem, cand), crate::smem_addr!(Smem, ncand));
    let (kept, nkept) = (crate::smem_addr!(Smem, kept), crate::smem_addr!(Smem, nkept));
    chunk.for_each_score(|r, j| {
        let d = first_digit(r);
        if d > digit {
            push(kept, nkept, TOPK_MAX_K, radix_sel_key(r, j));
        } else if d == digit {
            push(cand, ncand, TOPK_CAND_CAP, radix_sel_key(r, j));
        }
    });
    sync_threads();
    SmemKeys { addr: cand, count: ld_shared_u32(ncand).min(TOPK_CAND_CAP) }
}

/// Every CTA's kept keys into CTA 0's `kept` list, after its own (the
/// cluster calls it, all threads): CTA `c` stores its `m` keys in CTA 0's
/// shared memory from the sum of the counts of the CTAs below it. Returns
/// the row's kept keys (at most `k`; in every CTA). After it only CTA 0
/// touches its shared memory: the others may leave.
#[inline(always)]
unsafe fn gather_row(m: u32) -> u32 {
    let (t, me, ncta) = (thread_idx_x(), cluster_ctarank(), cluster_nctarank());
    let (kept, nkept) = (crate::smem_addr!(Smem, kept), crate::smem_addr!(Smem, nkept));
    cluster_sync(); // every CTA's list and count are final
    // Every warp reads the counts itself: lane `q` CTA `q`'s.
    let lane = lane_id();
    let c = if lane < ncta { ld_shared_cluster_u32(map_shared_rank(nkept, lane)).min(TOPK_MAX_K) } else { 0 };
    let below = warp_sum_u32(if lane < me { c } else { 0 });
    let total = warp_sum_u32(c).min(TOPK_MAX_K);
    if me != 0 {
        let dst = map_shared_rank(kept, 0);
        let mut i = t;
        while i < m && below + i < TOPK_MAX_K {
            st_shared_cluster_u64(dst + 8 * (below + i), ld_shared_u64(kept + 8 * i));
            i += TOPK_THREADS;
        }
    }
    cluster_sync(); // the keys are in CTA 0
    total
}

/// Writes the row's output from its `m` sorted keys in `kept`: their
/// indices, then `-1` up to `k`.
#[inline(always)]
unsafe fn write_sorted(p: &TopkParams, row: u32, m: u32) {
    let kept = crate::smem_addr!(Smem, kept);
    let out = p.out.ptr().add(row as usize * p.k as usize);
    let mut s = thread_idx_x();
    while s < p.k {
        let v = if s < m { radix_sel_index(ld_shared_u64(kept + 8 * s)) as i32 } else { -1 };
        st_global(out.add(s as usize), v);
        s += TOPK_THREADS;
    }
}
