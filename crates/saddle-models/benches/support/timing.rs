//! What the speed benchmarks share (`mnist_speed` here, `cifar_speed` in saddle-train, which
//! includes this file by path): the thread pool, the settings from the environment, timing.

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

/// Runs `run(threads)` inside a rayon pool of `SADDLE_THREADS` threads (2 by default).
/// Everything runs inside the pool: the backend's parallel loops then start from a worker
/// thread instead of being injected from outside (rayon's injection queue allocates a block
/// every few dozen jobs, and each hand-over costs a wake-up).
pub fn in_pool(run: impl FnOnce(usize) + Send) {
    let threads: usize = std::env::var("SADDLE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| run(threads));
}

/// Seconds per quick row (`SADDLE_BENCH_SECS`, 3 by default) and the row filter
/// (`SADDLE_BENCH_ROWS`, comma-separated; every row when unset).
pub fn settings() -> (f64, impl Fn(&str) -> bool) {
    let env = |k: &str| std::env::var(k).ok();
    let secs: f64 = env("SADDLE_BENCH_SECS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let only = env("SADDLE_BENCH_ROWS");
    let want = move |r: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == r));
    (secs, want)
}
