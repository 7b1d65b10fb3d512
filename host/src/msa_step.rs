//! The step a serving engine runs for MSA layers: the MSA indexer picks each
//! token's top-k blocks, then the block-sparse attention reads them (decode
//! every token; prefill, chunked prefill and speculative rows work the same).
//! Both run on the same stream with no host synchronisation between them, and
//! `run` allocates nothing, so a step can be captured in a CUDA graph and
//! replayed while its plan holds.

use cudarc::driver::CudaSlice;
use half::bf16;

use crate::batch::{PageTable, PagedLayout, RaggedBatch};
use crate::error::{ensure, Result};
use crate::msa_attention::{MsaAttention, MsaAttentionConfig};
use crate::msa_indexer::{MsaIndexer, MsaIndexerConfig};
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
}

/// The device inputs of one step.
pub struct StepInputs<'a> {
    /// Index queries `[num_rows, n_kv_heads, 128]`.
    pub q_index: &'a CudaSlice<bf16>,
    /// The index-K pool.
    pub k_index: &'a CudaSlice<bf16>,
    /// The index-K pool's page table `[batch, max_pages]`.
    pub index_lookup: &'a CudaSlice<u32>,
    /// Attention queries `[num_rows, n_heads, 128]`.
    pub q: &'a CudaSlice<bf16>,
    /// The main K/V pool.
    pub kv_cache: &'a CudaSlice<bf16>,
    /// The main pool's page table `[batch, max_pages]`.
    pub kv_lookup: &'a CudaSlice<u32>,
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
        )?;
        Ok(MsaStep {
            indexer: MsaIndexer::new(gpu, idx)?,
            attention: MsaAttention::new(gpu, att, max_rows)?,
            d_indices: gpu.zeros(1)?,
            gpu: gpu.clone(),
        })
    }

    /// Plans both ops for a ragged batch (may allocate `d_indices` when the
    /// number of rows changes; `run` never allocates).
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        index_pages: &PageTable,
        index_layout: &PagedLayout,
        kv_pages: &PageTable,
        kv_layout: &PagedLayout,
        layer: usize,
    ) -> Result<()> {
        ensure(
            batch.num_rows() > 0,
            "input_row_offsets",
            || "at least one new token".into(),
            || "an empty batch".into(),
        )?;
        self.attention
            .plan(batch, kv_pages, kv_layout, layer)
            .map_err(|e| e.rename_args(KV_NAMES))?;
        self.indexer
            .plan(batch, index_pages, index_layout, layer)
            .map_err(|e| e.rename_args(INDEX_NAMES))?;
        let c = self.attention.config();
        let len = c.n_kv_heads * batch.num_rows() * c.topk;
        if self.d_indices.len() != len {
            self.d_indices = self.gpu.zeros(len)?;
        }
        Ok(())
    }

    /// Indexer, then attention, on the stream; writes `out` (and `lse`).
    pub fn run(
        &mut self,
        inp: &StepInputs,
        out: &mut CudaSlice<bf16>,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        self.indexer
            .run(
                inp.q_index,
                inp.k_index,
                inp.index_lookup,
                &mut self.d_indices,
            )
            .map_err(|e| e.rename_args(INDEX_NAMES))?;
        self.attention
            .run(
                inp.q,
                inp.kv_cache,
                inp.kv_lookup,
                &self.d_indices,
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
