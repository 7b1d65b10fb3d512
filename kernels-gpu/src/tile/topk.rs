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
//! Rows of up to millions of entries and `topk` up to thousands take the
//! cluster radix select of [`super::radix`] instead.

use crate::arch::{
    atomic_add_shared_u32, lane_id, ld_shared_u32, ld_shared_u64, st_shared_u32, st_shared_u64,
    sync_threads, thread_idx_x, warp_max_u64,
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
