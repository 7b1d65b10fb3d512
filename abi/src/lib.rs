//! # sparse-attn-abi
//!
//! What the device code (`kernels-gpu`, compiled to PTX), the host crate
//! (`sparse-attn`), the CPU reference and the tests share, defined once:
//!
//! - [`msa`] and [`dense`]: the MSA kernels' and the dense prefill's tile
//!   shapes, shared-memory sizes, work records and one `#[repr(C)]`
//!   parameter struct per kernel; [`KERNEL_BOUNDS`]: every kernel's launch
//!   bounds;
//! - [`mla`]: the MLA FP8 lightning indexer's logits kernel; [`fp8`]: the
//!   e4m3 format;
//! - [`batch`]: the ragged batch, the paged cache (dtype, scales, page
//!   table) and the mask, as every layer describes them;
//! - [`config`]: the ops' configurations (`DensePrefillConfig`, `MlaIndexerConfig`, `MsaIndexerConfig`,
//!   `MsaAttentionConfig`);
//! - [`DPtr`] / [`DPtrMut`] and [`PagedKv`]: typed device addresses and a
//!   cache layer as the kernels see it, the fields of the parameter structs.
//!
//! A kernel takes its parameter struct by value
//! (`extern "ptx-kernel" fn k(p: MsaDecodeParams)`): the struct becomes one
//! `.param` of the kernel, its fields read in place with `ld.param` (as
//! `__grid_constant__` does in CUDA C++; checked with rustc's NVPTX backend,
//! sm_90a). The host fills the same struct and hands the launch builder a
//! pointer to it. Every struct is checked at compile time to fit the 4 KiB
//! kernel parameter space ([`KernelParams`]).
//!
//! `no_std` and without dependencies, so the device build can use it; its
//! sources are part of the PTX source hash (`cargo xtask build-ptx`).
#![no_std]
#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod dense;
pub mod fp8;
pub mod mla;
pub mod msa;
pub mod topk;

/// Bytes of a kernel's parameter space (PTX ISA: 4 KiB on sm_70+ with the
/// classic limit; every struct here stays below it).
pub const KERNEL_PARAM_BYTES: usize = 4096;

/// A kernel parameter struct: `#[repr(C)]`, plain data, no larger than the
/// parameter space. `KERNEL` names the entry point(s) that take it.
///
/// # Safety
/// The type must be `#[repr(C)]` (or transparent) plain data whose layout
/// both sides compile identically: integers, floats, [`DPtr`]s and other
/// such structs, no references.
pub unsafe trait KernelParams: Copy {
    /// PTX entry point names that take this struct as their only parameter.
    const KERNELS: &'static [&'static str];
}

/// Implements [`KernelParams`] and asserts the size at compile time.
macro_rules! kernel_params {
    ($($t:ty => [$($k:literal),+ $(,)?]),+ $(,)?) => {$(
        // SAFETY: every listed type is a #[repr(C)] struct of plain fields.
        unsafe impl $crate::KernelParams for $t {
            const KERNELS: &'static [&'static str] = &[$($k),+];
        }
        const _: () = assert!(core::mem::size_of::<$t>() <= $crate::KERNEL_PARAM_BYTES);
    )+};
}
pub(crate) use kernel_params;

/// A device address of `T` data the kernel reads (64-bit). Null means
/// "absent" where a field's docs say so.
///
/// Held as a raw pointer (8 bytes, as the driver's `CUdeviceptr`). Unlike a
/// pointer *parameter*, a pointer read from a parameter struct is not known
/// to point to global memory in LLVM's NVPTX backend: plain Rust loads and
/// stores through it become generic `ld` / `st`, so the kernels use the
/// explicit `.global` accessors of `arch::gmem` instead.
#[repr(transparent)]
pub struct DPtr<T> {
    addr: *const T,
}

/// A device address of `T` data the kernel writes. Null: "do not write"
/// where a field's docs say so.
#[repr(transparent)]
pub struct DPtrMut<T> {
    addr: *mut T,
}

// SAFETY: an address is plain data; the kernels, not the host, dereference it.
unsafe impl<T> Send for DPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for DPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Send for DPtrMut<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for DPtrMut<T> {}

macro_rules! dptr_common {
    ($name:ident, $raw:ty) => {
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $name<T> {}
        impl<T> core::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.addr())
            }
        }
        impl<T> Default for $name<T> {
            fn default() -> Self {
                Self::NULL
            }
        }
        impl<T> $name<T> {
            /// The null address.
            pub const NULL: Self = Self {
                addr: core::ptr::null_mut::<T>() as $raw,
            };

            /// The address `addr` (as the driver gives it).
            pub fn new(addr: u64) -> Self {
                Self {
                    addr: addr as usize as $raw,
                }
            }

            /// The raw address.
            pub fn addr(self) -> u64 {
                self.addr as usize as u64
            }

            /// The address `n` elements further on (host bookkeeping: a
            /// launch over a part of a buffer).
            pub fn offset(self, n: usize) -> Self {
                Self::new(self.addr() + (n * core::mem::size_of::<T>()) as u64)
            }

            /// Whether this is the null address.
            pub fn is_null(self) -> bool {
                self.addr.is_null()
            }

            /// The address as a pointer.
            #[inline(always)]
            pub fn ptr(self) -> $raw {
                self.addr
            }
        }
    };
}
dptr_common!(DPtr, *const T);
dptr_common!(DPtrMut, *mut T);

impl<T> DPtrMut<T> {
    /// The same address, read-only.
    pub fn read_only(self) -> DPtr<T> {
        DPtr {
            addr: self.addr as *const T,
        }
    }
}

/// A bf16 value carried as its bit pattern (the device has no bf16 type;
/// kernels widen it with a shift).
pub type Bf16Bits = u16;

