//! The dense flash prefill (`shared/spec/dense-prefill.md`): tile shapes,
//! shared-memory sizes, its work record and parameter struct.
//!
//! One CTA computes one [`DenseTile`] (up to [`DP_BLOCK_M`] query rows of
//! one sequence) for one query head: a producer warp brings Q once and K/V
//! tiles of [`DP_BLOCK_N`] keys through a ring of [`DP_STAGES`] stages with
//! TMA, and [`DP_CONSUMERS`] consumer warpgroups of 64 rows each run the
//! online softmax with `wgmma`.

use crate::{kernel_params, Bf16Bits, DPtr, DPtrMut};

/// Head dimension the kernel implements.
pub const DP_HEAD_DIM: u32 = 128;
/// Consumer warpgroups per CTA, 64 query rows each.
pub const DP_CONSUMERS: u32 = 2;
/// Query rows per CTA (and per work tile).
pub const DP_BLOCK_M: u32 = 64 * DP_CONSUMERS;
/// Keys per K/V tile of the kernels that take paged K/V (one `wgmma` N of
/// 128 for S = Q Kᵀ; a page of 128 keys or more is one TMA box a tile, a
/// smaller one divides it).
pub const DP_BLOCK_N: u32 = 128;
/// Keys per K/V tile of the bf16 kernel on contiguous K/V
/// (`dense_prefill_wide`, `wgmma` N = 176): FlashAttention-3's choice for
/// hdim 128, bf16, non-causal. A wider tile spends the per-tile costs
/// (barrier waits, `wgmma` issue and drain, the softmax's row reductions)
/// on more keys; 176 is what 240 registers hold: S 88 + O 64 + P 44.
/// Measured against 128 (H100, 2026-12-07, one binary): 649 / 644 against
/// 636 TFLOP/s on `dense-prefill-16k`, 635.5 against 626.5 / 623 causal.
pub const DP_WIDE_N: u32 = 176;
/// K/V stages of the ring: 2 × (32 KiB K + 32 KiB V) plus 32 KiB of Q is
/// 160 KiB, one CTA per SM. 3 stages (224 KiB) measured 1–5% slower on
/// every case (H200, 2026-12-02, the two builds back to back:
/// `dense-prefill-16k` 587–594 TFLOP/s against 598 with 2).
pub const DP_STAGES: u32 = 2;
/// Threads per CTA: one producer warpgroup (one warp issues the copies)
/// and the consumers.
pub const DP_THREADS: u32 = 128 * (1 + DP_CONSUMERS);
/// Registers per thread ptxas gives every thread at entry: the register
/// file over [`DP_THREADS`], rounded down to 8 (`.maxntid 384`,
/// `.minnctapersm 1`). The CTA's pool is this times the threads, and the
/// `setmaxnreg` budgets below must fit in it: a `setmaxnreg.inc` that
/// asks for more than the others gave back waits forever (measured: 32 +
/// 2 · 240 hung the kernel).
pub const DP_ENTRY_REGS: u32 = 65536 / DP_THREADS / 8 * 8;
/// Registers per thread the producer warpgroup keeps (`setmaxnreg.dec`).
pub const DP_PRODUCER_REGS: u32 = 24;
/// Registers per thread of a consumer warpgroup (`setmaxnreg.inc`):
/// `(24 + 2 · 240) · 128 = 168 · 384`, the whole pool.
pub const DP_CONSUMER_REGS: u32 = 240;
/// Bytes of one 128-row × 128-dim bf16 tile (Q, a K or a V stage).
pub const DP_TILE_BYTES: u32 = 128 * DP_HEAD_DIM * 2;
/// Bytes of a `CUtensorMap` (the driver's opaque TMA descriptor).
pub const DP_TMAP_BYTES: usize = 128;
/// Tensor maps of one launch, in this order in the `tmaps` buffer: Q, K, V
/// (paged: K and V are the same map of the pool).
pub const DP_TMAPS: usize = 3;
/// Dynamic shared memory: Q, the K and V stages, the barriers (and the
/// 1 KiB alignment of the swizzled tiles, which the window's `.align 1024`
/// gives).
/// Sized for the wide kernel's stages (the narrow one uses the first
/// 128 rows of each; one CTA per SM either way).
pub const DP_SMEM: u32 = DP_TILE_BYTES + 2 * DP_STAGES * DP_WIDE_N * 256 + 128;

