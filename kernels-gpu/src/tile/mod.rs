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
//! - [`topk`]: top-k selectors behind a key-source interface (a warp or a
//!   CTA per row);
//! - [`radix`]: the radix select of a row shared by a thread-block cluster
//!   (12-bit digits, histograms summed through distributed shared memory),
//!   over [`row_chunk`]'s key sets (a row's chunk kept in shared memory or
//!   re-read, keys gathered in shared memory);
//! - [`sort`]: a CTA's sort of up to 2048 keys, by buckets where they
//!   spread, else [`bitonic`]'s sort in registers;
//! - [`graph`]: graph mode's device-side header (live counts, the epoch
//!   guard against replays of a stale plan).

pub mod bitonic;
pub mod frag;
pub mod graph;
pub mod mask;
pub mod paged;
pub mod pipeline;
pub mod radix;
pub mod row_chunk;
pub mod softmax;
pub mod sort;
pub mod swizzle;
pub mod topk;
