//! FAB-T (L∞ and L2): inside the threat model, consistent results, deterministic, typed errors,
//! and on a linear model the minimal distance to the decision boundary, known in closed form.

mod common;

use common::{batch, Linear4, Mlp};
use saddle_attacks::{Attack, AttackError, Fab, ThreatModel};
use saddle_models::Classifier;
use saddle_tensor::{cpu::Cpu, Backend};

const SHAPE: [usize; 3] = [1, 4, 4];

/// The L∞ and L2 distances of each example of `xa` from `x0`, in `f64`.
fn distances(xa: &[f32], x0: &[f32], d: usize) -> Vec<(f64, f64)> {
    xa.chunks(d)
        .zip(x0.chunks(d))
        .map(|(a, o)| {
            let diffs = a.iter().zip(o).map(|(&u, &v)| u as f64 - v as f64);
            let inf = diffs.clone().fold(0.0f64, |m, v| m.max(v.abs()));
            let two = diffs.map(|v| v * v).sum::<f64>().sqrt();
            (inf, two)
        })
        .collect()
}

#[test]
fn every_result_is_inside_the_ball_and_the_image_domain() {
    let b = Cpu::new();
    let d: usize = SHAPE.iter().product();
    let mut broken = 0;
    for seed in 0..3 {
        let mut net = Mlp::new(SHAPE, 16, 10, 3.0, seed);
        let (x, y) = batch(&b, 12, SHAPE, 10, seed + 10);
        let x0 = b.to_vec(&x).unwrap();
        let clean = saddle_attacks::predict(&net, &x).unwrap();
        let labels: Vec<usize> = b.to_vec(&y).unwrap().iter().map(|&v| v as usize).collect();
        let linf = Fab::linf(0.1, 15).unwrap().target_classes(3).restarts(2);
        let r = linf.perturb(&mut net, &x, &y).unwrap();
        let xa = b.to_vec(&r.x_adv).unwrap();
        assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)));
        for (inf, _) in distances(&xa, &x0, d) {
            // The L∞ projection's bound (threat.rs): ε + 2⁻²⁴.
            assert!(inf <= 0.1f32 as f64 + 2f64.powi(-24), "{inf}");
        }
        broken += (0..12)
            .filter(|&i| r.success[i] && clean[i] == labels[i])
            .count();
        let l2 = Fab::l2(0.5, 15).unwrap().target_classes(3).restarts(2);
        let r = l2.perturb(&mut net, &x, &y).unwrap();
        let xa = b.to_vec(&r.x_adv).unwrap();
        assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)));
        for (_, two) in distances(&xa, &x0, d) {
            // The L2 projection's bound (threat.rs): ε·(1 + (d + 3)·2⁻⁵³).
            assert!(
                two <= 0.5 * (1.0 + (d as f64 + 3.0) * 2f64.powi(-53)),
                "{two}"
            );
        }
        broken += (0..12)
            .filter(|&i| r.success[i] && clean[i] == labels[i])
            .count();
    }
    // The bounds must not hold trivially by returning x0 everywhere.
    assert!(broken > 0, "FAB broke no correctly classified image");
}

#[test]
fn results_are_consistent_and_misclassified_images_are_left_alone() {
    let b = Cpu::new();
    let d: usize = SHAPE.iter().product();
    let mut net = Mlp::new(SHAPE, 16, 10, 3.0, 4);
    let (x, y) = batch(&b, 16, SHAPE, 10, 5);
    let labels: Vec<usize> = b.to_vec(&y).unwrap().iter().map(|&v| v as usize).collect();
    let clean = saddle_attacks::predict(&net, &x).unwrap();
    let x0 = b.to_vec(&x).unwrap();
    assert!(
        (0..16).any(|i| clean[i] != labels[i]) && (0..16).any(|i| clean[i] == labels[i]),
        "the batch has both kinds of images"
    );
    for eps in [0.0, 0.05, 0.3] {
        let r = Fab::linf(eps, 10)
            .unwrap()
            .target_classes(3)
            .perturb(&mut net, &x, &y)
            .unwrap();
        let again = saddle_attacks::predict(&net, &r.x_adv).unwrap();
        assert_eq!(again, r.predictions, "ε {eps}: predictions at x_adv");
        let xa = b.to_vec(&r.x_adv).unwrap();
        for i in 0..16 {
            let rows = i * d..(i + 1) * d;
            assert_eq!(r.success[i], r.predictions[i] != labels[i], "ε {eps}, {i}");
            if clean[i] != labels[i] {
                assert!(r.success[i], "ε {eps}: a misclassified image stays broken");
                assert_eq!(xa[rows.clone()], x0[rows.clone()], "ε {eps}, {i}");
            } else if !r.success[i] {
                // An unbroken image gets x0 back.
                assert_eq!(xa[rows.clone()], x0[rows], "ε {eps}, {i}");
            }
        }
        if eps == 0.0 {
            assert_eq!(xa, x0, "ε = 0 changes nothing");
        }
        assert_eq!(r.loss.len(), 16);
        for i in 0..16 {
            assert_eq!(
                r.loss[i] > 0.0,
                r.success[i],
                "ε {eps}: loss is the negated margin"
            );
        }
    }
}