/// One CTA's work (for every query head): rows `row0 .. row0 + rows`
/// (`rows <= DP_BLOCK_M`) of sequence `seq`, its first row at position
/// `q_pos0`, over the sequence's `num_keys` keys (contiguous K/V: rows
/// `kv_row0 ..` of the K/V tensors). `key_tiles` (the tiles its mask
/// leaves, the host's cost estimate) orders the tiles longest first.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenseTile {
    /// Sequence (row of the page table).
    pub seq: u32,
    /// First query row (packed index into q / out).
    pub row0: u32,
    /// Rows of the tile, `1 ..= DP_BLOCK_M`.
    pub rows: u32,
    /// Position of row `row0`: `cache_len[seq] + row0 - offsets[seq]`.
    pub q_pos0: u32,
    /// Keys of the sequence.
    pub num_keys: u32,
    /// Contiguous K/V: the sequence's first row; paged: 0.
    pub kv_row0: u32,
    /// K/V tiles the tile visits.
    pub key_tiles: u32,
    /// Padding to 32 bytes (two 16-byte loads).
    pub _pad: u32,
}

/// The mask as the kernel reads it: `causal` (0 / 1) and `window`
/// (`u32::MAX`: none). `Mask::None` is (0, MAX), `Causal` (1, MAX),
/// `SlidingWindow { w }` (1, w).
pub const DP_NO_WINDOW: u32 = u32::MAX;

/// Parameters of `dense_prefill`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DensePrefillParams {
    /// `DP_TMAPS` tensor maps, 128 bytes each, 64-byte aligned: Q
    /// `[num_rows, n_heads, 128]`; K and V (contiguous `[kv_rows,
    /// n_kv_heads, 128]`, or the paged pool as `[pages · 2 · layers ·
    /// page_size, n_kv_heads, 128]` rows of tokens), boxes of 64 dims × 1
    /// head × `box_rows` rows, 128-byte swizzled.
    pub tmaps: DPtr<u8>,
    /// `tiles: [num_tiles]`, longest first.
    pub tiles: DPtr<DenseTile>,
    /// Paged: the page table `u32 [batch, max_pages]`; contiguous: null.
    pub lookup: DPtr<u32>,
    /// Attention sinks `f32 [n_heads]` or null.
    pub sinks: DPtr<f32>,
    /// `bf16 [num_rows, n_heads, 128]`.
    pub out: DPtrMut<Bf16Bits>,
    /// `f32 [num_rows, n_heads]` (natural log, the sink included) or null.
    pub lse: DPtrMut<f32>,
    /// Work tiles.
    pub num_tiles: u32,
    /// Query rows (`out` rows past it are never written).
    pub num_rows: u32,
    /// Query heads.
    pub n_heads: u32,
    /// KV heads.
    pub n_kv_heads: u32,
    /// `scale · log2 e` (scale > 0).
    pub scale_log2: f32,
    /// 1: keys after the query's position are hidden.
    pub causal: u32,
    /// Keys visible up to the query, itself included; [`DP_NO_WINDOW`]: no window.
    pub window: u32,
    /// Rows of one K/V TMA box: the kernel's key tile contiguous,
    /// `min(page_size, DP_BLOCK_N)` paged.
    pub box_rows: u32,
    /// Paged: tokens per page (a power of two); contiguous: 0.
    pub page_size: u32,
    /// Paged: pages of the pool (page ids are clamped below it).
    pub num_pages: u32,
    /// Paged: row stride of the page table.
    pub max_pages: u32,
    /// Paged: token rows from one page to the next (`2 · layers · page_size`).
    pub page_rows: u32,
    /// Paged: token row of the layer's K plane in a page (`layer · page_size`).
    pub k_row_off: u32,
    /// Paged: token row of the layer's V plane (`(layers + layer) · page_size`).
    pub v_row_off: u32,
}

