//! The device shared by the GPU tests of one test binary.
//!
//! Every test in a binary shares one device (opening one and compiling its kernels takes a
//! while on a software driver). With no adapter a test fails with the reason and what to
//! install, unless `SADDLE_SKIP_GPU_TESTS=1` is set: then it prints that it was skipped.

use std::sync::OnceLock;

use saddle_wgsl::{DeviceChoice, Wgpu, SKIP_GPU_TESTS_ENV};

/// The shared backend on any adapter (lavapipe included), or `None` when GPU tests are skipped.
///
/// # Panics
/// When no adapter can be opened and the opt-out variable is not set.
pub fn backend() -> Option<Wgpu> {
    static SHARED: OnceLock<Result<Wgpu, String>> = OnceLock::new();
    if std::env::var(SKIP_GPU_TESTS_ENV).is_ok_and(|v| v == "1") {
        eprintln!("skipped: {SKIP_GPU_TESTS_ENV}=1 (GPU tests opted out)");
        return None;
    }
    let shared = SHARED.get_or_init(|| {
        Wgpu::new(DeviceChoice::Any)
            .map_err(|e| e.to_string())
            .inspect(|b| {
                eprintln!("GPU tests run on {}", b.adapter());
            })
    });
    match shared {
        Ok(b) => Some(b.clone()),
        Err(e) => panic!(
            "no wgpu adapter for the GPU tests: {e}\n(set {SKIP_GPU_TESTS_ENV}=1 to skip them)"
        ),
    }
}
