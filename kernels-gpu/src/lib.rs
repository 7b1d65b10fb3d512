//! Device code of `sparse-attn`, compiled to PTX for sm_90a (Hopper; the
//! prefill run uses `wgmma`) by
//! `cargo xtask build-ptx` (rustc's `nvptx64-nvidia-cuda` target).
//!
//! Three layers:
//! - [`arch`]: every PTX instruction the kernels use, one module per concept
//!   (threads, warps, math, global and shared memory, `cp.async`, mbarrier,
//!   TMA, `mma`, `wgmma`, clusters, grid dependencies), with its pitfalls;
//! - `tile`: what more than one kernel family uses (swizzled tiles and their
//!   `wgmma` descriptors, the paged block loader, the pipeline ring, the
//!   online softmax and LSE merge, the top-k selectors);
//! - one file per op family (`dense_prefill`, `msa_indexer`,
//!   `msa_attention`, `msa_block_major`, `topk`), named as in the host crate.
//!
//! Tile shapes, work records and one parameter struct per kernel come from
//! the `sparse-attn-abi` crate, which the host compiles too.
#![no_std]
#![feature(abi_ptx, stdarch_nvptx, asm_experimental_arch, link_llvm_intrinsics)]
#![allow(
    clippy::missing_safety_doc,
    clippy::too_many_arguments,
    internal_features
)]

pub mod arch;
pub mod dense_prefill;
pub mod dense_prefill_fp8;
pub mod mla_indexer;
pub mod msa_attention;
pub mod msa_block_major;
pub mod msa_indexer;
pub mod tile;
pub mod topk;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    arch::trap()
}
