//! The MLA FP8 lightning indexer (DeepSeek-V3.2; `shared/spec/mla-fp8-indexer.md`,
//! kernel: `kernels-gpu/src/mla_indexer.rs`): for every query row, the
//! `top_k` positions of its sequence with the highest `k_scale[s] · Σ_h
//! max(q[t,h] · k[s], 0) · qs[t,h]`, descending, ties to the lower
//! position, `-1` past the visible keys.
//!
//! Inputs: `q: e4m3 [num_rows, heads, 128]` (bytes), `qs: f32 [num_rows,
//! heads]` (the caller folds the head weights and every scale into it),
//! the FP8 index-K cache `[num_pages, 1, num_layers, page_size, 1, 128]` of
//! `PagedLayout::index_k_fp8` with its scales apart (`KvDtype::Fp8E4m3`,
//! `k_scales: f32 [num_pages, 1, num_layers, page_size, 1]`) or inside each
//! page (`KvDtype::Fp8E4m3Fused`, DeepGEMM's and vLLM's layout), any
//! power-of-two page size from 16 to 256 (DeepSeek: 64), the page table.
//! Speculative rows (several new tokens of a sequence, each with its own
//! causal limit) are ordinary rows of the ragged batch.
//!
//! Choices where the spec is silent:
//! - `num_heads` 64 or 128 (one kernel body built for each; other
//!   multiples of 8 are `Error::Unsupported`), `top_k` at most 2048
//!   ([`crate::abi::topk::TOPK_MAX_K`]);
//! - NaN logits (NaN or infinite inputs) rank below every number, as in
//!   the MSA indexer and [`crate::TopK`]; infinities in `qs` are not
//!   rejected (the host does not read device data) and give infinite or
//!   NaN logits.
//!
//! Two launches on the stream for each chunk of rows: the logits kernel
//! writes the visible logits of the chunk's rows to an f32 workspace
//! `[rows, ld]` (`ld` = the longest sequence rounded up to 128 keys), then
//! the top-k ([`crate::TopK`]'s kernel) selects from it. `plan` cuts the
//! rows into chunks whose logits fit the limit, sizes the workspace, cuts
//! each chunk into items and uploads them with each row's visible length;
//! `run` binds the tensor maps (uploaded only when the buffers change) and
//! launches, so a run on the previous run's buffers can be captured and
//! replayed. The plan does not depend on the layer (`run` takes it): one
//! plan per step serves every layer. A plan holds until the next `plan`.
//!
//! The logits live in a [`Workspace`] (scratch, see [`crate::workspace`]):
//! the op's own ([`MlaIndexer::new`], grown by `plan`) or the caller's
//! ([`MlaIndexer::new_in`]). A batch whose logits do not fit
//! [`MLA_LOGITS_LIMIT`] (or [`MlaIndexer::limit_logits`]'s bytes, or the
//! caller's workspace) runs in chunks of rows, the way PyTorch and vLLM
//! users cut a long prefill: a 128K-token prompt needs 64 GiB of logits in
//! one piece, 64 chunks of 1 GiB here. Rows are independent, so the result
//! does not depend on the chunks.

use std::ops::Range;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::abi::mla::*;
use crate::abi::topk::TOPK_MAX_K;
use crate::abi::{DPtr, DPtrMut};
use crate::batch::{
    CacheExpect, KvDtype, Mask, PageTable, PageTableExt, PagedLayout, PagedLayoutExt, RaggedBatch,
    RaggedBatchExt,
};
use crate::buffer::RawBuffer;
use crate::error::{ensure, expect_len, CudaContextExt, Error, Result};
use crate::launch::{record_words, Bufs, Kernel};
use crate::tma::{encode_tiled, TensorMaps, TmaElem::U8};
use crate::topk::{TopK, TopkPlan};
use crate::workspace::{align_up, grow, Scratch, Workspace, WORKSPACE_ALIGN};
use crate::Gpu;

pub use crate::abi::config::MlaIndexerConfig;

/// Bytes of logits a plan keeps in the workspace at once unless
/// [`MlaIndexer::limit_logits`] says otherwise: 1 GiB, a 16K × 16K prefill
/// (or 2048 rows of 128K keys) in one chunk.
pub const MLA_LOGITS_LIMIT: usize = 1 << 30;

