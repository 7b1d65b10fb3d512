//! The MSA kernels (MiniMax-M3 sparse attention): tile shapes, shared-memory
//! sizes, work records and parameter structs of the three families
//!
//! - the indexer (`IDX_*`, [`IdxScoreParams`], [`IdxTopkParams`]),
//! - the query-major (decode) attention (`ATT_*`, [`MsaDecodeParams`],
//!   [`MsaCombineParams`]),
//! - the block-major (prefill) attention (`BM_*`, [`BlockMajorEdgeParams`],
//!   [`BlockMajorScanParams`], [`BlockMajorRunParams`],
//!   [`BlockMajorCombineParams`]).
//!
//! Each tuning constant carries the measurements behind it.

use crate::{kernel_params, Bf16Bits, DPtr, DPtrMut, PagedKv};

/// Tokens per KV block; equals the page size of the MSA caches.
pub const MSA_BLOCK: u32 = 128;
/// Head dimension of the MSA kernels (index-K and main KV).
pub const MSA_HEAD_DIM: u32 = 128;
/// Bytes of one 128-token block of one head (128 × 128 bf16): an index-K
/// block, or the K or the V tile of one KV head.
pub const MSA_BLOCK_BYTES: u32 = MSA_BLOCK * MSA_HEAD_DIM * 2;

// ------------------------------------------------------------------ indexer

/// Threads per CTA of the indexer score kernels (4 warps).
pub const IDX_THREADS: u32 = 128;
/// Shared-memory pipeline depth of the indexer score kernels: one 32 KiB
/// index-K block per stage, `IDX_STAGES - 1` blocks in flight while one is
/// computed. Not swept: 3 stages (96 KiB) still let 2 CTAs share an SM, and
/// idx-decode-b64-32k already reads at 94% of the copy bandwidth.
pub const IDX_STAGES: u32 = 3;
/// Prefill score kernel: M rows (query rows × index heads, flattened) per CTA;
/// each of the 4 warps owns two 16-row m-tiles.
pub const IDX_PREFILL_M_ROWS: u32 = 128;
/// Decode score kernel: all index heads of one query share one 16-row m-tile,
/// so at most 16 index heads there (the prefill kernel takes up to
/// [`IDX_PREFILL_M_ROWS`]; the host routes decode batches with more heads to
/// it).
pub const IDX_MAX_HEADS: u32 = 16;
/// Score kernels: most blocks one work item may cover (the page ids of an
/// item are staged in shared memory; decode also sizes its cross-warp
/// reduction buffer by it). Longer items are cut (the host never plans them).
pub const IDX_MAX_ITEM_BLOCKS: u32 = 64;
/// Dynamic shared memory of the prefill score kernel: the stages, then the
/// item's page ids.
pub const IDX_SMEM_PREFILL: u32 = IDX_STAGES * MSA_BLOCK_BYTES + IDX_MAX_ITEM_BLOCKS * 4;
/// Dynamic shared memory of the decode score kernel: as prefill, then the
/// `[blocks, warps, 16]` f32 cross-warp reduction buffer.
pub const IDX_SMEM_DECODE: u32 = IDX_SMEM_PREFILL + IDX_MAX_ITEM_BLOCKS * 4 * 16 * 4;
/// Top-k kernel: one warp per (index head, query row), 4 warps per CTA.
pub const IDX_TOPK_WARPS: u32 = 4;
/// Top-k kernel: most keys a lane keeps in registers; rows with more than
/// `32 * IDX_TOPK_KEYS_PER_LANE` blocks (1024 × 128 = 128K tokens) still work,
/// re-reading the excess from memory on every pick (slower).
pub const IDX_TOPK_KEYS_PER_LANE: u32 = 32;
/// Long-row top-k (`msa_indexer_topk_long`, one CTA per row): most `topk`
/// it takes.
pub const IDX_TOPK_LONG_MAX: u32 = 64;
/// Dynamic shared memory of the long-row top-k for `cap` survivors:
/// `[threads]` u64 maxima, a u64 bound, a u32 count (padded), `[cap]` u64.
pub const fn idx_smem_topk_long(cap: u32) -> u32 {
    IDX_TOPK_WARPS * 32 * 8 + 16 + cap * 8
}
/// Rows with more blocks than this use the long-row top-k (when `topk` allows).
pub const IDX_TOPK_LONG_FROM: u32 = 256;

