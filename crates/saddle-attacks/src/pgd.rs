//! Projected gradient descent (on the negative loss) over any threat model, and FGSM as its
//! one-step special case.

use saddle_models::{loss_and_input_grad, Classifier, Loss};
use saddle_tensor::{rng::Rng, Backend, TensorLike};

use crate::attack::{
    argmax_rows, argmin_rows, check_batch, Attack, AttackResult, LossTrace, ModeGuard,
};
use crate::error::{check_alpha, check_eps, AttackError, Result};
use crate::threat::{Linf, ThreatModel, L2};

/// The CW margin loss with κ = 50, the "CW+" attack of the paper's tables (from MadryLab's
/// `mnist_challenge`): `−relu(z_y − max_{j≠y} z_j + 50)`. The margin loss is that of Carlini &
/// Wagner, *Towards Evaluating the Robustness of Neural Networks*, IEEE S&P 2017
/// (arXiv:1608.04644), used here inside PGD as in Madry et al.
pub const CW_PLUS: Loss = Loss::Cw { kappa: 50.0 };

/// Which class an attack aims for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Targeting {
    /// Any wrong class: ascend the loss of the true label.
    #[default]
    Untargeted,
    /// The class the model finds least likely on the clean input (Kurakin et al. 2017's
    /// "iterative least-likely class"): descend the loss of that class.
    LeastLikely,
}

/// Projected gradient descent, Madry, Makelov, Schmidt, Tsipras & Vladu, *Towards Deep Learning
/// Models Resistant to Adversarial Attacks*, ICLR 2018 (arXiv:1706.06083), generic over the
/// [`ThreatModel`]:
///
/// ```text
/// x ← random_init(x0)  (or x0)
/// repeat steps:  x ← project_{x0}( step(x, ∇ₓ Σ_batch L(x, y), α) )
/// ```
///
/// The loss is summed over the batch, as in the paper's code, so each example's step depends on
/// its own gradient only. With several **restarts** the result keeps, per example, the worst
/// case: a restart that makes the example misclassified wins, otherwise the one with the highest
/// loss. Restart `r` draws its random start from a generator derived from the seed and `r` only,
/// so the first `k` restarts of a run with `k + 1` restarts are those of a run with `k`.
///
/// **Paper defaults** (all in `[0, 1]` pixel units, L∞):
/// - MNIST ([`Pgd::mnist`]): ε = 0.3, 40 steps of α = 0.01, random start (evaluation also uses
///   100 steps with 20 restarts, and the CW+ loss [`CW_PLUS`]);
/// - CIFAR-10: ε = 8/255, α = 2/255, random start, 7 steps for training
///   ([`Pgd::cifar_train`]) and 20 for evaluation ([`Pgd::cifar_eval`]).
///
/// **Transfers.** The NaN check of the gradients runs on the device and is read back once per
/// attack, and so is the result: the restarts are merged on the device
/// ([`Backend::restart_merge`], [`Backend::select_rows`]), and the best one's losses,
/// predictions and success are read back after the last restart. So on a GPU backend an L∞ PGD
/// attack reads back the same whatever its number of steps and of restarts (the inputs checked,
/// the result, the check), and uploads one random start per restart; only the options that
/// report per step (early stop, the loss trace) read back at every step (and early stop the
/// best so far after each restart), and [`L2`], whose step and projection run on the host in
/// `f64`, reads the iterate back at every step. When the device reports a
/// non-finite gradient sum, the attack runs again checking every step, so a NaN gradient is
/// still reported with its restart and step.
///
/// Options (builder methods): random start, restarts, early stop per example (an example stops
/// moving once the attack succeeds on it, and the loop ends when all have), targeted mode
/// ([`Targeting::LeastLikely`] or given targets with [`Pgd::perturb_targeted`]: descends the
/// loss of the target), the loss ([`Loss::CrossEntropy`] or [`Loss::Cw`]), the per-step loss
/// trace, and the seed.
#[derive(Clone, Debug)]
pub struct Pgd<T: ThreatModel = Linf> {
    threat: T,
    alpha: f32,
    steps: usize,
    random_start: bool,
    restarts: usize,
    early_stop: bool,
    loss: Loss,
    targeting: Targeting,
    trace: bool,
    seed: u64,
    model_training: bool,
    name: &'static str,
}

