//! Kernel launches, all through one builder, with Hopper's programmatic
//! dependent launch (PDL).
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

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig};

use crate::context::Gpu;
use crate::error::{CudaContextExt, Error, Result};

/// A kernel parameter: its bits, widened to 8 bytes. The driver reads as
/// many bytes as the parameter's PTX type has from the cell's address, so a
/// 4-byte value sits in the low half (little-endian).
pub(crate) trait KernelArg {
    fn cell(&self, gpu: &Gpu) -> u64;
}

impl KernelArg for u32 {
    fn cell(&self, _: &Gpu) -> u64 {
        *self as u64
    }
}

impl KernelArg for u64 {
    fn cell(&self, _: &Gpu) -> u64 {
        *self
    }
}

impl KernelArg for f32 {
    fn cell(&self, _: &Gpu) -> u64 {
        self.to_bits() as u64
    }
}

/// A device buffer is passed as its address.
impl<T> KernelArg for CudaSlice<T> {
    fn cell(&self, gpu: &Gpu) -> u64 {
        // The context does no event tracking (see `Gpu::new`), so the
        // returned guard records nothing.
        let (ptr, _guard) = self.device_ptr(gpu.stream());
        ptr
    }
}

/// An optional output: a null pointer tells the kernel not to write it.
impl<T> KernelArg for Option<&mut CudaSlice<T>> {
    fn cell(&self, gpu: &Gpu) -> u64 {
        self.as_deref().map_or(0, |s| s.cell(gpu))
    }
}

/// Most parameters a kernel of this crate takes (the decode kernel has 21).
const MAX_ARGS: usize = 24;

/// One launch being assembled: `gpu.launch(&kernel, "what").arg(..)…run(cfg)`.
/// The parameters live in a fixed array: no allocation per launch.
pub(crate) struct Launch<'a> {
    gpu: &'a Gpu,
    func: &'a CudaFunction,
    what: &'static str,
    cells: [u64; MAX_ARGS],
    /// Parameters pushed so far (more than `MAX_ARGS`: `run` refuses).
    n_args: usize,
    /// CTAs per thread-block cluster along x (1: no clusters).
    cluster: u32,
}

impl<'a> Launch<'a> {
    pub(crate) fn new(gpu: &'a Gpu, func: &'a CudaFunction, what: &'static str) -> Self {
        Launch {
            gpu,
            func,
            what,
            cells: [0; MAX_ARGS],
            n_args: 0,
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

    /// Appends the next parameter, in the kernel signature's order.
    pub(crate) fn arg(&mut self, a: &(impl KernelArg + ?Sized)) -> &mut Self {
        if let Some(c) = self.cells.get_mut(self.n_args) {
            *c = a.cell(self.gpu);
        }
        self.n_args += 1;
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
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, self.func.cu_function(), &config) }
            .result()
            .during(|| format!("asking how many clusters of {cluster} of {what} fit"))?;
        Ok(n.max(0) as u32)
    }

    /// Enqueues the kernel on the crate's stream.
    ///
    /// # Safety
    /// The parameters must match the kernel's signature in number, order and
    /// type, and every buffer must be large enough for what the kernel
    /// touches under these launch dimensions.
    pub(crate) unsafe fn run(&mut self, cfg: LaunchConfig) -> Result<()> {
        let what = self.what;
        if self.n_args > MAX_ARGS {
            return Err(Error::Unsupported {
                arg: "kernel parameters",
                what: format!(
                    "{what} takes {} parameters, at most {MAX_ARGS}",
                    self.n_args
                ),
            });
        }
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, c) in params.iter_mut().zip(&mut self.cells) {
            *p = c as *mut u64 as *mut c_void;
        }
        // SAFETY: zeroed attributes are valid; `config` sets those it uses.
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let config = self.config(&cfg, &mut attrs);
        self.gpu
            .context()
            .bind_to_thread()
            .during(|| format!("binding the context before {what}"))?;
        // SAFETY: `params` points at one live cell per kernel parameter (the
        // caller vouches for their number and types); `config` and `attrs`
        // outlive the call, which copies them.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .during(|| format!("launching {what}"))
    }
}
