//! Device memory the caller holds as a raw address and a length (a C or
//! Python caller's tensor, memory of another allocator): [`RawBuffer`]
//! gives it to the ops like a `CudaSlice`.
//!
//! Every op's `run` takes its buffers as cudarc's [`DevicePtr`] (inputs)
//! and [`DevicePtrMut`] (outputs, borrowed mutably): a [`CudaSlice`], a
//! [`CudaView`] / [`CudaViewMut`] (a sub-range, e.g. `buf.slice(a..b)`: an
//! offset into a bigger allocation) or a [`RawBuffer`]. Lengths are the
//! views' lengths; every buffer must start at a 16-byte aligned address and
//! belong to the op's CUDA context ([`crate::Error::WrongContext`]
//! otherwise).
//!
//! [`CudaSlice`]: cudarc::driver::CudaSlice
//! [`CudaView`]: cudarc::driver::CudaView
//! [`CudaViewMut`]: cudarc::driver::CudaViewMut

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{sys, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};

use crate::Gpu;

/// `len` elements of `T` at a device address the caller owns: no
/// allocation, no free, no event tracking (the caller orders other streams'
/// uses of the memory against the handle's stream).
#[derive(Debug)]
pub struct RawBuffer<T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    stream: Arc<CudaStream>,
    _elem: PhantomData<*const T>,
}

// SAFETY: an address and a length; the memory is the caller's, used on the
// handle's stream only.
unsafe impl<T> Send for RawBuffer<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for RawBuffer<T> {}

impl<T> RawBuffer<T> {
    /// `len` elements at `ptr`, in the context of `gpu` (the buffer reports
    /// the handle's stream as its own).
    ///
    /// # Safety
    /// `ptr` must be device memory of `gpu`'s context holding `len`
    /// elements of `T`, and stay allocated while any work enqueued with
    /// this buffer may still run on the stream.
    pub unsafe fn new(gpu: &Gpu, ptr: sys::CUdeviceptr, len: usize) -> Self {
        RawBuffer {
            ptr,
            len,
            stream: gpu.stream().clone(),
            _elem: PhantomData,
        }
    }

    /// The device address.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
}

impl<T> DeviceSlice<T> for RawBuffer<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl<T> DevicePtr<T> for RawBuffer<T> {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

impl<T> DevicePtrMut<T> for RawBuffer<T> {
    fn device_ptr_mut<'a>(
        &'a mut self,
        _stream: &'a CudaStream,
    ) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}
