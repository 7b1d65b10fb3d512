//! MSA block-sparse attention (`mo.msa.attention.ragged.paged`): decode, and
//! ragged prefill / chunked prefill / speculative rows with the per-token
//! causal rule.
//! Semantics: `shared/spec/msa-attention.md`; kernels:
//! `kernels-gpu/src/msa_attention.rs` (query-major) and
//! `kernels-gpu/src/msa_block_major.rs` (KV-block-major).
//!
//! ```text
//! q          bf16 [num_rows, n_heads, 128]                  (ragged: offsets [batch + 1])
//! kv_cache   bf16 [num_pages, 2, num_layers, 128, n_kv_heads, 128]
//! lookup     u32  [batch, max_pages]
//! d_indices  i32  [n_kv_heads, num_rows, topk]              (block ids, -1 = none)
//! out        bf16 [num_rows, n_heads, 128];  lse f32 [num_rows, n_heads] (optional, natural log)
//! ```
//!
//! Plan/run split: [`MsaAttention::plan`] validates the host metadata, uploads
//! each row's (sequence, seqlen_k, q_pos, plan key base), and picks the path;
//! [`MsaAttention::run`] only launches, so it can be captured in a CUDA
//! graph. The plan does not depend on the layer: `run` takes it, so one
//! plan per step serves every layer. A plan holds until the next `plan`.
//!
//! Graph mode ([`MsaAttention::set_graph_bounds`], [`crate::graph`]): the
//! decode grid depends on the number of rows only and the row records are
//! rewritten in place, so a captured decode `run` stays valid while the
//! sequences grow (within the bound); a launch replayed after an
//! incompatible plan writes NaN (the device-side epoch guard).
//!
//! The scratch (split-K partials, the block-major partials and CSR) lives in
//! a [`Workspace`] sized for `max_rows` ([`MsaAttention::workspace_size`]):
//! the op's own ([`MsaAttention::new`]) or the caller's
//! ([`MsaAttention::new_in`]); see [`crate::workspace`].
//!
//! Two paths ([`AttentionPath`]):
//! - **query-major** (decode, every `q_len = 1`): one CTA per (row, KV head,
//!   split-K partition) streams the row's selected blocks. Up to 16
//!   partitions form a thread-block cluster and merge through distributed
//!   shared memory in the same kernel; more are merged by a combine kernel.
//! - **KV-block-major** (any `q_len > 1`): the device inverts `d_indices`
//!   into a CSR (see `msa_block_major`), each selected block is loaded once for
//!   all the rows that chose it, and a combine merges each row's slots.
//!
//! Our choices: ids `>= ceil(seqlen_k / 128)` are skipped like `-1`; the tail
//! of the last page is always masked; a query that attends to nothing gets
//! `out = 0` and `lse = -inf`; a block id listed twice is attended twice.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

pub use crate::abi::config::MsaAttentionConfig;
use crate::abi::msa::*;
use crate::abi::{DPtr, DPtrMut, PagedKv};
use crate::batch::{
    CacheExpect, ConfigExt, KvDtype, PageTable, PageTableExt, PagedLayout, PagedLayoutExt,
    RaggedBatch, RaggedBatchExt,
};
use crate::context::DeviceProps;
use crate::error::{ensure, expect_len, CudaContextExt, Error, Result};
use crate::graph::{GraphKey, GraphState};
use crate::launch::{record_words, words_of, Bufs, Kernel};
use crate::msa_block_major::{self, plan_keys, BlockMajorArgs, BlockMajorPtrs, MsaBlockMajor};
use crate::workspace::{align_up, Scratch, Workspace};
use crate::Gpu;

