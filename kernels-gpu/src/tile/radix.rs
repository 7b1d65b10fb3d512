//! Radix select of the `k` largest selection keys of a row shared by the
//! CTAs of a thread-block cluster.
//!
//! A selection key is 56 bits: the 32-bit [`radix_key`] of the score above
//! the inverted 24-bit index ([`radix_sel_key`]), so keys are unique in a
//! row, larger means selected first, and ties go to the lower index. A
//! [`RadixCut`] `(prefix, shift)` splits a row's keys into those above the
//! cut (`key >> shift > prefix`), inside it (`==`) and below.
//!
//! [`RadixSelect::step`] refines the cut by one 12-bit digit of the keys
//! inside it: each CTA counts its keys by digit into a shared-memory
//! histogram and sums it into 64 coarse bins; after one cluster barrier,
//! warp 0 of every CTA reads the 64 coarse sums of every CTA (distributed
//! shared memory), finds the coarse bin where the `need`-th key from the top
//! lies, then reads the 64 fine bins of that coarse bin of every CTA and
//! finds the digit. Every CTA reads the same numbers and adds them in the
//! same order, so every CTA finds the same digit: the cut, and with it the
//! number of steps and cluster barriers, is the same in every CTA.
//!
//! Where the keys come from is a [`KeySet`]: a chunk kept in shared memory,
//! a list of keys, or the row re-read from memory (`tile::row_chunk`).

use crate::arch::{
    cluster_nctarank, cluster_sync, lane_id, ld_shared_cluster_v2_u32, ld_shared_u32, ld_shared_v4,
    map_shared_rank, red_add_shared_u32, shfl_down_u32, shfl_xor_u32, st_shared_u32,
    st_shared_zero16, sync_threads, thread_idx_x, warp_id, warp_max_u32,
};

/// Bits of the index below the score in a selection key.
pub const RADIX_INDEX_BITS: u32 = 24;
const INDEX_MASK: u32 = (1 << RADIX_INDEX_BITS) - 1;
/// Bits of a selection key.
pub const KEY_BITS: u32 = 32 + RADIX_INDEX_BITS;
/// Bits of a digit.
pub const DIGIT_BITS: u32 = 12;
/// Bins of a digit's histogram.
pub const BINS: u32 = 1 << DIGIT_BITS;
/// Coarse bins of a digit (its top 6 bits), 64 fine bins each.
pub const COARSE_BINS: u32 = 64;
const FINE_PER_COARSE: u32 = BINS / COARSE_BINS;
/// Threads of a CTA that calls the select.
pub const THREADS: u32 = 256;
/// Most CTAs of a cluster (the non-portable limit).
pub const MAX_CLUSTER: u32 = 16;

const _: () = assert!(FINE_PER_COARSE == 64 && COARSE_BINS == 64);
const _: () = assert!(BINS / THREADS == 16, "coarse_sums: 16 fine bins a thread, 4 threads a coarse bin");

/// The 32-bit radix image of a score: [`ordered_bits`](crate::tile::topk::ordered_bits) + 1, so NaN is 1
/// (below every number) and 0 is free to mean "no entry". In integer
/// selects, no branch (`ordered_bits` compiled to a branch per entry).
#[inline(always)]
pub fn radix_key(s: f32) -> u32 {
    let b = s.to_bits();
    let mag = b & 0x7fff_ffff;
    let b = if mag == 0 { 0 } else { b }; // -0.0 as +0.0
    // Negative: all bits flipped; positive: the sign bit set.
    let flip = ((b as i32 >> 31) as u32) | 0x8000_0000;
    if mag > 0x7f80_0000 {
        1 // NaN
    } else {
        (b ^ flip) + 1
    }
}

