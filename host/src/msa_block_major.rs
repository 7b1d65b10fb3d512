//! MSA block-sparse attention, KV-block-major (the prefill path) (kernels:
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
//! Workspace (scratch, in the attention's [`crate::Workspace`], laid out for
//! `max_rows`; [`workspace_bytes`]): partial outputs bf16 `[rows, topk,
//! n_heads, 128]` (256 B per (row, head, slot): 8.6 GB for a 32K-row M3
//! prefill), f32 (max, sum) pairs, and the CSR's edges and ranks. The plan
//! keys, the per-key counts (zero between runs: the scan re-zeroes them),
//! the offsets and the work items stay in the op's own buffers (they are
//! `O(keys)`, and the counts must survive other ops' runs). bf16, like
//! upstream, halves the dominant memory traffic of this design (each partial
//! is written once and read once); the output is bf16 anyway and the tests
//! hold it to the f64 reference.

use cudarc::driver::{CudaSlice, LaunchConfig};

use crate::abi::msa::*;
use crate::abi::{DPtr, DPtrMut, PagedKv};
use crate::batch::RaggedBatch;
use crate::error::{ensure, CudaContextExt, Result};
use crate::launch::{record_words, words_of, Bufs, Kernel};
use crate::workspace::{align_up, grow};
use crate::Gpu;

/// Plan keys of a ragged batch (host only, from lengths).
///
/// Rows are cut into windows of `window` rows (default `BM_WINDOW`); each
/// (window, sequence) pair gets a range of keys, one per block its rows can
/// see causally (up to the block of its last row in the window). Returns
/// `(row_key_base [rows], keys [n_keys], n_keys)`.
pub fn plan_keys(batch: &RaggedBatch, window: usize) -> (Vec<u32>, Vec<PlanKey>, usize) {
    let rows = batch.num_rows();
    let mut base = vec![0u32; rows];
    let mut keys = Vec::new();
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
            base[r..end].fill(keys.len() as u32);
            keys.extend((0..nblocks as u32).map(|block| PlanKey {
                seq: b as u32,
                block,
                seqlen_k: sk as u32,
                _pad: 0,
            }));
            r = end;
        }
    }
    let n = keys.len();
    (base, keys, n)
}

/// Most edges per work item for a GQA group: `BM_ITEM_TILES` m-tiles of
/// `16 / group` rows.
pub fn item_edges(group: usize) -> usize {
    BM_ITEM_TILES as usize * (16 / group.clamp(1, 16))
}

/// Byte offsets of the block-major scratch inside the workspace for
/// `max_rows` rows: partial outputs, (max, sum) pairs, CSR edges, edge
/// ranks; and the total.
pub(crate) fn scratch_layout(
    n_heads: usize,
    n_kv_heads: usize,
    topk: usize,
    max_rows: usize,
) -> ([usize; 4], usize) {
    let edges = n_kv_heads * max_rows * topk;
    let parts = max_rows * n_heads * topk;
    let sizes = [
        parts * MSA_HEAD_DIM as usize * 2,
        2 * parts * 4,
        words_of::<PlanEdge>(edges) * 4,
        edges * 4,
    ];
    let mut offs = [0; 4];
    let mut at = 0;
    for (o, s) in offs.iter_mut().zip(sizes) {
        *o = at;
        at += align_up(s);
    }
    (offs, at)
}

/// Bytes of workspace the block-major path needs for `max_rows` rows.
pub fn workspace_bytes(n_heads: usize, n_kv_heads: usize, topk: usize, max_rows: usize) -> usize {
    scratch_layout(n_heads, n_kv_heads, topk, max_rows).1
}

pub(crate) struct MsaBlockMajor {
    k_count: Kernel<BlockMajorEdgeParams>,
    k_scan: Kernel<BlockMajorScanParams>,
    k_scatter: Kernel<BlockMajorEdgeParams>,
    k_run: Kernel<BlockMajorRunParams>,
    k_combine: Kernel<BlockMajorCombineParams>,
    /// Offsets in the workspace ([`scratch_layout`]) of the partial outputs
    /// `[rows, topk, n_heads, 128]` bf16 (unnormalised), the `[rows, topk,
    /// n_heads, 2]` f32 (block row max, row sum), the `[n_kv_heads * rows *
    /// topk]` [`PlanEdge`]s (the CSR lists) and each attended edge's place
    /// in its key's list (`u32`, from the count's atomics).
    ws_off: [usize; 4],
    /// Per key of the plan: edge counts (zero between calls), CSR offsets.
    counts: CudaSlice<u32>,
    offsets: CudaSlice<u32>,
    /// [`PlanKey`]s as words.
    keys: CudaSlice<u32>,
    /// `[max_items]` [`BlockMajorItem`]s as words, and the device-side item count.
    items: CudaSlice<u32>,
    n_items: CudaSlice<u32>,
    n_keys: usize,
    max_items: usize,
}

