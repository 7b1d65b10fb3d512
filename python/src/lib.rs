//! `sparse_attn._native`: the PyO3 binding of the `sparse-attn` host API.
//!
//! The pure-Python package `sparse_attn` (python/sparse_attn/__init__.py)
//! wraps these classes: it fills in PyTorch's current device and stream and
//! turns host tensors into plain arrays. Here:
//!
//! - every op is the Rust op on a [`Gpu::from_raw`] handle: the device's
//!   primary context (the one PyTorch uses) and the CUDA stream the Python
//!   object was built with (by default PyTorch's current stream then);
//! - `run` takes device tensors (PyTorch CUDA tensors, or any object with
//!   `__cuda_array_interface__`) as [`RawBuffer`]s after checking their
//!   dtype, contiguity and device (errors naming the argument; the lengths
//!   are the Rust op's checks); it is given the caller's current stream and,
//!   when that is not the op's stream, orders the op's work after the
//!   current stream's and the current stream's later work after the op's
//!   (an event each way: a fork and a join, which a CUDA graph capture
//!   follows);
//! - `sparse_attn::Error` becomes `sparse_attn.ArgumentError` (a
//!   `ValueError`), `sparse_attn.CudaError` or `sparse_attn.NotPlannedError`
//!   (`RuntimeError`s), all subclasses of `sparse_attn.Error`, with the Rust
//!   error's message and the argument's name in `.arg`.
//!
//! Importing the module needs no driver: the driver is loaded (by cudarc)
//! when the first op is built.

use std::sync::Mutex;

use cudarc::driver::{sys, CudaContext, DriverError};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use sparse_attn::{
    bf16, Gpu, IndexerPath, MsaAttention, MsaIndexer, MsaStep, PageTable, RaggedBatch, RawBuffer,
    StepInputs, TopK,
};

// ---------------------------------------------------------------- errors

static ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ARGUMENT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CUDA_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static NOT_PLANNED_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `type(name, bases, {"__module__": "sparse_attn", "__doc__": doc})`.
fn new_class(
    py: Python<'_>,
    name: &str,
    bases: Bound<'_, PyTuple>,
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "sparse_attn")?;
    ns.set_item("__doc__", doc)?;
    // Set on each instance the library raises; a class default for the rest.
    ns.set_item("arg", py.None())?;
    Ok(py
        .get_type::<PyType>()
        .call1((name, bases, ns))?
        .cast_into::<PyType>()?
        .unbind())
}

/// Creates the exception classes (once) and adds them to the module.
fn add_errors(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let error = ERROR.get_or_try_init(py, || {
        new_class(
            py,
            "Error",
            PyTuple::new(py, [py.get_type::<PyException>()])?,
            "Every error of sparse_attn; `.arg` names the argument at fault (or is None).",
        )
    })?;
    let e = error.bind(py);
    let sub = |cell: &'static PyOnceLock<Py<PyType>>, name: &str, base: Bound<'_, PyType>, doc| {
        cell.get_or_try_init(py, || {
            new_class(py, name, PyTuple::new(py, [e.clone(), base])?, doc)
        })
        .map(|t| t.clone_ref(py))
    };
    let arg = sub(
        &ARGUMENT_ERROR,
        "ArgumentError",
        py.get_type::<PyValueError>(),
        "A bad argument (shape, length, dtype, layout, page id, config, device): \
         the message and `.arg` name it.",
    )?;
    let cuda = sub(
        &CUDA_ERROR,
        "CudaError",
        py.get_type::<PyRuntimeError>(),
        "A CUDA driver call failed, or there is no driver (the message names the step).",
    )?;
    let planned = sub(
        &NOT_PLANNED_ERROR,
        "NotPlannedError",
        py.get_type::<PyRuntimeError>(),
        "`run` was called before a successful `plan`.",
    )?;
    m.add("Error", e)?;
    m.add("ArgumentError", arg)?;
    m.add("CudaError", cuda)?;
    m.add("NotPlannedError", planned)?;
    Ok(())
}

/// The Python exception for a `sparse_attn::Error`.
fn to_py(py: Python<'_>, e: sparse_attn::Error) -> PyErr {
    use sparse_attn::Error as E;
    let cell = match &e {
        E::InvalidArgument { .. } | E::Unsupported { .. } | E::WrongContext { .. } => {
            &ARGUMENT_ERROR
        }
        E::NotPlanned { .. } => &NOT_PLANNED_ERROR,
        E::NoDriver(_) | E::Cuda { .. } => &CUDA_ERROR,
        // The enum may grow: anything else is still a sparse_attn.Error.
        #[allow(unreachable_patterns)]
        _ => &ERROR,
    };
    let make = || -> PyResult<PyErr> {
        let ty = cell
            .get(py)
            .ok_or_else(|| PyRuntimeError::new_err("sparse_attn._native is not initialised"))?
            .bind(py);
        let value = ty.call1((e.to_string(),))?;
        value.setattr("arg", e.arg())?;
        Ok(PyErr::from_value(value))
    };
    make().unwrap_or_else(|err| err)
}

