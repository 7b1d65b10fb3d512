//! The standalone top-k (`topk_rows`): the `k` largest entries of each row
//! of an f32 matrix, as indices in descending order of score, ties to the
//! lower index, `-1` padding. Tile shapes, shared memory and the parameter
//! struct.
//!
//! One thread-block cluster per row, the row split into `cluster` chunks,
//! one per CTA; a radix select on 8-bit digits (the score's 32 bits as an
//! order-preserving key, then the index's [`TOPK_INDEX_BITS`]) finds the
//! `k`-th largest (score, index) key with histograms summed over the
//! cluster through distributed shared memory, each pass reading the chunk
//! again; the selected keys go to the first CTA, which sorts them.

use crate::{kernel_params, DPtr, DPtrMut};

/// Threads per CTA (8 warps): one histogram bin per thread.
pub const TOPK_THREADS: u32 = 256;
/// Bins of one radix digit (8 bits).
pub const TOPK_BINS: u32 = 256;
/// Largest `k`: the selected keys of a row are sorted in the first CTA's
/// shared memory, `TOPK_MAX_K` × 8 bytes.
pub const TOPK_MAX_K: u32 = 2048;
/// Bits of the index part of a selection key: rows of up to 2^24 entries.
pub const TOPK_INDEX_BITS: u32 = 24;
/// Entries of a row per CTA the host aims for: a row of 128K entries is a
/// cluster of 16 (fewer where the rows would not all be resident). 8192
/// against 16384 / 32768 (clusters of 16 / 8 / 4 for one 128K row):
/// `topk-1x128k` 38.7–43.8 against 53.1–53.3 / 84.8–100.4 µs,
/// `mla-idx-decode-b64-64k` end to end 322–324 against 357 / 446–449 µs;
/// only `topk-64x128k` prefers 32768 (134.6–143.4 against 150–157 µs, 4
/// CTAs a row instead of 8) (H200, 2026-12-02, builds back to back).
pub const TOPK_CHUNK_TARGET: u32 = 8192;
/// Largest cluster (non-portable size: the host falls back to 8 where 16
/// do not fit).
pub const TOPK_MAX_CLUSTER: u32 = 16;
/// Longest row: the index part of a selection key.
pub const TOPK_MAX_N: u32 = 1 << TOPK_INDEX_BITS;

/// Dynamic shared memory: the sort buffer, two histograms (the passes
/// alternate), the pass's pick and the collect's counter.
pub const TOPK_SMEM: u32 = TOPK_MAX_K * 8 + 2 * TOPK_BINS * 4 + 64;

/// Parameters of `topk_rows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TopkParams {
    /// f32 `[rows, row_stride]`.
    pub scores: DPtr<f32>,
    /// `u32 [rows]` entries of each row (clamped to `n`), or null: `n` each.
    pub row_lens: DPtr<u32>,
    /// i32 `[rows, k]`.
    pub out: DPtrMut<i32>,
    /// Rows.
    pub rows: u32,
    /// Entries of a row (at most `cluster · chunk` and [`TOPK_MAX_N`]).
    pub n: u32,
    /// f32 elements from one row to the next (`>= n`).
    pub row_stride: u32,
    /// Entries kept per row (1 ..= [`TOPK_MAX_K`]).
    pub k: u32,
    /// CTAs per row: the launch's cluster size.
    pub cluster: u32,
    /// Entries per CTA (the last CTA of a row may hold fewer).
    pub chunk: u32,
}

kernel_params!(TopkParams => ["topk_rows"]);
