//! Kernel launches, all through one builder, with Hopper's programmatic
//! dependent launch (PDL), and typed kernel parameters.
//!
//! Every kernel takes one `#[repr(C)]` parameter struct of the abi crate by
//! value (`sparse_attn_abi::KernelParams`). A [`Kernel<P>`] is a loaded
//! entry point that takes `P` (checked against `P::KERNELS` when it is
//! loaded), and [`Launch`] hands the driver a pointer to one `P`: the
//! kernel's parameter list cannot be given in the wrong order or with the
//! wrong types. Device buffers become typed addresses through [`Bufs`]
//! (bf16 as its bit pattern, `u16`), which checks the caller's buffers and
//! holds cudarc's guards until the run's launches are enqueued.
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
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, LaunchConfig,
    SyncOnDrop,
};
use half::bf16;
use sparse_attn_abi::{DPtr, DPtrMut, KernelParams};

use crate::context::Gpu;
use crate::error::{CudaContextExt, Error, Result};
use crate::workspace::Workspace;

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

/// The device buffers of one `run`: their typed addresses, and the guards
/// cudarc hands out with them, held until every launch of the run is
/// enqueued (they drop with this value, at the end of `run`).
///
/// The guards matter where the context tracks buffer uses with events
/// (cudarc's default, kept on a context this crate borrows, see
/// [`Gpu::from_stream`]): taking an address makes the stream wait for the
/// buffer's last write (and, for an output, its last reads) on other
/// streams, and dropping the guard records this stream's work as the
/// buffer's last read (write): so it must drop after the launch is
/// enqueued. Where tracking is off (a context [`Gpu::new`] opened) the
/// guards do nothing.
///
/// Caller buffers are checked here: same CUDA context as the handle
/// ([`Error::WrongContext`] naming the argument), start aligned to 16 bytes
/// (views at offsets of whole rows are).
pub(crate) struct Bufs<'a> {
    gpu: &'a Gpu,
    guards: Vec<SyncOnDrop<'a>>,
}

/// Alignment every caller buffer must start at (the kernels' vector loads
/// and TMA need 16 bytes).
pub(crate) const BUF_ALIGN: u64 = 16;

impl<'a> Bufs<'a> {
    pub(crate) fn new(gpu: &'a Gpu) -> Self {
        Bufs {
            gpu,
            guards: Vec::with_capacity(16),
        }
    }

    /// The handle the addresses are for.
    pub(crate) fn gpu(&self) -> &'a Gpu {
        self.gpu
    }

    /// `arg` lives in the handle's context; its address is aligned.
    fn check<T, S: DeviceSlice<T> + ?Sized>(&self, arg: &'static str, s: &S) -> Result<()> {
        check_context(self.gpu, arg, s.stream())
    }

    fn aligned(arg: &'static str, addr: u64) -> Result<u64> {
        if addr.is_multiple_of(BUF_ALIGN) {
            Ok(addr)
        } else {
            Err(Error::invalid(
                arg,
                format!("a device address aligned to {BUF_ALIGN} bytes"),
                format!("{addr:#x}"),
            ))
        }
    }

    /// A caller buffer the kernels read.
    pub(crate) fn input<T: DeviceElem, S: DevicePtr<T> + ?Sized>(
        &mut self,
        arg: &'static str,
        s: &'a S,
    ) -> Result<DPtr<T::Dev>> {
        self.check(arg, s)?;
        let (ptr, guard) = s.device_ptr(self.gpu.stream());
        self.guards.push(guard);
        Ok(DPtr::new(Self::aligned(arg, ptr)?))
    }

    /// An optional caller buffer the kernels read (null when absent).
    pub(crate) fn opt_input<'b: 'a, T: DeviceElem>(
        &mut self,
        arg: &'static str,
        s: Option<&'a (dyn DevicePtr<T> + 'b)>,
    ) -> Result<DPtr<T::Dev>> {
        s.map_or(Ok(DPtr::default()), |s| self.input(arg, s))
    }

    /// A caller buffer the kernels write.
    pub(crate) fn output<T: DeviceElem, S: DevicePtrMut<T> + ?Sized>(
        &mut self,
        arg: &'static str,
        s: &'a mut S,
    ) -> Result<DPtrMut<T::Dev>> {
        self.check(arg, s)?;
        let (ptr, guard) = s.device_ptr_mut(self.gpu.stream());
        self.guards.push(guard);
        Ok(DPtrMut::new(Self::aligned(arg, ptr)?))
    }

    /// An optional output: null tells the kernel not to write it.
    pub(crate) fn opt_output<'b: 'a, T: DeviceElem>(
        &mut self,
        arg: &'static str,
        s: Option<&'a mut (dyn DevicePtrMut<T> + 'b)>,
    ) -> Result<DPtrMut<T::Dev>> {
        s.map_or(Ok(DPtrMut::NULL), |s| self.output(arg, s))
    }

    /// The address of a buffer the op owns (allocated by this handle):
    /// read, or written through `&self` (the device, not the host, mutates
    /// it; the op's `run` is the only user, in stream order).
    fn own<T>(&mut self, s: &'a CudaSlice<T>) -> u64 {
        let (ptr, guard) = s.device_ptr(self.gpu.stream());
        self.guards.push(guard);
        ptr
    }

    /// An op-owned buffer the kernels read.
    pub(crate) fn r<T: DeviceElem>(&mut self, s: &'a CudaSlice<T>) -> DPtr<T::Dev> {
        DPtr::new(self.own(s))
    }

    /// An op-owned buffer the kernels write.
    pub(crate) fn w<T: DeviceElem>(&mut self, s: &'a CudaSlice<T>) -> DPtrMut<T::Dev> {
        DPtrMut::new(self.own(s))
    }

    /// An op-owned buffer of abi work records `R` stored as `u32` words
    /// (see [`record_words`]).
    pub(crate) fn rec<R>(&mut self, s: &'a CudaSlice<u32>) -> DPtr<R> {
        DPtr::new(self.own(s))
    }

    /// [`Bufs::rec`] for a buffer the kernels write.
    pub(crate) fn rec_mut<R>(&mut self, s: &'a CudaSlice<u32>) -> DPtrMut<R> {
        DPtrMut::new(self.own(s))
    }

    /// The base address of a workspace's memory (its guard held like the
    /// others'); the op adds its sub-buffers' offsets.
    pub(crate) fn workspace(&mut self, ws: &'a Workspace) -> u64 {
        let (ptr, guard) = ws.device_ptr(self.gpu.stream());
        self.guards.push(guard);
        ptr
    }
}

/// Fails with [`Error::WrongContext`] unless `stream` (a buffer's) belongs
/// to the context of `gpu`.
pub(crate) fn check_context(gpu: &Gpu, arg: &'static str, stream: &CudaStream) -> Result<()> {
    let (want, got) = (gpu.context(), stream.context());
    if want.cu_ctx() == got.cu_ctx() {
        return Ok(());
    }
    let name = |c: &cudarc::driver::CudaContext| {
        format!("device {} (context {:p})", c.ordinal(), c.cu_ctx())
    };
    Err(Error::WrongContext {
        arg,
        expected: name(want),
        actual: name(got),
    })
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
