//! CPU reference implementations of every op of the sparse-attention library.
//!
//! This crate is the executable form of the contract in `spec/`: each op is
//! written as directly as the spec states it, parallelised with `rayon` over
//! independent outputs, and computed in `f64` wherever the GPU result is
//! checked for accuracy (bf16 inputs are widened exactly; products of two
//! bf16 values are exact in `f64`). Besides the plain ops, it provides the
//! *checkers* that compare a GPU output with the reference under the spec's
//! tolerance rules.
//!
//! It is also the CPU fallback of the demo, so every function accepts every
//! valid input (including empty sequences and degenerate parameters) without
//! panicking; invalid shapes are rejected with a panic that says what is wrong.
//!
//! Modules:
//! - [`dense_prefill`]: dense flash prefill, paged or ragged (cross-attention)
//!   K/V, masks and sinks, bf16 or FP8 e4m3 inputs (`spec/dense-prefill.md`).
//! - [`paged`]: the borrowed bf16 (and FP8 e4m3) views of a MAX-layout paged cache (its
//!   layout and page table are [`abi::batch`]'s).
//! - [`mla_indexer`]: the MLA FP8 lightning indexer, top-k tokens per
//!   query row from an FP8 index-K cache (`spec/mla-fp8-indexer.md`).
//! - [`msa_indexer`]: MSA top-k block selection (`spec/msa-indexer.md`).
//! - [`msa_attention`]: MSA block-sparse attention, decode and prefill
//!   (`spec/msa-attention.md`).
//! - [`topk`]: the standalone row top-k (the order of the indexers).

#![forbid(unsafe_code)]

pub mod dense_prefill;
pub mod mla_indexer;
pub mod msa_attention;
pub mod msa_indexer;
pub mod paged;
pub mod topk;

pub use half::bf16;
/// The shared descriptions (ragged batch, paged layout, page table, op
/// configs) the reference takes, as the host API does.
pub use sparse_attn_abi as abi;

/// Row `row` of a `[rows, width]` bf16 tensor, widened exactly to f64.
pub(crate) fn row_f64(t: &[bf16], row: usize, width: usize) -> Vec<f64> {
    t[row * width..(row + 1) * width]
        .iter()
        .map(|x| x.to_f64())
        .collect()
}

/// The batch's shape: `input_row_offsets` has `batch + 1 >= 1` entries
/// from 0, never decreasing, and `cache_lengths` has `batch`. Returns the
/// batch size.
pub(crate) fn check_batch(batch: &abi::batch::RaggedBatch) -> Result<usize, String> {
    let (offsets, cache_lengths) = (batch.input_row_offsets, batch.cache_lengths);
    if offsets.is_empty() {
        return Err("input_row_offsets must have batch + 1 >= 1 entries".into());
    }
    let n = offsets.len() - 1;
    if cache_lengths.len() != n {
        return Err(format!(
            "cache_lengths has {} entries, batch is {n}",
            cache_lengths.len()
        ));
    }
    check_offsets_order("input_row_offsets", offsets)?;
    Ok(n)
}

/// `offsets[0] == 0` and `offsets` never decreases (`name` in the error).
/// The caller checks the length (`batch + 1`, at least 1).
pub(crate) fn check_offsets_order(name: &str, offsets: &[u32]) -> Result<(), String> {
    if offsets[0] != 0 {
        return Err(format!("{name}[0] = {} != 0", offsets[0]));
    }
    if let Some(b) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(format!("{name} decreases at {b}"));
    }
    Ok(())
}
