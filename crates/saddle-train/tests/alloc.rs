//! Heap allocations of the shipped `Trainer::train_step`, counted by a global allocator.
//!
//! A training step runs the attack (PGD-`k`), one training forward and backward pass and the
//! optimiser update. The claim under test: once warm, **the attack's steps allocate nothing**,
//! so a step training against PGD-40 allocates exactly as much as one against PGD-10; what a
//! training step allocates regardless of `k` is measured and held to its count
//! ([`PER_STEP`]), so a new allocation anywhere in the step fails this test (raise the count
//! only knowingly).
//!
//! Counting is per thread: only the thread that runs the measured code counts, so the test
//! harness's other threads do not disturb it. The trainer runs inside a one-thread rayon pool
//! (`install`), so the CPU backend's parallel loops run on that same thread and are counted.
//!
//! `SADDLE_ALLOC_TRACE=1 cargo test -p saddle-train --test alloc -- --nocapture` prints a
//! backtrace summary of every allocation of one warm step: where each one comes from.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use saddle_models::MnistNet;
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};
use saddle_train::{Schedule, TrainConfig, Trainer, TrainingMode};

/// Allocations of one warm `Trainer::train_step` (PGD training, Adam, MNIST network at scale 1,
/// batch 8, natural accuracy not measured), whatever the attack's number of steps, measured
/// with `SADDLE_ALLOC_TRACE=1` (53,232 bytes at batch 8, nearly all the attack's two host
/// copies of the batch):
///
/// - 12 in the attack, `Pgd::perturb` (listed in saddle-attacks' `tests/alloc.rs`: checking
///   the batch 4, the NaN check's scratch 1, the random start 2, the early-stop flags 1, the
///   result 4); none in its steps;
/// - 1 the labels read back (`train_step`: `to_vec(y)`);
/// - 1 the list of forward passes (`gradients`: `Vec::with_capacity(2)`);
/// - 2 the loss and the adversarial logits read back (`gradients`: `to_vec`);
/// - 2 the list of parameter gradients (`gradients`: `Vec::new()` then `push`, growing to 4
///   and then 8 entries for the network's 8 parameters);
/// - 1 the predictions for the reported accuracy (`accuracy` → `argmax_rows`).
///
/// The forward and backward passes (the graph's node and gradient vectors are recycled) and the
/// Adam update allocate nothing. The state snapshot taken for a non-finite loss is empty for
/// this network (no batch norm); with batch norm it holds one entry per running statistic.
const PER_STEP: u64 = 19;

/// Extra allocations when the step also measures the clean batch's accuracy: the clean logits
/// read back and their predictions.
const NATURAL_EXTRA: u64 = 2;

// ---- the counting allocator -------------------------------------------------------------------

/// The system allocator, counting the allocations (and reallocations) of threads that turned
/// counting on.
struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    static TRACE: Cell<bool> = const { Cell::new(false) };
    /// Set while the allocator itself allocates (capturing a backtrace): not counted.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    static TRACES: RefCell<Vec<Backtrace>> = const { RefCell::new(Vec::new()) };
}

