//! Choosing an adapter and opening the device.

use std::str::FromStr;

use saddle_tensor::{Result, TensorError};

/// The graphics APIs asked for: native compute on Vulkan (Linux, Windows, Android), Metal
/// (macOS, iOS) and DX12 (Windows). wgpu's OpenGL fallback is never used: it lacks the compute
/// features and speed these kernels need.
pub const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

/// What to install when no adapter is found.
pub const INSTALL_HINT: &str = "install your GPU's Vulkan, Metal or DX12 driver; on Linux \
    without a GPU, Mesa's software Vulkan driver (lavapipe) works for tests: \
    `apt-get install mesa-vulkan-drivers libvulkan1`";

/// Which device to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// A hardware GPU (the high-performance adapter, with its own limits). A CPU-type adapter
    /// (a software rasteriser such as lavapipe) is refused: the error names it.
    Gpu,
    /// The GPU when the high-performance adapter is hardware; otherwise
    /// [`Wgpu::auto`](crate::Wgpu::auto) gives `None` so that the caller uses the CPU backend
    /// (a software adapter is for tests, not for training). With [`Wgpu::new`](crate::Wgpu::new)
    /// it is the same as [`DeviceChoice::Gpu`].
    Auto,
    /// Whatever adapter wgpu ranks first, including a software one: tests and CI on lavapipe.
    Any,
}

impl FromStr for DeviceChoice {
    type Err = TensorError;

    /// Parses `gpu`, `auto` or `any` (any case).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gpu" => Ok(DeviceChoice::Gpu),
            "auto" => Ok(DeviceChoice::Auto),
            "any" => Ok(DeviceChoice::Any),
            other => Err(TensorError::invalid(
                "device choice",
                format!("'{other}' is not one of gpu, auto, any"),
            )),
        }
    }
}

/// What the backend runs on, for reports and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The adapter's name, for example `"NVIDIA GeForce RTX 4090"` or `"llvmpipe (LLVM 15.0.6,
    /// 256 bits)"`.
    pub name: String,
    /// The graphics API: `"Vulkan"`, `"Metal"` or `"Dx12"`.
    pub backend: String,
    /// `"DiscreteGpu"`, `"IntegratedGpu"`, `"VirtualGpu"`, `"Cpu"` or `"Other"`.
    pub device_type: String,
    /// The driver and its version, as the driver reports them.
    pub driver: String,
    /// Whether this is a software implementation on the CPU (such as lavapipe): its speed says
    /// nothing about a GPU's.
    pub is_software: bool,
}

impl AdapterSummary {
    pub(crate) fn from_info(info: &wgpu::AdapterInfo) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            is_software: info.device_type == wgpu::DeviceType::Cpu,
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        if self.is_software {
            write!(f, "; software, not a GPU")?;
        }
        write!(f, ")")
    }
}

fn err(detail: impl Into<String>) -> TensorError {
    TensorError::Backend {
        backend: "wgpu".to_string(),
        detail: detail.into(),
    }
}

/// The high-performance adapter among `backends`.
pub(crate) fn request_adapter(backends: wgpu::Backends) -> Result<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // wgpu's debug-build default turns on the API validation layers; they stay opt-in
    // (WGPU_VALIDATION=1, WGPU_DEBUG=1) because they slow every dispatch.
    desc.flags = wgpu::InstanceFlags::empty().with_env();
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
    .map_err(|e| {
        err(format!(
            "no adapter was found among {backends:?} ({e}); {INSTALL_HINT}"
        ))
    })
}

/// Opens the device of `adapter` with the adapter's own limits.
pub(crate) fn open(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue)> {
    let info = adapter.get_info();
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("saddle"),
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| {
        err(format!(
            "could not open a device on {} ({:?}): {e}",
            info.name, info.backend
        ))
    })
}

/// Refuses a software adapter when a GPU was asked for.
pub(crate) fn require_hardware(info: &wgpu::AdapterInfo, choice: DeviceChoice) -> Result<()> {
    if info.device_type == wgpu::DeviceType::Cpu {
        let how = match choice {
            DeviceChoice::Auto => "`auto` uses the CPU backend instead (Wgpu::auto gives None)",
            _ => "use DeviceChoice::Any (`--device any`) to run on it anyway, slowly",
        };
        return Err(err(format!(
            "the only adapter is {} ({:?}), a software implementation on the CPU, not a GPU; {how}",
            info.name, info.backend
        )));
    }
    Ok(())
}
