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

/// The GPU tests' shared device, or `None` when they are opted out (`SADDLE_SKIP_GPU_TESTS=1`):
/// saddle-wgsl's own test helper, one copy for both suites.
#[path = "../../crates/saddle-wgsl/tests/common/mod.rs"]
mod wgsl_common;
pub use wgsl_common::backend as gpu;