/// Split-K partitions for a decode batch: upstream's rule
/// `min(clamp(SMs / (batch * n_kv_heads), 1, 32), topk)`, i.e. about one CTA
/// per SM (the kernel runs one CTA per SM).
///
/// Kept after measuring (H100, 2026-11-24, `bench --sweep-chunk`, µs by
/// partitions 1/2/3/4/8/16): msa-decode-b64-32k 100.9/112.7/115.4/119.7/
/// 145.6/221.1 and msa-decode-tp8 51.9/60.3/62.2/63.2/71.6/97.6 (the rule
/// gives 1); msa-decode-b1-128k 21.7/16.8/-/13.3/11.3/11.7 (the rule gives 16,
/// within noise of the best, 8). Again on an H200 (2026-11-30, µs by
/// partitions 1/2/3/4/8/16): msa-decode-b1-128k 27.0/19.3/17.4/14.6/11.5/11.2
/// and msa-decode-tp8 38.7/43.7/48.5/48.7 (1-4): the rule's 16 and 1 are the
/// best; with the cluster merge, b1-128k 27.0/21.4/17.6/14.4/11.0/9.9.
pub fn decode_partitions(sm_count: usize, batch: usize, n_kv_heads: usize, topk: usize) -> usize {
    let pairs = (batch * n_kv_heads).max(1);
    (sm_count / pairs)
        .clamp(1, ATT_MAX_PARTS as usize)
        .min(topk.max(1))
}

/// Checks a plan's host metadata (the spec's "bad input" list but the
/// layer, which `run` checks): configuration, ragged batch, cache layout,
/// page table.
pub fn validate_attention(
    cfg: &MsaAttentionConfig,
    batch: &RaggedBatch,
    pages: &PageTable,
    layout: &PagedLayout,
) -> Result<()> {
    cfg.validate()?;
    batch.validate()?;
    layout.check_shape(&CacheExpect {
        dtypes: &[KvDtype::Bf16],
        name: "kv_cache",
        shape: "a K/V cache [num_pages, 2, num_layers, page_size, n_kv_heads, head_dim]",
        kv_dim: 2,
        n_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        page_size: MSA_BLOCK as usize,
    })?;
    pages.validate(batch, layout)?;
    Ok(())
}

/// Which kernels a plan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// One CTA per (row, KV head, partition); the decode path.
    QueryMajor,
    /// Device CSR plan, one CTA per (block, up to 128 rows for group 16);
    /// the prefill path.
    BlockMajor,
}

/// Every row's record (its sequence, keys, position and first plan key),
/// in row order.
fn row_infos(batch: &RaggedBatch, key_base: &[u32]) -> Vec<RowInfo> {
    let mut info = Vec::with_capacity(batch.num_rows());
    for b in 0..batch.batch() {
        let (cache, sk) = (batch.cache_lengths[b], batch.seqlen_k(b) as u32);
        let r0 = batch.input_row_offsets[b] as usize;
        for i in 0..batch.q_len(b) {
            info.push(RowInfo {
                seq: b as u32,
                seqlen_k: sk,
                q_pos: cache + i as u32,
                key_base: key_base[r0 + i],
            });
        }
    }
    info
}

