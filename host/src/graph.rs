//! CUDA-graph replay across steps: which `plan` changes keep a captured
//! graph valid, and how to ask.
//!
//! A graph records each launch as it was enqueued: its grid, its
//! by-value parameters and every address in them. Replaying it after a
//! new `plan` is right exactly when that plan would enqueue the same
//! launches; what varies from step to step must then be read by the
//! kernels from device memory that `plan` rewrites in place.
//!
//! **Graph mode** (`set_graph_bounds(Some(max_context))` on
//! [`crate::MsaStep`], [`crate::MsaIndexer`], [`crate::MsaAttention`]):
//! the grids and buffers are sized for sequences of up to `max_context`
//! keys, so contexts may grow step by step without changing a launch:
//!
//! - the indexer's score grid is the bound on its work items for the
//!   batch's rows (surplus CTAs return), the live count is in the op's
//!   device-side [`GraphHeader`]; its score stride (a by-value parameter
//!   of both kernels) is `ceil(max_context / 128)`, so the top-k kernel
//!   and its shared memory do not change either; the work list, the row
//!   positions and the scores keep their addresses;
//! - the attention's decode grid depends on the number of rows only; its
//!   row records are rewritten in place;
//! - `plan` refuses a sequence longer than `max_context` (an error naming
//!   `cache_lengths`).
//!
//! **The contract.** After each successful `plan`, `graph_key()` is a
//! [`GraphKey`]; a graph captured after a plan whose key was `k` may be
//! replayed after a later plan exactly while `capture_compatible(k)` holds
//! (the key is unchanged). In graph mode the key stays when only the
//! contexts change (sequences grow, the page tables' contents change);
//! it changes (a new capture is needed) when the number of sequences or
//! rows changes, a sequence gets more than one new token (another path),
//! the pools' layouts or the page tables' row stride (`max_pages`) change,
//! a buffer the op owns is reallocated, an override (`force_*`,
//! `set_decode_chunk`) or the bounds change, or a `plan` fails. Without
//! graph mode every change of a launch changes the key (in a decode loop,
//! typically whenever a sequence crosses a 128-token block boundary); a
//! prefill plan (block-major attention) always changes it. Besides, the
//! caller's buffers given to `run` (queries, pools, page tables, outputs)
//! are in the graph: they must stay where they were at capture, updated
//! in place.
//!
//! **Replays of a stale graph are never silently wrong.** In graph mode
//! every decode launch carries the epoch of the plan it was captured
//! under, and each op's device header the current plan's; `plan` moves the
//! epoch whenever the key changes (or it fails). A replayed launch that
//! finds another epoch sets the op's sticky fault word and writes no
//! result: the indexer's selections become `-1`, the attention's output
//! NaN (its `lse` non-finite). A stale launch touches no buffer an
//! incompatible plan may have freed: the header lives as long as the op,
//! the score kernels return before reading the work list, and the step
//! keeps its earlier `d_indices` buffers. `take_graph_fault()` reads the word
//! ([`crate::MsaStep::check_graph_replays`] reads and clears both ops' and
//! fails with [`crate::Error::StaleGraph`]). Outside graph mode only the
//! key tells.

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::CudaSlice;

use crate::abi::msa::{GraphHeader, GRAPH_FAULT_WORD};
use crate::error::{ensure, CudaContextExt, Result};
use crate::Gpu;

/// Identifies the launches of one op's plan: equal keys, same launches
/// (see the module docs). Opaque; compare with `==` or the ops'
/// `capture_compatible`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    op: u64,
    epoch: u64,
}

/// The op instances (a key of one op never equals another's).
static NEXT_OP: AtomicU64 = AtomicU64::new(1);

/// An op's graph bookkeeping: its key's epoch, the launch shape of its last
/// plan, and in graph mode the device header.
#[derive(Debug)]
pub(crate) struct GraphState<S> {
    op: u64,
    epoch: u64,
    /// The launch shape of the last successful plan (`None`: none, or the
    /// last plan failed).
    last: Option<S>,
    /// Graph mode: the bound on sequence lengths.
    max_context: Option<usize>,
    /// The device header `[epoch, n_items, fault, 0]`, allocated when graph
    /// mode is first set and kept while the op lives (graphs captured in
    /// graph mode read it, even after the op left the mode).
    header: Option<CudaSlice<u32>>,
}

impl<S: PartialEq> GraphState<S> {
    pub(crate) fn new() -> Self {
        GraphState {
            op: NEXT_OP.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
            last: None,
            max_context: None,
            header: None,
        }
    }

    /// Enters graph mode with `max_context` (allocating the header once),
    /// or leaves it (`None`); a bound outside `1 ..= 2^32 - 1` keys is an
    /// error naming `max_context`, for every op. Either way the next plan
    /// gets a new key.
    pub(crate) fn set_bounds(&mut self, gpu: &Gpu, max_context: Option<usize>) -> Result<()> {
        if let Some(m) = max_context {
            ensure(
                m > 0 && m <= u32::MAX as usize,
                "max_context",
                || "1 ..= 2^32 - 1 keys".into(),
                || m.to_string(),
            )?;
        }
        if max_context.is_some() && self.header.is_none() {
            self.header = Some(gpu.zeros(4)?);
        }
        self.max_context = max_context;
        self.last = None;
        self.invalidate(gpu)
    }

