//! Auto-PGD: PGD with momentum and a step size that halves itself, the gradient attacks of
//! AutoAttack.

use saddle_autograd::Graph;
use saddle_models::{loss_and_input_grad, Classifier, Loss};
use saddle_tensor::{rng::Rng, Backend, TensorLike};

use crate::attack::{
    argmax_rows, check_batch, gather_rows, ranked, Attack, AttackResult, ModeGuard,
};
use crate::error::{check_eps, AttackError, Result};
use crate::threat::{Linf, ThreatModel, L2};

/// The objective APGD ascends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApgdLoss {
    /// Softmax cross-entropy of the true label (APGD-CE).
    CrossEntropy,
    /// The difference of logits ratio, `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)` with `π` the
    /// classes sorted by decreasing logit: invariant to shifting and scaling the logits
    /// (APGD-DLR). Needs at least 3 classes.
    Dlr,
    /// The targeted DLR loss `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)`, run once for each of the
    /// [`Apgd::target_classes`] classes the model ranks highest after the true one on the clean
    /// input (APGD-T). Success is still any wrong prediction. Needs at least 4 classes.
    DlrTargeted,
}

/// Auto-PGD, Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of
/// diverse parameter-free attacks*, ICML 2020 (arXiv:2003.01690), Algorithm 1, over any
/// [`ThreatModel`]:
///
/// ```text
/// x⁽⁰⁾ random in the ball, η = 2ε
/// z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η·step(∇f(x⁽ᵏ⁾)))
/// x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))   (α = 1 for the first step)
/// ```
///
/// with, per example, the best point kept and, at each checkpoint, the step size halved and the
/// iterate sent back to the best point when the loss rose in at most a fraction ρ of the steps
/// since the last checkpoint, or when neither the step size nor the best loss changed since the
/// last checkpoint. Checkpoints come after `⌊0.22·N⌋` steps, then at intervals shrinking by
/// `⌊0.03·N⌋` down to `⌊0.06·N⌋` (each at least 1).
///
/// **Defaults** (the paper's and AutoAttack's standard version): N = 100 steps, one restart,
/// momentum α = 0.75, ρ = 0.75, seed 0, and for APGD-T the 9 highest-ranked wrong classes as
/// targets. As AutoAttack's code: an example counts as broken as soon as any iterate is
/// misclassified (the result holds that iterate); the objective is the loss of each example
/// (the batch sum's gradient gives each example its own, in evaluation mode). Where AutoAttack
/// starts from `x0 + ε·t/‖t‖∞` with `t` uniform in `[−1, 1]`, this starts from the threat model's
/// [`ThreatModel::random_init`] (uniform in the ball); where its oscillation count compares the
/// first step of the run with an unset entry, this compares it with the starting point.
///
/// Every run after the first (restarts, targets) attacks only the examples not yet broken.
#[derive(Clone, Debug)]
pub struct Apgd<T: ThreatModel = Linf> {
    threat: T,
    steps: usize,
    restarts: usize,
    loss: ApgdLoss,
    target_classes: usize,
    momentum: f32,
    rho: f32,
    seed: u64,
}

impl<T: ThreatModel> Apgd<T> {
    /// APGD-CE over `threat` with `steps` steps; the other settings at their defaults.
    ///
    /// # Errors
    /// [`AttackError::ZeroCount`] for zero steps; ε as [`crate::Pgd::new`].
    pub fn new(threat: T, steps: usize) -> Result<Self> {
        let a = Apgd {
            threat,
            steps,
            restarts: 1,
            loss: ApgdLoss::CrossEntropy,
            target_classes: 9,
            momentum: 0.75,
            rho: 0.75,
            seed: 0,
        };
        a.validate()?;
        Ok(a)
    }

    /// The objective (cross-entropy by default).
    pub fn loss(mut self, loss: ApgdLoss) -> Self {
        self.loss = loss;
        self
    }

