//! The step a serving engine runs for MSA layers: the MSA indexer picks each
//! token's top-k blocks, then the block-sparse attention reads them (decode
//! every token; prefill, chunked prefill and speculative rows work the same).
//! Both run on the same stream with no host synchronisation between them, and
//! `run` allocates nothing, so a step can be captured in a CUDA graph and
//! replayed while its plan holds.
//!
//! One plan per step serves every layer: `plan` takes the batch and the
//! pools' shapes, `run` the layer (and that layer's buffers). A plan holds
//! until the next `plan` (the device page tables must keep holding what it
//! was given).
//!
//! Graph replay across decode steps ([`crate::graph`] has the contract):
//! after [`MsaStep::set_graph_bounds`]`(Some(max_context))` a decode step
//! captured once can be replayed step after step while the sequences grow
//! (re-plan before each replay, outside the graph), as long as
//! [`MsaStep::capture_compatible`] holds for the key taken at capture; a
//! replay after an incompatible plan writes NaN to `out` on the device and
//! [`MsaStep::check_graph_replays`] reports it. In a serving loop:
//!
//! ```no_run
//! # fn f(step: &mut sparse_attn::MsaStep, b: &sparse_attn::RaggedBatch, ip: &sparse_attn::PageTable,
//! #      il: &sparse_attn::PagedLayout, kp: &sparse_attn::PageTable, kl: &sparse_attn::PagedLayout,
//! #      capture: &mut dyn FnMut(&mut sparse_attn::MsaStep), replay: &dyn Fn())
//! #      -> sparse_attn::Result<()> {
//! step.set_graph_bounds(Some(32 * 1024))?; // once: contexts up to 32K keys
//! let mut key = None;
//! for _ in 0..100 {
//!     step.plan(b, ip, il, kp, kl)?; // this step's batch (outside the graph)
//!     match key {
//!         Some(k) if step.capture_compatible(k) => replay(),
//!         _ => {
//!             capture(step); // step.run(..) for every layer, in a capture
//!             key = step.graph_key();
//!             replay();
//!         }
//!     }
//! }
//! step.check_graph_replays()?; // now and then: was a stale graph replayed?
//! # Ok(()) }
//! ```
//!
//! Workspace: [`MsaStep::new_in`] gives the indexer and the attention one
//! [`Workspace`] (the indexer's scores are dead once its top-k ran, so the
//! attention's partials reuse the bytes), of
//! [`MsaStep::workspace_size`]; the same workspace can serve every layer's
//! step and other ops on the stream. The selections between the two
//! (`d_indices`, `[n_kv_heads, num_rows, topk]` i32) stay in a buffer of
//! the step's own, sized by `plan`.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::batch::{PageTable, PagedLayout, RaggedBatch};
use crate::context::DeviceProps;
use crate::error::{ensure, Error, Result};
use crate::graph::{GraphKey, GraphState};
use crate::msa_attention::{MsaAttention, MsaAttentionConfig};
use crate::msa_indexer::{MsaIndexer, MsaIndexerConfig};
use crate::workspace::Workspace;
use crate::Gpu;

/// The indexer's argument names as [`StepInputs`] and [`MsaStep::plan`]
/// call them.
const INDEX_NAMES: &[(&str, &str)] = &[
    ("q", "q_index"),
    ("k_cache", "k_index"),
    ("lookup", "index_lookup"),
    ("page_size", "index page_size"),
    ("num_pages", "index num_pages"),
    ("layer", "layer"),
];
/// The attention's argument names as [`StepInputs`] and [`MsaStep::plan`]
/// call them.
const KV_NAMES: &[(&str, &str)] = &[
    ("lookup", "kv_lookup"),
    ("page_size", "kv page_size"),
    ("num_pages", "kv num_pages"),
];

/// Indexer + attention (decode or prefill, as planned) with their workspaces
/// and the `d_indices`
/// buffer between them.
pub struct MsaStep {
    /// The step's indexer (its overrides are reachable for tests and benchmarks).
    pub indexer: MsaIndexer,
    /// The step's attention.
    pub attention: MsaAttention,
    /// `[n_kv_heads, num_rows, topk]` block ids of the planned batch.
    d_indices: CudaSlice<i32>,
    gpu: Gpu,
    /// The step's key: the two ops' keys and the `d_indices` buffer.
    graph: GraphState<(GraphKey, GraphKey)>,
    /// Graph mode: earlier `d_indices` buffers, kept while the step lives
    /// (a stale graph replayed anyway still writes and reads them).
    retired: Vec<CudaSlice<i32>>,
}

