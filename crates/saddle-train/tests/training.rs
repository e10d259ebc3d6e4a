//! Training loops on small data: learning happens, adversarial training buys robustness,
//! resume is bit-identical, a non-finite loss stops cleanly.

use saddle_attacks::{Attack, Pgd};
use saddle_data::{Dataset, Split};
use saddle_models::{Classifier, MnistNet};
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};
use saddle_train::{
    accuracy, Augmentation, Event, Schedule, TrainConfig, TrainError, Trainer, TrainingMode,
};

mod common;
use common::synthetic;

fn small(mode: TrainingMode, steps: u64) -> TrainConfig {
    TrainConfig {
        model_scale: 1,
        max_num_training_steps: steps,
        training_batch_size: 50,
        training: mode,
        k: 5,
        a: 0.05,
        epsilon: 0.3,
        learning_rate: Schedule::Constant { value: 3e-3 },
        num_checkpoint_steps: 0,
        num_output_steps: 10,
        ..TrainConfig::default()
    }
}

fn eval_accuracy(model: &MnistNet<Cpu>, data: &Dataset) -> f32 {
    let b = Cpu::new();
    let idx: Vec<usize> = (0..data.len()).collect();
    let (xs, ys) = data.batch(&idx).unwrap();
    let x = b.from_vec(&data.batch_shape(idx.len()), xs).unwrap();
    let z = b.to_vec(&model.logits(&x).unwrap()).unwrap();
    accuracy(&z, &ys, 10)
}

fn train(cfg: TrainConfig, data: &Dataset) -> Trainer<Cpu, MnistNet<Cpu>> {
    let model = MnistNet::new(Cpu::new(), cfg.model_scale, cfg.random_seed).unwrap();
    let mut t = Trainer::new(model, cfg).unwrap();
    t.run(data, |_| Ok(())).unwrap();
    t
}

#[test]
fn natural_training_clearly_learns() {
    // Chance is 10%; 150 steps of Adam on this easy problem reach >95% on held-out examples.
    let train_set = synthetic(1000, 1);
    let test_set = synthetic(300, 2);
    let untrained = MnistNet::new(Cpu::new(), 1, TrainConfig::default().random_seed).unwrap();
    let before = eval_accuracy(&untrained, &test_set);
    let t = train(small(TrainingMode::Natural, 150), &train_set);
    let after = eval_accuracy(t.model(), &test_set);
    println!("held-out accuracy: before {before:.3}, after {after:.3}");
    assert!(
        after > 0.95,
        "natural training reached only {after:.3} (before: {before:.3})"
    );
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    for (mode, augment) in [
        (TrainingMode::Pgd, Augmentation::None),
        (TrainingMode::FastFgsm, Augmentation::None),
        (TrainingMode::Natural, Augmentation::None),
        (TrainingMode::Pgd, Augmentation::CropFlip),
        (TrainingMode::Trades, Augmentation::None),
        (TrainingMode::NFgsm, Augmentation::None),
    ] {
        let cfg = |steps| TrainConfig {
            augment,
            ..small(mode, steps)
        };
        let data = synthetic(300, 3);
        let full = train(cfg(20), &data);

        // 10 steps, checkpoint, new process-like trainer from the bytes, 10 more.
        let first = train(cfg(10), &data);
        let bytes = first.checkpoint().unwrap();
        let fresh = MnistNet::new(Cpu::new(), 1, 999).unwrap(); // different init: must be overwritten
        let mut resumed = Trainer::new(fresh, cfg(20)).unwrap();
        let saved = resumed.restore(&bytes).unwrap();
        assert_eq!(saved, cfg(10));
        assert_eq!(resumed.step(), 10);
        resumed.run(&data, |_| Ok(())).unwrap();

        let b = Cpu::new();
        for ((name, a), r) in full
            .model()
            .params()
            .iter()
            .zip(resumed.model().params().tensors())
        {
            let (va, vr) = (b.to_vec(a).unwrap(), b.to_vec(r).unwrap());
            let same = va.iter().zip(&vr).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{mode:?}, {augment:?}: {name} differs after resume");
        }
    }
}

#[test]
fn a_non_finite_loss_stops_training_before_the_update() {
    let data = synthetic(100, 4);
    let cfg = small(TrainingMode::Natural, 50);
    let mut model = MnistNet::new(Cpu::new(), 1, 5).unwrap();
    // Poison the last layer's bias: every logit becomes +inf − … = NaN in the loss.
    let b = Cpu::new();
    let nb = b.full(&[10], f32::INFINITY).unwrap();
    *model.params_mut().tensors_mut().last_mut().unwrap() = nb;
    let before: Vec<Vec<f32>> = model
        .params()
        .tensors()
        .iter()
        .map(|t| b.to_vec(t).unwrap())
        .collect();
    let mut t = Trainer::new(model, cfg).unwrap();
    let mut checkpoints = 0;
    let err = t
        .run(&data, |e| {
            if let Event::Checkpoint { .. } = e {
                checkpoints += 1;
            }
            Ok(())
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                step: 1,
                last_good: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("step 1"), "{err}");
    assert_eq!(checkpoints, 0);
    let after: Vec<Vec<f32>> = t
        .model()
        .params()
        .tensors()
        .iter()
        .map(|t| b.to_vec(t).unwrap())
        .collect();
    for (x, y) in before.iter().zip(&after) {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "the model changed"
        );
    }
}