/// What a plan fixed.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rows: usize,
    batch: usize,
    ld: usize,
    /// The kernel: index into `MlaIndexer::kernels`.
    kernel: usize,
    layout: PagedLayout,
    max_pages: usize,
}

/// Rows `row0 .. row0 + rows` of a plan, run as one logits launch (items
/// `work0 .. work0 + num_work`, rows numbered from `row0`) and one top-k.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    row0: usize,
    rows: usize,
    work0: usize,
    num_work: usize,
    topk: TopkPlan,
}

/// The MLA FP8 lightning indexer: `new` checks the configuration, `plan`
/// takes a batch and its cache layout, `run` launches.
pub struct MlaIndexer {
    gpu: Gpu,
    cfg: MlaIndexerConfig,
    /// The logits kernels of `cfg.num_heads` with the query rows of an
    /// item: 2 Q tiles, 1 Q tile, and for 64 heads the one-row form
    /// (`wgmma` N = 64).
    kernels: Vec<(Kernel<MlaLogitsParams>, usize)>,
    topk: TopK,
    /// [`MlaWork`] items as words, longest first.
    work: CudaSlice<u32>,
    /// Visible keys of each row.
    row_lens: CudaSlice<u32>,
    /// The logits `[rows, ld]` f32, at the start of the workspace.
    scratch: Scratch,
    /// [`MI_TMAPS`] tensor maps a chunk (its Q, the K pool).
    tmaps: TensorMaps,
    /// Bytes of logits a plan keeps at once (before the workspace's limit).
    logits_limit: usize,
    plan: Option<Plan>,
    chunks: Vec<Chunk>,
}

impl MlaIndexer {
    /// The op for `cfg`: 64 or 128 heads, `top_k` in `1 ..= 2048`, mask
    /// `None` or `Causal`.
    pub fn new(gpu: &Gpu, cfg: MlaIndexerConfig) -> Result<Self> {
        Self::with_scratch(gpu, cfg, Scratch::private(gpu, 1)?)
    }

    /// [`MlaIndexer::new`] over the caller's workspace (shared with other
    /// ops on the same stream; see [`crate::workspace`]): a batch whose
    /// logits do not fit runs in chunks of rows, and `plan` fails (naming
    /// `workspace`) only when one row's logits do not fit.
    pub fn new_in(gpu: &Gpu, cfg: MlaIndexerConfig, workspace: &Workspace) -> Result<Self> {
        Self::with_scratch(gpu, cfg, Scratch::shared(gpu, workspace, 0)?)
    }

    /// Bytes of workspace for batches of at most `max_rows` query rows
    /// whose sequences have at most `max_context` keys to run in one chunk:
    /// the logits, `4 * max_rows * ld` with `ld = max_context` rounded up
    /// to 128 (2048 rows of 128K keys: 1 GiB). Less runs them in chunks.
    pub fn workspace_size(max_rows: usize, max_context: usize) -> usize {
        Self::logits_bytes(max_rows, Self::stride(max_context))
    }

    /// The logits' row stride for sequences of at most `keys` keys.
    fn stride(keys: usize) -> usize {
        keys.div_ceil(MI_BLOCK_N as usize).max(1) * MI_BLOCK_N as usize
    }

    fn logits_bytes(rows: usize, ld: usize) -> usize {
        align_up(4 * rows * ld)
    }

    fn with_scratch(gpu: &Gpu, cfg: MlaIndexerConfig, scratch: Scratch) -> Result<Self> {
        let names: &[(&str, usize)] = match cfg.num_heads {
            64 => &[
                ("mla_logits_h64", 4),
                ("mla_logits_h64_q1", 2),
                ("mla_logits_h64_n64", 1),
            ],
            128 => &[("mla_logits_h128", 2), ("mla_logits_h128_q1", 1)],
            h => {
                return Err(Error::Unsupported {
                    arg: "num_heads",
                    what: format!("{h} index heads (64 and 128 are built)"),
                })
            }
        };
        ensure(
            (1..=TOPK_MAX_K as usize).contains(&cfg.top_k),
            "top_k",
            || format!("1 ..= {TOPK_MAX_K}"),
            || cfg.top_k.to_string(),
        )?;
        if let Mask::SlidingWindow { window } = cfg.mask {
            return Err(Error::Unsupported {
                arg: "mask",
                what: format!("a sliding window ({window}): the indexer is causal or unmasked"),
            });
        }
        Ok(MlaIndexer {
            gpu: gpu.clone(),
            cfg,
            kernels: names
                .iter()
                .map(|&(n, rows)| Ok((gpu.kernel(n, MI_SMEM)?, rows)))
                .collect::<Result<_>>()?,
            topk: TopK::new(gpu)?,
            work: gpu.zeros(1)?,
            row_lens: gpu.zeros(1)?,
            scratch,
            tmaps: TensorMaps::new(gpu, MI_TMAPS)?,
            logits_limit: MLA_LOGITS_LIMIT,
            plan: None,
            chunks: Vec::new(),
        })
    }

