//! `cp.async`: asynchronous 16-byte global → shared copies (sm_80+).

use core::arch::asm;

/// `cp.async.cg.shared.global [dst], [src], 16`: a 16-byte global→shared copy
/// that bypasses L1 and completes asynchronously (see [`cp_async_wait`]).
#[inline(always)]
pub unsafe fn cp_async_16(dst: u32, src: *const u8) {
    asm!("cp.async.cg.shared.global [{d}], [{s}], 16;", d = in(reg32) dst, s = in(reg64) src,
         options(nostack));
}

/// `cp.async.commit_group`: close the group of copies issued since the last commit.
#[inline(always)]
pub fn cp_async_commit() {
    unsafe { asm!("cp.async.commit_group;", options(nostack)) };
}

/// `cp.async.wait_group N`: wait until at most `N` committed groups are pending.
#[inline(always)]
pub fn cp_async_wait<const N: u32>() {
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) };
}
