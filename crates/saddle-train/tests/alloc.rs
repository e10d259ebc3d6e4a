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

use saddle_models::MnistNet;
use saddle_tensor::alloc_count::{count, counted, fewest, traced, Counting};
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

// ---- the counting allocator (saddle-tensor's, `testing` feature) ---------------------------

#[global_allocator]
static GLOBAL: Counting = Counting;

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
                let (report, _) = traced("saddle-train", || t.train_step(&x, &y, false).unwrap());
                eprintln!("a warm training step against PGD-{k} makes {report}");
            }
        }
        // The fewest allocations of three steps per attack length: now and then an allocation
        // that is not the trainer's lands in a step (a test running beside this one grows
        // rayon's or the allocator's shared structures), never in the minimum. An attack step
        // that allocates adds at least 30 at PGD-40 to every training step.
        let (a10, a40) = (fewest(&counts, 10), fewest(&counts, 40));
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
    let before = count();
    let v = vec![0u8; 5];
    assert_eq!(count(), before, "counted while off");
    drop(v);
}
