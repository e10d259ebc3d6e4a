//! Behaviour of the attacks: evaluation mode and its restoration, typed errors, targeted and
//! least-likely modes, early stop, the loss trace, restarts, transfer, and the tiny MNIST net.

mod common;

use common::{batch, Mlp};
use saddle_attacks::{
    predict, transfer, Attack, AttackError, Fgsm, Linf, Loss, Pgd, Targeting, ThreatModel, CW_PLUS,
    L2,
};
use saddle_models::{Classifier, MnistNet};
use saddle_tensor::{cpu::Cpu, Backend};

const SHAPE: [usize; 3] = [1, 4, 4];

fn setup(
    n: usize,
    seed: u64,
) -> (
    Mlp,
    saddle_tensor::cpu::CpuTensor,
    saddle_tensor::cpu::CpuTensor,
) {
    let net = Mlp::new(SHAPE, 16, 4, 3.0, seed);
    let (x, y) = batch(&Cpu::new(), n, SHAPE, 4, seed + 1);
    (net, x, y)
}

#[test]
fn the_model_runs_in_eval_mode_and_gets_its_mode_back() {
    let (mut net, x, y) = setup(3, 1);
    net.set_training(true);
    let res = Pgd::linf(0.3, 0.05, 5)
        .unwrap()
        .restarts(2)
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert!(net.forwards.get() > 0);
    assert_eq!(
        net.training_forwards.get(),
        0,
        "a forward pass ran in training mode"
    );
    assert!(net.is_training(), "training mode was not restored");
    assert_eq!(res.len(), 3);

    net.set_training(false);
    Fgsm::mnist().perturb(&mut net, &x, &y).unwrap();
    assert!(!net.is_training());
}

/// Asked to (for crafting training examples), PGD and FGSM run every forward pass in training
/// mode, and still give the caller's mode back.
#[test]
fn an_attack_asked_for_training_mode_runs_in_it_and_restores_the_mode() {
    let (mut net, x, y) = setup(3, 1);
    net.set_training(false);
    Pgd::linf(0.3, 0.05, 4)
        .unwrap()
        .model_in_training_mode(true)
        .perturb(&mut net, &x, &y)
        .unwrap();
    let (all, train) = (net.forwards.get(), net.training_forwards.get());
    assert!(
        all > 0 && train == all,
        "{train} of {all} forward passes in training mode"
    );
    assert!(!net.is_training(), "evaluation mode was not restored");
    Fgsm::mnist()
        .model_in_training_mode(true)
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert!(net.training_forwards.get() > train && !net.is_training());
}

#[test]
fn the_mode_is_restored_after_an_error() {
    let (mut net, x, y) = setup(2, 2);
    net.poison();
    net.set_training(true);
    let err = Pgd::linf(0.3, 0.05, 5)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::NanGradient {
                attack: "pgd",
                restart: 0,
                step: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("NaN"), "{err}");
    assert!(net.is_training());
    assert_eq!(net.training_forwards.get(), 0);
    // Also for L2 (which reads the gradient itself) and FGSM.
    let err = Pgd::l2(1.0, 0.1, 3)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap_err();
    assert!(matches!(err, AttackError::NanGradient { .. }), "{err}");
    let err = Fgsm::mnist().perturb(&mut net, &x, &y).unwrap_err();
    assert!(
        matches!(err, AttackError::NanGradient { attack: "fgsm", .. }),
        "{err}"
    );
    assert!(net.is_training());
}

#[test]
fn invalid_parameters_are_typed_errors() {
    for eps in [-0.1f32, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            Pgd::linf(eps, 0.01, 3),
            Err(AttackError::InvalidEpsilon { .. })
        ));
        assert!(matches!(
            Pgd::l2(eps, 0.01, 3),
            Err(AttackError::InvalidEpsilon { .. })
        ));
        assert!(matches!(
            Fgsm::new(eps),
            Err(AttackError::InvalidEpsilon { .. })
        ));
        assert!(matches!(
            Linf::new(eps),
            Err(AttackError::InvalidEpsilon { .. })
        ));
    }
    for alpha in [0.0f32, -0.01, f32::NAN, f32::INFINITY] {
        let err = Pgd::linf(0.3, alpha, 3).unwrap_err();
        assert!(matches!(err, AttackError::InvalidStepSize { .. }), "{err}");
    }
    let err = Pgd::linf(0.3, 0.01, 0).unwrap_err();
    assert!(
        matches!(err, AttackError::ZeroCount { what: "steps", .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "pgd: the number of steps is 0; it must be at least 1"
    );

    let (mut net, x, y) = setup(2, 3);
    let err = Pgd::mnist()
        .restarts(0)
        .perturb(&mut net, &x, &y)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::ZeroCount {
                what: "restarts",
                ..
            }
        ),
        "{err}"
    );
    let err = Pgd::mnist()
        .loss(Loss::Cw { kappa: f32::NAN })
        .perturb(&mut net, &x, &y);
    assert!(matches!(err, Err(AttackError::InvalidKappa { .. })));
    // ε = 0 is valid: the identity.
    let res = Fgsm::new(0.0).unwrap().perturb(&mut net, &x, &y).unwrap();
    assert_eq!(Cpu.to_vec(&res.x_adv).unwrap(), Cpu.to_vec(&x).unwrap());
    let res = Pgd::linf(0.0, 0.1, 3)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert_eq!(Cpu.to_vec(&res.x_adv).unwrap(), Cpu.to_vec(&x).unwrap());
}

