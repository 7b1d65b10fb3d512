//! The dense flash prefill in FP8 e4m3 (`shared/spec/dense-prefill.md`;
//! kernel: `kernels-gpu/src/dense_prefill_fp8.rs`): every feature of
//! [`DensePrefill`] (ragged queries, GQA, paged or contiguous K/V, masks,
//! sinks, lse) on e4m3 Q, K and V with f32 descales, f32 accumulation and
//! bf16 output.
//!
//! Choices where the spec is silent (what FlashAttention-3's FP8 path and
//! vLLM do):
//! - the value of an element is `e4m3 · descale`; the descales are device
//!   buffers (`f32 [1]` for Q; `f32 [1]` or `f32 [n_kv_heads]` for K and
//!   V), so a captured graph reads the current ones; `q_descale ·
//!   k_descale` must be finite and > 0 (the kernel takes each row's maximum
//!   of the raw scores): otherwise every output row of that KV head is NaN,
//!   never a plausible wrong answer; a paged pool holds e4m3 bytes
//!   ([`KvDtype::Fp8E4m3`](crate::batch::KvDtype)) whose per-token scale
//!   tensor this op does not read (pass the per-head descales instead);
//! - P is rounded to e4m3 for the P V product and the row sums add the
//!   unrounded P (as FlashAttention-3): the error this allows is
//!   `reference-cpu`'s `check_dense_prefill_fp8` bound.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use crate::abi::dense::*;
use crate::dense_prefill::{DensePrefill, Elem, KvBuffers, KvLayout};
use crate::error::{ensure, expect_len, Result};
use crate::launch::{Bufs, Kernel};
use crate::{DensePrefillConfig, Gpu, RaggedBatch};

/// The descales of an FP8 run, device buffers of f32.
#[derive(Clone, Copy)]
pub struct Fp8Descales<'a> {
    /// Q's: `f32 [1]`.
    pub q: &'a dyn DevicePtr<f32>,
    /// K's: `f32 [1]` (the tensor's) or `f32 [n_kv_heads]` (one per KV head).
    pub k: &'a dyn DevicePtr<f32>,
    /// V's: as many as `k`.
    pub v: &'a dyn DevicePtr<f32>,
}

/// The FP8 dense flash prefill: [`DensePrefill`]'s `plan`, and a `run` on
/// e4m3 buffers.
pub struct DensePrefillFp8 {
    core: DensePrefill,
    kernel: Kernel<DensePrefillFp8Params>,
}

impl DensePrefillFp8 {
    /// The op for `cfg` (checked as [`DensePrefill::new`]).
    pub fn new(gpu: &Gpu, cfg: DensePrefillConfig) -> Result<Self> {
        let mut core = DensePrefill::new(gpu, cfg)?;
        core.elem = Elem::E4m3;
        Ok(DensePrefillFp8 {
            core,
            kernel: gpu.kernel("dense_prefill_fp8", DP8_SMEM)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DensePrefillConfig {
        self.core.config()
    }

    /// As [`DensePrefill::plan`]; a paged pool must be of
    /// `KvDtype::Fp8E4m3` bytes.
    pub fn plan(&mut self, batch: &RaggedBatch, kv: &KvLayout) -> Result<()> {
        self.core.plan(batch, kv)
    }

    /// Computes the planned batch as [`DensePrefill::run`] from e4m3 `q`
    /// (`[num_rows, n_heads, 128]` bytes) and K/V, with their descales.
    /// Launch only.
    pub fn run<Q, O>(
        &mut self,
        q: &Q,
        kv: KvBuffers<u8>,
        descales: Fp8Descales,
        sinks: Option<&dyn DevicePtr<f32>>,
        out: &mut O,
        lse: Option<&mut dyn DevicePtrMut<f32>>,
    ) -> Result<()>
    where
        Q: DevicePtr<u8> + ?Sized,
        O: DevicePtrMut<bf16> + ?Sized,
    {
        let nkv = self.config().n_kv_heads;
        expect_len("q_descale", descales.q.len(), 1, "1")?;
        let per_head = descales.k.len() == nkv && nkv > 1;
        ensure(
            descales.k.len() == 1 || per_head,
            "k_descale",
            || format!("1 or n_kv_heads = {nkv} values"),
            || descales.k.len().to_string(),
        )?;
        expect_len(
            "v_descale",
            descales.v.len(),
            descales.k.len(),
            "as many as k_descale",
        )?;
        let gpu = self.core.gpu.clone();
        let mut b = Bufs::new(&gpu);
        let Some((mut base, cfg)) = self.core.prepare(&mut b, q, kv, sinks, out, lse)? else {
            return Ok(());
        };
        (base.tmaps, base.tiles) = (b.r(self.core.tmaps.device()), b.rec(&self.core.tiles));
        let params = DensePrefillFp8Params {
            base,
            q_descale: b.input("q_descale", descales.q)?,
            k_descale: b.input("k_descale", descales.k)?,
            v_descale: b.input("v_descale", descales.v)?,
            descale_stride: per_head as u32,
        };
        // SAFETY: as DensePrefill::run; the descales' lengths were checked
        // against the stride the kernel indexes them with.
        unsafe {
            gpu.launch(&self.kernel, "the FP8 dense prefill kernel", &params)
                .run(cfg)
        }
    }
}
