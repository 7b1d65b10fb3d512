//! The GPU handle: one context, one stream, the kernel module loaded once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{
    sys, CudaContext, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};

use sparse_attn_abi::KernelParams;

use crate::error::{CudaContextExt, Error, Result};
use crate::launch::{Kernel, Launch};

/// What the kernels' launch decisions need to know about the device.
#[derive(Clone, Debug)]
pub struct DeviceProps {
    /// The device's name as the driver reports it.
    pub name: String,
    /// Compute capability (major, minor); the kernels need 9.0 (sm_90a).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors (sizes the split-K and work-item rules).
    pub sm_count: u32,
    /// Largest dynamic shared memory a block may opt into, in bytes.
    pub max_smem_per_block_optin: u32,
    /// Shared memory of one SM, in bytes.
    pub smem_per_sm: u32,
    /// L2 cache size, in bytes.
    pub l2_bytes: u32,
}

/// A CUDA context with its stream and the library's module.
///
/// Everything this crate launches goes to [`Gpu::stream`], in order; no call
/// synchronises with the host unless its documentation says so. Made by
/// [`Gpu::new`] (a device's primary context and a stream of its own), or on
/// the caller's stream: [`Gpu::from_stream`] (a cudarc stream, e.g.
/// candle's) and [`Gpu::from_raw`] (driver-API handles, for C and Python).
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    props: DeviceProps,
    /// Launch with programmatic dependent launch (see `launch.rs`); shared
    /// by the clones of this handle.
    pdl: Arc<AtomicBool>,
}

impl Gpu {
    /// Whether the NVIDIA driver library can be loaded here (no GPU call is made).
    pub fn driver_present() -> bool {
        // Not cudarc's `driver::sys::is_culib_present()`: it exists only while
        // cudarc loads the driver at run time, and a program that also turns
        // on cudarc's `dynamic-linking` (candle does) configures it out.
        const NAMES: &[&str] = if cfg!(windows) {
            &["nvcuda.dll"]
        } else {
            &["libcuda.so.1", "libcuda.so"]
        };
        // SAFETY: only tries to dlopen the driver library (and closes it).
        NAMES
            .iter()
            .any(|name| unsafe { libloading::Library::new(*name) }.is_ok())
    }

