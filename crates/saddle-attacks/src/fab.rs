//! FAB-T: the targeted Fast Adaptive Boundary attack, the minimum-norm attack of AutoAttack.

use saddle_autograd::Graph;
use saddle_models::Classifier;
use saddle_tensor::{rng::Rng, Backend, TensorLike};

use crate::attack::{
    argmax_rows, check_batch, finite_logits, gather_rows, label_margins, ranked, Attack,
    AttackResult, ModeGuard,
};
use crate::error::{check_alpha, check_eps, AttackError, Result};
use crate::threat::{Linf, ThreatModel, L2};

const NAME: &str = "fab-t";

/// The targeted Fast Adaptive Boundary attack (FAB-T), Croce & Hein, *Minimally distorted
/// adversarial examples with a fast adaptive boundary attack*, ICML 2020 (arXiv:1907.02044),
/// in the targeted form AutoAttack runs (Croce & Hein, ICML 2020, arXiv:2003.01690), for the
/// L∞ ([`Fab::linf`]) and L2 ([`Fab::l2`]) threat models.
///
/// FAB looks for the adversarial point **closest** to `x0`; ε enters only at the end. For each
/// target `t` (the [`Fab::target_classes`] classes the model ranks highest after the true one
/// on the clean input) and each restart, on the examples not yet broken:
///
/// ```text
/// x ← x0 (first restart) or a random point within ε/2 of x0 (later restarts)
/// repeat steps times:
///     f = z_t − z_y at x, w = ∇ₓf                         (the linearised boundary w·(x'−x)+f = 0)
///     δ  = argmin ‖δ‖ s.t. w·δ = −f,              x + δ ∈ [0, 1]   (minimal step from x)
///     δ₀ = argmin ‖δ‖ s.t. w·δ = −f − w·(x0 − x), x0 + δ ∈ [0, 1]  (the same from x0)
///     α = min(‖δ‖ / (‖δ‖ + ‖δ₀‖), α_max)
///     x ← clip₀₁((1 − α)(x + η·δ) + α(x0 + η·δ₀))
///     if x is misclassified: keep it if closest so far; x ← (1 − β)·x0 + β·x
/// ```
///
/// The box-constrained projections are exact (`f64`, by sorting): for L∞ the smallest radius
/// `r` with `Σᵢ |wᵢ|·min(r, uᵢ) = |c|`, `uᵢ` the room coordinate `i` has in the direction of
/// `sign(c·wᵢ)`, then `δᵢ = sign(c·wᵢ)·min(r, uᵢ)`; for L2 `δᵢ = clip(λ·wᵢ)` to the box with the
/// `λ` (sign of `c`) solving the constraint. Where the box does not allow reaching the
/// hyperplane, `δ` goes to the box's corner in the improving direction.
///
/// **Defaults** (AutoAttack's standard version): 100 steps, one restart, 9 target classes,
/// `α_max = 0.1`, overshoot `η = 1.05`, backward step `β = 0.9`, seed 0. As in AutoAttack, an
/// iterate counts as adversarial when the prediction differs from the true label (not
/// necessarily the target).
///
/// **Result**: per example, the closest adversarial point found over all targets and restarts,
/// if its distance to `x0` (L∞, or L2 in `f64`) is at most ε; it is then projected with the
/// threat model's [`ThreatModel::project`] and kept if the model still misclassifies it (a
/// forward pass at the projected points), otherwise the example gets `x0` back. Success and
/// predictions come from a final forward pass at the returned batch. Examples misclassified at
/// `x0` are returned unchanged and count as broken. [`AttackResult::loss`] is the negated
/// margin `max_{j≠y} z_j − z_y` at `x_adv` (positive once misclassified).
///
/// Where AutoAttack draws the start of later restarts at a random distance related to the best
/// norm found, this starts them halfway between `x0` and the threat model's
/// [`ThreatModel::random_init`] (within ε/2 of `x0`, in `[0, 1]`).
///
/// ```
/// use saddle_attacks::{Attack, Fab};
/// use saddle_models::MnistNet;
/// use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};
///
/// let b = Cpu::new();
/// let mut net = MnistNet::new(b, 1, 7).unwrap(); // a tiny network (scale 1)
/// let mut rng = Rng::new(1);
/// let x = b.from_vec(&[2, 1, 28, 28], (0..2 * 784).map(|_| rng.next_f32()).collect()).unwrap();
/// let y = b.from_vec(&[2], vec![0.0, 1.0]).unwrap();
///
/// // AutoAttack runs 100 steps against 9 targets; 5 steps and 2 targets keep this quick.
/// let fab = Fab::linf(0.3, 5).unwrap().target_classes(2);
/// let res = fab.perturb(&mut net, &x, &y).unwrap();
/// let (xa, x0) = (b.to_vec(&res.x_adv).unwrap(), b.to_vec(&x).unwrap());
/// assert!(xa.iter().zip(&x0).all(|(a, o)| (a - o).abs() <= 0.3 + 2f32.powi(-24)));
/// assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)));
/// ```
#[derive(Clone, Debug)]
pub struct Fab<T: ThreatModel = Linf> {
    threat: T,
    steps: usize,
    restarts: usize,
    target_classes: usize,
    alpha_max: f32,
    eta: f32,
    beta: f32,
    seed: u64,
}

