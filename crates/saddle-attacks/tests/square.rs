//! The Square attack (Andriushchenko et al., ECCV 2020): inside the ball and `[0, 1]`, never
//! weaker than its start, reproducible from the seed, exact query counts, and a linear model
//! whose decision flips at a known radius: found above it, never "found" below it.

mod common;

use std::cell::Cell;

use common::{batch, Mlp};
use saddle_attacks::{predict, Attack, AttackError, Square};
use saddle_autograd::{Graph, Var};
use saddle_models::{layers::Ctx, Classifier, Forward, MnistNet, ParamSet};
use saddle_tensor::{
    cpu::{Cpu, CpuTensor},
    rng::Rng,
    Backend, TensorLike,
};

/// The unit roundoff of f64.
const U: f64 = f64::EPSILON / 2.0;

/// A two-class linear classifier on images of `shape`: `z0 = 0`, `z1 = v·x − t`, so class 0 is
/// predicted while `v·x ≤ t` (a tie goes to class 0, the first maximum). It counts the images
/// (rows) it is given, over all forward passes.
struct Linear {
    backend: Cpu,
    shape: [usize; 3],
    params: ParamSet<Cpu>,
    training: bool,
    rows: Cell<usize>,
    training_forwards: Cell<usize>,
}

impl Linear {
    fn new(shape: [usize; 3], v: &[f32], t: f32) -> Self {
        let b = Cpu::new();
        let d = v.len();
        let mut w = vec![0.0f32; d];
        w.extend_from_slice(v);
        let mut params = ParamSet::new();
        params
            .push("fc.weight", b.from_vec(&[2, d], w).unwrap())
            .unwrap();
        params
            .push("fc.bias", b.from_vec(&[2], vec![0.0, -t]).unwrap())
            .unwrap();
        Linear {
            backend: b,
            shape,
            params,
            training: false,
            rows: Cell::new(0),
            training_forwards: Cell::new(0),
        }
    }
}

