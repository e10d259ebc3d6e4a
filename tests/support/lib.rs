//! End-to-end tests that cross saddle's crates live in `tests/*.rs` beside this file; this
//! library holds what they share: the PyTorch golden values of `tests/golden/`.

pub mod golden;

/// Relative error ‖a − b‖₂ / ‖b‖₂, computed in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The wgpu device shared by the GPU tests of one test binary, or `None` when they are opted out
/// with `SADDLE_SKIP_GPU_TESTS=1` (then it prints that they were skipped). With no adapter and no
/// opt-out, it panics: a GPU test that cannot run fails.
pub fn gpu() -> Option<saddle_wgsl::Wgpu> {
    use saddle_wgsl::{DeviceChoice, Wgpu, SKIP_GPU_TESTS_ENV};
    static SHARED: std::sync::OnceLock<Result<Wgpu, String>> = std::sync::OnceLock::new();
    if std::env::var(SKIP_GPU_TESTS_ENV).is_ok_and(|v| v == "1") {
        eprintln!("skipped: {SKIP_GPU_TESTS_ENV}=1 (GPU tests opted out)");
        return None;
    }
    let shared = SHARED.get_or_init(|| {
        Wgpu::new(DeviceChoice::Any)
            .map_err(|e| e.to_string())
            .inspect(|b| eprintln!("GPU tests run on {}", b.adapter()))
    });
    match shared {
        Ok(b) => Some(b.clone()),
        Err(e) => panic!(
            "no wgpu adapter for the GPU tests: {e}\n(set {SKIP_GPU_TESTS_ENV}=1 to skip them)"
        ),
    }
}