    /// The graph-mode bound on sequence lengths.
    pub(crate) fn max_context(&self) -> Option<usize> {
        self.max_context
    }

    /// The device header the launches carry (graph mode only).
    pub(crate) fn header(&self) -> Option<&CudaSlice<u32>> {
        self.max_context.and(self.header.as_ref())
    }

    /// The epoch the launches of the current plan carry (as the kernels
    /// see it).
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch as u32
    }

    /// Records a successful plan of launch shape `shape` (`moved`: a
    /// buffer the launches use was reallocated) and, in graph mode,
    /// uploads the header: the epoch (moved unless the launches are the
    /// same as the last plan's) and `n_items`.
    pub(crate) fn planned(&mut self, gpu: &Gpu, shape: S, moved: bool, n_items: u32) -> Result<()> {
        self.record(shape, moved);
        self.upload(gpu, Some(n_items))
    }

    /// The host half of [`GraphState::planned`]: moves the epoch unless
    /// `shape` is the last plan's and nothing `moved`.
    fn record(&mut self, shape: S, moved: bool) {
        if moved || self.last.as_ref() != Some(&shape) {
            self.epoch += 1;
        }
        self.last = Some(shape);
    }

    /// Whether the last successful plan had launch shape `shape`.
    pub(crate) fn is_last(&self, shape: &S) -> bool {
        self.last.as_ref() == Some(shape)
    }

    /// A failed plan (or a composite op's other half changed): the next
    /// key is new, and graph-mode launches of earlier plans are stale.
    pub(crate) fn invalidate(&mut self, gpu: &Gpu) -> Result<()> {
        self.epoch += 1;
        self.upload(gpu, None)
    }

    /// Writes the epoch (and `n_items`) into the header, in place.
    fn upload(&mut self, gpu: &Gpu, n_items: Option<u32>) -> Result<()> {
        let words = [self.epoch as u32, n_items.unwrap_or(0)];
        let n = if n_items.is_some() { 2 } else { 1 };
        if let Some(h) = &mut self.header {
            gpu.stream()
                .memcpy_htod(&words[..n], &mut h.slice_mut(..n))
                .during(|| "uploading the graph header".into())?;
        }
        Ok(())
    }

    /// Forgets the current plan's shape (it failed or was cleared).
    pub(crate) fn clear(&mut self) {
        self.last = None;
    }

    /// The current plan's key (`planned` is the op's plan, if any).
    pub(crate) fn key(&self, planned: bool) -> Option<GraphKey> {
        (planned && self.last.is_some()).then_some(GraphKey {
            op: self.op,
            epoch: self.epoch,
        })
    }

    /// Reads (and with `clear`, resets) the fault word: whether a stale
    /// graph launch ran since it was last cleared. Synchronises the stream.
    pub(crate) fn fault(&mut self, gpu: &Gpu, clear: bool) -> Result<bool> {
        let Some(h) = &mut self.header else {
            return Ok(false);
        };
        let words = gpu.download(&h.slice(GRAPH_FAULT_WORD..GRAPH_FAULT_WORD + 1))?;
        if clear && words[0] != 0 {
            gpu.stream()
                .memcpy_htod(
                    &[0u32],
                    &mut h.slice_mut(GRAPH_FAULT_WORD..GRAPH_FAULT_WORD + 1),
                )
                .during(|| "clearing the graph fault word".into())?;
        }
        Ok(words[0] != 0)
    }
}

const _: () = assert!(std::mem::size_of::<GraphHeader>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(g: &GraphState<(u32, u32)>) -> Option<GraphKey> {
        g.key(true)
    }

    /// The key stays while the launches do, and moves with a new shape, a
    /// moved buffer, a failure (cleared shape plus a new epoch) or new
    /// bounds; two ops never share a key.
    #[test]
    fn keys_follow_the_launches() {
        let mut g = GraphState::<(u32, u32)>::new();
        assert_eq!(key(&g), None);
        g.record((8, 1), false);
        let k = key(&g).unwrap();
        g.record((8, 1), false);
        assert_eq!(key(&g), Some(k), "same launches: same key");
        g.record((8, 1), true);
        let k2 = key(&g).unwrap();
        assert_ne!(k2, k, "a reallocated buffer");
        g.record((9, 1), false);
        let k3 = key(&g).unwrap();
        assert_ne!(k3, k2, "another shape");
        g.record((8, 1), false);
        assert_ne!(
            key(&g).unwrap(),
            k2,
            "back to an earlier shape is still new"
        );
        assert_ne!(key(&g).unwrap(), k, "back to an earlier shape is still new");
        let k4 = key(&g).unwrap();
        g.clear();
        g.epoch += 1; // `invalidate` without a device
        assert_eq!(key(&g), None, "no key after a failed plan");
        g.record((8, 1), false);
        assert_ne!(key(&g).unwrap(), k4, "a failed plan in between");
        let mut other = GraphState::<(u32, u32)>::new();
        other.epoch = g.epoch;
        other.record((8, 1), false);
        other.epoch = g.epoch;
        assert_ne!(key(&other), key(&g), "another op");
        assert!(g.key(false).is_none(), "no key without the op's plan");
    }
}