impl Classifier<Cpu> for Linear {
    fn backend(&self) -> &Cpu {
        &self.backend
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn input_shape(&self) -> [usize; 3] {
        self.shape
    }
    fn params(&self) -> &ParamSet<Cpu> {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamSet<Cpu> {
        &mut self.params
    }
    fn is_training(&self) -> bool {
        self.training
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn forward(&self, g: &Graph<Cpu>, x: Var, param_grads: bool) -> saddle_models::Result<Forward> {
        let xv = g.value(x);
        self.check_input(&xv)?;
        self.rows.set(self.rows.get() + xv.dims()[0]);
        if self.training {
            self.training_forwards.set(self.training_forwards.get() + 1);
        }
        let mut cx = Ctx::new(g, &self.params, param_grads, self.training);
        let (w, bias) = (cx.param(0), cx.param(1));
        let h = g.flatten(x)?;
        let logits = g.linear(h, w, Some(bias))?;
        Ok(cx.finish(logits))
    }
}

/// The flip problem: `n` images of `shape` with `v·x0 = 0.5·Σv` exactly up to rounding (each
/// `x0 = 0.5 + u`, `u` uniform in `±0.15` then made orthogonal to `v`, so `x0 ∈ [0.3, 0.7]`
/// up to the small correction), and the threshold `t = v·x0 + flip·d`. With `v ∈ {±1}^d`,
/// the largest `v·x` over the L∞ ball of radius ε (inside `[0, 1]` for ε ≤ 0.25) is
/// `v·x0 + ε·d`, so the decision flips exactly for ε > `flip` (L∞); over the L2 ball it is
/// `v·x0 + ε·√d`, so it flips for ε > `flip·√d` (L2). If `misclassified` is given, that
/// example is moved by `+0.2·v` to start on the wrong side.
struct Flip {
    net: Linear,
    x: CpuTensor,
    y: CpuTensor,
    x0: Vec<f32>,
    d: usize,
}

fn flip_problem(
    n: usize,
    shape: [usize; 3],
    flip: f32,
    misclassified: Option<usize>,
    seed: u64,
) -> Flip {
    let b = Cpu::new();
    let d: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..d)
        .map(|_| if rng.next_bool() { 1.0 } else { -1.0 })
        .collect();
    let mut x0 = Vec::with_capacity(n * d);
    for i in 0..n {
        let mut u: Vec<f64> = (0..d).map(|_| rng.uniform(-0.15, 0.15) as f64).collect();
        let along = u.iter().zip(&v).map(|(a, &s)| a * s as f64).sum::<f64>() / d as f64;
        u.iter_mut()
            .zip(&v)
            .for_each(|(a, &s)| *a -= along * s as f64);
        let shift = if misclassified == Some(i) { 0.2 } else { 0.0 };
        x0.extend(
            u.iter()
                .zip(&v)
                .map(|(a, &s)| (0.5 + a + shift * s as f64) as f32),
        );
    }
    let half: f64 = v.iter().map(|&s| 0.5 * s as f64).sum();
    let t = (half + flip as f64 * d as f64) as f32;
    let net = Linear::new(shape, &v, t);
    Flip {
        net,
        x: b.from_vec(&[n, shape[0], shape[1], shape[2]], x0.clone())
            .unwrap(),
        y: b.from_vec(&[n], vec![0.0; n]).unwrap(),
        x0,
        d,
    }
}

/// L∞: `fl(x0 − ε) ≤ x_adv ≤ fl(x0 + ε)` per pixel (the attack writes only `x0`, the clean
/// pixel, or `clamp(fl(x0 ± ε), 0, 1)`, so no slack is needed: the bound of `Linf`), and
/// `[0, 1]`.
fn assert_linf(x0: &[f32], xa: &[f32], eps: f32) {
    for (j, (&a, &o)) in xa.iter().zip(x0).enumerate() {
        assert!((0.0..=1.0).contains(&a), "pixel {j}: {a} outside [0, 1]");
        assert!(
            o - eps <= a && a <= o + eps,
            "pixel {j}: {a} outside [{o} − {eps}, {o} + {eps}]"
        );
    }
}

/// L2: `[0, 1]` and `‖x_adv − x0‖₂ ≤ ε` exactly (the attack rescales to
/// `ε·(1 − 4(d + 8)·u)` and rounds every coordinate towards `x0`); the f64 evaluation of the
/// norm here (exact differences, `d` rounded squares, a sum of `d` terms, a square root) adds at
/// most `(d/2 + 2)·u` relative, so the check allows `ε·(1 + (d + 4)·u)`.
fn assert_l2(x0: &[f32], xa: &[f32], d: usize, eps: f32) {
    assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)), "outside [0, 1]");
    for (i, (a, o)) in xa.chunks(d).zip(x0.chunks(d)).enumerate() {
        let norm = a
            .iter()
            .zip(o)
            .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let bound = eps as f64 * (1.0 + (d + 4) as f64 * U);
        assert!(norm <= bound, "example {i}: ‖δ‖ = {norm:e} > {bound:e}");
    }
}

/// The clean margins `z_y − max_{j≠y} z_j` of a model on a batch.
fn clean_margins(net: &dyn Classifier<Cpu>, x: &CpuTensor, labels: &[usize]) -> Vec<f32> {
    let k = net.num_classes();
    let z = Cpu.to_vec(&net.logits(x).unwrap()).unwrap();
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let row = &z[i * k..(i + 1) * k];
            let other = (0..k)
                .filter(|&j| j != y)
                .map(|j| row[j])
                .fold(f32::NEG_INFINITY, f32::max);
            row[y] - other
        })
        .collect()
}

/// Labels for `x`: the model's clean predictions for the first `k` examples (so that they are
/// correctly classified and get attacked), the next class for the rest (misclassified).
fn correct_labels(net: &dyn Classifier<Cpu>, x: &CpuTensor, k: usize) -> CpuTensor {
    let pred = predict(net, x).unwrap();
    let classes = net.num_classes();
    let y: Vec<f32> = pred
        .iter()
        .enumerate()
        .map(|(i, &p)| if i < k { p } else { (p + 1) % classes } as f32)
        .collect();
    Cpu.from_vec(&[pred.len()], y).unwrap()
}

