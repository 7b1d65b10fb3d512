//! Kernel launches, all through one builder, with Hopper's programmatic
//! dependent launch (PDL), and typed kernel parameters.
//!
//! Every kernel takes one `#[repr(C)]` parameter struct of the abi crate by
//! value (`sparse_attn_abi::KernelParams`). A [`Kernel<P>`] is a loaded
//! entry point that takes `P` (checked against `P::KERNELS` when it is
//! loaded), and [`Launch`] hands the driver a pointer to one `P`: the
//! kernel's parameter list cannot be given in the wrong order or with the
//! wrong types. Device buffers become typed addresses with [`dptr`] /
//! [`dptr_mut`] (bf16 as its bit pattern, `u16`) or, for work records
//! uploaded as words, [`record_ptr`].
//!
//! Every launch of this crate sets `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`
//! (`cuLaunchKernelEx`). The next kernel on the stream may then be scheduled
//! while the previous one drains, instead of after it: the launch latency
//! between dependent kernels (indexer → attention, partial → combine, call →
//! call in a serving loop) overlaps the previous kernel's tail.
//!
//! The contract that keeps this correct, on the device side
//! (`kernels-gpu/src/cuda.rs`): every kernel's first statement is
//! `grid_dependency_wait()` (`griddepcontrol.wait`), which returns once the
//! previous grid on the stream has completed and its memory is visible. So no
//! kernel reads or writes global memory before its predecessor — ours or a
//! user's — is done; only the launch itself moves earlier. Each kernel then
//! calls `launch_dependents()` (`griddepcontrol.launch_dependents`) so that
//! its successor is scheduled as soon as every CTA of the grid has started.
//!
//! [`Gpu::set_programmatic_launch`] turns the attribute off (plain stream
//! order; the kernels' `griddepcontrol` instructions then return at once),
//! for measuring what it buys. Measured (H200, 2026-11-30, BENCHMARKS.md),
//! eager µs per call with / without: msa-decode-b1-128k 8.1 / 9.1 (before
//! the decode epilogue change, 9.8–10.0 / 11.6–12.3 over five calls),
//! msa-decode-tp8 36.4 / 37.7, the b1-128k decode step 21.7 / 22.1;
//! msa-decode-b64-32k, one long kernel per call, 68.4 / 69.5, within the
//! spread it shows between calls.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig};
use half::bf16;
use sparse_attn_abi::{DPtr, DPtrMut, KernelParams};

use crate::context::Gpu;
use crate::error::{CudaContextExt, Error, Result};

/// A loaded entry point of the module that takes the parameter struct `P`.
pub(crate) struct Kernel<P: KernelParams> {
    func: CudaFunction,
    name: &'static str,
    /// Its `.maxntid` (`sparse_attn_abi::KERNEL_BOUNDS`).
    max_threads: u32,
    _params: PhantomData<fn(P)>,
}

impl<P: KernelParams> Kernel<P> {
    /// Wraps `func`, the entry point `name`, after checking that `P` is its
    /// parameter struct.
    pub(crate) fn new(func: CudaFunction, name: &'static str) -> Result<Self> {
        if !P::KERNELS.contains(&name) {
            return Err(Error::Unsupported {
                arg: "kernel",
                what: format!(
                    "`{name}` does not take {} (it is the parameter struct of {:?})",
                    std::any::type_name::<P>(),
                    P::KERNELS
                ),
            });
        }
        let max_threads = sparse_attn_abi::kernel_threads(name).ok_or(Error::Unsupported {
            arg: "kernel",
            what: format!("`{name}` has no launch bounds in KERNEL_BOUNDS"),
        })?;
        Ok(Kernel {
            func,
            name,
            max_threads,
            _params: PhantomData,
        })
    }

    /// Allows clusters above 8 CTAs ("non-portable": per kernel, and to
    /// be used only where the driver says they can be resident).
    pub(crate) fn allow_clusters_of_16(&self) -> Result<()> {
        self.func
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )
            .during(|| format!("allowing clusters of 16 for `{}`", self.name))
    }
}

/// The element type a kernel sees for a host element type: bf16 as its
/// bit pattern, everything else as itself.
pub(crate) trait DeviceElem {
    /// The device-side type.
    type Dev;
}

impl DeviceElem for bf16 {
    type Dev = u16;
}

macro_rules! same_on_device {
    ($($t:ty),*) => {$(impl DeviceElem for $t { type Dev = $t; })*};
}
same_on_device!(u8, u32, i32, f32);

fn address<T>(gpu: &Gpu, s: &CudaSlice<T>) -> u64 {
    // The context does no event tracking (see `Gpu::new`), so the returned
    // guard records nothing.
    let (ptr, _guard) = s.device_ptr(gpu.stream());
    ptr
}

/// The typed device address of a buffer the kernel reads.
pub(crate) fn dptr<T: DeviceElem>(gpu: &Gpu, s: &CudaSlice<T>) -> DPtr<T::Dev> {
    DPtr::new(address(gpu, s))
}

/// The typed device address of a buffer the kernel writes (a workspace
/// buffer owned by an op is written through `&self`: the device, not the
/// host, mutates it).
pub(crate) fn dptr_mut<T: DeviceElem>(gpu: &Gpu, s: &CudaSlice<T>) -> DPtrMut<T::Dev> {
    DPtrMut::new(address(gpu, s))
}

/// An optional output: null tells the kernel not to write it.
pub(crate) fn dptr_opt<T: DeviceElem>(gpu: &Gpu, s: Option<&CudaSlice<T>>) -> DPtrMut<T::Dev> {
    s.map_or(DPtrMut::NULL, |s| dptr_mut(gpu, s))
}

