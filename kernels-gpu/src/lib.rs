//! Device code of `sparse-attn`, compiled to PTX for sm_90a (Hopper; the
//! prefill run uses `wgmma`) by
//! `cargo xtask build-ptx` (rustc's `nvptx64-nvidia-cuda` target).
//!
//! One file per kernel family; [`cuda`] holds every architecture-specific
//! wrapper (indices, warp ops, shared memory, `cp.async`, `ldmatrix`, `mma`);
//! [`abi`] holds the constants the host compiles too (`#[path]`).
#![no_std]
#![feature(abi_ptx, stdarch_nvptx, asm_experimental_arch, link_llvm_intrinsics)]
#![allow(
    clippy::missing_safety_doc,
    clippy::too_many_arguments,
    internal_features
)]


pub mod cuda;
pub mod msa_attention;
pub mod msa_indexer;
pub mod msa_block_major;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    cuda::trap()
}