    /// Runs this many times per target (1 by default), each on the examples still unbroken.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.restarts = restarts;
        self
    }

    /// APGD-T: how many target classes (9 by default; at most the number of classes − 1).
    pub fn target_classes(mut self, n: usize) -> Self {
        self.target_classes = n;
        self
    }

    /// The seed of the random starts (0 by default).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The threat model.
    pub fn threat(&self) -> &T {
        &self.threat
    }

    /// The number of steps per run.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Runs per target.
    pub fn restart_count(&self) -> usize {
        self.restarts
    }

    /// The objective.
    pub fn objective(&self) -> ApgdLoss {
        self.loss
    }

    /// The number of target classes of APGD-T.
    pub fn target_count(&self) -> usize {
        self.target_classes
    }

    /// The attack's name: `apgd-ce`, `apgd-dlr` or `apgd-t`.
    pub fn label(&self) -> &'static str {
        match self.loss {
            ApgdLoss::CrossEntropy => "apgd-ce",
            ApgdLoss::Dlr => "apgd-dlr",
            ApgdLoss::DlrTargeted => "apgd-t",
        }
    }

    fn validate(&self) -> Result<()> {
        let attack = self.label();
        check_eps(attack, self.threat.eps())?;
        for (what, v) in [
            ("steps", self.steps),
            ("restarts", self.restarts),
            ("target classes", self.target_classes),
        ] {
            if v == 0 {
                return Err(AttackError::ZeroCount { attack, what });
            }
        }
        Ok(())
    }

    /// Checks the number of classes the objective needs.
    fn check_classes(&self, classes: usize) -> Result<()> {
        let need = match self.loss {
            ApgdLoss::CrossEntropy => 2,
            ApgdLoss::Dlr => 3,
            ApgdLoss::DlrTargeted => 4.max(self.target_classes + 1),
        };
        if classes < need {
            return Err(AttackError::TooFewClasses {
                attack: self.label(),
                classes,
                need,
            });
        }
        Ok(())
    }

    /// The checkpoints: the steps after which the step size may halve (0-based counts of steps
    /// done), `⌊0.22·N⌋` then intervals shrinking by `⌊0.03·N⌋` to `⌊0.06·N⌋`, each at least 1.
    pub fn checkpoints(&self) -> Vec<usize> {
        let n = self.steps;
        let (mut k, decr, min) = (
            (22 * n / 100).max(1),
            (3 * n / 100).max(1),
            (6 * n / 100).max(1),
        );
        let mut at = Vec::new();
        let mut t = k;
        while t <= n {
            at.push(t);
            k = k.saturating_sub(decr).max(min);
            t += k;
        }
        at
    }
}

impl Apgd<Linf> {
    /// L∞ APGD-CE with radius `eps` and `steps` steps.
    ///
    /// # Errors
    /// As [`Linf::new`] and [`Apgd::new`].
    pub fn linf(eps: f32, steps: usize) -> Result<Self> {
        Apgd::new(Linf::new(eps)?, steps)
    }
}

impl Apgd<L2> {
    /// L2 APGD-CE with radius `eps` and `steps` steps.
    ///
    /// # Errors
    /// As [`L2::new`] and [`Apgd::new`].
    pub fn l2(eps: f32, steps: usize) -> Result<Self> {
        Apgd::new(L2::new(eps)?, steps)
    }
}

impl<B: Backend, T: ThreatModel> Attack<B> for Apgd<T> {
    fn name(&self) -> &'static str {
        self.label()
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.validate()?;
        let (n, labels) = check_batch(self.label(), model, x, y, "labels")?;
        let b = model.backend().clone();
        self.check_classes(model.num_classes())?;
        if n == 0 {
            return Ok(AttackResult::empty(x));
        }
        let model = ModeGuard::eval(model);
        let m: &dyn Classifier<B> = &*model;
        let k = m.num_classes();
        let x0 = b.to_vec(x)?;
        let d = x0.len() / n;
        let clean = b.to_vec(&m.logits(x)?)?;
        let pred0 = argmax_rows(&clean, k);
        let mut broken: Vec<bool> = (0..n).map(|i| pred0[i] != labels[i]).collect();
        let mut x_out = x0.clone();
        let mut touched = vec![false; n];

