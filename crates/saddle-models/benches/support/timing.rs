//! Timing helpers shared by the speed benchmarks (`mnist_speed` here, `cifar_speed` in
//! saddle-train, which includes this file by path).

#![allow(dead_code)]

use std::time::Instant;

/// The median of `v` (upper median for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median seconds per call: two warm-up calls, then repetitions for about `secs` seconds (at
/// least 3).
pub fn time<F: FnMut()>(secs: f64, mut f: F) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-6);
    let reps = ((secs / once) as usize).clamp(3, 200);
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Seconds of one call after one warm-up call (for rows too slow to repeat).
pub fn time_once<F: FnMut()>(mut f: F) -> f64 {
    f();
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}
