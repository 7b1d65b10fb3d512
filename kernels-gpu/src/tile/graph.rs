//! Graph mode: the device-side [`GraphHeader`] an op's `plan` rewrites in
//! place, read by launches that a CUDA graph may replay after later plans.
//! A launch carries the epoch of the plan it was enqueued under; a header
//! with another epoch means the op was re-planned incompatibly since (or
//! its plan failed): the kernel sets the sticky `fault` word and writes no
//! result (see the callers).

use sparse_attn_abi::msa::GraphHeader;
use sparse_attn_abi::DPtrMut;

use crate::arch::*;

/// The header's epoch word (coherent load: other CTAs of the grid may
/// write the fault word beside it). Null header: `mine` (no guard).
#[inline(always)]
pub unsafe fn header_epoch(h: DPtrMut<GraphHeader>, mine: u32) -> u32 {
    if h.is_null() {
        mine
    } else {
        ld_global(h.ptr() as *const u32)
    }
}

/// The header's live item count (coherent load, as [`header_epoch`]).
#[inline(always)]
pub unsafe fn header_items(h: DPtrMut<GraphHeader>) -> u32 {
    ld_global((h.ptr() as *const u32).add(1))
}

/// Sets the header's sticky fault word (any thread may; all write 1).
#[inline(always)]
pub unsafe fn set_fault(h: DPtrMut<GraphHeader>) {
    st_global((h.ptr() as *mut u32).add(sparse_attn_abi::msa::GRAPH_FAULT_WORD), 1u32);
}

/// Whether this launch is stale: a header whose epoch is not `mine`.
/// Sets the fault word (thread 0 of the CTA) when it is.
#[inline(always)]
pub unsafe fn stale(h: DPtrMut<GraphHeader>, mine: u32) -> bool {
    let bad = header_epoch(h, mine) != mine;
    if bad && thread_idx_x() == 0 {
        set_fault(h);
    }
    bad
}
