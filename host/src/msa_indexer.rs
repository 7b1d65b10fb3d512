//! MSA indexer (`mo.msa.indexer.ragged.paged`): top-k KV blocks per (index
//! head, query token) from the paged index-K cache. Semantics:
//! `shared/spec/msa-indexer.md`; kernels: `kernels-gpu/src/msa_indexer.rs`.
//!
//! ```text
//! q         bf16 [num_rows, num_index_heads, 128]
//! k_cache   bf16 [num_pages, 1, num_layers, 128, 1, 128]   (index-K, page = block = 128 tokens)
//! lookup    u32  [batch, max_pages]
//! out_idxs  i32  [num_index_heads, num_rows, topk]         (-1 padded)
//! ```
//!
//! Plan/run split (as FlashInfer): [`MsaIndexer::plan`] validates the host
//! copies of the metadata and uploads the work list into the op's plan
//! buffers; [`MsaIndexer::run`] only launches (two kernels on the stream,
//! no host synchronisation, no allocation), so it can be captured in a CUDA
//! graph and replayed while the plan stays valid. The plan does not depend
//! on the layer: one plan per step serves every layer (`run` takes it).
//! A plan holds until the next `plan`; it is invalidated by nothing else
//! (the device page table must keep holding what `plan` was given).
//!
//! Graph mode ([`MsaIndexer::set_graph_bounds`]; the contract is
//! [`crate::graph`]'s): the score grid and the score stride are fixed by
//! the bound on the context, the live item count is read from a device
//! header `plan` rewrites in place, so a captured `run` can be replayed
//! while the sequences grow; [`MsaIndexer::graph_key`] says when a new
//! capture is needed.
//!
//! The block scores live in a [`Workspace`] (scratch; see
//! [`crate::workspace`]): the op's own ([`MsaIndexer::new`]) or the
//! caller's ([`MsaIndexer::new_in`], sized by
//! [`MsaIndexer::workspace_size`]).
//!
//! Choices where the spec is silent (documented here and in the kernels):
//! a block's score is the IEEE maxNum over its visible keys (a NaN product
//! loses to a number; a block of only NaN products scores NaN and ranks last);
//! `-0.0` and `+0.0` tie; forced init/local blocks are selected first even if
//! `topk` is smaller than their number (init before local, lower id first).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

pub use crate::abi::config::MsaIndexerConfig;
use crate::abi::msa::*;
use crate::abi::{DPtr, DPtrMut, PagedKv};
use crate::batch::{
    CacheExpect, ConfigExt, KvDtype, PageTable, PageTableExt, PagedLayout, PagedLayoutExt,
    RaggedBatch, RaggedBatchExt,
};
use crate::error::{ensure, expect_len, CudaContextExt, Error, Result};
use crate::graph::{GraphKey, GraphState};
use crate::launch::{record_words, words_of, Bufs, Kernel};
use crate::workspace::{align_up, grow, Scratch, Workspace};
use crate::Gpu;

/// Which score kernel a plan uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexerPath {
    /// Every sequence has at most one new token and there are at most 16
    /// index heads (`IDX_MAX_HEADS`: one 16-row tile holds a query's heads):
    /// the 4 warps of a CTA split each block's keys, and long contexts are
    /// split across CTAs.
    Decode,
    /// Tiles of `128 / num_index_heads` query rows against their blocks
    /// (every batch: prefill, and decode with more than 16 index heads).
    Prefill,
}

/// What the current plan launches (in graph mode: the bounds' grid and
/// stride, not the batch's).
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    path: IndexerPath,
    batch: usize,
    num_rows: usize,
    max_pages: usize,
    layout: PagedLayout,
    n_items: usize,
    score_stride: usize,
}

/// The MSA indexer with its workspace. Create once, `plan` when the batch
/// changes, `run` every step.
pub struct MsaIndexer {
    gpu: Gpu,
    cfg: MsaIndexerConfig,
    k_prefill: Kernel<IdxScoreParams>,
    k_decode: Kernel<IdxScoreParams>,
    k_topk: Kernel<IdxTopkParams>,
    k_topk_long: Kernel<IdxTopkParams>,
    /// Work items ([`IdxWorkItem`] as words; grows, never shrinks).
    items: CudaSlice<u32>,
    /// Query position of every row `[num_rows]`.
    row_qpos: CudaSlice<u32>,
    /// Block scores `[H, num_rows, score_stride]` f32, at the start of the
    /// workspace.
    scratch: Scratch,
    plan: Option<Plan>,
    decode_chunk: Option<usize>,
    force_path: Option<IndexerPath>,
    graph: GraphState<Plan>,
}

