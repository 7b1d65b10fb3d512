//! Top-k selection behind a key-source interface.
//!
//! A [`KeySource`] turns a row's entries into 64-bit keys that order as the
//! selection should (larger first) and are unique: [`key_of`] puts an
//! order-preserving image of the score in the high word and the inverted
//! index in the low word, so ties go to the lower index; 0 means "no
//! entry". The selectors return the `topk` largest keys in descending
//! order through `emit(slot, key)`:
//! - [`warp_select`]: one warp per row, `topk` sequential warp arg-max
//!   picks over keys held in registers — short rows, small `topk`;
//! - [`cta_threshold_select`]: one CTA per row, a lower bound from the
//!   threads' maxima, then only survivors ranked — long rows, `topk <= 64`.
//!
//! - [`cluster_radix_select`]: a thread-block cluster per row, the row's
//!   entries in the CTAs' shared memory as 32-bit [`radix_key`]s, a radix
//!   select on 8-bit digits with histograms summed over the cluster — rows
//!   of up to hundreds of thousands of entries, `topk` up to thousands.

use crate::arch::{
    atomic_add_shared_u32, cluster_nctarank, cluster_sync, lane_id, ld_shared_cluster_u32,
    ld_shared_u32, ld_shared_u64, map_shared_rank, shfl_down_u32, st_shared_u32, st_shared_u64,
    sync_threads, thread_idx_x, warp_id, warp_max_u64,
};

/// A row of entries as selection keys.
pub trait KeySource {
    /// Entries of the row.
    fn len(&self) -> u32;
    /// Key of entry `j < len()`: unique, larger means selected first, never 0.
    fn key(&self, j: u32) -> u64;
}