#[test]
fn runs_are_deterministic_and_restarts_use_the_seed() {
    let b = Cpu::new();
    let mut net = Mlp::new(SHAPE, 16, 10, 3.0, 6);
    let (x, _) = batch(&b, 8, SHAPE, 10, 7);
    let x0 = b.to_vec(&x).unwrap();
    let clean = saddle_attacks::predict(&net, &x).unwrap();
    let y = b
        .from_vec(&[8], clean.iter().map(|&c| c as f32).collect())
        .unwrap();
    let run =
        |fab: &Fab, net: &mut Mlp| b.to_vec(&fab.perturb(net, &x, &y).unwrap().x_adv).unwrap();
    // Restarts after the first start from random points (on the examples the first run left
    // unbroken, which at this radius exist): they break more, and the seed shows.
    let f = Fab::linf(0.38, 20).unwrap().target_classes(1);
    let broken = |f: &Fab, net: &mut Mlp| {
        let r = f.perturb(net, &x, &y).unwrap();
        r.success.iter().filter(|&&s| s).count()
    };
    let once = broken(&f, &mut net);
    let more = f.clone().restarts(8);
    assert!(
        broken(&more, &mut net) > once,
        "restarts break nothing more"
    );
    let one = run(&more.clone().seed(1), &mut net);
    assert_ne!(one, x0, "something was broken");
    assert_eq!(
        one,
        run(&more.clone().seed(1), &mut net),
        "the same seed, the same result"
    );
    assert_ne!(
        one,
        run(&more.seed(2), &mut net),
        "the seed changes no result"
    );
    let l2 = Fab::l2(1.0, 8)
        .unwrap()
        .target_classes(2)
        .restarts(3)
        .seed(5);
    let a2 = b
        .to_vec(&l2.perturb(&mut net, &x, &y).unwrap().x_adv)
        .unwrap();
    let b2 = b
        .to_vec(&l2.perturb(&mut net, &x, &y).unwrap().x_adv)
        .unwrap();
    assert_ne!(a2, x0, "something was broken");
    assert_eq!(a2, b2);
}

#[test]
fn the_model_runs_in_evaluation_mode_and_gets_its_mode_back() {
    let b = Cpu::new();
    let mut net = Mlp::new(SHAPE, 8, 10, 3.0, 1);
    let (x, y) = batch(&b, 4, SHAPE, 10, 2);
    net.set_training(true);
    let fab = Fab::linf(0.1, 3).unwrap().target_classes(2);
    assert_eq!(Attack::<Cpu>::name(&fab), "fab-t");
    fab.perturb(&mut net, &x, &y).unwrap();
    assert!(net.forwards.get() > 0);
    assert_eq!(
        net.training_forwards.get(),
        0,
        "no forward pass in training mode"
    );
    assert!(net.is_training(), "the mode is restored");
}