/// The device inputs of one step: slices, views or
/// [`crate::RawBuffer`]s (a `&CudaSlice` coerces).
#[derive(Clone, Copy)]
pub struct StepInputs<'a> {
    /// Index queries `[num_rows, n_kv_heads, 128]`.
    pub q_index: &'a dyn DevicePtr<bf16>,
    /// The index-K pool.
    pub k_index: &'a dyn DevicePtr<bf16>,
    /// The index-K pool's page table `[batch, max_pages]`.
    pub index_lookup: &'a dyn DevicePtr<u32>,
    /// Attention queries `[num_rows, n_heads, 128]`.
    pub q: &'a dyn DevicePtr<bf16>,
    /// The main K/V pool.
    pub kv_cache: &'a dyn DevicePtr<bf16>,
    /// The main pool's page table `[batch, max_pages]`.
    pub kv_lookup: &'a dyn DevicePtr<u32>,
}

impl MsaStep {
    /// `idx.num_index_heads` must equal `att.n_kv_heads` and the two `topk`
    /// must agree (each KV head reads the blocks its index head chose).
    pub fn new(
        gpu: &Gpu,
        idx: MsaIndexerConfig,
        att: MsaAttentionConfig,
        max_rows: usize,
    ) -> Result<Self> {
        Self::check_configs(&idx, &att)?;
        Ok(MsaStep {
            indexer: MsaIndexer::new(gpu, idx)?,
            attention: MsaAttention::new(gpu, att, max_rows)?,
            d_indices: gpu.zeros(1)?,
            gpu: gpu.clone(),
            graph: GraphState::new(),
            retired: Vec::new(),
        })
    }

    /// [`MsaStep::new`] with both ops over the caller's workspace (see the
    /// module docs), which must hold [`MsaStep::workspace_size`] for the
    /// bounds; `plan` fails (naming `workspace`) for a batch beyond them.
    pub fn new_in(
        gpu: &Gpu,
        idx: MsaIndexerConfig,
        att: MsaAttentionConfig,
        max_rows: usize,
        workspace: &Workspace,
    ) -> Result<Self> {
        Self::check_configs(&idx, &att)?;
        Ok(MsaStep {
            indexer: MsaIndexer::new_in(gpu, idx, workspace)?,
            attention: MsaAttention::new_in(gpu, att, max_rows, workspace)?,
            d_indices: gpu.zeros(1)?,
            gpu: gpu.clone(),
            graph: GraphState::new(),
            retired: Vec::new(),
        })
    }

    /// Bytes of workspace for steps of at most `max_rows` query rows whose
    /// sequences have at most `max_context` keys, on the device `props`
    /// describes: the larger of [`MsaIndexer::workspace_size`] and
    /// [`MsaAttention::workspace_size`] (the two ops run one after the
    /// other).
    pub fn workspace_size(
        props: &DeviceProps,
        idx: &MsaIndexerConfig,
        att: &MsaAttentionConfig,
        max_rows: usize,
        max_context: usize,
    ) -> usize {
        MsaIndexer::workspace_size(idx, max_rows, max_context)
            .max(MsaAttention::workspace_size(props, att, max_rows))
    }

    fn check_configs(idx: &MsaIndexerConfig, att: &MsaAttentionConfig) -> Result<()> {
        ensure(
            idx.num_index_heads == att.n_kv_heads,
            "num_index_heads",
            || format!("n_kv_heads = {}", att.n_kv_heads),
            || idx.num_index_heads.to_string(),
        )?;
        ensure(
            idx.topk == att.topk,
            "topk",
            || format!("attention topk = {}", att.topk),
            || idx.topk.to_string(),
        )
    }

    /// Graph mode for both ops (`Some(max_context)`: sequences of at most
    /// `max_context` keys; see the module docs and [`crate::graph`]);
    /// `None`: ordinary mode. Clears the plan. Graph mode changes no result:
    /// a step gives the same bits in either mode.
    pub fn set_graph_bounds(&mut self, max_context: Option<usize>) -> Result<()> {
        self.indexer.set_graph_bounds(max_context)?;
        self.attention.set_graph_bounds(max_context)?;
        self.graph.set_bounds(&self.gpu, None)
    }

    /// The graph-mode bound, if set.
    pub fn graph_bounds(&self) -> Option<usize> {
        self.indexer.graph_bounds()
    }

    /// The current plan's [`GraphKey`] (`None` without a plan): a graph
    /// captured while it was `k` may be replayed after later plans exactly
    /// while [`MsaStep::capture_compatible`]`(k)` holds. In graph mode
    /// growing contexts keep it; a change of the number of sequences or
    /// rows, of a layout or page-table stride, of the path (a sequence
    /// with several new tokens), or a failed plan change it (the list:
    /// [`crate::graph`]).
    pub fn graph_key(&self) -> Option<GraphKey> {
        // The ops' keys as the step's last plan left them (not after a
        // plan of one op alone).
        self.op_keys()
            .and_then(|keys| self.graph.key(self.graph.is_last(&keys)))
    }

