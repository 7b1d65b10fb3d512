//! Shared support of the sparse-attention test suites, benchmarks and demo.
//!
//! - [`charts`]: SVG charts of a bench results file (plotters, SVG backend).
//! - [`data`]: seeded random inputs (ragged batches, shuffled paged pools with
//!   garbage in every unused slot, query tensors).
//!
//! The GPU-vs-reference tests live in `tests/`, the CPU-only tests of the
//! reference in `tests/reference.rs`.

#![forbid(unsafe_code)]

pub mod charts;
pub mod data;
pub mod harness;
