//! One PGD step of the paper's MNIST network (batch 50 by default) as the sequence of CPU
//! backend calls the autograd graph makes, each op timed in CPU time of the calling thread, on
//! a 1-thread rayon pool (`SADDLE_THREADS` to change). CPU time, not wall time, so that the
//! figures hold on a shared machine. It also prints a hash of the input gradient's bits, to
//! check that a kernel change leaves the results bit for bit the same.
//!
//! Run: `SADDLE_CPU_ISA=avx2 cargo run --release -p saddle-tensor --example pgd_ops`
//! (`SADDLE_BATCH`, `SADDLE_REPS` set the batch and the number of timed steps,
//! `SADDLE_HEAP_SHIFT` moves the buffers by allocating that many bytes first).

use saddle_tensor::{cpu::Cpu, rng::Rng, Backend, Conv2dParams};

#[path = "../benches/support/cpu_clock.rs"]
mod cpu_clock;

const OPS: [&str; 17] = [
    "conv1 fwd (+bias+relu)",
    "pool1 fwd",
    "conv2 fwd (+bias+relu)",
    "pool2 fwd",
    "fc1 fwd (matmul)",
    "fc1 bias add",
    "relu",
    "fc2 fwd (matmul)",
    "fc2 bias add",
    "cross-entropy",
    "cross-entropy bwd",
    "fc2 bwd input (matmul)",
    "relu bwd",
    "fc1 bwd input (matmul)",
    "pool2+relu bwd",
    "conv2 bwd input",
    "pool1+relu bwd",
];
const TAIL: [&str; 2] = ["conv1 bwd input", "pgd sign step + projection"];

fn main() {
    let threads: usize = std::env::var("SADDLE_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let n: usize = std::env::var("SADDLE_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let reps: usize = std::env::var("SADDLE_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| run(n, reps, threads));
}

fn run(n: usize, reps: usize, threads: usize) {
    // `SADDLE_HEAP_SHIFT=bytes` allocates that much first, moving every later buffer: the
    // kernels' speed can depend on how buffers fall relative to each other in the caches.
    let shift: usize = std::env::var("SADDLE_HEAP_SHIFT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let _shift = vec![0u8; shift];
    let b = Cpu::new();
    let isa = saddle_tensor::cpu::cpu_isa().unwrap().name();
    let mut r = Rng::new(7);
    let mut rnd = |s: &[usize], a: f32| {
        let len: usize = s.iter().product();
        b.from_vec(s, (0..len).map(|_| r.uniform(-a, a)).collect())
            .unwrap()
    };
    let w1 = rnd(&[32, 1, 5, 5], 0.2);
    let b1 = rnd(&[32], 0.2);
    let w2 = rnd(&[64, 32, 5, 5], 0.035);
    let b2 = rnd(&[64], 0.035);
    let f1 = rnd(&[1024, 3136], 0.018);
    let c1 = rnd(&[1024], 0.018);
    let f2 = rnd(&[10, 1024], 0.03);
    let c2 = rnd(&[10], 0.03);
    let x0 = rnd(&[n, 1, 28, 28], 0.5);
    let x0 = b.affine(&x0, 1.0, 0.5).unwrap();
    let y = b
        .from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())
        .unwrap();
    let p = Conv2dParams::new(1, 2);
    let nops = OPS.len() + TAIL.len();
    let mut tot = vec![0.0f64; nops];
    let mut x = x0.clone();
    let mut hash = 0u64;
    for rep in 0..reps + 3 {
        let mut t = [0.0f64; 19];
        let mut k = 0;
        let mut last = cpu_clock::thread();
        let mut tick = |t: &mut [f64; 19]| {
            let now = cpu_clock::thread();
            t[k] = now - last;
            last = now;
            k += 1;
        };
        let z1 = b.conv2d_relu(&x, &w1, Some(&b1), p).unwrap();
        tick(&mut t);
        let h1 = b.max_pool2d(&z1, 2).unwrap();
        tick(&mut t);
        let z2 = b.conv2d_relu(&h1, &w2, Some(&b2), p).unwrap();
        tick(&mut t);
        let h2 = b.max_pool2d(&z2, 2).unwrap();
        tick(&mut t);
        let hf = b.reshape(&h2, &[n, 3136]).unwrap();
        let a1 = b.matmul(&hf, &f1, false, true).unwrap();
        tick(&mut t);
        let a1 = b.add(&a1, &c1).unwrap();
        tick(&mut t);
        let r1 = b.relu(&a1).unwrap();
        tick(&mut t);
        let lo = b.matmul(&r1, &f2, false, true).unwrap();
        tick(&mut t);
        let lo = b.add(&lo, &c2).unwrap();
        tick(&mut t);
        let _ce = b.cross_entropy(&lo, &y).unwrap();
        tick(&mut t);
        let ones = b.full(&[n], 1.0).unwrap();
        let glo = b.cross_entropy_backward(&lo, &y, &ones).unwrap();
        tick(&mut t);
        let gr1 = b.matmul(&glo, &f2, false, false).unwrap();
        tick(&mut t);
        let ga1 = b.relu_backward(&a1, &gr1).unwrap();
        tick(&mut t);
        let ghf = b.matmul(&ga1, &f1, false, false).unwrap();
        tick(&mut t);
        let gh2 = b.reshape(&ghf, &[n, 64, 7, 7]).unwrap();
        let gz2 = b.relu_max_pool2d_backward(&z2, &gh2, 2).unwrap();
        tick(&mut t);
        let gh1 = b
            .conv2d_backward_input(&gz2, &w2, &[n, 32, 14, 14], p)
            .unwrap();
        tick(&mut t);
        let gz1 = b.relu_max_pool2d_backward(&z1, &gh1, 2).unwrap();
        tick(&mut t);
        let gx = b
            .conv2d_backward_input(&gz1, &w1, &[n, 1, 28, 28], p)
            .unwrap();
        tick(&mut t);
        if rep == 0 {
            // The hash of the first step's gradient: the same input every run.
            for v in gx.as_slice() {
                hash = (hash ^ v.to_bits() as u64).wrapping_mul(0x100000001b3);
            }
        }
        x = b.pgd_step_linf(&x, &x0, &gx, 0.01, 0.3).unwrap();
        tick(&mut t);
        if rep >= 3 {
            for (a, v) in tot.iter_mut().zip(&t) {
                *a += v;
            }
        }
    }
    let total: f64 = tot.iter().sum::<f64>() / reps as f64;
    println!(
        "# saddle PGD step, batch {n}, isa={isa}, {threads} thread(s), CPU time of the calling \
         thread, mean of {reps} steps"
    );
    println!("# input-gradient hash {hash:016x}");
    for (i, name) in OPS.iter().chain(TAIL.iter()).enumerate() {
        let ms = tot[i] / reps as f64 * 1e3;
        println!(
            "{name:<28} {ms:>8.3} ms {:>5.1}%",
            100.0 * ms / (total * 1e3)
        );
    }
    println!(
        "{:<28} {:>8.3} ms  ({:.0} images×steps/s of CPU time)",
        "total",
        total * 1e3,
        n as f64 / total
    );
}