/// One CTA's work in the indexer score kernels: rows `row0 .. row0 + nrows`
/// of sequence `seq` (query positions `qpos0 ..`) against KV blocks
/// `blk0 .. blk1`. The kernels clamp every field to the shapes.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdxWorkItem {
    /// Sequence (row of the page table).
    pub seq: u32,
    /// First query row.
    pub row0: u32,
    /// Query rows.
    pub nrows: u32,
    /// Query position of `row0`.
    pub qpos0: u32,
    /// First KV block.
    pub blk0: u32,
    /// One past the last KV block.
    pub blk1: u32,
    /// Padding to 32 bytes (two 16-byte loads).
    pub _pad: [u32; 2],
}

impl IdxWorkItem {
    /// Blocks the item covers.
    pub const fn blocks(&self) -> u32 {
        self.blk1 - self.blk0
    }
}

/// The device-side header of an op in graph mode (`set_graph_bounds`): what
/// `plan` changes between steps that a captured launch must not bake in.
/// `plan` rewrites `epoch` and `n_items` in place (same address every
/// step); the kernels read them at run time.
///
/// The guard: a launch carries the `epoch` of the plan it was enqueued
/// under (`graph_epoch` in its parameters). `plan` keeps the epoch while
/// the launches it would enqueue are the same (grids, by-value parameters,
/// buffer addresses) and changes it otherwise, and invalidates it when it
/// fails. A kernel that finds another epoch here than its own was replayed
/// from a graph its op's plan no longer matches: it sets `fault` and
/// writes no result (the indexer's top-k writes `-1`, the attention
/// NaN), never stale or misplaced values.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphHeader {
    /// The plan's epoch (see above).
    pub epoch: u32,
    /// Indexer score kernels: live work items (CTAs past it return); the
    /// grid is the bound's.
    pub n_items: u32,
    /// Set to 1 by a kernel that found a stale epoch; sticky (only the host
    /// clears it; `plan` does not touch it).
    pub fault: u32,
    /// Padding to 16 bytes (one load).
    pub _pad: u32,
}

/// Word of [`GraphHeader::fault`] (the host reads and clears it alone).
pub const GRAPH_FAULT_WORD: usize = 2;

/// Parameters of `msa_indexer_scores_prefill` / `_decode`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IdxScoreParams {
    /// bf16 `[num_rows, num_index_heads, 128]`.
    pub q: DPtr<Bf16Bits>,
    /// The bf16 index-K pool; block of page `p` at `p * page_stride + k_off`.
    pub k_cache: DPtr<Bf16Bits>,
    /// `u32 [batch, max_pages]` page ids (clamped below `num_pages`).
    pub lookup: DPtr<u32>,
    /// `[n_items]` work items.
    pub items: DPtr<IdxWorkItem>,
    /// f32 `[num_index_heads, num_rows, score_stride]` block scores.
    pub scores: DPtrMut<f32>,
    /// The index-K pool's layer.
    pub cache: PagedKv,
    /// Work items (the grid).
    pub n_items: u32,
    /// Query rows of the batch.
    pub num_rows: u32,
    /// Index heads.
    pub num_index_heads: u32,
    /// Sequences (rows of `lookup`).
    pub batch: u32,
    /// Row stride of `scores`: the most blocks any row sees.
    pub score_stride: u32,
    /// Multiplies every q·k (any finite value; a negative one is folded into q).
    pub scale: f32,
    /// Graph mode: the op's [`GraphHeader`] (live item count, epoch guard);
    /// null: ordinary mode, `n_items` is the item count.
    pub graph: DPtrMut<GraphHeader>,
    /// Graph mode: the epoch of the plan this launch was enqueued under.
    pub graph_epoch: u32,
}