/// Decode split: blocks per work item, from the total work and the SM count.
/// Enough items for ~4 CTAs per SM (2 resident, 96 KiB each), at least 4
/// blocks per item so the pipeline ramps up, at most the reduction buffer.
///
/// Measured (H100, 2026-11-24, `bench --sweep-chunk`, µs per call by blocks
/// per item 2/4/8/16/32/64): b64-32k 200/194/194/195/194/194 (flat once the
/// GPU is full); b1-128k 27.0/26.6/26.5/27.3/32.7/50.3 (one wave needs
/// >= 128 items). The rule gives 32 and 4 for these.
pub fn decode_chunk(total_blocks: usize, sm_count: usize) -> usize {
    total_blocks
        .div_ceil(4 * sm_count.max(1))
        .clamp(4, IDX_MAX_ITEM_BLOCKS as usize)
}

/// Most survivors the long-row top-k keeps (64 KiB of shared memory: rows of
/// up to 1M tokens at top-64, longer ones fall back to the warp top-k).
const LONG_CAP_MAX: u32 = 8192;

/// Prefill split: most blocks per work item, so that the long rows at the end
/// of a causal prompt are spread over several CTAs. Not swept yet (chosen so
/// an 8K prompt gives ~1.5 waves of 2 CTAs per SM).
const PREFILL_CHUNK: usize = 32;

impl MsaIndexer {
    /// Loads the kernels and checks the configuration. Allocates nothing
    /// large: the private workspace grows at the first `plan` (and
    /// [`Self::reserve`]).
    pub fn new(gpu: &Gpu, cfg: MsaIndexerConfig) -> Result<Self> {
        let scratch = Scratch::private(gpu, 1)?;
        Self::with_scratch(gpu, cfg, scratch)
    }

    /// [`MsaIndexer::new`] over the caller's workspace (shared with other
    /// ops on the same stream; see [`crate::workspace`]): the op allocates
    /// no scratch, and `plan` fails (naming `workspace`) when a batch needs
    /// more than [`MsaIndexer::workspace_size`] of its rows and context
    /// gives, i.e. more than the workspace holds.
    pub fn new_in(gpu: &Gpu, cfg: MsaIndexerConfig, workspace: &Workspace) -> Result<Self> {
        let scratch = Scratch::shared(gpu, workspace, 0)?;
        Self::with_scratch(gpu, cfg, scratch)
    }

    /// Bytes of workspace the runs of batches within the bounds need: at
    /// most `max_rows` query rows (new tokens of the batch) whose sequences
    /// have at most `max_context` keys (`cache_length + q_len`, the
    /// longest sequence). The block scores: `4 * num_index_heads * max_rows
    /// * ceil(max_context / 128)` bytes (64 KiB for M3, 128 rows of 32K).
    pub fn workspace_size(cfg: &MsaIndexerConfig, max_rows: usize, max_context: usize) -> usize {
        let blocks = max_context.div_ceil(MSA_BLOCK as usize).max(1);
        Self::scores_bytes(cfg.num_index_heads, max_rows, blocks)
    }

    fn scores_bytes(heads: usize, rows: usize, stride: usize) -> usize {
        align_up(4 * heads * rows * stride)
    }

    fn with_scratch(gpu: &Gpu, cfg: MsaIndexerConfig, scratch: Scratch) -> Result<Self> {
        cfg.validate()?;
        Ok(MsaIndexer {
            k_prefill: gpu.kernel("msa_indexer_scores_prefill", IDX_SMEM_PREFILL)?,
            k_decode: gpu.kernel("msa_indexer_scores_decode", IDX_SMEM_DECODE)?,
            k_topk: gpu.kernel("msa_indexer_topk", 0)?,
            k_topk_long: gpu.kernel("msa_indexer_topk_long", idx_smem_topk_long(LONG_CAP_MAX))?,
            items: gpu.zeros(words_of::<IdxWorkItem>(1))?,
            row_qpos: gpu.zeros(1)?,
            scratch,
            gpu: gpu.clone(),
            cfg,
            plan: None,
            decode_chunk: None,
            force_path: None,
            graph: GraphState::new(),
        })
    }