        // (target rank, restart) runs: rank 1 is the class the model ranks second.
        let ranks: Vec<Option<usize>> = match self.loss {
            ApgdLoss::DlrTargeted => (1..=self.target_classes).map(Some).collect(),
            _ => vec![None],
        };
        let mut base = Rng::new(self.seed);
        let mut run = 0u64;
        for rank in ranks {
            for _ in 0..self.restarts {
                let mut rng = base.fork(run);
                run += 1;
                let idx: Vec<usize> = (0..n).filter(|&i| !broken[i]).collect();
                if idx.is_empty() {
                    break;
                }
                let sub_x0 = gather_rows(&x0, d, &idx);
                let sub_y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
                let sub_t: Option<Vec<usize>> = rank.map(|r| {
                    idx.iter()
                        .map(|&i| ranked(&clean[i * k..(i + 1) * k])[r])
                        .collect()
                });
                let mut dims = x.dims().to_vec();
                dims[0] = idx.len();
                let out = self.core(m, &dims, &sub_x0, &sub_y, sub_t.as_deref(), &mut rng)?;
                for (j, &i) in idx.iter().enumerate() {
                    let src = if out.found[j] {
                        &out.x_best_adv
                    } else {
                        &out.x_best
                    };
                    if out.found[j] || !touched[i] {
                        x_out[i * d..(i + 1) * d].copy_from_slice(&src[j * d..(j + 1) * d]);
                    }
                    touched[i] = true;
                    broken[i] |= out.found[j];
                }
            }
        }

        // The result at the points returned: predictions, and the objective (for APGD-T, the
        // untargeted DLR loss, since each example may have had several targets).
        let x_adv = b.from_vec(x.dims(), x_out)?;
        let logits = b.to_vec(&m.logits(&x_adv)?)?;
        let predictions = argmax_rows(&logits, k);
        let loss = match self.loss {
            ApgdLoss::CrossEntropy => {
                let yt = b.from_vec(&[n], labels.iter().map(|&c| c as f32).collect())?;
                let z = b.from_vec(&[n, k], logits)?;
                b.to_vec(&b.cross_entropy(&z, &yt)?)?
            }
            ApgdLoss::Dlr | ApgdLoss::DlrTargeted => dlr_loss(&logits, k, &labels, None).0,
        };
        let success = (0..n).map(|i| predictions[i] != labels[i]).collect();
        Ok(AttackResult {
            x_adv,
            loss,
            success,
            predictions,
            trace: None,
        })
    }
}

/// What one run of Algorithm 1 found, per example (row-major, `d` values each).
struct Found {
    /// Whether some iterate was misclassified.
    found: Vec<bool>,
    /// The last misclassified iterate (where `found`).
    x_best_adv: Vec<f32>,
    /// The iterate of highest objective.
    x_best: Vec<f32>,
}

impl<T: ThreatModel> Apgd<T> {
    /// Algorithm 1 on one batch (host rows `x0`, shape `dims`), towards `targets` for APGD-T.
    fn core<B: Backend>(
        &self,
        m: &dyn Classifier<B>,
        dims: &[usize],
        x0: &[f32],
        y: &[usize],
        targets: Option<&[usize]>,
        rng: &mut Rng,
    ) -> Result<Found> {
        let b = m.backend();
        let n = y.len();
        let d = x0.len() / n;
        let x0t = b.from_vec(dims, x0.to_vec())?;
        let yt = b.from_vec(&[n], y.iter().map(|&c| c as f32).collect())?;
        let checkpoints = self.checkpoints();
        let eps = self.threat.eps();

        let start = self.threat.random_init(b, &x0t, rng)?;
        let mut x = b.to_vec(&start)?;
        let mut step_no = 0usize;
        let mut eval = |xt: &B::Tensor| -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
            let r = self.objective_and_grad(m, xt, y, &yt, targets, step_no);
            step_no += 1;
            r
        };
        let (mut loss, mut grad, pred) = eval(&start)?;
        let mut found: Vec<bool> = (0..n).map(|i| pred[i] != y[i]).collect();
        let mut x_best_adv = x.clone();
        let (mut x_best, mut grad_best, mut loss_best) = (x.clone(), grad.clone(), loss.clone());
        let mut eta = vec![2.0 * eps; n];
        let mut x_old = x.clone();
        let mut increases = vec![0usize; n];
        let mut reduced_last = vec![true; n];
        let mut best_last = loss_best.clone();
        let mut window = checkpoints.first().copied().unwrap_or(usize::MAX);
        let mut next_check = 0usize;