/// Parameters of `msa_indexer_topk` and `msa_indexer_topk_long`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IdxTopkParams {
    /// f32 `[num_index_heads, num_rows, score_stride]` from a score kernel.
    pub scores: DPtr<f32>,
    /// `[num_rows]` query position of each row (`num_blocks = q_pos / 128 +
    /// 1`, clamped to `score_stride`).
    pub row_qpos: DPtr<u32>,
    /// i32 `[num_index_heads, num_rows, topk]`: descending score, ties by
    /// lower id, `-1` padding.
    pub out: DPtrMut<i32>,
    /// Query rows.
    pub num_rows: u32,
    /// Index heads.
    pub num_index_heads: u32,
    /// Row stride of `scores`.
    pub score_stride: u32,
    /// Blocks kept per (head, row).
    pub topk: u32,
    /// Leading blocks forced in (score 1e30).
    pub init_blocks: u32,
    /// Trailing blocks forced in (score 1e29).
    pub local_blocks: u32,
    /// Long-row kernel only: most survivors its shared memory holds.
    pub cap: u32,
    /// Graph mode: the op's [`GraphHeader`] (epoch guard); null: none.
    pub graph: DPtrMut<GraphHeader>,
    /// Graph mode: the epoch of the plan this launch was enqueued under.
    pub graph_epoch: u32,
}

// ------------------------------------------------------------------ query-major attention (decode)

/// Threads per CTA of the MSA decode attention kernel (4 warps; each owns 32
/// keys of every block).
pub const ATT_THREADS: u32 = 128;
/// Pipeline depth of the decode attention kernel, in half-steps: a stage
/// holds the K or the V tile of one block (32 KiB), two are in flight while
/// one is computed. 3 × 32 KiB lets 2 CTAs share an SM (the M3 b64 batch,
/// 256 CTAs, then runs in one wave instead of two). Deeper does not pay where
/// it fits: 6 stages for grids of one CTA per SM measured msa-decode-tp8 at
/// 37.3 µs either way (H200, 2026-11-30).
pub const ATT_STAGES: u32 = 3;
/// Most selected slots one partition takes: one thread of the decode CTA
/// stages each slot's (page, block) pair in shared memory. `topk` is split
/// into at least `topk / ATT_MAX_SLOTS` partitions, so it is bounded by
/// `ATT_MAX_SLOTS * ATT_MAX_PARTS`. (It was 256 with 128 threads: slots
/// 128.. of a partition were never staged.)
pub const ATT_MAX_SLOTS: u32 = ATT_THREADS;
/// Largest `topk` the attention takes (MiniMax-M3 uses 16; a decode batch
/// with `topk > ATT_MAX_SLOTS` needs two partitions a row, which the
/// partials' workspace bounds: see `MsaAttention::plan`).
pub const ATT_MAX_TOPK: u32 = 2 * ATT_MAX_SLOTS;
/// Dynamic shared memory of the decode attention kernel.
pub const ATT_SMEM: u32 = ATT_STAGES * MSA_BLOCK_BYTES + ATT_MAX_SLOTS * 8;
/// Most query heads per KV head (the M rows of one mma tile).
pub const ATT_MAX_GROUP: u32 = 16;
/// Most split-K partitions of one (sequence, KV head).
pub const ATT_MAX_PARTS: u32 = 32;
/// Most partitions merged inside a thread-block cluster; more go through
/// `msa_attention_combine`. 16 is above the portable cluster size (8): the
/// host asks the driver whether clusters of 16 of the decode kernel fit and
/// caps at 8 otherwise. Measured (H200, 2026-11-30): msa-decode-b1-128k, 16
/// partitions, 9.9–10.0 µs per call merged in clusters of 16 against
/// 11.1 µs through the combine kernel; 8 partitions in clusters of 8,
/// 10.7 µs.
pub const ATT_MAX_CLUSTER: u32 = 16;