impl<T: ThreatModel> Pgd<T> {
    /// PGD over `threat` with `steps` steps of size `alpha`; random start on, one restart, no
    /// early stop, untargeted, cross-entropy, seed 0.
    ///
    /// # Errors
    /// [`AttackError::InvalidStepSize`] unless `alpha` is finite and positive;
    /// [`AttackError::ZeroCount`] for zero steps.
    pub fn new(threat: T, alpha: f32, steps: usize) -> Result<Self> {
        let pgd = Pgd {
            threat,
            alpha,
            steps,
            random_start: true,
            restarts: 1,
            early_stop: false,
            loss: Loss::CrossEntropy,
            targeting: Targeting::Untargeted,
            trace: false,
            seed: 0,
            model_training: false,
            name: "pgd",
        };
        pgd.validate()?;
        Ok(pgd)
    }

    /// Starts from a uniform random point of the ball (`true`, the default) or from `x0`.
    pub fn random_start(mut self, on: bool) -> Self {
        self.random_start = on;
        self
    }

    /// Runs `restarts` times (at least 1, checked when attacking) and keeps the worst case per
    /// example.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.restarts = restarts;
        self
    }

    /// Stops moving an example once the attack succeeds on it (off by default).
    pub fn early_stop(mut self, on: bool) -> Self {
        self.early_stop = on;
        self
    }

    /// The loss to ascend (cross-entropy by default; [`CW_PLUS`] for the paper's CW+).
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// Untargeted (default) or towards the least-likely class.
    pub fn targeting(mut self, targeting: Targeting) -> Self {
        self.targeting = targeting;
        self
    }

    /// Records the objective of every example at every iterate ([`AttackResult::trace`]).
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// The seed of the random starts (0 by default).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs the model in training mode (batch norm on each batch's statistics; the running
    /// statistics are not updated) instead of evaluation mode, and restores the caller's mode
    /// afterwards. For crafting *training* examples as MadryLab's code did; evaluations never
    /// set it.
    pub fn model_in_training_mode(mut self, on: bool) -> Self {
        self.model_training = on;
        self
    }

    /// The threat model.
    pub fn threat(&self) -> &T {
        &self.threat
    }

    /// The step size α.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The number of steps.
    pub fn steps(&self) -> usize {
        self.steps
    }

    fn validate(&self) -> Result<()> {
        check_eps(self.name, self.threat.eps())?;
        check_alpha(self.name, self.alpha)?;
        self.validate_common()?;
        if self.steps == 0 {
            return Err(AttackError::ZeroCount {
                attack: self.name,
                what: "steps",
            });
        }
        Ok(())
    }

    fn validate_common(&self) -> Result<()> {
        if self.restarts == 0 {
            return Err(AttackError::ZeroCount {
                attack: self.name,
                what: "restarts",
            });
        }
        if let Loss::Cw { kappa } = self.loss {
            if !kappa.is_finite() {
                return Err(AttackError::InvalidKappa {
                    attack: self.name,
                    kappa,
                });
            }
        }
        Ok(())
    }

    /// A targeted attack towards the given classes `targets` (`[n]`, class indices as `f32`):
    /// descends the loss of the target. Success means the model predicts the target; the
    /// reported loss is the negated loss of the target. The [`Targeting`] option is ignored.
    ///
    /// # Errors
    /// As [`Attack::perturb`], with `targets` checked like labels.
    pub fn perturb_targeted<B: Backend>(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        targets: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.validate()?;
        self.run(model, x, targets, Goal::Towards)
    }

    /// The attack loop, parameters already checked (α may be 0 for FGSM with ε = 0).
    fn run<B: Backend>(
        &self,
        model: &mut dyn Classifier<B>,
        x0: &B::Tensor,
        y: &B::Tensor,
        goal: Goal,
    ) -> Result<AttackResult<B>> {
        let what = if goal == Goal::Towards {
            "targets"
        } else {
            "labels"
        };
        let (n, labels) = check_batch(self.name, model, x0, y, what)?;
        let b = model.backend().clone();
        if n == 0 {
            let trace = self.trace.then(|| LossTrace { losses: Vec::new() });
            let (loss, success, predictions) = (Vec::new(), Vec::new(), Vec::new());
            return Ok(AttackResult {
                x_adv: x0.clone(),
                loss,
                success,
                predictions,
                trace,
            });
        }
        let model = ModeGuard::set(model, self.model_training);
        let m: &dyn Classifier<B> = &*model;
        let k = m.num_classes();

        // The labels whose loss the attack ascends (untargeted) or descends (targeted).
        let (aim, aim_t) = match (goal, self.targeting) {
            (Goal::Towards, _) => (labels, y.clone()),
            (Goal::Labels, Targeting::Untargeted) => (labels, y.clone()),
            (Goal::Labels, Targeting::LeastLikely) => {
                let ll = argmin_rows(&b.to_vec(&m.logits(x0)?)?, k);
                let t = b.from_vec(&[n], ll.iter().map(|&c| c as f32).collect())?;
                (ll, t)
            }
        };
        let targeted = goal == Goal::Towards || self.targeting == Targeting::LeastLikely;
        let aim = Aim {
            labels: &aim,
            tensor: &aim_t,
            targeted,
            classes: k,
        };
        // Reused by the NaN checks, so the steady-state loop allocates nothing.
        let mut scratch: Vec<f32> = Vec::with_capacity(1);
        // First with the NaN check on the device (nothing read back per step), then, only if
        // that found a non-finite gradient sum or failed, again checking on the host at every
        // step: the attack is deterministic, so the second run stops at the first NaN gradient
        // with its restart and step, exactly as a check at every step would have.
        if let Ok((result, total)) =
            self.restarts_loop(&b, m, x0, &aim, NanCheck::Deferred, &mut scratch)
        {
            let finite = match total {
                Some(t) => {
                    b.to_vec_into(&t, &mut scratch)?;
                    scratch.first().is_none_or(|v| v.is_finite())
                }
                None => true,
            };
            if finite {
                return Ok(result);
            }
        }
        self.restarts_loop(&b, m, x0, &aim, NanCheck::EveryStep, &mut scratch)
            .map(|(result, _)| result)
    }

    /// The restarts and their steps: the result and, with [`NanCheck::Deferred`], the sum over
    /// all steps of the sums of the gradients, on the device (not finite if some gradient may
    /// hold a NaN; the caller reads it once and runs again with [`NanCheck::EveryStep`]).
    ///
    /// The strongest restart so far stays on the device: each restart is merged into it there
    /// ([`Backend::restart_merge`] for the objective, prediction and success of each example,
    /// [`Backend::select_rows`] for its image, both exact), and it is read back once, after the
    /// last restart. Only early stop (which must know whether every example has succeeded)
    /// reads it back after each restart, and the trace each restart's losses.
    fn restarts_loop<B: Backend>(
        &self,
        b: &B,
        m: &dyn Classifier<B>,
        x0: &B::Tensor,
        aim: &Aim<'_, B>,
        check: NanCheck,
        scratch: &mut Vec<f32>,
    ) -> Result<(AttackResult<B>, Option<B::Tensor>)> {
        let n = aim.labels.len();
        let sign = if aim.targeted { -1.0f32 } else { 1.0 };
        let mut base = Rng::new(self.seed);
        let mut best: Option<Best<B>> = None;
        let mut traces = Vec::new();
        // Σ over steps of Σ g (deferred check): finite unless some gradient had a NaN or an
        // infinity (or the sums overflowed), which the checked run then tells apart.
        let mut nan = NanState {
            check,
            scratch,
            total: None,
        };
        for r in 0..self.restarts {
            let run = self.restart(m, x0, aim, r, base.fork(r as u64), &mut nan)?;
            if let Some(mut trace) = run.trace {
                if !run.stopped {
                    trace.push(b.to_vec(&run.loss)?.into_iter().map(|v| sign * v).collect());
                }
                traces.push(trace);
            }
            let merged = merge_best(b, best.take(), run.x, &run.logits, &run.loss, aim)?;
            if self.early_stop {
                let host = b.to_vec(&merged.state)?;
                if host[2 * n..].iter().all(|&s| s != 0.0) {
                    best = Some(merged);
                    break;
                }
            }
            best = Some(merged);
        }
        let best = best.expect("at least one restart ran");
        // The one read-back of the result: objectives, predictions and success, [3, n].
        let mut loss = b.to_vec(&best.state)?;
        let predictions = loss[n..2 * n].iter().map(|&p| p as usize).collect();
        let success = loss[2 * n..].iter().map(|&s| s != 0.0).collect();
        loss.truncate(n);
        let result = AttackResult {
            x_adv: best.x,
            loss,
            success,
            predictions,
            trace: self.trace.then_some(LossTrace { losses: traces }),
        };
        Ok((result, nan.total))
    }

    /// Restart `r` from its generator `rng`: its steps, then the logits and per-example loss
    /// (sign not applied) of its last iterate, on the device.
    fn restart<B: Backend>(
        &self,
        m: &dyn Classifier<B>,
        x0: &B::Tensor,
        aim: &Aim<'_, B>,
        r: usize,
        mut rng: Rng,
        nan: &mut NanState<'_, B>,
    ) -> Result<Restart<B>> {
        let b = m.backend();
        let n = aim.labels.len();
        let k = aim.classes;
        let targeted = aim.targeted;
        let sign = if targeted { -1.0f32 } else { 1.0 };
        let succeeded = |pred: usize, i: usize| (pred == aim.labels[i]) == targeted;
        let mut x = if self.random_start && self.threat.eps() > 0.0 {
            self.threat.random_init(b, x0, &mut rng)?
        } else {
            x0.clone()
        };
        let mut frozen = vec![false; n];
        let mut trace = Vec::new();
        let mut stopped = false;
        for step in 0..self.steps {
            let (per, g, logits) = loss_and_input_grad(m, &x, aim.tensor, self.loss)?;
            if self.trace {
                trace.push(b.to_vec(&per)?.into_iter().map(|v| sign * v).collect());
            }
            if self.early_stop {
                let pred = argmax_rows(&b.to_vec(&logits)?, k);
                for i in 0..n {
                    frozen[i] |= succeeded(pred[i], i);
                }
                if frozen.iter().all(|&f| f) {
                    stopped = true;
                    break;
                }
            }
            let g = if targeted {
                b.affine(&g, -1.0, 0.0)?
            } else {
                g
            };
            match nan.check {
                NanCheck::EveryStep => check_gradient(b, &g, nan.scratch, self.name, r, step)?,
                NanCheck::Deferred => {
                    let s = gradient_sum(b, &g)?;
                    nan.total = Some(match nan.total.take() {
                        None => s,
                        Some(t) => b.add(&t, &s)?,
                    });
                }
            }
            let next = self.threat.step_and_project(b, &x, x0, &g, self.alpha)?;
            x = if frozen.iter().any(|&f| f) {
                select(b, &frozen, &x, &next)?
            } else {
                next
            };
            b.step_end()?;
        }
        let logits = m.logits(&x)?;
        let loss = match self.loss {
            Loss::CrossEntropy => b.cross_entropy(&logits, aim.tensor)?,
            Loss::Cw { kappa } => b.cw_loss(&logits, aim.tensor, kappa)?,
        };
        Ok(Restart {
            x,
            logits,
            loss,
            trace: self.trace.then_some(trace),
            stopped,
        })
    }
}