/// FP8 (e4m3) variant: bytes of one 128-row × 128-dim e4m3 tile (Q, a K,
/// a V or a transposed-V stage): one 128-byte swizzle span a row.
pub const DP8_TILE_BYTES: u32 = 128 * DP_HEAD_DIM;
/// FP8 variant: keys per K/V tile on contiguous K/V
/// (`dense_prefill_fp8_wide`, `wgmma` N = 192; paged K/V take
/// [`DP_BLOCK_N`]). FlashAttention-3's e4m3 hdim-128 tile is 224, causal
/// or not, with 240 registers a consumer thread; ours have 232 (the
/// transposers need 40, at 24 they spill) and at 224 keys (S 112 + O 64 +
/// P 28 live while the products are issued) ptxas spilled 3 registers in
/// the loop; 192 (S 96) does not spill, but measured slower than 128:
/// 661 against 710 TFLOP/s on `dense-prefill-16k-fp8`, 650–660 against
/// 703 causal (H100, 2026-12-07), so the host takes it only when asked.
pub const DP8_WIDE_N: u32 = 192;
/// FP8 variant: bytes of a transposed-V stage of the wide kernel: two
/// 128-key spans a dim row (keys 0..128 and 128..192), each 128 rows of
/// 128 bytes.
pub const DP8_WIDE_VT_BYTES: u32 = DP8_WIDE_N.div_ceil(128) * DP8_TILE_BYTES;
/// FP8 variant: K / V stages of the ring (each V stage also has its
/// transposed copy): Q (room for bf16 queries) + 2 × (K + V + Vᵀ) = 128 KiB.
pub const DP8_STAGES: u32 = 2;
/// FP8 variant: the producer warpgroup's registers (warp 0 issues the
/// copies; warps 1–3 transpose V, `ldmatrix` / `stmatrix` 4 words a
/// unit), and the consumers'
/// (`40 + 2 · 232 = 504 = 3 · 168`, the pool).
pub const DP8_PRODUCER_REGS: u32 = 40;
/// FP8 variant: registers of a consumer warpgroup.
pub const DP8_CONSUMER_REGS: u32 = 232;
/// FP8 variant: threads of the producer warpgroup that transpose V
/// (warps 1–3).
pub const DP8_TRANSPOSERS: u32 = 96;
/// FP8 variant: dynamic shared memory (tiles and barriers).
/// Sized for the wide kernel (Q: room for bf16 queries; K and V: 192
/// rows of 128 bytes a stage; Vᵀ: [`DP8_WIDE_VT_BYTES`]).
pub const DP8_SMEM: u32 =
    2 * DP8_TILE_BYTES + DP8_STAGES * (2 * DP8_WIDE_N * DP_HEAD_DIM + DP8_WIDE_VT_BYTES) + 256;

/// Parameters of `dense_prefill_fp8`: those of the bf16 kernel (the tensor
/// maps are of e4m3 bytes: boxes of 128 bytes × 1 head × `box_rows`) and
/// the descales. The value of an element is `e4m3 · descale`: Q's is
/// `q_descale[0]`, K's and V's `k_descale[kh · descale_stride]` and
/// `v_descale[kh · descale_stride]` (`descale_stride` 0: one for the
/// tensor; 1: one per KV head).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DensePrefillFp8Params {
    /// Everything the bf16 kernel takes (`out` and `lse` as there).
    pub base: DensePrefillParams,
    /// `f32 [1]`.
    pub q_descale: DPtr<f32>,
    /// `f32 [1]` or `f32 [n_kv_heads]`.
    pub k_descale: DPtr<f32>,
    /// As `k_descale`.
    pub v_descale: DPtr<f32>,
    /// 0 (per tensor) or 1 (per KV head).
    pub descale_stride: u32,
}

kernel_params! {
    DensePrefillParams => ["dense_prefill", "dense_prefill_wide"],
    DensePrefillFp8Params => [
        "dense_prefill_fp8",
        "dense_prefill_fp8_qbf16",
        "dense_prefill_fp8_wide",
        "dense_prefill_fp8_qbf16_wide",
    ],
}

// What fits on one SM: the shared memory, and the `setmaxnreg` budgets in
// the pool the CTA is launched with.
const _: () = assert!(core::mem::size_of::<DenseTile>() == 32);
const _: () = assert!(DP_SMEM <= 227 * 1024);
const _: () = assert!(DP_ENTRY_REGS == 168);
const _: () = assert!(
    DP_PRODUCER_REGS + DP_CONSUMERS * DP_CONSUMER_REGS <= (1 + DP_CONSUMERS) * DP_ENTRY_REGS
);
const _: () = assert!(DP_BLOCK_M == 128);
const _: () = assert!(DP8_SMEM <= 227 * 1024);
const _: () = assert!(
    DP8_PRODUCER_REGS + DP_CONSUMERS * DP8_CONSUMER_REGS <= (1 + DP_CONSUMERS) * DP_ENTRY_REGS
);