/// Where one layer of a paged cache lives, in elements of the pool:
/// element `(page, kv, layer, slot, head, d)` of MAX's layout
/// `[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]` is at
/// `page * page_stride + (k_off or v_off) + (slot * n_heads + head) *
/// head_dim + d` (see [`batch::PagedLayout`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagedKv {
    /// Pages of the pool; kernels clamp every page id below it.
    pub num_pages: u32,
    /// Row stride of the page table `lookup: u32 [batch, max_pages]`.
    pub max_pages: u32,
    /// Elements from one page to the next.
    pub page_stride: u64,
    /// Element offset of the layer's K (index-K: its only plane) in a page.
    pub k_off: u64,
    /// Element offset of the layer's V in a page (unused for index-K).
    pub v_off: u64,
}

/// Launch bounds of every kernel: `(entry, threads per CTA, CTAs per SM
/// to keep resident or 0)`. The PTX build step (`cargo xtask build-ptx`)
/// writes them as the entry's `.maxntid` and `.minnctapersm` (rustc writes
/// none; warp-specialized kernels need them for `setmaxnreg`), and the host
/// refuses a launch with more threads. `.maxntid` alone left every kernel's
/// registers as they were. The decode kernel's `.minnctapersm 2` (its
/// shared memory holds 2 CTAs per SM anyway) took it from 168 to 220
/// registers; measured neutral (H200, 2026-12-02, the same cases before and
/// after, msa-decode-* within 1%). The dense prefill's `1` gives ptxas
/// the register count at entry that `setmaxnreg` needs. The indexer's score kernels need their
/// `2`: with the paged loader's row-stepped copies ptxas otherwise spilled
/// the prefill kernel. The top-k's `2` (its shared memory holds 2 CTAs per
/// SM) caps it at 128 registers; ptxas takes 122. The others keep ptxas'
/// choice.
pub const KERNEL_BOUNDS: &[(&str, u32, u32)] = &[
    ("dense_prefill", dense::DP_THREADS, 1),
    ("dense_prefill_fp8", dense::DP_THREADS, 1),
    ("dense_prefill_fp8_qbf16", dense::DP_THREADS, 1),
    ("dense_prefill_wide", dense::DP_THREADS, 1),
    ("dense_prefill_fp8_wide", dense::DP_THREADS, 1),
    ("dense_prefill_fp8_qbf16_wide", dense::DP_THREADS, 1),
    ("mla_logits_h64", mla::MI_THREADS, 1),
    ("mla_logits_h64_q1", mla::MI_THREADS, 1),
    ("mla_logits_h64_n64", mla::MI_THREADS, 1),
    ("mla_logits_h128", mla::MI_THREADS, 1),
    ("mla_logits_h128_q1", mla::MI_THREADS, 1),
    ("msa_indexer_scores_prefill", msa::IDX_THREADS, 2),
    ("msa_indexer_scores_decode", msa::IDX_THREADS, 2),
    ("msa_indexer_topk", msa::IDX_TOPK_WARPS * 32, 0),
    ("msa_indexer_topk_long", msa::IDX_TOPK_WARPS * 32, 0),
    ("msa_attention_partial", msa::ATT_THREADS, 2),
    ("msa_attention_combine", msa::MSA_HEAD_DIM, 0),
    ("msa_block_major_count", msa::BM_EDGE_THREADS, 0),
    ("msa_block_major_scan", msa::BM_SCAN_THREADS, 0),
    ("msa_block_major_scatter", msa::BM_EDGE_THREADS, 0),
    ("msa_block_major_run", msa::BM_THREADS, 0),
    ("msa_block_major_combine", msa::BM_COMBINE_WARPS * 32, 0),
    ("topk_rows", topk::TOPK_THREADS, 2),
];

/// The threads per CTA [`KERNEL_BOUNDS`] gives `kernel`.
pub fn kernel_threads(kernel: &str) -> Option<u32> {
    KERNEL_BOUNDS
        .iter()
        .find(|(k, _, _)| *k == kernel)
        .map(|&(_, t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every launch bound names a kernel of a parameter struct, once.
    #[test]
    fn launch_bounds_cover_the_parameter_structs() {
        let kernels: &[&[&str]] = &[
            <dense::DensePrefillParams as crate::KernelParams>::KERNELS,
            <dense::DensePrefillFp8Params as crate::KernelParams>::KERNELS,
            <mla::MlaLogitsParams as crate::KernelParams>::KERNELS,
            <msa::IdxScoreParams as crate::KernelParams>::KERNELS,
            <msa::IdxTopkParams as crate::KernelParams>::KERNELS,
            <msa::MsaDecodeParams as crate::KernelParams>::KERNELS,
            <msa::MsaCombineParams as crate::KernelParams>::KERNELS,
            <msa::BlockMajorEdgeParams as crate::KernelParams>::KERNELS,
            <msa::BlockMajorScanParams as crate::KernelParams>::KERNELS,
            <msa::BlockMajorRunParams as crate::KernelParams>::KERNELS,
            <msa::BlockMajorCombineParams as crate::KernelParams>::KERNELS,
            <topk::TopkParams as crate::KernelParams>::KERNELS,
        ];
        let all: usize = kernels.iter().map(|k| k.len()).sum();
        assert_eq!(all, KERNEL_BOUNDS.len());
        for k in kernels.iter().flat_map(|k| k.iter()) {
            assert_eq!(
                KERNEL_BOUNDS.iter().filter(|(n, _, _)| n == k).count(),
                1,
                "{k}"
            );
            assert!(kernel_threads(k).is_some_and(|t| t > 0 && t <= 1024), "{k}");
        }
    }
}