/// The least float whose [`radix_key`] is at least `r` (`r >= 2`: above
/// NaN's), for a filter that compares scores as floats: for every score
/// `s`, `radix_key(s) >= r` implies `s >= radix_key_floor(r)` (both ways
/// but for NaN, whose key 1 is below `r` and which fails every compare).
/// Where no float has a key that high the result is a NaN (every compare
/// fails); where every number has, it is `-inf`. `r` between the keys of
/// `-0.0`'s neighbours gives `-0.0`, which compares equal to `+0.0`, as
/// their keys are.
#[inline(always)]
pub fn radix_key_floor(r: u32) -> f32 {
    let o = r - 1; // the ordered bits
    let b = if o & 0x8000_0000 != 0 { o ^ 0x8000_0000 } else { !o };
    // A negative NaN's bits: `o` lies below the ordered bits of -inf.
    if o & 0x8000_0000 == 0 && b & 0x7fff_ffff > 0x7f80_0000 {
        f32::NEG_INFINITY
    } else {
        f32::from_bits(b)
    }
}

/// Selection key of the entry at index `j` of its row with radix key `r`:
/// `r` above, the inverted index below (ties to the lower index), unique
/// in the row. `j < 2^RADIX_INDEX_BITS`.
#[inline(always)]
pub fn radix_sel_key(r: u32, j: u32) -> u64 {
    ((r as u64) << RADIX_INDEX_BITS) | (INDEX_MASK - (j & INDEX_MASK)) as u64
}

/// The first digit (the cut [`RadixCut::ALL`] refines) of the selection key
/// of an entry with radix key `r`: the score key's top [`DIGIT_BITS`], the
/// index below them plays no part (a pass that needs the first digit alone
/// builds no 64-bit key).
#[inline(always)]
pub fn first_digit(r: u32) -> u32 {
    r >> (32 - DIGIT_BITS)
}
const _: () = assert!(KEY_BITS - DIGIT_BITS >= RADIX_INDEX_BITS);

/// Row index held in a selection key.
#[inline(always)]
pub fn radix_sel_index(key: u64) -> u32 {
    INDEX_MASK - (key as u32 & INDEX_MASK)
}

/// This CTA's share of a row's selection keys.
pub trait KeySet {
    /// Calls `f(key)` for each key (unique, nonzero, below 2^[`KEY_BITS`]),
    /// in any order, with every thread of the CTA taking part.
    fn for_each(&self, f: impl FnMut(u64));
}

/// A cut of the selection keys: `key >> shift` against `prefix`.
#[derive(Clone, Copy)]
pub struct RadixCut {
    /// The key bits above `shift` of the keys inside the cut.
    pub prefix: u64,
    /// Key bits below the prefix.
    pub shift: u32,
}

impl RadixCut {
    /// Every key inside: the cut before the first digit.
    pub const ALL: RadixCut = RadixCut { prefix: 0, shift: KEY_BITS };

    /// Whether `key` lies above the cut.
    #[inline(always)]
    pub fn above(&self, key: u64) -> bool {
        key >> self.shift > self.prefix
    }

    /// Whether `key` lies inside the cut.
    #[inline(always)]
    pub fn inside(&self, key: u64) -> bool {
        key >> self.shift == self.prefix
    }

    /// Whether `key` is kept once the select is done: above or inside.
    #[inline(always)]
    pub fn keeps(&self, key: u64) -> bool {
        key >> self.shift >= self.prefix
    }
}

/// Shared memory of the select (addresses; every CTA of the cluster lays
/// it out alike).
#[derive(Clone, Copy)]
pub struct RadixSmem {
    /// Two histograms of [`BINS`] u32 (the steps alternate); the first
    /// zeroed before the first step.
    pub hist: u32,
    /// Two arrays of [`COARSE_BINS`] u32, each the coarse sums of its
    /// histogram; 8-byte aligned.
    pub coarse: u32,
    /// 8 u32: the step's result, broadcast to the CTA.
    pub pick: u32,
}

/// One step's result (the same in every CTA).
#[derive(Clone, Copy)]
pub struct Pick {
    /// Digit of the bin where the cut now lies.
    pub digit: u32,
    /// Keys of the cluster inside the old cut and in higher bins.
    pub above: u32,
    /// Keys of the cluster in the bin.
    pub inbin: u32,
    /// The most keys of the bin one CTA holds.
    pub max_inbin: u32,
}