/// Which projection the threat model calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Norm {
    Linf,
    L2,
}

impl<T: ThreatModel> Fab<T> {
    fn with(threat: T, steps: usize) -> Result<Self> {
        let f = Fab {
            threat,
            steps,
            restarts: 1,
            target_classes: 9,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            seed: 0,
        };
        f.validate()?;
        Ok(f)
    }

    /// How many target classes (9 by default; at most the number of classes − 1, checked when
    /// attacking).
    pub fn target_classes(mut self, n: usize) -> Self {
        self.target_classes = n;
        self
    }

    /// Runs this many times per target (1 by default), each on the examples still unbroken;
    /// the first starts from `x0`, the others from random points.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.restarts = restarts;
        self
    }

    /// The seed of the random starts of restarts after the first (0 by default).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The largest weight `α_max` of the step from `x0` (0.1 by default; must be in `(0, 1]`).
    pub fn alpha_max(mut self, alpha_max: f32) -> Self {
        self.alpha_max = alpha_max;
        self
    }

    /// The overshoot `η` (1.05 by default; must be finite and greater than 0).
    pub fn eta(mut self, eta: f32) -> Self {
        self.eta = eta;
        self
    }

    /// The backward step `β` (0.9 by default; must be in `(0, 1]`).
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }

    /// The threat model.
    pub fn threat(&self) -> &T {
        &self.threat
    }

    /// Steps per run.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Runs per target.
    pub fn restart_count(&self) -> usize {
        self.restarts
    }

    /// The number of target classes.
    pub fn target_count(&self) -> usize {
        self.target_classes
    }

    /// `α_max`.
    pub fn alpha_max_value(&self) -> f32 {
        self.alpha_max
    }

    /// The overshoot `η`.
    pub fn eta_value(&self) -> f32 {
        self.eta
    }

    /// The backward step `β`.
    pub fn beta_value(&self) -> f32 {
        self.beta
    }

    /// The seed.
    pub fn seed_value(&self) -> u64 {
        self.seed
    }

    fn validate(&self) -> Result<()> {
        check_eps(NAME, self.threat.eps())?;
        for (what, v) in [
            ("steps", self.steps),
            ("restarts", self.restarts),
            ("target classes", self.target_classes),
        ] {
            if v == 0 {
                return Err(AttackError::ZeroCount { attack: NAME, what });
            }
        }
        for (what, value) in [("alpha_max", self.alpha_max), ("beta", self.beta)] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(AttackError::InvalidFraction {
                    attack: NAME,
                    what,
                    value,
                });
            }
        }
        check_alpha(NAME, self.eta)
    }

    /// Attacks the batch with the projection of `norm`.
    fn run<B: Backend>(
        &self,
        norm: Norm,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.validate()?;
        let (n, labels) = check_batch(NAME, model, x, y, "labels")?;
        let k = model.num_classes();
        let need = self.target_classes.saturating_add(1).max(2);
        if k < need {
            return Err(AttackError::TooFewClasses {
                attack: NAME,
                classes: k,
                need,
            });
        }
        if n == 0 {
            return Ok(AttackResult::empty(x));
        }
        let b = model.backend().clone();
        let model = ModeGuard::eval(model);
        let m: &dyn Classifier<B> = &*model;
        let eps = self.threat.eps() as f64;
        let x0 = b.to_vec(x)?;
        let d = x0.len() / n;
        let clean = finite_logits(NAME, m, x)?;
        let pred0 = argmax_rows(&clean, k);
        // The closest adversarial point found per example and its distance (0 for `x0` itself
        // when misclassified).
        let mut best = x0.clone();
        let mut best_norm: Vec<f64> = (0..n)
            .map(|i| {
                if pred0[i] != labels[i] {
                    0.0
                } else {
                    f64::INFINITY
                }
            })
            .collect();

        let mut base = Rng::new(self.seed);
        let mut run = 0u64;
        for rank in 1..=self.target_classes {
            for restart in 0..self.restarts {
                let mut rng = base.fork(run);
                run += 1;
                let idx: Vec<usize> = (0..n).filter(|&i| best_norm[i] > eps).collect();
                if idx.is_empty() {
                    break;
                }
                let sub_x0 = gather_rows(&x0, d, &idx);
                let sub_y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
                let sub_t: Vec<usize> = idx
                    .iter()
                    .map(|&i| ranked(&clean[i * k..(i + 1) * k])[rank])
                    .collect();
                let mut dims = x.dims().to_vec();
                dims[0] = idx.len();
                let start = if restart == 0 {
                    sub_x0.clone()
                } else {
                    let x0t = b.from_vec(&dims, sub_x0.clone())?;
                    let r = b.to_vec(&self.threat.random_init(&b, &x0t, &mut rng)?)?;
                    r.iter()
                        .zip(&sub_x0)
                        .map(|(&v, &o)| (0.5 * (v as f64 + o as f64)) as f32)
                        .collect()
                };
                let ctx = RunCtx {
                    norm,
                    dims: &dims,
                    x0: &sub_x0,
                    y: &sub_y,
                    t: &sub_t,
                    run: run as usize - 1,
                };
                let (found, found_norm) = self.core(m, &ctx, start)?;
                for (j, &i) in idx.iter().enumerate() {
                    if found_norm[j] < best_norm[i] {
                        best_norm[i] = found_norm[j];
                        best[i * d..(i + 1) * d].copy_from_slice(&found[j * d..(j + 1) * d]);
                    }
                }
            }
        }

        // Candidates within ε, projected onto the threat model, kept where still misclassified.
        let mut cand = x0.clone();
        for i in 0..n {
            if best_norm[i] <= eps {
                cand[i * d..(i + 1) * d].copy_from_slice(&best[i * d..(i + 1) * d]);
            }
        }
        let cand = b.from_vec(x.dims(), cand)?;
        let mut out = b.to_vec(&self.threat.project(&b, &cand, x)?)?;
        let at_cand = argmax_rows(
            &finite_logits(NAME, m, &b.from_vec(x.dims(), out.clone())?)?,
            k,
        );
        for i in 0..n {
            if at_cand[i] == labels[i] {
                out[i * d..(i + 1) * d].copy_from_slice(&x0[i * d..(i + 1) * d]);
            }
        }
        let x_adv = b.from_vec(x.dims(), out)?;
        let logits = finite_logits(NAME, m, &x_adv)?;
        let predictions = argmax_rows(&logits, k);
        let loss = label_margins(&logits, k, &labels)
            .into_iter()
            .map(|m| -m)
            .collect();
        let success = (0..n).map(|i| predictions[i] != labels[i]).collect();
        Ok(AttackResult {
            x_adv,
            loss,
            success,
            predictions,
            trace: None,
        })
    }

    /// One run of FAB on a sub-batch from `start`: the closest misclassified iterate per example
    /// (row-major) and its distance to `x0` (infinite where none was found).
    fn core<B: Backend>(
        &self,
        m: &dyn Classifier<B>,
        ctx: &RunCtx<'_>,
        start: Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f64>)> {
        let b = m.backend();
        let (x0, y) = (ctx.x0, ctx.y);
        let n = y.len();
        let d = x0.len() / n;
        let (eta, beta, alpha_max) = (self.eta as f64, self.beta as f64, self.alpha_max as f64);
        let mut x = start;
        let mut best = x0.to_vec();
        let mut best_norm = vec![f64::INFINITY; n];
        // A random start may already be misclassified.
        let xt = b.from_vec(ctx.dims, x.clone())?;
        let pred = argmax_rows(&finite_logits(NAME, m, &xt)?, m.num_classes());
        record(ctx, &pred, &mut x, &mut best, &mut best_norm, beta);

        let mut delta = vec![0.0f64; d];
        let mut delta0 = vec![0.0f64; d];
        for step in 0..self.steps {
            let (f, w) = boundary(m, ctx, &x, step)?;
            let mut next = vec![0.0f32; x.len()];
            for i in 0..n {
                let rows = i * d..(i + 1) * d;
                let (xi, oi, wi) = (&x[rows.clone()], &x0[rows.clone()], &w[rows.clone()]);
                let c = -f[i];
                let shift: f64 = wi
                    .iter()
                    .zip(oi.iter().zip(xi))
                    .map(|(&wv, (&o, &v))| wv as f64 * (o as f64 - v as f64))
                    .sum();
                let n1 = project_box(ctx.norm, xi, wi, c, &mut delta);
                let n2 = project_box(ctx.norm, oi, wi, c - shift, &mut delta0);
                let a = if n1 + n2 > 0.0 {
                    (n1 / (n1 + n2)).min(alpha_max)
                } else {
                    0.0
                };
                for j in 0..d {
                    let v = (1.0 - a) * (xi[j] as f64 + eta * delta[j])
                        + a * (oi[j] as f64 + eta * delta0[j]);
                    next[i * d + j] = v.clamp(0.0, 1.0) as f32;
                }
            }
            x = next;
            let xt = b.from_vec(ctx.dims, x.clone())?;
            let pred = argmax_rows(&finite_logits(NAME, m, &xt)?, m.num_classes());
            record(ctx, &pred, &mut x, &mut best, &mut best_norm, beta);
        }
        Ok((best, best_norm))
    }
}