/// An argument error raised by the binding itself (dtype, contiguity,
/// device, host arrays), worded as the crate's `InvalidArgument`.
fn arg_err(
    py: Python<'_>,
    arg: &'static str,
    expected: impl ToString,
    got: impl ToString,
) -> PyErr {
    to_py(py, sparse_attn::Error::invalid(arg, expected, got))
}

fn cuda_err(py: Python<'_>, context: impl Into<String>, source: DriverError) -> PyErr {
    to_py(
        py,
        sparse_attn::Error::Cuda {
            context: context.into(),
            source,
        },
    )
}

/// `sparse_attn::Result<T>` → `PyResult<T>`.
trait IntoPy<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for sparse_attn::Result<T> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

// ---------------------------------------------------------------- tensors

/// An element type of the ops' device buffers, and the dtypes that carry it.
trait Elem {
    /// PyTorch dtypes (`str(tensor.dtype)`) accepted for it.
    const TORCH: &'static [&'static str];
    /// `__cuda_array_interface__` typestrs accepted for it.
    const CAI: &'static [&'static str];
}

impl Elem for bf16 {
    const TORCH: &'static [&'static str] = &["torch.bfloat16"];
    // The interface has no bfloat16 typestr (and PyTorch refuses to export
    // bf16 through it): a bf16 array arrives as its 16-bit patterns.
    const CAI: &'static [&'static str] = &["<u2", "<i2"];
}
impl Elem for i32 {
    const TORCH: &'static [&'static str] = &["torch.int32"];
    const CAI: &'static [&'static str] = &["<i4"];
}
impl Elem for u32 {
    // Page tables: engines keep them in int32 (the ids are never negative).
    const TORCH: &'static [&'static str] = &["torch.int32", "torch.uint32"];
    const CAI: &'static [&'static str] = &["<i4", "<u4"];
}
impl Elem for f32 {
    const TORCH: &'static [&'static str] = &["torch.float32"];
    const CAI: &'static [&'static str] = &["<f4"];
}

fn names(list: &[&str]) -> String {
    list.join(" or ")
}

/// Whether `strides` (bytes) are the C-contiguous strides of `shape`
/// (dimensions of extent 1 may have any stride).
fn c_contiguous(shape: &[usize], strides: &[isize], item: usize) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    let mut want = item as isize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n > 1 && s != want {
            return false;
        }
        want *= n as isize;
    }
    true
}

/// What an op's device buffer argument is: pointer and element count, after
/// the checks of dtype, contiguity, device and writability.
struct DeviceArg {
    ptr: u64,
    len: usize,
}

fn device_arg<T: Elem>(
    obj: &Bound<'_, PyAny>,
    arg: &'static str,
    ordinal: usize,
    writable: bool,
) -> PyResult<DeviceArg> {
    let py = obj.py();
    // PyTorch tensors first: their __cuda_array_interface__ refuses bf16,
    // and their own accessors are cheaper than building its dict.
    if obj.hasattr("data_ptr")? && obj.hasattr("is_cuda")? && obj.hasattr("dtype")? {
        let device = obj.getattr("device")?;
        if !obj.getattr("is_cuda")?.extract::<bool>()? {
            return Err(arg_err(
                py,
                arg,
                format!("a CUDA tensor on cuda:{ordinal}"),
                format!("a tensor on {}", device.str()?),
            ));
        }
        let index: Option<usize> = device.getattr("index")?.extract()?;
        if index.is_some_and(|i| i != ordinal) {
            return Err(to_py(
                py,
                sparse_attn::Error::WrongContext {
                    arg,
                    expected: format!("a tensor on cuda:{ordinal} (the op's device)"),
                    actual: format!("a tensor on {}", device.str()?),
                },
            ));
        }
        let dtype = obj.getattr("dtype")?.str()?.to_string();
        if !T::TORCH.contains(&dtype.as_str()) {
            return Err(arg_err(py, arg, names(T::TORCH), dtype));
        }
        if !obj.call_method0("is_contiguous")?.extract::<bool>()? {
            let shape: Vec<usize> = obj.getattr("shape")?.extract()?;
            let stride: Vec<isize> = obj.call_method0("stride")?.extract()?;
            return Err(arg_err(
                py,
                arg,
                "a contiguous tensor (row-major)",
                format!("shape {shape:?} with strides {stride:?} (call .contiguous())"),
            ));
        }
        return Ok(DeviceArg {
            ptr: obj.call_method0("data_ptr")?.extract()?,
            len: obj.call_method0("numel")?.extract()?,
        });
    }
    let Ok(cai) = obj.getattr("__cuda_array_interface__") else {
        return Err(arg_err(
            py,
            arg,
            "a CUDA tensor (torch.Tensor, or an object with __cuda_array_interface__)",
            obj.get_type().name()?,
        ));
    };
    let cai = cai.cast_into::<PyDict>()?;
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        cai.get_item(key)?.ok_or_else(|| {
            arg_err(
                py,
                arg,
                "a __cuda_array_interface__ with `data`, `shape` and `typestr`",
                format!("one without `{key}`"),
            )
        })
    };
    let (ptr, readonly): (u64, bool) = get("data")?.extract()?;
    let shape: Vec<usize> = get("shape")?.extract()?;
    let typestr: String = get("typestr")?.extract()?;
    if !T::CAI.contains(&typestr.as_str()) {
        return Err(arg_err(
            py,
            arg,
            format!("typestr {}", names(T::CAI)),
            format!("typestr {typestr}"),
        ));
    }
    if let Some(strides) = cai.get_item("strides")?.filter(|s| !s.is_none()) {
        let strides: Vec<isize> = strides.extract()?;
        let item: usize = typestr[2..].parse().unwrap_or(1);
        if !c_contiguous(&shape, &strides, item) {
            return Err(arg_err(
                py,
                arg,
                "a C-contiguous array",
                format!("shape {shape:?} with byte strides {strides:?}"),
            ));
        }
    }
    if writable && readonly {
        return Err(arg_err(py, arg, "a writable array", "a read-only one"));
    }
    Ok(DeviceArg {
        ptr,
        len: shape.iter().product(),
    })
}

