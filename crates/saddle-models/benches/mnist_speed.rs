//! Speed of the paper's MNIST network on the CPU backend, the rows that `cargo xtask bench`
//! compares with PyTorch (`benches/peer/pytorch_mnist.py` prints the same rows):
//!
//! - `pgd_step_b50`, `pgd_step_b256`: one PGD step, that is the forward pass, the gradient of
//!   the summed cross-entropy with respect to the input and the L∞ sign step with projection
//!   (images × steps per second; 55.5 MFLOP per image).
//! - `train_iter_b50`: one iteration of the paper's adversarial training: PGD-40 from a random
//!   start (ε = 0.3, α = 0.01) on a batch of 50, then forward and backward for every parameter
//!   on the adversarial batch and an Adam update (examples per second).
//! - `inference_b50`, `inference_b256`: logits only (images per second; 27.8 MFLOP per image).
//!
//! It also counts heap allocations (a counting global allocator) per PGD step and per training
//! iteration after warm-up, and the peak of live heap bytes after the warm-up and at the end.
//!
//! Run: `cargo bench -p saddle-models --bench mnist_speed` (2 threads unless `SADDLE_THREADS`
//! says otherwise; `SADDLE_BENCH_SECS` sets the time per row, 3 s by default; `SADDLE_BENCH_ROWS`
//! a comma-separated subset). Each figure is the median of timed repetitions after a warm-up.
//! Machine-readable lines start with `row=`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
#[path = "support/timing.rs"]
mod timing;
use timing::time;

use saddle_autograd::Graph;
use saddle_models::{loss_and_input_grad, Classifier, Loss, MnistNet};
use saddle_tensor::cpu::{Cpu, CpuTensor};
use saddle_tensor::{rng::Rng, AdamParams, Backend};

/// Counts allocations and live bytes.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        let live = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        let live = LIVE.fetch_add(new, Relaxed) + new;
        LIVE.fetch_sub(l.size(), Relaxed);
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Forward multiply-adds ×2 of the paper's network per image (conv1 + conv2 + fc1 + fc2).
const FWD_FLOP: f64 =
    2.0 * (28.0 * 28.0 * 32.0 * 25.0 + 14.0 * 14.0 * 64.0 * 800.0 + 3136.0 * 1024.0 + 10240.0);

const EPS: f32 = 0.3;
const ALPHA: f32 = 0.01;
const STEPS: usize = 40;

/// One PGD step on the CPU backend: forward, input gradient, sign step and projection.
fn pgd_step(net: &MnistNet<Cpu>, x: &CpuTensor, x0: &CpuTensor, y: &CpuTensor) -> CpuTensor {
    let b = net.backend();
    let (_, g, _) = loss_and_input_grad(net, x, y, Loss::CrossEntropy).unwrap();
    b.pgd_step_linf(x, x0, &g, ALPHA, EPS).unwrap()
}

/// The state of the training-iteration row: the model, Adam's moments and a noise buffer.
struct Trainer {
    net: MnistNet<Cpu>,
    m: Vec<CpuTensor>,
    v: Vec<CpuTensor>,
    noise: CpuTensor,
    grads: Vec<CpuTensor>,
    rng: Rng,
    step: u64,
}

impl Trainer {
    fn new(b: Cpu, n: usize) -> Self {
        let net = MnistNet::paper(b, 1).unwrap();
        let zeros = |t: &CpuTensor| b.zeros(saddle_tensor::TensorLike::dims(t)).unwrap();
        let m = net.params().tensors().iter().map(zeros).collect();
        let v = net.params().tensors().iter().map(zeros).collect();
        let noise = b.zeros(&[n, 1, 28, 28]).unwrap();
        Trainer {
            net,
            m,
            v,
            noise,
            grads: Vec::with_capacity(8),
            rng: Rng::new(9),
            step: 0,
        }
    }