    /// Both ops' graph keys, when both have a plan.
    fn op_keys(&self) -> Option<(GraphKey, GraphKey)> {
        self.indexer.graph_key().zip(self.attention.graph_key())
    }

    /// Makes both ops' earlier graph-mode launches stale.
    fn invalidate_ops(&mut self) -> Result<()> {
        self.indexer.invalidate_graphs()?;
        self.attention.invalidate_graphs()
    }

    /// Whether a graph captured when [`MsaStep::graph_key`] was `key` is
    /// still valid for the current plan.
    pub fn capture_compatible(&self, key: GraphKey) -> bool {
        self.graph_key() == Some(key)
    }

    /// Graph mode: fails with [`Error::StaleGraph`] if a replayed launch of
    /// either op found its plan stale since the last call (its output was
    /// NaN), and clears the flags. Waits for the stream (call it outside
    /// the hot loop, e.g. every few hundred steps or when an output is
    /// NaN).
    pub fn check_graph_replays(&mut self) -> Result<()> {
        let idx = self.indexer.take_graph_fault()?;
        let att = self.attention.take_graph_fault()?;
        match (idx, att) {
            (true, _) => Err(Error::StaleGraph { op: "msa_indexer" }),
            (_, true) => Err(Error::StaleGraph {
                op: "msa_attention",
            }),
            _ => Ok(()),
        }
    }

    /// Plans both ops for a ragged batch (may allocate `d_indices` when the
    /// number of rows changes; `run` never allocates). The layouts are the
    /// pools' shapes with all their layers: the plan serves every layer.
    /// The [`MsaStep::graph_key`] after it says whether a captured step
    /// may still be replayed.
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        index_pages: &PageTable,
        index_layout: &PagedLayout,
        kv_pages: &PageTable,
        kv_layout: &PagedLayout,
    ) -> Result<()> {
        let r = self.plan_inner(batch, index_pages, index_layout, kv_pages, kv_layout);
        match (r, self.op_keys()) {
            (Ok(moved), Some(keys)) => {
                let before = self.graph_key();
                self.graph.planned(&self.gpu, keys, moved, 0)?;
                if self.graph_key() != before {
                    // The step's launches changed: a captured step is stale
                    // as a whole, each op's half included.
                    self.invalidate_ops()?;
                    if let Some(keys) = self.op_keys() {
                        self.graph.planned(&self.gpu, keys, false, 0)?;
                    }
                }
                Ok(())
            }
            (r, _) => {
                self.graph.clear();
                self.graph.invalidate(&self.gpu)?;
                self.invalidate_ops()?;
                r.map(|_| ())
            }
        }
    }

    /// Plans both ops; whether `d_indices` moved.
    fn plan_inner(
        &mut self,
        batch: &RaggedBatch,
        index_pages: &PageTable,
        index_layout: &PagedLayout,
        kv_pages: &PageTable,
        kv_layout: &PagedLayout,
    ) -> Result<bool> {
        ensure(
            batch.num_rows() > 0,
            "input_row_offsets",
            || "at least one new token".into(),
            || "an empty batch".into(),
        )?;
        self.attention
            .plan(batch, kv_pages, kv_layout)
            .map_err(|e| e.rename_args(KV_NAMES))?;
        self.indexer
            .plan(batch, index_pages, index_layout)
            .map_err(|e| e.rename_args(INDEX_NAMES))?;
        let c = self.attention.config();
        let len = c.n_kv_heads * batch.num_rows() * c.topk;
        if self.d_indices.len() != len {
            let old = std::mem::replace(&mut self.d_indices, self.gpu.zeros(len)?);
            if self.graph_bounds().is_some() {
                self.retired.push(old);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Indexer, then attention, on the stream, on layer `layer` of both
    /// pools; writes `out` (and `lse`).
    pub fn run<O: DevicePtrMut<bf16> + ?Sized>(
        &mut self,
        inp: &StepInputs,
        layer: usize,
        out: &mut O,
        lse: Option<&mut dyn DevicePtrMut<f32>>,
    ) -> Result<()> {
        self.indexer
            .run(
                inp.q_index,
                inp.k_index,
                inp.index_lookup,
                layer,
                &mut self.d_indices,
            )
            .map_err(|e| e.rename_args(INDEX_NAMES))?;
        self.attention
            .run(
                inp.q,
                inp.kv_cache,
                inp.kv_lookup,
                &self.d_indices,
                layer,
                out,
                lse,
            )
            .map_err(|e| e.rename_args(KV_NAMES))
    }

    /// The block ids the last `run` selected, `[n_kv_heads, num_rows, topk]`.
    pub fn d_indices(&self) -> &CudaSlice<i32> {
        &self.d_indices
    }
}
