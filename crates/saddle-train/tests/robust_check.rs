//! The robustness check (`[robust_check]`, the guard against catastrophic overfitting): it
//! measures without changing training, its state survives a checkpoint, and a fall stops the
//! run with the best check's weights.

use saddle_data::Dataset;
use saddle_models::{Classifier, MnistNet};
use saddle_tensor::{cpu::Cpu, Backend};
use saddle_train::{
    CheckMetrics, Event, KeepWeights, RobustCheck, Schedule, StopReason, TrainConfig, TrainError,
    Trainer, TrainingMode,
};

mod common;
use common::synthetic;

/// PGD training of the smallest MNIST network at ε = 0.1, checked every 10 steps on 100 images.
fn config(steps: u64, check: bool) -> TrainConfig {
    TrainConfig {
        model_scale: 1,
        max_num_training_steps: steps,
        training_batch_size: 50,
        training: TrainingMode::Pgd,
        k: 3,
        a: 0.04,
        epsilon: 0.1,
        learning_rate: Schedule::Constant { value: 3e-3 },
        num_checkpoint_steps: 10,
        num_output_steps: 5,
        eval_batch_size: 40,
        robust_check: check.then_some(RobustCheck {
            every: 10,
            examples: 100,
            k: 5,
            max_drop: 0.2,
            min_ratio: 0.25,
            keep: KeepWeights::Last,
        }),
        ..TrainConfig::default()
    }
}

struct Run {
    trainer: Trainer<Cpu, MnistNet<Cpu>>,
    checks: Vec<CheckMetrics>,
    checkpoints: Vec<(u64, Vec<u8>)>,
    model: Option<Vec<u8>>,
}

fn run_from(mut trainer: Trainer<Cpu, MnistNet<Cpu>>, data: &Dataset) -> Run {
    let (mut checks, mut checkpoints, mut model) = (Vec::new(), Vec::new(), None);
    trainer
        .run(data, |e| {
            match e {
                Event::Check(c) => checks.push(c.clone()),
                Event::Checkpoint {
                    bytes,
                    step,
                    model: m,
                    ..
                } => {
                    checkpoints.push((step, bytes));
                    if m.is_some() {
                        model = m;
                    }
                }
                Event::Step(_) => {}
            }
            Ok(())
        })
        .unwrap();
    Run {
        trainer,
        checks,
        checkpoints,
        model,
    }
}

fn fresh(cfg: TrainConfig) -> Trainer<Cpu, MnistNet<Cpu>> {
    let model = MnistNet::new(Cpu::new(), cfg.model_scale, cfg.random_seed).unwrap();
    Trainer::new(model, cfg).unwrap()
}

