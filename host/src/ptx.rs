//! The kernels, as PTX for sm_90a (H100/H200), built from `kernels-gpu` by
//! `cargo xtask build-ptx` and checked in (so users need no device
//! toolchain). A test checks that [`PTX_SOURCE_HASH`] matches the current
//! kernel sources, so a stale PTX cannot ship.

/// The module's PTX text (all kernels of `kernels-gpu`).
pub const PTX: &str = include_str!("../ptx/sparse_attn.ptx");

/// SHA-256 of the kernel sources the PTX was built from (see
/// `xtask::kernel_source_hash`).
pub const PTX_SOURCE_HASH: &str = include_str!("../ptx/sparse_attn.ptx.sha256");