        for it in 0..self.steps {
            let a = if it == 0 { 1.0 } else { self.momentum };
            let xt = b.from_vec(dims, x.clone())?;
            let gt = b.from_vec(dims, grad.clone())?;
            let z = self.threat.step_per_example(b, &xt, &gt, &eta)?;
            let z = b.to_vec(&self.threat.project(b, &z, &x0t)?)?;
            let mixed: Vec<f32> = (0..x.len())
                .map(|j| x[j] + a * (z[j] - x[j]) + (1.0 - a) * (x[j] - x_old[j]))
                .collect();
            let mixed = b.from_vec(dims, mixed)?;
            let next = self.threat.project(b, &mixed, &x0t)?;
            x_old = std::mem::replace(&mut x, b.to_vec(&next)?);
            let (l, g, pred) = eval(&next)?;
            for i in 0..n {
                let rows = i * d..(i + 1) * d;
                if pred[i] != y[i] {
                    found[i] = true;
                    x_best_adv[rows.clone()].copy_from_slice(&x[rows.clone()]);
                }
                if l[i] > loss[i] {
                    increases[i] += 1;
                }
                if l[i] > loss_best[i] {
                    loss_best[i] = l[i];
                    x_best[rows.clone()].copy_from_slice(&x[rows.clone()]);
                    grad_best[rows.clone()].copy_from_slice(&g[rows]);
                }
            }
            loss = l;
            grad = g;
            if next_check < checkpoints.len() && it + 1 == checkpoints[next_check] {
                for i in 0..n {
                    let oscillating = increases[i] as f32 <= window as f32 * self.rho;
                    let stalled = !reduced_last[i] && best_last[i] >= loss_best[i];
                    let reduce = oscillating || stalled;
                    reduced_last[i] = reduce;
                    best_last[i] = loss_best[i];
                    if reduce {
                        eta[i] /= 2.0;
                        let rows = i * d..(i + 1) * d;
                        x[rows.clone()].copy_from_slice(&x_best[rows.clone()]);
                        grad[rows.clone()].copy_from_slice(&grad_best[rows]);
                    }
                }
                increases.iter_mut().for_each(|c| *c = 0);
                next_check += 1;
                window = checkpoints
                    .get(next_check)
                    .map_or(usize::MAX, |&c| c - checkpoints[next_check - 1]);
            }
        }
        Ok(Found {
            found,
            x_best_adv,
            x_best,
        })
    }

    /// The per-example objective at the batch `xt`, the gradient of its sum with respect to
    /// `xt` (read back), and the predictions.
    fn objective_and_grad<B: Backend>(
        &self,
        m: &dyn Classifier<B>,
        xt: &B::Tensor,
        y: &[usize],
        yt: &B::Tensor,
        targets: Option<&[usize]>,
        step: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
        let b = m.backend();
        let k = m.num_classes();
        let (loss, gx, logits) = match self.loss {
            ApgdLoss::CrossEntropy => {
                let (per, gx, logits) = loss_and_input_grad(m, xt, yt, Loss::CrossEntropy)?;
                (b.to_vec(&per)?, gx, b.to_vec(&logits)?)
            }
            ApgdLoss::Dlr | ApgdLoss::DlrTargeted => {
                let g = Graph::new(b.clone());
                let xv = g.leaf(xt.clone());
                let f = m.forward(&g, xv, false)?;
                let logits = b.to_vec(&g.value(f.logits))?;
                let (loss, dz) = dlr_loss(&logits, k, y, targets);
                let seed = b.from_vec(&[y.len(), k], dz)?;
                let mut grads = g.backward_with(f.logits, seed)?;
                let gx = grads.take(xv).ok_or_else(|| AttackError::NonFinite {
                    attack: self.label(),
                    what: "the input gradient (none reached the input)",
                    index: 0,
                    value: f32::NAN,
                })?;
                (loss, gx, logits)
            }
        };
        let gx = b.to_vec(&gx)?;
        if let Some(index) = gx.iter().position(|v| v.is_nan()) {
            let per = gx.len() / y.len().max(1);
            return Err(AttackError::NanGradient {
                attack: self.label(),
                restart: 0,
                step,
                index,
                example: index / per.max(1),
            });
        }
        Ok((loss, gx, argmax_rows(&logits, k)))
    }
}

