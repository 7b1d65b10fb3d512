//! The standalone top-k (`topk_rows`): the `k` largest entries of each row
//! of an f32 matrix, as indices in descending order of score, ties to the
//! lower index, `-1` padding. Tile shapes, shared memory and the parameter
//! struct.
//!
//! One thread-block cluster per row, the row split into `cluster` chunks,
//! one per CTA. A radix select on 12-bit digits of 56-bit selection keys
//! (the score's 32 bits as an order-preserving key, then the inverted
//! index's [`TOPK_INDEX_BITS`]): one histogram of the chunk's top digit,
//! summed over the cluster through distributed shared memory, gives the
//! threshold bin; only the keys in that bin (the chunk kept in shared
//! memory, or the bin's keys gathered there) take the further digits. The
//! CTAs store the keys they keep into the first CTA's shared memory, which
//! sorts the row's keys and writes them (see `kernels-gpu/src/topk.rs`).

use crate::{kernel_params, DPtr, DPtrMut};

/// Threads per CTA (8 warps).
pub const TOPK_THREADS: u32 = 256;
/// Bits of a radix digit: the first digit (the score's sign, exponent and
/// 3 mantissa bits) splits a row of uniform(-4, 4) scores so that the
/// threshold bin holds 1/32 of the row (4096 of 128K); 8-bit digits needed
/// 4 passes over the row before the cut was found.
pub const TOPK_DIGIT_BITS: u32 = 12;
/// Bins of one radix digit.
pub const TOPK_BINS: u32 = 1 << TOPK_DIGIT_BITS;
/// Coarse bins of a digit (its top 6 bits): the cluster sums these first,
/// then only the 64 fine bins of the coarse bin that holds the cut.
pub const TOPK_COARSE_BINS: u32 = 64;
/// Largest `k`: the kept keys of a row are sorted in its first CTA's
/// shared memory, `TOPK_MAX_K` × 8 bytes.
pub const TOPK_MAX_K: u32 = 2048;
/// Bits of the index part of a selection key: rows of up to 2^24 entries.
pub const TOPK_INDEX_BITS: u32 = 24;
/// Entries a thread loads at once (8 16-byte loads in flight).
pub const TOPK_RESIDENT_PER_THREAD: u32 = 32;
/// Entries of one batch of loads of the CTA: a chunk of at most this many
/// is read from memory once, into shared memory (32 KiB, the candidates'
/// space), and counted from there on every digit.
pub const TOPK_RESIDENT_CHUNK: u32 = TOPK_THREADS * TOPK_RESIDENT_PER_THREAD;
/// Entries of a row per CTA the host aims for: exactly a resident chunk,
/// so a row of up to 128K entries (16 CTAs) is read once. (With the
/// earlier 8-bit, 4-pass kernel, 8192 against 16384 / 32768: `topk-1x128k`
/// 38.7–43.8 against 53.1–53.3 / 84.8–100.4 µs, H200, 2026-12-02.)
pub const TOPK_CHUNK_TARGET: u32 = TOPK_RESIDENT_CHUNK;
/// Keys of the threshold bin a CTA of a longer chunk gathers in shared
/// memory (its chunk is read twice: count, then collect). Uniform scores,
/// 64K entries a CTA: 2048. A cluster where some CTA has more takes the
/// fallback: every further digit counted over the chunk again.
pub const TOPK_CAND_CAP: u32 = 4096;
/// Largest cluster (non-portable size: the host falls back to 8 where 16
/// do not fit).
pub const TOPK_MAX_CLUSTER: u32 = 16;
/// Longest row: the index part of a selection key.
pub const TOPK_MAX_N: u32 = 1 << TOPK_INDEX_BITS;

/// Dynamic shared memory: the kept keys, the candidates (or the resident
/// chunk; then the sort's buffers), two histograms and their coarse sums (the digits alternate), and
/// small scalars: 80.75 KiB, 2 CTAs an SM.
pub const TOPK_SMEM: u32 =
    TOPK_MAX_K * 8 + TOPK_CAND_CAP * 8 + 2 * TOPK_BINS * 4 + 2 * TOPK_COARSE_BINS * 4 + 256;

/// Parameters of `topk_rows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TopkParams {
    /// f32 `[rows, row_stride]`, 16-byte aligned.
    pub scores: DPtr<f32>,
    /// `u32 [rows]` entries of each row (clamped to `n`), or null: `n` each.
    pub row_lens: DPtr<u32>,
    /// i32 `[rows, k]`.
    pub out: DPtrMut<i32>,
    /// Rows.
    pub rows: u32,
    /// Entries of a row (at most `cluster · chunk` and [`TOPK_MAX_N`]); the
    /// kernel may read every entry below `n` of a row.
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
