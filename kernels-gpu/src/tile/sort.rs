//! A CTA's sort, descending, of up to [`SORT_MAX`] distinct nonzero `u64`
//! keys (256 threads): a bucket sort where the keys spread over their
//! range, else the bitonic sort (`tile::bitonic`).
//!
//! The buckets: the range `[lo, hi]` of the keys, cut into [`BUCKETS`]
//! equal spans (a power of two each), bucket 0 holding the largest keys.
//! A histogram of the buckets, its exclusive scan (where each bucket's keys
//! start in the output), every key scattered to a slot of its bucket (an
//! atomic a key: the order inside a bucket varies), and every key placed
//! at its bucket's start plus the number of its bucket's keys larger than
//! it. The output is the sorted order, whatever the slots: deterministic.
//!
//! Five CTA barriers and a few shared accesses a key, against the bitonic
//! sort's 66 stages of compare-exchanges (of which 6 CTA barriers) for
//! 2048 keys. On the 16K prefill's top-k (H100, 2026-12-07, builds
//! stopped before and after the sort) the bitonic sort took about 835 µs
//! (4125 → 4960 µs end to end), the bucket sort about 530 (4144 → 4662,
//! 4689).
//!
//! The bitonic sort stays for up to [`BITONIC_MAX`] keys (one warp's
//! registers, no CTA barrier) and where a bucket holds more than
//! [`CROWDED`] keys (scores bunched in a small part of their range, e.g.
//! many exact ties and a few far larger scores): each key's rank inside
//! its bucket is a loop over the bucket.

use crate::arch::{
    lane_id, ld_shared_u32, ld_shared_u64, ld_shared_v4, red_add_shared_u32, st_shared_u32,
    st_shared_u64, st_shared_v4, sync_threads, thread_idx_x, warp_id,
    warp_inclusive_sum_u32, warp_max_u32, warp_max_u64, atomic_add_shared_u32,
};
use crate::tile::{bitonic, radix};

pub use bitonic::SORT_MAX;

/// Threads of the CTA.
const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// Keys a thread holds: key `t + THREADS · r` in register `r`.
const PER_THREAD: usize = 8;
const _: () = assert!(SORT_MAX == THREADS * PER_THREAD as u32);
/// Buckets: twice the most keys, so that keys spread evenly over their
/// range hold about half a key a bucket.
const BUCKET_BITS: u32 = 12;
const BUCKETS: u32 = 1 << BUCKET_BITS;
const _: () = assert!(BUCKETS == radix::BINS, "the counters are cleared as a radix histogram");
/// Buckets a thread scans.
const BUCKETS_PER_THREAD: u32 = BUCKETS / THREADS;
const _: () = assert!(BUCKETS_PER_THREAD == 16, "scan: four 16-byte vectors a thread");
/// Most keys of a bucket for the bucket path (not tuned: keys spread
/// evenly hold about half a key a bucket, and the rank loop over a bucket
/// of 16 is still short).
const CROWDED: u32 = 16;
/// Most keys the bitonic sort takes without a try of the buckets.
const BITONIC_MAX: u32 = 256;

/// Sorts the `m <= SORT_MAX` distinct nonzero keys at the shared address
/// `keys` in descending order, in place, with the whole CTA (all 256
/// threads call it, with the same `m`, after a barrier that follows the
/// keys' writes). `xbuf` is `2 · SORT_MAX · 8` bytes of shared memory
/// (free on entry; its contents are lost).
#[inline(always)]
pub unsafe fn cta_sort_desc(keys: u32, m: u32, xbuf: u32) {
    if m <= BITONIC_MAX || !bucket_sort_desc(keys, m, xbuf) {
        bitonic::cta_sort_desc(keys, m, xbuf);
    }
}