    /// Opens device `ordinal`, loads the embedded PTX and reads the properties.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_ptx(ordinal, crate::ptx::PTX)
    }

    /// [`Gpu::new`] with another build of the kernels' PTX: for measuring a
    /// kernel variant against the embedded one with the same binaries (the
    /// bench's `--ptx`). The PTX must come from this crate's kernel sources
    /// at a version with the same kernel names and parameter structs; a
    /// mismatch is not detected.
    pub fn with_ptx(ordinal: usize, ptx: &str) -> Result<Self> {
        Self::require_driver()?;
        let ctx = CudaContext::new(ordinal).during(|| format!("opening device {ordinal}"))?;
        // One stream, in-order: cudarc's per-buffer event tracking is not needed
        // and would add events to every launch (and to graph captures).
        // SAFETY: this handle's context object is its own (no other user
        // shares its tracking flag), and this crate uses one stream per handle.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured
        // into a CUDA graph.
        let stream = ctx.new_stream().during(|| "creating a stream".into())?;
        Self::from_parts(stream, ptx)
    }

    /// A handle on the caller's stream (and its context): every launch of
    /// the ops built on it goes to `stream`, in order with the caller's own
    /// work there; nothing here synchronises it.
    ///
    /// For a framework that owns the device, e.g. candle's `CudaDevice`
    /// (`Gpu::from_stream(dev.cuda_stream())`). The context is borrowed as
    /// it is: its event tracking is left as the owner set it (cudarc turns
    /// it on by default); with tracking on, the ops hold cudarc's guards of
    /// every buffer across the launches, so other streams' uses of the
    /// buffers are ordered against them as cudarc promises. The embedded
    /// PTX is loaded into the context (once per handle; clones share it).
    /// Like every cudarc call, the handle's calls make the context current
    /// on the calling thread.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        Self::require_driver()?;
        Self::from_parts(stream, crate::ptx::PTX)
    }

    /// A handle on a raw context and stream of the driver API, for C and
    /// Python callers (PyTorch: `torch.cuda.current_stream().cuda_stream`
    /// and the device's primary context, `cuCtxGetCurrent` after it is
    /// initialised). Launches go to `cu_stream`; nothing synchronises it;
    /// neither handle is destroyed when the `Gpu` drops.
    ///
    /// A primary context is retained (and released with the handle), so it
    /// stays alive as long as the handle; a non-primary context is wrapped
    /// without taking ownership (cudarc's wrapper of it is deliberately never
    /// dropped, which would destroy it: a few hundred bytes of host memory
    /// per call). The wrapper's event tracking is off: this crate's own
    /// buffers are used on `cu_stream` only, and the caller's memory comes
    /// in as [`crate::RawBuffer`]s.
    ///
    /// # Safety
    /// `cu_ctx` must be a live context and `cu_stream` a stream of it (or
    /// null: the legacy default stream, which cannot be captured in a
    /// graph); the caller keeps both alive while the handle, an op built
    /// on it, or work they enqueued may still use them.
    pub unsafe fn from_raw(cu_ctx: sys::CUcontext, cu_stream: sys::CUstream) -> Result<Self> {
        Self::require_driver()?;
        cudarc::driver::result::init().during(|| "initialising the driver".into())?;
        let mut dev: sys::CUdevice = 0;
        // SAFETY: `cu_ctx` is live (the caller's contract); it is made
        // current only to ask its device, then the previous one is restored.
        unsafe {
            sys::cuCtxPushCurrent_v2(cu_ctx)
                .result()
                .during(|| "making the caller's context current".into())?;
            let got = sys::cuCtxGetDevice(&mut dev).result();
            let mut popped = std::ptr::null_mut();
            sys::cuCtxPopCurrent_v2(&mut popped)
                .result()
                .during(|| "restoring the current context".into())?;
            got.during(|| "asking the device of the caller's context".into())?;
        }
        let count = CudaContext::device_count().during(|| "counting the devices".into())?;
        let ordinal = (0..count)
            .find(|&i| cudarc::driver::result::device::get(i).is_ok_and(|d| d == dev))
            .ok_or_else(|| Error::invalid("cu_ctx", "a context of a visible device", "none"))?
            as usize;
        // Is it the device's primary context? Only asked when the primary
        // context is active, so that it is never created here.
        let (mut flags, mut active) = (0u32, 0i32);
        // SAFETY: plain queries of a valid device.
        unsafe { sys::cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) }
            .result()
            .during(|| "reading the primary context's state".into())?;
        let mut ctx = None;
        if active != 0 {
            let primary =
                CudaContext::new(ordinal).during(|| format!("retaining device {ordinal}"))?;
            if primary.cu_ctx() == cu_ctx {
                ctx = Some(primary);
            }
        }
        let ctx = match ctx {
            Some(c) => c,
            None => {
                // SAFETY: a live context of device `dev` (the caller's
                // contract); the extra reference leaked below keeps cudarc
                // from destroying it.
                let c = unsafe { CudaContext::from_raw_context(ordinal, dev, cu_ctx) }
                    .during(|| "wrapping the caller's context".into())?;
                std::mem::forget(c.clone());
                c
            }
        };
        // SAFETY: this wrapper object is ours alone (see above).
        unsafe { ctx.disable_event_tracking() };
        // SAFETY: a stream of this context, kept alive by the caller.
        let stream = unsafe { ctx.wrap_borrowed_stream(cu_stream) };
        Self::from_parts(stream, crate::ptx::PTX)
    }

    fn require_driver() -> Result<()> {
        if Self::driver_present() {
            Ok(())
        } else {
            Err(Error::NoDriver(
                "libcuda could not be loaded (no NVIDIA driver on this machine)".into(),
            ))
        }
    }

    /// The handle on `stream` (its context), with `ptx` loaded.
    fn from_parts(stream: Arc<CudaStream>, ptx: &str) -> Result<Self> {
        let ctx = stream.context().clone();
        let attr = |a| ctx.attribute(a).during(|| format!("reading {a:?}"));
        let props = DeviceProps {
            name: ctx.name().during(|| "reading the device name".into())?,
            compute_capability: ctx
                .compute_capability()
                .during(|| "reading the compute capability".into())?,
            sm_count: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            max_smem_per_block_optin: attr(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as u32,
            smem_per_sm: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?
                as u32,
            l2_bytes: attr(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u32,
        };
        // The PTX targets sm_90a (`wgmma`): Hopper only, checked before the
        // driver is asked to load it.
        if props.compute_capability != (9, 0) {
            return Err(Error::Unsupported {
                arg: "device",
                what: format!(
                    "{} has compute capability {}.{}; the kernels are built for sm_90a \
                     (Hopper: H100/H200)",
                    props.name, props.compute_capability.0, props.compute_capability.1
                ),
            });
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .during(|| "loading the PTX module".into())?;

        Ok(Gpu {
            ctx,
            stream,
            module,
            props,
            pdl: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The device's properties, read once when the handle was made.
    pub fn props(&self) -> &DeviceProps {
        &self.props
    }

    /// The stream every launch of this crate goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context every buffer and launch of this handle uses.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Whether launches let the next kernel be scheduled while the previous
    /// one drains (programmatic dependent launch; on by default). Off: plain
    /// stream order. Both give the same results; the switch exists to
    /// measure the difference.
    pub fn set_programmatic_launch(&self, on: bool) {
        self.pdl.store(on, Ordering::Relaxed);
    }

    /// Whether launches use programmatic dependent launch (see
    /// [`Gpu::set_programmatic_launch`]).
    pub fn programmatic_launch(&self) -> bool {
        self.pdl.load(Ordering::Relaxed)
    }

    /// Starts assembling a launch of `kernel` with `params` (see
    /// `launch.rs`); `what` names it in errors.
    pub(crate) fn launch<'a, P: KernelParams>(
        &'a self,
        kernel: &'a Kernel<P>,
        what: &'static str,
        params: &'a P,
    ) -> Launch<'a, P> {
        Launch::new(self, kernel, what, params)
    }

    /// The kernel `name` of the module, which takes the parameter struct `P`,
    /// with its dynamic shared-memory limit raised to `smem_bytes` when that
    /// is above the default 48 KiB.
    pub(crate) fn kernel<P: KernelParams>(
        &self,
        name: &'static str,
        smem_bytes: u32,
    ) -> Result<Kernel<P>> {
        let f = self
            .module
            .load_function(name)
            .during(|| format!("looking up kernel `{name}` in the PTX"))?;
        if smem_bytes > self.props.max_smem_per_block_optin {
            return Err(Error::Unsupported {
                arg: "device",
                what: format!(
                    "kernel `{name}` needs {smem_bytes} bytes of shared memory, the device allows {}",
                    self.props.max_smem_per_block_optin
                ),
            });
        }
        if smem_bytes > 48 * 1024 {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem_bytes as i32,
            )
            .during(|| format!("raising the shared-memory limit of `{name}`"))?;
        }
        Kernel::new(f, name)
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .during(|| format!("uploading {} elements", host.len()))
    }

    /// A new zero-filled device buffer.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .during(|| format!("allocating {len} elements"))
    }

    /// Copies a device buffer (a slice, a view) back (waits for the stream).
    pub fn download<T: DeviceRepr, S: DevicePtr<T>>(&self, dev: &S) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .during(|| format!("downloading {} elements", dev.len()))
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .during(|| "synchronising the stream".into())
    }
}
