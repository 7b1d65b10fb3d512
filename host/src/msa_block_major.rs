//! MSA block-sparse prefill, KV-block-major (kernels:
//! `kernels-gpu/src/msa_block_major.rs`). [`crate::MsaAttention`] runs it for
//! batches with more than one new token in some sequence (prefill, chunked
//! prefill, speculative rows); the semantics are the op's
//! (`shared/spec/msa-attention.md`).
//!
//! `plan` (host, once per batch shape) computes the plan *keys* (KV head,
//! window of `BM_WINDOW` rows, sequence, block) from lengths alone and
//! uploads them; `run` only launches, and the part of the plan that depends on
//! the selections (`d_indices`, produced on the device by the indexer) is
//! built on the device: count → scan → scatter → run → combine. No buffer is
//! read back and nothing waits for the host, so a prefill step can be captured
//! in a CUDA graph. Buffers are sized from bounds the host knows: `rows *
//! topk * n_kv_heads` edges, and at most `edges / item_edges + keys` work
//! items (the run's grid; CTAs past the device-side item count return).
//!
//! Workspace (allocated by `new` for `max_rows`, reused by every call):
//! partial outputs bf16 `[rows, topk, n_heads, 128]` (256 B per (row, head,
//! slot): 8.6 GB for a 32K-row M3 prefill) and f32 (max, sum) pairs. bf16, like
//! upstream, halves the dominant memory traffic of this design (each partial
//! is written once and read once); the output is bf16 anyway and the tests
//! hold it to the f64 reference.

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig};
use half::bf16;

use crate::abi::msa::*;
use crate::batch::RaggedBatch;
use crate::error::{ensure, CudaContextExt, Result};
use crate::Gpu;

/// Plan keys of a ragged batch (host only, from lengths).
///
/// Rows are cut into windows of `window` rows (default `BM_WINDOW`); each
/// (window, sequence) pair
/// gets a range of keys, one per block its rows can see causally (up to the
/// block of its last row in the window). Returns `(row_key_base [rows],
/// key_info [n_keys * 4] = (sequence, block, seqlen_k, 0), n_keys)`.
pub fn plan_keys(batch: &RaggedBatch, window: usize) -> (Vec<u32>, Vec<u32>, usize) {
    let rows = batch.num_rows();
    let mut base = vec![0u32; rows];
    let mut info = Vec::new();
    let w = window.max(1);
    let off = batch.input_row_offsets;
    for b in 0..batch.batch() {
        let (r0, r1) = (off[b] as usize, off[b + 1] as usize);
        let sk = batch.seqlen_k(b);
        let cache = batch.cache_lengths[b] as u64;
        let mut r = r0;
        while r < r1 {
            let end = ((r / w + 1) * w).min(r1);
            let last_pos = cache + (end - 1 - r0) as u64;
            let nblocks = sk
                .div_ceil(MSA_BLOCK as u64)
                .min(last_pos / MSA_BLOCK as u64 + 1);
            let key0 = (info.len() / BM_KEY_WORDS) as u32;
            base[r..end].fill(key0);
            for blk in 0..nblocks as u32 {
                info.extend([b as u32, blk, sk as u32, 0]);
            }
            r = end;
        }
    }
    let n = info.len() / BM_KEY_WORDS;
    (base, info, n)
}

/// Most edges per work item for a GQA group: `BM_ITEM_TILES` m-tiles of
/// `16 / group` rows.
pub fn item_edges(group: usize) -> usize {
    BM_ITEM_TILES as usize * (16 / group.clamp(1, 16))
}

pub(crate) struct MsaBlockMajor {
    k_count: CudaFunction,
    k_scan: CudaFunction,
    k_scatter: CudaFunction,
    k_run: CudaFunction,
    k_combine: CudaFunction,
    /// `[rows, topk, n_heads, 128]` bf16 (unnormalised) and `[rows, topk,
    /// n_heads, 2]` f32 (block row max, row sum).
    part_o: CudaSlice<bf16>,
    part_ml: CudaSlice<f32>,
    /// `[n_kv_heads * rows * topk, 2]`: packed `(row << 8) | slot`, the
    /// row's `q_pos` (the CSR lists).
    edges: CudaSlice<u32>,
    /// `[n_kv_heads * rows * topk]`: each attended edge's place in its key's
    /// list (from the count's atomics).
    ranks: CudaSlice<u32>,
    /// Per key of the plan: edge counts (zero between calls), CSR offsets.
    counts: CudaSlice<u32>,
    cursor: CudaSlice<u32>,
    key_info: CudaSlice<u32>,
    /// `[max_items, 4]` and the device-side item count.
    items: CudaSlice<u32>,
    n_items: CudaSlice<u32>,
    n_keys: usize,
    max_items: usize,
}