/// The DLR loss per row of `logits` (`[n, k]`) and its gradient with respect to the logits, in
/// `f64` rounded to `f32`: untargeted `−(z_y − max_{i≠y} z_i)/(z_π1 − z_π3 + 10⁻¹²)`, or with
/// `targets` `−(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²)`, `π` the classes by decreasing
/// logit. The caller checks that there are enough classes (3, or 4 with targets).
pub fn dlr_loss(
    logits: &[f32],
    k: usize,
    y: &[usize],
    targets: Option<&[usize]>,
) -> (Vec<f32>, Vec<f32>) {
    let mut loss = Vec::with_capacity(y.len());
    let mut dz = Vec::with_capacity(logits.len());
    for (i, row) in logits.chunks(k).enumerate() {
        let z: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let (l, g) = dlr_row(&z, y[i], targets.map(|t| t[i]));
        loss.push(l as f32);
        dz.extend(g.into_iter().map(|v| v as f32));
    }
    (loss, dz)
}

/// One row of [`dlr_loss`] in `f64`: the loss and its gradient.
fn dlr_row(z: &[f64], y: usize, target: Option<usize>) -> (f64, Vec<f64>) {
    let mut pi: Vec<usize> = (0..z.len()).collect();
    pi.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    let (other, denom, tail): (usize, f64, Vec<(usize, f64)>) = match target {
        None => {
            let other = if pi[0] == y { pi[1] } else { pi[0] };
            (other, z[pi[0]] - z[pi[2]] + 1e-12, vec![(pi[2], 1.0)])
        }
        Some(t) => (
            t,
            z[pi[0]] - 0.5 * (z[pi[2]] + z[pi[3]]) + 1e-12,
            vec![(pi[2], 0.5), (pi[3], 0.5)],
        ),
    };
    let u = z[y] - z[other];
    // ∂/∂z of −u/D: −(∂u)/D + u·(∂D)/D².
    let mut g = vec![0.0f64; z.len()];
    g[y] -= 1.0 / denom;
    g[other] += 1.0 / denom;
    g[pi[0]] += u / (denom * denom);
    for (c, w) in tail {
        g[c] -= w * u / (denom * denom);
    }
    (-u / denom, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_of_100_steps_are_autoattacks() {
        let a = Apgd::linf(0.3, 100).unwrap();
        // k = 22, then intervals 19, 16, 13, 10, 7, 6, 6, ...
        assert_eq!(a.checkpoints(), vec![22, 41, 57, 70, 80, 87, 93, 99]);
        assert_eq!(Apgd::linf(0.3, 1).unwrap().checkpoints(), vec![1]);
    }

    /// The DLR gradients against central finite differences of the loss in `f64`: step 1e-6 on
    /// logits of order 1 gives a truncation error ~1e-12 and a rounding error ~1e-10, so 1e-7 is
    /// a bar a wrong term (of order 0.1 here) cannot meet; the logits are distinct, away from
    /// the sort's kinks.
    #[test]
    fn dlr_gradients_match_finite_differences() {
        let z = [0.3f64, 2.0, -1.0, 0.9, 1.4, -0.2];
        for target in [None, Some(4usize), Some(2)] {
            for y in [1usize, 3] {
                let (_, g) = dlr_row(&z, y, target);
                for c in 0..z.len() {
                    let h = 1e-6;
                    let (mut p, mut m) = (z, z);
                    p[c] += h;
                    m[c] -= h;
                    let fd = (dlr_row(&p, y, target).0 - dlr_row(&m, y, target).0) / (2.0 * h);
                    assert!(
                        (fd - g[c]).abs() < 1e-7,
                        "y {y} target {target:?} class {c}: fd {fd} vs {}",
                        g[c]
                    );
                }
            }
        }
    }

    #[test]
    fn dlr_is_invariant_to_shift_and_scale_and_negative_when_correct() {
        let z = [0.3f32, 2.0, -1.0, 0.9];
        let moved: Vec<f32> = z.iter().map(|v| 3.0 * v + 7.0).collect();
        let (a, _) = dlr_loss(&z, 4, &[1], None);
        let (b, _) = dlr_loss(&moved, 4, &[1], None);
        assert!((a[0] - b[0]).abs() < 1e-6, "{a:?} {b:?}");
        assert!(a[0] < 0.0, "correctly classified: negative DLR");
        let (c, _) = dlr_loss(&z, 4, &[0], None);
        assert!(c[0] > 0.0, "misclassified: positive DLR");
    }
}