    /// Keeps at most `bytes` of logits at once from the next `plan` on
    /// (default [`MLA_LOGITS_LIMIT`]; at least one row's, whatever it
    /// says): a batch with more runs in chunks of rows. A shared workspace
    /// smaller than `bytes` limits them too.
    pub fn limit_logits(&mut self, bytes: usize) {
        self.logits_limit = bytes;
    }

    /// Measurement only: the top-k of the next `plan` runs with clusters of
    /// `cluster` CTAs a row ([`TopK::force_cluster`]; the same result).
    #[doc(hidden)]
    pub fn force_topk_cluster(&mut self, cluster: Option<u32>) {
        self.topk.force_cluster(cluster);
    }

    /// Chunks of rows the current plan runs in (1 when the logits fit).
    pub fn chunks(&self) -> Option<usize> {
        self.plan.map(|_| self.chunks.len().max(1))
    }

    /// Rows a chunk holds when rows have `ld` logits: as many as the limit
    /// (and a shared workspace) allow, at least one.
    fn chunk_rows(&self, ld: usize) -> usize {
        let limit = self
            .scratch
            .limit()
            .map_or(self.logits_limit, |ws| ws.min(self.logits_limit));
        // Rounded down to the workspace alignment, so that the aligned
        // size of the chunk's logits stays within it.
        (limit / WORKSPACE_ALIGN * WORKSPACE_ALIGN / (4 * ld)).max(1)
    }

    /// The configuration.
    pub fn config(&self) -> &MlaIndexerConfig {
        &self.cfg
    }

    /// Row stride `ld` of the logits workspace of the current plan.
    pub fn logits_stride(&self) -> Option<usize> {
        self.plan.map(|p| p.ld)
    }

