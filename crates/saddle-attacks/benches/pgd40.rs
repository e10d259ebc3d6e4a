//! PGD-40 (the paper's MNIST attack: ε = 0.3, 40 steps of 0.01, random start) on the paper's
//! MNIST network (scale 16) at batch 50, CPU backend.
//!
//! Run: `cargo bench -p saddle-attacks --bench pgd40` (2 threads unless `SADDLE_THREADS` says
//! otherwise; `SADDLE_BENCH_REPS` repetitions, default 5). Prints the median time per attack,
//! images × steps per second, and — from a counting global allocator — the heap allocations and
//! bytes per PGD step in steady state, measured as the difference between a 40-step and a
//! 20-step attack divided by 20 (which cancels the per-attack setup).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use saddle_attacks::{Attack, Linf, Pgd, ThreatModel};
use saddle_models::{loss_and_input_grad, Loss, MnistNet};
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};

/// The system allocator, counting allocations (including reallocations) and bytes requested.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counters() -> (u64, u64) {
    (ALLOCS.load(Relaxed), BYTES.load(Relaxed))
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let threads = env("SADDLE_THREADS", 2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let reps = env("SADDLE_BENCH_REPS", 5).max(1);
    let (n, steps) = (50usize, 40usize);

    let b = Cpu::new();
    let mut net = MnistNet::paper(b, 1).unwrap();
    let mut rng = Rng::new(2);
    let x = b
        .from_vec(
            &[n, 1, 28, 28],
            (0..n * 784).map(|_| rng.next_f32()).collect(),
        )
        .unwrap();
    let y = b
        .from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())
        .unwrap();
    let pgd40 = Pgd::mnist();
    let pgd20 = Pgd::linf(0.3, 0.01, 20).unwrap();
    println!("# saddle PGD-40 (ε 0.3, α 0.01, random start), MNIST network scale 16, batch {n}");
    println!("# CPU backend, {threads} threads, median of {reps}");

    // Time: the attack, and one bare forward + input-gradient pass of the model for comparison.
    pgd40.perturb(&mut net, &x, &y).unwrap(); // warm-up
    let t = median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                pgd40.perturb(&mut net, &x, &y).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let tg = median(
        (0..4 * reps)
            .map(|_| {
                let t = Instant::now();
                loss_and_input_grad(&net, &x, &y, Loss::CrossEntropy).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    );
    println!(
        "pgd40 batch={n}: {t:.3} s per attack ({:.1} ms per step; a bare gradient pass takes \
         {:.1} ms), {:.0} images*steps/s",
        t * 1e3 / steps as f64,
        tg * 1e3,
        (n * steps) as f64 / t
    );

    // Allocations: per steady-state step = (PGD-40 − PGD-20) / 20, then its parts measured
    // directly (the gradient pass varies by a few allocations with rayon's task splitting).
    let count = |f: &mut dyn FnMut()| {
        let (a0, b0) = counters();
        f();
        let (a1, b1) = counters();
        ((a1 - a0) as f64, (b1 - b0) as f64)
    };
    let (a40, b40) = count(&mut || drop(pgd40.perturb(&mut net, &x, &y).unwrap()));
    let (a20, b20) = count(&mut || drop(pgd20.perturb(&mut net, &x, &y).unwrap()));
    let grads: Vec<(f64, f64)> = (0..5)
        .map(|_| {
            count(&mut || drop(loss_and_input_grad(&net, &x, &y, Loss::CrossEntropy).unwrap()))
        })
        .collect();
    let ga = median(grads.iter().map(|g| g.0).collect());
    let gb = median(grads.iter().map(|g| g.1).collect());
    let g = loss_and_input_grad(&net, &x, &y, Loss::CrossEntropy)
        .unwrap()
        .1;
    let linf = Linf::new(0.3).unwrap();
    let (sa, sb) = count(&mut || drop(linf.step_and_project(&b, &x, &x, &g, 0.01).unwrap()));
    println!(
        "allocations per steady-state step: {:.1} ({:.2} MB); of which the model's \
         loss_and_input_grad {ga:.0} ({:.2} MB), the fused L∞ step {sa:.0} ({:.3} MB), the rest \
         of the loop (NaN check of the gradient) {:.1}",
        (a40 - a20) / 20.0,
        (b40 - b20) / 20.0 / 1e6,
        gb / 1e6,
        sb / 1e6,
        (a40 - a20) / 20.0 - ga - sa
    );
}