/// One restart's end, on the device.
struct Restart<B: Backend> {
    /// The last iterate.
    x: B::Tensor,
    /// Its logits, `[n, classes]`.
    logits: B::Tensor,
    /// Its per-example loss, `[n]`, sign not applied.
    loss: B::Tensor,
    /// The objective at every iterate, with the trace option (the last iterate's not yet).
    trace: Option<Vec<Vec<f32>>>,
    /// Early stop ended the steps (the last iterate's objective is already in the trace).
    stopped: bool,
}

/// The strongest restart so far, per example, on the device.
struct Best<B: Backend> {
    /// The images.
    x: B::Tensor,
    /// `[3, n]`: objective (the loss, negated when targeted), prediction and success (1 or 0),
    /// as [`Backend::restart_merge`] keeps them.
    state: B::Tensor,
}

/// How the NaN check of the gradients runs, and what it carries across restarts.
struct NanState<'a, B: Backend> {
    check: NanCheck,
    /// Reused by the per-step check's read-backs.
    scratch: &'a mut Vec<f32>,
    /// The deferred check's sum over all steps so far.
    total: Option<B::Tensor>,
}

/// Per example, the stronger of `best` and the restart that ended at `x` with `logits` and
/// `loss`: success first, then the higher objective; ties keep `best` (the earlier restart). On
/// the device and exact ([`Backend::restart_merge`], then [`Backend::select_rows`] with its
/// mask, the rows' bits unchanged), so nothing is read back or uploaded per restart.
fn merge_best<B: Backend>(
    b: &B,
    best: Option<Best<B>>,
    x: B::Tensor,
    logits: &B::Tensor,
    loss: &B::Tensor,
    aim: &Aim<'_, B>,
) -> Result<Best<B>> {
    let (take, state) = b.restart_merge(
        best.as_ref().map(|c| &c.state),
        logits,
        loss,
        aim.tensor,
        aim.targeted,
    )?;
    let x = match best {
        None => x,
        Some(cur) => b.select_rows(&take, &x, &cur.x)?,
    };
    Ok(Best { x, state })
}

