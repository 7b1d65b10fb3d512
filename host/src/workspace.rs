//! Workspaces: device scratch memory the ops use during `run`, which one
//! buffer can serve for several ops and every layer of a step.
//!
//! Each op's memory is of two kinds:
//!
//! - **plan data** (work lists, row positions, plan keys, tensor maps:
//!   `O(rows)` words): uploaded by `plan`, read by every `run` of that
//!   plan. It stays in small buffers the op owns (grown by `plan`, never by
//!   `run`), since it must outlive the runs of other ops.
//! - **scratch** (the indexer's block scores, the attention's split-K and
//!   block-major partials and CSR, the MLA indexer's logits: the large
//!   part): written and read within one `run`, dead after it. It lives in a
//!   [`Workspace`].
//!
//! An op built with `new` owns a private workspace, sized by `new` for the
//! bounds it is given (the attention's `max_rows`) or grown by `plan` when a
//! batch needs more (grow-only; contents not kept). An op built with
//! `new_in(…, &workspace)` uses the caller's [`Workspace`] from its first
//! byte and never allocates scratch: `plan` fails with an error naming
//! `workspace` when the batch needs more than it holds (the MLA indexer
//! runs such a batch in chunks of rows instead, and fails only when one
//! row's logits do not fit). Each op's
//! `workspace_size(…)` gives the bytes for the bounds the caller knows, so
//! one workspace of the largest of them serves every op that shares it.
//!
//! Sharing is safe because the ops' runs are ordered on one stream: every
//! op given a workspace must run on the workspace's stream (checked by
//! `new_in`), so one op's scratch is dead before the next op's run writes
//! it. What an op exposes of its scratch (`MlaIndexer::logits`) is valid
//! until the next run of any op sharing the workspace.
//!
//! `run` never allocates, never synchronises with the host (so it can be
//! captured in a CUDA graph and replayed while the plan holds and the
//! workspace is alive).

use std::sync::Arc;

use cudarc::driver::{
    sys, CudaSlice, CudaStream, DevicePtr, DeviceRepr, SyncOnDrop, ValidAsZeroBits,
};

use crate::buffer::RawBuffer;
use crate::error::{ensure, Error, Result};
use crate::launch::{check_context, BUF_ALIGN};
use crate::Gpu;

/// Alignment of every sub-buffer inside a workspace (bytes).
pub const WORKSPACE_ALIGN: usize = 256;

/// `bytes` rounded up to [`WORKSPACE_ALIGN`].
pub(crate) const fn align_up(bytes: usize) -> usize {
    bytes.next_multiple_of(WORKSPACE_ALIGN)
}

/// Device scratch memory for the ops' runs (see the module docs). Cloning
/// is cheap and shares the memory; it is freed when the last clone (an op
/// built on it included) drops.
#[derive(Clone, Debug)]
pub struct Workspace {
    mem: Arc<Mem>,
}

#[derive(Debug)]
enum Mem {
    Slice(CudaSlice<u8>),
    Raw(RawBuffer<u8>),
}

impl Workspace {
    /// Allocates `bytes` (at least 1) zeroed bytes on `gpu`'s stream.
    pub fn new(gpu: &Gpu, bytes: usize) -> Result<Self> {
        Ok(Self::from_slice(gpu.zeros(bytes.max(1))?))
    }

    /// A workspace in the caller's buffer (its stream is the workspace's:
    /// the ops that use it must run on that stream).
    pub fn from_slice(buf: CudaSlice<u8>) -> Self {
        Workspace {
            mem: Arc::new(Mem::Slice(buf)),
        }
    }

    /// A workspace in `bytes` bytes at the device address `ptr` of `gpu`'s
    /// context, on `gpu`'s stream. Fails unless `ptr` is 16-byte aligned.
    ///
    /// # Safety
    /// The memory must stay allocated while any op built on this workspace
    /// may still run (or a graph that captured such a run may be replayed),
    /// and nothing else may use it meanwhile.
    pub unsafe fn from_raw(gpu: &Gpu, ptr: sys::CUdeviceptr, bytes: usize) -> Result<Self> {
        ensure(
            ptr.is_multiple_of(BUF_ALIGN),
            "workspace",
            || format!("a device address aligned to {BUF_ALIGN} bytes"),
            || format!("{ptr:#x}"),
        )?;
        Ok(Workspace {
            // SAFETY: the caller's contract.
            mem: Arc::new(Mem::Raw(unsafe { RawBuffer::new(gpu, ptr, bytes) })),
        })
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        match &*self.mem {
            Mem::Slice(s) => s.len(),
            Mem::Raw(r) => cudarc::driver::DeviceSlice::len(r),
        }
    }

