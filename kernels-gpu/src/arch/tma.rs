//! The tensor memory accelerator (TMA, sm_90): bulk tensor copies
//! `cp.async.bulk.tensor` between global memory and shared memory, described
//! by a `CUtensorMap` that the host encodes (`cuTensorMapEncodeTiled`).
//!
//! Pitfalls (checked with rustc's NVPTX backend for sm_90a, 2026-12-02;
//! `shared/TOOLCHAIN.md`):
//! - the tensor map (128 bytes, 64-byte aligned) cannot be a by-value
//!   kernel parameter here: `#[repr(align(64))]` parameter structs make
//!   rustc panic, and taking the address of a parameter copies it to local
//!   memory, which TMA cannot read. Keep tensor maps in global memory (a
//!   64-byte-aligned device buffer the host fills) and pass their address;
//!   a map written by the device needs `fence.proxy.tensormap` first.
//! - completion is signalled on an mbarrier (`complete_tx::bytes`): the
//!   consumer waits on it ([`super::mbarrier_wait`]) after the producer
//!   posted the byte count ([`super::mbarrier_arrive_expect_tx`]).
//! - the destination must be aligned to the swizzle span (1024 bytes for
//!   128-byte swizzle).

use core::arch::asm;

/// `cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes`:
/// copies the box at coordinates `(c0, c1)` (innermost first, in elements)
/// of the tensor `tmap` (a global address) into shared memory at `dst`,
/// counting its bytes down on `bar`. Issued by one thread.
#[inline(always)]
pub unsafe fn tma_load_2d(dst: u32, tmap: *const u8, bar: u32, c0: i32, c1: i32) {
    asm!("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [{d}], [{m}, {{{x}, {y}}}], [{b}];",
         d = in(reg32) dst, m = in(reg64) tmap, x = in(reg32) c0, y = in(reg32) c1,
         b = in(reg32) bar, options(nostack));
}

/// `cp.async.bulk.tensor.3d...`: as [`tma_load_2d`] with three coordinates
/// (e.g. (dim, head, token) of a K/V page).
#[inline(always)]
pub unsafe fn tma_load_3d(dst: u32, tmap: *const u8, bar: u32, c: [i32; 3]) {
    asm!("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [{d}], [{m}, {{{x}, {y}, {z}}}], [{b}];",
         d = in(reg32) dst, m = in(reg64) tmap, x = in(reg32) c[0], y = in(reg32) c[1],
         z = in(reg32) c[2], b = in(reg32) bar, options(nostack));
}

/// `cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes`:
/// copies `bytes` contiguous bytes from `src` to shared `dst`, counting
/// them down on `bar` (no tensor map). `src`, `dst` and `bytes` must be
/// multiples of 16. Issued by one thread.
#[inline(always)]
pub unsafe fn bulk_load(dst: u32, src: *const u8, bytes: u32, bar: u32) {
    asm!("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [{d}], [{s}], {n}, [{b}];",
         d = in(reg32) dst, s = in(reg64) src, n = in(reg32) bytes, b = in(reg32) bar,
         options(nostack));
}

/// `prefetch.tensormap [tmap]`: brings a tensor map into the cache ahead of
/// its first use.
#[inline(always)]
pub unsafe fn tma_prefetch_descriptor(tmap: *const u8) {
    asm!("prefetch.tensormap [{m}];", m = in(reg64) tmap, options(nostack));
}