#[test]
fn invalid_settings_and_inputs_are_typed_errors() {
    let b = Cpu::new();
    assert!(matches!(
        Fab::linf(0.1, 0),
        Err(AttackError::ZeroCount { what: "steps", .. })
    ));
    assert!(matches!(
        Fab::linf(f32::NAN, 10),
        Err(AttackError::InvalidEpsilon { .. })
    ));
    assert!(matches!(
        Fab::l2(-1.0, 10),
        Err(AttackError::InvalidEpsilon { .. })
    ));
    let mut net = Mlp::new(SHAPE, 8, 10, 1.0, 1);
    let (x, y) = batch(&b, 2, SHAPE, 10, 2);
    let ok = Fab::linf(0.1, 3).unwrap();
    let err = |f: Fab, net: &mut Mlp| f.perturb(net, &x, &y).unwrap_err();
    assert!(matches!(
        err(ok.clone().restarts(0), &mut net),
        AttackError::ZeroCount {
            what: "restarts",
            ..
        }
    ));
    assert!(matches!(
        err(ok.clone().target_classes(0), &mut net),
        AttackError::ZeroCount {
            what: "target classes",
            ..
        }
    ));
    for v in [0.0, -0.1, 1.5, f32::NAN] {
        assert!(matches!(
            err(ok.clone().alpha_max(v), &mut net),
            AttackError::InvalidFraction {
                what: "alpha_max",
                ..
            }
        ));
        assert!(matches!(
            err(ok.clone().beta(v), &mut net),
            AttackError::InvalidFraction { what: "beta", .. }
        ));
    }
    for v in [0.0, -1.0, f32::INFINITY, f32::NAN] {
        assert!(matches!(
            err(ok.clone().eta(v), &mut net),
            AttackError::InvalidStepSize { .. }
        ));
    }
    // 10 classes: 9 targets fit, 10 do not.
    assert!(matches!(
        err(ok.clone().target_classes(10), &mut net),
        AttackError::TooFewClasses {
            classes: 10,
            need: 11,
            ..
        }
    ));
    let mut small = Mlp::new(SHAPE, 8, 3, 1.0, 1);
    let (xs, ys) = batch(&b, 2, SHAPE, 3, 2);
    assert!(matches!(
        ok.perturb(&mut small, &xs, &ys),
        Err(AttackError::TooFewClasses {
            classes: 3,
            need: 10,
            ..
        })
    ));
    // Out-of-range pixels, mismatched labels, a NaN model.
    let bad = b.full(&[2, 1, 4, 4], 1.5).unwrap();
    assert!(matches!(
        ok.perturb(&mut net, &bad, &y),
        Err(AttackError::InputOutOfRange { .. })
    ));
    let y3 = b.from_vec(&[3], vec![0.0; 3]).unwrap();
    assert!(matches!(
        ok.perturb(&mut net, &x, &y3),
        Err(AttackError::BatchMismatch { .. })
    ));
    // NaN first-layer weights: the ReLU hides them from the logits, not from the gradient.
    // Labels the poisoned model gets right, so that the attack runs.
    net.poison();
    let yc: Vec<f32> = saddle_attacks::predict(&net, &x)
        .unwrap()
        .iter()
        .map(|&c| c as f32)
        .collect();
    let yc = b.from_vec(&[2], yc).unwrap();
    assert!(matches!(
        ok.perturb(&mut net, &x, &yc),
        Err(AttackError::NanGradient {
            attack: "fab-t",
            step: 0,
            ..
        }) | Err(AttackError::NonFinite { .. })
    ));
}

/// `z = W·x + c` on 4 pixels and 4 classes with `w₀ − w₁ = (1, −1, 1, −1)` and `z₀ + z₁ = 1.2`:
/// the margin of class 0 over class 1 is `m(x) = 1.2 + x₀ − x₁ + x₂ − x₃`. Classes 2 and 3
/// trail by more than 2.4 everywhere in `[0, 1]⁴`, so the decision boundary of class 0 is the
/// hyperplane `m = 0`, and the minimal distances to it inside the box are in closed form:
///
/// - `x0 = (0.5, 0.5, 0.5, 0.5)`: `m = 1.2`; each pixel lowers `m` by at most its change, with
///   room 0.5 each: L∞ `1.2/4 = 0.3`, L2 `1.2/‖w₀ − w₁‖₂ = 0.6` (0.3 per pixel, in the box).
/// - `x0 = (0, 1, 0.5, 0.5)`: `m = 0.2`, and pixels 0 and 1 have no room in the direction that
///   lowers `m` (the box binds): L∞ `0.2/2 = 0.1`, L2 `0.2/√2`. Ignoring the box would give
///   0.05 and 0.1 instead.
fn linear() -> Linear4 {
    Linear4::new(1.2)
}

/// On a linear model every FAB iterate lies on the segment from `x0` along the exact
/// (box-constrained) projection `δ*` onto the boundary, `x = x0 + s·δ*`: from `x` the step is
/// `(1 − s)·δ*`, from `x0` it is `δ*`, so `s ← (1 − α)(s + η(1 − s)) + α·η` with
/// `α = min((1 − s)/(2 − s), α_max)`, and `s ← β·s` after each adversarial iterate. From `s = 0`
/// this gives `s = 1.05` (the overshoot η), then `1.00521…` (the closest), then it settles at
/// `1.00846…`. [`predicted_ratio`] runs this recursion; the distance found must match it to
/// 1e-5 relative (the `f32` rounding of the iterates is ~1e-7) and never be below the minimum.
/// A projection that ignored the box (the second example), or a wrong α, β or η, misses it.
fn predicted_ratio(steps: usize, eta: f64, beta: f64, alpha_max: f64) -> f64 {
    let (mut s, mut best) = (0.0f64, f64::INFINITY);
    for _ in 0..steps {
        let a = ((1.0 - s) / (2.0 - s)).min(alpha_max);
        let u = (1.0 - a) * (s + eta * (1.0 - s)) + a * eta;
        if u > 1.0 {
            best = best.min(u);
            s = beta * u;
        } else {
            s = u;
        }
    }
    best
}

