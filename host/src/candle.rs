//! The ops on [candle](https://crates.io/crates/candle-core) `Tensor`s
//! (feature `candle`): launched on the candle `CudaDevice`'s own stream and
//! context, reading the tensors' device memory in place (no copies) and
//! writing their outputs into new candle tensors.
//!
//! ```no_run
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{DType, Device, Tensor};
//! use sparse_attn::candle::{MsaStepOp, TensorStepInputs};
//! use sparse_attn::{MsaAttentionConfig, MsaIndexerConfig};
//! # let (batch, index_pages, index_layout, kv_pages, kv_layout): (
//! #     sparse_attn::RaggedBatch, sparse_attn::PageTable, sparse_attn::PagedLayout,
//! #     sparse_attn::PageTable, sparse_attn::PagedLayout) = todo!();
//! # let (q_index, k_index, index_lookup, q, kv_cache, kv_lookup): (
//! #     Tensor, Tensor, Tensor, Tensor, Tensor, Tensor) = todo!();
//! let device = Device::new_cuda_with_stream(0)?;
//! let (idx, att) = (MsaIndexerConfig::minimax_m3(), MsaAttentionConfig::minimax_m3());
//! let mut op = MsaStepOp::new(&device, idx, att, 64)?; // at most 64 rows a step
//! op.plan(&batch, &index_pages, &index_layout, &kv_pages, &kv_layout)?; // host metadata, once a step
//! let inputs = TensorStepInputs { q_index: &q_index, k_index: &k_index, index_lookup: &index_lookup,
//!                                 q: &q, kv_cache: &kv_cache, kv_lookup: &kv_lookup };
//! let out = op.run(&inputs, 0)?; // layer 0: bf16 [num_rows, n_heads, 128], on the device's stream
//! # Ok(()) }
//! ```
//!
//! Why a struct with a `run` method and not candle's `CustomOp*` /
//! `InplaceOp*` traits: those take one to three tensors (candle's N-input
//! in-place op is not public), and an MSA step takes six inputs, host
//! metadata planned beforehand and private state (the plan, the selections,
//! the workspace). So [`MsaStepOp::run`] takes the `&Tensor`s, holds each
//! one's storage (a read lock) for the launches, and returns the output as
//! a new tensor allocated on the device. No autograd (inference kernels).
//!
//! Tensors: on the op's CUDA device, of the dtype the op reads (bf16, u32
//! page tables) and contiguous (row-major) from their
//! `layout().start_offset()` on: a narrowed or indexed view of a bigger
//! tensor is read in place, a transposed or broadcast one is refused
//! (call `.contiguous()`). Shapes are not checked beyond the element count,
//! which the op checks as for any buffer (the docs of [`crate::MsaStep`]
//! and the ops give the layouts). Every error is a [`crate::Error`] naming
//! the argument (`q`, `kv_cache`, ...), wrapped as `candle_core::Error`.
//!
//! Streams: [`MsaStepOp::new`] builds its [`Gpu`] with [`Gpu::from_stream`]
//! on the device's stream (`CudaDevice::cuda_stream`), so the launches are
//! in order with candle's own work there and nothing synchronises. candle
//! leaves cudarc's event tracking on; the ops then record the tensors'
//! uses as cudarc does for candle's own kernels.

use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Layout, Storage, Tensor};
use cudarc::driver::CudaView;
use half::bf16;

use crate::batch::{PageTable, PagedLayout, RaggedBatch};
use crate::msa_attention::MsaAttentionConfig;
use crate::msa_indexer::MsaIndexerConfig;
use crate::msa_step::{MsaStep, StepInputs};
use crate::{Error, Gpu};

