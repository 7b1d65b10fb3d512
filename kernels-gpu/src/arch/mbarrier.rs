//! `mbarrier`: shared-memory transaction barriers (sm_80+, transaction
//! counts sm_90), the full/empty handshake of a TMA pipeline.
//!
//! A barrier is 8 bytes of shared memory (8-byte aligned), initialised once
//! by one thread with its arrival count, then used in phases: every phase
//! completes when `count` arrivals *and* every expected transaction byte
//! (`expect_tx`, counted down by the TMA engine as bytes land) are in.
//! Waiters poll the phase parity. Pitfalls:
//! - initialise before any other thread touches it, then `fence.mbarrier_init`
//!   (or a CTA barrier) so the async proxy sees the initialised state;
//! - the parity a waiter passes is that of the phase it waits *for* (phase
//!   0 first), flipped each time it wraps a ring of stages;
//! - `expect_tx` must be posted before (or in the same arrival as) the
//!   copies' completion, or the phase may complete early.

use core::arch::asm;

/// `mbarrier.init.shared::cta.b64 [bar], count`.
#[inline(always)]
pub unsafe fn mbarrier_init(bar: u32, count: u32) {
    asm!("mbarrier.init.shared::cta.b64 [{b}], {c};", b = in(reg32) bar, c = in(reg32) count,
         options(nostack));
}

/// `fence.mbarrier_init.release.cluster`: makes this thread's
/// `mbarrier.init`s visible to the async proxy and the cluster.
#[inline(always)]
pub fn fence_mbarrier_init() {
    unsafe { asm!("fence.mbarrier_init.release.cluster;", options(nostack)) }
}

/// `mbarrier.arrive.shared::cta.b64 _, [bar]`: one arrival.
#[inline(always)]
pub unsafe fn mbarrier_arrive(bar: u32) {
    asm!("mbarrier.arrive.shared::cta.b64 _, [{b}];", b = in(reg32) bar, options(nostack));
}

/// `mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], bytes`: one
/// arrival that also announces `bytes` of transactions for this phase (the
/// producer, before or as it issues the TMA copies into the stage).
#[inline(always)]
pub unsafe fn mbarrier_arrive_expect_tx(bar: u32, bytes: u32) {
    asm!("mbarrier.arrive.expect_tx.shared::cta.b64 _, [{b}], {n};", b = in(reg32) bar,
         n = in(reg32) bytes, options(nostack));
}

/// Waits until the phase of parity `parity` of `bar` has completed
/// (`mbarrier.try_wait.parity` in a loop; the hardware suspends the thread
/// for a while inside each try). The loop's label is scoped by the braces,
/// so the wrapper can be inlined any number of times (rustc's
/// `named_asm_labels` lint guards against duplicate labels in one function,
/// which PTX's block scoping rules out here).
#[inline(always)]
#[allow(named_asm_labels)]
pub unsafe fn mbarrier_wait(bar: u32, parity: u32) {
    asm!("{{ .reg .pred p;",
         "MBAR_WAIT: mbarrier.try_wait.parity.shared::cta.b64 p, [{b}], {ph};",
         "@!p bra MBAR_WAIT; }}",
         b = in(reg32) bar, ph = in(reg32) parity, options(nostack));
}
