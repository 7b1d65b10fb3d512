//! The one workspace policy of every op.
//!
//! - `new` allocates what the op's bounds given there fix (the attention's
//!   `max_rows`) and nothing large otherwise;
//! - `plan` grows a buffer when a batch needs more ([`grow`]: grow-only,
//!   never shrinks, contents not kept), and uploads the plan into it;
//! - `run` never allocates, never synchronises with the host (so it can be
//!   captured in a CUDA graph and replayed while the plan holds).
//!
//! Caller-owned and shared workspaces are the next step (one buffer for
//! several ops and all layers of a step).

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

use crate::error::Result;
use crate::Gpu;

/// Makes `buf` hold at least `len` elements (at least one), reallocating
/// (zeroed) only when it is shorter.
pub(crate) fn grow<T: DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    buf: &mut CudaSlice<T>,
    len: usize,
) -> Result<()> {
    if buf.len() < len.max(1) {
        *buf = gpu.zeros(len.max(1))?;
    }
    Ok(())
}