/// What `run` needs besides the buffers: the planned shapes.
pub(crate) struct BlockMajorArgs {
    pub rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub topk: u32,
    pub max_pages: u32,
    pub num_pages: u32,
    pub page_stride: u64,
    pub k_off: u64,
    pub v_off: u64,
    pub scale: f32,
}

impl MsaBlockMajor {
    pub(crate) fn new(
        gpu: &Gpu,
        n_heads: usize,
        n_kv_heads: usize,
        topk: usize,
        max_rows: usize,
    ) -> Result<Self> {
        let edges = n_kv_heads * max_rows * topk;
        let parts = max_rows * n_heads * topk;
        ensure(
            max_rows < 1 << 24 && edges < 1 << 31 && parts < 1 << 31,
            "max_rows",
            || {
                "fewer than 2^24 rows, n_kv_heads * rows * topk < 2^31 and n_heads * rows * \
                 topk < 2^31 (prefill plan and partial indices are 32-bit)"
                    .into()
            },
            || max_rows.to_string(),
        )?;
        Ok(MsaBlockMajor {
            k_count: gpu.kernel("msa_prefill_count", 0)?,
            k_scan: gpu.kernel("msa_prefill_scan", BM_SCAN_THREADS * 8)?,
            k_scatter: gpu.kernel("msa_prefill_scatter", 0)?,
            k_run: gpu.kernel("msa_prefill_run_wg", BM_SMEM)?,
            k_combine: gpu.kernel("msa_prefill_combine", 0)?,
            part_o: gpu.zeros(parts * MSA_HEAD_DIM as usize)?,
            part_ml: gpu.zeros(2 * parts)?,
            edges: gpu.zeros(2 * edges.max(1))?,
            ranks: gpu.zeros(edges.max(1))?,
            counts: gpu.zeros(1)?,
            cursor: gpu.zeros(1)?,
            key_info: gpu.zeros(1)?,
            items: gpu.zeros(BM_ITEM_WORDS)?,
            n_items: gpu.zeros(1)?,
            n_keys: 0,
            max_items: 0,
        })
    }

    /// Uploads the keys of a planned batch and sizes the key and item
    /// buffers (grows them when this batch needs more; zeroes the counts).
    #[allow(clippy::too_many_arguments)] // internal: the op's planned shapes, one by one
    pub(crate) fn plan(
        &mut self,
        gpu: &Gpu,
        key_info: &[u32],
        n_keys: usize,
        rows: usize,
        n_kv_heads: usize,
        topk: usize,
        group: usize,
    ) -> Result<()> {
        let nk = n_kv_heads * n_keys;
        ensure(
            nk < 1 << 31,
            "input_row_offsets",
            || "fewer than 2^31 prefill plan keys".into(),
            || nk.to_string(),
        )?;
        let max_items = (n_kv_heads * rows * topk).div_ceil(item_edges(group)) + nk;
        if self.counts.len() < nk.max(1) {
            self.counts = gpu.zeros(nk.max(1))?;
            self.cursor = gpu.zeros(nk.max(1))?;
        } else {
            gpu.stream()
                .memset_zeros(&mut self.counts)
                .during(|| "zeroing the prefill plan counts".into())?;
        }
        if self.key_info.len() < key_info.len().max(1) {
            self.key_info = gpu.zeros(key_info.len().max(1))?;
        }
        if !key_info.is_empty() {
            gpu.stream()
                .memcpy_htod(key_info, &mut self.key_info.slice_mut(..key_info.len()))
                .during(|| "uploading the prefill plan keys".into())?;
        }
        if self.items.len() < BM_ITEM_WORDS * max_items.max(1) {
            self.items = gpu.zeros(BM_ITEM_WORDS * max_items.max(1))?;
        }
        self.n_keys = n_keys;
        self.max_items = max_items;
        Ok(())
    }