/// What the attack aims at: the classes whose loss it ascends (untargeted) or descends.
struct Aim<'a, B: Backend> {
    /// On the host, one per example.
    labels: &'a [usize],
    /// The same on the device (`[n]`).
    tensor: &'a B::Tensor,
    targeted: bool,
    classes: usize,
}

/// Where the attack looks for NaN gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NanCheck {
    /// On the device, read back once per attack (no transfer per step).
    Deferred,
    /// On the host after every step (one scalar read back per step), naming the step.
    EveryStep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// `y` holds the true labels; the [`Targeting`] option decides.
    Labels,
    /// `y` holds the targets.
    Towards,
}

/// Per example `i`, `a[i]` where `keep_a[i]`, else `b[i]`; exact for finite values
/// (`v·1 = v`, `v·0 = ±0`, `v + ±0 = v`).
fn select<B: Backend>(be: &B, keep_a: &[bool], a: &B::Tensor, b: &B::Tensor) -> Result<B::Tensor> {
    let mut shape = vec![1usize; a.dims().len()];
    shape[0] = keep_a.len();
    let ma = be.from_vec(
        &shape,
        keep_a.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect(),
    )?;
    let mb = be.affine(&ma, -1.0, 1.0)?;
    Ok(be.add(&be.mul(a, &ma)?, &be.mul(b, &mb)?)?)
}