/// What one run of FAB works on.
struct RunCtx<'a> {
    norm: Norm,
    dims: &'a [usize],
    x0: &'a [f32],
    y: &'a [usize],
    t: &'a [usize],
    run: usize,
}

/// Where `x` is misclassified: keeps it if it is the closest to `x0` so far, then takes the
/// backward step `x ← (1 − β)·x0 + β·x`.
fn record(
    ctx: &RunCtx<'_>,
    pred: &[usize],
    x: &mut [f32],
    best: &mut [f32],
    best_norm: &mut [f64],
    beta: f64,
) {
    let n = ctx.y.len();
    let d = ctx.x0.len() / n;
    for i in 0..n {
        if pred[i] == ctx.y[i] {
            continue;
        }
        let rows = i * d..(i + 1) * d;
        let dist = distance(ctx.norm, &x[rows.clone()], &ctx.x0[rows.clone()]);
        if dist < best_norm[i] {
            best_norm[i] = dist;
            best[rows.clone()].copy_from_slice(&x[rows.clone()]);
        }
        for (v, &o) in x[rows.clone()].iter_mut().zip(&ctx.x0[rows]) {
            *v = ((1.0 - beta) * o as f64 + beta * *v as f64) as f32;
        }
    }
}

/// `‖a − b‖` (L∞ or L2) in `f64`.
fn distance(norm: Norm, a: &[f32], b: &[f32]) -> f64 {
    let diffs = a.iter().zip(b).map(|(&u, &v)| u as f64 - v as f64);
    match norm {
        Norm::Linf => diffs.fold(0.0, |m, v| m.max(v.abs())),
        Norm::L2 => diffs.map(|v| v * v).sum::<f64>().sqrt(),
    }
}

