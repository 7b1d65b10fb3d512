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
//!   `reference-cpu`'s `check_dense_prefill_fp8` bound;
//! - bf16 queries against an e4m3 cache ([`DensePrefillFp8::run`] on bf16 `q`):
//!   each query row (one token, one head) is quantised to e4m3 in the
//!   kernel with its own scale, `amax / 448` (`reference-cpu`'s
//!   `quantize_row_e4m3`), and the products run at the FP8 rate.
//!   Dequantising K and V to bf16 on load instead would run the bf16
//!   products, so it could be no faster than the bf16 kernel on the same
//!   shape (this path's own rate is not measured yet: BENCHMARKS.md).

use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use crate::abi::dense::*;
use crate::abi::DPtr;
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

/// The element type of the queries of [`DensePrefillFp8::run`]: `u8`
/// (e4m3 bytes) or bf16.
pub trait Fp8Query: sealed::Sealed {}

impl Fp8Query for u8 {}
impl Fp8Query for bf16 {}

// The sealed-trait pattern: `Sealed` is unnameable outside the crate, so
// the crate-private types it mentions stay private.
#[allow(private_interfaces, private_bounds)]
mod sealed {
    use crate::dense_prefill::Elem;

    /// Which kernel takes the queries.
    pub trait Sealed: crate::launch::DeviceElem {
        const ELEM: Elem;
    }

    impl Sealed for u8 {
        const ELEM: Elem = Elem::E4m3;
    }

    impl Sealed for half::bf16 {
        const ELEM: Elem = Elem::Bf16;
    }
}

/// The FP8 dense flash prefill: [`DensePrefill`]'s `plan`, and a `run` on
/// e4m3 K/V and e4m3 or bf16 queries.
pub struct DensePrefillFp8 {
    core: DensePrefill,
    kernel: Kernel<DensePrefillFp8Params>,
    /// The same on bf16 queries.
    kernel_qbf16: Kernel<DensePrefillFp8Params>,
    /// Both with key tiles of `DP8_WIDE_N` keys (contiguous K/V).
    kernel_wide: Kernel<DensePrefillFp8Params>,
    kernel_qbf16_wide: Kernel<DensePrefillFp8Params>,
}

impl DensePrefillFp8 {
    /// The op for `cfg` (checked as [`DensePrefill::new`]).
    pub fn new(gpu: &Gpu, cfg: DensePrefillConfig) -> Result<Self> {
        let mut core = DensePrefill::new(gpu, cfg)?;
        core.elem = Elem::E4m3;
        Ok(DensePrefillFp8 {
            core,
            kernel: gpu.kernel("dense_prefill_fp8", DP8_SMEM)?,
            kernel_qbf16: gpu.kernel("dense_prefill_fp8_qbf16", DP8_SMEM)?,
            kernel_wide: gpu.kernel("dense_prefill_fp8_wide", DP8_SMEM)?,
            kernel_qbf16_wide: gpu.kernel("dense_prefill_fp8_qbf16_wide", DP8_SMEM)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DensePrefillConfig {
        self.core.config()
    }

    /// As [`DensePrefill::set_key_tile`] (the wide tile: `DP8_WIDE_N`).
    pub fn set_key_tile(&mut self, keys: Option<u32>) -> Result<()> {
        self.core.set_key_tile(keys)
    }

    /// As [`DensePrefill::key_tile`].
    pub fn key_tile(&self) -> Option<u32> {
        self.core.key_tile()
    }

    /// As [`DensePrefill::plan`]; a paged pool must be of
    /// `KvDtype::Fp8E4m3` bytes.
    pub fn plan(&mut self, batch: &RaggedBatch, kv: &KvLayout) -> Result<()> {
        self.core.plan(batch, kv)
    }

    /// Computes the planned batch as [`DensePrefill::run`] from `q`
    /// (`[num_rows, n_heads, 128]`: e4m3 bytes, or bf16 queries, each row
    /// quantised to e4m3 in the kernel as the module's docs say; their
    /// `descales.q` is not read) and e4m3 K/V, with their descales. Launch
    /// only.
    pub fn run<T, Q, O>(
        &mut self,
        q: &Q,
        kv: KvBuffers<u8>,
        descales: Fp8Descales,
        sinks: Option<&dyn DevicePtr<f32>>,
        out: &mut O,
        lse: Option<&mut dyn DevicePtrMut<f32>>,
    ) -> Result<()>
    where
        T: Fp8Query,
        Q: DevicePtr<T> + ?Sized,
        O: DevicePtrMut<bf16> + ?Sized,
    {
        let q_elem = <T as sealed::Sealed>::ELEM;
        if q_elem == Elem::E4m3 {
            expect_len("q_descale", descales.q.len(), 1, "1")?;
        }
        let nkv = self.config().n_kv_heads;
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
        let Some((mut base, cfg)) = self
            .core
            .prepare(&mut b, (q, q_elem), kv, sinks, out, lse)?
        else {
            return Ok(());
        };
        (base.tmaps, base.tiles) = (b.r(self.core.tmaps.device()), b.rec(&self.core.tiles));
        let params = DensePrefillFp8Params {
            base,
            q_descale: match q_elem {
                Elem::E4m3 => b.input("q_descale", descales.q)?,
                Elem::Bf16 => DPtr::NULL, // not read by the bf16-query kernel
            },
            k_descale: b.input("k_descale", descales.k)?,
            v_descale: b.input("v_descale", descales.v)?,
            descale_stride: per_head as u32,
        };
        let wide = self.core.wide();
        let (kernel, what) = match (q_elem, wide) {
            (Elem::E4m3, false) => (&self.kernel, "the FP8 dense prefill kernel"),
            (Elem::E4m3, true) => (&self.kernel_wide, "the FP8 dense prefill kernel"),
            (Elem::Bf16, false) => (
                &self.kernel_qbf16,
                "the FP8 dense prefill kernel (bf16 queries)",
            ),
            (Elem::Bf16, true) => (
                &self.kernel_qbf16_wide,
                "the FP8 dense prefill kernel (bf16 queries)",
            ),
        };
        // SAFETY: as DensePrefill::run; the descales' lengths were checked
        // against the stride the kernel indexes them with.
        unsafe { gpu.launch(kernel, what, &params).run(cfg) }
    }
}