/// `Σ g` on the device (a tensor of one element): not finite if `g` holds a NaN.
fn gradient_sum<B: Backend>(b: &B, g: &B::Tensor) -> Result<B::Tensor> {
    let flat = b.reshape(g, &[g.numel()])?;
    Ok(b.sum_axes(&flat, &[0], false)?)
}

/// Fails with [`AttackError::NanGradient`] if `g` has a NaN entry. One reduction on the device;
/// the gradient is read back only when the sum is not finite.
fn check_gradient<B: Backend>(
    b: &B,
    g: &B::Tensor,
    scratch: &mut Vec<f32>,
    attack: &'static str,
    restart: usize,
    step: usize,
) -> Result<()> {
    b.to_vec_into(&gradient_sum(b, g)?, scratch)?;
    if scratch.first().is_none_or(|v| v.is_finite()) {
        return Ok(());
    }
    let host = b.to_vec(g)?;
    match host.iter().position(|v| v.is_nan()) {
        None => Ok(()), // infinite entries or an overflowing sum: sign() handles them
        Some(index) => {
            let per = host.len() / g.dims().first().copied().unwrap_or(1).max(1);
            Err(AttackError::NanGradient {
                attack,
                restart,
                step,
                index,
                example: index / per.max(1),
            })
        }
    }
}

impl Pgd<Linf> {
    /// L∞ PGD with radius `eps`, step `alpha`, `steps` steps (random start on).
    ///
    /// # Errors
    /// As [`Linf::new`] and [`Pgd::new`].
    pub fn linf(eps: f32, alpha: f32, steps: usize) -> Result<Self> {
        Pgd::new(Linf::new(eps)?, alpha, steps)
    }

    /// The paper's MNIST attack: ε = 0.3, 40 steps of 0.01, random start.
    pub fn mnist() -> Self {
        Pgd::linf(0.3, 0.01, 40).expect("the paper's parameters are valid")
    }

    /// The paper's CIFAR-10 training attack: ε = 8/255, 7 steps of 2/255, random start.
    pub fn cifar_train() -> Self {
        Pgd::linf(8.0 / 255.0, 2.0 / 255.0, 7).expect("the paper's parameters are valid")
    }

    /// The paper's CIFAR-10 evaluation attack: ε = 8/255, 20 steps of 2/255, random start.
    pub fn cifar_eval() -> Self {
        Pgd::linf(8.0 / 255.0, 2.0 / 255.0, 20).expect("the paper's parameters are valid")
    }
}

impl Pgd<L2> {
    /// L2 PGD with radius `eps`, step `alpha`, `steps` steps (random start on).
    ///
    /// # Errors
    /// As [`L2::new`] and [`Pgd::new`].
    pub fn l2(eps: f32, alpha: f32, steps: usize) -> Result<Self> {
        Pgd::new(L2::new(eps)?, alpha, steps)
    }
}

impl<B: Backend, T: ThreatModel> Attack<B> for Pgd<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.validate()?;
        self.run(model, x, y, Goal::Labels)
    }
}

/// The fast gradient sign method, Goodfellow, Shlens & Szegedy, *Explaining and Harnessing
/// Adversarial Examples*, ICLR 2015 (arXiv:1412.6572): one step of size ε from `x0`, no random
/// start, `x_adv = clip_[0,1](x0 + ε·sign(∇ₓ Σ_batch L(x0, y)))`. It equals one step of
/// [`Pgd`] with α = ε from `x0`, exactly.
///
/// **Paper defaults**: MNIST ε = 0.3 ([`Fgsm::mnist`]); CIFAR-10 ε = 8/255 ([`Fgsm::cifar`]).
/// Madry et al. use it to evaluate (MNIST: 95.6% accuracy of the robust model under FGSM) and
/// as the weaker training attack of the capacity study.
#[derive(Clone, Debug)]
pub struct Fgsm {
    pgd: Pgd<Linf>,
}