    /// Validates the batch, the cache layout and the page table; cuts the
    /// rows into chunks whose logits fit the limit and each chunk into
    /// items (longest first), uploads them and the rows' visible lengths,
    /// sizes the logits workspace and plans the top-k of each chunk.
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        layout: &PagedLayout,
        pages: PageTable,
    ) -> Result<()> {
        self.plan = None;
        self.chunks.clear();
        let ld = self.validate(batch, layout, &pages)?;
        let rows = batch.num_rows();
        // The kernel with the fewest rows an item that still holds every
        // sequence's rows in one item (decode: one row, no padding
        // columns), or the largest (prefill).
        let q = batch.max_q_len();
        let kernel = (0..self.kernels.len())
            .rev()
            .find(|&k| self.kernels[k].1 >= q)
            .unwrap_or(0);
        let per = self.chunk_rows(ld);
        let (work, lens, chunks) = self.plan_chunks(batch, per, ld, kernel)?;
        let g = &self.gpu;
        grow(g, &mut self.work, record_words(&work).len().max(1))?;
        grow(g, &mut self.row_lens, rows.max(1))?;
        self.scratch.fit(g, Self::logits_bytes(per.min(rows), ld))?;
        self.tmaps.reserve(g, MI_TMAPS * chunks.len())?;
        let s = g.stream();
        if !work.is_empty() {
            s.memcpy_htod(
                record_words(&work),
                &mut self.work.slice_mut(..record_words(&work).len()),
            )
            .during(|| "uploading the indexer's work items".into())?;
            s.memcpy_htod(&lens, &mut self.row_lens.slice_mut(..rows))
                .during(|| "uploading the indexer's row lengths".into())?;
        }
        self.chunks = chunks;
        self.plan = Some(Plan {
            rows,
            batch: batch.batch(),
            ld,
            kernel,
            layout: *layout,
            max_pages: pages.max_pages,
        });
        Ok(())
    }

    /// Checks the batch, the cache layout and the page table (the first bad
    /// one is the error); the logits' row stride.
    fn validate(
        &self,
        batch: &RaggedBatch,
        layout: &PagedLayout,
        pages: &PageTable,
    ) -> Result<usize> {
        batch.validate()?;
        let ps = layout.page_size;
        ensure(
            ps.is_power_of_two() && (16..=256).contains(&ps),
            "page_size",
            || "a power of two from 16 to 256".into(),
            || ps.to_string(),
        )?;
        let want = CacheExpect {
            dtypes: &[KvDtype::Fp8E4m3, KvDtype::Fp8E4m3Fused],
            name: "k_cache",
            shape: "[num_pages, 1, num_layers, page_size, 1, 128]",
            kv_dim: 1,
            n_heads: 1,
            head_dim: MI_HEAD_DIM as usize,
            page_size: ps,
        };
        layout.check_shape(&want)?;
        pages.validate(batch, layout)?;
        let blocks = layout.num_pages * layout.num_layers;
        ensure(
            blocks < 1 << 31 && layout.elements() < 1 << 40,
            "k_cache",
            || "fewer than 2^31 page blocks (num_pages * num_layers)".into(),
            || blocks.to_string(),
        )?;
        let rows = batch.num_rows();
        let h = self.cfg.num_heads;
        ensure(
            rows * h < 1 << 31,
            "input_row_offsets",
            || format!("fewer than 2^31 / {h} rows"),
            || rows.to_string(),
        )?;
        let ld = Self::stride(batch.max_seqlen_k() as usize);
        ensure(
            rows * ld < 1 << 36 && ld <= self.topk.max_n(),
            "cache_lengths",
            || {
                format!(
                    "rows * keys below 2^36 and sequences of at most {} keys",
                    self.topk.max_n()
                )
            },
            || format!("{rows} rows, {ld} keys"),
        )?;
        Ok(ld)
    }

    /// The items and visible lengths of every row, and the chunks of `per`
    /// rows they fall into (each with its top-k plan).
    fn plan_chunks(
        &self,
        batch: &RaggedBatch,
        per: usize,
        ld: usize,
        kernel: usize,
    ) -> Result<(Vec<MlaWork>, Vec<u32>, Vec<Chunk>)> {
        let rows = batch.num_rows();
        let min_items = 2 * self.gpu.props().sm_count as usize;
        let (group, mask) = (self.kernels[kernel].1, self.cfg.mask);
        let (mut work, mut lens) = (Vec::new(), Vec::with_capacity(rows));
        let mut chunks: Vec<Chunk> = Vec::with_capacity(rows.div_ceil(per));
        for row0 in (0..rows).step_by(per) {
            let r = row0..rows.min(row0 + per);
            let (w, l) = plan_work(batch, r.clone(), group, mask, min_items);
            // Every chunk but the last has the same rows: one top-k plan.
            let topk = match chunks.last() {
                Some(c) if c.rows == r.len() => c.topk,
                _ => self.topk.plan_for(r.len(), ld, self.cfg.top_k)?,
            };
            chunks.push(Chunk {
                row0,
                rows: r.len(),
                work0: work.len(),
                num_work: w.len(),
                topk,
            });
            work.extend(w);
            lens.extend(l);
        }
        Ok((work, lens, chunks))
    }

    /// Writes `out: i32 [num_rows, top_k]` for the planned batch from `q`
    /// (e4m3 bytes `[num_rows, heads, 128]`), `qs: f32 [num_rows, heads]`,
    /// the cache `k_cache` (`layout.elements()` bytes), `k_scales`
    /// (`layout.scale_elements()` f32, exactly when the scales are apart)
    /// and the page table, on layer `layer` of the cache. Launches only:
    /// for each chunk of rows, the logits kernel, then the top-k. Buffers
    /// may be slices, views or [`crate::RawBuffer`]s.
    #[allow(clippy::too_many_arguments)] // the op's six tensors and the layer
    pub fn run<Q, S, K, L, O>(
        &mut self,
        q: &Q,
        qs: &S,
        k_cache: &K,
        k_scales: Option<&dyn DevicePtr<f32>>,
        lookup: &L,
        layer: usize,
        out: &mut O,
    ) -> Result<()>
    where
        Q: DevicePtr<u8> + ?Sized,
        S: DevicePtr<f32> + ?Sized,
        K: DevicePtr<u8> + ?Sized,
        L: DevicePtr<u32> + ?Sized,
        O: DevicePtrMut<i32> + ?Sized,
    {
        self.launch(q, qs, k_cache, k_scales, lookup, layer, Some(out))
    }

    /// The logits alone: row `t`'s logit of key `s` at `t * ld + s` of
    /// the workspace's f32 ([`MlaIndexer::download_logits`]; `ld` =
    /// [`MlaIndexer::logits_stride`]) for its visible keys (other entries
    /// are left as they were). Same arguments as [`MlaIndexer::run`]; launch
    /// only. A plan in several chunks of rows is refused (naming
    /// `workspace`): the workspace holds one chunk's logits at a time.
    pub fn run_logits<Q, S, K, L>(
        &mut self,
        q: &Q,
        qs: &S,
        k_cache: &K,
        k_scales: Option<&dyn DevicePtr<f32>>,
        lookup: &L,
        layer: usize,
    ) -> Result<()>
    where
        Q: DevicePtr<u8> + ?Sized,
        S: DevicePtr<f32> + ?Sized,
        K: DevicePtr<u8> + ?Sized,
        L: DevicePtr<u32> + ?Sized,
    {
        self.one_chunk()?;
        self.launch(
            q,
            qs,
            k_cache,
            k_scales,
            lookup,
            layer,
            None::<&mut CudaSlice<i32>>,
        )
    }

    /// The plan, unless it does not keep every row's logits at once.
    fn one_chunk(&self) -> Result<Plan> {
        let p = self.plan.ok_or(Error::NotPlanned { op: "mla_indexer" })?;
        ensure(
            self.chunks.len() <= 1,
            "workspace",
            || {
                format!(
                    "room for the logits of all {} rows at once (see limit_logits)",
                    p.rows
                )
            },
            || format!("a plan in {} chunks of rows", self.chunks.len()),
        )?;
        Ok(p)
    }

    /// Checks a run's buffer lengths (and `k_scales`' presence) and its
    /// layer against the plan.
    #[allow(clippy::too_many_arguments)] // run's arguments
    fn check_lengths(
        &self,
        p: &Plan,
        q: usize,
        qs: usize,
        k_cache: usize,
        k_scales: Option<usize>,
        lookup: usize,
        layer: usize,
    ) -> Result<()> {
        let (h, l) = (self.cfg.num_heads, p.layout);
        l.check_layer(layer)?;
        expect_len(
            "q",
            q,
            p.rows * h * MI_HEAD_DIM as usize,
            "num_rows * num_heads * 128",
        )?;
        expect_len("qs", qs, p.rows * h, "num_rows * num_heads")?;
        expect_len(
            "k_cache",
            k_cache,
            l.elements(),
            "the planned layout's bytes",
        )?;
        expect_len("lookup", lookup, p.batch * p.max_pages, "batch * max_pages")?;
        match (k_scales, l.dtype.has_scales()) {
            (Some(s), true) => expect_len(
                "k_scales",
                s,
                l.scale_elements(),
                "the planned layout's scales",
            ),
            (None, false) => Ok(()),
            (Some(_), false) => Err(Error::invalid(
                "k_scales",
                "none (the scales are in the pages)",
                "a buffer",
            )),
            (None, true) => Err(Error::invalid(
                "k_scales",
                "a buffer (KvDtype::Fp8E4m3)",
                "none",
            )),
        }
    }

    /// Checks the run's buffers against the plan, binds the tensor maps
    /// and launches each chunk's logits and, when `out` is given, its
    /// top-k.
    #[allow(clippy::too_many_arguments)] // run's arguments
    fn launch<Q, S, K, L, O>(
        &mut self,
        q: &Q,
        qs: &S,
        k_cache: &K,
        k_scales: Option<&dyn DevicePtr<f32>>,
        lookup: &L,
        layer: usize,
        out: Option<&mut O>,
    ) -> Result<()>
    where
        Q: DevicePtr<u8> + ?Sized,
        S: DevicePtr<f32> + ?Sized,
        K: DevicePtr<u8> + ?Sized,
        L: DevicePtr<u32> + ?Sized,
        O: DevicePtrMut<i32> + ?Sized,
    {
        let p = self.plan.ok_or(Error::NotPlanned { op: "mla_indexer" })?;
        if let Some(o) = &out {
            expect_len("out", o.len(), p.rows * self.cfg.top_k, "num_rows * top_k")?;
        }
        let scales_len = k_scales.map(|s| s.len());
        self.check_lengths(
            &p,
            q.len(),
            qs.len(),
            k_cache.len(),
            scales_len,
            lookup.len(),
            layer,
        )?;
        let (h, l) = (self.cfg.num_heads, p.layout);
        if p.rows == 0 {
            return Ok(());
        }
        let mut b = Bufs::new(&self.gpu);
        let q = b.input::<u8, _>("q", q)?;
        let k = b.input::<u8, _>("k_cache", k_cache)?;
        let maps = self.encode_maps(&p, q.addr(), k.addr())?;
        self.tmaps.bind(b.gpu(), maps, "MLA indexer")?;
        let ps = l.page_size as u32;
        let (scales, scale_block_bytes, scale_off) = match k_scales {
            Some(s) => (DPtr::new(b.input("k_scales", s)?.addr()), 4 * ps, 0),
            None => (
                DPtr::new(k.addr()),
                l.block_stride() as u32,
                ps * MI_HEAD_DIM,
            ),
        };
        // The whole batch's; each chunk's launch moves them to its rows.
        let params = MlaLogitsParams {
            tmaps: b.r(self.tmaps.device()),
            work: b.rec(&self.work),
            qs: b.input("qs", qs)?,
            lookup: b.input("lookup", lookup)?,
            scales,
            logits: DPtrMut::new(b.workspace(self.scratch.workspace())),
            num_work: 0,
            num_rows: 0,
            heads: h as u32,
            ld: p.ld as u32,
            causal: (self.cfg.mask == Mask::Causal) as u32,
            page_size: ps,
            box_rows: ps.min(MI_BLOCK_N),
            num_pages: l.num_pages as u32,
            max_pages: p.max_pages as u32,
            num_layers: l.num_layers as u32,
            layer: layer as u32,
            scale_block_bytes,
            scale_off,
        };
        let out = match out {
            Some(o) => b.output("out", o)?,
            None => DPtrMut::NULL,
        };
        let row_lens = b.r(&self.row_lens);
        for (i, c) in self.chunks.iter().enumerate() {
            // SAFETY: `params` addresses the run's checked buffers and the
            // op's own, alive (guarded by `b`) until the launches are queued.
            unsafe { self.launch_chunk(&p, &params, i, c, row_lens, out)? };
        }
        Ok(())
    }

    /// The workspace the logits live in.
    pub fn workspace(&self) -> &Workspace {
        self.scratch.workspace()
    }

    /// Copies the logits of the current plan back (`[num_rows, ld]` f32,
    /// see [`MlaIndexer::run_logits`]; waits for the stream). They are
    /// scratch: valid until the next run of any op sharing the workspace.
    pub fn download_logits(&self) -> Result<Vec<f32>> {
        let p = self.one_chunk()?;
        let mut b = Bufs::new(&self.gpu);
        let base = b.workspace(self.scratch.workspace());
        // SAFETY: the plan sized the workspace for rows * ld f32 (`fit`),
        // and it outlives this call.
        let view = unsafe { RawBuffer::<f32>::new(&self.gpu, base, p.rows * p.ld) };
        self.gpu.download(&view)
    }

    /// Launches chunk `i`'s logits (`whole`: the parameters of the whole
    /// batch) and, unless `out` is null, its top-k.
    ///
    /// # Safety
    /// `whole`, `row_lens` and `out` must address buffers of the plan's
    /// sizes that live until the launches have run.
    unsafe fn launch_chunk(
        &self,
        p: &Plan,
        whole: &MlaLogitsParams,
        i: usize,
        c: &Chunk,
        row_lens: DPtr<u32>,
        out: DPtrMut<i32>,
    ) -> Result<()> {
        let params = MlaLogitsParams {
            tmaps: whole.tmaps.offset(i * MI_TMAPS * MI_TMAP_BYTES),
            work: whole.work.offset(c.work0),
            qs: whole.qs.offset(c.row0 * self.cfg.num_heads),
            num_work: c.num_work as u32,
            num_rows: c.rows as u32,
            ..*whole
        };
        let cfg = LaunchConfig {
            grid_dim: (c.num_work as u32, 1, 1),
            block_dim: (MI_THREADS, 1, 1),
            shared_mem_bytes: MI_SMEM,
        };
        // SAFETY: every buffer's length was checked against the plan (the
        // chunk's rows and items lie inside it); the kernel clamps page
        // ids, rows (to the chunk's) and keys, and TMA zero-fills reads
        // past a tensor.
        unsafe {
            self.gpu
                .launch(
                    &self.kernels[p.kernel].0,
                    "the MLA indexer logits kernel",
                    &params,
                )
                .run(cfg)?;
        }
        if out.is_null() {
            return Ok(());
        }
        // SAFETY: the top-k reads the chunk's visible logits (below their
        // uploaded lengths, at most `ld`), which the logits kernel wrote
        // before it on the stream; `out` holds rows * top_k, the chunk's
        // rows from `row0` on.
        unsafe {
            self.topk.launch(
                &c.topk,
                params.logits.read_only(),
                p.ld as u32,
                row_lens.offset(c.row0),
                out.offset(c.row0 * self.cfg.top_k),
            )
        }
    }

    /// Encodes each chunk's tensor maps for these addresses: its rows of
    /// Q, then the K pool.
    fn encode_maps(&self, p: &Plan, q: u64, k_cache: u64) -> Result<Vec<u8>> {
        let l = p.layout;
        let d = MI_HEAD_DIM as u64;
        let h = self.cfg.num_heads;
        let blocks = (l.num_pages * l.num_layers) as u64;
        let box_rows = (l.page_size as u32).min(MI_BLOCK_N);
        let k = encode_tiled(
            U8,
            k_cache,
            &[d, l.page_size as u64, blocks],
            &[d, l.block_stride() as u64],
            &[128, box_rows, 1],
        )?;
        let mut maps = Vec::with_capacity(self.chunks.len() * MI_TMAPS * MI_TMAP_BYTES);
        for c in &self.chunks {
            // A chunk's Q starts at a multiple of 128 bytes (TMA: 16).
            let q0 = q + (c.row0 * h) as u64 * d;
            let q_rows = (c.rows * h) as u64;
            maps.extend(encode_tiled(U8, q0, &[d, q_rows], &[d], &[128, MI_Q_ROWS])?);
            maps.extend_from_slice(&k);
        }
        Ok(maps)
    }
}