/// The bucket sort of [`cta_sort_desc`]'s keys; `false` (keys untouched)
/// where a bucket holds more than [`CROWDED`].
///
/// `xbuf`: the scattered keys (`SORT_MAX · 8` bytes, whose start holds the
/// warps' partial results before the scatter), then the [`BUCKETS`]
/// counters.
#[inline(always)]
unsafe fn bucket_sort_desc(keys: u32, m: u32, xbuf: u32) -> bool {
    let t = thread_idx_x();
    let (scatter, counts) = (xbuf, xbuf + SORT_MAX * 8);
    let mut x = [0u64; PER_THREAD];
    crate::unroll!(8, R => {
        let i = t + THREADS * R as u32;
        if i < m {
            x[R] = ld_shared_u64(keys + 8 * i);
        }
    });
    let (hi, lo) = key_range(&x, scatter);
    // Bucket of a key: its distance below `hi` in spans of `2^shift`.
    let bits = 64 - (hi - lo).leading_zeros();
    let shift = bits.saturating_sub(BUCKET_BITS);
    let bucket = |key: u64| ((hi - key) >> shift) as u32;
    crate::unroll!(8, R => {
        if x[R] != 0 {
            red_add_shared_u32(counts + 4 * bucket(x[R]), 1);
        }
    });
    sync_threads();
    if !scan_buckets(counts, scatter + 8 * 2 * WARPS) {
        sync_threads(); // every thread has read the warps' results in `xbuf`
        return false;
    }
    // A slot in the key's bucket.
    crate::unroll!(8, R => {
        if x[R] != 0 {
            let slot = atomic_add_shared_u32(counts + 4 * bucket(x[R]), 1);
            st_shared_u64(scatter + 8 * slot, x[R]);
        }
    });
    sync_threads();
    // Each counter now marks where its bucket ends, which is where the
    // next one starts: the key's place is its bucket's start plus the
    // bucket's keys larger than it.
    crate::unroll!(8, R => {
        if x[R] != 0 {
            let b = bucket(x[R]);
            let end = ld_shared_u32(counts + 4 * b);
            let mut place = if b == 0 { 0 } else { ld_shared_u32(counts + 4 * (b - 1)) };
            for s in place..end {
                if ld_shared_u64(scatter + 8 * s) > x[R] {
                    place += 1;
                }
            }
            st_shared_u64(keys + 8 * place, x[R]);
        }
    });
    sync_threads();
    true
}

/// The largest and least of the CTA's keys (`x`, 0 for none), through
/// `2 · WARPS` u64 of shared memory at `part`; zeroes the bucket counters
/// at `part + SORT_MAX · 8` meanwhile. Ends with a CTA barrier.
#[inline(always)]
unsafe fn key_range(x: &[u64; PER_THREAD], part: u32) -> (u64, u64) {
    let w = warp_id();
    // The least key as the largest complement (a 0 is no key).
    let (mut hi, mut lo_c) = (0u64, 0u64);
    crate::unroll!(8, R => {
        if x[R] != 0 {
            hi = hi.max(x[R]);
            lo_c = lo_c.max(!x[R]);
        }
    });
    let (hi, lo_c) = (warp_max_u64(hi), warp_max_u64(lo_c));
    if lane_id() == 0 {
        st_shared_u64(part + 16 * w, hi);
        st_shared_u64(part + 16 * w + 8, lo_c);
    }
    radix::clear_hist(part + SORT_MAX * 8);
    sync_threads();
    let (mut hi, mut lo_c) = (0u64, 0u64);
    for v in 0..WARPS {
        hi = hi.max(ld_shared_u64(part + 16 * v));
        lo_c = lo_c.max(ld_shared_u64(part + 16 * v + 8));
    }
    (hi, !lo_c)
}

/// Turns the bucket counts at `counts` into where each bucket starts
/// (exclusive prefix sums; thread `t` holds buckets `16t ..`), through
/// `2 · WARPS` u32 of shared memory at `part`. Returns whether no bucket
/// holds more than [`CROWDED`] keys (the same in every thread); the
/// counters are left as they were otherwise. Ends with a CTA barrier.
#[inline(always)]
unsafe fn scan_buckets(counts: u32, part: u32) -> bool {
    let (t, w) = (thread_idx_x(), warp_id());
    let mut c = [[0u32; 4]; 4];
    crate::unroll!(4, Q => { c[Q] = ld_shared_v4(counts + 64 * t + 16 * Q as u32); });
    let (mut sum, mut most) = (0, 0);
    crate::unroll!(4, Q => {
        crate::unroll!(4, E => {
            sum += c[Q][E];
            most = most.max(c[Q][E]);
        });
    });
    let upto = warp_inclusive_sum_u32(sum);
    let most = warp_max_u32(most);
    if lane_id() == 31 {
        st_shared_u32(part + 4 * w, upto);
        st_shared_u32(part + 4 * (WARPS + w), most);
    }
    sync_threads();
    let (mut before, mut crowded) = (0, false);
    for v in 0..WARPS {
        let (total, most) = (ld_shared_u32(part + 4 * v), ld_shared_u32(part + 4 * (WARPS + v)));
        if v < w {
            before += total;
        }
        crowded |= most > CROWDED;
    }
    if crowded {
        return false;
    }
    let mut at = before + upto - sum;
    crate::unroll!(4, Q => {
        let mut o = [0u32; 4];
        crate::unroll!(4, E => {
            o[E] = at;
            at += c[Q][E];
        });
        st_shared_v4(counts + 64 * t + 16 * Q as u32, o);
    });
    sync_threads();
    true
}