    /// The configuration the op was created with.
    pub fn config(&self) -> &MsaIndexerConfig {
        &self.cfg
    }

    /// Path of the current plan, if any.
    pub fn path(&self) -> Option<IndexerPath> {
        self.plan.as_ref().map(|p| p.path)
    }

    /// Number of CTAs the score kernel of the current plan launches.
    pub fn work_items(&self) -> usize {
        self.plan.as_ref().map_or(0, |p| p.n_items)
    }

    /// Overrides the decode split (blocks per work item); `None` restores the
    /// tuned rule. For benchmarks and tests.
    pub fn set_decode_chunk(&mut self, blocks: Option<usize>) {
        self.decode_chunk = blocks.map(|b| b.clamp(1, IDX_MAX_ITEM_BLOCKS as usize));
    }

    /// Forces the score kernel (`None`: decode when every sequence has at
    /// most one new token and `num_index_heads <= 16`, else prefill). Both paths compute
    /// the same op; tests use this to compare them.
    pub fn force_path(&mut self, path: Option<IndexerPath>) {
        self.force_path = path;
    }

    /// Sizes the plan buffers (and a private workspace) for up to
    /// `max_rows` query rows of at most `max_context` tokens each, so later
    /// plans within that do not allocate. With a caller's workspace, fails
    /// unless it holds [`MsaIndexer::workspace_size`] of these bounds.
    pub fn reserve(&mut self, max_rows: usize, max_context: usize) -> Result<()> {
        let blocks = max_context.div_ceil(MSA_BLOCK as usize).max(1);
        let items = max_rows * blocks.div_ceil(4) + 1;
        self.grow(
            items,
            max_rows,
            Self::workspace_size(&self.cfg, max_rows, max_context),
        )
        .map(|_| ())
    }

    /// Graph mode (`Some(max_context)`): grids, strides and buffers for
    /// sequences of at most `max_context` keys, the live counts read from
    /// device memory, and replays of stale launches refused on the device
    /// (see [`crate::graph`]); `plan` then fails for a longer sequence.
    /// `None`: ordinary mode (every grid fitted to the batch). Clears the
    /// plan.
    pub fn set_graph_bounds(&mut self, max_context: Option<usize>) -> Result<()> {
        self.plan = None;
        self.graph.set_bounds(&self.gpu, max_context)
    }

    /// The graph-mode bound, if set.
    pub fn graph_bounds(&self) -> Option<usize> {
        self.graph.max_context()
    }

    /// The current plan's [`GraphKey`] (`None` without a plan): a graph
    /// captured under a key may be replayed after later plans while the
    /// key stays the same ([`crate::graph`]).
    pub fn graph_key(&self) -> Option<GraphKey> {
        self.graph.key(self.plan.is_some())
    }

    /// Whether a graph captured when [`MsaIndexer::graph_key`] was `key`
    /// is still valid for the current plan.
    pub fn capture_compatible(&self, key: GraphKey) -> bool {
        self.graph_key() == Some(key)
    }

    /// Graph mode: whether a replayed launch found its plan stale since the
    /// last call (it then wrote `-1` selections); clears the flag. Waits for
    /// the stream. Always `false` outside graph mode.
    pub fn take_graph_fault(&mut self) -> Result<bool> {
        self.graph.fault(&self.gpu, true)
    }

    /// Makes every earlier plan's graph-mode launches stale and the key
    /// new (a composite op whose other half changed).
    pub(crate) fn invalidate_graphs(&mut self) -> Result<()> {
        self.graph.invalidate(&self.gpu)
    }

    /// Makes room; whether a buffer moved (was reallocated).
    fn grow(&mut self, items: usize, rows: usize, scores_bytes: usize) -> Result<bool> {
        let a = grow(&self.gpu, &mut self.items, words_of::<IdxWorkItem>(items))?;
        let b = grow(&self.gpu, &mut self.row_qpos, rows)?;
        Ok(self.scratch.fit(&self.gpu, scores_bytes)? | a | b)
    }

