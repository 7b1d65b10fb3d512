//! TMA tensor maps (`cuTensorMapEncodeTiled`), encoded on the host for the
//! kernels that copy with `cp.async.bulk.tensor`: every map here is
//! 128-byte swizzled (the `wgmma` operand layout) and zero-fills reads past
//! the tensor.

use cudarc::driver::{sys, CudaSlice};

use crate::error::{CudaContextExt, Result};
use crate::Gpu;

/// Bytes of a `CUtensorMap`.
pub(crate) const TMAP_BYTES: usize = 128;

/// Element type of a mapped tensor.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TmaElem {
    /// bf16 values.
    Bf16,
    /// Bytes (e4m3 values).
    U8,
}

/// The map of the tensor at `addr`: `dims` innermost first (in elements),
/// `strides` of the outer dimensions in bytes, boxes of `boxes` elements.
pub(crate) fn encode_tiled(
    elem: TmaElem,
    addr: u64,
    dims: &[u64],
    strides: &[u64],
    boxes: &[u32],
) -> Result<[u8; TMAP_BYTES]> {
    use sys::{
        CUtensorMapDataType as T, CUtensorMapFloatOOBfill as F, CUtensorMapInterleave as I,
        CUtensorMapL2promotion as L, CUtensorMapSwizzle as S,
    };
    let rank = dims.len();
    assert!(
        strides.len() + 1 == rank && boxes.len() == rank,
        "tensor map rank"
    );
    let dims: Vec<u64> = dims.iter().map(|&d| d.max(1)).collect();
    let elem_strides = vec![1u32; rank];
    let dtype = match elem {
        TmaElem::Bf16 => T::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        TmaElem::U8 => T::CU_TENSOR_MAP_DATA_TYPE_UINT8,
    };
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: the arrays have the rank's lengths; the driver only writes `map`.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            rank as u32,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            I::CU_TENSOR_MAP_INTERLEAVE_NONE,
            S::CU_TENSOR_MAP_SWIZZLE_128B,
            L::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            F::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .during(|| format!("encoding a tensor map of {dims:?} {elem:?} elements"))?;
    // SAFETY: initialised by the driver (or zeroed); plain data.
    let map = unsafe { map.assume_init() };
    let mut bytes = [0u8; TMAP_BYTES];
    // SAFETY: `CUtensorMap` is 128 bytes of plain data.
    bytes.copy_from_slice(unsafe {
        std::slice::from_raw_parts(&map as *const _ as *const u8, TMAP_BYTES)
    });
    Ok(bytes)
}

/// An op's tensor maps on the device (64-byte aligned: the allocation is)
/// and the bytes last uploaded: [`TensorMaps::bind`] uploads only when the
/// maps change, so a run on the previous run's buffers only launches (and
/// can be captured in a CUDA graph).
pub(crate) struct TensorMaps {
    dev: CudaSlice<u8>,
    host: Vec<u8>,
}

impl TensorMaps {
    /// Room for `n` maps.
    pub(crate) fn new(gpu: &Gpu, n: usize) -> Result<Self> {
        Ok(TensorMaps {
            dev: gpu.zeros(n * TMAP_BYTES)?,
            host: Vec::new(),
        })
    }

    /// Makes room for `n` maps (reallocating, and so uploading at the next
    /// bind, only when there is less): for `plan`, never `run`.
    pub(crate) fn reserve(&mut self, gpu: &Gpu, n: usize) -> Result<()> {
        if self.dev.len() < n * TMAP_BYTES {
            *self = TensorMaps::new(gpu, n)?;
        }
        Ok(())
    }

    /// Uploads `maps` (the encoded maps, in the kernel's order) unless they
    /// are the ones last uploaded; `op` names the op in errors.
    pub(crate) fn bind(&mut self, gpu: &Gpu, maps: Vec<u8>, op: &str) -> Result<()> {
        if maps != self.host {
            gpu.stream()
                .memcpy_htod(&maps, &mut self.dev)
                .during(|| format!("uploading the {op} tensor maps"))?;
            self.host = maps;
        }
        Ok(())
    }

    /// The device buffer of the maps.
    pub(crate) fn device(&self) -> &CudaSlice<u8> {
        &self.dev
    }
}