fn note(size: usize) {
    // `try_with`: an allocation during thread teardown is not counted (and must not panic).
    let _ = ON.try_with(|on| {
        if !on.get() || IN_HOOK.get() {
            return;
        }
        COUNT.set(COUNT.get() + 1);
        BYTES.set(BYTES.get() + size as u64);
        if TRACE.get() {
            IN_HOOK.set(true);
            let bt = Backtrace::force_capture();
            TRACES.with_borrow_mut(|t| t.push(bt));
            IN_HOOK.set(false);
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the counting touches only `const`-initialised thread-locals (no allocation, no destructor)
// except while tracing, where the nested allocations are excluded by `IN_HOOK`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting on for this thread; returns `(allocations, bytes, f's result)`. The
/// result is dropped by the caller, outside the count (a deallocation is never counted anyway).
fn counted<R>(f: impl FnOnce() -> R) -> (u64, u64, R) {
    COUNT.set(0);
    BYTES.set(0);
    ON.set(true);
    let r = f();
    ON.set(false);
    (COUNT.get(), BYTES.get(), r)
}

/// Runs `f` with backtraces captured for each allocation, and summarises them: for each
/// distinct chain of this workspace's frames (innermost first, at most 4), how many
/// allocations it made.
fn traced<R>(f: impl FnOnce() -> R) -> (String, R) {
    TRACE.set(true);
    let (n, _, r) = counted(f);
    TRACE.set(false);
    let traces = TRACES.take();
    let mut sites: BTreeMap<String, u64> = BTreeMap::new();
    for bt in &traces {
        let text = bt.to_string();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut chain = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            // A frame line is `N: symbol`, followed by `at path:line:col`; keep this
            // workspace's library frames (symbols may be printed without their paths).
            let Some((_, sym)) = l.split_once(": ") else {
                continue;
            };
            let Some(at) = lines.get(i + 1).and_then(|a| a.strip_prefix("at ")) else {
                continue;
            };
            // Paths are absolute, relative to the workspace (`crates/…`) or, for this
            // package, to the package (`src/…`).
            let rel = if let Some((_, r)) = at.split_once("crates/saddle-") {
                format!("saddle-{r}")
            } else if let Some(r) = at.strip_prefix("src/").or(at.strip_prefix("./src/")) {
                format!("{}/src/{r}", env!("CARGO_PKG_NAME"))
            } else {
                continue;
            };
            let sym = sym.split('<').next().unwrap_or(sym);
            chain.push(format!("{sym} ({rel})"));
            if chain.len() == 4 {
                break;
            }
        }
        *sites.entry(chain.join("\n      <- ")).or_default() += 1;
    }
    let mut out = format!("{n} allocations:\n");
    let mut v: Vec<_> = sites.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (site, k) in v {
        out.push_str(&format!("  {k:>4} × {site}\n"));
    }
    (out, r)
}

// ---- the test -----------------------------------------------------------------------------------

fn trainer(k: usize) -> Trainer<Cpu, MnistNet<Cpu>> {
    let config = TrainConfig {
        model_scale: 1,
        training_batch_size: 8,
        training: TrainingMode::Pgd,
        k,
        a: 0.01,
        epsilon: 0.3,
        learning_rate: Schedule::Constant { value: 1e-3 },
        ..TrainConfig::default()
    };
    Trainer::new(MnistNet::new(Cpu::new(), 1, 3).unwrap(), config).unwrap()
}

/// Training steps against PGD-10 and PGD-40 allocate the same number of times (so an attack
/// step allocates nothing), the same on every warm step, and no more than [`PER_STEP`].
#[test]
fn pgd_training_steps_allocate_the_same() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        let b = Cpu::new();
        let n = 8;
        let mut rng = Rng::new(7);
        let x = b
            .from_vec(
                &[n, 1, 28, 28],
                (0..n * 784).map(|_| rng.next_f32()).collect(),
            )
            .unwrap();
        let y = b
            .from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())
            .unwrap();
        let mut t10 = trainer(10);
        let mut t40 = trainer(40);
        // Warm-up: the backend's buffer pool, the graph's spare vectors and the optimiser's
        // state fill up.
        for _ in 0..2 {
            t40.train_step(&x, &y, false).unwrap();
            t10.train_step(&x, &y, false).unwrap();
        }
        let mut counts = Vec::new();
        for round in 0..6 {
            let (k, t) = if round % 2 == 0 {
                (10, &mut t10)
            } else {
                (40, &mut t40)
            };
            let (a, bytes, m) = counted(|| t.train_step(&x, &y, false).unwrap());
            assert!(m.loss.is_finite());
            counts.push((k, a, bytes));
        }
        let (natural, _, _) = counted(|| t10.train_step(&x, &y, true).unwrap());
        eprintln!(
            "(attack steps, allocations, bytes) per warm training step: {counts:?}; with the \
             natural accuracy measured too: {natural} allocations"
        );
        if std::env::var_os("SADDLE_ALLOC_TRACE").is_some() {
            for (k, t) in [(10, &mut t10), (40, &mut t40)] {
                let (report, _) = traced(|| t.train_step(&x, &y, false).unwrap());
                eprintln!("a warm training step against PGD-{k} makes {report}");
            }
        }
        // The fewest allocations of three steps per attack length: now and then an allocation
        // that is not the trainer's lands in a step (a test running beside this one grows
        // rayon's or the allocator's shared structures), never in the minimum. An attack step
        // that allocates adds at least 30 at PGD-40 to every training step.
        let least = |k: usize| {
            counts
                .iter()
                .filter(|c| c.0 == k)
                .map(|c| c.1)
                .min()
                .unwrap()
        };
        let (a10, a40) = (least(10), least(40));
        assert_eq!(
            a10, a40,
            "an attack step allocates: allocations per training step by attack steps {counts:?}"
        );
        assert!(
            natural <= a10 + NATURAL_EXTRA,
            "measuring the natural accuracy costs {natural} − {a10} allocations, more than \
             {NATURAL_EXTRA}"
        );
        assert!(
            a10 <= PER_STEP,
            "Trainer::train_step allocates {a10} times per warm step, more than the {PER_STEP} \
             measured: run with SADDLE_ALLOC_TRACE=1 -- --nocapture to see where"
        );
    });
}

/// The counter counts this thread's allocations, and those of rayon jobs run inside a
/// one-thread pool, and nothing while it is off. (saddle-attacks' `tests/alloc.rs` also shows
/// the PGD comparison failing on an attack that does allocate per step.)
#[test]
fn the_counter_counts() {
    let (a, bytes, v) = counted(|| (Vec::<u64>::with_capacity(3), Box::new(1u8)));
    drop(v);
    assert_eq!((a, bytes), (2, 25));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (a, _, v) = pool.install(|| counted(|| rayon::join(|| vec![1u8; 10], || vec![2u8; 10])));
    drop(v);
    assert!(a >= 2, "{a}");
    let before = COUNT.get();
    let v = vec![0u8; 5];
    assert_eq!(COUNT.get(), before, "counted while off");
    drop(v);
}