/// A [`crate::Error`] as a candle error (the message names the argument).
pub fn to_candle(e: Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// The candle CUDA device of `device`, or an error naming `arg`.
fn cuda_device<'a>(device: &'a Device, arg: &'static str) -> Result<&'a CudaDevice, Error> {
    match device {
        Device::Cuda(d) => Ok(d),
        other => Err(Error::invalid(
            arg,
            "a CUDA device",
            format!("{:?}", other.location()),
        )),
    }
}

/// A [`Gpu`] handle on candle's device: its context and stream (see
/// [`Gpu::from_stream`]).
pub fn gpu_of(device: &Device) -> candle_core::Result<Gpu> {
    let dev = cuda_device(device, "device").map_err(to_candle)?;
    Gpu::from_stream(dev.cuda_stream()).map_err(to_candle)
}

/// A tensor's storage, held (read-locked) while the op uses its memory.
pub struct HeldTensor<'a> {
    arg: &'static str,
    storage: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> HeldTensor<'a> {
    /// Checks that `t` is a contiguous tensor of `dtype` on `device` and
    /// holds its storage; errors name `arg`.
    pub fn new(
        t: &'a Tensor,
        arg: &'static str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Self::check(t, arg, dtype, device).map_err(to_candle)?;
        let (storage, layout) = t.storage_and_layout();
        Ok(HeldTensor {
            arg,
            storage,
            layout,
        })
    }

    fn check(t: &Tensor, arg: &'static str, dtype: DType, device: &Device) -> Result<(), Error> {
        if !t.device().same_device(device) {
            return Err(Error::invalid(
                arg,
                format!("a tensor on the op's device {:?}", device.location()),
                format!("one on {:?}", t.device().location()),
            ));
        }
        if t.dtype() != dtype {
            return Err(Error::invalid(
                arg,
                format!("dtype {dtype:?}"),
                format!("{:?}", t.dtype()),
            ));
        }
        if !t.layout().is_contiguous() {
            return Err(Error::invalid(
                arg,
                "a contiguous (row-major) tensor; call .contiguous()",
                format!("shape {:?} with strides {:?}", t.dims(), t.stride()),
            ));
        }
        Ok(())
    }

    /// The tensor's elements as a device view: from `start_offset` on,
    /// `elem_count` of them.
    pub fn view<T: CudaDType>(&self) -> candle_core::Result<CudaView<'_, T>> {
        let Storage::Cuda(s) = &*self.storage else {
            return Err(to_candle(Error::invalid(
                self.arg,
                "CUDA storage",
                "another backend's",
            )));
        };
        let slice = s.as_cuda_slice::<T>()?;
        let start = self.layout.start_offset();
        let end = start + self.layout.shape().elem_count();
        if end > slice.len() {
            return Err(to_candle(Error::invalid(
                self.arg,
                format!("a view within its storage of {} elements", slice.len()),
                format!("elements {start}..{end}"),
            )));
        }
        Ok(slice.slice(start..end))
    }
}

/// The device inputs of one MSA step as candle tensors (the fields of
/// [`StepInputs`]; every one contiguous, on the op's device).
#[derive(Clone, Copy)]
pub struct TensorStepInputs<'a> {
    /// Index queries, bf16 `[num_rows, n_kv_heads, 128]`.
    pub q_index: &'a Tensor,
    /// The index-K pool, bf16 (see [`PagedLayout::index_k`]).
    pub k_index: &'a Tensor,
    /// The index-K pool's page table, u32 `[batch, max_pages]`.
    pub index_lookup: &'a Tensor,
    /// Attention queries, bf16 `[num_rows, n_heads, 128]`.
    pub q: &'a Tensor,
    /// The main K/V pool, bf16.
    pub kv_cache: &'a Tensor,
    /// The main pool's page table, u32 `[batch, max_pages]`.
    pub kv_lookup: &'a Tensor,
}

/// [`MsaStep`] (indexer, then block-sparse attention) on candle tensors, on
/// the candle device's stream.
pub struct MsaStepOp {
    step: MsaStep,
    gpu: Gpu,
    device: Device,
    /// Rows of the planned batch (`None` before `plan`).
    rows: Option<usize>,
}

impl MsaStepOp {
    /// The step for at most `max_rows` query rows on candle's CUDA
    /// `device` (see [`MsaStep::new`]).
    pub fn new(
        device: &Device,
        idx: MsaIndexerConfig,
        att: MsaAttentionConfig,
        max_rows: usize,
    ) -> candle_core::Result<Self> {
        let gpu = gpu_of(device)?;
        let step = MsaStep::new(&gpu, idx, att, max_rows).map_err(to_candle)?;
        Ok(MsaStepOp {
            step,
            gpu,
            device: device.clone(),
            rows: None,
        })
    }

