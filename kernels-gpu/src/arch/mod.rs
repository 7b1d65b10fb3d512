//! The architecture layer: every raw `asm!` and LLVM intrinsic of the crate,
//! one module per concept as `cuda_std` splits them. Kernels and `tile/`
//! read as ordinary Rust and call these wrappers (`use crate::arch::*`);
//! each wrapper names the PTX instruction it emits and its pitfalls.
//!
//! Pointers into shared memory are 32-bit shared-window addresses (`u32`),
//! as `ld.shared`, `cp.async`, `ldmatrix` and `wgmma` descriptors take.
//!
//! Safety: the wrappers are `unsafe` where the caller must guarantee that an
//! address is valid and aligned; they never check. Warp-synchronous
//! instructions (`shfl.sync`, `ldmatrix`, `mma.sync`, `elect.sync`) are
//! emitted as side-effecting asm or convergent intrinsics so the compiler
//! never moves them into divergent code; their callers must execute them
//! with the whole warp (`wgmma` with the whole warpgroup).

pub mod cluster;
pub mod cp_async;
pub mod gmem;
pub mod grid;
pub mod math;
pub mod mbarrier;
pub mod mma;
pub mod smem;
pub mod thread;
pub mod tma;
pub mod unroll;
pub mod warp;
pub mod wgmma;

pub use cluster::*;
pub use cp_async::*;
pub use gmem::*;
pub use grid::*;
pub use math::*;
pub use mbarrier::*;
pub use mma::*;
pub use smem::*;
pub use thread::*;
pub use tma::*;
pub use warp::*;
pub use wgmma::*;
