//! Speed of one PGD step of the paper's MNIST network on the wgpu backend: forward pass,
//! gradient of the summed cross-entropy with respect to the input, and the fused L∞ step
//! (`pgd_step_linf`), with everything on the device until the attack ends.
//!
//! Run: `cargo run --release -p saddle-models --example bench_pgd_step [-- any]`
//!
//! The argument is the device choice (`gpu` by default; `any` accepts a software adapter such
//! as lavapipe). `SADDLE_BENCH_BATCH` (default 50, the paper's batch) and `SADDLE_BENCH_STEPS`
//! (default 10) set the size. Prints the adapter it ran on, then images×steps per second; on a
//! software adapter the number is labelled as such, since it says nothing about a GPU's speed.
//! `SADDLE_BENCH_CPU=1` also times the CPU backend on the same attack, for scale.

use std::time::Instant;

use saddle_models::{loss_and_input_grad, Classifier, Loss, MnistNet};
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};
use saddle_wgsl::{DeviceChoice, Wgpu};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `steps` PGD steps (ε = 0.3, α = 0.01) and returns seconds per step, excluding a
/// warm-up step (pipeline compilation) and including the final read-back.
fn time_pgd<B: Backend>(b: &B, n: usize, steps: usize) -> Result<f64, saddle_tensor::TensorError> {
    let net = MnistNet::paper(b.clone(), 1).map_err(|e| saddle_tensor::TensorError::Backend {
        backend: b.name(),
        detail: e.to_string(),
    })?;
    let mut rng = Rng::new(2);
    let x0 = b.from_vec(
        &[n, 1, 28, 28],
        (0..n * 784).map(|_| rng.next_f32()).collect(),
    )?;
    let y = b.from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())?;
    let step = |x: &B::Tensor| -> Result<B::Tensor, saddle_tensor::TensorError> {
        let (_, g, _) = loss_and_input_grad(&net, x, &y, Loss::CrossEntropy).map_err(|e| {
            saddle_tensor::TensorError::Backend {
                backend: b.name(),
                detail: e.to_string(),
            }
        })?;
        b.pgd_step_linf(x, &x0, &g, 0.01, 0.3)
    };
    let warm = step(&x0)?;
    b.to_vec(&b.sum_all(&warm)?)?;
    let t = Instant::now();
    let mut x = x0.clone();
    for _ in 0..steps {
        x = step(&x)?;
    }
    b.to_vec(
        &b.sum_all(
            &net.logits(&x)
                .map_err(|e| saddle_tensor::TensorError::Backend {
                    backend: b.name(),
                    detail: e.to_string(),
                })?,
        )?,
    )?;
    Ok(t.elapsed().as_secs_f64() / steps as f64)
}

fn main() {
    let choice: DeviceChoice = match std::env::args().nth(1).as_deref().unwrap_or("gpu").parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let n = env_usize("SADDLE_BENCH_BATCH", 50);
    let steps = env_usize("SADDLE_BENCH_STEPS", 10).max(1);
    let b = match Wgpu::new(choice) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let adapter = b.adapter();
    println!("# saddle MNIST network (paper scale), PGD step (L∞, ε 0.3, α 0.01), wgpu backend");
    println!("adapter: {adapter}");
    let label = if adapter.is_software {
        "SOFTWARE adapter (CPU emulation; not GPU speed)"
    } else {
        "GPU"
    };
    match time_pgd(&b, n, steps) {
        Ok(s) => println!(
            "pgd_step batch={n} steps={steps} [{label}]: {:.1} ms/step, {:.1} images*steps/s",
            s * 1e3,
            n as f64 / s
        ),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
    if std::env::var("SADDLE_BENCH_CPU").is_ok_and(|v| v == "1") {
        match time_pgd(&Cpu::new(), n, steps) {
            Ok(s) => println!(
                "pgd_step batch={n} steps={steps} [CPU backend, rayon's default threads]: {:.1} \
                 ms/step, {:.1} images*steps/s",
                s * 1e3,
                n as f64 / s
            ),
            Err(e) => eprintln!("CPU benchmark failed: {e}"),
        }
    }
}