/// `f = z_t − z_y` per example at the host batch `x` and its gradient `∇ₓf`.
fn boundary<B: Backend>(
    m: &dyn Classifier<B>,
    ctx: &RunCtx<'_>,
    x: &[f32],
    step: usize,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let b = m.backend();
    let k = m.num_classes();
    let n = ctx.y.len();
    let g = Graph::new(b.clone());
    let xv = g.leaf(b.from_vec(ctx.dims, x.to_vec())?);
    let fw = m.forward(&g, xv, false)?;
    let logits = b.to_vec(&g.value(fw.logits))?;
    if let Some(index) = logits.iter().position(|v| !v.is_finite()) {
        return Err(AttackError::NonFinite {
            attack: NAME,
            what: "the model's logits",
            index,
            value: logits[index],
        });
    }
    let mut seed = vec![0.0f32; n * k];
    let mut f = Vec::with_capacity(n);
    for i in 0..n {
        let (t, y) = (ctx.t[i], ctx.y[i]);
        seed[i * k + t] += 1.0;
        seed[i * k + y] -= 1.0;
        f.push(logits[i * k + t] as f64 - logits[i * k + y] as f64);
    }
    let mut grads = g.backward_with(fw.logits, b.from_vec(&[n, k], seed)?)?;
    let gx = grads.take(xv).ok_or(AttackError::NonFinite {
        attack: NAME,
        what: "the input gradient (none reached the input)",
        index: 0,
        value: f32::NAN,
    })?;
    let gx = b.to_vec(&gx)?;
    if let Some(index) = gx.iter().position(|v| !v.is_finite()) {
        let per = gx.len() / n.max(1);
        return Err(AttackError::NanGradient {
            attack: NAME,
            restart: ctx.run,
            step,
            index,
            example: index / per.max(1),
        });
    }
    Ok((f, gx))
}