/// What `run` needs besides the buffers: the planned shapes.
pub(crate) struct BlockMajorArgs {
    pub num_rows: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub topk: u32,
    pub cache: PagedKv,
    pub scale: f32,
}

/// The addresses of a run's buffers: the caller's, the attention's row
/// info, the workspace's base.
#[derive(Clone, Copy)]
pub(crate) struct BlockMajorPtrs {
    pub q: DPtr<u16>,
    pub kv: DPtr<u16>,
    pub lookup: DPtr<u32>,
    pub d_indices: DPtr<i32>,
    pub row_info: DPtr<RowInfo>,
    pub out: DPtrMut<u16>,
    pub lse: DPtrMut<f32>,
    pub ws: u64,
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
                 topk < 2^31 (block-major plan and partial indices are 32-bit)"
                    .into()
            },
            || max_rows.to_string(),
        )?;
        Ok(MsaBlockMajor {
            k_count: gpu.kernel("msa_block_major_count", 0)?,
            k_scan: gpu.kernel("msa_block_major_scan", BM_SCAN_THREADS * 8)?,
            k_scatter: gpu.kernel("msa_block_major_scatter", 0)?,
            k_run: gpu.kernel("msa_block_major_run", BM_SMEM)?,
            k_combine: gpu.kernel("msa_block_major_combine", 0)?,
            ws_off: scratch_layout(n_heads, n_kv_heads, topk, max_rows).0,
            counts: gpu.zeros(1)?,
            offsets: gpu.zeros(1)?,
            keys: gpu.zeros(words_of::<PlanKey>(1))?,
            items: gpu.zeros(words_of::<BlockMajorItem>(1))?,
            n_items: gpu.zeros(1)?,
            n_keys: 0,
            max_items: 0,
        })
    }

    /// Uploads the keys of a planned batch and sizes the key and item
    /// buffers (grows them when this batch needs more; zeroes the counts).
    pub(crate) fn plan(
        &mut self,
        gpu: &Gpu,
        keys: &[PlanKey],
        rows: usize,
        n_kv_heads: usize,
        topk: usize,
        group: usize,
    ) -> Result<()> {
        let nk = n_kv_heads * keys.len();
        ensure(
            nk < 1 << 31,
            "input_row_offsets",
            || "fewer than 2^31 block-major plan keys".into(),
            || nk.to_string(),
        )?;
        let max_items = (n_kv_heads * rows * topk).div_ceil(item_edges(group)) + nk;
        if self.counts.len() < nk.max(1) {
            grow(gpu, &mut self.counts, nk)?;
        } else {
            gpu.stream()
                .memset_zeros(&mut self.counts)
                .during(|| "zeroing the block-major plan counts".into())?;
        }
        grow(gpu, &mut self.offsets, nk)?;
        let words = record_words(keys);
        grow(gpu, &mut self.keys, words.len())?;
        if !words.is_empty() {
            gpu.stream()
                .memcpy_htod(words, &mut self.keys.slice_mut(..words.len()))
                .during(|| "uploading the block-major plan keys".into())?;
        }
        grow(
            gpu,
            &mut self.items,
            words_of::<BlockMajorItem>(max_items.max(1)),
        )?;
        self.n_keys = keys.len();
        self.max_items = max_items;
        Ok(())
    }

    /// The workspace sub-buffer `i` of [`scratch_layout`] at base `ws`.
    fn at(&self, ws: u64, i: usize) -> u64 {
        ws + self.ws_off[i] as u64
    }

    /// The device-side plan alone: count → scan → scatter (the CSR, the work
    /// items and their count, all on the device).
    pub(crate) fn device_plan<'a>(
        &'a self,
        b: &mut Bufs<'a>,
        a: &BlockMajorArgs,
        r: &BlockMajorPtrs,
    ) -> Result<()> {
        let gpu = b.gpu();
        let n_keys = self.n_keys as u32;
        let total_keys = a.n_kv_heads * n_keys;
        let n_edges = a.n_kv_heads * a.num_rows * a.topk;
        if a.num_rows == 0 || total_keys == 0 {
            return Ok(());
        }
        let ep = BlockMajorEdgeParams {
            d_indices: r.d_indices,
            row_info: r.row_info,
            counts: b.w(&self.counts),
            ranks: DPtrMut::new(self.at(r.ws, 3)),
            offsets: b.r(&self.offsets),
            edges: DPtrMut::new(self.at(r.ws, 2)),
            num_rows: a.num_rows,
            n_kv_heads: a.n_kv_heads,
            topk: a.topk,
            n_keys,
            max_pages: a.cache.max_pages,
        };
        let edge_cfg = LaunchConfig {
            grid_dim: (n_edges.div_ceil(BM_EDGE_THREADS), 1, 1),
            block_dim: (BM_EDGE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `counts` holds `total_keys` keys and every key the kernel
        // forms is below it (the plan's key ranges cover each row's causal
        // blocks); `ranks` holds every edge.
        unsafe {
            gpu.launch(&self.k_count, "the block-major plan count", &ep)
                .run(edge_cfg)
        }?;

        let group = (a.n_heads / a.n_kv_heads) as usize;
        let sp = BlockMajorScanParams {
            counts: b.w(&self.counts),
            offsets: b.w(&self.offsets),
            items: b.rec_mut(&self.items),
            n_items: b.w(&self.n_items),
            keys: b.rec(&self.keys),
            lookup: r.lookup,
            total_keys,
            n_keys,
            max_pages: a.cache.max_pages,
            num_pages: a.cache.num_pages,
            item_edges: item_edges(group) as u32,
        };
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (BM_SCAN_THREADS, 1, 1),
            shared_mem_bytes: BM_SCAN_THREADS * 8,
        };
        // SAFETY: `items` holds `max_items >= edges / item_edges + total_keys`
        // items; page ids are clamped to the pool.
        unsafe {
            gpu.launch(&self.k_scan, "the block-major plan scan", &sp)
                .run(cfg)
        }?;

        // SAFETY: as the count; `edges` holds every edge.
        unsafe {
            gpu.launch(&self.k_scatter, "the block-major plan scatter", &ep)
                .run(edge_cfg)
        }
    }

    /// count → scan → scatter → run → combine on the stream.
    pub(crate) fn run<'a>(
        &'a self,
        b: &mut Bufs<'a>,
        a: &BlockMajorArgs,
        r: &BlockMajorPtrs,
    ) -> Result<()> {
        if a.num_rows == 0 || self.n_keys == 0 || a.n_kv_heads == 0 {
            return Ok(());
        }
        self.device_plan(b, a, r)?;
        let gpu = b.gpu();
        let (part_o, part_ml) = (self.at(r.ws, 0), self.at(r.ws, 1));
        let rp = BlockMajorRunParams {
            q: r.q,
            kv: r.kv,
            keys: b.rec(&self.keys),
            items: b.rec(&self.items),
            n_items: b.r(&self.n_items),
            edges: DPtr::new(self.at(r.ws, 2)),
            part_o: DPtrMut::new(part_o),
            part_ml: DPtrMut::new(part_ml),
            cache: a.cache,
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            n_keys: self.n_keys as u32,
            topk: a.topk,
            scale: a.scale,
        };
        let cfg = LaunchConfig {
            grid_dim: (self.max_items as u32, 1, 1),
            block_dim: (BM_THREADS, 1, 1),
            shared_mem_bytes: BM_SMEM,
        };
        // SAFETY: page ids are clamped on the device; the partial buffers
        // hold `rows * n_heads * topk` entries.
        unsafe { gpu.launch(&self.k_run, "the block-major run", &rp).run(cfg) }?;

        let cp = BlockMajorCombineParams {
            part_o: DPtr::new(part_o),
            part_ml: DPtr::new(part_ml),
            d_indices: r.d_indices,
            row_info: r.row_info,
            out: r.out,
            lse: r.lse,
            num_rows: a.num_rows,
            n_heads: a.n_heads,
            n_kv_heads: a.n_kv_heads,
            topk: a.topk,
            max_pages: a.cache.max_pages,
        };
        let cfg = LaunchConfig {
            grid_dim: ((a.num_rows * a.n_heads).div_ceil(BM_COMBINE_WARPS), 1, 1),
            block_dim: (BM_COMBINE_WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `out` and `lse` were checked against the plan.
        unsafe {
            gpu.launch(&self.k_combine, "the block-major combine", &cp)
                .run(cfg)
        }
    }
}
