//! The MLA FP8 lightning indexer (`shared/spec/mla-fp8-indexer.md`): the
//! logits kernel's tile shapes, shared memory, work record and parameters.
//!
//! The logits are a small GEMM per query row, `[heads, 128] · [128, keys]`
//! in e4m3. The kernel turns it around so that the head reduction stays
//! inside a thread: `wgmma` M is 64 **keys** (A: the K tile, from
//! registers), N is 128 **(token, head) columns** of a Q tile (B, from
//! shared memory: `128 / heads` tokens of all their heads), K = 128 dims.
//! A thread then holds, for each of its two keys, the dots of 32 columns,
//! and the ReLU-weighted head sum is 32 fused multiply-adds and two quad
//! shuffles per key and token.
//!
//! A CTA takes one [`MlaWork`] item: up to `MI_Q_TILES · 128 / heads`
//! consecutive query rows of one sequence and a range of key tiles. A
//! producer warp brings its Q tiles once and the K tiles
//! ([`MI_BLOCK_N`] keys, with their scales) through a ring of
//! [`MI_STAGES`] stages with TMA; [`MI_CONSUMERS`] consumer warpgroups take
//! 64 keys of each tile.

use crate::{kernel_params, DPtr, DPtrMut};

/// Dimensions of a q or k row (e4m3 bytes: one 128-byte swizzle span).
pub const MI_HEAD_DIM: u32 = 128;
/// Keys per K tile: 64 per consumer warpgroup (its `wgmma` M).
pub const MI_BLOCK_N: u32 = 64 * MI_CONSUMERS;
/// Consumer warpgroups.
pub const MI_CONSUMERS: u32 = 2;
/// (token, head) columns of one Q tile: the `wgmma` N.
pub const MI_Q_ROWS: u32 = 128;
/// Q tiles per item at most (the `_q1` kernels take one): 2 × 128 columns, 4 rows of 64 heads (2 of 128). Each
/// K tile is then read once for 4 query rows.
pub const MI_Q_TILES: u32 = 2;
/// K stages of the ring (16.5 KiB each). Barely matters: `mla-idx-prefill-16k`
/// logits 691 / 677 / 685–686 / 683 TFLOP/s with 2 / 3 / 4 / 8 stages, and
/// 4 against 6 measured 686–687 against 678–680 (H200, 2026-12-02, builds
/// back to back in one device call).
pub const MI_STAGES: u32 = 4;
/// Threads: the producer warpgroup (one warp issues) and the consumers.
pub const MI_THREADS: u32 = 128 * (1 + MI_CONSUMERS);
/// Registers per thread at entry (`.maxntid 384`, `.minnctapersm 1`).
pub const MI_ENTRY_REGS: u32 = 65536 / MI_THREADS / 8 * 8;
/// Registers the producer warpgroup keeps (`setmaxnreg.dec`).
pub const MI_PRODUCER_REGS: u32 = 24;
/// Registers of a consumer thread (`setmaxnreg.inc`): the whole pool.
pub const MI_CONSUMER_REGS: u32 = 240;
/// Bytes of one Q tile (128 rows of 128 e4m3).
pub const MI_Q_TILE_BYTES: u32 = MI_Q_ROWS * MI_HEAD_DIM;
/// Bytes of the K rows of a stage.
pub const MI_K_TILE_BYTES: u32 = MI_BLOCK_N * MI_HEAD_DIM;
/// Bytes of the scales of a stage.
pub const MI_SCALE_BYTES: u32 = MI_BLOCK_N * 4;
/// Bytes a stage's copies bring.
pub const MI_STAGE_TX: u32 = MI_K_TILE_BYTES + MI_SCALE_BYTES;
/// Bytes of a `CUtensorMap`.
pub const MI_TMAP_BYTES: usize = 128;
/// Tensor maps of a launch, in this order: Q, K.
pub const MI_TMAPS: usize = 2;
/// Key tiles of one work item at most: longer rows are split (the logits
/// of different key tiles are independent, nothing to merge); the host
/// splits further until there are 2 items per SM. 128 (a 16K prefill row
/// in one item) against 32: `mla-idx-prefill-16k` logits 678–680 against
/// 661–663 TFLOP/s, `-decode-b64-64k` 198.7 against 209.5 µs (H200,
/// 2026-12-02: each item reloads its Q tiles and refills the ring).
pub const MI_TILES_PER_ITEM: u32 = 128;
/// Dynamic shared memory: the Q tiles, the K stages (1024-byte aligned
/// K tiles first, then their scales), the head weights, the barriers.
pub const MI_SMEM: u32 =
    MI_Q_TILES * MI_Q_TILE_BYTES + MI_STAGES * MI_STAGE_TX + MI_Q_TILES * MI_Q_ROWS * 4 + 256;