fn labels(y: &CpuTensor) -> Vec<usize> {
    Cpu.to_vec(y).unwrap().iter().map(|&v| v as usize).collect()
}

#[test]
fn linf_finds_the_flip_above_its_radius_and_never_below() {
    // d = 2·6·6 = 72 pixels, two channels; the flip is at ε = 0.1.
    let shape = [2, 6, 6];
    let mut p = flip_problem(6, shape, 0.1, None, 11);
    // At ε = 0.12 (1.2 times the flip) only points whose perturbation agrees with v on at
    // least 67 of the 72 signs are past the flip (0.12·(67 − 5) = 7.44 > 0.1·72 = 7.2): the
    // random search has to get nearly every sign right. Over 60 seeded problems of this size
    // (flip 0.05, ε = 0.06) it needed at most 316 queries; the budget is 1,000.
    let sq = Square::linf(0.12, 1_000).unwrap().seed(3);
    let (res, q) = sq.perturb_with_queries(&mut p.net, &p.x, &p.y).unwrap();
    assert_eq!(
        res.success,
        vec![true; 6],
        "queries {q:?}, loss {:?}",
        res.loss
    );
    assert!(q.iter().all(|&k| (1..=1_000).contains(&k)), "{q:?}");
    let xa = Cpu.to_vec(&res.x_adv).unwrap();
    assert_linf(&p.x0, &xa, 0.12);
    assert_eq!(predict(&p.net, &res.x_adv).unwrap(), vec![1; 6]);

    // At ε = 0.09 no point of the ball crosses (its best margin is +0.01·72 = 0.72, far above
    // any rounding of a 72-term dot product), whatever the budget: no success, and every
    // example used the whole budget of every restart.
    let sq = Square::linf(0.09, 300).unwrap().restarts(2).seed(3);
    let (res, q) = sq.perturb_with_queries(&mut p.net, &p.x, &p.y).unwrap();
    assert_eq!(res.success, vec![false; 6]);
    assert_eq!(q, vec![600; 6]);
    // The search still pushed towards the flip: the objective (−margin) rose from
    // −0.1·72 = −7.2 (up to the clean rounding) to within a bound of −0.72.
    assert!(
        res.loss.iter().all(|&l| l > -7.0 && l <= -0.72 + 1e-3),
        "{:?}",
        res.loss
    );
    assert_linf(&p.x0, &Cpu.to_vec(&res.x_adv).unwrap(), 0.09);
}

#[test]
fn l2_finds_the_flip_above_its_radius_and_never_below() {
    // 1×8×8, d = 64: the L∞ flip 0.05 is the L2 flip 0.05·√64 = 0.4.
    let shape = [1, 8, 8];
    let mut p = flip_problem(4, shape, 0.05, None, 12);
    let flip = 0.4f32;
    // At ε = 2·0.4 a perturbation crosses when its cosine with v exceeds 1/2. The L2 updates
    // are smooth square patterns, slower than L∞'s to match a random sign pattern: over 60
    // seeded problems of this size it needed at most 286 queries at 2× the flip (and failed
    // half of them within 1,000 at 1.5×); the budget is 1,000.
    let sq = Square::l2(2.0 * flip, 1_000).unwrap().seed(5);
    let (res, q) = sq.perturb_with_queries(&mut p.net, &p.x, &p.y).unwrap();
    assert_eq!(
        res.success,
        vec![true; 4],
        "queries {q:?}, loss {:?}",
        res.loss
    );
    assert!(q.iter().all(|&k| (1..=1_000).contains(&k)), "{q:?}");
    assert_l2(&p.x0, &Cpu.to_vec(&res.x_adv).unwrap(), p.d, 2.0 * flip);

    // Below the flip (ε = 0.9·0.4: best margin +0.04·8 = 0.32), never.
    let sq = Square::l2(0.9 * flip, 300).unwrap().seed(5);
    let (res, q) = sq.perturb_with_queries(&mut p.net, &p.x, &p.y).unwrap();
    assert_eq!(res.success, vec![false; 4]);
    assert_eq!(q, vec![300; 4]);
    assert!(
        res.loss.iter().all(|&l| l <= -0.32 + 1e-3),
        "{:?}",
        res.loss
    );
    assert_l2(&p.x0, &Cpu.to_vec(&res.x_adv).unwrap(), p.d, 0.9 * flip);
}

