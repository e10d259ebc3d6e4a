//! # saddle-wgsl
//!
//! The saddle [`Backend`] implemented with WGSL compute shaders through wgpu, so that saddle
//! runs on any GPU wgpu reaches natively (Vulkan, Metal, DX12) without CUDA. Every kernel is one
//! file in this crate's `shaders/` folder (the workspace's top-level `shaders/` links to it),
//! embedded with `include_str!` ([`Kernel`] lists them; the code they share is in
//! `shaders/prelude_*.wgsl`, included at load time, see [`PRELUDES`]); every op equals its CPU
//! twin ([`saddle_tensor::cpu::Cpu`]) within the tolerance stated in `tests/ops.rs`.
//!
//! ```no_run
//! use saddle_tensor::{Backend, TensorLike};
//! use saddle_wgsl::{DeviceChoice, Wgpu};
//!
//! let b = Wgpu::new(DeviceChoice::Gpu)?; // a hardware GPU, or an error saying what was found
//! println!("running on {}", b.adapter());
//! let x = b.from_vec(&[2, 2], vec![1.0, -2.0, 3.0, -4.0])?;
//! let y = b.relu(&x)?; // stays on the device
//! assert_eq!(b.to_vec(&y)?, vec![1.0, 0.0, 3.0, 0.0]);
//! # Ok::<(), saddle_tensor::TensorError>(())
//! ```
//!
//! ## Choosing the device
//!
//! [`Wgpu::new`] with [`DeviceChoice::Gpu`] asks wgpu for the high-performance adapter among
//! Vulkan, Metal and DX12 ([`BACKENDS`]; never the OpenGL fallback) and opens it with the
//! adapter's own limits; a software adapter (Mesa's lavapipe, a CPU-type device) is refused.
//! [`Wgpu::auto`] gives `None` unless the adapter is hardware, so that the caller falls back to
//! the CPU backend. [`DeviceChoice::Any`] accepts a software adapter: that is how the tests run
//! in CI. With no adapter at all, the error says so and what to install. [`Wgpu::adapter`]
//! describes the adapter for reports.
//!
//! ## Data stays on the device
//!
//! A [`WgpuTensor`] is a shape and a shared device buffer. Operations record compute dispatches
//! into one pending command encoder and return at once. The encoder is submitted when the
//! caller marks the end of an iteration ([`Backend::step_end`]: after every PGD step and every
//! training step, so one step is one submission), at a read-back, or after a safety cap of a few
//! thousand commands (see `context.rs`); only [`Backend::to_vec`] waits for the device and
//! copies to the host (through one staging buffer). A PGD attack or a training step therefore crosses to the host only for its inputs
//! and the numbers it reports. Buffers are reused through a pool (see `context.rs` for why reuse
//! is safe with a pending encoder); kernel parameters are cached on the device by value, so a
//! loop that repeats the same ops writes no parameters after its first iteration.
//! [`Wgpu::transfer_counts`] counts every transfer where it happens, and every submission
//! ([`TransferCounts`]).
//!
//! ## Tiling of matmul and convolution
//!
//! [`Backend::matmul`], [`Backend::conv2d`] and the two convolution gradients share one tiled
//! GEMM scheme (`shaders/matmul.wgsl`, `conv2d*.wgsl`):
//!
//! - A workgroup of 16×16 = 256 threads computes a 64×64 tile of the output (the shared core is
//!   `shaders/prelude_gemm.wgsl`, included by the four kernels).
//! - The inner dimension is walked in steps of 16. At each step the workgroup stages a 16×64
//!   slice of each operand in workgroup memory (2 × 4 KiB); each thread loads four elements of
//!   each, zero outside the operands, so no size needs to be a multiple of anything. Loads are
//!   ordered so that neighbouring threads read neighbouring addresses.
//! - After a barrier each thread accumulates a 4×4 register block (rows `ty + 16i`, columns
//!   `tx + 16j`) from the staged slices: 16 multiply-adds per 8 workgroup-memory reads.
//! - Convolutions are *implicit* GEMMs: no im2col buffer is built. For the forward pass the
//!   rows are output channels, the columns output pixels and the inner index (channel, kernel
//!   row, kernel column); the input patch is gathered while staging, with zeros for the padding.
//!   The input gradient gathers the output gradient the same way (rows: input channels,
//!   columns: input pixels, inner: output channel and kernel tap); for inputs with few channels
//!   (the first layer) a direct kernel, one thread per input element, replaces it so that no
//!   tile rows are wasted. The weight gradient has rows = output channels, columns = kernel
//!   taps and a long inner index over every output position of the batch.
//! - Split-K: when the output has few tiles and the inner dimension is long (the weight
//!   gradient; a linear layer on a small batch), workgroups along z each take a slice of the
//!   inner dimension and write partial products, summed afterwards by `sum_axes_thread.wgsl` in
//!   a fixed order. Results do not depend on timing.
//!
//! Reductions (`sum_axes`, batch-norm statistics, the L2 PGD step) use one workgroup per output
//! and a tree in workgroup memory when they are long, one thread per output when they are short.
//!
//! ## Errors
//!
//! Shapes are checked on the host with `saddle_tensor::shape`, with the same errors as the CPU
//! backend; nothing panics. Device errors (validation, out of memory, device lost) are caught
//! and returned as [`TensorError::Backend`] by the next operation. Class labels are checked on
//! the host when they were uploaded with `from_vec` (the usual case), exactly as the CPU backend
//! checks them. Labels computed on the device are checked by the loss kernels themselves: an
//! invalid label makes its row NaN and sets a status word on the device, which the next
//! `to_vec` on that device (from any thread) reports as [`TensorError::InvalidArgument`] naming
//! the loss; checking it costs four bytes per read-back and no extra synchronisation.
//!
//! **Invariants**: no I/O and no printing; every op has a CPU twin test; no WGSL in Rust source.