    /// PGD-40 from a random start, then one Adam step on the adversarial batch.
    fn iteration(&mut self, x0: &CpuTensor, y: &CpuTensor) {
        let b = *self.net.backend();
        // Random start: x0 + U(−ε, ε), projected (the noise buffer is reused in place).
        for v in self.noise.as_mut_slice() {
            *v = self.rng.uniform(-EPS, EPS);
        }
        let mut x = b.add(x0, &self.noise).unwrap();
        x = b.project_linf(&x, x0, EPS).unwrap();
        for _ in 0..STEPS {
            x = pgd_step(&self.net, &x, x0, y);
        }
        {
            let g = Graph::new(b);
            let xv = g.input(x);
            let f = self.net.forward(&g, xv, true).unwrap();
            let loss = g.mean_all(g.cross_entropy(f.logits, y).unwrap()).unwrap();
            let mut gr = g.backward(loss).unwrap();
            self.grads
                .extend(f.params.iter().map(|&(_, p)| gr.take(p).unwrap()));
        }
        self.step += 1;
        let h = AdamParams {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: self.step,
        };
        let params = self.net.params_mut().tensors_mut();
        for (i, (p, g)) in params.iter_mut().zip(&self.grads).enumerate() {
            b.adam_update(p, g, &mut self.m[i], &mut self.v[i], h)
                .unwrap();
        }
        self.grads.clear();
    }
}

fn row(name: &str, rate: f64, unit: &str, secs: f64, gflop: Option<f64>) {
    let gf = gflop.map(|g| format!(" gflops={g:.1}")).unwrap_or_default();
    println!(
        "row={name} rate={rate:.1} unit={unit} ms={:.2}{gf}",
        secs * 1e3
    );
}

fn main() {
    timing::in_pool(run);
}

fn run(threads: usize) {
    let (secs, want) = timing::settings();
    let b = Cpu::new();
    let net = MnistNet::paper(b, 1).unwrap();
    let mut rng = Rng::new(2);
    let isa = match saddle_tensor::cpu::cpu_isa() {
        Ok(i) => i.name(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!("# saddle MNIST network, CPU backend, {threads} threads, isa={isa}");
    let mut batch = |n: usize| {
        let x = b
            .from_vec(
                &[n, 1, 28, 28],
                (0..n * 784).map(|_| rng.next_f32()).collect(),
            )
            .unwrap();
        let y = b
            .from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())
            .unwrap();
        (x, y)
    };
    let (x50, y50) = batch(50);
    let (x256, y256) = batch(256);
    for (n, x, y) in [(50, &x50, &y50), (256, &x256, &y256)] {
        let name = format!("pgd_step_b{n}");
        if want(&name) {
            let mut xa = x.clone();
            let t = time(secs, || xa = pgd_step(&net, &xa, x, y));
            let ips = n as f64 / t;
            row(
                &name,
                ips,
                "images*steps/s",
                t,
                Some(ips * 2.0 * FWD_FLOP / 1e9),
            );
        }
    }
    if want("train_iter_b50") {
        let mut tr = Trainer::new(b, 50);
        let t = time(secs, || tr.iteration(&x50, &y50));
        let flop = 50.0 * (STEPS as f64 * 2.0 + 3.0) * FWD_FLOP;
        row(
            "train_iter_b50",
            50.0 / t,
            "examples/s",
            t,
            Some(flop / t / 1e9),
        );
    }
    for (n, x) in [(50, &x50), (256, &x256)] {
        let name = format!("inference_b{n}");
        if want(&name) {
            let t = time(secs, || drop(net.logits(x).unwrap()));
            let ips = n as f64 / t;
            row(&name, ips, "images/s", t, Some(ips * FWD_FLOP / 1e9));
        }
    }
    if want("allocations") {
        // Allocations after warm-up: one PGD step, one training iteration (40 PGD steps
        // included), and whether the peak of live heap bytes moves over more iterations.
        let mut xa = x50.clone();
        for _ in 0..3 {
            xa = pgd_step(&net, &xa, &x50, &y50);
        }
        let a0 = ALLOCS.load(Relaxed);
        xa = pgd_step(&net, &xa, &x50, &y50);
        let pgd = ALLOCS.load(Relaxed) - a0;
        drop(xa);
        let mut tr = Trainer::new(b, 50);
        for _ in 0..3 {
            tr.iteration(&x50, &y50);
        }
        PEAK.store(LIVE.load(Relaxed), Relaxed);
        let a0 = ALLOCS.load(Relaxed);
        tr.iteration(&x50, &y50);
        let train = ALLOCS.load(Relaxed) - a0;
        let peak_warm = PEAK.load(Relaxed);
        for _ in 0..10 {
            tr.iteration(&x50, &y50);
        }
        let peak_end = PEAK.load(Relaxed);
        println!(
            "allocs pgd_step_b50={pgd} train_iter_b50={train} peak_mib_after_warmup={:.1} \
             peak_mib_after_10_more={:.1}",
            peak_warm as f64 / (1 << 20) as f64,
            peak_end as f64 / (1 << 20) as f64
        );
    }
}