/// Every forward pass over `m` images is `m` queries; the two uncounted passes are the clean
/// one and the final one (each over the whole batch). So the rows the model saw equal the sum
/// of the reported queries plus `2n`.
#[test]
fn queries_are_counted_per_example_and_misclassified_examples_cost_none() {
    let shape = [1, 5, 5];
    for (l2, eps, budget, restarts) in [
        (false, 0.3f32, 200usize, 1usize),
        (false, 0.05, 50, 3),
        (true, 1.5, 200, 2),
        (true, 0.1, 40, 2),
    ] {
        let mut p = flip_problem(5, shape, 0.1, Some(2), 21);
        let (res, q) = if l2 {
            Square::l2(eps, budget)
                .unwrap()
                .restarts(restarts)
                .perturb_with_queries(&mut p.net, &p.x, &p.y)
        } else {
            Square::linf(eps, budget)
                .unwrap()
                .restarts(restarts)
                .perturb_with_queries(&mut p.net, &p.x, &p.y)
        }
        .unwrap();
        let case = format!("l2 {l2}, ε {eps}, budget {budget}, restarts {restarts}");
        assert_eq!(p.net.rows.get(), q.iter().sum::<usize>() + 2 * 5, "{case}");
        // Example 2 starts on the wrong side: success, no query, unchanged.
        assert_eq!(q[2], 0, "{case}");
        assert!(res.success[2], "{case}");
        let xa = Cpu.to_vec(&res.x_adv).unwrap();
        assert_eq!(xa[2 * p.d..3 * p.d], p.x0[2 * p.d..3 * p.d], "{case}");
        for (i, &k) in q.iter().enumerate() {
            if i == 2 {
                continue;
            }
            assert!(k >= 1 && k <= budget * restarts, "{case}: {q:?}");
            // An example that was never fooled spent every query of every restart.
            if !res.success[i] {
                assert_eq!(k, budget * restarts, "{case}: {q:?}");
            }
        }
    }
}

#[test]
fn adversarial_examples_stay_in_the_ball_and_the_image_domain() {
    let b = Cpu::new();
    for (shape, seed) in [
        ([1, 4, 4], 1u64),
        ([3, 5, 3], 2),
        ([2, 1, 7], 3),
        ([1, 2, 2], 4),
    ] {
        let mut net = Mlp::new(shape, 12, 4, 3.0, seed);
        let (x, y) = batch(&b, 5, shape, 4, seed + 10);
        let x0 = b.to_vec(&x).unwrap();
        let d: usize = shape.iter().product();
        for eps in [1e-7f32, 0.03, 0.3, 1.0, 5.0] {
            let sq = Square::linf(eps, 60).unwrap().restarts(2).seed(seed);
            let res = sq.perturb(&mut net, &x, &y).unwrap();
            assert_linf(&x0, &b.to_vec(&res.x_adv).unwrap(), eps);
            let sq = Square::l2(eps, 60).unwrap().restarts(2).seed(seed);
            let res = sq.perturb(&mut net, &x, &y).unwrap();
            assert_l2(&x0, &b.to_vec(&res.x_adv).unwrap(), d, eps);
        }
    }
    // The tiny MNIST network at the paper's radius.
    let mut net = MnistNet::new(b, 1, 3).unwrap();
    let (x, y) = batch(&b, 3, [1, 28, 28], 10, 5);
    let x0 = b.to_vec(&x).unwrap();
    let res = Square::linf(0.3, 40)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert_linf(&x0, &b.to_vec(&res.x_adv).unwrap(), 0.3);
    let res = Square::l2(2.0, 40)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert_l2(&x0, &b.to_vec(&res.x_adv).unwrap(), 784, 2.0);
}