/// Order-preserving 32-bit image of a score: larger scores give larger
/// words; NaN gives 0 (below every number); `-0.0` counts as `+0.0`.
#[inline(always)]
pub fn ordered_bits(s: f32) -> u32 {
    if s != s {
        return 0;
    }
    let bits = if s == 0.0 { 0 } else { s.to_bits() };
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Key of entry `j` with score `s`: higher score first, then lower `j`.
#[inline(always)]
pub fn key_of(s: f32, j: u32) -> u64 {
    ((ordered_bits(s) as u64) << 32) | (u32::MAX - j) as u64
}

/// Entry index held in a key.
#[inline(always)]
pub fn key_index(key: u64) -> u32 {
    u32::MAX - key as u32
}

/// Picks, with the whole warp (`KPL <= 32` keys per lane in registers), the
/// `topk` largest keys of the row and hands each to `emit(slot, key)` in
/// descending order; returns how many (fewer than `topk` when the row runs
/// out). Lane `l` owns entries `l, l + 32, …`; the first `KPL` of them live
/// in registers, further ones are re-read on every pick. Each pick is a
/// warp arg-max; only the lane that held the winner rescans.
#[inline(always)]
pub fn warp_select<const KPL: usize>(src: &impl KeySource, topk: u32, mut emit: impl FnMut(u32, u64)) -> u32 {
    let (first, end) = (lane_id(), src.len());
    // Register arrays of the largest size; entries past KPL stay constant
    // zeros and compile away. Explicit unrolls keep them in registers.
    let mut keys = [0u64; 32];
    crate::unroll!(32, I => {
        if I < KPL {
            let j = first + 32 * I as u32;
            keys[I] = if j < end { src.key(j) } else { 0 };
        }
    });
    let mut best = lane_best_below(src, &keys, KPL as u32, u64::MAX);
    let mut slot = 0;
    while slot < topk {
        let win = warp_max_u64(best);
        if win == 0 {
            break;
        }
        emit(slot, win);
        if best == win {
            best = lane_best_below(src, &keys, KPL as u32, win);
        }
        slot += 1;
    }
    slot
}

/// Largest key of this lane below `bound` (keys are unique): the register
/// keys as a tree of `max`, then the entries past `kpl` from the source.
#[inline(always)]
fn lane_best_below(src: &impl KeySource, keys: &[u64; 32], kpl: u32, bound: u64) -> u64 {
    let mut m = [0u64; 32];
    crate::unroll!(32, I => {
        m[I] = if keys[I] < bound { keys[I] } else { 0 };
    });
    // tree: log2(32) dependent steps
    crate::unroll!(16, I => { m[I] = m[I].max(m[I + 16]); });
    crate::unroll!(8, I => { m[I] = m[I].max(m[I + 8]); });
    crate::unroll!(4, I => { m[I] = m[I].max(m[I + 4]); });
    crate::unroll!(2, I => { m[I] = m[I].max(m[I + 2]); });
    let mut best = m[0].max(m[1]);
    let (end, mut j) = (src.len(), lane_id() + 32 * kpl);
    while j < end {
        let k = src.key(j);
        if k < bound && k > best {
            best = k;
        }
        j += 32;
    }
    best
}

/// Shared memory of [`cta_threshold_select`] for `T` threads and `cap`
/// survivors: `[T]` u64 maxima, a u64 bound, a u32 count (padded to 8),
/// `[cap]` u64 survivors.
pub const fn cta_threshold_smem(threads: u32, cap: u32) -> u32 {
    threads * 8 + 16 + cap * 8
}

/// The `topk` largest keys of a long row with one CTA of `T` threads (all
/// of them call it), no sequential picks: thread `t` owns entries `t, t +
/// T, …` (the first 8 in registers). The `topk`-th largest of the `T`
/// per-thread maxima is a lower bound `L` of the row's `topk`-th largest
/// key, so only keys `>= L` survive — at most `topk * ceil(len / T)`
/// (`cap`, sized by the host) — gathered in shared memory at `smem`
/// ([`cta_threshold_smem`]). Each survivor's slot is its rank among the
/// survivors (keys are unique), so the output is deterministic; `emit(slot,
/// key)` is called for slots `< topk`, by whichever thread holds the key.
#[inline(always)]
pub unsafe fn cta_threshold_select<const T: u32>(
    src: &impl KeySource,
    topk: u32,
    cap: u32,
    smem: u32,
    mut emit: impl FnMut(u32, u64),
) {
    const REG: usize = 8;
    let (maxima, bound, count, surv) = (smem, smem + T * 8, smem + T * 8 + 8, smem + T * 8 + 16);
    let (t, nb) = (thread_idx_x(), src.len());
    if t == 0 {
        st_shared_u64(bound, 0);
        st_shared_u32(count, 0);
    }
    let mut keys = [0u64; REG];
    crate::unroll!(8, I => {
        let j = t + T * I as u32;
        keys[I] = if j < nb { src.key(j) } else { 0 };
    });
    let mut lmax = 0u64;
    crate::unroll!(8, I => { lmax = lmax.max(keys[I]); });
    let mut j = t + T * REG as u32;
    while j < nb {
        lmax = lmax.max(src.key(j));
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
        keep(src.key(j));
        j += T;
    }
    sync_threads();
    let n = ld_shared_u32(count).min(cap);
    let mut c = t;
    while c < n {
        let kc = ld_shared_u64(surv + c * 8);
        let mut rank = 0;
        for d in 0..n {
            rank += (ld_shared_u64(surv + d * 8) > kc) as u32;
        }
        if rank < topk {
            emit(rank, kc);
        }
        c += T;
    }
}

// ------------------------------------------------------------ radix select

/// Bins of a radix digit; the select runs with exactly this many threads.
pub const RADIX_BINS: u32 = 256;
/// Bits of the index below the score in a selection key.
pub const RADIX_INDEX_BITS: u32 = 24;
const INDEX_MASK: u32 = (1 << RADIX_INDEX_BITS) - 1;
/// Most CTAs of a cluster (the non-portable limit).
pub const MAX_CLUSTER: u32 = 16;
/// Bits of a selection key: the radix key's 32, then the index's.
const KEY_BITS: u32 = 32 + RADIX_INDEX_BITS;

/// The 32-bit radix image of a score: [`ordered_bits`] + 1, so NaN is 1
/// (below every number) and 0 is free to mean "no entry".
#[inline(always)]
pub fn radix_key(s: f32) -> u32 {
    ordered_bits(s) + 1
}

/// Selection key of the entry at index `j` of its row with radix key `r`:
/// `r` above, the inverted index below (ties to the lower index), unique
/// in the row. `j < 2^RADIX_INDEX_BITS`.
#[inline(always)]
pub fn radix_sel_key(r: u32, j: u32) -> u64 {
    ((r as u64) << RADIX_INDEX_BITS) | (INDEX_MASK - (j & INDEX_MASK)) as u64
}

/// Row index held in a selection key.
#[inline(always)]
pub fn radix_sel_index(key: u64) -> u32 {
    INDEX_MASK - (key as u32 & INDEX_MASK)
}

/// The result of a radix select: the entries kept are those whose
/// selection key has `key >> shift >= prefix`.
#[derive(Clone, Copy)]
pub struct RadixCut {
    prefix: u64,
    shift: u32,
}

impl RadixCut {
    /// Whether the entry with radix key `r` (0: none) at index `j` is kept.
    #[inline(always)]
    pub fn keeps(&self, r: u32, j: u32) -> bool {
        r != 0 && radix_sel_key(r, j) >> self.shift >= self.prefix
    }
}

/// Shared memory of [`cluster_radix_select`] (addresses; every CTA of the
/// cluster lays it out alike): `hist` 2 × [`RADIX_BINS`] u32 (zeroed
/// before the call), `sums` 8 u32, `pick` 4 u32.
#[derive(Clone, Copy)]
pub struct RadixSmem {
    /// Two histograms, the passes alternating between them.
    pub hist: u32,
    /// The warps' bin sums.
    pub sums: u32,
    /// The chosen bin: digit, entries above it, entries in it, entries in all.
    pub pick: u32,
}

/// Finds, with every CTA of the cluster (all [`RADIX_BINS`] threads of each
/// call it, with the same `k`), the `k` largest selection keys of a row
/// whose entries the CTAs share: this CTA's `len` entries, entry `e` at row
/// index `j0 + e` with score `score(e)`. Returns the cut,
/// the same in every CTA: exactly `min(k, entries)` entries of the row are
/// kept.
///
/// One pass per 8-bit digit of the selection key from the top: each CTA
/// counts its entries under the prefix so far by digit, the counts are
/// summed over the cluster (each CTA reads every CTA's histogram through
/// distributed shared memory), and the digit where the `k`-th key lies
/// extends the prefix. It stops as soon as every entry under the prefix
/// is kept: usually after the score's digits; the index's digits only
/// resolve ties at the cut, lower index first. `score` is called again on
/// every pass ([`for_entries`]).
#[inline(always)]
pub unsafe fn cluster_radix_select(len: u32, j0: u32, k: u32, sm: RadixSmem, score: impl Fn(u32) -> f32) -> RadixCut {
    let t = thread_idx_x();
    let ncta = cluster_nctarank();
    let (mut prefix, mut need) = (0u64, k);
    let mut pass = 0;
    loop {
        let shift = KEY_BITS - 8 * (pass + 1);
        let hist = sm.hist + (pass & 1) * RADIX_BINS * 4;
        for_entries(len, &score, |e, r| {
            let sel = radix_sel_key(r, j0 + e);
            if r != 0 && sel >> (shift + 8) == prefix {
                atomic_add_shared_u32(hist + 4 * ((sel >> shift) as u32 & 0xff), 1);
            }
        });
        cluster_sync();
        // All the cluster's bins `t` in flight at once, then summed.
        let mut bins = [0u32; MAX_CLUSTER as usize];
        crate::unroll!(16, R => {
            if (R as u32) < ncta {
                bins[R] = ld_shared_cluster_u32(map_shared_rank(hist + 4 * t, R as u32));
            }
        });
        let mut c = 0;
        crate::unroll!(16, R => { c += bins[R]; });
        // The other histogram's last readers are past the barrier: clear it
        // for the next pass.
        st_shared_u32(sm.hist + ((pass + 1) & 1) * RADIX_BINS * 4 + 4 * t, 0);
        let [digit, above, inbin, all] = pick_bin(c, need, sm);
        if pass == 0 && all <= need {
            return RadixCut { prefix: 0, shift: KEY_BITS };
        }
        need -= above;
        prefix = (prefix << 8) | digit as u64;
        if inbin == need || shift == 0 {
            return RadixCut { prefix, shift };
        }
        pass += 1;
    }
}

/// Calls `f(e, radix_key(score(e)))` for this thread's entries `e < len`
/// (`t, t + RADIX_BINS, …`), [`BATCH`] scores fetched before any is
/// converted: their loads are in flight together. (`score` is called with
/// `e` clamped to `len - 1`, so the loads need no branch: with a branch
/// per load, and the conversion between them, ptxas issued them one at a
/// time.)
#[inline(always)]
pub fn for_entries(len: u32, score: &impl Fn(u32) -> f32, mut f: impl FnMut(u32, u32)) {
    let t = thread_idx_x();
    let mut base = 0;
    while base < len {
        let mut v = [0f32; BATCH as usize];
        crate::unroll!(8, I => {
            v[I] = score((base + t + I as u32 * RADIX_BINS).min(len - 1));
        });
        crate::unroll!(8, I => {
            let e = base + t + I as u32 * RADIX_BINS;
            if e < len {
                f(e, radix_key(v[I]));
            }
        });
        base += BATCH * RADIX_BINS;
    }
}

/// Entries a thread fetches at once in [`for_entries`].
pub const BATCH: u32 = 8;

/// With the histogram bin `c` of thread `t` (bin `t`): the bin where the
/// `need`-th largest key lies, counted from the top, broadcast to the CTA
/// as `[digit, keys in higher bins, keys in it, keys in all]`.
#[inline(always)]
unsafe fn pick_bin(c: u32, need: u32, sm: RadixSmem) -> [u32; 4] {
    let (t, lane, w) = (thread_idx_x(), lane_id(), warp_id());
    // Suffix sums: keys in bins >= t, in the warp, then over higher warps.
    let mut s = c;
    for o in [1, 2, 4, 8, 16] {
        let v = shfl_down_u32(s, o);
        if lane + o < 32 {
            s += v;
        }
    }
    if lane == 0 {
        st_shared_u32(sm.sums + 4 * w, s);
    }
    sync_threads();
    for hw in w + 1..RADIX_BINS / 32 {
        s += ld_shared_u32(sm.sums + 4 * hw);
    }
    let above = s - c;
    if above < need && need <= s {
        st_shared_u32(sm.pick, t);
        st_shared_u32(sm.pick + 4, above);
        st_shared_u32(sm.pick + 8, c);
    }
    if t == 0 {
        st_shared_u32(sm.pick + 12, s);
    }
    sync_threads();
    [ld_shared_u32(sm.pick), ld_shared_u32(sm.pick + 4), ld_shared_u32(sm.pick + 8), ld_shared_u32(sm.pick + 12)]
}