/// A query row of the attention: its sequence, that sequence's `seqlen_k`,
/// the row's query position (keys `pos <= q_pos` are visible; decode:
/// `seqlen_k - 1`) and, for the block-major path, the plan key of block 0
/// of the row's (window, sequence).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowInfo {
    /// Sequence (row of the page table).
    pub seq: u32,
    /// Keys of the sequence (`cache_len + q_len`).
    pub seqlen_k: u32,
    /// Absolute position of the row.
    pub q_pos: u32,
    /// Block-major path: plan key of block 0 of the row's (window, sequence).
    pub key_base: u32,
}

/// Parameters of `msa_attention_partial` (the decode kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MsaDecodeParams {
    /// bf16 `[num_rows, n_heads, 128]`.
    pub q: DPtr<Bf16Bits>,
    /// bf16 main cache `[num_pages, 2, layers, 128, n_kv_heads, 128]`; K of
    /// token `s` of page `p` for head `kh` at `p * page_stride + k_off + (s *
    /// n_kv_heads + kh) * 128`, V at `v_off`.
    pub kv: DPtr<Bf16Bits>,
    /// `u32 [batch, max_pages]`.
    pub lookup: DPtr<u32>,
    /// i32 `[n_kv_heads, num_rows, topk]` block ids (`-1`: none).
    pub d_indices: DPtr<i32>,
    /// `[num_rows]`.
    pub row_info: DPtr<RowInfo>,
    /// f32 `[parts, num_rows, n_heads, 128]`: written when `parts > 1` and
    /// not `clustered`.
    pub part_o: DPtrMut<f32>,
    /// f32 `[parts, num_rows, n_heads]` log2-sum-exp, as `part_o`.
    pub part_lse: DPtrMut<f32>,
    /// bf16 `[num_rows, n_heads, 128]`: written when `parts == 1` or `clustered`.
    pub out: DPtrMut<Bf16Bits>,
    /// f32 `[num_rows, n_heads]` natural-log LSE, as `out`; null: not written.
    pub lse: DPtrMut<f32>,
    /// The main cache's layer.
    pub cache: PagedKv,
    /// Query rows.
    pub num_rows: u32,
    /// Query heads.
    pub n_heads: u32,
    /// KV heads.
    pub n_kv_heads: u32,
    /// Slots of `d_indices` per (KV head, row).
    pub topk: u32,
    /// Split-K partitions per (row, KV head).
    pub parts: u32,
    /// Multiplies every q·k.
    pub scale: f32,
    /// 1: the `parts` CTAs of a (row, KV head) form a thread-block cluster
    /// (`parts <= ATT_MAX_CLUSTER`) and merge through distributed shared
    /// memory; 0: partials go to `part_o` / `part_lse` (or straight to `out`
    /// when `parts == 1`).
    pub clustered: u32,
    /// Graph mode: the op's [`GraphHeader`] (epoch guard: a stale launch
    /// writes NaN); null: none.
    pub graph: DPtrMut<GraphHeader>,
    /// Graph mode: the epoch of the plan this launch was enqueued under.
    pub graph_epoch: u32,
}

/// Parameters of `msa_attention_combine`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MsaCombineParams {
    /// f32 `[parts, num_rows, n_heads, 128]` normalised partials.
    pub part_o: DPtr<f32>,
    /// f32 `[parts, num_rows, n_heads]` their log2-sum-exp.
    pub part_lse: DPtr<f32>,
    /// bf16 `[num_rows, n_heads, 128]`.
    pub out: DPtrMut<Bf16Bits>,
    /// f32 `[num_rows, n_heads]` natural log, or null.
    pub lse: DPtrMut<f32>,
    /// Query rows.
    pub num_rows: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Partitions to merge (at most [`ATT_MAX_PARTS`]).
    pub parts: u32,
}