impl Fgsm {
    /// FGSM with radius `eps` (cross-entropy, untargeted).
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] if `eps` is negative, NaN or infinite.
    pub fn new(eps: f32) -> Result<Self> {
        check_eps("fgsm", eps)?;
        let pgd = Pgd {
            threat: Linf::new(eps)?,
            alpha: eps,
            steps: 1,
            random_start: false,
            restarts: 1,
            early_stop: false,
            loss: Loss::CrossEntropy,
            targeting: Targeting::Untargeted,
            trace: false,
            seed: 0,
            model_training: false,
            name: "fgsm",
        };
        Ok(Fgsm { pgd })
    }

    /// The paper's MNIST FGSM: ε = 0.3.
    pub fn mnist() -> Self {
        Fgsm::new(0.3).expect("the paper's parameters are valid")
    }

    /// The paper's CIFAR-10 FGSM: ε = 8/255.
    pub fn cifar() -> Self {
        Fgsm::new(8.0 / 255.0).expect("the paper's parameters are valid")
    }

    /// The loss to ascend (cross-entropy by default).
    pub fn loss(mut self, loss: Loss) -> Self {
        self.pgd.loss = loss;
        self
    }

    /// Untargeted (default) or towards the least-likely class ("step l.l." of Kurakin et al.).
    pub fn targeting(mut self, targeting: Targeting) -> Self {
        self.pgd.targeting = targeting;
        self
    }

    /// As [`Pgd::model_in_training_mode`].
    pub fn model_in_training_mode(mut self, on: bool) -> Self {
        self.pgd.model_training = on;
        self
    }

    /// The radius ε.
    pub fn eps(&self) -> f32 {
        self.pgd.threat.eps()
    }

    /// A targeted FGSM step towards `targets` (see [`Pgd::perturb_targeted`]).
    ///
    /// # Errors
    /// As [`Attack::perturb`].
    pub fn perturb_targeted<B: Backend>(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        targets: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.pgd.validate_common()?;
        self.pgd.run(model, x, targets, Goal::Towards)
    }
}

impl<B: Backend> Attack<B> for Fgsm {
    fn name(&self) -> &'static str {
        "fgsm"
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.pgd.validate_common()?;
        self.pgd.run(model, x, y, Goal::Labels)
    }
}

/// A restart's result on the host: what the attack merged before the merge moved to the device,
/// kept as the reference of the tests.
#[cfg(test)]
struct Candidate<B: Backend> {
    x: B::Tensor,
    loss: Vec<f32>,
    success: Vec<bool>,
    predictions: Vec<usize>,
}