/// The items of rows `rows` of a batch (numbered from `rows.start`),
/// longest first (a stable sort), and each row's visible keys: rows in
/// groups of `group` per sequence (the rows of the kernel's Q tiles), each
/// group's key tiles (up to the longest row's) in items of at most
/// [`MI_TILES_PER_ITEM`], fewer where the rows would otherwise make fewer
/// than `min_items` items (a decode batch of one 128K sequence is 1024
/// tiles: 256 items of 4, not 8 of 128).
pub fn plan_work(
    batch: &RaggedBatch,
    rows: Range<usize>,
    group: usize,
    mask: Mask,
    min_items: usize,
) -> (Vec<MlaWork>, Vec<u32>) {
    let bn = MI_BLOCK_N as usize;
    // Key tiles of every group of rows, in order.
    let mut groups = Vec::new();
    let mut lens = Vec::with_capacity(rows.len());
    for b in 0..batch.batch() {
        let (r0, q_len) = (batch.input_row_offsets[b] as usize, batch.q_len(b));
        let (cache, n) = (batch.cache_lengths[b] as usize, batch.seqlen_k(b) as usize);
        // The sequence's rows `lo .. hi` lie in the range.
        let lo = rows.start.clamp(r0, r0 + q_len) - r0;
        let hi = rows.end.clamp(r0, r0 + q_len) - r0;
        lens.extend((lo..hi).map(|i| mask.key_range(cache + i, n).end as u32));
        for i in (lo..hi).step_by(group) {
            let count = group.min(hi - i);
            let tiles = mask.key_range(cache + i + count - 1, n).end.div_ceil(bn);
            groups.push((b, r0 + i - rows.start, cache, n, i, count, tiles));
        }
    }
    let total: usize = groups.iter().map(|g| g.6).sum();
    let per = total
        .div_ceil(min_items.max(1))
        .clamp(1, MI_TILES_PER_ITEM as usize);
    let mut work = Vec::new();
    for (b, row0, cache, n, i, count, tiles) in groups {
        for t0 in (0..tiles).step_by(per) {
            work.push(MlaWork {
                seq: b as u32,
                row0: row0 as u32,
                rows: count as u32,
                q_pos0: (cache + i) as u32,
                num_keys: n as u32,
                tile0: t0 as u32,
                tile1: tiles.min(t0 + per) as u32,
                _pad: 0,
            });
        }
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.tile1 - w.tile0));
    (work, lens)
}