#[test]
fn a_linear_model_is_broken_at_its_minimal_distance() {
    let b = Cpu::new();
    let mut net = linear();
    let x0v = vec![0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 0.5, 0.5];
    let x = b.from_vec(&[2, 1, 2, 2], x0v.clone()).unwrap();
    let y = b.from_vec(&[2], vec![0.0; 2]).unwrap();
    assert_eq!(saddle_attacks::predict(&net, &x).unwrap(), vec![0, 0]);
    let linf_star = [0.3f64, 0.1];
    let l2_star = [0.6f64, 0.2 / 2f64.sqrt()];
    let ratio = predicted_ratio(100, 1.05, 0.9, 0.1);
    assert!((ratio - 1.00521).abs() < 1e-5, "{ratio}");
    assert!(predicted_ratio(100, 1.2, 0.5, 0.02) != predicted_ratio(100, 1.2, 0.5, 0.1));

    // With a large ε every example is broken and the result is the closest point found; the
    // defaults, then settings where α_max, β and η all change the recursion.
    for (eta, beta, alpha_max) in [(1.05f32, 0.9f32, 0.1f32), (1.2, 0.5, 0.02)] {
        let ratio = predicted_ratio(100, eta as f64, beta as f64, alpha_max as f64);
        let linf = Fab::linf(1.0, 100)
            .unwrap()
            .target_classes(3)
            .eta(eta)
            .beta(beta)
            .alpha_max(alpha_max);
        assert_eq!((linf.eta_value(), linf.beta_value()), (eta, beta));
        assert_eq!(linf.alpha_max_value(), alpha_max);
        let r = linf.perturb(&mut net, &x, &y).unwrap();
        assert!(
            r.success.iter().all(|&s| s) && r.predictions == vec![1, 1],
            "{r:?}"
        );
        let got = distances(&b.to_vec(&r.x_adv).unwrap(), &x0v, 4);
        for i in 0..2 {
            let (inf, _) = got[i];
            assert!(
                inf >= linf_star[i] * (1.0 - 1e-6)
                    && (inf / linf_star[i] / ratio - 1.0).abs() < 1e-5,
                "L∞ example {i}: found {inf}, minimum {}, predicted ratio {ratio}",
                linf_star[i]
            );
        }
        let l2 = Fab::l2(2.0, 100)
            .unwrap()
            .target_classes(3)
            .eta(eta)
            .beta(beta)
            .alpha_max(alpha_max);
        let r = l2.perturb(&mut net, &x, &y).unwrap();
        assert!(r.success.iter().all(|&s| s), "{r:?}");
        let got = distances(&b.to_vec(&r.x_adv).unwrap(), &x0v, 4);
        for i in 0..2 {
            let (_, two) = got[i];
            assert!(
                two >= l2_star[i] * (1.0 - 1e-6) && (two / l2_star[i] / ratio - 1.0).abs() < 1e-5,
                "L2 example {i}: found {two}, minimum {}, predicted ratio {ratio}",
                l2_star[i]
            );
        }
    }

    // Just above the minimum: broken; just below: never (and x0 comes back).
    for (i, (&li, &l2)) in linf_star.iter().zip(&l2_star).enumerate() {
        let xi = b
            .from_vec(&[1, 1, 2, 2], x0v[i * 4..(i + 1) * 4].to_vec())
            .unwrap();
        let yi = b.from_vec(&[1], vec![0.0]).unwrap();
        let above = Fab::linf((li * 1.03) as f32, 100)
            .unwrap()
            .target_classes(3);
        assert!(
            above.perturb(&mut net, &xi, &yi).unwrap().success[0],
            "L∞ {i} above"
        );
        let below = Fab::linf((li * 0.97) as f32, 100)
            .unwrap()
            .target_classes(3);
        let r = below.perturb(&mut net, &xi, &yi).unwrap();
        assert!(!r.success[0], "L∞ {i} below");
        assert_eq!(b.to_vec(&r.x_adv).unwrap(), x0v[i * 4..(i + 1) * 4]);
        let above = Fab::l2((l2 * 1.03) as f32, 100).unwrap().target_classes(3);
        assert!(
            above.perturb(&mut net, &xi, &yi).unwrap().success[0],
            "L2 {i} above"
        );
        let below = Fab::l2((l2 * 0.97) as f32, 100).unwrap().target_classes(3);
        assert_eq!(below.threat().eps(), (l2 * 0.97) as f32);
        assert!(
            !below.perturb(&mut net, &xi, &yi).unwrap().success[0],
            "L2 {i} below"
        );
    }
}