/// The minimal-norm `δ` with `w·δ = c` and `p + δ ∈ [0, 1]` (written to `delta`), or where the
/// box does not allow it, the box's corner that gets closest; returns `‖δ‖`.
///
/// With `s = sign(c)`, coordinate `i` moves by `sᵢ·mᵢ`, `sᵢ = sign(s·wᵢ)`, `0 ≤ mᵢ ≤ uᵢ` (the room
/// to the box in that direction), and contributes `aᵢ·mᵢ` (`aᵢ = |wᵢ|`) to `|c|`.
/// L∞: `mᵢ = min(r, uᵢ)` with the smallest `r` reaching `|c|`; L2: `mᵢ = min(λ·aᵢ, uᵢ)`.
/// Both sums are increasing and piecewise linear in `r` (or `λ`), with kinks at `uᵢ` (or
/// `uᵢ/aᵢ`): sorting the kinks finds the piece holding `|c|`.
fn project_box(norm: Norm, p: &[f32], w: &[f32], c: f64, delta: &mut [f64]) -> f64 {
    delta.iter_mut().for_each(|v| *v = 0.0);
    if c == 0.0 || c.is_nan() {
        return 0.0;
    }
    let s = c.signum();
    let target = c.abs();
    // (coordinate, direction, a, room) of the coordinates that can move.
    let mut moves: Vec<(usize, f64, f64, f64)> = p
        .iter()
        .zip(w)
        .enumerate()
        .filter_map(|(i, (&pv, &wv))| {
            let sw = s * wv as f64;
            let (dir, room) = if sw > 0.0 {
                (1.0, 1.0 - pv as f64)
            } else if sw < 0.0 {
                (-1.0, pv as f64)
            } else {
                return None;
            };
            (room > 0.0).then_some((i, dir, sw.abs(), room))
        })
        .collect();
    if moves.is_empty() {
        return 0.0;
    }
    let kink = |&(_, _, a, u): &(usize, f64, f64, f64)| match norm {
        Norm::Linf => u,
        Norm::L2 => u / a,
    };
    moves.sort_by(|u, v| kink(u).total_cmp(&kink(v)));
    // Slope of the unsaturated coordinates after position j: a (L∞) or a² (L2), as suffix sums.
    let slope_of = |a: f64| match norm {
        Norm::Linf => a,
        Norm::L2 => a * a,
    };
    let mut suffix = vec![0.0f64; moves.len() + 1];
    for j in (0..moves.len()).rev() {
        suffix[j] = suffix[j + 1] + slope_of(moves[j].2);
    }
    let mut fixed = 0.0f64;
    let mut level = f64::INFINITY; // r or λ; infinite: the whole box does not suffice
    for (j, mv) in moves.iter().enumerate() {
        let kj = kink(mv);
        if fixed + suffix[j] * kj >= target {
            level = (target - fixed) / suffix[j];
            break;
        }
        fixed += mv.2 * mv.3;
    }
    for &(i, dir, a, u) in &moves {
        let m = match norm {
            Norm::Linf => level.min(u),
            Norm::L2 => (level * a).min(u),
        };
        delta[i] = dir * m;
    }
    match norm {
        Norm::Linf => delta.iter().fold(0.0, |m, v| m.max(v.abs())),
        Norm::L2 => delta.iter().map(|v| v * v).sum::<f64>().sqrt(),
    }
}

