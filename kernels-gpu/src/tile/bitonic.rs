//! Bitonic sort, descending, of up to [`SORT_MAX`] distinct `u64` keys in
//! a CTA of 256 threads, in registers: thread `(w, l)` (warp, lane) holds
//! the 8 consecutive keys `256w + 8l ..`, so a compare-exchange at stride
//! 1, 2 or 4 stays in a thread's registers, one at stride 8 .. 128 is a
//! warp shuffle, and only strides of 256 and up (other warps) go through
//! shared memory, one CTA barrier each.
//!
//! 2048 keys: 66 stages, of which 36 in registers, 30 shuffles, and 6
//! through shared memory (the old sort had a barrier and shared-memory
//! round trip at all 66). Only the warps that hold keys work (at least
//! 256 keys are sorted: one warp).

use crate::arch::{
    lane_id, ld_shared_u64, shfl_xor_u64, st_shared_u64, sync_threads, warp_id,
};

/// Most keys sorted.
pub const SORT_MAX: u32 = 2048;
/// Keys a thread holds.
const PER_THREAD: usize = 8;
/// Keys a warp holds.
const PER_WARP: u32 = 32 * PER_THREAD as u32;

/// Sorts the `m <= SORT_MAX` distinct nonzero keys at the shared address
/// `keys` in descending order, in place, with the whole CTA (all 256
/// threads call it, with the same `m`). `xbuf` is `2 · SORT_MAX · 8` bytes
/// of shared memory for the cross-warp stages (free on entry; its contents
/// are lost).
#[inline(always)]
pub unsafe fn cta_sort_desc(keys: u32, m: u32, xbuf: u32) {
    if m <= 1 {
        return;
    }
    let width = m.next_power_of_two().max(PER_WARP);
    let active = warp_id() < width / PER_WARP; // warp-uniform
    let base = PER_WARP * warp_id() + PER_THREAD as u32 * lane_id();
    let mut x = [0u64; PER_THREAD];
    if active {
        crate::unroll!(8, R => {
            let i = base + R as u32;
            if i < m {
                x[R] = ld_shared_u64(keys + 8 * i);
            }
        });
    }
    let mut size = 2;
    let mut buf = 0;
    while size <= width {
        let mut stride = size / 2;
        while stride >= PER_WARP {
            cross_warp_stage(&mut x, base, stride, size, xbuf + buf * SORT_MAX * 8, active);
            buf ^= 1;
            stride /= 2;
        }
        if active {
            while stride >= PER_THREAD as u32 {
                lane_stage(&mut x, base, stride, size);
                stride /= 2;
            }
            if stride >= 4 {
                register_stage::<4>(&mut x, base, size);
            }
            if stride >= 2 {
                register_stage::<2>(&mut x, base, size);
            }
            register_stage::<1>(&mut x, base, size);
        }
        size *= 2;
    }
    sync_threads(); // every key of the input has been read
    if active {
        crate::unroll!(8, R => {
            let i = base + R as u32;
            if i < m {
                st_shared_u64(keys + 8 * i, x[R]);
            }
        });
    }
    sync_threads();
}

/// Compare-exchange of `(lo, hi)` (`lo` the lower position): descending
/// leaves the larger at `lo`.
#[inline(always)]
fn exchange(lo: u64, hi: u64, descending: bool) -> (u64, u64) {
    let (big, small) = if lo > hi { (lo, hi) } else { (hi, lo) };
    if descending {
        (big, small)
    } else {
        (small, big)
    }
}

/// The stage at stride `S` (1, 2 or 4) of the merge of runs of `size`:
/// pairs inside a thread's registers. Position `i` belongs to a descending
/// run where `i & size == 0`.
#[inline(always)]
fn register_stage<const S: usize>(x: &mut [u64; PER_THREAD], base: u32, size: u32) {
    crate::unroll!(8, R => {
        if R % (2 * S) < S {
            let desc = (base | R as u32) & size == 0;
            (x[R], x[R | S]) = exchange(x[R], x[R | S], desc);
        }
    });
}

/// The stage at stride 8 .. 128: the partner is the same register of lane
/// `lane ^ stride / 8`; the lower position keeps the larger key where the
/// run is descending.
#[inline(always)]
fn lane_stage(x: &mut [u64; PER_THREAD], base: u32, stride: u32, size: u32) {
    let lower = base & stride == 0;
    let keep_max = lower == (base & size == 0);
    let lanes = stride / PER_THREAD as u32;
    crate::unroll!(8, R => {
        let y = shfl_xor_u64(x[R], lanes);
        x[R] = if (x[R] > y) == keep_max { x[R] } else { y };
    });
}

/// The stage at stride 256 and up: every active thread stores its keys to
/// `buf`, the CTA meets, and each reads its partner's (the same lane and
/// register of warp `w ^ stride / 256`). Two buffers alternate, so a stage
/// needs one barrier. Slots are swizzled by lane (register `r` of lane `l`
/// at `r ^ (l / 2) % 8`) so that a half-warp's 8-byte accesses hit 32
/// distinct banks.
#[inline(always)]
unsafe fn cross_warp_stage(
    x: &mut [u64; PER_THREAD],
    base: u32,
    stride: u32,
    size: u32,
    buf: u32,
    active: bool,
) {
    let swz = (lane_id() >> 1) & 7;
    if active {
        crate::unroll!(8, R => {
            st_shared_u64(buf + 8 * (base + (R as u32 ^ swz)), x[R]);
        });
    }
    sync_threads();
    if active {
        let partner = base ^ stride;
        let keep_max = (base & stride == 0) == (base & size == 0);
        crate::unroll!(8, R => {
            let y = ld_shared_u64(buf + 8 * (partner + (R as u32 ^ swz)));
            x[R] = if (x[R] > y) == keep_max { x[R] } else { y };
        });
    }
}
