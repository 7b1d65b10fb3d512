//! The GPU handle: one context, one stream, the kernel module loaded once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

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
/// synchronises with the host unless its documentation says so.
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
        if !Self::driver_present() {
            return Err(Error::NoDriver(
                "libcuda could not be loaded (no NVIDIA driver on this machine)".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).during(|| format!("opening device {ordinal}"))?;
        // One stream, in-order: cudarc's per-buffer event tracking is not needed
        // and would add events to every launch (and to graph captures).
        // SAFETY: this crate uses a single stream per context.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured
        // into a CUDA graph.
        let stream = ctx.new_stream().during(|| "creating a stream".into())?;
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

    /// The device's properties, read once at [`Gpu::new`].
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

    /// Copies a device buffer back (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
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