/// The address of a buffer of abi work records `R` stored as `u32` words
/// (see [`record_words`]).
pub(crate) fn record_ptr<R>(gpu: &Gpu, s: &CudaSlice<u32>) -> DPtr<R> {
    DPtr::new(address(gpu, s))
}

/// [`record_ptr`] for a buffer the kernel writes.
pub(crate) fn record_ptr_mut<R>(gpu: &Gpu, s: &CudaSlice<u32>) -> DPtrMut<R> {
    DPtrMut::new(address(gpu, s))
}

/// Words of a slice of abi work records (plain `#[repr(C)]` structs of
/// `u32` fields), for uploading into a `CudaSlice<u32>`.
pub(crate) fn record_words<R: Copy>(recs: &[R]) -> &[u32] {
    const { assert!(std::mem::size_of::<R>().is_multiple_of(4) && std::mem::align_of::<R>() >= 4) };
    // SAFETY: the records are plain data of 4-byte words (checked above: no
    // padding smaller than a word, alignment at least a word's), so their
    // bytes are valid `u32`s; the length covers exactly the records.
    unsafe {
        std::slice::from_raw_parts(recs.as_ptr() as *const u32, std::mem::size_of_val(recs) / 4)
    }
}

/// Words of `n` records of `R`.
pub(crate) const fn words_of<R>(n: usize) -> usize {
    n * std::mem::size_of::<R>() / 4
}

/// One launch being assembled: `gpu.launch(&kernel, "what", &params)…run(cfg)`.
pub(crate) struct Launch<'a, P: KernelParams> {
    gpu: &'a Gpu,
    kernel: &'a Kernel<P>,
    what: &'static str,
    params: &'a P,
    /// CTAs per thread-block cluster along x (1: no clusters).
    cluster: u32,
}

impl<'a, P: KernelParams> Launch<'a, P> {
    pub(crate) fn new(
        gpu: &'a Gpu,
        kernel: &'a Kernel<P>,
        what: &'static str,
        params: &'a P,
    ) -> Self {
        Launch {
            gpu,
            kernel,
            what,
            params,
            cluster: 1,
        }
    }

    /// Groups the grid's CTAs `n` by `n` along x into thread-block clusters
    /// (`CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION`); the grid's x must be a
    /// multiple of `n`.
    pub(crate) fn cluster(&mut self, n: u32) -> &mut Self {
        self.cluster = n;
        self
    }

    /// The driver's launch description of `cfg` with this launch's
    /// attributes (programmatic serialization when on, the cluster shape when
    /// set), which it writes into `attrs`.
    fn config(
        &self,
        cfg: &LaunchConfig,
        attrs: &mut [sys::CUlaunchAttribute; 2],
    ) -> sys::CUlaunchConfig {
        let mut n_attrs = 0;
        if self.gpu.programmatic_launch() {
            let a = &mut attrs[n_attrs];
            a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            a.value.programmaticStreamSerializationAllowed = 1;
            n_attrs += 1;
        }
        if self.cluster > 1 {
            let a = &mut attrs[n_attrs];
            a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            a.value.clusterDim.x = self.cluster;
            a.value.clusterDim.y = 1;
            a.value.clusterDim.z = 1;
            n_attrs += 1;
        }
        sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.gpu.stream().cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n_attrs as u32,
        }
    }

    /// How many clusters of this launch's shape (`cluster`, then `cfg`'s
    /// block and shared memory) can be resident at once
    /// (`cuOccupancyMaxActiveClusters`); 0 when they cannot be scheduled.
    pub(crate) fn max_active_clusters(&self, cfg: LaunchConfig) -> Result<u32> {
        // SAFETY: zeroed attributes are valid; `config` sets those it uses.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let config = self.config(&cfg, &mut attrs);
        let (what, cluster) = (self.what, self.cluster);
        self.gpu
            .context()
            .bind_to_thread()
            .during(|| format!("binding the context for {what}"))?;
        let mut n: std::ffi::c_int = 0;
        // SAFETY: `config` and `attrs` outlive the call; `n` is written.
        unsafe {
            sys::cuOccupancyMaxActiveClusters(&mut n, self.kernel.func.cu_function(), &config)
        }
        .result()
        .during(|| format!("asking how many clusters of {cluster} of {what} fit"))?;
        Ok(n.max(0) as u32)
    }

    /// Enqueues the kernel on the crate's stream.
    ///
    /// # Safety
    /// Every buffer the parameters name must be large enough for what the
    /// kernel touches under these launch dimensions (the parameter list
    /// itself is typed: `P` is the kernel's struct).
    pub(crate) unsafe fn run(&mut self, cfg: LaunchConfig) -> Result<()> {
        let what = self.what;
        let (x, y, z) = cfg.block_dim;
        if x * y * z > self.kernel.max_threads {
            return Err(Error::Unsupported {
                arg: "block_dim",
                what: format!(
                    "{what}: {} threads per CTA, `{}` is built for at most {}",
                    x * y * z,
                    self.kernel.name,
                    self.kernel.max_threads
                ),
            });
        }
        // The kernel's one parameter: the struct, read by the driver from
        // this address during the call.
        let mut params = [self.params as *const P as *mut c_void];
        // SAFETY: zeroed attributes are valid; `config` sets those it uses.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let config = self.config(&cfg, &mut attrs);
        self.gpu
            .context()
            .bind_to_thread()
            .during(|| format!("binding the context before {what}"))?;
        // SAFETY: `params` holds the address of the kernel's one parameter,
        // a live `P` (checked to be its struct when the kernel was loaded);
        // `config` and `attrs` outlive the call, which copies them.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.kernel.func.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .during(|| format!("launching {what}"))
    }
}