/// The state of a select: the cut so far and how many keys inside it are
/// still to be kept.
#[derive(Clone, Copy)]
pub struct RadixSelect {
    /// The cut.
    pub cut: RadixCut,
    /// Keys inside the cut still to keep.
    pub need: u32,
    /// Steps taken (which histogram the next uses).
    pub steps: u32,
    /// Whether every key the cut keeps is to be kept: exactly `k` (or the
    /// whole row, when it has at most `k` entries).
    pub done: bool,
}

impl RadixSelect {
    /// The select of the `k` largest keys of a row of `entries` (`k >= 1`):
    /// done at once where the row has at most `k`.
    #[inline(always)]
    pub fn new(k: u32, entries: u32) -> Self {
        RadixSelect { cut: RadixCut::ALL, need: k, steps: 0, done: entries <= k }
    }

    /// Refines the cut by one digit of the keys inside it; every CTA of
    /// the cluster calls it (all its threads) with its own `keys`.
    /// Returns the step's [`Pick`]. Not to be called once `done`.
    ///
    /// Cost: one pass over `keys`, two CTA barriers, one cluster barrier,
    /// two rounds of distributed-shared-memory loads (warp 0: `2 · ncta`
    /// 8-byte loads a lane each).
    #[inline(always)]
    pub unsafe fn step(&mut self, keys: &impl KeySet, sm: RadixSmem) -> Pick {
        let (cut, low, hist) = (self.cut, self.low(), self.hist(sm));
        keys.for_each(|key| {
            if cut.inside(key) {
                red_add_shared_u32(hist + 4 * ((key >> low) as u32 & (BINS - 1)), 1);
            }
        });
        self.finish_step(sm)
    }

    /// Key bits below the digit the next step counts.
    #[inline(always)]
    fn low(&self) -> u32 {
        self.cut.shift - self.cut.shift.min(DIGIT_BITS)
    }

    /// The histogram the next step counts into (the steps alternate).
    #[inline(always)]
    pub fn hist(&self, sm: RadixSmem) -> u32 {
        sm.hist + (self.steps & 1) * BINS * 4
    }

    /// The rest of a step, once every thread has counted its keys inside
    /// the cut into [`hist`](Self::hist) by the next digit (a caller that
    /// counts them its own way: the first digit of a row is the top
    /// [`DIGIT_BITS`] of the score key alone).
    #[inline(always)]
    pub unsafe fn finish_step(&mut self, sm: RadixSmem) -> Pick {
        let cut = self.cut;
        let low = self.low();
        let bits = cut.shift - low;
        let parity = self.steps & 1;
        let hist = self.hist(sm);
        let coarse = sm.coarse + parity * COARSE_BINS * 4;
        sync_threads();
        coarse_sums(hist, coarse);
        cluster_sync(); // every CTA's histogram and coarse sums are final
        // The other histogram's last readers (the step before) are past the
        // barrier: clear it for the next step.
        clear_hist(sm.hist + (parity ^ 1) * BINS * 4);
        if warp_id() == 0 {
            pick_bin(hist, coarse, self.need, sm.pick);
        }
        sync_threads();
        let pick = Pick {
            digit: ld_shared_u32(sm.pick),
            above: ld_shared_u32(sm.pick + 4),
            inbin: ld_shared_u32(sm.pick + 8),
            max_inbin: ld_shared_u32(sm.pick + 12),
        };
        self.cut = RadixCut { prefix: (cut.prefix << bits) | pick.digit as u64, shift: low };
        self.need -= pick.above;
        self.steps += 1;
        // Every key inside is kept, or the keys are resolved to the last
        // bit (then the bin holds one key, and `need` is 1).
        self.done = pick.inbin == self.need || low == 0;
        pick
    }
}

/// Clears a histogram of [`BINS`] counters (every thread 16 of them).
#[inline(always)]
pub unsafe fn clear_hist(hist: u32) {
    let a = hist + 64 * thread_idx_x();
    crate::unroll!(4, Q => { st_shared_zero16(a + 16 * Q as u32); });
}

