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
/// computed.
pub const IDX_STAGES: u32 = 3;
/// Bytes of one index-K block (128 tokens × 128 dims × bf16).
pub const IDX_BLOCK_BYTES: u32 = MSA_BLOCK * MSA_HEAD_DIM * 2;
/// Prefill score kernel: M rows (query rows × index heads, flattened) per CTA;
/// each of the 4 warps owns two 16-row m-tiles.
pub const IDX_PREFILL_M_ROWS: u32 = 128;
/// Decode score kernel: all index heads of one query share one 16-row m-tile,
/// so at most 16 index heads.
pub const IDX_MAX_HEADS: u32 = 16;
/// Decode score kernel: most blocks one work item may cover (size of the
/// cross-warp reduction buffer).
pub const IDX_DECODE_MAX_ITEM_BLOCKS: u32 = 64;
/// Words per work item: `[seq, row0, nrows, qpos0, blk0, blk1, 0, 0]`: rows
/// `row0 .. row0 + nrows` of sequence `seq` (query positions `qpos0 ..`)
/// against KV blocks `blk0 .. blk1`.
pub const IDX_ITEM_WORDS: usize = 8;
/// Dynamic shared memory of the prefill score kernel.
pub const IDX_SMEM_PREFILL: u32 = IDX_STAGES * IDX_BLOCK_BYTES;
/// Dynamic shared memory of the decode score kernel: stages plus the
/// `[blocks, warps, 16]` f32 cross-warp reduction buffer.
pub const IDX_SMEM_DECODE: u32 = IDX_SMEM_PREFILL + IDX_DECODE_MAX_ITEM_BLOCKS * 4 * 16 * 4;
/// Top-k kernel: one warp per (index head, query row), 4 warps per CTA.
pub const IDX_TOPK_WARPS: u32 = 4;
/// Top-k kernel: keys each lane keeps in registers; rows with more than
/// `32 * IDX_TOPK_KEYS_PER_LANE` blocks (4096 × 128 = 512K tokens) still work,
/// re-reading the excess from memory on every pick (slower).
pub const IDX_TOPK_KEYS_PER_LANE: u32 = 32;
