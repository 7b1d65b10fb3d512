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
//! 3. **sort**: each CTA sorts the keys it keeps (`tile::sort`: by buckets
//!    over their range, or bitonic where they bunch); after
//!    one cluster barrier it copies the other CTAs' sorted keys (at most
//!    `k` in all) and places each of its keys at its own index plus the
//!    number of larger keys in each other list (binary search), writing
//!    the entry's index there. The first CTA writes the `-1` padding.
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
    /// Keys this CTA keeps (at most `k`), then sorted; the other CTAs read
    /// them.
    kept: [u64; TOPK_MAX_K as usize],
    /// Keys of the threshold bin (long chunks), or the chunk's scores
    /// (short ones); then the sort's exchange buffers; then the other CTAs'
    /// sorted keys.
    cand: [u64; TOPK_CAND_CAP as usize],
    hist: [[u32; TOPK_BINS as usize]; 2],
    coarse: [[u32; TOPK_COARSE_BINS as usize]; 2],
    pick: [u32; 8],
    /// Keys each CTA keeps, and where its list starts among those pulled.
    counts: [u32; TOPK_MAX_CLUSTER as usize],
    offsets: [u32; TOPK_MAX_CLUSTER as usize],
    nkept: u32,
    ncand: u32,
    /// Keys of the other CTAs' lists.
    npulled: u32,
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
    let m = ld_shared_u32(crate::smem_addr!(Smem, nkept)).min(TOPK_MAX_K);
    cta_sort_desc(crate::smem_addr!(Smem, kept), m, crate::smem_addr!(Smem, cand));
    write_ranks(&p, row, m, n.min(k));
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
    let (t, hist) = (thread_idx_x(), crate::smem_addr!(Smem, hist));
    crate::unroll!(4, Q => { st_shared_zero16(hist + 64 * t + 16 * Q as u32); });
    if t == 0 {
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

/// Writes the row's output from every CTA's sorted `kept` keys (`m` here,
/// `total` in the row): each key goes to its index in this CTA's list plus
/// the number of larger keys in every other CTA's list (copied here first);
/// the first CTA writes `-1` past `total`.
#[inline(always)]
unsafe fn write_ranks(p: &TopkParams, row: u32, m: u32, total: u32) {
    let (t, me, ncta) = (thread_idx_x(), cluster_ctarank(), cluster_nctarank());
    let kept = crate::smem_addr!(Smem, kept);
    let (counts, offsets) = (crate::smem_addr!(Smem, counts), crate::smem_addr!(Smem, offsets));
    let pulled = crate::smem_addr!(Smem, cand);
    cluster_sync(); // every CTA's sorted keys and count are final
    if t < ncta {
        let c = ld_shared_cluster_u32(map_shared_rank(crate::smem_addr!(Smem, nkept), t));
        st_shared_u32(counts + 4 * t, c.min(TOPK_MAX_K));
    }
    sync_threads();
    pull_other_lists(kept, counts, offsets, pulled);
    sync_threads();
    cluster_arrive_relaxed(); // done reading the other CTAs' shared memory
    let out = p.out.ptr().add(row as usize * p.k as usize);
    match ncta {
        1 => write_own::<1>(out, m),
        2 => write_own::<2>(out, m),
        3 | 4 => write_own::<4>(out, m),
        5..=8 => write_own::<8>(out, m),
        _ => write_own::<16>(out, m),
    }
    if me == 0 {
        let mut s = total + t;
        while s < p.k {
            st_global(out.add(s as usize), -1);
            s += TOPK_THREADS;
        }
    }
    cluster_wait(); // no CTA leaves while another may read its keys
}

/// Copies the sorted `kept` lists of the other CTAs (lengths in `counts`)
/// one after another to `pulled`, writing where each starts to `offsets`.
/// At most `SORT_MAX` keys in all (the row keeps at most `k`): 8 a thread,
/// all the loads in flight together.
#[inline(always)]
unsafe fn pull_other_lists(kept: u32, counts: u32, offsets: u32, pulled: u32) {
    let (t, me, ncta) = (thread_idx_x(), cluster_ctarank(), cluster_nctarank());
    let npulled = crate::smem_addr!(Smem, npulled);
    if t == 0 {
        let mut all = 0;
        for q in 0..ncta {
            st_shared_u32(offsets + 4 * q, all);
            all += if q == me { 0 } else { ld_shared_u32(counts + 4 * q) };
        }
        st_shared_u32(npulled, all.min(SORT_MAX));
    }
    sync_threads();
    let all = ld_shared_u32(npulled);
    let mut src = [0u32; 8];
    crate::unroll!(8, G => {
        let g = t + TOPK_THREADS * G as u32;
        if g < all {
            // The other CTA whose list holds slot `g`.
            for q in 0..ncta {
                let (o, c) = (ld_shared_u32(offsets + 4 * q), ld_shared_u32(counts + 4 * q));
                if q != me && g >= o && g < o + c {
                    src[G] = map_shared_rank(kept + 8 * (g - o), q);
                }
            }
        }
    });
    let mut v = [0u64; 8];
    crate::unroll!(8, G => {
        if t + TOPK_THREADS * (G as u32) < all {
            v[G] = ld_shared_cluster_u64(src[G]);
        }
    });
    crate::unroll!(8, G => {
        let g = t + TOPK_THREADS * G as u32;
        if g < all {
            st_shared_u64(pulled + 8 * g, v[G]);
        }
    });
}

/// Writes this CTA's `m` sorted keys to the row's output `out` at their
/// ranks: own index plus the keys larger in every other CTA's list (pulled
/// here, [`pull_other_lists`]). `N`, the cluster size rounded up to a power
/// of two, unrolls the searches over exactly the lists there can be (with
/// a test for each of 16 possible lists instead, the ranks took 17 of the
/// 75 µs of `topk-64x128k` on the H100, and 1.3 ms of the 16K prefill's
/// top-k, whose clusters are 1 CTA).
#[inline(always)]
unsafe fn write_own<const N: usize>(out: *mut i32, m: u32) {
    let (t, me, ncta) = (thread_idx_x(), cluster_ctarank(), cluster_nctarank());
    let (kept, pulled) = (crate::smem_addr!(Smem, kept), crate::smem_addr!(Smem, cand));
    let (counts, offsets) = (crate::smem_addr!(Smem, counts), crate::smem_addr!(Smem, offsets));
    let (mut off, mut cnt, mut most) = ([0u32; N], [0u32; N], 0);
    crate::unroll_to!(N, R => {
        if (R as u32) < ncta && R as u32 != me {
            (off[R], cnt[R]) = (ld_shared_u32(offsets + 4 * R as u32), ld_shared_u32(counts + 4 * R as u32));
            most = most.max(cnt[R]);
        }
    });
    let top = most.next_power_of_two();
    let mut s = t;
    while s < m {
        let x = ld_shared_u64(kept + 8 * s);
        let r = s + if N > 1 { count_larger(pulled, &off, &cnt, x, top) } else { 0 };
        st_global(out.add(r as usize), radix_sel_index(x) as i32);
        s += TOPK_THREADS;
    }
}

/// Keys larger than `x` in the descending lists at `pulled + 8 · off[q]`
/// of `cnt[q]` keys (at most `top`, a power of two): a binary search of
/// each, the lists innermost so the searches' loads overlap.
#[inline(always)]
unsafe fn count_larger<const N: usize>(pulled: u32, off: &[u32; N], cnt: &[u32; N], x: u64, top: u32) -> u32 {
    let mut lo = [0u32; N]; // keys of list R known to be larger
    let mut step = top;
    while step > 0 {
        crate::unroll_to!(N, R => {
            if cnt[R] != 0 {
                let i = (lo[R] + step - 1).min(cnt[R] - 1);
                let y = ld_shared_u64(pulled + 8 * (off[R] + i));
                if lo[R] + step <= cnt[R] && y > x {
                    lo[R] += step;
                }
            }
        });
        step /= 2;
    }
    let mut n = 0;
    crate::unroll_to!(N, R => { n += lo[R]; });
    n
}