    /// The workspace the block scores live in.
    pub fn workspace(&self) -> &Workspace {
        self.scratch.workspace()
    }

    /// Validates the batch, the page table and the cache shape, builds the
    /// work list ([`plan_work`]) and uploads it. `batch`, `pages` are host
    /// copies of what `run` will receive on the device; `layout` is the
    /// index-K pool's shape (all layers: `run` picks one).
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
        let opts = PlanOptions {
            sm_count: self.gpu.props().sm_count as usize,
            decode_chunk: self.decode_chunk,
            force_path: self.force_path,
        };
        let w = plan_work(&self.cfg, batch, pages, layout, &opts)?;
        let num_rows = w.row_qpos.len();
        let h = self.cfg.num_index_heads;
        // Graph mode: the grid and the stride of the bound, not the batch's.
        let (grid, score_stride) = match self.graph.max_context() {
            None => (w.items.len(), w.score_stride),
            Some(max_context) => {
                ensure(
                    batch.max_seqlen_k() <= max_context as u64,
                    "cache_lengths",
                    || {
                        format!(
                            "sequences of at most max_context = {max_context} keys (graph bounds)"
                        )
                    },
                    || format!("a sequence of {} keys", batch.max_seqlen_k()),
                )?;
                let grid = graph_grid(&self.cfg, batch, &opts, w.path, max_context);
                ensure(
                    w.items.len() <= grid,
                    "max_context",
                    || format!("a batch of at most {grid} work items (the graph-mode grid)"),
                    || w.items.len().to_string(),
                )?;
                (grid, max_context.div_ceil(MSA_BLOCK as usize).max(1))
            }
        };
        let moved = self.grow(
            grid.max(1),
            num_rows.max(1),
            Self::scores_bytes(h, num_rows, score_stride),
        )?;
        let flat = record_words(&w.items);
        if !flat.is_empty() {
            let stream = self.gpu.stream().clone();
            stream
                .memcpy_htod(flat, &mut self.items.slice_mut(..flat.len()))
                .during(|| "uploading the indexer work list".into())?;
            stream
                .memcpy_htod(&w.row_qpos, &mut self.row_qpos.slice_mut(..num_rows))
                .during(|| "uploading the indexer row positions".into())?;
        }
        let plan = Plan {
            path: w.path,
            batch: batch.batch(),
            num_rows,
            max_pages: pages.max_pages,
            layout: *layout,
            n_items: grid,
            score_stride,
        };
        self.graph
            .planned(&self.gpu, plan.clone(), moved, w.items.len() as u32)?;
        self.plan = Some(plan);
        Ok(())
    }

    /// Launches the score and top-k kernels for the current plan on layer
    /// `layer` of the pool.
    ///
    /// `q`: `[num_rows, H, 128]`, `k_cache`: the whole index-K pool,
    /// `lookup`: the device page table (must hold what `plan` was given),
    /// `out`: `[H, num_rows, topk]`. Every element of `out` is written.
    /// Buffers may be slices, views (sub-ranges) or [`crate::RawBuffer`]s
    /// (see [`crate::buffer`]).
    pub fn run<Q, K, L, O>(
        &self,
        q: &Q,
        k_cache: &K,
        lookup: &L,
        layer: usize,
        out: &mut O,
    ) -> Result<()>
    where
        Q: DevicePtr<bf16> + ?Sized,
        K: DevicePtr<bf16> + ?Sized,
        L: DevicePtr<u32> + ?Sized,
        O: DevicePtrMut<i32> + ?Sized,
    {
        let p = self
            .plan
            .as_ref()
            .ok_or(Error::NotPlanned { op: "msa_indexer" })?;
        p.layout.check_layer(layer)?;
        let (h, d, topk) = (self.cfg.num_index_heads, self.cfg.head_dim, self.cfg.topk);
        let q_want = p.num_rows * h * d;
        expect_len(
            "q",
            q.len(),
            q_want,
            "num_rows * num_index_heads * head_dim",
        )?;
        expect_len(
            "k_cache",
            k_cache.len(),
            p.layout.elements(),
            "the planned layout",
        )?;
        expect_len(
            "lookup",
            lookup.len(),
            p.batch * p.max_pages,
            "batch * max_pages",
        )?;
        let out_want = h * p.num_rows * topk;
        expect_len(
            "out_idxs",
            out.len(),
            out_want,
            "num_index_heads * num_rows * topk",
        )?;
        let mut b = Bufs::new(&self.gpu);
        let ptrs = RunPtrs {
            q: b.input("q", q)?,
            k_cache: b.input("k_cache", k_cache)?,
            lookup: b.input("lookup", lookup)?,
            out: b.output("out_idxs", out)?,
            scores: DPtrMut::new(b.workspace(self.scratch.workspace())),
        };
        if p.num_rows == 0 {
            return Ok(());
        }
        if p.n_items > 0 {
            self.launch_scores(&mut b, p, &ptrs, layer)?;
        }
        self.launch_topk(&mut b, p, &ptrs)
    }

    /// The score kernel of the plan's path: one CTA per work item.
    fn launch_scores<'a>(
        &'a self,
        b: &mut Bufs<'a>,
        p: &Plan,
        r: &RunPtrs,
        layer: usize,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let (kernel, smem) = match p.path {
            IndexerPath::Decode => (&self.k_decode, IDX_SMEM_DECODE),
            IndexerPath::Prefill => (&self.k_prefill, IDX_SMEM_PREFILL),
        };
        let params = IdxScoreParams {
            q: r.q,
            k_cache: r.k_cache,
            lookup: r.lookup,
            items: b.rec(&self.items),
            scores: r.scores,
            cache: PagedKv {
                num_pages: p.layout.num_pages as u32,
                max_pages: p.max_pages as u32,
                page_stride: p.layout.page_stride() as u64,
                k_off: p.layout.layer_offset(0, layer) as u64,
                v_off: 0,
            },
            n_items: p.n_items as u32,
            num_rows: p.num_rows as u32,
            num_index_heads: self.cfg.num_index_heads as u32,
            batch: p.batch as u32,
            score_stride: p.score_stride as u32,
            scale: self.cfg.scale,
            graph: self.graph.header().map_or(DPtrMut::NULL, |h| b.rec_mut(h)),
            graph_epoch: self.graph.epoch(),
        };
        let cfg = LaunchConfig {
            grid_dim: (params.n_items, 1, 1),
            block_dim: (IDX_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: every buffer length was checked against the plan, and the
        // kernel clamps all metadata it reads.
        unsafe {
            gpu.launch(kernel, "the indexer score kernel", &params)
                .run(cfg)
        }
    }

    /// The top-k kernel: one warp per (head, row), or for long rows one CTA
    /// per (head, row) that ranks the keys above a bound (at most `cap`
    /// survive; see the kernel).
    fn launch_topk<'a>(&'a self, b: &mut Bufs<'a>, p: &Plan, r: &RunPtrs) -> Result<()> {
        let (h, topk) = (self.cfg.num_index_heads as u32, self.cfg.topk as u32);
        let stride = p.score_stride as u32;
        let cap = topk * stride.div_ceil(IDX_TOPK_WARPS * 32);
        let long = stride > IDX_TOPK_LONG_FROM && topk <= IDX_TOPK_LONG_MAX && cap <= LONG_CAP_MAX;
        let params = IdxTopkParams {
            scores: DPtr::new(r.scores.addr()),
            row_qpos: b.r(&self.row_qpos),
            out: r.out,
            num_rows: p.num_rows as u32,
            num_index_heads: h,
            score_stride: stride,
            topk,
            init_blocks: self.cfg.init_blocks as u32,
            local_blocks: self.cfg.local_blocks as u32,
            cap,
            graph: self.graph.header().map_or(DPtrMut::NULL, |h| b.rec_mut(h)),
            graph_epoch: self.graph.epoch(),
        };
        let pairs = h * params.num_rows;
        let (kernel, grid, smem) = if long {
            (&self.k_topk_long, pairs, idx_smem_topk_long(cap))
        } else {
            (&self.k_topk, pairs.div_ceil(IDX_TOPK_WARPS), 0)
        };
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (IDX_TOPK_WARPS * 32, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: as above; `out` holds H * num_rows * topk elements.
        unsafe {
            self.gpu
                .launch(kernel, "the indexer top-k kernel", &params)
                .run(cfg)
        }
    }
}

