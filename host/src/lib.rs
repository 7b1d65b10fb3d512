//! # sparse-attn
//!
//! Block-sparse attention kernels for NVIDIA Hopper (sm_90), written in Rust:
//! MiniMax-M3's MSA indexer and attention, and their relatives. The device
//! code lives in `kernels-gpu` and is compiled to PTX by `cargo xtask
//! build-ptx`; that PTX is embedded here ([`ptx::PTX`]), so using this crate
//! needs only stable Rust and the NVIDIA driver (loaded at run time).
//!
//! Every op is `new` (configuration checked, kernels loaded, the workspace
//! its bounds fix allocated) or `new_in` (over the caller's [`Workspace`],
//! which several ops and every layer can share; each op's
//! `workspace_size(..)` gives the bytes for the caller's bounds), `plan`
//! (the batch's host metadata validated, errors naming the argument; the
//! private workspace grown when needed, the plan uploaded; no layer: one
//! plan per step serves every layer) and `run` (the layer and the buffers;
//! launches only: no allocation, no host synchronisation, CUDA-graph
//! capturable while the plan holds).
//!
//! Engines: [`Gpu::from_stream`] (a cudarc stream, e.g. candle's) and
//! [`Gpu::from_raw`] (a driver-API context and stream, for C and Python)
//! make a handle whose launches go to the caller's stream; nothing
//! synchronises it. `run` takes cudarc's [`DevicePtr`] / [`DevicePtrMut`]:
//! slices, views at offsets, or [`RawBuffer`]s (pointer + length); see
//! [`buffer`]. Lifetimes: `run` borrows its buffers only for the call (the
//! work it enqueued uses them later: keep them alive until the stream has
//! run it, as for any cudarc launch); an op keeps its [`Workspace`] (a
//! shared handle) alive itself.
//!
//! candle: with the `candle` feature, `sparse_attn::candle` runs the ops
//! on candle `Tensor`s on candle's CUDA device and stream (`MsaStepOp`).
//!
//! ```no_run
//! use sparse_attn::{Gpu, MsaIndexer, MsaIndexerConfig, PageTable, PagedLayout, RaggedBatch};
//! # fn main() -> sparse_attn::Result<()> {
//! let gpu = Gpu::new(0)?;
//! let cfg = MsaIndexerConfig::minimax_m3();
//! let mut indexer = MsaIndexer::new(&gpu, cfg)?;
//! // Two sequences: 1 new token on 1000 cached, 1 new token on 5 cached.
//! let (offsets, cache_lengths) = ([0u32, 1, 2], [1000u32, 5]);
//! let layout = PagedLayout::index_k(16, 1, 128, 128);
//! let lookup: Vec<u32> = vec![3, 7, 9, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
//! let batch = RaggedBatch::new(&offsets, &cache_lengths);
//! indexer.plan(&batch, &PageTable::new(&lookup, 8), &layout)?; // every layer
//! let q = gpu.zeros::<half::bf16>(2 * cfg.num_index_heads * 128)?;
//! let k_cache = gpu.zeros::<half::bf16>(layout.elements())?;
//! let d_lookup = gpu.upload(&lookup)?;
//! let mut out = gpu.zeros::<i32>(cfg.num_index_heads * 2 * cfg.topk)?;
//! indexer.run(&q, &k_cache, &d_lookup, 0, &mut out)?; // layer 0
//! let idxs = gpu.download(&out)?; // [heads, rows, topk], -1 padded
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod buffer;
#[cfg(feature = "candle")]
pub mod candle;
pub mod context;
pub mod dense_prefill;
pub mod dense_prefill_fp8;
pub mod error;
pub mod graph;
mod launch;
pub mod mla_indexer;
pub mod msa_attention;
pub mod msa_block_major;
pub mod msa_indexer;
pub mod msa_step;
pub mod ptx;
mod tma;
pub mod topk;
pub mod workspace;

/// What the kernels and this crate share (tile shapes, parameter structs,
/// work records): the `sparse-attn-abi` crate, which the device build compiles too.
pub use sparse_attn_abi as abi;

pub use batch::{
    ConfigExt, KvDtype, Mask, PageTable, PageTableExt, PagedLayout, PagedLayoutExt, RaggedBatch,
    RaggedBatchExt,
};
pub use buffer::RawBuffer;
pub use context::{DeviceProps, Gpu};
pub use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
pub use dense_prefill::{DensePrefill, DensePrefillConfig, KvBuffers, KvLayout};
pub use dense_prefill_fp8::{DensePrefillFp8, Fp8Descales, Fp8Query};
pub use error::{Error, Result};
pub use graph::GraphKey;
pub use half::bf16;
pub use mla_indexer::{MlaIndexer, MlaIndexerConfig};
pub use msa_attention::{AttentionPath, MsaAttention, MsaAttentionConfig};
pub use msa_indexer::{IndexerPath, MsaIndexer, MsaIndexerConfig};
pub use msa_step::{MsaStep, StepInputs};
pub use topk::TopK;
pub use workspace::Workspace;