    /// The stream the ops that use it must run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        match &*self.mem {
            Mem::Slice(s) => s.stream(),
            Mem::Raw(r) => cudarc::driver::DeviceSlice::stream(r),
        }
    }

    /// Whether two handles share the same memory.
    pub fn same_memory(&self, other: &Workspace) -> bool {
        Arc::ptr_eq(&self.mem, &other.mem)
    }

    pub(crate) fn device_ptr<'a>(&'a self, stream: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        match &*self.mem {
            Mem::Slice(s) => s.device_ptr(stream),
            Mem::Raw(r) => r.device_ptr(stream),
        }
    }

    /// Checks that an op on `gpu` may use this workspace: same context and
    /// same stream (the stream orders the ops that share it).
    pub(crate) fn check_for(&self, gpu: &Gpu) -> Result<()> {
        check_context(gpu, "workspace", self.stream())?;
        ensure(
            self.stream().cu_stream() == gpu.stream().cu_stream(),
            "workspace",
            || {
                format!(
                    "memory on the op's stream {:p} (the stream orders the ops that share it)",
                    gpu.stream().cu_stream()
                )
            },
            || format!("a workspace on stream {:p}", self.stream().cu_stream()),
        )
    }
}

/// An op's scratch: a private workspace it may grow, or a caller's it may
/// not.
#[derive(Debug)]
pub(crate) struct Scratch {
    ws: Workspace,
    shared: bool,
}

impl Scratch {
    /// A private workspace of `bytes`.
    pub(crate) fn private(gpu: &Gpu, bytes: usize) -> Result<Self> {
        Ok(Scratch {
            ws: Workspace::new(gpu, bytes)?,
            shared: false,
        })
    }

    /// The caller's workspace, which must hold `bytes` (the op's
    /// `workspace_size` for its fixed bounds; 0 when the op sizes it per plan).
    pub(crate) fn shared(gpu: &Gpu, ws: &Workspace, bytes: usize) -> Result<Self> {
        ws.check_for(gpu)?;
        let s = Scratch {
            ws: ws.clone(),
            shared: true,
        };
        s.require(bytes, "the op's workspace_size for its bounds")?;
        Ok(s)
    }

    fn require(&self, bytes: usize, what: &str) -> Result<()> {
        if self.ws.bytes() >= bytes {
            Ok(())
        } else {
            Err(Error::invalid(
                "workspace",
                format!("at least {bytes} bytes ({what})"),
                format!("{} bytes", self.ws.bytes()),
            ))
        }
    }

    /// Makes room for `bytes`: grows a private workspace, checks a shared
    /// one. Whether the memory moved (was reallocated).
    pub(crate) fn fit(&mut self, gpu: &Gpu, bytes: usize) -> Result<bool> {
        if self.shared {
            self.require(bytes, "what this plan needs").map(|_| false)
        } else if self.ws.bytes() < bytes {
            self.ws = Workspace::new(gpu, bytes)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    pub(crate) fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The bytes a plan may use at most: a shared workspace's size, none
    /// for a private one (it grows).
    pub(crate) fn limit(&self) -> Option<usize> {
        self.shared.then(|| self.ws.bytes())
    }
}

/// Makes `buf` hold at least `len` elements (at least one), reallocating
/// (zeroed) only when it is shorter. Whether it moved (was reallocated).
pub(crate) fn grow<T: DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    buf: &mut CudaSlice<T>,
    len: usize,
) -> Result<bool> {
    if buf.len() < len.max(1) {
        *buf = gpu.zeros(len.max(1))?;
        return Ok(true);
    }
    Ok(false)
}