/// Success is monotone (an example correctly classified at `x_adv` was correctly classified at
/// `x0`), the reported success and predictions are the model's at `x_adv`, and the objective
/// never falls below its clean value. The attack compares margins computed on sub-batches,
/// the report comes from one pass over the whole batch: the margins may differ in the last
/// bits, hence the tolerance of `1e-5·(1 + |margin|)` (logits here are of order 10, `f32`
/// rounding is about `1e-6` of that).
#[test]
fn the_attack_is_never_weaker_than_its_start() {
    let b = Cpu::new();
    let mut net = MnistNet::new(b, 1, 7).unwrap();
    let (x, _) = batch(&b, 8, [1, 28, 28], 10, 9);
    // Half of the examples correctly classified at x0, half (most likely) not.
    let y = correct_labels(&net, &x, 4);
    let lab = labels(&y);
    let clean_pred = predict(&net, &x).unwrap();
    let clean = clean_margins(&net, &x, &lab);
    // One query is the initialisation alone, which may well be worse than x0: the result must
    // then be x0.
    for budget in [1, 80] {
        for l2 in [false, true] {
            for eps in [0.02f32, 0.1, 0.3] {
                let (res, q) = if l2 {
                    Square::l2(eps * 10.0, budget)
                        .unwrap()
                        .perturb_with_queries(&mut net, &x, &y)
                } else {
                    Square::linf(eps, budget)
                        .unwrap()
                        .perturb_with_queries(&mut net, &x, &y)
                }
                .unwrap();
                let case = format!("l2 {l2}, ε {eps}, budget {budget}");
                let pred = predict(&net, &res.x_adv).unwrap();
                assert_eq!(res.predictions, pred, "{case}");
                for i in 0..8 {
                    assert_eq!(res.success[i], pred[i] != lab[i], "{case}, example {i}");
                    if clean_pred[i] != lab[i] {
                        assert!(res.success[i] && q[i] == 0, "{case}, example {i}");
                    }
                    let bound = -clean[i] - 1e-5 * (1.0 + clean[i].abs());
                    assert!(
                        res.loss[i] >= bound,
                        "{case}, example {i}: loss {} < clean {}",
                        res.loss[i],
                        -clean[i]
                    );
                }
            }
        }
    }
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let b = Cpu::new();
    let mut net = MnistNet::new(b, 1, 4).unwrap();
    let (x, _) = batch(&b, 4, [1, 28, 28], 10, 6);
    let y = correct_labels(&net, &x, 4);
    let x0 = b.to_vec(&x).unwrap();
    for l2 in [false, true] {
        let mut run = |seed: u64| {
            let (res, q) = if l2 {
                Square::l2(1.5, 30)
                    .unwrap()
                    .seed(seed)
                    .perturb_with_queries(&mut net, &x, &y)
            } else {
                Square::linf(0.3, 30)
                    .unwrap()
                    .seed(seed)
                    .perturb_with_queries(&mut net, &x, &y)
            }
            .unwrap();
            (b.to_vec(&res.x_adv).unwrap(), res.loss, q)
        };
        let (a, la, qa) = run(1);
        let (a2, la2, qa2) = run(1);
        assert_eq!(a, a2, "l2 {l2}: same seed, different points");
        assert_eq!((la, qa), (la2, qa2));
        let (c, _, _) = run(2);
        // Another seed draws other stripes or tiles: every example that was attacked moved
        // differently (the chance that two seeds give the same point is about 2^-28 per
        // example for the L∞ stripes alone).
        for i in 0..4 {
            let (ai, ci) = (&a[i * 784..(i + 1) * 784], &c[i * 784..(i + 1) * 784]);
            if ai != &x0[i * 784..(i + 1) * 784] {
                assert_ne!(ai, ci, "l2 {l2}, example {i}: seeds 1 and 2 agree");
            }
        }
        assert!(a != x0, "l2 {l2}: nothing was attacked");
    }
}

