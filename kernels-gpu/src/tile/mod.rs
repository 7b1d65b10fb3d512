//! The tile layer: building blocks that more than one kernel family uses,
//! written once over `arch/`.
//!
//! - [`swizzle`]: the 128-byte swizzled tile layouts and their `wgmma`
//!   descriptors (a layout and its descriptor live together);
//! - [`frag`]: `mma` A fragments straight from global memory;
//! - [`mask`]: key masks by position (causal, sliding window, sequence
//!   end) as one visible range per row, applied to accumulator fragments;
//! - [`paged`]: the paged block loader (page ids, a block of one head into a
//!   swizzled tile, the unwritten tail zeroed);
//! - [`pipeline`]: the ring of shared-memory stages (`cp.async` today; the
//!   TMA + full/empty mbarrier ring of the dense prefill takes the same
//!   shape: `issue` a tile into a stage, `body` consumes it);
//! - [`softmax`]: the online softmax and the log-sum-exp merge (every
//!   partial merge of the crate, in a fixed order);
//! - [`topk`]: top-k selectors behind a key-source interface.

pub mod frag;
pub mod mask;
pub mod paged;
pub mod pipeline;
pub mod softmax;
pub mod swizzle;
pub mod topk;
