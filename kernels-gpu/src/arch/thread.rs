//! Thread and block indices, block-wide barriers, `trap`.

use core::arch::asm;
use core::arch::nvptx;

/// `%tid.x`
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// `%ctaid.x`
#[inline(always)]
pub fn block_idx_x() -> u32 {
    unsafe { nvptx::_block_idx_x() as u32 }
}

/// `%nctaid.x`
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    unsafe { nvptx::_grid_dim_x() as u32 }
}

/// `%ntid.x`
#[inline(always)]
pub fn block_dim_x() -> u32 {
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// Lane of the calling thread in its warp (`%tid.x % 32` for 1-D blocks).
#[inline(always)]
pub fn lane_id() -> u32 {
    thread_idx_x() & 31
}

/// Warp index of the calling thread in its block (1-D blocks).
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_idx_x() >> 5
}

/// [`warp_id`] broadcast from lane 0, so that ptxas knows it is the same
/// in every lane (CUTLASS's `canonical_warp_idx_sync` does the same): what
/// is computed from it can live in uniform registers, as a `wgmma`
/// descriptor must, instead of being moved there (`R2UR`) at every use.
/// The whole warp must call it.
#[inline(always)]
pub fn warp_id_uniform() -> u32 {
    super::warp::shfl_lane0_u32(warp_id())
}

/// `barrier.sync 0`: block-wide barrier; also orders shared-memory accesses.
///
/// The non-`.aligned` form on purpose: LLVM may duplicate a barrier into the
/// arms of a branch (seen: `if tid < n { .. } sync_threads()` became one
/// barrier per arm), and `bar.sync` (= `barrier.sync.aligned`) requires every
/// thread to execute the *same* instruction, so that hung the CTA. The
/// unaligned barrier counts threads wherever they arrive.
#[inline(always)]
pub fn sync_threads() {
    unsafe { asm!("barrier.sync 0;", options(nostack)) }
}

/// `trap`: abort the kernel (used only for states that cannot happen).
#[inline(always)]
pub fn trap() -> ! {
    unsafe { nvptx::trap() }
}

/// `barrier.sync id, n`: a named barrier (ids 1..16; 0 is [`sync_threads`])
/// for the `n` threads (a multiple of 32) of the warps that use it, e.g. the
/// two consumer warpgroups of a warp-specialized kernel ping-ponging.
/// Non-`.aligned` for the reason given at [`sync_threads`].
#[inline(always)]
pub fn named_barrier_sync(id: u32, n: u32) {
    unsafe { asm!("barrier.sync {id}, {n};", id = in(reg32) id, n = in(reg32) n, options(nostack)) }
}

/// `barrier.arrive id, n`: arrives at named barrier `id` without waiting
/// (the producer side of a [`named_barrier_sync`]).
#[inline(always)]
pub fn named_barrier_arrive(id: u32, n: u32) {
    unsafe {
        asm!("barrier.arrive {id}, {n};", id = in(reg32) id, n = in(reg32) n, options(nostack))
    }
}

/// `setmaxnreg.inc.sync.aligned.u32 N` (sm_90a): raises this warpgroup's
/// register budget to `N` (24..=256, a multiple of 8), e.g. for consumer
/// warpgroups after the producer gave registers back.
///
/// Pitfall (ptxas 13.0, 2026-12-02): in an entry without launch bounds
/// ptxas drops it with warning C7508 ("unable to determine register count
/// at entry"); the entry's PTX header needs `.maxntid` and `.minnctapersm`
/// (or `.maxnreg`), which rustc does not write: the PTX build step must add
/// them for warp-specialized kernels and check that no C7508 is printed.
#[inline(always)]
pub fn setmaxnreg_inc<const N: u32>() {
    unsafe { asm!("setmaxnreg.inc.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}

/// `setmaxnreg.dec.sync.aligned.u32 N` (sm_90a): lowers this warpgroup's
/// register budget to `N` (a producer warpgroup that only issues copies).
/// Same pitfall as [`setmaxnreg_inc`].
#[inline(always)]
pub fn setmaxnreg_dec<const N: u32>() {
    unsafe { asm!("setmaxnreg.dec.sync.aligned.u32 {n};", n = const N, options(nostack)) }
}

/// `elect.sync` (sm_90): true in exactly one lane of the (fully active)
/// warp — the lane that issues a TMA copy or an mbarrier expect-tx for the
/// whole warp. Warp-synchronous: call it with all 32 lanes.
#[inline(always)]
pub fn elect_one() -> bool {
    let r: u32;
    unsafe {
        asm!("{{ .reg .pred p; elect.sync _|p, 0xffffffff; selp.u32 {r}, 1, 0, p; }}",
             r = out(reg32) r, options(nostack));
    }
    r != 0
}