/// Restart 0 draws the same numbers whatever the number of restarts, and later restarts only
/// replace an example's point by one of lower margin: more restarts are never weaker, and
/// here (below the flip, so every example gets every restart) strictly stronger on some
/// example. The margins of the linear model are dot products of 16 terms of order 1: the
/// tolerance `1e-5` covers their rounding in different batch compositions.
#[test]
fn restarts_only_add_strength() {
    for l2 in [false, true] {
        let mut p = flip_problem(6, [1, 4, 4], 0.1, None, 31);
        let eps = if l2 { 0.35 } else { 0.09 };
        let mut run = |restarts: usize| {
            let (res, q) = if l2 {
                Square::l2(eps, 20)
                    .unwrap()
                    .restarts(restarts)
                    .seed(9)
                    .perturb_with_queries(&mut p.net, &p.x, &p.y)
            } else {
                Square::linf(eps, 20)
                    .unwrap()
                    .restarts(restarts)
                    .seed(9)
                    .perturb_with_queries(&mut p.net, &p.x, &p.y)
            }
            .unwrap();
            assert_eq!(q, vec![20 * restarts; 6]);
            res.loss
        };
        let (one, three) = (run(1), run(3));
        for i in 0..6 {
            assert!(
                three[i] >= one[i] - 1e-5,
                "l2 {l2}, example {i}: {} < {}",
                three[i],
                one[i]
            );
        }
        assert!(
            (0..6).any(|i| three[i] > one[i] + 1e-3),
            "l2 {l2}: restarts did nothing"
        );
    }
}

#[test]
fn eps_zero_is_the_identity_and_costs_no_query() {
    let b = Cpu::new();
    let mut net = Mlp::new([1, 4, 4], 16, 4, 3.0, 8);
    let (x, y) = batch(&b, 6, [1, 4, 4], 4, 9);
    let clean = predict(&net, &x).unwrap();
    let lab = labels(&y);
    let forwards = net.forwards.get();
    let (res, q) = Square::linf(0.0, 100)
        .unwrap()
        .perturb_with_queries(&mut net, &x, &y)
        .unwrap();
    assert_eq!(b.to_vec(&res.x_adv).unwrap(), b.to_vec(&x).unwrap());
    assert_eq!(q, vec![0; 6]);
    assert_eq!(res.predictions, clean);
    let expect: Vec<bool> = (0..6).map(|i| clean[i] != lab[i]).collect();
    assert_eq!(res.success, expect);
    // The clean pass and the final pass only.
    assert_eq!(net.forwards.get() - forwards, 2);
    let res = Square::l2(0.0, 100)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap();
    assert_eq!(b.to_vec(&res.x_adv).unwrap(), b.to_vec(&x).unwrap());
}

#[test]
fn the_model_runs_in_eval_mode_and_gets_its_mode_back() {
    let mut p = flip_problem(3, [1, 4, 4], 0.1, None, 2);
    p.net.set_training(true);
    Square::linf(0.2, 30)
        .unwrap()
        .perturb(&mut p.net, &p.x, &p.y)
        .unwrap();
    Square::l2(0.5, 30)
        .unwrap()
        .perturb(&mut p.net, &p.x, &p.y)
        .unwrap();
    assert!(p.net.rows.get() > 0);
    assert_eq!(
        p.net.training_forwards.get(),
        0,
        "a query ran in training mode"
    );
    assert!(p.net.is_training(), "training mode was not restored");

    // Also after an error: NaN weights give NaN logits, a typed error.
    let b = Cpu::new();
    let mut net = Mlp::new([1, 4, 4], 8, 3, 1.0, 1);
    let (x, y) = batch(&b, 2, [1, 4, 4], 3, 2);
    // NaN output weights (NaN in the first layer would be zeroed by the ReLU).
    let t = &mut net.params_mut().tensors_mut()[2];
    *t = b.full(t.dims(), f32::NAN).unwrap();
    net.set_training(true);
    let err = Square::linf(0.1, 10)
        .unwrap()
        .perturb(&mut net, &x, &y)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::NonFinite {
                attack: "square",
                ..
            }
        ),
        "{err}"
    );
    assert!(net.is_training());
    assert_eq!(net.training_forwards.get(), 0);
}