/// `len` elements at `ptr` as a buffer of `gpu`.
fn raw<T>(gpu: &Gpu, a: &DeviceArg) -> RawBuffer<T> {
    // SAFETY: `device_arg` checked that the tensor is CUDA memory of the
    // op's device (PyTorch tensors; an interface object is taken at its
    // word) holding `len` elements of this type; the caller keeps it alive
    // until the stream has run the work (documented in the Python API).
    unsafe { RawBuffer::new(gpu, a.ptr, a.len) }
}

/// A host array of non-negative integers below 2^32 (buffer-protocol
/// objects of 32/64-bit integers, e.g. numpy arrays, or sequences of ints).
fn host_u32(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<Vec<u32>> {
    let py = obj.py();
    let range = |v: i128, i: usize| -> PyResult<u32> {
        u32::try_from(v).map_err(|_| {
            arg_err(
                py,
                arg,
                "integers in 0 ..= 2^32 - 1",
                format!("[{i}] = {v}"),
            )
        })
    };
    if let Ok(b) = PyBuffer::<u32>::get(obj) {
        return b.to_vec(py);
    }
    if let Ok(b) = PyBuffer::<i32>::get(obj) {
        let v = b.to_vec(py)?;
        return v
            .iter()
            .enumerate()
            .map(|(i, &x)| range(x as i128, i))
            .collect();
    }
    if let Ok(b) = PyBuffer::<i64>::get(obj) {
        let v = b.to_vec(py)?;
        return v
            .iter()
            .enumerate()
            .map(|(i, &x)| range(x as i128, i))
            .collect();
    }
    if let Ok(b) = PyBuffer::<u64>::get(obj) {
        let v = b.to_vec(py)?;
        return v
            .iter()
            .enumerate()
            .map(|(i, &x)| range(x as i128, i))
            .collect();
    }
    let v: Vec<i64> = obj.extract().map_err(|_| {
        arg_err(
            py,
            arg,
            "a host array of integers (list, numpy array, CPU tensor)",
            obj.get_type().name().map_or("?".into(), |n| n.to_string()),
        )
    })?;
    v.iter()
        .enumerate()
        .map(|(i, &x)| range(x as i128, i))
        .collect()
}

/// A page table `[batch, max_pages]` given flat or 2-D: its entries and
/// `max_pages` (the entries per sequence).
fn host_table(
    obj: &Bound<'_, PyAny>,
    arg: &'static str,
    batch: usize,
) -> PyResult<(Vec<u32>, usize)> {
    let py = obj.py();
    // Arrays (any shape) and flat sequences, else a list of rows.
    let v = match host_u32(obj, arg) {
        Ok(v) => v,
        Err(e) => match obj.extract::<Vec<Vec<i64>>>() {
            Ok(rows) => {
                let flat: Vec<i64> = rows.into_iter().flatten().collect();
                host_u32(PyTuple::new(py, flat)?.as_any(), arg)?
            }
            Err(_) => return Err(e),
        },
    };
    if batch == 0 {
        return Ok((v, 0));
    }
    if !v.len().is_multiple_of(batch) {
        return Err(arg_err(
            py,
            arg,
            format!("batch * max_pages entries (batch = {batch})"),
            format!("{} entries", v.len()),
        ));
    }
    let max_pages = v.len() / batch;
    Ok((v, max_pages))
}

/// A pool's shape: a `PagedLayout`, or a 6-D tensor `[num_pages, kv_dim,
/// num_layers, page_size, n_heads, head_dim]` whose shape gives it.
fn layout_arg(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<sparse_attn::PagedLayout> {
    let py = obj.py();
    if let Ok(l) = obj.cast::<PagedLayout>() {
        return Ok(l.borrow().0);
    }
    let shape: Vec<usize> = obj
        .getattr("shape")
        .and_then(|s| s.extract())
        .map_err(|_| {
            arg_err(
                py,
                arg,
                "a PagedLayout or the pool tensor [num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]",
                obj.get_type().name().map_or("?".into(), |n| n.to_string()),
            )
        })?;
    let [num_pages, kv_dim, num_layers, page_size, n_heads, head_dim] = shape[..] else {
        return Err(arg_err(
            py,
            arg,
            "a 6-D pool [num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]",
            format!("shape {shape:?}"),
        ));
    };
    Ok(sparse_attn::PagedLayout {
        num_pages,
        kv_dim,
        num_layers,
        page_size,
        n_heads,
        head_dim,
        dtype: sparse_attn::KvDtype::Bf16,
    })
}

// ---------------------------------------------------------------- streams

/// The op's handle and the events that order it against another stream.
struct Device {
    gpu: Gpu,
    ordinal: usize,
    /// `[fork, join]`, made at the first run on another stream.
    events: Option<[sys::CUevent; 2]>,
}

// SAFETY: the events are driver handles, usable from any thread; they are
// only used under the op's lock.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// The device's primary context (PyTorch's) and `stream` on it.
    fn new(py: Python<'_>, ordinal: i64, stream: u64) -> PyResult<Self> {
        let ordinal = usize::try_from(ordinal)
            .map_err(|_| arg_err(py, "device", "a device ordinal >= 0", ordinal))?;
        if !Gpu::driver_present() {
            return Err(to_py(
                py,
                sparse_attn::Error::NoDriver(
                    "libcuda could not be loaded (no NVIDIA driver on this machine)".into(),
                ),
            ));
        }
        let primary = CudaContext::new(ordinal).map_err(|e| {
            cuda_err(
                py,
                format!("retaining device {ordinal}'s primary context"),
                e,
            )
        })?;
        // SAFETY: the primary context of `ordinal` (retained by `from_raw`
        // for as long as the handle lives); `stream` is the caller's stream
        // of that device (PyTorch's), which the caller keeps alive.
        let gpu = unsafe { Gpu::from_raw(primary.cu_ctx(), stream as sys::CUstream) }.py(py)?;
        Ok(Device {
            gpu,
            ordinal,
            events: None,
        })
    }

    fn stream(&self) -> u64 {
        self.gpu.stream().cu_stream() as u64
    }

    /// Runs `f` (launches on the op's stream) ordered within `current`:
    /// directly when it is the op's stream; else after an event recorded on
    /// `current`, and with `current` waiting for an event recorded after it.
    fn on<T>(
        &mut self,
        py: Python<'_>,
        current: u64,
        f: impl FnOnce(&Gpu) -> sparse_attn::Result<T>,
    ) -> PyResult<T> {
        let own = self.stream();
        if current == own {
            return f(&self.gpu).py(py);
        }
        let cur = current as sys::CUstream;
        let ours = own as sys::CUstream;
        self.gpu
            .context()
            .bind_to_thread()
            .map_err(|e| cuda_err(py, "making the op's context current", e))?;
        let [fork, join] = match self.events {
            Some(ev) => ev,
            None => {
                let mut ev = [std::ptr::null_mut(); 2];
                for e in &mut ev {
                    // SAFETY: the op's context is current.
                    unsafe {
                        sys::cuEventCreate(e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
                    }
                    .result()
                    .map_err(|e| cuda_err(py, "creating an event", e))?;
                }
                self.events = Some(ev);
                ev
            }
        };
        // SAFETY: live events of this context; `cur` is the caller's live
        // stream of the device, `ours` the op's.
        unsafe {
            sys::cuEventRecord(fork, cur)
                .result()
                .map_err(|e| cuda_err(py, "recording an event on the current stream", e))?;
            sys::cuStreamWaitEvent(ours, fork, 0)
                .result()
                .map_err(|e| cuda_err(py, "ordering the op's stream after the current one", e))?;
        }
        let out = f(&self.gpu).py(py);
        // Joined even when `f` failed: a capture must end with every
        // forked stream joined.
        // SAFETY: as above.
        unsafe {
            sys::cuEventRecord(join, ours)
                .result()
                .map_err(|e| cuda_err(py, "recording an event on the op's stream", e))?;
            sys::cuStreamWaitEvent(cur, join, 0)
                .result()
                .map_err(|e| cuda_err(py, "ordering the current stream after the op", e))?;
        }
        out
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(ev) = self.events {
            for e in ev {
                // SAFETY: events this object created; nothing uses them after.
                unsafe {
                    let _ = sys::cuEventDestroy_v2(e);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- configs

/// The MSA indexer's configuration (`sparse_attn::MsaIndexerConfig`).
#[pyclass(module = "sparse_attn", get_all, set_all, from_py_object)]
#[derive(Clone)]
struct MsaIndexerConfig {
    num_index_heads: usize,
    head_dim: usize,
    block_size: usize,
    topk: usize,
    init_blocks: usize,
    local_blocks: usize,
    scale: f32,
}

impl MsaIndexerConfig {
    fn rust(&self) -> sparse_attn::MsaIndexerConfig {
        sparse_attn::MsaIndexerConfig {
            num_index_heads: self.num_index_heads,
            head_dim: self.head_dim,
            block_size: self.block_size,
            topk: self.topk,
            init_blocks: self.init_blocks,
            local_blocks: self.local_blocks,
            scale: self.scale,
        }
    }
    fn from_rust(c: sparse_attn::MsaIndexerConfig) -> Self {
        MsaIndexerConfig {
            num_index_heads: c.num_index_heads,
            head_dim: c.head_dim,
            block_size: c.block_size,
            topk: c.topk,
            init_blocks: c.init_blocks,
            local_blocks: c.local_blocks,
            scale: c.scale,
        }
    }
}

#[pymethods]
impl MsaIndexerConfig {
    /// Defaults are MiniMax-M3's (`minimax_m3()`); `scale` defaults to
    /// `1 / sqrt(head_dim)`.
    #[new]
    #[pyo3(signature = (num_index_heads=4, head_dim=128, block_size=128, topk=16, init_blocks=0, local_blocks=1, scale=None))]
    fn new(
        num_index_heads: usize,
        head_dim: usize,
        block_size: usize,
        topk: usize,
        init_blocks: usize,
        local_blocks: usize,
        scale: Option<f32>,
    ) -> Self {
        MsaIndexerConfig {
            num_index_heads,
            head_dim,
            block_size,
            topk,
            init_blocks,
            local_blocks,
            scale: scale.unwrap_or(1.0 / (head_dim as f32).sqrt()),
        }
    }

    /// MiniMax-M3: 4 index heads of 128, top-16, no init block, one local block.
    #[staticmethod]
    fn minimax_m3() -> Self {
        Self::from_rust(sparse_attn::MsaIndexerConfig::minimax_m3())
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.rust())
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.rust() == other.rust()
    }
}

/// The MSA attention's configuration (`sparse_attn::MsaAttentionConfig`).
#[pyclass(module = "sparse_attn", get_all, set_all, from_py_object)]
#[derive(Clone)]
struct MsaAttentionConfig {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    topk: usize,
    scale: f32,
}

impl MsaAttentionConfig {
    fn rust(&self) -> sparse_attn::MsaAttentionConfig {
        sparse_attn::MsaAttentionConfig {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            topk: self.topk,
            scale: self.scale,
        }
    }
}

#[pymethods]
impl MsaAttentionConfig {
    /// Defaults are MiniMax-M3's (`minimax_m3()`); `scale` defaults to
    /// `1 / sqrt(head_dim)`.
    #[new]
    #[pyo3(signature = (n_heads=64, n_kv_heads=4, head_dim=128, topk=16, scale=None))]
    fn new(
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        topk: usize,
        scale: Option<f32>,
    ) -> Self {
        MsaAttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim,
            topk,
            scale: scale.unwrap_or(1.0 / (head_dim as f32).sqrt()),
        }
    }

    /// MiniMax-M3: 64 query heads over 4 KV heads of 128, top-16.
    #[staticmethod]
    fn minimax_m3() -> Self {
        let c = sparse_attn::MsaAttentionConfig::minimax_m3();
        MsaAttentionConfig {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            topk: c.topk,
            scale: c.scale,
        }
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.rust())
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.rust() == other.rust()
    }
}

/// A paged pool's shape, `[num_pages, kv_dim, num_layers, page_size,
/// n_heads, head_dim]` bf16 (`sparse_attn::PagedLayout`).
#[pyclass(module = "sparse_attn", frozen, from_py_object)]
#[derive(Clone)]
struct PagedLayout(sparse_attn::PagedLayout);

#[pymethods]
impl PagedLayout {
    #[new]
    fn new(
        num_pages: usize,
        kv_dim: usize,
        num_layers: usize,
        page_size: usize,
        n_heads: usize,
        head_dim: usize,
    ) -> Self {
        PagedLayout(sparse_attn::PagedLayout {
            num_pages,
            kv_dim,
            num_layers,
            page_size,
            n_heads,
            head_dim,
            dtype: sparse_attn::KvDtype::Bf16,
        })
    }

    /// The index-K pool `[num_pages, 1, num_layers, page_size, 1, head_dim]`.
    #[staticmethod]
    #[pyo3(signature = (num_pages, num_layers, page_size=128, head_dim=128))]
    fn index_k(num_pages: usize, num_layers: usize, page_size: usize, head_dim: usize) -> Self {
        PagedLayout(sparse_attn::PagedLayout::index_k(
            num_pages, num_layers, page_size, head_dim,
        ))
    }

    /// The main K/V pool `[num_pages, 2, num_layers, page_size, n_kv_heads, head_dim]`.
    #[staticmethod]
    #[pyo3(signature = (num_pages, num_layers, n_kv_heads, page_size=128, head_dim=128))]
    fn kv(
        num_pages: usize,
        num_layers: usize,
        n_kv_heads: usize,
        page_size: usize,
        head_dim: usize,
    ) -> Self {
        PagedLayout(sparse_attn::PagedLayout::kv(
            num_pages, num_layers, page_size, n_kv_heads, head_dim,
        ))
    }

    /// The pool tensor's shape.
    #[getter]
    fn shape(&self) -> (usize, usize, usize, usize, usize, usize) {
        let l = &self.0;
        (
            l.num_pages,
            l.kv_dim,
            l.num_layers,
            l.page_size,
            l.n_heads,
            l.head_dim,
        )
    }

    /// Elements of the whole pool.
    fn elements(&self) -> usize {
        self.0.elements()
    }

    fn __repr__(&self) -> String {
        format!("PagedLayout{:?}", self.shape())
    }
}

// ---------------------------------------------------------------- results

/// A view of an op's device buffer (`__cuda_array_interface__`, version 2;
/// `torch.as_tensor(view, device="cuda")` wraps it without a copy). Its
/// values are those the op's last run wrote on the op's stream; it is valid
/// until the op's next `plan`.
#[pyclass(module = "sparse_attn", frozen)]
struct DeviceView {
    ptr: u64,
    shape: Vec<usize>,
    typestr: &'static str,
    /// Keeps the op (and so the memory) alive.
    #[allow(dead_code)]
    owner: Py<PyAny>,
}

#[pymethods]
impl DeviceView {
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", self.typestr)?;
        d.set_item("data", (self.ptr, false))?;
        d.set_item("strides", py.None())?;
        d.set_item("version", 2)?;
        Ok(d)
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }
}

// ---------------------------------------------------------------- ops

fn batch_args(
    input_row_offsets: &Bound<'_, PyAny>,
    cache_lengths: &Bound<'_, PyAny>,
) -> PyResult<(Vec<u32>, Vec<u32>)> {
    Ok((
        host_u32(input_row_offsets, "input_row_offsets")?,
        host_u32(cache_lengths, "cache_lengths")?,
    ))
}

/// Checks what `RaggedBatch::validate` would, before the page tables'
/// shapes are derived from the batch size.
fn check_offsets(py: Python<'_>, off: &[u32], cache: &[u32]) -> PyResult<()> {
    if off.len() != cache.len() + 1 {
        return Err(arg_err(
            py,
            "input_row_offsets",
            format!(
                "batch + 1 = {} entries (cache_lengths has {})",
                cache.len() + 1,
                cache.len()
            ),
            format!("{} entries", off.len()),
        ));
    }
    Ok(())
}

/// MiniMax-M3's MSA step: the indexer then the block-sparse attention, on
/// the op's stream (`sparse_attn::MsaStep`).
#[pyclass(module = "sparse_attn")]
struct MsaStepNative {
    dev: Device,
    op: Mutex<MsaStep>,
    rows: Option<usize>,
}

#[pymethods]
impl MsaStepNative {
    #[new]
    fn new(
        py: Python<'_>,
        index_config: MsaIndexerConfig,
        attention_config: MsaAttentionConfig,
        max_rows: usize,
        device: i64,
        stream: u64,
    ) -> PyResult<Self> {
        let dev = Device::new(py, device, stream)?;
        let op = MsaStep::new(
            &dev.gpu,
            index_config.rust(),
            attention_config.rust(),
            max_rows,
        )
        .py(py)?;
        Ok(MsaStepNative {
            dev,
            op: Mutex::new(op),
            rows: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        py: Python<'_>,
        input_row_offsets: &Bound<'_, PyAny>,
        cache_lengths: &Bound<'_, PyAny>,
        index_lookup: &Bound<'_, PyAny>,
        index_layout: &Bound<'_, PyAny>,
        kv_lookup: &Bound<'_, PyAny>,
        kv_layout: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.rows = None;
        let (off, cache) = batch_args(input_row_offsets, cache_lengths)?;
        check_offsets(py, &off, &cache)?;
        let (il, imax) = host_table(index_lookup, "index_lookup", cache.len())?;
        let (kl, kmax) = host_table(kv_lookup, "kv_lookup", cache.len())?;
        let ilay = layout_arg(index_layout, "index_layout")?;
        let klay = layout_arg(kv_layout, "kv_layout")?;
        let batch = RaggedBatch::new(&off, &cache);
        let mut op = self.op.lock().unwrap();
        op.plan(
            &batch,
            &PageTable::new(&il, imax),
            &ilay,
            &PageTable::new(&kl, kmax),
            &klay,
        )
        .py(py)?;
        self.rows = Some(batch.num_rows());
        Ok(())
    }

    #[pyo3(signature = (q_index, k_index, index_lookup, q, kv_cache, kv_lookup, layer, out, lse, stream))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        py: Python<'_>,
        q_index: &Bound<'_, PyAny>,
        k_index: &Bound<'_, PyAny>,
        index_lookup: &Bound<'_, PyAny>,
        q: &Bound<'_, PyAny>,
        kv_cache: &Bound<'_, PyAny>,
        kv_lookup: &Bound<'_, PyAny>,
        layer: usize,
        out: &Bound<'_, PyAny>,
        lse: Option<&Bound<'_, PyAny>>,
        stream: u64,
    ) -> PyResult<()> {
        let o = self.dev.ordinal;
        let a = [
            device_arg::<bf16>(q_index, "q_index", o, false)?,
            device_arg::<bf16>(k_index, "k_index", o, false)?,
            device_arg::<u32>(index_lookup, "index_lookup", o, false)?,
            device_arg::<bf16>(q, "q", o, false)?,
            device_arg::<bf16>(kv_cache, "kv_cache", o, false)?,
            device_arg::<u32>(kv_lookup, "kv_lookup", o, false)?,
            device_arg::<bf16>(out, "out", o, true)?,
        ];
        let lse = lse
            .map(|l| device_arg::<f32>(l, "lse", o, true))
            .transpose()?;
        let op = &self.op;
        self.dev.on(py, stream, |gpu| {
            let (qi, ki, il) = (raw(gpu, &a[0]), raw(gpu, &a[1]), raw(gpu, &a[2]));
            let (qq, kv, kl) = (raw(gpu, &a[3]), raw(gpu, &a[4]), raw(gpu, &a[5]));
            let mut out = raw::<bf16>(gpu, &a[6]);
            let mut lse = lse.as_ref().map(|l| raw::<f32>(gpu, l));
            let inp = StepInputs {
                q_index: &qi,
                k_index: &ki,
                index_lookup: &il,
                q: &qq,
                kv_cache: &kv,
                kv_lookup: &kl,
            };
            op.lock().unwrap().run(
                &inp,
                layer,
                &mut out,
                lse.as_mut()
                    .map(|l| l as &mut dyn cudarc::driver::DevicePtrMut<f32>),
            )
        })
    }

    /// The planned batch's selections `[n_kv_heads, num_rows, topk]` int32.
    fn indices(slf: Bound<'_, Self>) -> PyResult<DeviceView> {
        let py = slf.py();
        let me = slf.borrow();
        let rows = me
            .rows
            .ok_or_else(|| to_py(py, sparse_attn::Error::NotPlanned { op: "msa_step" }))?;
        let op = me.op.lock().unwrap();
        let c = *op.attention.config();
        let (ptr, _sync) =
            cudarc::driver::DevicePtr::device_ptr(op.d_indices(), me.dev.gpu.stream());
        Ok(DeviceView {
            ptr,
            shape: vec![c.n_kv_heads, rows, c.topk],
            typestr: "<i4",
            owner: slf.clone().into_any().unbind(),
        })
    }

    /// The planned paths: (indexer, attention), e.g. ("Decode", "QueryMajor").
    fn paths(&self) -> (Option<String>, Option<String>) {
        let op = self.op.lock().unwrap();
        (
            op.indexer.path().map(|p: IndexerPath| format!("{p:?}")),
            op.attention.path().map(|p| format!("{p:?}")),
        )
    }

    #[getter]
    fn stream(&self) -> u64 {
        self.dev.stream()
    }

    #[getter]
    fn device(&self) -> usize {
        self.dev.ordinal
    }
}

/// The MSA indexer (`sparse_attn::MsaIndexer`).
#[pyclass(module = "sparse_attn")]
struct MsaIndexerNative {
    dev: Device,
    op: MsaIndexer,
}

#[pymethods]
impl MsaIndexerNative {
    #[new]
    fn new(py: Python<'_>, config: MsaIndexerConfig, device: i64, stream: u64) -> PyResult<Self> {
        let dev = Device::new(py, device, stream)?;
        let op = MsaIndexer::new(&dev.gpu, config.rust()).py(py)?;
        Ok(MsaIndexerNative { dev, op })
    }

    fn plan(
        &mut self,
        py: Python<'_>,
        input_row_offsets: &Bound<'_, PyAny>,
        cache_lengths: &Bound<'_, PyAny>,
        lookup: &Bound<'_, PyAny>,
        layout: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (off, cache) = batch_args(input_row_offsets, cache_lengths)?;
        check_offsets(py, &off, &cache)?;
        let (l, max) = host_table(lookup, "lookup", cache.len())?;
        let lay = layout_arg(layout, "layout")?;
        self.op
            .plan(
                &RaggedBatch::new(&off, &cache),
                &PageTable::new(&l, max),
                &lay,
            )
            .py(py)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        k_cache: &Bound<'_, PyAny>,
        lookup: &Bound<'_, PyAny>,
        layer: usize,
        out_idxs: &Bound<'_, PyAny>,
        stream: u64,
    ) -> PyResult<()> {
        let o = self.dev.ordinal;
        let a = [
            device_arg::<bf16>(q, "q", o, false)?,
            device_arg::<bf16>(k_cache, "k_cache", o, false)?,
            device_arg::<u32>(lookup, "lookup", o, false)?,
            device_arg::<i32>(out_idxs, "out_idxs", o, true)?,
        ];
        let op = &self.op;
        self.dev.on(py, stream, |gpu| {
            let mut out = raw::<i32>(gpu, &a[3]);
            op.run(
                &raw::<bf16>(gpu, &a[0]),
                &raw::<bf16>(gpu, &a[1]),
                &raw::<u32>(gpu, &a[2]),
                layer,
                &mut out,
            )
        })
    }

    #[getter]
    fn stream(&self) -> u64 {
        self.dev.stream()
    }

    #[getter]
    fn device(&self) -> usize {
        self.dev.ordinal
    }
}

/// The MSA block-sparse attention (`sparse_attn::MsaAttention`).
#[pyclass(module = "sparse_attn")]
struct MsaAttentionNative {
    dev: Device,
    op: MsaAttention,
}

#[pymethods]
impl MsaAttentionNative {
    #[new]
    fn new(
        py: Python<'_>,
        config: MsaAttentionConfig,
        max_rows: usize,
        device: i64,
        stream: u64,
    ) -> PyResult<Self> {
        let dev = Device::new(py, device, stream)?;
        let op = MsaAttention::new(&dev.gpu, config.rust(), max_rows).py(py)?;
        Ok(MsaAttentionNative { dev, op })
    }

    fn plan(
        &mut self,
        py: Python<'_>,
        input_row_offsets: &Bound<'_, PyAny>,
        cache_lengths: &Bound<'_, PyAny>,
        lookup: &Bound<'_, PyAny>,
        layout: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (off, cache) = batch_args(input_row_offsets, cache_lengths)?;
        check_offsets(py, &off, &cache)?;
        let (l, max) = host_table(lookup, "lookup", cache.len())?;
        let lay = layout_arg(layout, "layout")?;
        self.op
            .plan(
                &RaggedBatch::new(&off, &cache),
                &PageTable::new(&l, max),
                &lay,
            )
            .py(py)
    }

    #[pyo3(signature = (q, kv_cache, lookup, d_indices, layer, out, lse, stream))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        py: Python<'_>,
        q: &Bound<'_, PyAny>,
        kv_cache: &Bound<'_, PyAny>,
        lookup: &Bound<'_, PyAny>,
        d_indices: &Bound<'_, PyAny>,
        layer: usize,
        out: &Bound<'_, PyAny>,
        lse: Option<&Bound<'_, PyAny>>,
        stream: u64,
    ) -> PyResult<()> {
        let o = self.dev.ordinal;
        let a = [
            device_arg::<bf16>(q, "q", o, false)?,
            device_arg::<bf16>(kv_cache, "kv_cache", o, false)?,
            device_arg::<u32>(lookup, "lookup", o, false)?,
            device_arg::<i32>(d_indices, "d_indices", o, false)?,
            device_arg::<bf16>(out, "out", o, true)?,
        ];
        let lse = lse
            .map(|l| device_arg::<f32>(l, "lse", o, true))
            .transpose()?;
        let op = &self.op;
        self.dev.on(py, stream, |gpu| {
            let mut out = raw::<bf16>(gpu, &a[4]);
            let mut lse = lse.as_ref().map(|l| raw::<f32>(gpu, l));
            op.run(
                &raw::<bf16>(gpu, &a[0]),
                &raw::<bf16>(gpu, &a[1]),
                &raw::<u32>(gpu, &a[2]),
                &raw::<i32>(gpu, &a[3]),
                layer,
                &mut out,
                lse.as_mut()
                    .map(|l| l as &mut dyn cudarc::driver::DevicePtrMut<f32>),
            )
        })
    }

    #[getter]
    fn stream(&self) -> u64 {
        self.dev.stream()
    }

    #[getter]
    fn device(&self) -> usize {
        self.dev.ordinal
    }
}

/// Row top-k of f32 scores (`sparse_attn::TopK`).
#[pyclass(module = "sparse_attn")]
struct TopKNative {
    dev: Device,
    op: TopK,
}

#[pymethods]
impl TopKNative {
    #[new]
    fn new(py: Python<'_>, device: i64, stream: u64) -> PyResult<Self> {
        let dev = Device::new(py, device, stream)?;
        let op = TopK::new(&dev.gpu).py(py)?;
        Ok(TopKNative { dev, op })
    }

    fn plan(&mut self, py: Python<'_>, rows: usize, n: usize, k: usize) -> PyResult<()> {
        self.op.plan(rows, n, k).py(py)
    }

    #[pyo3(signature = (scores, out, row_lens, stream))]
    fn run(
        &mut self,
        py: Python<'_>,
        scores: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        row_lens: Option<&Bound<'_, PyAny>>,
        stream: u64,
    ) -> PyResult<()> {
        let o = self.dev.ordinal;
        let s = device_arg::<f32>(scores, "scores", o, false)?;
        let d = device_arg::<i32>(out, "out", o, true)?;
        let l = row_lens
            .map(|l| device_arg::<u32>(l, "row_lens", o, false))
            .transpose()?;
        let op = &self.op;
        self.dev.on(py, stream, |gpu| {
            let lens = l.as_ref().map(|l| raw::<u32>(gpu, l));
            let mut out = raw::<i32>(gpu, &d);
            op.run(
                &raw::<f32>(gpu, &s),
                lens.as_ref()
                    .map(|l| l as &dyn cudarc::driver::DevicePtr<u32>),
                &mut out,
            )
        })
    }

    #[getter]
    fn stream(&self) -> u64 {
        self.dev.stream()
    }

    #[getter]
    fn device(&self) -> usize {
        self.dev.ordinal
    }
}

/// Whether the NVIDIA driver library can be loaded here (no GPU call).
#[pyfunction]
fn driver_present() -> bool {
    Gpu::driver_present()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    add_errors(m)?;
    m.add_class::<MsaIndexerConfig>()?;
    m.add_class::<MsaAttentionConfig>()?;
    m.add_class::<PagedLayout>()?;
    m.add_class::<DeviceView>()?;
    m.add_class::<MsaStepNative>()?;
    m.add_class::<MsaIndexerNative>()?;
    m.add_class::<MsaAttentionNative>()?;
    m.add_class::<TopKNative>()?;
    m.add_function(wrap_pyfunction!(driver_present, m)?)?;
    Ok(())
}
