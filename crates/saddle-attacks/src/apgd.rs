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
        let z = m.logits(&x_adv)?;
        let predictions = argmax_rows(&b.to_vec(&z)?, k);
        let yt = b.from_vec(&[n], labels.iter().map(|&c| c as f32).collect())?;
        let loss = match self.loss {
            ApgdLoss::CrossEntropy => b.to_vec(&b.cross_entropy(&z, &yt)?)?,
            ApgdLoss::Dlr | ApgdLoss::DlrTargeted => b.to_vec(&b.dlr_loss(&z, &yt, None)?)?,
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
    ///
    /// The iterates, the gradients and the best points stay backend tensors, updated per
    /// example with [`Backend::select_rows`]; only per-example vectors (the objective, the
    /// predictions) come back to the host each step.
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
        let x0t = b.from_vec(dims, x0.to_vec())?;
        let yt = b.from_vec(&[n], y.iter().map(|&c| c as f32).collect())?;
        let tt = targets
            .map(|t| b.from_vec(&[n], t.iter().map(|&c| c as f32).collect()))
            .transpose()?;
        let checkpoints = self.checkpoints();
        let eps = self.threat.eps();
        let mask =
            |v: &[bool]| b.from_vec(&[n], v.iter().map(|&f| f32::from(u8::from(f))).collect());

        let mut x = self.threat.random_init(b, &x0t, rng)?;
        let mut step_no = 0usize;
        let mut eval = |xt: &B::Tensor| -> Result<(Vec<f32>, B::Tensor, Vec<usize>)> {
            let r = self.objective_and_grad(m, xt, y, &yt, tt.as_ref(), step_no);
            step_no += 1;
            r
        };
        let (mut loss, mut grad, pred) = eval(&x)?;
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
            let z = self.threat.step_per_example(b, &x, &grad, &eta)?;
            let z = self.threat.project(b, &z, &x0t)?;
            // x + a·(z − x) + (1 − a)·(x − x_old), in this order (as f32 on the host before).
            let towards = b.affine(&b.sub(&z, &x)?, a, 0.0)?;
            let momentum = b.affine(&b.sub(&x, &x_old)?, 1.0 - a, 0.0)?;
            let mixed = b.add(&b.add(&x, &towards)?, &momentum)?;
            let next = self.threat.project(b, &mixed, &x0t)?;
            x_old = std::mem::replace(&mut x, next);
            let (l, g, pred) = eval(&x)?;
            let adv: Vec<bool> = (0..n).map(|i| pred[i] != y[i]).collect();
            if adv.iter().any(|&v| v) {
                x_best_adv = b.select_rows(&mask(&adv)?, &x, &x_best_adv)?;
            }
            let mut improved = vec![false; n];
            for i in 0..n {
                found[i] |= adv[i];
                if l[i] > loss[i] {
                    increases[i] += 1;
                }
                if l[i] > loss_best[i] {
                    loss_best[i] = l[i];
                    improved[i] = true;
                }
            }
            if improved.iter().any(|&v| v) {
                let keep = mask(&improved)?;
                x_best = b.select_rows(&keep, &x, &x_best)?;
                grad_best = b.select_rows(&keep, &g, &grad_best)?;
            }
            loss = l;
            grad = g;
            if next_check < checkpoints.len() && it + 1 == checkpoints[next_check] {
                let mut reduce = vec![false; n];
                for i in 0..n {
                    let oscillating = increases[i] as f32 <= window as f32 * self.rho;
                    let stalled = !reduced_last[i] && best_last[i] >= loss_best[i];
                    reduce[i] = oscillating || stalled;
                    reduced_last[i] = reduce[i];
                    best_last[i] = loss_best[i];
                    if reduce[i] {
                        eta[i] /= 2.0;
                    }
                }
                if reduce.iter().any(|&v| v) {
                    let back = mask(&reduce)?;
                    x = b.select_rows(&back, &x_best, &x)?;
                    grad = b.select_rows(&back, &grad_best, &grad)?;
                }
                increases.iter_mut().for_each(|c| *c = 0);
                next_check += 1;
                window = checkpoints
                    .get(next_check)
                    .map_or(usize::MAX, |&c| c - checkpoints[next_check - 1]);
            }
            b.step_end()?;
        }
        Ok(Found {
            found,
            x_best_adv: b.to_vec(&x_best_adv)?,
            x_best: b.to_vec(&x_best)?,
        })
    }

    /// The per-example objective at the batch `xt`, the gradient of its sum with respect to
    /// `xt` (left on the backend), and the predictions. A NaN in the gradient is found from
    /// its per-example norms (NaN exactly where a row holds a NaN); only then is the gradient
    /// read back, to name the element.
    fn objective_and_grad<B: Backend>(
        &self,
        m: &dyn Classifier<B>,
        xt: &B::Tensor,
        y: &[usize],
        yt: &B::Tensor,
        targets: Option<&B::Tensor>,
        step: usize,
    ) -> Result<(Vec<f32>, B::Tensor, Vec<usize>)> {
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
                let z = g.value(f.logits);
                let loss = b.to_vec(&b.dlr_loss(&z, yt, targets)?)?;
                let ones = b.full(&[y.len()], 1.0)?;
                let seed = b.dlr_loss_backward(&z, yt, targets, &ones)?;
                let mut grads = g.backward_with(f.logits, seed)?;
                let gx = grads.take(xv).ok_or_else(|| AttackError::NonFinite {
                    attack: self.label(),
                    what: "the input gradient (none reached the input)",
                    index: 0,
                    value: f32::NAN,
                })?;
                (loss, gx, b.to_vec(&z)?)
            }
        };
        let norms = b.to_vec(&b.l2_norms(&gx)?)?;
        if norms.iter().any(|v| v.is_nan()) {
            let gh = b.to_vec(&gx)?;
            if let Some(index) = gh.iter().position(|v| v.is_nan()) {
                let per = gh.len() / y.len().max(1);
                return Err(AttackError::NanGradient {
                    attack: self.label(),
                    restart: 0,
                    step,
                    index,
                    example: index / per.max(1),
                });
            }
        }
        Ok((loss, gx, argmax_rows(&logits, k)))
    }
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

    /// The DLR loss APGD ascends is the backends' `dlr_loss` (checked against its float64
    /// reference and finite differences in the op suite): invariant to shifting and scaling the
    /// logits, negative when the example is correctly classified.
    #[test]
    fn dlr_is_invariant_to_shift_and_scale_and_negative_when_correct() {
        use saddle_tensor::cpu::Cpu;
        let b = Cpu::new();
        let dlr = |z: &[f32], y: f32| -> f32 {
            let zt = b.from_vec(&[1, 4], z.to_vec()).unwrap();
            let yt = b.from_vec(&[1], vec![y]).unwrap();
            b.to_vec(&b.dlr_loss(&zt, &yt, None).unwrap()).unwrap()[0]
        };
        let z = [0.3f32, 2.0, -1.0, 0.9];
        let moved: Vec<f32> = z.iter().map(|v| 3.0 * v + 7.0).collect();
        let (a, m) = (dlr(&z, 1.0), dlr(&moved, 1.0));
        assert!((a - m).abs() < 1e-6, "{a} {m}");
        assert!(a < 0.0, "correctly classified: negative DLR");
        assert!(dlr(&z, 0.0) > 0.0, "misclassified: positive DLR");
    }
}