#[test]
fn invalid_parameters_and_inputs_are_typed_errors() {
    for eps in [-0.1f32, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            Square::linf(eps, 10),
            Err(AttackError::InvalidEpsilon { .. })
        ));
        assert!(matches!(
            Square::l2(eps, 10),
            Err(AttackError::InvalidEpsilon { .. })
        ));
    }
    let err = Square::linf(0.3, 0).unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::ZeroCount {
                what: "queries",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "square: the number of queries is 0; it must be at least 1"
    );
    assert!(matches!(
        Square::l2(0.3, 0),
        Err(AttackError::ZeroCount { .. })
    ));

    let b = Cpu::new();
    let mut net = Mlp::new([1, 4, 4], 16, 4, 3.0, 3);
    let (x, y) = batch(&b, 2, [1, 4, 4], 4, 4);
    let sq = Square::linf(0.3, 5).unwrap();
    let err = sq
        .clone()
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
    for p in [0.0f32, -0.5, 1.0001, f32::NAN, f32::INFINITY] {
        let err = sq.clone().p_init(p).perturb(&mut net, &x, &y).unwrap_err();
        assert!(
            matches!(err, AttackError::InvalidFraction { what: "p_init", .. }),
            "{p}: {err}"
        );
        let err = Square::l2(0.5, 5)
            .unwrap()
            .p_init(p)
            .perturb(&mut net, &x, &y)
            .unwrap_err();
        assert!(matches!(err, AttackError::InvalidFraction { .. }), "{err}");
    }
    // p_init = 1 (the whole image, less one row and column) is valid.
    sq.clone().p_init(1.0).perturb(&mut net, &x, &y).unwrap();

    let mut bad = b.to_vec(&x).unwrap();
    for v in [1.5f32, -0.01, f32::NAN] {
        bad[20] = v;
        let xb = b.from_vec(&[2, 1, 4, 4], bad.clone()).unwrap();
        let err = sq.perturb(&mut net, &xb, &y).unwrap_err();
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
    assert!(matches!(
        sq.perturb(&mut net, &x, &y3),
        Err(AttackError::BatchMismatch { n: 2, .. })
    ));
    let yb = b.from_vec(&[2], vec![0.0, 4.0]).unwrap();
    assert!(matches!(
        sq.perturb(&mut net, &x, &yb),
        Err(AttackError::InvalidLabel { index: 1, .. })
    ));
    let xs = b.full(&[2, 1, 5, 5], 0.5).unwrap();
    assert!(matches!(
        sq.perturb(&mut net, &xs, &y),
        Err(AttackError::Model(_))
    ));
    // An empty batch is fine.
    let x0 = b.full(&[0, 1, 4, 4], 0.5).unwrap();
    let y0 = b.from_vec(&[0], vec![]).unwrap();
    let (res, q) = sq.perturb_with_queries(&mut net, &x0, &y0).unwrap();
    assert!(res.is_empty() && q.is_empty());
    assert_eq!(Attack::<Cpu>::name(&sq), "square");
}

#[test]
fn the_schedule_follows_the_paper() {
    let sq = Square::linf(8.0 / 255.0, 5_000).unwrap();
    // 5,000 queries: the thresholds at iterations 10, 50, … of 10,000 fall at 5, 25, ….
    assert_eq!(sq.p_at(0), 0.8);
    assert_eq!(sq.p_at(5), 0.8);
    assert_eq!(sq.p_at(6), 0.4);
    assert_eq!(sq.p_at(25), 0.4);
    assert_eq!(sq.p_at(26), 0.2);
    assert_eq!(sq.p_at(4_999), 0.8 / 512.0);
    assert_eq!(Square::l2(0.5, 100).unwrap().p_init(0.1).p_at(0), 0.1);
}