// ------------------------------------------------------------------ block-major attention (prefill)

/// Threads of the block-major run kernel: one warpgroup (4 warps), which
/// multiplies 4 m-tiles of 16 (query, head) rows at a time with `wgmma`.
pub const BM_THREADS: u32 = 128;
/// m-tiles of one work item: a work item's K/V block (64 KiB) is loaded once
/// and used for up to `BM_ITEM_TILES * (16 / group)` queries (128 for group
/// 16). Measured (H100, 2026-11-24, µs for 32/64/128 tiles, mma.sync run):
/// msa-prefill-8k 2606/2513/2454, msa-prefill-32k 11277/10832/10670; with the
/// wgmma run, 64 vs 128: 2088/2046 and 9106/8975. 128 kept; shared memory then
/// allows just 2 CTAs per SM.
pub const BM_ITEM_TILES: u32 = 128;
/// Query rows per plan window: the CSR is keyed by (KV head, window of
/// `BM_WINDOW` consecutive rows, sequence, block), so the work items that run
/// together read the queries of one window (a few MiB that stay in L2).
/// Measured (H100, 2026-11-24; BENCHMARKS.md has the tables): with the
/// mma.sync run all four of 256/512/1024/2048 rows were within the spread;
/// with the wgmma run, 512 vs 1024: msa-prefill-8k 1866/1870 vs 1861/1868 µs,
/// msa-prefill-32k 8508/8609 vs 8239/8294 µs. 1024 kept.
pub const BM_WINDOW: u32 = 1024;
/// Most edges of one work item (group 1: 16 rows per m-tile); the run stages
/// each edge in shared memory.
pub const BM_MAX_ITEM_EDGES: u32 = BM_ITEM_TILES * 16;
/// Bytes of one 16-row query tile (16 × 128 bf16).
pub const BM_Q_TILE_BYTES: u32 = 16 * MSA_HEAD_DIM * 2;
/// Dynamic shared memory of the run kernel: the K and V tiles of the block,
/// two query tiles per warp, the item's edges and the m-tile row table
/// (the kernel's shared-memory map asserts it).
pub const BM_SMEM: u32 =
    2 * MSA_BLOCK_BYTES + (BM_THREADS / 32) * 2 * BM_Q_TILE_BYTES + BM_MAX_ITEM_EDGES * 8 + 16 * 4;
/// Threads of the single-CTA scan kernel.
pub const BM_SCAN_THREADS: u32 = 1024;
/// Threads per CTA of the count / scatter kernels (one edge per thread).
pub const BM_EDGE_THREADS: u32 = 256;
/// Warps per CTA of the combine kernel (one warp per (row, head)). 8 measured
/// slower (H100, 2026-11-24: msa-prefill-8k 1893 and 1899 µs against 1861 and
/// 1868 µs with 4).
pub const BM_COMBINE_WARPS: u32 = 4;

/// A key of the block-major plan: (KV head, window, sequence, block) flattened
/// as `kh * n_keys + row.key_base + block`; this record describes the
/// (window, sequence, block) part.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanKey {
    /// Sequence (row of the page table).
    pub seq: u32,
    /// KV block of the sequence.
    pub block: u32,
    /// Keys of the sequence.
    pub seqlen_k: u32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// One CTA's work in the block-major run: edges `edge0 .. edge1` of the
/// CSR list of plan key `key`, whose block is pool page `page`.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockMajorItem {
    /// Plan key (KV head included).
    pub key: u32,
    /// First edge (CSR position).
    pub edge0: u32,
    /// One past the last edge.
    pub edge1: u32,
    /// The key's pool page (clamped by the run).
    pub page: u32,
}

