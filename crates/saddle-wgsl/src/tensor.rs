//! The device-resident tensor.

use std::sync::Arc;

use saddle_tensor::TensorLike;

use crate::context::{Bind, PooledBuffer};

/// Rank-1 tensors up to this many elements made by `from_vec` keep a host copy, so that labels
/// are checked on the host before a loss kernel runs (as the CPU backend does).
pub(crate) const HOST_LABEL_COPY_MAX: usize = 1 << 16;

/// A tensor of the wgpu backend: a shape and a shared buffer on the device.
///
/// Cloning is cheap (the buffer is shared); operations never modify their inputs, and the
/// in-place optimiser updates copy a shared buffer before writing to it, so tensors behave as
/// values. Only [`Backend::from_vec`](saddle_tensor::Backend::from_vec) and
/// [`Backend::to_vec`](saddle_tensor::Backend::to_vec) move data between host and device.
#[derive(Clone)]
pub struct WgpuTensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) buf: Arc<PooledBuffer>,
    /// Host copy of a small rank-1 tensor uploaded with `from_vec` (class labels).
    pub(crate) host_labels: Option<Arc<[f32]>>,
}

impl WgpuTensor {
    pub(crate) fn new(shape: Vec<usize>, buf: PooledBuffer) -> Self {
        WgpuTensor {
            shape,
            buf: Arc::new(buf),
            host_labels: None,
        }
    }

    /// Size of the data in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.numel() as u64 * 4
    }

    /// The binding of this tensor's data.
    pub(crate) fn bind(&self) -> Bind<'_> {
        Bind {
            buffer: self.buf.raw(),
            bytes: self.bytes(),
        }
    }
}

impl TensorLike for WgpuTensor {
    fn dims(&self) -> &[usize] {
        &self.shape
    }
}

impl std::fmt::Debug for WgpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuTensor{:?} (on the device)", self.shape)
    }
}
