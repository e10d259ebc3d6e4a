//! Speed of the paper's MNIST network on the CPU backend: PGD step (forward + gradient with
//! respect to the input), training step (forward + backward for every parameter) and inference.
//!
//! Run: `cargo bench -p saddle-models --bench mnist_speed` (2 threads unless `SADDLE_THREADS`
//! says otherwise). Prints one line per measurement; `cargo xtask bench` collects them.
//! Each figure is the median of timed repetitions after a warm-up.

use std::time::Instant;

use saddle_autograd::Graph;
use saddle_models::{loss_and_input_grad, Classifier, Loss, MnistNet};
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};

/// Forward multiply-adds ×2 of the paper's network per image (conv1 + conv2 + fc1 + fc2).
const FWD_FLOP: f64 =
    2.0 * (28.0 * 28.0 * 32.0 * 25.0 + 14.0 * 14.0 * 64.0 * 800.0 + 3136.0 * 1024.0 + 10240.0);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    f();
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

fn main() {
    let threads: usize = std::env::var("SADDLE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let reps: usize = std::env::var("SADDLE_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let b = Cpu::new();
    let net = MnistNet::paper(b, 1).unwrap();
    let mut rng = Rng::new(2);
    println!("# saddle MNIST network, CPU backend, {threads} threads, median of {reps}");
    for &n in &[50usize, 256] {
        let x = b
            .from_vec(
                &[n, 1, 28, 28],
                (0..n * 784).map(|_| rng.next_f32()).collect(),
            )
            .unwrap();
        let y = b
            .from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())
            .unwrap();
        let t = time(reps, || {
            loss_and_input_grad(&net, &x, &y, Loss::CrossEntropy).unwrap();
        });
        let ips = n as f64 / t;
        println!(
            "pgd_step batch={n}: {:.1} ms, {:.0} images*steps/s, {:.1} GFLOP/s",
            t * 1e3,
            ips,
            ips * 2.0 * FWD_FLOP / 1e9
        );
        let t = time(reps, || {
            net.logits(&x).unwrap();
        });
        println!(
            "inference batch={n}: {:.1} ms, {:.0} images/s",
            t * 1e3,
            n as f64 / t
        );
        if n == 50 {
            let t = time(reps, || {
                let g = Graph::new(b);
                let xv = g.input(x.clone());
                let f = net.forward(&g, xv, true).unwrap();
                let l = g.mean_all(g.cross_entropy(f.logits, &y).unwrap()).unwrap();
                g.backward(l).unwrap();
            });
            println!(
                "train_step batch={n}: {:.1} ms, {:.0} examples/s",
                t * 1e3,
                n as f64 / t
            );
        }
    }
}