impl Fab<Linf> {
    /// L∞ FAB-T with radius `eps` and `steps` steps per target (100 in AutoAttack).
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] unless `eps` is finite and at least 0;
    /// [`AttackError::ZeroCount`] for zero steps.
    pub fn linf(eps: f32, steps: usize) -> Result<Self> {
        Fab::with(Linf::new(eps)?, steps)
    }
}

impl Fab<L2> {
    /// L2 FAB-T with radius `eps` and `steps` steps per target (100 in AutoAttack).
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] unless `eps` is finite and at least 0;
    /// [`AttackError::ZeroCount`] for zero steps.
    pub fn l2(eps: f32, steps: usize) -> Result<Self> {
        Fab::with(L2::new(eps)?, steps)
    }
}

impl<B: Backend> Attack<B> for Fab<Linf> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.run(Norm::Linf, model, x, y)
    }
}

impl<B: Backend> Attack<B> for Fab<L2> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        self.run(Norm::L2, model, x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The projections against hand-solved cases: the box binds on one coordinate, and the
    /// result meets the constraint exactly.
    #[test]
    fn box_projections_meet_the_hyperplane_at_minimal_norm() {
        // w = (1, 1, -1), c = 1.2, p = (0.9, 0.5, 0.5): L∞ rooms (0.1, 0.5, 0.5) reach at most
        // 0.1 + 0.5 + 0.5 = 1.1 < 1.2: the box cannot reach the hyperplane, δ is the corner.
        let mut d = vec![0.0; 3];
        let n = project_box(Norm::Linf, &[0.9, 0.5, 0.5], &[1.0, 1.0, -1.0], 1.2, &mut d);
        assert_eq!(d, vec![1.0 - 0.9f32 as f64, 0.5, -0.5]);
        assert_eq!(n, 0.5);
        // c = 0.7: 0.1 + 2r = 0.7 → r = 0.3 (up to the f32 rounding of 0.9).
        let n = project_box(Norm::Linf, &[0.9, 0.5, 0.5], &[1.0, 1.0, -1.0], 0.7, &mut d);
        assert!((n - 0.3).abs() < 1e-7, "{n}");
        let dot: f64 = d[0] - d[2] + d[1];
        assert!((dot - 0.7).abs() < 1e-9, "{d:?}");
        // Negative c moves the other way: p = (0.5, 0.05), w = (1, 1), c = -0.25:
        // rooms (0.5, 0.05): 0.05 + r = 0.25 → r = 0.2.
        let n = project_box(Norm::Linf, &[0.5, 0.05], &[1.0, 1.0], -0.25, &mut d[..2]);
        assert!((n - 0.2).abs() < 1e-7, "{n}");
        assert!((d[0] + 0.2).abs() < 1e-7 && (d[1] + 0.05f32 as f64).abs() < 1e-9);
        // L2, p = 0.5, w = (3, 4), c = 5: the box reaches at most 3·0.5 + 4·0.5 = 3.5 < 5: the
        // corner.
        let n = project_box(Norm::L2, &[0.5, 0.5], &[3.0, 4.0], 5.0, &mut d[..2]);
        assert_eq!(&d[..2], &[0.5, 0.5]);
        assert!((n - 0.5f64.sqrt()).abs() < 1e-12);
        // c = 3: λ·25 = 3 → δ = (0.36, 0.48) inside the room; ‖δ‖ = 0.6.
        let n = project_box(Norm::L2, &[0.5, 0.5], &[3.0, 4.0], 3.0, &mut d[..2]);
        assert!((n - 0.6).abs() < 1e-12, "{n}");
        // c = 3.2: unconstrained δ₂ = 0.512 > 0.5 → δ₂ = 0.5, 9λ = 3.2 − 2 → δ₁ = 3λ = 0.4.
        let n = project_box(Norm::L2, &[0.5, 0.5], &[3.0, 4.0], 3.2, &mut d[..2]);
        assert!((d[0] - 0.4).abs() < 1e-12 && d[1] == 0.5, "{d:?}");
        assert!((n - 0.41f64.sqrt()).abs() < 1e-12);
        // Nothing to do: c = 0 or w = 0.
        assert_eq!(project_box(Norm::L2, &[0.5], &[1.0], 0.0, &mut d[..1]), 0.0);
        assert_eq!(
            project_box(Norm::Linf, &[0.5], &[0.0], 1.0, &mut d[..1]),
            0.0
        );
    }
}