/// The path for a batch: block-major as soon as one sequence has more than
/// one new token (its rows share blocks), query-major for pure decode.
pub fn attention_path(max_q_len: usize) -> AttentionPath {
    if max_q_len > 1 {
        AttentionPath::BlockMajor
    } else {
        AttentionPath::QueryMajor
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Plan {
    batch: usize,
    rows: usize,
    max_pages: usize,
    layout: PagedLayout,
    parts: usize,
    path: AttentionPath,
}

/// MSA attention (decode and query-major prefill) with its workspace.
pub struct MsaAttention {
    gpu: Gpu,
    cfg: MsaAttentionConfig,
    k_partial: Kernel<MsaDecodeParams>,
    k_combine: Kernel<MsaCombineParams>,
    /// Most partitions merged in a thread-block cluster on this device
    /// (`ATT_MAX_CLUSTER`, or 8 where clusters of 16 do not fit).
    max_cluster: u32,
    max_rows: usize,
    /// Most (row, partition) pairs the partial buffers hold: split-K only
    /// pays for small batches, so this is a few per SM, not `max_rows * 32`.
    part_cap: usize,
    /// `[rows]` [`RowInfo`] as words.
    row_info: CudaSlice<u32>,
    /// The scratch: `[parts, rows, n_heads, 128]` f32 split-K partials for
    /// `parts * rows <= part_cap` at 0, `[parts, rows, n_heads]` f32 (log2
    /// domain) at `part_lse_off`; the block-major path's scratch, also from
    /// 0 (the two paths never run in one call).
    scratch: Scratch,
    part_lse_off: usize,
    block_major: MsaBlockMajor,
    plan: Option<Plan>,
    force_parts: Option<usize>,
    force_path: Option<AttentionPath>,
    window: Option<usize>,
    graph: GraphState<Plan>,
}

impl MsaAttention {
    /// Loads the kernels and allocates the workspace for up to `max_rows`
    /// query rows (decode: sequences; every later call reuses it): see
    /// [`MsaAttention::workspace_size`].
    pub fn new(gpu: &Gpu, cfg: MsaAttentionConfig, max_rows: usize) -> Result<Self> {
        cfg.validate()?;
        let bytes = Self::workspace_size(gpu.props(), &cfg, max_rows);
        Self::with_scratch(gpu, cfg, max_rows, Scratch::private(gpu, bytes)?)
    }

    /// [`MsaAttention::new`] over the caller's workspace, which must hold
    /// [`MsaAttention::workspace_size`] for `max_rows` (else an error naming
    /// `workspace`); it may be shared with other ops on the same stream
    /// (see [`crate::workspace`]).
    pub fn new_in(
        gpu: &Gpu,
        cfg: MsaAttentionConfig,
        max_rows: usize,
        workspace: &Workspace,
    ) -> Result<Self> {
        cfg.validate()?;
        let bytes = Self::workspace_size(gpu.props(), &cfg, max_rows);
        Self::with_scratch(gpu, cfg, max_rows, Scratch::shared(gpu, workspace, bytes)?)
    }

    /// Most (row, partition) pairs of split-K partials on a device.
    fn part_cap(props: &DeviceProps) -> usize {
        4 * (props.sm_count as usize).max(ATT_MAX_PARTS as usize)
    }

    /// Bytes of workspace for batches of at most `max_rows` query rows (the
    /// batch's new tokens; decode: sequences) on the device `props`
    /// describes ([`Gpu::props`]): the larger of the split-K partials
    /// (`4 * max(sm_count, 32)` (row, partition) pairs of `n_heads * 129`
    /// f32: 4.4 MB for M3 on an H100) and the block-major path's partials
    /// and CSR (`max_rows * topk * (n_heads * 264 + n_kv_heads * 12)`
    /// bytes: M3, 32K rows, 9 GB; a decode batch of 128, 36 MB). Context
    /// lengths do not matter.
    pub fn workspace_size(props: &DeviceProps, cfg: &MsaAttentionConfig, max_rows: usize) -> usize {
        let max_rows = max_rows.max(1);
        let (_, decode) = Self::decode_layout(Self::part_cap(props), cfg.n_heads, cfg.head_dim);
        let bm = msa_block_major::workspace_bytes(cfg.n_heads, cfg.n_kv_heads, cfg.topk, max_rows);
        decode.max(bm)
    }

    /// Offset of `part_lse` and the bytes of the split-K scratch.
    fn decode_layout(part_cap: usize, n_heads: usize, head_dim: usize) -> (usize, usize) {
        let o = align_up(4 * part_cap * n_heads * head_dim);
        (o, o + align_up(4 * part_cap * n_heads))
    }

    fn with_scratch(
        gpu: &Gpu,
        cfg: MsaAttentionConfig,
        max_rows: usize,
        scratch: Scratch,
    ) -> Result<Self> {
        let max_rows = max_rows.max(1);
        let part_cap = Self::part_cap(gpu.props());
        let k_partial = gpu.kernel("msa_attention_partial", ATT_SMEM)?;
        k_partial.allow_clusters_of_16()?;
        let fits = gpu
            .launch(
                &k_partial,
                "the MSA decode kernel",
                &MsaDecodeParams::default(),
            )
            .cluster(ATT_MAX_CLUSTER)
            .max_active_clusters(LaunchConfig {
                grid_dim: (ATT_MAX_CLUSTER, 1, 1),
                block_dim: (ATT_THREADS, 1, 1),
                shared_mem_bytes: ATT_SMEM,
            })?;
        let max_cluster = if fits > 0 { ATT_MAX_CLUSTER } else { 8 };
        Ok(MsaAttention {
            k_partial,
            max_cluster,
            k_combine: gpu.kernel("msa_attention_combine", 0)?,
            row_info: gpu.zeros(words_of::<RowInfo>(max_rows))?,
            block_major: MsaBlockMajor::new(gpu, cfg.n_heads, cfg.n_kv_heads, cfg.topk, max_rows)?,
            part_lse_off: Self::decode_layout(part_cap, cfg.n_heads, cfg.head_dim).0,
            scratch,
            gpu: gpu.clone(),
            cfg,
            max_rows,
            part_cap,
            plan: None,
            force_parts: None,
            force_path: None,
            window: None,
            graph: GraphState::new(),
        })
    }

    /// The configuration the op was created with.
    pub fn config(&self) -> &MsaAttentionConfig {
        &self.cfg
    }

    /// Partitions of the current plan.
    pub fn partitions(&self) -> Option<usize> {
        self.plan.as_ref().map(|p| p.parts)
    }

    /// Overrides the split-K rule (clamped to 1 ..= min(32, topk)); `None`
    /// restores it. For tests and benchmarks.
    pub fn force_partitions(&mut self, parts: Option<usize>) {
        self.force_parts = parts;
    }

    /// Overrides the path rule ([`attention_path`]); `None` restores it. For
    /// tests and benchmarks.
    pub fn force_path(&mut self, path: Option<AttentionPath>) {
        self.force_path = path;
    }

    /// Overrides the block-major plan's window of rows (`BM_WINDOW`); for
    /// benchmarks. Takes effect at the next `plan`.
    pub fn force_block_major_window(&mut self, rows: Option<usize>) {
        self.window = rows;
    }

    /// Path of the current plan.
    pub fn path(&self) -> Option<AttentionPath> {
        self.plan.as_ref().map(|p| p.path)
    }

    /// The workspace the op's scratch lives in.
    pub fn workspace(&self) -> &Workspace {
        self.scratch.workspace()
    }

    /// Graph mode (`Some(max_context)`, see [`crate::graph`]): decode
    /// launches carry the plan's epoch and write NaN when replayed after an
    /// incompatible plan; `plan` fails for a sequence longer than
    /// `max_context` keys. `None`: ordinary mode. Clears the plan.
    pub fn set_graph_bounds(&mut self, max_context: Option<usize>) -> Result<()> {
        self.plan = None;
        self.graph.set_bounds(&self.gpu, max_context)
    }

    /// The graph-mode bound, if set.
    pub fn graph_bounds(&self) -> Option<usize> {
        self.graph.max_context()
    }

    /// The current plan's [`GraphKey`] (`None` without a plan); see
    /// [`crate::graph`]. A block-major (prefill) plan always gets a new one.
    pub fn graph_key(&self) -> Option<GraphKey> {
        self.graph.key(self.plan.is_some())
    }

    /// Whether a graph captured when [`MsaAttention::graph_key`] was `key`
    /// is still valid for the current plan.
    pub fn capture_compatible(&self, key: GraphKey) -> bool {
        self.graph_key() == Some(key)
    }

    /// Graph mode: whether a replayed launch found its plan stale since the
    /// last call (it then wrote NaN); clears the flag. Waits for the
    /// stream. Always `false` outside graph mode.
    pub fn take_graph_fault(&mut self) -> Result<bool> {
        self.graph.fault(&self.gpu, true)
    }

    /// Makes every earlier plan's graph-mode launches stale and the key new.
    pub(crate) fn invalidate_graphs(&mut self) -> Result<()> {
        self.graph.invalidate(&self.gpu)
    }

    /// Validates a ragged batch against the cache and uploads its rows'
    /// positions. `layout` is the main KV pool's shape (all layers: `run`
    /// picks one).
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        pages: &PageTable,
        layout: &PagedLayout,
    ) -> Result<()> {
        self.plan = None;
        let r = self.plan_inner(batch, pages, layout);
        if r.is_err() {
            self.graph.clear();
            self.graph.invalidate(&self.gpu)?;
        }
        r
    }

    fn plan_inner(
        &mut self,
        batch: &RaggedBatch,
        pages: &PageTable,
        layout: &PagedLayout,
    ) -> Result<()> {
        validate_attention(&self.cfg, batch, pages, layout)?;
        if let Some(max_context) = self.graph.max_context() {
            ensure(
                batch.max_seqlen_k() <= max_context as u64,
                "cache_lengths",
                || format!("sequences of at most max_context = {max_context} keys (graph bounds)"),
                || format!("a sequence of {} keys", batch.max_seqlen_k()),
            )?;
        }
        let (n, rows, cfg) = (batch.batch(), batch.num_rows(), &self.cfg);
        ensure(
            rows <= self.max_rows,
            "input_row_offsets",
            || format!("at most max_rows = {} rows", self.max_rows),
            || rows.to_string(),
        )?;
        let path = self
            .force_path
            .unwrap_or_else(|| attention_path(batch.max_q_len()));
        let (key_base, keys, _) = match path {
            AttentionPath::BlockMajor => {
                plan_keys(batch, self.window.unwrap_or(BM_WINDOW as usize))
            }
            AttentionPath::QueryMajor => (vec![0; rows], Vec::new(), 0),
        };
        let info = row_infos(batch, &key_base);
        if rows > 0 {
            let words = record_words(&info);
            self.gpu
                .stream()
                .memcpy_htod(words, &mut self.row_info.slice_mut(..words.len()))
                .during(|| "uploading the row positions".into())?;
        }
        if path == AttentionPath::BlockMajor {
            self.block_major.plan(
                &self.gpu,
                &keys,
                rows,
                cfg.n_kv_heads,
                cfg.topk,
                cfg.group(),
            )?;
        }
        let parts = self.plan_partitions(rows, path)?;
        let plan = Plan {
            batch: n,
            rows,
            max_pages: pages.max_pages,
            layout: *layout,
            parts,
            path,
        };
        // A block-major plan's launches follow the contexts (plan keys,
        // CSR sizes): never the same as the last plan's.
        let moved = path == AttentionPath::BlockMajor;
        self.graph.planned(&self.gpu, plan.clone(), moved, 0)?;
        self.plan = Some(plan);
        Ok(())
    }

    /// Split-K partitions of each (row, KV head) for `rows` rows: the
    /// decode rule (or the forced count), within the workspace. A
    /// partition stages at most `ATT_MAX_SLOTS` slots. Partitions that do
    /// not merge inside a cluster write partials, which must fit in the
    /// workspace's `part_cap` (rows × partitions); one partition, or a
    /// cluster's worth, writes `out` directly.
    fn plan_partitions(&self, rows: usize, path: AttentionPath) -> Result<usize> {
        let cfg = &self.cfg;
        let rule = decode_partitions(
            self.gpu.props().sm_count as usize,
            rows,
            cfg.n_kv_heads,
            cfg.topk,
        );
        let min_parts = cfg.topk.div_ceil(ATT_MAX_SLOTS as usize).max(1);
        let fit = (ATT_MAX_PARTS as usize).min(self.part_cap / rows.max(1));
        let parts = self
            .force_parts
            .map_or(rule, |p| p.clamp(1, (ATT_MAX_PARTS as usize).min(cfg.topk)))
            .min(fit.max(1))
            .max(min_parts);
        let direct = parts == 1 || parts <= self.max_cluster as usize;
        ensure(
            path != AttentionPath::QueryMajor || direct || parts <= fit,
            "topk",
            || {
                format!(
                    "at most {} for {rows} rows ({} slots in each of at most {} partitions)",
                    ATT_MAX_SLOTS as usize * fit.max(self.max_cluster as usize),
                    ATT_MAX_SLOTS,
                    fit.max(self.max_cluster as usize),
                )
            },
            || cfg.topk.to_string(),
        )?;
        Ok(parts)
    }

    /// `lookup` and `d_indices` have the planned sizes.
    fn check_selections(&self, p: &Plan, lookup: usize, d_indices: usize) -> Result<()> {
        let c = &self.cfg;
        expect_len("lookup", lookup, p.batch * p.max_pages, "batch * max_pages")?;
        expect_len(
            "d_indices",
            d_indices,
            c.n_kv_heads * p.rows * c.topk,
            "n_kv_heads * num_rows * topk",
        )
    }

    fn block_major_args(&self, p: &Plan, layer: usize) -> BlockMajorArgs {
        let c = &self.cfg;
        BlockMajorArgs {
            num_rows: p.rows as u32,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            topk: c.topk as u32,
            cache: Self::paged_kv(p, layer),
            scale: c.scale,
        }
    }

    /// The main cache's layer `layer` as the kernels see it.
    fn paged_kv(p: &Plan, layer: usize) -> PagedKv {
        PagedKv {
            num_pages: p.layout.num_pages as u32,
            max_pages: p.max_pages as u32,
            page_stride: p.layout.page_stride() as u64,
            k_off: p.layout.layer_offset(0, layer) as u64,
            v_off: p.layout.layer_offset(1, layer) as u64,
        }
    }

    /// Launches only the device-side CSR plan of a block-major plan (count,
    /// scan, scatter), for timing it apart; `run` launches it too.
    pub fn run_device_plan<L, D>(&self, lookup: &L, d_indices: &D) -> Result<()>
    where
        L: DevicePtr<u32> + ?Sized,
        D: DevicePtr<i32> + ?Sized,
    {
        let p = self.plan.as_ref().ok_or(Error::NotPlanned {
            op: "msa_attention",
        })?;
        self.check_selections(p, lookup.len(), d_indices.len())?;
        if p.path != AttentionPath::BlockMajor {
            return Ok(());
        }
        let mut b = Bufs::new(&self.gpu);
        let r = BlockMajorPtrs {
            q: DPtr::NULL,
            kv: DPtr::NULL,
            lookup: b.input("lookup", lookup)?,
            d_indices: b.input("d_indices", d_indices)?,
            row_info: b.rec(&self.row_info),
            out: DPtrMut::NULL,
            lse: DPtrMut::NULL,
            ws: b.workspace(self.scratch.workspace()),
        };
        self.block_major
            .device_plan(&mut b, &self.block_major_args(p, 0), &r)
    }

    /// Launches the attention for the current plan on layer `layer` of
    /// the pool. `lse`, when given, receives the natural-log sum of
    /// exponentials per (row, head). Buffers may be slices, views
    /// (sub-ranges) or [`crate::RawBuffer`]s (see [`crate::buffer`]).
    #[allow(clippy::too_many_arguments)] // the op's six tensors and the layer
    pub fn run<Q, K, L, D, O>(
        &self,
        q: &Q,
        kv_cache: &K,
        lookup: &L,
        d_indices: &D,
        layer: usize,
        out: &mut O,
        lse: Option<&mut dyn DevicePtrMut<f32>>,
    ) -> Result<()>
    where
        Q: DevicePtr<bf16> + ?Sized,
        K: DevicePtr<bf16> + ?Sized,
        L: DevicePtr<u32> + ?Sized,
        D: DevicePtr<i32> + ?Sized,
        O: DevicePtrMut<bf16> + ?Sized,
    {
        let p = self.plan.as_ref().ok_or(Error::NotPlanned {
            op: "msa_attention",
        })?;
        p.layout.check_layer(layer)?;
        let c = &self.cfg;
        let (rows, heads) = (p.rows, c.n_heads);
        expect_len(
            "q",
            q.len(),
            rows * heads * c.head_dim,
            "num_rows * n_heads * head_dim",
        )?;
        expect_len(
            "kv_cache",
            kv_cache.len(),
            p.layout.elements(),
            "the planned layout",
        )?;
        self.check_selections(p, lookup.len(), d_indices.len())?;
        expect_len(
            "out",
            out.len(),
            rows * heads * c.head_dim,
            "num_rows * n_heads * head_dim",
        )?;
        if let Some(l) = lse.as_deref() {
            expect_len("lse", l.len(), rows * heads, "num_rows * n_heads")?;
        }
        let mut b = Bufs::new(&self.gpu);
        let r = BlockMajorPtrs {
            q: b.input("q", q)?,
            kv: b.input("kv_cache", kv_cache)?,
            lookup: b.input("lookup", lookup)?,
            d_indices: b.input("d_indices", d_indices)?,
            row_info: b.rec(&self.row_info),
            out: b.output("out", out)?,
            lse: b.opt_output("lse", lse)?,
            ws: b.workspace(self.scratch.workspace()),
        };
        if rows == 0 {
            return Ok(());
        }
        if p.path == AttentionPath::BlockMajor {
            let args = self.block_major_args(p, layer);
            return self.block_major.run(&mut b, &args, &r);
        }
        self.launch_decode(&mut b, p, &r, layer)
    }

    /// The query-major (decode) kernel, and the combine kernel when the
    /// partitions do not merge inside a cluster. Up to `max_cluster`
    /// partitions merge inside a thread-block cluster; more write partials
    /// that the combine kernel merges (and then it writes `out` and `lse`).
    fn launch_decode<'a>(
        &'a self,
        b: &mut Bufs<'a>,
        p: &Plan,
        r: &BlockMajorPtrs,
        layer: usize,
    ) -> Result<()> {
        let (gpu, c) = (&self.gpu, &self.cfg);
        let parts = p.parts as u32;
        let clustered = parts > 1 && parts <= self.max_cluster;
        let (part_o, part_lse) = (r.ws, r.ws + self.part_lse_off as u64);
        let params = MsaDecodeParams {
            q: r.q,
            kv: r.kv,
            lookup: r.lookup,
            d_indices: r.d_indices,
            row_info: r.row_info,
            part_o: DPtrMut::new(part_o),
            part_lse: DPtrMut::new(part_lse),
            out: r.out,
            lse: if parts == 1 || clustered {
                r.lse
            } else {
                Default::default()
            },
            cache: Self::paged_kv(p, layer),
            num_rows: p.rows as u32,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            topk: c.topk as u32,
            parts,
            scale: c.scale,
            clustered: clustered as u32,
            graph: self.graph.header().map_or(DPtrMut::NULL, |h| b.rec_mut(h)),
            graph_epoch: self.graph.epoch(),
        };
        let cfg = LaunchConfig {
            grid_dim: (params.num_rows * params.n_kv_heads * parts, 1, 1),
            block_dim: (ATT_THREADS, 1, 1),
            shared_mem_bytes: ATT_SMEM,
        };
        let mut l = gpu.launch(&self.k_partial, "the MSA decode kernel", &params);
        if clustered {
            l.cluster(parts);
        }
        // SAFETY: all lengths were checked against the plan; the kernel clamps
        // page ids and skips block ids outside the sequence.
        unsafe { l.run(cfg) }?;
        if parts > 1 && !clustered {
            let cp = MsaCombineParams {
                part_o: DPtr::new(part_o),
                part_lse: DPtr::new(part_lse),
                out: params.out,
                lse: r.lse,
                num_rows: params.num_rows,
                n_heads: params.n_heads,
                parts,
            };
            let cfg = LaunchConfig {
                grid_dim: (cp.num_rows * cp.n_heads, 1, 1),
                block_dim: (MSA_HEAD_DIM, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; the partial buffers hold `parts` partitions.
            unsafe {
                gpu.launch(&self.k_combine, "the MSA combine kernel", &cp)
                    .run(cfg)
            }?;
        }
        Ok(())
    }
}