/// The addresses of one `run`'s buffers (their guards held by its [`Bufs`]).
struct RunPtrs {
    q: DPtr<u16>,
    k_cache: DPtr<u16>,
    lookup: DPtr<u32>,
    out: DPtrMut<i32>,
    scores: DPtrMut<f32>,
}

/// Graph mode's score grid for a batch of `batch`'s sequences and rows
/// whose contexts are at most `max_context` keys: a bound on the work
/// items [`plan_work`] makes for any such batch with the same sequences,
/// rows and path (the CTAs past the live items return).
///
/// Decode, one item per `chunk` blocks of a row: `sum_r ceil(nb_r / c) <
/// total / c + rows`. With the tuned chunk `c = clamp(ceil(total / (4 *
/// SMs)), 4, 64)`, `total / c <= 4 * SMs` unless `c` is 64, where `total /
/// 64 <= rows * max_blocks / 64`; with any chunk `>= 4`, at most `rows *
/// ceil(max_blocks / 4)`. Prefill: tiles of `128 / heads` rows, at most
/// `rows / tile_rows + batch` of them, each cut into `ceil(max_blocks /
/// 32)` items at most.
pub fn graph_grid(
    cfg: &MsaIndexerConfig,
    batch: &RaggedBatch,
    opts: &PlanOptions,
    path: IndexerPath,
    max_context: usize,
) -> usize {
    let max_blocks = max_context.div_ceil(MSA_BLOCK as usize).max(1);
    let rows = batch.num_rows();
    match path {
        IndexerPath::Decode => match opts.decode_chunk {
            Some(c) => rows * max_blocks.div_ceil(c.clamp(1, IDX_MAX_ITEM_BLOCKS as usize)),
            None => {
                let tuned = (4 * opts.sm_count.max(1))
                    .max(rows * max_blocks.div_ceil(IDX_MAX_ITEM_BLOCKS as usize))
                    + rows;
                tuned.min(rows * max_blocks.div_ceil(4))
            }
        },
        IndexerPath::Prefill => {
            let tile_rows = IDX_PREFILL_M_ROWS as usize / cfg.num_index_heads;
            (rows.div_ceil(tile_rows) + batch.batch()) * max_blocks.div_ceil(PREFILL_CHUNK)
        }
    }
}

