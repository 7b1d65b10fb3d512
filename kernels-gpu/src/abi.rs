//! Launch ABI shared by the kernels and the host: tile shapes, shared-memory
//! sizes and the layout of work items. The host crate compiles this file too
//! so both sides always agree. Plain constants only (no dependencies).

/// Tokens per KV block; equals the page size of the MSA caches.
pub const MSA_BLOCK: u32 = 128;
/// Head dimension of the MSA kernels (index-K and main KV).
pub const MSA_HEAD_DIM: u32 = 128;

/// Threads per CTA of the indexer score kernels (4 warps).
pub const IDX_THREADS: u32 = 128;
/// Shared-memory pipeline depth of the indexer score kernels: one 32 KiB
/// index-K block per stage, `IDX_STAGES - 1` blocks in flight while one is
/// computed. Not swept: 3 stages (96 KiB) still let 2 CTAs share an SM, and
/// idx-decode-b64-32k already reads at 94% of the copy bandwidth.
pub const IDX_STAGES: u32 = 3;
/// Bytes of one index-K block (128 tokens × 128 dims × bf16).
pub const IDX_BLOCK_BYTES: u32 = MSA_BLOCK * MSA_HEAD_DIM * 2;
/// Prefill score kernel: M rows (query rows × index heads, flattened) per CTA;
/// each of the 4 warps owns two 16-row m-tiles.
pub const IDX_PREFILL_M_ROWS: u32 = 128;
/// Decode score kernel: all index heads of one query share one 16-row m-tile,
/// so at most 16 index heads.
pub const IDX_MAX_HEADS: u32 = 16;
/// Score kernels: most blocks one work item may cover (the page ids of an
/// item are staged in shared memory; decode also sizes its cross-warp
/// reduction buffer by it). Longer items are cut (the host never plans them).
pub const IDX_MAX_ITEM_BLOCKS: u32 = 64;
/// Words per work item: `[seq, row0, nrows, qpos0, blk0, blk1, 0, 0]`: rows
/// `row0 .. row0 + nrows` of sequence `seq` (query positions `qpos0 ..`)
/// against KV blocks `blk0 .. blk1`.
pub const IDX_ITEM_WORDS: usize = 8;
/// Dynamic shared memory of the prefill score kernel: the stages, then the
/// item's page ids.
pub const IDX_SMEM_PREFILL: u32 = IDX_STAGES * IDX_BLOCK_BYTES + IDX_MAX_ITEM_BLOCKS * 4;
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
/// Bytes of one stage: the K or the V of a 128-token block of one KV head.
pub const ATT_STAGE_BYTES: u32 = IDX_BLOCK_BYTES;
/// Most selected slots one partition takes (their pages are staged in
/// shared memory as (page, block) pairs); bounds `topk`.
pub const ATT_MAX_SLOTS: u32 = 256;
/// Dynamic shared memory of the decode attention kernel.
pub const ATT_SMEM: u32 = ATT_STAGES * ATT_STAGE_BYTES + ATT_MAX_SLOTS * 8;
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
/// Words per query row of the attention's `row_info`:
/// `[sequence, seqlen_k, q_pos, key_base]` (`key_base`: the prefill plan's
/// key of block 0 of the row's (window, sequence); see `msa_prefill`).
pub const ATT_ROW_WORDS: usize = 4;

/// KV-block-major prefill (`msa_prefill`): threads of the run kernel (4
/// warps; each warp computes one 16-row m-tile of (query, head) rows at a
/// time against the CTA's K/V block).
pub const PF_THREADS: u32 = 128;
/// m-tiles of one work item: a work item's K/V block (64 KiB) is loaded once
/// and used for up to `PF_ITEM_TILES * (16 / group)` queries (128 for group
/// 16). Measured (H100, 2026-11-24, µs for 32/64/128 tiles, mma.sync run):
/// msa-prefill-8k 2606/2513/2454, msa-prefill-32k 11277/10832/10670; with the
/// wgmma run, 64 vs 128: 2088/2046 and 9106/8975. 128 kept; shared memory then
/// allows just 2 CTAs per SM.
pub const PF_ITEM_TILES: u32 = 128;
/// Query rows per plan window: the CSR is keyed by (KV head, window of
/// `PF_WINDOW` consecutive rows, sequence, block), so the work items that run
/// together read the queries of one window (a few MiB that stay in L2).
/// Measured (H100, 2026-11-24; BENCHMARKS.md has the tables): with the
/// mma.sync run all four of 256/512/1024/2048 rows were within the spread;
/// with the wgmma run, 512 vs 1024: msa-prefill-8k 1866/1870 vs 1861/1868 µs,
/// msa-prefill-32k 8508/8609 vs 8239/8294 µs. 1024 kept.
pub const PF_WINDOW: u32 = 1024;
/// Dynamic shared memory of the run kernel: the K and V tiles of the block,
/// two 4 KiB query tiles per warp (the next one streams in while the
/// current one is computed; a used one stages the output tile), the item's
/// edges, a 16-entry table of m-tile rows.
pub const PF_SMEM: u32 =
    2 * IDX_BLOCK_BYTES + (PF_THREADS / 32) * 2 * PF_Q_TILE_BYTES + PF_MAX_ITEM_EDGES * 8 + 64;
/// Most edges of one work item (group 1: 16 rows per m-tile); the run stages
/// each edge's `(row << 8 | slot, q_pos)` in shared memory.
pub const PF_MAX_ITEM_EDGES: u32 = PF_ITEM_TILES * 16;
/// Bytes of one 16-row query tile (16 × 128 bf16).
pub const PF_Q_TILE_BYTES: u32 = 16 * MSA_HEAD_DIM * 2;
/// Words per work item: `[key, edge0, edge1, page]` (16-byte aligned).
pub const PF_ITEM_WORDS: usize = 4;
/// Words per plan key: `[sequence, block, seqlen_k, 0]`.
pub const PF_KEY_WORDS: usize = 4;
/// Threads of the single-CTA scan kernel.
pub const PF_SCAN_THREADS: u32 = 1024;
/// Threads per CTA of the count / scatter kernels (one edge per thread).
pub const PF_EDGE_THREADS: u32 = 256;
/// Warps per CTA of the combine kernel (one warp per (row, head)). 8 measured
/// slower (H100, 2026-11-24: msa-prefill-8k 1893 and 1899 µs against 1861 and
/// 1868 µs with 4).
pub const PF_COMBINE_WARPS: u32 = 4;