#[test]
fn invalid_inputs_are_typed_errors() {
    let b = Cpu::new();
    let (mut net, x, y) = setup(2, 4);
    let pgd = Pgd::mnist();
    let mut bad = b.to_vec(&x).unwrap();
    for v in [1.5f32, -0.01, f32::NAN, f32::INFINITY] {
        bad[20] = v;
        let xb = b.from_vec(&[2, 1, 4, 4], bad.clone()).unwrap();
        let err = pgd.perturb(&mut net, &xb, &y).unwrap_err();
        assert!(
            matches!(
                err,
                AttackError::InputOutOfRange {
                    index: 20,
                    example: 1,
                    ..
                }
            ),
            "{v}: {err}"
        );
    }
    let y3 = b.from_vec(&[3], vec![0.0, 1.0, 2.0]).unwrap();
    let err = pgd.perturb(&mut net, &x, &y3).unwrap_err();
    assert!(
        matches!(err, AttackError::BatchMismatch { n: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("[2, 1, 4, 4]") && err.to_string().contains("[3]"),
        "{err}"
    );
    for v in [4.0f32, -1.0, 0.5, f32::NAN] {
        let yb = b.from_vec(&[2], vec![0.0, v]).unwrap();
        let err = pgd.perturb(&mut net, &x, &yb).unwrap_err();
        assert!(
            matches!(
                err,
                AttackError::InvalidLabel {
                    what: "label",
                    index: 1,
                    classes: 4,
                    ..
                }
            ),
            "{v}: {err}"
        );
        let err = pgd.perturb_targeted(&mut net, &x, &yb).unwrap_err();
        assert!(
            matches!(err, AttackError::InvalidLabel { what: "target", .. }),
            "{err}"
        );
    }
    // A wrong image shape is the model's error.
    let xs = b.full(&[2, 1, 5, 5], 0.5).unwrap();
    assert!(matches!(
        pgd.perturb(&mut net, &xs, &y),
        Err(AttackError::Model(_))
    ));
    // An empty batch is fine.
    let x0 = b.full(&[0, 1, 4, 4], 0.5).unwrap();
    let y0 = b.from_vec(&[0], vec![]).unwrap();
    let res = pgd.perturb(&mut net, &x0, &y0).unwrap();
    assert!(res.is_empty() && res.success_rate() == 0.0);
}

#[test]
fn targeted_pgd_reaches_the_targets() {
    let b = Cpu::new();
    let (mut net, x, _) = setup(8, 5);
    // Classes the model predicts somewhere in [0, 1]^d: the clean predictions, rotated so that
    // most targets differ from the example's own prediction.
    let clean = predict(&net, &x).unwrap();
    let targets: Vec<f32> = (0..8).map(|i| clean[(i + 3) % 8] as f32).collect();
    let tt = b.from_vec(&[8], targets.clone()).unwrap();
    let pgd = Pgd::linf(1.0, 0.05, 50).unwrap();
    let res = pgd.perturb_targeted(&mut net, &x, &tt).unwrap();
    for i in 0..8 {
        assert_eq!(res.success[i], res.predictions[i] == targets[i] as usize);
    }
    assert!(
        res.success_rate() >= 0.75,
        "targeted success {}",
        res.success_rate()
    );
    // The reported objective is the negated loss of the target.
    let ce = b
        .to_vec(
            &b.cross_entropy(&net.logits(&res.x_adv).unwrap(), &tt)
                .unwrap(),
        )
        .unwrap();
    for (l, c) in res.loss.iter().zip(&ce) {
        assert!((l + c).abs() <= 1e-5 * (1.0 + c.abs()), "{l} vs −{c}");
    }
}

#[test]
fn least_likely_targets_the_least_likely_class() {
    let b = Cpu::new();
    let (mut net, x, y) = setup(8, 6);
    let logits = b.to_vec(&net.logits(&x).unwrap()).unwrap();
    let ll: Vec<usize> = logits
        .chunks(4)
        .map(|r| {
            (0..4)
                .min_by(|&i, &j| r[i].partial_cmp(&r[j]).unwrap())
                .unwrap()
        })
        .collect();
    let pgd = Pgd::linf(1.0, 0.1, 30)
        .unwrap()
        .targeting(Targeting::LeastLikely);
    let res = pgd.perturb(&mut net, &x, &y).unwrap();
    for i in 0..8 {
        assert_eq!(res.success[i], res.predictions[i] == ll[i], "example {i}");
    }
    assert!(
        res.success_rate() >= 0.75,
        "least-likely success {}",
        res.success_rate()
    );
}

#[test]
fn early_stop_freezes_examples_that_are_already_misclassified() {
    let b = Cpu::new();
    let (mut net, x, _) = setup(8, 7);
    // Labels that the clean model gets right on even examples and wrong on odd ones.
    let clean = predict(&net, &x).unwrap();
    let labels: Vec<usize> = (0..8).map(|i| (clean[i] + i % 2) % 4).collect();
    let y = b
        .from_vec(&[8], labels.iter().map(|&l| l as f32).collect())
        .unwrap();
    let wrong: Vec<bool> = (0..8).map(|i| i % 2 == 1).collect();
    let pgd = Pgd::linf(0.3, 0.05, 10)
        .unwrap()
        .random_start(false)
        .early_stop(true)
        .trace(true);
    let res = pgd.perturb(&mut net, &x, &y).unwrap();
    let (xa, x0) = (b.to_vec(&res.x_adv).unwrap(), b.to_vec(&x).unwrap());
    for i in 0..8 {
        if wrong[i] {
            assert_eq!(
                xa[i * 16..(i + 1) * 16],
                x0[i * 16..(i + 1) * 16],
                "example {i} moved"
            );
            assert!(res.success[i]);
        }
    }
    // Without early stop the misclassified ones move too.
    let res2 = Pgd::linf(0.3, 0.05, 10)
        .unwrap()
        .random_start(false)
        .perturb(&mut net, &x, &y);
    assert_ne!(b.to_vec(&res2.unwrap().x_adv).unwrap(), x0);
    // With ε large enough every example falls and the loop stops early.
    let pgd = Pgd::linf(1.0, 0.2, 50)
        .unwrap()
        .random_start(false)
        .early_stop(true)
        .trace(true);
    let res = pgd.perturb(&mut net, &x, &y).unwrap();
    let trace = res.trace.unwrap();
    assert!(res.success.iter().all(|&s| s));
    assert!(trace.losses[0].len() < 51, "the loop should stop early");
}

#[test]
fn the_trace_records_every_iterate_of_every_restart() {
    let (mut net, x, y) = setup(3, 8);
    let pgd = Pgd::linf(0.3, 0.05, 7).unwrap().restarts(3).trace(true);
    let res = pgd.perturb(&mut net, &x, &y).unwrap();
    let trace = res.trace.unwrap();
    assert_eq!(trace.losses.len(), 3);
    assert!(trace
        .losses
        .iter()
        .all(|r| r.len() == 8 && r.iter().all(|s| s.len() == 3)));
    // The result keeps, per example, the best final loss among the restarts when none succeeds.
    for i in 0..3 {
        let finals: Vec<f32> = trace.losses.iter().map(|r| r[7][i]).collect();
        if !res.success[i] {
            assert_eq!(res.loss[i], finals.iter().copied().fold(f32::MIN, f32::max));
        }
    }
    // Ascent: with a small step the loss mostly rises along the trajectory.
    let r0 = &trace.losses[0];
    let rises = (0..3).filter(|&i| r0[7][i] >= r0[0][i]).count();
    assert!(rises >= 2, "{r0:?}");
    assert!(Pgd::mnist()
        .perturb(&mut net, &x, &y)
        .unwrap()
        .trace
        .is_none());
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let b = Cpu::new();
    let (mut net, x, y) = setup(4, 9);
    let run = |net: &mut Mlp, seed| {
        let res = Pgd::linf(0.3, 0.05, 3)
            .unwrap()
            .seed(seed)
            .perturb(net, &x, &y)
            .unwrap();
        b.to_vec(&res.x_adv).unwrap()
    };
    assert_eq!(run(&mut net, 1), run(&mut net, 1));
    assert_ne!(run(&mut net, 1), run(&mut net, 2));
}

#[test]
fn cw_loss_and_l2_work_on_the_tiny_mnist_network() {
    let b = Cpu::new();
    let mut net = MnistNet::new(b, 1, 3).unwrap();
    let (x, y) = batch(&b, 4, [1, 28, 28], 10, 10);
    let x0 = b.to_vec(&x).unwrap();

    let res = Pgd::linf(0.3, 0.01, 5)
        .unwrap()
        .loss(CW_PLUS)
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert!(
        res.loss.iter().all(|&l| l <= 0.0),
        "the CW loss is never positive"
    );
    let xa = b.to_vec(&res.x_adv).unwrap();
    assert!(xa
        .iter()
        .zip(&x0)
        .all(|(a, o)| (a - o).abs() <= 0.3 + 2f32.powi(-24)));

    let pgd = Pgd::l2(2.0, 0.5, 5).unwrap().restarts(2);
    let res = pgd.perturb(&mut net, &x, &y).unwrap();
    let xa = b.to_vec(&res.x_adv).unwrap();
    for (a, o) in xa.chunks(784).zip(x0.chunks(784)) {
        let d: f64 = a
            .iter()
            .zip(o)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(d <= 2.0 * (1.0 + 1e-12), "{d}");
    }
    assert_eq!(pgd.threat().eps(), 2.0);
    assert_eq!(L2::new(2.0).unwrap().name(), "l2");
}

#[test]
fn attacks_are_object_safe_and_transfer_reports_both_accuracies() {
    let b = Cpu::new();
    let (mut source, x, y) = setup(16, 11);
    let mut target = Mlp::new(SHAPE, 16, 4, 3.0, 99);
    let attacks: Vec<Box<dyn Attack<Cpu>>> = vec![
        Box::new(Fgsm::new(0.3).unwrap()),
        Box::new(Pgd::linf(0.3, 0.05, 10).unwrap()),
    ];
    source.set_training(true);
    for attack in &attacks {
        let rep = transfer(attack.as_ref(), &mut source, &mut target, &x, &y).unwrap();
        assert_eq!(rep.examples, 16);
        // Every count recomputed here from the models' own predictions: the source's accuracy
        // under its own attack is what perturb reports, and the target is judged on the clean
        // inputs and on exactly the source's adversarial examples.
        let res = attack.perturb(&mut source, &x, &y).unwrap();
        let labels: Vec<usize> = b.to_vec(&y).unwrap().iter().map(|&v| v as usize).collect();
        let hits = |p: Vec<usize>| p.iter().zip(&labels).filter(|(a, b)| a == b).count();
        let name = attack.name();
        assert_eq!(rep.source_adversarial, res.correct(&labels), "{name}");
        // Predictions in evaluation mode, as the attacks and transfer make them.
        source.set_training(false);
        assert_eq!(
            rep.source_natural,
            hits(predict(&source, &x).unwrap()),
            "{name}"
        );
        source.set_training(true);
        assert_eq!(
            rep.target_natural,
            hits(predict(&target, &x).unwrap()),
            "{name}"
        );
        assert_eq!(
            rep.target_adversarial,
            hits(predict(&target, &res.x_adv).unwrap()),
            "{name}"
        );
        assert_eq!(rep.target_accuracy(), rep.target_adversarial as f64 / 16.0);
        // The checks above would pass for a transfer that handed the target the clean images
        // if the attack changed no prediction: make sure it does, on both models, so that
        // mixing up clean and adversarial inputs is caught.
        assert!(
            rep.source_adversarial < rep.source_natural,
            "{name}: the white-box attack broke nothing ({} of {} correct)",
            rep.source_adversarial,
            rep.source_natural
        );
        let (clean, adv) = (
            predict(&target, &x).unwrap(),
            predict(&target, &res.x_adv).unwrap(),
        );
        assert_ne!(
            clean, adv,
            "{name}: the target predicts the same on x_adv as on x"
        );
    }
    assert!(source.is_training() && !target.is_training());
    assert_eq!(
        source.training_forwards.get() + target.training_forwards.get(),
        0
    );
    // Transferring to the same weights is the white-box attack.
    let mut twin = Mlp::new(SHAPE, 16, 4, 3.0, 11);
    let rep = transfer(&Pgd::mnist(), &mut source, &mut twin, &x, &y).unwrap();
    assert_eq!(rep.source_adversarial, rep.target_adversarial);
    assert_eq!(rep.source_natural, rep.target_natural);
    assert!(rep.target_adversarial < rep.target_natural);
    let mut total = rep;
    total.add(&rep);
    assert_eq!(total.examples, 32);
    assert_eq!(total.source_natural, 2 * rep.source_natural);
    assert_eq!(total.target_adversarial, 2 * rep.target_adversarial);
    assert_eq!(total.target_accuracy(), rep.target_accuracy());
}