    /// The handle the step launches with (candle's context and stream).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The wrapped step (its ops' overrides, the last selections:
    /// [`MsaStep::d_indices`]).
    pub fn step(&self) -> &MsaStep {
        &self.step
    }

    /// Plans the step for a batch (host metadata; see [`MsaStep::plan`]):
    /// once a step, for every layer.
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        index_pages: &PageTable,
        index_layout: &PagedLayout,
        kv_pages: &PageTable,
        kv_layout: &PagedLayout,
    ) -> candle_core::Result<()> {
        self.rows = None;
        self.step
            .plan(batch, index_pages, index_layout, kv_pages, kv_layout)
            .map_err(to_candle)?;
        self.rows = Some(batch.num_rows());
        Ok(())
    }

    /// Runs the planned step on layer `layer` of the pools; returns the
    /// attention output, bf16 `[num_rows, n_heads, 128]`, a new tensor on
    /// the device (launches only; nothing synchronises).
    pub fn run(&mut self, inputs: &TensorStepInputs, layer: usize) -> candle_core::Result<Tensor> {
        Ok(self.run_inner(inputs, layer, false)?.0)
    }

    /// [`MsaStepOp::run`], also returning the softmax's log-sum-exp, f32
    /// `[num_rows, n_heads]` (natural log).
    pub fn run_with_lse(
        &mut self,
        inputs: &TensorStepInputs,
        layer: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (out, lse) = self.run_inner(inputs, layer, true)?;
        Ok((out, lse.expect("asked for")))
    }

    fn run_inner(
        &mut self,
        inputs: &TensorStepInputs,
        layer: usize,
        with_lse: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let rows = self.rows.ok_or_else(|| {
            to_candle(Error::NotPlanned {
                op: "msa_step (candle)",
            })
        })?;
        let dev = &self.device;
        let hold = |t, arg, dtype| HeldTensor::new(t, arg, dtype, dev);
        let qi = hold(inputs.q_index, "q_index", DType::BF16)?;
        let ki = hold(inputs.k_index, "k_index", DType::BF16)?;
        let il = hold(inputs.index_lookup, "index_lookup", DType::U32)?;
        let q = hold(inputs.q, "q", DType::BF16)?;
        let kv = hold(inputs.kv_cache, "kv_cache", DType::BF16)?;
        let kl = hold(inputs.kv_lookup, "kv_lookup", DType::U32)?;
        let (qi, ki, il) = (qi.view::<bf16>()?, ki.view::<bf16>()?, il.view::<u32>()?);
        let (q, kv, kl) = (q.view::<bf16>()?, kv.view::<bf16>()?, kl.view::<u32>()?);
        let step_inputs = StepInputs {
            q_index: &qi,
            k_index: &ki,
            index_lookup: &il,
            q: &q,
            kv_cache: &kv,
            kv_lookup: &kl,
        };

        let cuda = cuda_device(dev, "device").map_err(to_candle)?;
        let heads = self.step.attention.config().n_heads;
        let head_dim = self.step.attention.config().head_dim;
        // Fully written by the attention (every row, head and lane), so
        // not zeroed.
        // SAFETY: bf16 / f32 buffers the step writes entirely before any read.
        let mut out = unsafe { cuda.alloc::<bf16>(rows * heads * head_dim)? };
        let mut lse = if with_lse {
            Some(unsafe { cuda.alloc::<f32>(rows * heads)? })
        } else {
            None
        };
        self.step
            .run(
                &step_inputs,
                layer,
                &mut out,
                lse.as_mut()
                    .map(|l| l as &mut dyn cudarc::driver::DevicePtrMut<f32>),
            )
            .map_err(to_candle)?;

        let wrap = |storage: CudaStorage, shape: &[usize]| {
            Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
        };
        let out = wrap(
            CudaStorage::wrap_cuda_slice(out, cuda.clone()),
            &[rows, heads, head_dim],
        );
        let lse = lse.map(|l| {
            wrap(
                CudaStorage::wrap_cuda_slice(l, cuda.clone()),
                &[rows, heads],
            )
        });
        Ok((out, lse))
    }
}