/// The MNIST training subset, or a failure saying how to get it (unless explicitly skipped).
fn mnist_subset(n: usize) -> Option<(Dataset, Dataset)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist");
    let root = std::env::var_os("SADDLE_DATASETS")
        .map(|d| std::path::PathBuf::from(d).join("mnist"))
        .unwrap_or(root);
    match (
        saddle_data::mnist::load(&root, Split::Train),
        saddle_data::mnist::load(&root, Split::Test),
    ) {
        (Ok(tr), Ok(te)) => Some((tr.subset_first(n), te.subset_first(300))),
        (Err(e), _) | (_, Err(e)) => {
            if std::env::var("SADDLE_SKIP_REAL_DATA").as_deref() == Ok("1") {
                eprintln!("SKIPPED (SADDLE_SKIP_REAL_DATA=1): MNIST not available: {e}");
                None
            } else {
                panic!("MNIST is needed: {e}. Run `cargo xtask download mnist`, or set SADDLE_SKIP_REAL_DATA=1 to skip this test explicitly");
            }
        }
    }
}

#[test]
fn adversarial_training_beats_natural_training_under_pgd_on_mnist() {
    let Some((train_set, test_set)) = mnist_subset(3000) else {
        return;
    };
    let mut cfg = small(TrainingMode::Natural, 240);
    cfg.model_scale = 2;
    cfg.learning_rate = Schedule::Constant { value: 2e-3 };
    let natural = train(cfg.clone(), &train_set);
    cfg.training = TrainingMode::Pgd;
    cfg.k = 7;
    cfg.a = 0.05;
    cfg.epsilon = 0.2;
    cfg.epsilon_ramp_steps = 60;
    let robust = train(cfg.clone(), &train_set);
    cfg.training = TrainingMode::Trades;
    let trades = train(cfg, &train_set);

    let b = Cpu::new();
    let idx: Vec<usize> = (0..test_set.len()).collect();
    let (xs, ys) = test_set.batch(&idx).unwrap();
    let x = b.from_vec(&test_set.batch_shape(idx.len()), xs).unwrap();
    let y = b.from_vec(&[idx.len()], ys.clone()).unwrap();
    let attack = Pgd::linf(0.2, 0.02, 20).unwrap().random_start(true).seed(7);
    let robust_acc = |m: &mut MnistNet<Cpu>| {
        let r = attack.perturb(m, &x, &y).unwrap();
        1.0 - r.success.iter().filter(|&&s| s).count() as f32 / r.success.len() as f32
    };
    let (mut nat_m, mut rob_m) = (natural.into_model(), robust.into_model());
    let mut trades_m = trades.into_model();
    let nat_clean = eval_accuracy(&nat_m, &test_set);
    let rob_clean = eval_accuracy(&rob_m, &test_set);
    let trades_clean = eval_accuracy(&trades_m, &test_set);
    let nat_pgd = robust_acc(&mut nat_m);
    let rob_pgd = robust_acc(&mut rob_m);
    let trades_pgd = robust_acc(&mut trades_m);
    println!("natural training: clean {nat_clean:.3}, PGD-20 {nat_pgd:.3}; PGD training: clean {rob_clean:.3}, PGD-20 {rob_pgd:.3}; TRADES (β = 6): clean {trades_clean:.3}, PGD-20 {trades_pgd:.3}");
    assert!(
        trades_clean > 0.5 && trades_pgd > nat_pgd + 0.2,
        "TRADES training should learn and be clearly more robust than natural training: clean \
         {trades_clean:.3}, PGD-20 {trades_pgd:.3} vs natural {nat_pgd:.3}"
    );
    assert!(
        nat_clean > 0.8,
        "natural training should learn MNIST ({nat_clean:.3})"
    );
    assert!(
        rob_pgd > nat_pgd + 0.2,
        "PGD training should be clearly more robust: {rob_pgd:.3} vs {nat_pgd:.3}"
    );
}