/// Knobs of [`plan_work`] besides the op's inputs.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Streaming multiprocessors of the device (sizes the decode split).
    pub sm_count: usize,
    /// Blocks per decode work item (`None`: [`decode_chunk`]'s rule).
    pub decode_chunk: Option<usize>,
    /// Score kernel to use (`None`: chosen from the batch).
    pub force_path: Option<IndexerPath>,
}

/// The host half of a plan: what the kernels will be given.
#[derive(Clone, Debug)]
pub struct WorkList {
    /// The score kernel the plan uses.
    pub path: IndexerPath,
    /// One work item per CTA, longest first.
    pub items: Vec<IdxWorkItem>,
    /// Query position of every row.
    pub row_qpos: Vec<u32>,
    /// Row stride of the score buffer: the most blocks any row sees.
    pub score_stride: usize,
}

/// Validates every input of the op (the spec's "bad input" list) and builds
/// the work list. Pure host code: no device is touched.
pub fn plan_work(
    cfg: &MsaIndexerConfig,
    batch: &RaggedBatch,
    pages: &PageTable,
    layout: &PagedLayout,
    opts: &PlanOptions,
) -> Result<WorkList> {
    validate_indexer(cfg, batch, pages, layout)?;
    let path = choose_path(cfg.num_index_heads, batch, opts)?;
    let blocks_of = |qpos: usize| qpos / MSA_BLOCK as usize + 1;
    let total_blocks: usize = (0..batch.batch())
        .filter(|&b| batch.q_len(b) > 0)
        .map(|b| blocks_of(batch.seqlen_k(b) as usize - 1))
        .sum();
    let (chunk, tile_rows) = match path {
        IndexerPath::Decode => {
            let c = opts
                .decode_chunk
                .unwrap_or_else(|| decode_chunk(total_blocks, opts.sm_count));
            (c.clamp(1, IDX_MAX_ITEM_BLOCKS as usize), 1)
        }
        IndexerPath::Prefill => (
            PREFILL_CHUNK,
            IDX_PREFILL_M_ROWS as usize / cfg.num_index_heads,
        ),
    };
    let mut w = WorkList {
        path,
        items: Vec::new(),
        row_qpos: Vec::with_capacity(batch.num_rows()),
        score_stride: 1,
    };
    for b in 0..batch.batch() {
        let (cache_len, q_len) = (batch.cache_lengths[b] as usize, batch.q_len(b));
        let off = batch.input_row_offsets[b] as usize;
        w.row_qpos
            .extend((0..q_len).map(|i| (cache_len + i) as u32));
        for r0 in (0..q_len).step_by(tile_rows) {
            let nrows = tile_rows.min(q_len - r0);
            let nb = blocks_of(cache_len + r0 + nrows - 1);
            w.score_stride = w.score_stride.max(nb);
            for c0 in (0..nb).step_by(chunk) {
                let c1 = (c0 + chunk).min(nb);
                let qpos0 = cache_len + r0;
                w.items.push(IdxWorkItem {
                    seq: b as u32,
                    row0: (off + r0) as u32,
                    nrows: nrows as u32,
                    qpos0: qpos0 as u32,
                    blk0: c0 as u32,
                    blk1: c1 as u32,
                    _pad: [0; 2],
                });
            }
        }
    }
    // Longest items first, so the tail of the grid is short ones.
    w.items.sort_by_key(|it| std::cmp::Reverse(it.blocks()));
    Ok(w)
}