/// The merge as it was on the host (the tests' reference of [`merge_best`]): per example, the
/// stronger of `cur` and `cand`, success first, then the higher objective; ties keep `cur` (the
/// earlier restart). The images are selected on the device ([`Backend::select_rows`]) with a
/// mask uploaded.
#[cfg(test)]
fn merge<B: Backend>(b: &B, cur: Candidate<B>, cand: Candidate<B>) -> Result<Candidate<B>> {
    let take: Vec<bool> = (0..cur.loss.len())
        .map(|i| {
            (cand.success[i] && !cur.success[i])
                || (cand.success[i] == cur.success[i] && cand.loss[i] > cur.loss[i])
        })
        .collect();
    let mask = b.from_vec(
        &[take.len()],
        take.iter().map(|&t| if t { 1.0 } else { 0.0 }).collect(),
    )?;
    let pick = |i: usize| take[i];
    Ok(Candidate {
        x: b.select_rows(&mask, &cand.x, &cur.x)?,
        loss: (0..take.len())
            .map(|i| if pick(i) { cand.loss[i] } else { cur.loss[i] })
            .collect(),
        success: (0..take.len())
            .map(|i| {
                if pick(i) {
                    cand.success[i]
                } else {
                    cur.success[i]
                }
            })
            .collect(),
        predictions: (0..take.len())
            .map(|i| {
                if pick(i) {
                    cand.predictions[i]
                } else {
                    cur.predictions[i]
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_autograd::{Graph, Var};
    use saddle_models::{layers::Ctx, Forward, ParamSet};
    use saddle_tensor::cpu::{Cpu, CpuTensor};

    fn cand(b: &Cpu, fill: f32, loss: [f32; 4], success: [bool; 4]) -> Candidate<Cpu> {
        Candidate {
            x: b.full(&[4, 1, 1, 2], fill).unwrap(),
            loss: loss.to_vec(),
            success: success.to_vec(),
            predictions: vec![fill as usize; 4],
        }
    }

    #[test]
    fn a_misclassified_restart_wins_else_the_higher_loss_ties_keep_the_first() {
        let b = Cpu::new();
        let cur = cand(&b, 0.25, [1.0, 1.0, 5.0, 2.0], [true, false, false, false]);
        let new = cand(&b, 0.75, [5.0, 2.0, 0.1, 2.0], [false, false, true, false]);
        let m = merge(&b, cur, new).unwrap();
        // 0: cur succeeded, new has a higher loss but did not: keep cur.
        // 1: neither succeeded, new has the higher loss: take new.
        // 2: new succeeded with a lower loss: take new.
        // 3: a tie: keep cur (the earlier restart).
        assert_eq!(m.loss, vec![1.0, 2.0, 0.1, 2.0]);
        assert_eq!(m.success, vec![true, false, true, false]);
        assert_eq!(m.predictions, vec![0, 0, 0, 0]);
        let x = b.to_vec(&m.x).unwrap();
        assert_eq!(x, vec![0.25, 0.25, 0.75, 0.75, 0.75, 0.75, 0.25, 0.25]);
    }

    /// The same four cases through the merge the attack runs ([`merge_best`], on the device).
    #[test]
    fn the_device_merge_keeps_the_same_rules() {
        let b = Cpu::new();
        let labels = [0usize; 4];
        let y = b.zeros(&[4]).unwrap();
        let aim = Aim {
            labels: &labels,
            tensor: &y,
            targeted: false,
            classes: 2,
        };
        // The best so far: objectives, predictions (class 1 misclassifies), success.
        let state = b
            .from_vec(
                &[3, 4],
                vec![
                    1.0, 1.0, 5.0, 2.0, // objective
                    1.0, 0.0, 0.0, 0.0, // prediction
                    1.0, 0.0, 0.0, 0.0, // success
                ],
            )
            .unwrap();
        let cur = Best {
            x: b.full(&[4, 1, 1, 2], 0.25).unwrap(),
            state,
        };
        // The new restart: only example 2 predicts class 1.
        let logits = b
            .from_vec(&[4, 2], vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
            .unwrap();
        let loss = b.from_vec(&[4], vec![5.0, 2.0, 0.1, 2.0]).unwrap();
        let x = b.full(&[4, 1, 1, 2], 0.75).unwrap();
        let m = merge_best(&b, Some(cur), x, &logits, &loss, &aim).unwrap();
        let state = b.to_vec(&m.state).unwrap();
        assert_eq!(state[..4], [1.0, 2.0, 0.1, 2.0], "objectives");
        assert_eq!(state[4..8], [1.0, 0.0, 1.0, 0.0], "predictions");
        assert_eq!(state[8..], [1.0, 0.0, 1.0, 0.0], "success");
        let x = b.to_vec(&m.x).unwrap();
        assert_eq!(x, vec![0.25, 0.25, 0.75, 0.75, 0.75, 0.75, 0.25, 0.25]);
    }

    /// flatten → linear → ReLU → linear over `[1, 4, 4]` images and 4 classes, seeded.
    struct Mlp {
        backend: Cpu,
        params: ParamSet<Cpu>,
        training: bool,
    }

    impl Mlp {
        fn new(seed: u64) -> Self {
            let b = Cpu::new();
            let mut rng = Rng::new(seed);
            let mut params = ParamSet::new();
            for (name, dims, fan_in) in [
                ("fc1.weight", vec![16, 16], 16),
                ("fc1.bias", vec![16], 16),
                ("fc2.weight", vec![4, 16], 16),
                ("fc2.bias", vec![4], 16),
            ] {
                let bound = 3.0 / (fan_in as f32).sqrt();
                let n: usize = dims.iter().product();
                let data = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
                params.push(name, b.from_vec(&dims, data).unwrap()).unwrap();
            }
            Mlp {
                backend: b,
                params,
                training: false,
            }
        }
    }

    impl Classifier<Cpu> for Mlp {
        fn backend(&self) -> &Cpu {
            &self.backend
        }
        fn num_classes(&self) -> usize {
            4
        }
        fn input_shape(&self) -> [usize; 3] {
            [1, 4, 4]
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
        fn forward(
            &self,
            g: &Graph<Cpu>,
            x: Var,
            param_grads: bool,
        ) -> saddle_models::Result<Forward> {
            let mut cx = Ctx::new(g, &self.params, param_grads, self.training);
            let p: Vec<Var> = (0..self.params.len()).map(|i| cx.param(i)).collect();
            let h = g.flatten(x)?;
            let h = g.relu(g.linear(h, p[0], Some(p[1]))?)?;
            let logits = g.linear(h, p[2], Some(p[3]))?;
            Ok(cx.finish(logits))
        }
    }

    /// The attack as it ran before the merge moved to the device: every restart's losses and
    /// logits read back, and the restarts merged on the host by [`merge`].
    fn host_merged(
        pgd: &Pgd,
        net: &Mlp,
        x0: &CpuTensor,
        y: &CpuTensor,
        targeted: bool,
    ) -> Candidate<Cpu> {
        let b = Cpu::new();
        let k = net.num_classes();
        let labels: Vec<usize> = b.to_vec(y).unwrap().iter().map(|&v| v as usize).collect();
        let n = labels.len();
        let aim = Aim {
            labels: &labels,
            tensor: y,
            targeted,
            classes: k,
        };
        let sign = if targeted { -1.0f32 } else { 1.0 };
        let mut scratch = Vec::new();
        let mut nan = NanState {
            check: NanCheck::Deferred,
            scratch: &mut scratch,
            total: None,
        };
        let mut base = Rng::new(pgd.seed);
        let mut best: Option<Candidate<Cpu>> = None;
        for r in 0..pgd.restarts {
            let run = pgd
                .restart(net, x0, &aim, r, base.fork(r as u64), &mut nan)
                .unwrap();
            let loss: Vec<f32> = b
                .to_vec(&run.loss)
                .unwrap()
                .into_iter()
                .map(|v| sign * v)
                .collect();
            let predictions = argmax_rows(&b.to_vec(&run.logits).unwrap(), k);
            let success = (0..n)
                .map(|i| (predictions[i] == labels[i]) == targeted)
                .collect();
            let cand = Candidate {
                x: run.x,
                loss,
                success,
                predictions,
            };
            best = Some(match best {
                None => cand,
                Some(cur) => merge(&b, cur, cand).unwrap(),
            });
        }
        best.unwrap()
    }

    /// Several restarts, untargeted and targeted, cross-entropy and CW: the attack (merged on
    /// the device, read back once) returns bit for bit what the host merge returned.
    #[test]
    fn the_device_merge_equals_the_host_merge_bit_for_bit() {
        let b = Cpu::new();
        let classes = 4;
        let mut net = Mlp::new(11);
        let mut rng = Rng::new(5);
        let x = b
            .from_vec(
                &[24, 1, 4, 4],
                (0..24 * 16).map(|_| rng.next_f32()).collect(),
            )
            .unwrap();
        let y = b
            .from_vec(&[24], (0..24).map(|_| rng.below(4) as f32).collect())
            .unwrap();
        let targets = b
            .from_vec(&[24], (0..24).map(|i| (i % classes) as f32).collect())
            .unwrap();
        let mut later_restart_won = false;
        for restarts in [2, 3, 5] {
            for loss in [Loss::CrossEntropy, CW_PLUS] {
                for targeted in [false, true] {
                    let pgd = Pgd::linf(0.1, 0.02, 3)
                        .unwrap()
                        .restarts(restarts)
                        .loss(loss)
                        .seed(restarts as u64);
                    let (got, aim) = if targeted {
                        (
                            pgd.perturb_targeted(&mut net, &x, &targets).unwrap(),
                            &targets,
                        )
                    } else {
                        (pgd.perturb(&mut net, &x, &y).unwrap(), &y)
                    };
                    let want = host_merged(&pgd, &net, &x, aim, targeted);
                    let ctx = format!("{restarts} restarts, {loss:?}, targeted {targeted}");
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got.loss), bits(&want.loss), "loss, {ctx}");
                    assert_eq!(got.success, want.success, "success, {ctx}");
                    assert_eq!(got.predictions, want.predictions, "predictions, {ctx}");
                    let (gx, wx) = (b.to_vec(&got.x_adv).unwrap(), b.to_vec(&want.x).unwrap());
                    assert_eq!(bits(&gx), bits(&wx), "x_adv, {ctx}");
                    // Not vacuous: the first restart alone gives another result somewhere.
                    let one = pgd.clone().restarts(1);
                    let first = if targeted {
                        one.perturb_targeted(&mut net, &x, &targets).unwrap()
                    } else {
                        one.perturb(&mut net, &x, &y).unwrap()
                    };
                    later_restart_won |= bits(&first.loss) != bits(&got.loss);
                }
            }
        }
        assert!(
            later_restart_won,
            "no later restart ever won: the test sees no merge"
        );
    }
}