mod context;
mod device;
mod kernels;
mod ops;
mod tensor;

use std::sync::Arc;

pub use device::{AdapterSummary, DeviceChoice, BACKENDS, INSTALL_HINT};
pub use kernels::{resolve_includes, Kernel, INCLUDE_DIRECTIVE, PRELUDES};
pub use saddle_tensor::{Backend, Result, TensorError};
pub use tensor::WgpuTensor;
/// The wgpu version this crate is built on, for naming adapters, backends and limits.
pub use wgpu;

use context::Context;
pub use context::TransferCounts;

/// The environment variable that lets GPU tests pass without an adapter: set
/// `SADDLE_SKIP_GPU_TESTS=1` and they print that they were skipped. Without it a test that finds
/// no adapter fails, naming what to install.
pub const SKIP_GPU_TESTS_ENV: &str = "SADDLE_SKIP_GPU_TESTS";

/// The wgpu backend: a handle to one device and its queue. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Wgpu {
    ctx: Arc<Context>,
}

impl Wgpu {
    /// Opens a device as `choice` says (see [`DeviceChoice`]).
    ///
    /// # Errors
    /// [`TensorError::Backend`] when no Vulkan, Metal or DX12 adapter exists (the message says
    /// what to install), when a GPU was asked for and only a software adapter exists (the
    /// message names it), or when the device cannot be opened.
    pub fn new(choice: DeviceChoice) -> Result<Self> {
        Self::with_backends(choice, BACKENDS)
    }

    /// As [`Wgpu::new`], among the graphics APIs in `backends` only (for example
    /// `wgpu::Backends::VULKAN`); APIs outside [`BACKENDS`] (OpenGL, WebGPU) are ignored.
    ///
    /// # Errors
    /// As [`Wgpu::new`]; no adapter at all when `backends` holds none of [`BACKENDS`].
    pub fn with_backends(choice: DeviceChoice, backends: wgpu::Backends) -> Result<Self> {
        let adapter = device::request_adapter(backends & BACKENDS)?;
        let info = adapter.get_info();
        if choice != DeviceChoice::Any {
            device::require_hardware(&info, choice)?;
        }
        let (dev, queue) = device::open(&adapter)?;
        Ok(Wgpu {
            ctx: Arc::new(Context::new(dev, queue, info)),
        })
    }

    /// The backend on a hardware GPU, or `None` when there is no adapter or only a software one
    /// (use the CPU backend then): what `--device auto` means.
    ///
    /// # Errors
    /// [`TensorError::Backend`] only when a hardware adapter exists but its device cannot be
    /// opened.
    pub fn auto() -> Result<Option<Self>> {
        let Ok(adapter) = device::request_adapter(BACKENDS) else {
            return Ok(None);
        };
        let info = adapter.get_info();
        if info.device_type == wgpu::DeviceType::Cpu {
            return Ok(None);
        }
        let (dev, queue) = device::open(&adapter)?;
        Ok(Some(Wgpu {
            ctx: Arc::new(Context::new(dev, queue, info)),
        }))
    }

    /// What the backend runs on: name, API, device type, driver, whether it is software.
    pub fn adapter(&self) -> AdapterSummary {
        AdapterSummary::from_info(&self.ctx.info)
    }

    /// wgpu's full description of the adapter.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.ctx.info
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.ctx.limits
    }

    /// The host ↔ device transfers of this device since it was opened (shared by its clones):
    /// tensors uploaded, kernel-parameter blocks written, read-backs, and their bytes; and the
    /// command buffers submitted ([`TransferCounts::submissions`]). Take one count before and
    /// one after a piece of work and compare with [`TransferCounts::since`].
    pub fn transfer_counts(&self) -> TransferCounts {
        self.ctx.transfer_counts()
    }

    /// Submits pending work and waits until the device has finished it (for timing).
    ///
    /// # Errors
    /// [`TensorError::Backend`] if the device reports an error.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.flush()?;
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| {
                self.ctx
                    .backend_error(format!("waiting for the device: {e}"))
            })?;
        self.ctx.check("synchronize")
    }
}