/// The configuration, the batch, the index-K cache's layout and the page
/// table, each against the spec (the first bad one is the error).
fn validate_indexer(
    cfg: &MsaIndexerConfig,
    batch: &RaggedBatch,
    pages: &PageTable,
    layout: &PagedLayout,
) -> Result<()> {
    cfg.validate()?;
    batch.validate()?;
    layout.check_shape(&CacheExpect {
        dtypes: &[KvDtype::Bf16],
        name: "k_cache",
        shape: "an index-K cache [num_pages, 1, num_layers, page_size, 1, head_dim]",
        kv_dim: 1,
        n_heads: 1,
        head_dim: cfg.head_dim,
        page_size: cfg.block_size,
    })?;
    pages.validate(batch, layout)?;
    let num_rows = batch.num_rows();
    ensure(
        num_rows
            .checked_mul(cfg.num_index_heads)
            .is_some_and(|m| m < i32::MAX as usize),
        "input_row_offsets",
        || "num_rows * num_index_heads below 2^31".into(),
        || format!("{num_rows} * {}", cfg.num_index_heads),
    )
}

/// The kernel path for `batch` with `h` index heads: decode batches (one
/// new token per sequence) take the decode kernel when its single m-tile
/// holds all index heads; with more heads the prefill kernel serves them
/// (same op, one row per tile). A forced path must suit the batch.
fn choose_path(h: usize, batch: &RaggedBatch, opts: &PlanOptions) -> Result<IndexerPath> {
    let decode_fits = batch.max_q_len() <= 1 && h <= IDX_MAX_HEADS as usize;
    let path = match opts.force_path {
        Some(p) => p,
        None if decode_fits => IndexerPath::Decode,
        None => IndexerPath::Prefill,
    };
    if path == IndexerPath::Decode {
        ensure(
            batch.max_q_len() <= 1,
            "input_row_offsets",
            || "at most one new token per sequence on the decode path".into(),
            || format!("a sequence with {} new tokens", batch.max_q_len()),
        )?;
        if h > IDX_MAX_HEADS as usize {
            return Err(Error::Unsupported {
                arg: "num_index_heads",
                what: format!(
                    "{h} heads on the forced decode path: its kernel holds all heads of a query in \
                     one 16-row tile (at most {IDX_MAX_HEADS}); the default path choice runs such \
                     batches on the prefill kernel"
                ),
            });
        }
    }
    Ok(path)
}
