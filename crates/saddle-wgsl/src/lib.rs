//! # saddle-wgsl
//!
//! The saddle `Backend` implemented with WGSL compute shaders through wgpu, so that saddle runs
//! on any GPU that wgpu reaches (Vulkan, Metal, DX12). Kernels live in the workspace's
//! top-level `shaders/` folder, one kernel a file. (Being written: see the WGSL issue.)