/// One edge of the CSR: query row `row` chose the key's block in `slot`;
/// `q_pos` is that row's position.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanEdge {
    /// `(row << 8) | slot`.
    pub row_slot: u32,
    /// The row's query position.
    pub q_pos: u32,
}

impl PlanEdge {
    /// The edge of (`row`, `slot`) at position `q_pos` (`slot < 256`).
    #[inline(always)]
    pub const fn new(row: u32, slot: u32, q_pos: u32) -> Self {
        PlanEdge {
            row_slot: (row << 8) | slot,
            q_pos,
        }
    }

    /// The query row.
    #[inline(always)]
    pub const fn row(self) -> u32 {
        self.row_slot >> 8
    }

    /// The slot of `d_indices` that chose the block.
    #[inline(always)]
    pub const fn slot(self) -> u32 {
        self.row_slot & 255
    }
}

/// Parameters of `msa_block_major_count` and `msa_block_major_scatter`
/// (one thread per (KV head, row, slot) edge).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockMajorEdgeParams {
    /// i32 `[n_kv_heads, num_rows, topk]`.
    pub d_indices: DPtr<i32>,
    /// `[num_rows]`.
    pub row_info: DPtr<RowInfo>,
    /// Count: edges per plan key `[n_kv_heads * n_keys]` (zero on entry).
    pub counts: DPtrMut<u32>,
    /// Count writes, scatter reads: each edge's place in its key's list
    /// `[n_kv_heads * num_rows * topk]`.
    pub ranks: DPtrMut<u32>,
    /// Scatter: CSR offset of every key (from the scan).
    pub offsets: DPtr<u32>,
    /// Scatter: the CSR lists.
    pub edges: DPtrMut<PlanEdge>,
    /// Query rows.
    pub num_rows: u32,
    /// KV heads.
    pub n_kv_heads: u32,
    /// Slots per (KV head, row).
    pub topk: u32,
    /// Plan keys per KV head.
    pub n_keys: u32,
    /// Row stride of the page table (bounds the block ids).
    pub max_pages: u32,
}

/// Parameters of `msa_block_major_scan` (one CTA of [`BM_SCAN_THREADS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockMajorScanParams {
    /// `[n_kv_heads * n_keys]` edge counts; zeroed by the scan.
    pub counts: DPtrMut<u32>,
    /// `[n_kv_heads * n_keys]` CSR offsets.
    pub offsets: DPtrMut<u32>,
    /// Work items of at most `item_edges` edges.
    pub items: DPtrMut<BlockMajorItem>,
    /// `[1]`: how many items the scan wrote.
    pub n_items: DPtrMut<u32>,
    /// `[n_keys]`.
    pub keys: DPtr<PlanKey>,
    /// `u32 [batch, max_pages]`.
    pub lookup: DPtr<u32>,
    /// Plan keys of all KV heads (`n_kv_heads * n_keys`).
    pub total_keys: u32,
    /// Plan keys per KV head.
    pub n_keys: u32,
    /// Row stride of `lookup`.
    pub max_pages: u32,
    /// Pages of the pool (page ids are clamped below it).
    pub num_pages: u32,
    /// Most edges per work item.
    pub item_edges: u32,
}