fn weights(t: &Trainer<Cpu, MnistNet<Cpu>>) -> Vec<Vec<u32>> {
    let b = Cpu::new();
    t.model()
        .params()
        .tensors()
        .iter()
        .map(|x| b.to_vec(x).unwrap().iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn checks_measure_without_changing_training_and_survive_a_resume() {
    let data = synthetic(400, 1);
    let plain = run_from(fresh(config(40, false)), &data);
    let checked = run_from(fresh(config(40, true)), &data);
    assert!(plain.checks.is_empty());
    // The checks run the model in evaluation mode, from their own generator: training is the
    // same to the bit.
    assert_eq!(weights(&plain.trainer), weights(&checked.trainer));
    let steps: Vec<u64> = checked.checks.iter().map(|c| c.step).collect();
    assert_eq!(steps, [10, 20, 30, 40]);
    for c in &checked.checks {
        assert_eq!(c.examples, 100);
        assert!(!c.collapsed, "{c:?}");
        // Robust accuracy is at most natural accuracy only on average; on one set it is a
        // count of images, both in [0, 1].
        assert!((0.0..=1.0).contains(&c.natural_accuracy), "{c:?}");
        assert!((0.0..=1.0).contains(&c.pgd_accuracy), "{c:?}");
    }
    // The model learns and the check sees it: better than chance (10%) at the end.
    let end = checked.checks.last().unwrap();
    assert!(end.natural_accuracy > 0.5, "{end:?}");
    let best = checked
        .checks
        .iter()
        .map(|c| c.pgd_accuracy)
        .fold(0.0, f32::max);
    assert_eq!(end.best_pgd_accuracy, best);

    // Stopped at step 20 and resumed: the same checks from there and the same bytes at the
    // end, the best check's state included (it is in the checkpoint).
    let half = run_from(fresh(config(20, true)), &data);
    let (step, bytes) = half.checkpoints.last().unwrap();
    assert_eq!(*step, 20);
    let mut resumed = fresh(config(40, true));
    resumed.restore(bytes).unwrap();
    assert_eq!(
        resumed.best_check().map(|(s, _)| s),
        half.trainer.best_check().map(|(s, _)| s)
    );
    let resumed = run_from(resumed, &data);
    assert_eq!(resumed.checks[..], checked.checks[2..]);
    assert_eq!(
        resumed.checkpoints.last().unwrap().1,
        checked.checkpoints.last().unwrap().1,
        "the final checkpoints differ"
    );
}

#[test]
fn a_fall_stops_the_run_and_keeps_the_best_checks_weights() {
    let data = synthetic(400, 2);
    let first = run_from(fresh(config(20, true)), &data);
    let (best_step, best_model) = first.trainer.best_check().unwrap();
    let best_model = best_model.to_vec();
    let best = first
        .checks
        .iter()
        .find(|c| c.step == best_step)
        .unwrap()
        .clone();
    // A fall of more than 20 points must be possible from here: zeroed weights predict class
    // 0 everywhere (10% of this balanced set).
    assert!(best.pgd_accuracy > 0.35, "{best:?}");

    // Resume with 40 steps, but first wreck the model (what catastrophic overfitting does to
    // robustness, in one stroke): every weight zero, so the gradients are zero and so is
    // learning, and the check at step 30 sees 10%.
    let (_, bytes) = first.checkpoints.last().unwrap();
    let mut t = fresh(config(40, true));
    t.restore(bytes).unwrap();
    wreck(&mut t);
    let r = run_from(t, &data);
    assert_eq!(
        r.trainer.step(),
        30,
        "the run goes no further than the fall"
    );
    let fall = r.checks.last().unwrap();
    assert!(fall.collapsed, "{fall:?}");
    assert!(fall.pgd_accuracy < 0.15, "{fall:?}");
    assert_eq!(fall.best_step, best_step);
    let st = r.trainer.stopped().unwrap();
    assert_eq!((st.step, st.best_step), (30, best_step));
    // The model handed out is the best check's, byte for byte; the checkpoint is the step of
    // the fall and says it stopped.
    assert_eq!(r.model.as_deref(), Some(&best_model[..]));
    let (step, ckpt) = r.checkpoints.last().unwrap();
    assert_eq!(*step, 30);
    let mut again = fresh(config(40, true));
    again.restore(ckpt).unwrap();
    assert_eq!(again.stopped(), Some(st));
    let err = again.run(&data, |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, TrainError::Config(_)) && err.to_string().contains("stopped at step 30"),
        "{err}"
    );
}

/// Zeroes every weight (what catastrophic overfitting does to robustness, in one stroke): the
/// network then predicts one class everywhere, 10% of a balanced set.
fn wreck(t: &mut Trainer<Cpu, MnistNet<Cpu>>) {
    let b = Cpu::new();
    for x in t.model_mut().params_mut().tensors_mut() {
        *x = b.zeros(saddle_tensor::TensorLike::dims(x)).unwrap();
    }
}

/// `keep = "best"`: a run that no check stops hands out the best check's weights, not the last
/// step's. After step 20 the model is wrecked, with the drop rule off (`max_drop = 1`): the run
/// goes on to step 40 with its later checks at chance; with `keep = "best"` the model file is
/// the best check's (at most step 20), with `keep = "last"` the wreck.
#[test]
fn keep_best_hands_out_the_best_checks_weights() {
    let data = synthetic(400, 2);
    let with = |steps, keep| TrainConfig {
        robust_check: Some(RobustCheck {
            max_drop: 1.0,
            keep,
            ..config(steps, true).robust_check.unwrap()
        }),
        ..config(steps, true)
    };
    let first = run_from(fresh(with(20, KeepWeights::Best)), &data);
    let (best_step, best_model) = first.trainer.best_check().unwrap();
    let best_model = best_model.to_vec();
    let best = first.checks.iter().find(|c| c.step == best_step).unwrap();
    // The wrecked checks (about 10%) cannot match it.
    assert!(best.pgd_accuracy > 0.35, "{best:?}");
    let (_, bytes) = first.checkpoints.last().unwrap();
    let wrecked = |keep| {
        let mut t = fresh(with(40, keep));
        t.restore(bytes).unwrap();
        wreck(&mut t);
        run_from(t, &data)
    };

    let kept = wrecked(KeepWeights::Best);
    assert_eq!(kept.trainer.step(), 40, "the run goes to its end");
    assert!(kept.trainer.stopped().is_none());
    assert!(
        kept.checks.iter().all(|c| !c.collapsed),
        "{:?}",
        kept.checks
    );
    let end = kept.checks.last().unwrap();
    assert!(end.pgd_accuracy < 0.15, "{end:?}");
    assert_eq!(end.best_step, best_step);
    assert_eq!(kept.trainer.final_model_step(), best_step);
    assert_eq!(kept.model.as_deref(), Some(&best_model[..]));
    assert_eq!(kept.trainer.final_model().unwrap(), best_model);
    // From the final checkpoint alone (the CLI's path when a run was killed before its model
    // file): the same weights.
    let mut again = fresh(with(40, KeepWeights::Best));
    again.restore(&kept.checkpoints.last().unwrap().1).unwrap();
    assert_eq!(again.final_model_step(), best_step);
    assert_eq!(again.final_model().unwrap(), best_model);

    let last = wrecked(KeepWeights::Last);
    assert_eq!(last.trainer.step(), 40);
    assert_eq!(last.trainer.final_model_step(), 40);
    let wreck_model = last.trainer.model().to_safetensors().unwrap();
    assert_eq!(last.model.as_deref(), Some(&wreck_model[..]));
    assert_ne!(wreck_model, best_model);
}

#[test]
fn bad_check_settings_are_named() {
    for (rc, eps, want) in [
        (
            RobustCheck {
                every: 0,
                ..RobustCheck::default()
            },
            0.3,
            "robust_check.every",
        ),
        (
            RobustCheck {
                examples: 0,
                ..RobustCheck::default()
            },
            0.3,
            "robust_check.examples",
        ),
        (
            RobustCheck {
                k: 0,
                ..RobustCheck::default()
            },
            0.3,
            "robust_check.k",
        ),
        (
            RobustCheck {
                max_drop: f32::NAN,
                ..RobustCheck::default()
            },
            0.3,
            "robust_check.max_drop",
        ),
        (
            RobustCheck {
                min_ratio: f32::NAN,
                ..RobustCheck::default()
            },
            0.3,
            "robust_check.min_ratio",
        ),
        (
            RobustCheck {
                min_ratio: 1.0,
                ..RobustCheck::default()
            },
            0.3,
            "robust_check.min_ratio",
        ),
        (RobustCheck::default(), 0.0, "epsilon > 0"),
    ] {
        let cfg = TrainConfig {
            robust_check: Some(rc),
            epsilon: eps,
            ..TrainConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    // Written only when on (the CLI writes TOML through the same serde), read back with
    // defaults for what is left out.
    let off = serde_json::to_string(&TrainConfig::default()).unwrap();
    assert!(!off.contains("robust_check"), "{off}");
    let on: TrainConfig = serde_json::from_str(r#"{"robust_check": {"every": 250}}"#).unwrap();
    assert_eq!(
        on.robust_check,
        Some(RobustCheck {
            every: 250,
            ..RobustCheck::default()
        })
    );
    // `keep` is written only when it is not the default, and only its two names are read.
    assert!(!serde_json::to_string(&on).unwrap().contains("keep"));
    let best: TrainConfig = serde_json::from_str(r#"{"robust_check": {"keep": "best"}}"#).unwrap();
    assert_eq!(best.robust_check.as_ref().unwrap().keep, KeepWeights::Best);
    assert!(serde_json::to_string(&best)
        .unwrap()
        .contains(r#""keep":"best""#));
    let e = serde_json::from_str::<TrainConfig>(r#"{"robust_check": {"keep": "first"}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("first") && e.contains("best"), "{e}");
}

/// The ratio rule: a check of one-step training whose PGD accuracy is below `min_ratio` of its
/// natural accuracy (natural at least twice chance) stops the run, though no check fell from a
/// better one. Catastrophic overfitting cannot be made to happen on demand in a test, so the
/// rule is made to fire by its threshold: at 0.99 every check of a model that is not perfectly
/// robust is "collapsed" once it has learnt; the same run with the rule off, or with multi-step
/// training, goes to the end.
#[test]
fn a_one_step_run_whose_robustness_trails_its_accuracy_stops() {
    let data = synthetic(400, 3);
    let with = |training, min_ratio| TrainConfig {
        training,
        k: if training == TrainingMode::Pgd { 3 } else { 1 },
        a: if training == TrainingMode::Pgd {
            0.04
        } else {
            0.125
        },
        robust_check: Some(RobustCheck {
            min_ratio,
            ..config(40, true).robust_check.unwrap()
        }),
        ..config(40, true)
    };
    let off = run_from(fresh(with(TrainingMode::FastFgsm, 0.0)), &data);
    assert_eq!(off.trainer.step(), 40);
    assert!(off.checks.iter().all(|c| !c.collapsed), "{:?}", off.checks);
    // Where the rule at 0.99 must fire: the first check that has learnt (natural ≥ 20%) and is
    // not perfectly robust.
    let first = off
        .checks
        .iter()
        .find(|c| c.natural_accuracy >= 0.2 && c.pgd_accuracy < 0.99 * c.natural_accuracy)
        .expect("a check that has learnt and is attackable")
        .clone();

    let on = run_from(fresh(with(TrainingMode::FastFgsm, 0.99)), &data);
    assert_eq!(on.trainer.step(), first.step, "{:?}", on.checks);
    let last = on.checks.last().unwrap();
    assert!(last.collapsed, "{last:?}");
    // Up to the stop, the runs are the same (the rule only reads the checks).
    assert_eq!(
        (last.natural_accuracy, last.pgd_accuracy),
        (first.natural_accuracy, first.pgd_accuracy)
    );
    let st = on.trainer.stopped().unwrap().clone();
    assert_eq!(st.reason, StopReason::Ratio);
    assert_eq!(
        (st.step, st.natural_accuracy, st.pgd_accuracy),
        (first.step, first.natural_accuracy, first.pgd_accuracy)
    );
    assert!(st.describe().contains("min_ratio"), "{}", st.describe());
    // The model handed out is the best check's; the checkpoint keeps the reason.
    let (_, best_model) = on.trainer.best_check().unwrap();
    assert_eq!(on.model.as_deref(), Some(best_model));
    let mut again = fresh(with(TrainingMode::FastFgsm, 0.99));
    again.restore(&on.checkpoints.last().unwrap().1).unwrap();
    assert_eq!(again.stopped(), Some(&st));

    // Multi-step training is not held to the ratio.
    let pgd = run_from(fresh(with(TrainingMode::Pgd, 0.99)), &data);
    assert_eq!(pgd.trainer.step(), 40);
    assert!(pgd
        .checks
        .iter()
        .any(|c| c.natural_accuracy >= 0.2 && c.pgd_accuracy < 0.99 * c.natural_accuracy));
    assert!(pgd.checks.iter().all(|c| !c.collapsed), "{:?}", pgd.checks);
}

/// A checkpoint written before the ratio rule existed (its `stopped` record without `reason`
/// and `natural_accuracy`) reads as a stop by the drop rule.
#[test]
fn an_older_stop_record_reads_as_a_drop() {
    let old = r#"{"step":30,"pgd_accuracy":0.1,"best_step":20,"best_pgd_accuracy":0.4}"#;
    let st: saddle_train::Stopped = serde_json::from_str(old).unwrap();
    assert_eq!(st.reason, StopReason::Drop);
    assert!(st.describe().contains("fell to 10.0%"), "{}", st.describe());
}