/// One CTA's work: rows `row0 .. row0 + rows` of sequence `seq` (the first
/// at position `q_pos0`), key tiles `tile0 .. tile1` of its `num_keys` keys.
/// `cost` (key tiles × rows) orders the items longest first.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MlaWork {
    /// Sequence (row of the page table).
    pub seq: u32,
    /// First query row (packed), counted from the launch's first row (the
    /// host runs a batch in chunks of rows, each launch from its own).
    pub row0: u32,
    /// Rows, `1 ..= Q tiles · 128 / heads`.
    pub rows: u32,
    /// Position of row `row0`.
    pub q_pos0: u32,
    /// Keys of the sequence (`seqlen_k`).
    pub num_keys: u32,
    /// First key tile.
    pub tile0: u32,
    /// Key tile past the last.
    pub tile1: u32,
    /// Padding to 32 bytes.
    pub _pad: u32,
}

/// Parameters of `mla_logits_h64`, `mla_logits_h128` and their `_q1`
/// forms (one body, for 64 or 128 index heads and 2 or 1 Q tiles; `heads`
/// must match the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MlaLogitsParams {
    /// [`MI_TMAPS`] tensor maps (64-byte aligned): Q as `[rows · heads, 128]`
    /// e4m3 bytes, boxes of 128 × 128 rows; the
    /// K pool as `[blocks, page_size, 128]` bytes (block = page · layers +
    /// layer, stride `block_bytes`), boxes of `box_rows` rows; both
    /// 128-byte swizzled.
    pub tmaps: DPtr<u8>,
    /// `[num_work]`, longest first.
    pub work: DPtr<MlaWork>,
    /// `qs: f32 [num_rows, heads]`.
    pub qs: DPtr<f32>,
    /// The page table `u32 [batch, max_pages]`.
    pub lookup: DPtr<u32>,
    /// Where the scales are: the scale of slot `s` of block `blk` is the
    /// f32 at byte `blk · scale_block_bytes + scale_off + 4 s` of it (the
    /// `k_scales` tensor, or the fused pool itself).
    pub scales: DPtr<u8>,
    /// `f32 [num_rows, ld]`: row `t`'s logit of key `s` at `t · ld + s`,
    /// written for the visible keys only.
    pub logits: DPtrMut<f32>,
    /// Work items.
    pub num_work: u32,
    /// Query rows of the launch (of its chunk of the batch: `qs`, the Q
    /// tensor map and `logits` start at its first row).
    pub num_rows: u32,
    /// Index heads (divides 128).
    pub heads: u32,
    /// Row stride of `logits` (f32 elements).
    pub ld: u32,
    /// 1: keys after the row's position are hidden.
    pub causal: u32,
    /// Tokens per page (a power of two, 16 ..= 256).
    pub page_size: u32,
    /// Rows of one K box: `min(page_size, MI_BLOCK_N)`.
    pub box_rows: u32,
    /// Pages of the pool (page ids are clamped below it).
    pub num_pages: u32,
    /// Row stride of the page table.
    pub max_pages: u32,
    /// Layers of the pool.
    pub num_layers: u32,
    /// Layer read.
    pub layer: u32,
    /// Bytes of the scales' block stride (see `scales`).
    pub scale_block_bytes: u32,
    /// Byte offset of slot 0's scale in a block.
    pub scale_off: u32,
}

kernel_params! {
    MlaLogitsParams => ["mla_logits_h64", "mla_logits_h64_q1", "mla_logits_h64_n64", "mla_logits_h128", "mla_logits_h128_q1"],
}

const _: () = assert!(core::mem::size_of::<MlaWork>() == 32);
const _: () = assert!(MI_SMEM <= 227 * 1024);
const _: () = assert!(MI_ENTRY_REGS == 168);
const _: () = assert!(
    MI_PRODUCER_REGS + MI_CONSUMERS * MI_CONSUMER_REGS <= (1 + MI_CONSUMERS) * MI_ENTRY_REGS
);
const _: () = assert!(MI_K_TILE_BYTES.is_multiple_of(1024) && MI_Q_TILE_BYTES.is_multiple_of(1024));