/// `augment = "crop-flip"` changes what the model trains on (same batches, same seeds: only
/// the crops and flips differ), and its config key reads and writes as in the TOML files.
#[test]
fn crop_flip_augmentation_is_applied() {
    let data = synthetic(300, 3);
    let plain = train(small(TrainingMode::Natural, 3), &data);
    let cfg = TrainConfig {
        augment: Augmentation::CropFlip,
        ..small(TrainingMode::Natural, 3)
    };
    let augmented = train(cfg.clone(), &data);
    let b = Cpu::new();
    let w = |t: &Trainer<Cpu, MnistNet<Cpu>>| b.to_vec(&t.model().params().tensors()[0]).unwrap();
    assert_ne!(w(&plain), w(&augmented), "the augmentation changed nothing");
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains(r#""augment":"crop-flip""#), "{json}");
    let back: TrainConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
}

/// A batch-norm network (`wrn-10-1`) under PGD training with SGD and weight decay: each step's
/// training forward moves the running statistics once — the attack's 3 forward passes run in
/// evaluation mode and move nothing — so `num_batches_tracked` counts the steps; the first
/// step's running mean is 0.1 × the batch mean (momentum 0.1 from 0), not 0; the checkpoint
/// carries the state, and a trainer restored from it continues bit-identically.
#[test]
fn a_batch_norm_network_trains_with_its_running_statistics() {
    use saddle_models::Model;
    let b = Cpu::new();
    let cfg = TrainConfig {
        arch: "wrn-10-1".into(),
        training: TrainingMode::Pgd,
        k: 3,
        a: 2.0 / 255.0,
        epsilon: 8.0 / 255.0,
        epsilon_ramp_steps: 0,
        optimizer: saddle_train::OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
        },
        learning_rate: Schedule::Constant { value: 0.05 },
        training_batch_size: 4,
        max_num_training_steps: 3,
        ..TrainConfig::default()
    };
    let mut r = Rng::new(1);
    let xs: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| r.next_f32()).collect();
    let x = b.from_vec(&[4, 3, 32, 32], xs).unwrap();
    let y = b.from_vec(&[4], vec![0.0, 3.0, 5.0, 9.0]).unwrap();
    let model = || Model::build(&cfg.arch().unwrap(), b, cfg.random_seed).unwrap();
    let mut t = Trainer::new(model(), cfg.clone()).unwrap();
    let count = |t: &Trainer<Cpu, Model<Cpu>>, name: &str| {
        let p = t.model().params();
        b.to_vec(&p.tensors()[p.index_of(name).unwrap()]).unwrap()
    };
    t.train_step(&x, &y, true).unwrap();
    assert_eq!(count(&t, "bn1.num_batches_tracked"), [1.0]);
    assert_eq!(count(&t, "block1.layer.0.bn1.num_batches_tracked"), [1.0]);
    // The first batch norm sees conv1's output; its running mean is 0.1 × that batch's mean,
    // which is not 0 for these positive images.
    let rm = count(&t, "block1.layer.0.bn1.running_mean");
    assert!(
        rm.iter().any(|v| v.abs() > 1e-6),
        "the running mean did not move: {rm:?}"
    );
    t.train_step(&x, &y, false).unwrap();
    assert_eq!(count(&t, "bn1.num_batches_tracked"), [2.0]);
    // Crafting in training mode (MadryLab's choice) moves the statistics no more often, and
    // crafts other examples than evaluation mode does.
    let train_mode = TrainConfig {
        attack_bn_mode: saddle_train::BnMode::Train,
        ..cfg.clone()
    };
    let mut u = Trainer::new(model(), train_mode).unwrap();
    let mut v = Trainer::new(model(), cfg.clone()).unwrap();
    u.train_step(&x, &y, false).unwrap();
    v.train_step(&x, &y, false).unwrap();
    assert_eq!(count(&u, "bn1.num_batches_tracked"), [1.0]);
    assert_ne!(
        count(&u, "fc.weight"),
        count(&v, "fc.weight"),
        "batch norm's mode during the attack changed nothing"
    );

    let ckpt = t.checkpoint().unwrap();
    let mut resumed = Trainer::new(model(), cfg.clone()).unwrap();
    resumed.restore(&ckpt).unwrap();
    assert_eq!(count(&resumed, "bn1.num_batches_tracked"), [2.0]);
    t.train_step(&x, &y, false).unwrap();
    resumed.train_step(&x, &y, false).unwrap();
    let (p, q) = (t.model().params(), resumed.model().params());
    for ((name, a), c) in p.iter().zip(q.tensors()) {
        assert_eq!(
            b.to_vec(a).unwrap(),
            b.to_vec(c).unwrap(),
            "{name} differs after resume"
        );
    }
}

/// TRADES' loss is `CE(f(x), y) + β·KL(f(x) ‖ f(x'))`: with β = 0 only the clean cross-entropy
/// is left, so a step equals a natural-training step bit for bit (the adversarial pass adds
/// exact zeros to every gradient); with β > 0 the robust term moves the weights elsewhere.
#[test]
fn trades_is_clean_cross_entropy_plus_beta_times_kl() {
    let data = synthetic(100, 4);
    let b = Cpu::new();
    let weights = |t: &Trainer<Cpu, MnistNet<Cpu>>| {
        t.model()
            .params()
            .tensors()
            .iter()
            .flat_map(|x| b.to_vec(x).unwrap())
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    let natural = train(small(TrainingMode::Natural, 2), &data);
    let beta0 = train(
        TrainConfig {
            trades_beta: 0.0,
            ..small(TrainingMode::Trades, 2)
        },
        &data,
    );
    let beta6 = train(small(TrainingMode::Trades, 2), &data);
    assert_eq!(
        weights(&natural),
        weights(&beta0),
        "TRADES with β = 0 is not natural training"
    );
    assert_ne!(
        weights(&natural),
        weights(&beta6),
        "TRADES' robust term changed nothing"
    );
    let bad = TrainConfig {
        trades_beta: -1.0,
        ..small(TrainingMode::Trades, 2)
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("trades_beta"));
}
