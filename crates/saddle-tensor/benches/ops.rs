//! Per-op timings of the CPU backend at the paper's MNIST sizes (batch 50), to see where a PGD
//! step spends its time. Run: `cargo bench -p saddle-tensor --bench ops`.
//!
//! Each line gives the median wall time of 11 runs and the process CPU time per run (all
//! threads): on a shared machine the CPU time is the steadier figure, and CPU-time GFLOP/s per
//! core against the core's peak (≈ 113 GFLOP/s on this Zen 4) is the kernel's efficiency.

use std::time::Instant;

use saddle_tensor::{cpu::Cpu, rng::Rng, Backend, Conv2dParams};

#[path = "support/cpu_clock.rs"]
mod cpu_clock;

fn t<F: FnMut()>(name: &str, flop: f64, mut f: F) {
    // `SADDLE_OPS=conv2` runs only the ops whose name contains `conv2`.
    if let Ok(only) = std::env::var("SADDLE_OPS") {
        if !name.contains(only.as_str()) {
            return;
        }
    }
    f();
    let c0 = cpu_clock::process();
    let mut v: Vec<f64> = (0..11)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    let cpu = (cpu_clock::process() - c0) / 11.0;
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v[5];
    if flop > 0.0 {
        println!(
            "{name:<28} {:>7.2} ms {:>6.1} GFLOP/s | cpu {:>7.2} ms {:>6.1} GFLOP/s per core",
            m * 1e3,
            flop / m / 1e9,
            cpu * 1e3,
            flop / cpu / 1e9
        );
    } else {
        println!(
            "{name:<28} {:>7.2} ms                | cpu {:>7.2} ms",
            m * 1e3,
            cpu * 1e3
        );
    }
}

fn main() {
    let threads: usize = std::env::var("SADDLE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let b = Cpu::new();
    let mut r = Rng::new(1);
    let mut rnd = |s: &[usize]| {
        let n: usize = s.iter().product();
        b.from_vec(s, (0..n).map(|_| r.uniform(-1.0, 1.0)).collect())
            .unwrap()
    };
    let n = 50;
    let p = Conv2dParams::new(1, 2);
    let x1 = rnd(&[n, 1, 28, 28]);
    let w1 = rnd(&[32, 1, 5, 5]);
    let b1 = rnd(&[32]);
    let h1 = rnd(&[n, 32, 28, 28]);
    let x2 = rnd(&[n, 32, 14, 14]);
    let w2 = rnd(&[64, 32, 5, 5]);
    let b2 = rnd(&[64]);
    let h2 = rnd(&[n, 64, 14, 14]);
    let f = rnd(&[n, 3136]);
    let fw = rnd(&[1024, 3136]);
    let g1 = rnd(&[n, 1024]);
    let row = rnd(&[1024]);
    let c1 = 2.0 * (n * 32 * 784 * 25) as f64;
    let c2 = 2.0 * (n * 64 * 196 * 800) as f64;
    let fc = 2.0 * (n * 3136 * 1024) as f64;
    println!("# CPU backend ops at batch {n}, {threads} threads");
    t("conv1 fwd (+bias+relu)", c1, || {
        drop(b.conv2d_relu(&x1, &w1, Some(&b1), p).unwrap())
    });
    t("conv2 fwd (+bias+relu)", c2, || {
        drop(b.conv2d_relu(&x2, &w2, Some(&b2), p).unwrap())
    });
    t("conv2 bwd input", c2, || {
        drop(
            b.conv2d_backward_input(&h2, &w2, &[n, 32, 14, 14], p)
                .unwrap(),
        )
    });
    t("conv1 bwd input", c1, || {
        drop(
            b.conv2d_backward_input(&h1, &w1, &[n, 1, 28, 28], p)
                .unwrap(),
        )
    });
    t("conv2 bwd weight", c2, || {
        drop(
            b.conv2d_backward_weight(&x2, &h2, &[64, 32, 5, 5], p)
                .unwrap(),
        )
    });
    t("conv1 bwd weight", c1, || {
        drop(
            b.conv2d_backward_weight(&x1, &h1, &[32, 1, 5, 5], p)
                .unwrap(),
        )
    });
    t("fc1 fwd", fc, || {
        drop(b.matmul(&f, &fw, false, true).unwrap())
    });
    t("fc1 bwd input", fc, || {
        drop(b.matmul(&g1, &fw, false, false).unwrap())
    });
    t("fc1 bwd weight", fc, || {
        drop(b.matmul(&g1, &f, true, false).unwrap())
    });
    t("maxpool1 fwd", 0.0, || drop(b.max_pool2d(&h1, 2).unwrap()));
    t("maxpool1 bwd", 0.0, || {
        drop(b.max_pool2d_backward(&h1, &x2, 2).unwrap())
    });
    t("relu+maxpool1 bwd (fused)", 0.0, || {
        drop(b.relu_max_pool2d_backward(&h1, &x2, 2).unwrap())
    });
    t("relu1 fwd", 0.0, || drop(b.relu(&h1).unwrap()));
    t("relu1 bwd", 0.0, || {
        drop(b.relu_backward(&h1, &h1).unwrap())
    });
    t("bias add [n,1024]+[1024]", 0.0, || {
        drop(b.add(&g1, &row).unwrap())
    });
    t("sum_axes conv bias grad", 0.0, || {
        drop(b.sum_axes(&h1, &[0, 2, 3], false).unwrap())
    });
    // The wide ResNets' batch norms (fused with ReLU) at batch 128, one per stage: memory
    // bound, so the line to read is the time against the bytes each pass moves.
    let relu = saddle_tensor::Activation::Relu;
    for (c, hw) in [(32, 32), (64, 16), (128, 8)] {
        let x = rnd(&[128, c, hw, hw]);
        let gamma = rnd(&[c]);
        let beta = rnd(&[c]);
        let gy = rnd(&[128, c, hw, hw]);
        let (y, stats) = b
            .batch_norm_act_train(&x, &gamma, &beta, 1e-5, relu)
            .unwrap();
        t(&format!("bn+relu train fwd {c}x{hw}x{hw}"), 0.0, || {
            drop(
                b.batch_norm_act_train(&x, &gamma, &beta, 1e-5, relu)
                    .unwrap(),
            )
        });
        t(&format!("bn+relu train bwd {c}x{hw}x{hw}"), 0.0, || {
            drop(
                b.batch_norm_act_train_backward(&x, &gamma, &stats, &y, &gy, 1e-5, relu)
                    .unwrap(),
            )
        });
    }
}