/// Sums the histogram into its coarse bins: thread `t` adds fine bins
/// `16t ..`, four lanes make a coarse bin.
#[inline(always)]
unsafe fn coarse_sums(hist: u32, coarse: u32) {
    let t = thread_idx_x();
    let mut s = 0;
    crate::unroll!(4, Q => {
        let [a, b, c, d] = ld_shared_v4(hist + 64 * t + 16 * Q as u32);
        s += a + b + c + d;
    });
    s += shfl_xor_u32(s, 1);
    s += shfl_xor_u32(s, 2);
    if t.is_multiple_of(4) {
        st_shared_u32(coarse + t, s); // coarse bin t / 4, 4 bytes each
    }
}

/// Warp 0: the bin where the `need`-th key from the top lies, from every
/// CTA's coarse sums, then the fine bins of that coarse bin; written to
/// `pick` as `[digit, above, inbin, max_inbin]`.
#[inline(always)]
unsafe fn pick_bin(hist: u32, coarse: u32, need: u32, pick: u32) {
    let lane = lane_id();
    let c = cluster_pairs(coarse + 8 * lane);
    let (cbin, cabove, _) = scan_pairs([c[0], c[1]], need);
    let f = cluster_pairs(hist + 4 * (FINE_PER_COARSE * cbin + 2 * lane));
    let (fbin, fabove, inbin) = scan_pairs([f[0], f[1]], need - cabove);
    let max_inbin = warp_max_u32(match fbin.wrapping_sub(2 * lane) {
        0 => f[2],
        1 => f[3],
        _ => 0,
    });
    if lane == 0 {
        st_shared_u32(pick, FINE_PER_COARSE * cbin + fbin);
        st_shared_u32(pick + 4, cabove + fabove);
        st_shared_u32(pick + 8, inbin);
        st_shared_u32(pick + 12, max_inbin);
    }
}

/// The two `u32` at `addr` (8-byte aligned) in every CTA of the cluster:
/// `[sum of the first, sum of the second, most of the first, most of the
/// second]`. All the loads are in flight together.
#[inline(always)]
unsafe fn cluster_pairs(addr: u32) -> [u32; 4] {
    let ncta = cluster_nctarank();
    let mut v = [[0u32; 2]; MAX_CLUSTER as usize];
    crate::unroll!(16, R => {
        if (R as u32) < ncta {
            v[R] = ld_shared_cluster_v2_u32(map_shared_rank(addr, R as u32));
        }
    });
    let mut r = [0u32; 4];
    crate::unroll!(16, R => {
        r[0] += v[R][0];
        r[1] += v[R][1];
        r[2] = r[2].max(v[R][0]);
        r[3] = r[3].max(v[R][1]);
    });
    r
}

/// With bins `2·lane` and `2·lane + 1` of 64 in each lane (`c`): the bin
/// where the `need`-th key counted from the top bin lies (`1 <= need <=`
/// the keys of all bins), the keys in higher bins and in it, in every lane.
#[inline(always)]
fn scan_pairs(c: [u32; 2], need: u32) -> (u32, u32, u32) {
    let lane = lane_id();
    // Keys in the bins of this lane and the lanes above it.
    let mut s = c[0] + c[1];
    for o in [1, 2, 4, 8, 16] {
        let v = shfl_down_u32(s, o);
        if lane + o < 32 {
            s += v;
        }
    }
    let hi_above = s - c[0] - c[1]; // above bin 2·lane + 1
    let lo_above = hi_above + c[1]; // above bin 2·lane
    let hit_hi = hi_above < need && need <= lo_above;
    let hit_lo = lo_above < need && need <= s;
    let (bin, above, count) = if hit_hi {
        (2 * lane + 1, hi_above, c[1])
    } else if hit_lo {
        (2 * lane, lo_above, c[0])
    } else {
        (0, 0, 0)
    };
    // Exactly one bin holds the `need`-th key: the others give 0.
    (warp_max_u32(bin), warp_max_u32(above), warp_max_u32(count))
}