    /// The device-side plan alone: count → scan → scatter (the CSR, the work
    /// items and their count, all on the device).
    pub(crate) fn device_plan(
        &self,
        gpu: &Gpu,
        a: &BlockMajorArgs,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
        row_info: &CudaSlice<u32>,
    ) -> Result<()> {
        let n_keys = self.n_keys as u32;
        let nk = a.n_kv_heads * n_keys;
        let n_edges = a.n_kv_heads * a.rows * a.topk;
        if a.rows == 0 || nk == 0 {
            return Ok(());
        }
        let edge_cfg = LaunchConfig {
            grid_dim: (n_edges.div_ceil(BM_EDGE_THREADS), 1, 1),
            block_dim: (BM_EDGE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let group = (a.n_heads / a.n_kv_heads) as usize;
        let item_edges = item_edges(group) as u32;
        let mut l = gpu.launch(&self.k_count, "the prefill plan count");
        l.arg(d_indices)
            .arg(row_info)
            .arg(&self.counts)
            .arg(&self.ranks);
        l.arg(&a.rows)
            .arg(&a.n_kv_heads)
            .arg(&a.topk)
            .arg(&n_keys)
            .arg(&a.max_pages);
        // SAFETY: arguments match the kernel; `counts` holds `nk` keys and
        // every key the kernel forms is below it (the plan's key ranges cover
        // each row's causal blocks).
        unsafe { l.run(edge_cfg) }?;

        let mut l = gpu.launch(&self.k_scan, "the prefill plan scan");
        l.arg(&self.counts)
            .arg(&self.cursor)
            .arg(&self.items)
            .arg(&self.n_items)
            .arg(&self.key_info)
            .arg(lookup);
        l.arg(&nk)
            .arg(&n_keys)
            .arg(&a.max_pages)
            .arg(&a.num_pages)
            .arg(&item_edges);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BM_SCAN_THREADS, 1, 1),
            shared_mem_bytes: BM_SCAN_THREADS * 8,
        };
        // SAFETY: `items` holds `max_items >= edges / item_edges + nk` items;
        // page ids are clamped to the pool.
        unsafe { l.run(cfg) }?;

        let mut l = gpu.launch(&self.k_scatter, "the prefill plan scatter");
        l.arg(d_indices)
            .arg(row_info)
            .arg(&self.cursor)
            .arg(&self.ranks)
            .arg(&self.edges);
        l.arg(&a.rows)
            .arg(&a.n_kv_heads)
            .arg(&a.topk)
            .arg(&n_keys)
            .arg(&a.max_pages);
        // SAFETY: as the count; `edges` holds every edge.
        unsafe { l.run(edge_cfg) }?;

        Ok(())
    }

    /// count → scan → scatter → run → combine on the stream.
    #[allow(clippy::too_many_arguments)] // internal: the op's buffers, as `MsaAttention::run` takes them
    pub(crate) fn run(
        &self,
        gpu: &Gpu,
        a: &BlockMajorArgs,
        q: &CudaSlice<bf16>,
        kv_cache: &CudaSlice<bf16>,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
        row_info: &CudaSlice<u32>,
        out: &mut CudaSlice<bf16>,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        if a.rows == 0 || self.n_keys == 0 || a.n_kv_heads == 0 {
            return Ok(());
        }
        self.device_plan(gpu, a, lookup, d_indices, row_info)?;
        let n_keys = self.n_keys as u32;
        let mut l = gpu.launch(&self.k_run, "the prefill run");
        l.arg(q).arg(kv_cache).arg(&self.key_info);
        l.arg(&self.items).arg(&self.n_items).arg(&self.edges);
        l.arg(&self.part_o).arg(&self.part_ml);
        l.arg(&a.n_heads)
            .arg(&a.n_kv_heads)
            .arg(&n_keys)
            .arg(&a.num_pages);
        l.arg(&a.page_stride)
            .arg(&a.k_off)
            .arg(&a.v_off)
            .arg(&a.topk)
            .arg(&a.scale);
        let cfg = LaunchConfig {
            grid_dim: (self.max_items as u32, 1, 1),
            block_dim: (BM_THREADS, 1, 1),
            shared_mem_bytes: BM_SMEM,
        };
        // SAFETY: arguments match; page ids are clamped on the device; the
        // partial buffers hold `rows * n_heads * topk` entries.
        unsafe { l.run(cfg) }?;

        let mut l = gpu.launch(&self.k_combine, "the prefill combine");
        l.arg(&self.part_o)
            .arg(&self.part_ml)
            .arg(d_indices)
            .arg(row_info)
            .arg(out)
            .arg(&lse);
        l.arg(&a.rows)
            .arg(&a.n_heads)
            .arg(&a.n_kv_heads)
            .arg(&a.topk)
            .arg(&a.max_pages);
        let cfg = LaunchConfig {
            grid_dim: ((a.rows * a.n_heads).div_ceil(BM_COMBINE_WARPS), 1, 1),
            block_dim: (BM_COMBINE_WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; `out` and `lse` were checked against the plan.
        unsafe { l.run(cfg) }?;
        Ok(())
    }
}