/// Parameters of `msa_block_major_run`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockMajorRunParams {
    /// bf16 `[num_rows, n_heads, 128]`.
    pub q: DPtr<Bf16Bits>,
    /// The main K/V pool (as [`MsaDecodeParams::kv`]).
    pub kv: DPtr<Bf16Bits>,
    /// `[n_keys]`.
    pub keys: DPtr<PlanKey>,
    /// Work items from the scan (the grid is their bound).
    pub items: DPtr<BlockMajorItem>,
    /// `[1]`: the scan's item count (CTAs past it return).
    pub n_items: DPtr<u32>,
    /// The CSR lists.
    pub edges: DPtr<PlanEdge>,
    /// bf16 `[num_rows, topk, n_heads, 128]`: the edge's `sum_k exp2(s_k -
    /// m) v_k` over its block, unnormalised (the combine divides once).
    pub part_o: DPtrMut<Bf16Bits>,
    /// f32 `[num_rows, topk, n_heads, 2]`: the edge's `m` (its block's row
    /// maximum, `scale · q·k · log2 e` domain) and `l = sum_k exp2(s_k - m)`.
    pub part_ml: DPtrMut<f32>,
    /// The main cache's layer.
    pub cache: PagedKv,
    /// Query heads.
    pub n_heads: u32,
    /// KV heads.
    pub n_kv_heads: u32,
    /// Plan keys per KV head.
    pub n_keys: u32,
    /// Slots per (KV head, row).
    pub topk: u32,
    /// Multiplies every q·k (finite, > 0).
    pub scale: f32,
}

/// Parameters of `msa_block_major_combine` (one warp per (row, head)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockMajorCombineParams {
    /// As [`BlockMajorRunParams::part_o`].
    pub part_o: DPtr<Bf16Bits>,
    /// As [`BlockMajorRunParams::part_ml`].
    pub part_ml: DPtr<f32>,
    /// i32 `[n_kv_heads, num_rows, topk]` (which slots are attended).
    pub d_indices: DPtr<i32>,
    /// `[num_rows]`.
    pub row_info: DPtr<RowInfo>,
    /// bf16 `[num_rows, n_heads, 128]`.
    pub out: DPtrMut<Bf16Bits>,
    /// f32 `[num_rows, n_heads]` natural log, or null.
    pub lse: DPtrMut<f32>,
    /// Query rows.
    pub num_rows: u32,
    /// Query heads.
    pub n_heads: u32,
    /// KV heads.
    pub n_kv_heads: u32,
    /// Slots per (KV head, row).
    pub topk: u32,
    /// Row stride of the page table (bounds the block ids).
    pub max_pages: u32,
}

kernel_params! {
    IdxScoreParams => ["msa_indexer_scores_prefill", "msa_indexer_scores_decode"],
    IdxTopkParams => ["msa_indexer_topk", "msa_indexer_topk_long"],
    MsaDecodeParams => ["msa_attention_partial"],
    MsaCombineParams => ["msa_attention_combine"],
    BlockMajorEdgeParams => ["msa_block_major_count", "msa_block_major_scatter"],
    BlockMajorScanParams => ["msa_block_major_scan"],
    BlockMajorRunParams => ["msa_block_major_run"],
    BlockMajorCombineParams => ["msa_block_major_combine"],
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// The records' sizes and alignments are what the kernels load them
    /// with (`ld_record`: one or two 16-byte loads, one 8-byte load).
    #[test]
    fn records_have_their_load_sizes() {
        assert_eq!(
            (size_of::<IdxWorkItem>(), align_of::<IdxWorkItem>()),
            (32, 16)
        );
        assert_eq!((size_of::<RowInfo>(), align_of::<RowInfo>()), (16, 16));
        assert_eq!(
            (size_of::<GraphHeader>(), align_of::<GraphHeader>()),
            (16, 16)
        );
        assert_eq!(
            core::mem::offset_of!(GraphHeader, fault),
            4 * GRAPH_FAULT_WORD
        );
        assert_eq!((size_of::<PlanKey>(), align_of::<PlanKey>()), (16, 16));
        assert_eq!(
            (size_of::<BlockMajorItem>(), align_of::<BlockMajorItem>()),
            (16, 16)
        );
        assert_eq!((size_of::<PlanEdge>(), align_of::<PlanEdge>()), (8, 8));
    }

    #[test]
    fn plan_edges_pack_row_and_slot() {
        let e = PlanEdge::new(123_456, 255, 7);
        assert_eq!((e.row(), e.slot(), e.q_pos), (123_456, 255, 7));
        assert_eq!(PlanEdge::new(1, 0, 0).row_slot, 256);
    }
}
