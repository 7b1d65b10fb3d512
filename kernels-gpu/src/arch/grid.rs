//! Grid dependency control (programmatic dependent launch, sm_90).

use core::arch::asm;

/// `griddepcontrol.wait`: blocks until the grids this one depends on (the
/// previous kernel on the stream, when this one was launched with
/// programmatic dependent launch) have completed and their memory writes are
/// visible; returns at once otherwise. Every kernel of the crate calls
/// [`grid_prologue`] before touching global memory (host `launch.rs`).
#[inline(always)]
pub fn grid_dependency_wait() {
    unsafe { asm!("griddepcontrol.wait;", options(nostack)) };
}

/// `griddepcontrol.launch_dependents`: lets the next grid on the stream be
/// scheduled once every CTA of this one has issued it (or exited). It does
/// not make this grid's writes visible early: the dependent still waits with
/// [`grid_dependency_wait`].
#[inline(always)]
pub fn launch_dependents() {
    unsafe { asm!("griddepcontrol.launch_dependents;", options(nostack)) };
}

/// The first statement of every kernel: wait for the previous grid, then let
/// the next one be scheduled (see the two instructions above). Waiting before
/// anything else, early returns included, keeps "this grid has completed"
/// meaning "its predecessors have completed" for the grid after it.
#[inline(always)]
pub fn grid_prologue() {
    grid_dependency_wait();
    launch_dependents();
}
