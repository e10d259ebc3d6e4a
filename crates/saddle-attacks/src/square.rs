//! The Square attack: a score-based black-box attack by random search over square-shaped
//! updates, which needs the model's logits only (no gradient).

use saddle_models::Classifier;
use saddle_tensor::{rng::Rng, Backend, TensorLike};

use crate::attack::{
    argmax_rows, check_batch, finite_logits, label_margins, Attack, AttackResult, ModeGuard,
};
use crate::error::{check_eps, AttackError, Result};
use crate::threat::{place_toward, Linf, ThreatModel, L2};

const NAME: &str = "square";

/// The Square attack, Andriushchenko, Croce, Flammarion & Hein, *Square Attack: a
/// query-efficient black-box adversarial attack via random search*, ECCV 2020
/// (arXiv:1912.00049), untargeted, for the L∞ ([`Square::linf`]) and the L2 ([`Square::l2`])
/// threat models.
///
/// It minimises the margin `z_y − max_{j≠y} z_j` of the logits `z` by random search, using
/// the model's outputs only:
///
/// ```text
/// x ← init(x0)                                    (query 1, always kept)
/// repeat queries − 1 times, for each example still classified correctly:
///     s ← side of a square covering a fraction p(i) of the image
///     x' ← x with a random s×s window changed (inside the ball, clipped to [0, 1])
///     if margin(x') < margin(x) { x ← x' }        (one query)
/// ```
///
/// - **L∞**: the start is vertical stripes, `x0 ± ε` per column and channel with random
///   signs; an update sets one random `s×s` window to `x0 ± ε` with one random sign per
///   channel (drawn again, up to 16 times, while it would leave the window unchanged).
///   `s = round(√(p·h·w))`, between 1 and `min(h, w) − 1`.
/// - **L2**: the start is a 5×5 grid of tiles, each holding the centre-weighted pattern `η`
///   below with a random sign per channel, rescaled to `‖δ‖₂ = ε`. An update draws two windows
///   `W1`, `W2` of side `s = round(√(p·h·w))` (odd, at least 3, at most `min(h, w) − 1`) and,
///   per channel, moves the mass of `δ` on `W1 ∪ W2` (plus the part of the budget `ε² − ‖δ‖²`
///   not yet used, shared equally between channels) into `W1`, in the direction of
///   `±η + δ_{W1}/‖δ_{W1}‖`; `W2` outside `W1` becomes 0; then `δ` is rescaled to `‖δ‖₂ = ε`
///   and clipped to `[0, 1]`. `η` is an `s×s` square whose upper `⌊s/2⌋` rows hold the
///   rectangle pattern `η_{r,c} = Σ_{k=d(r,c)}^{K} 1/(k+1)²` (`d` the Chebyshev distance to the
///   rectangle's centre, `K` its largest half-side), the lower rows the same pattern negated,
///   each half of unit norm, then the whole of unit norm, transposed with probability ½.
///
/// `p(i)` follows the paper's schedule: `p_init` up to iteration 10 of 10,000, then
/// halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, the iterations
/// scaled to the query budget ([`Square::p_at`]).
///
/// **Paper defaults**: the settings AutoAttack (Croce & Hein 2020, whose authors overlap)
/// runs the attack with: 5,000 queries, `p_init = 0.8`, one restart. The paper's own ImageNet
/// experiments allow 10,000 queries and tune `p_init` (0.05 for L∞, 0.1 for L2). The radii
/// are those of the threat model (MNIST L∞ ε = 0.3, CIFAR-10 L∞ ε = 8/255).
///
/// **Queries** are counted per example: an example is queried only while it is still
/// classified correctly at its current iterate, and each forward pass over the still-robust
/// subset counts one query for each example in it. The clean forward pass that finds which
/// examples are correctly classified, and the final pass that reports the predictions at
/// `x_adv`, are not counted (as in the paper, whose counts start at the initialisation): an
/// example misclassified at `x0` costs 0 queries and is returned unchanged. One restart costs
/// at most `queries` queries per example; with ε = 0 nothing can change and no query is made.
///
/// With several **restarts** each one starts afresh from a new initialisation for the
/// examples still robust; per example the result is the point of lowest margin (a
/// misclassified point first) among `x0` and each restart's final iterate. Restart `r` and
/// example `i` draw their random numbers from a generator derived from the seed, `r` and `i`
/// only.
///
/// The result's [`AttackResult::loss`] is the **negated** margin at `x_adv` (higher is
/// stronger, positive once misclassified), from that final forward pass of the whole batch.
/// Every `x_adv` lies in `[0, 1]`; L∞: `fl(x0 − ε) ≤ x_adv ≤ fl(x0 + ε)` per pixel (the bound
/// of [`Linf`]); L2: `‖x_adv − x0‖₂ ≤ ε` in exact arithmetic of the `f32` values (every
/// coordinate is rounded towards `x0`, after a rescaling to `ε·(1 − 4(d + 8)·2⁻⁵³)`).
///
/// ```
/// use saddle_attacks::{Attack, Square};
/// use saddle_models::MnistNet;
/// use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};
///
/// let b = Cpu::new();
/// let mut net = MnistNet::new(b, 1, 7).unwrap(); // a tiny network (scale 1)
/// let mut rng = Rng::new(1);
/// let x = b.from_vec(&[2, 1, 28, 28], (0..2 * 784).map(|_| rng.next_f32()).collect()).unwrap();
/// let y = b.from_vec(&[2], vec![0.0, 1.0]).unwrap();
///
/// // AutoAttack's budget is 5,000 queries; 50 keep the example quick.
/// let square = Square::linf(0.3, 50).unwrap().seed(1);
/// let (res, queries) = square.perturb_with_queries(&mut net, &x, &y).unwrap();
/// assert!(queries.iter().all(|&q| q <= 50));
/// let (xa, x0) = (b.to_vec(&res.x_adv).unwrap(), b.to_vec(&x).unwrap());
/// assert!(xa.iter().zip(&x0).all(|(a, o)| (a - o).abs() <= 0.3 + 2f32.powi(-24)));
/// assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)));
/// ```
#[derive(Clone, Debug)]
pub struct Square<T: ThreatModel = Linf> {
    threat: T,
    queries: usize,
    p_init: f32,
    restarts: usize,
    seed: u64,
}

/// Which update rule the threat model calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Norm {
    Linf,
    L2,
}

/// Most draws of an L∞ window before a draw that changes nothing is kept anyway.
const LINF_REDRAWS: usize = 16;

impl<T: ThreatModel> Square<T> {
    fn with(threat: T, queries: usize) -> Result<Self> {
        let sq = Square {
            threat,
            queries,
            p_init: 0.8,
            restarts: 1,
            seed: 0,
        };
        sq.validate()?;
        Ok(sq)
    }

    /// The initial fraction `p_init` of the image an update's square covers (0.8 by default;
    /// must be in `(0, 1]`, checked when attacking).
    pub fn p_init(mut self, p_init: f32) -> Self {
        self.p_init = p_init;
        self
    }

    /// The seed of the random search (0 by default).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs `restarts` times on the examples still robust (at least 1, checked when
    /// attacking), each with the full query budget.
    pub fn restarts(mut self, restarts: usize) -> Self {
        self.restarts = restarts;
        self
    }

    /// The threat model.
    pub fn threat(&self) -> &T {
        &self.threat
    }

    /// The query budget per example and restart.
    pub fn queries(&self) -> usize {
        self.queries
    }

    /// The fraction `p` of the image an update covers at `iteration` (0-based, counting the
    /// updates after the initialisation): `p_init` halved at iterations 10, 50, 200, 500,
    /// 1000, 2000, 4000, 6000 and 8000 of a 10,000-query budget, scaled to this budget
    /// (`⌊iteration · 10000 / queries⌋` is compared with those thresholds).
    pub fn p_at(&self, iteration: usize) -> f32 {
        let it = (iteration as u128 * 10_000 / self.queries.max(1) as u128) as u64;
        const STEPS: [u64; 9] = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000];
        let halvings = STEPS.iter().filter(|&&t| it > t).count() as i32;
        self.p_init * 0.5f32.powi(halvings)
    }

    fn validate(&self) -> Result<()> {
        check_eps(NAME, self.threat.eps())?;
        if self.queries == 0 {
            return Err(AttackError::ZeroCount {
                attack: NAME,
                what: "queries",
            });
        }
        if self.restarts == 0 {
            return Err(AttackError::ZeroCount {
                attack: NAME,
                what: "restarts",
            });
        }
        if !(self.p_init > 0.0 && self.p_init <= 1.0) {
            return Err(AttackError::InvalidFraction {
                attack: NAME,
                what: "p_init",
                value: self.p_init,
            });
        }
        Ok(())
    }

    /// The attack; returns the result and the queries spent per example.
    fn run<B: Backend>(
        &self,
        norm: Norm,
        model: &mut dyn Classifier<B>,
        x0: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<(AttackResult<B>, Vec<usize>)> {
        self.validate()?;
        let (n, labels) = check_batch(NAME, model, x0, y, "labels")?;
        if n == 0 {
            return Ok((AttackResult::empty(x0), Vec::new()));
        }
        let model = ModeGuard::eval(model);
        let m: &dyn Classifier<B> = &*model;
        let b = m.backend().clone();
        let shape = m.input_shape();
        let d: usize = shape.iter().product();
        let x0h = b.to_vec(x0)?;
        let eps = self.threat.eps();

        let (margin0, pred0) = margins(m, x0, &labels)?;
        let mut queries = vec![0usize; n];
        let mut x_best = x0h.clone();
        let mut best_margin = margin0;
        let mut robust: Vec<bool> = (0..n).map(|i| pred0[i] == labels[i]).collect();

        let mut base = Rng::new(self.seed);
        for r in 0..self.restarts {
            let mut rng = base.fork(r as u64);
            let mut rngs: Vec<Rng> = (0..n).map(|i| rng.fork(i as u64)).collect();
            let active: Vec<usize> = (0..n).filter(|&i| robust[i]).collect();
            if eps == 0.0 || d == 0 || active.is_empty() {
                break;
            }
            // The current iterate of each active example, one after the other.
            let mut cur = vec![0.0f32; active.len() * d];
            for (j, &i) in active.iter().enumerate() {
                let (xi, out) = (&x0h[i * d..(i + 1) * d], &mut cur[j * d..(j + 1) * d]);
                match norm {
                    Norm::Linf => linf_init(xi, out, shape, eps, &mut rngs[i]),
                    Norm::L2 => l2_init(xi, out, shape, eps, &mut rngs[i]),
                }
            }
            let aim: Vec<usize> = active.iter().map(|&i| labels[i]).collect();
            let (mut cur_margin, mut cur_pred) = query(m, shape, cur.clone(), &aim)?;
            active.iter().for_each(|&i| queries[i] += 1);

            let mut cand = Vec::with_capacity(cur.len());
            for it in 0..self.queries - 1 {
                let live: Vec<usize> = (0..active.len())
                    .filter(|&j| cur_pred[j] == aim[j])
                    .collect();
                if live.is_empty() {
                    break;
                }
                let p = self.p_at(it);
                cand.clear();
                cand.resize(live.len() * d, 0.0);
                for (k, &j) in live.iter().enumerate() {
                    let i = active[j];
                    let (xi, xc) = (&x0h[i * d..(i + 1) * d], &cur[j * d..(j + 1) * d]);
                    let out = &mut cand[k * d..(k + 1) * d];
                    match norm {
                        Norm::Linf => linf_update(xi, xc, out, shape, eps, p, &mut rngs[i]),
                        Norm::L2 => l2_update(xi, xc, out, shape, eps, p, &mut rngs[i]),
                    }
                }
                let live_aim: Vec<usize> = live.iter().map(|&j| aim[j]).collect();
                let (mg, pr) = query(m, shape, cand.clone(), &live_aim)?;
                for (k, &j) in live.iter().enumerate() {
                    queries[active[j]] += 1;
                    if mg[k] < cur_margin[j] {
                        cur_margin[j] = mg[k];
                        cur_pred[j] = pr[k];
                        cur[j * d..(j + 1) * d].copy_from_slice(&cand[k * d..(k + 1) * d]);
                    }
                }
            }
            // Keep, per example, the stronger of the best so far and this restart's iterate.
            for (j, &i) in active.iter().enumerate() {
                let fooled = cur_pred[j] != aim[j];
                if fooled || cur_margin[j] < best_margin[i] {
                    best_margin[i] = cur_margin[j];
                    robust[i] = !fooled;
                    x_best[i * d..(i + 1) * d].copy_from_slice(&cur[j * d..(j + 1) * d]);
                }
            }
        }

        let x_adv = b.from_vec(x0.dims(), x_best)?;
        let (margin, predictions) = margins(m, &x_adv, &labels)?;
        let success = (0..n).map(|i| predictions[i] != labels[i]).collect();
        let res = AttackResult {
            x_adv,
            loss: margin.iter().map(|&v| -v).collect(),
            success,
            predictions,
            trace: None,
        };
        Ok((res, queries))
    }
}

impl Square<Linf> {
    /// The L∞ Square attack with radius `eps` and a budget of `queries` queries per example
    /// (5,000 by default in AutoAttack); `p_init` 0.8, one restart, seed 0.
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] unless `eps` is finite and at least 0;
    /// [`AttackError::ZeroCount`] for zero queries.
    pub fn linf(eps: f32, queries: usize) -> Result<Self> {
        Square::with(Linf::new(eps)?, queries)
    }

    /// Attacks the batch `x` (labels `y`) and also returns the number of queries spent on each
    /// example (0 for an example misclassified at `x`; at most `restarts · queries`).
    ///
    /// # Errors
    /// As [`Attack::perturb`]; [`AttackError::InvalidFraction`] if `p_init` is outside
    /// `(0, 1]`, [`AttackError::ZeroCount`] for zero restarts, [`AttackError::NonFinite`] if
    /// the model returns a non-finite logit.
    pub fn perturb_with_queries<B: Backend>(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<(AttackResult<B>, Vec<usize>)> {
        self.run(Norm::Linf, model, x, y)
    }
}

impl Square<L2> {
    /// The L2 Square attack with radius `eps` and a budget of `queries` queries per example
    /// (5,000 by default in AutoAttack); `p_init` 0.8 (the paper uses 0.1 for L2 on
    /// ImageNet), one restart, seed 0.
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] unless `eps` is finite and at least 0;
    /// [`AttackError::ZeroCount`] for zero queries.
    pub fn l2(eps: f32, queries: usize) -> Result<Self> {
        Square::with(L2::new(eps)?, queries)
    }

    /// Attacks the batch `x` (labels `y`) and also returns the number of queries spent on each
    /// example (0 for an example misclassified at `x`; at most `restarts · queries`).
    ///
    /// # Errors
    /// As [`Attack::perturb`]; [`AttackError::InvalidFraction`] if `p_init` is outside
    /// `(0, 1]`, [`AttackError::ZeroCount`] for zero restarts, [`AttackError::NonFinite`] if
    /// the model returns a non-finite logit.
    pub fn perturb_with_queries<B: Backend>(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<(AttackResult<B>, Vec<usize>)> {
        self.run(Norm::L2, model, x, y)
    }
}

impl<B: Backend> Attack<B> for Square<Linf> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        Ok(self.perturb_with_queries(model, x, y)?.0)
    }
}

impl<B: Backend> Attack<B> for Square<L2> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        Ok(self.perturb_with_queries(model, x, y)?.0)
    }
}

/// The margins `z_y − max_{j≠y} z_j` and predictions of the model on `x`.
fn margins<B: Backend>(
    m: &dyn Classifier<B>,
    x: &B::Tensor,
    labels: &[usize],
) -> Result<(Vec<f32>, Vec<usize>)> {
    let k = m.num_classes();
    let z = finite_logits(NAME, m, x)?;
    let margin = label_margins(&z, k, labels);
    Ok((margin, argmax_rows(&z, k)))
}

/// One query of the images `xs` (one after the other, each of `shape`): margins and
/// predictions against `labels`.
fn query<B: Backend>(
    m: &dyn Classifier<B>,
    shape: [usize; 3],
    xs: Vec<f32>,
    labels: &[usize],
) -> Result<(Vec<f32>, Vec<usize>)> {
    let [c, h, w] = shape;
    let x = m.backend().from_vec(&[labels.len(), c, h, w], xs)?;
    margins(m, &x, labels)
}

/// The L∞ square side for a fraction `p` of an `h×w` image: `round(√(p·h·w))`, between 1 and
/// `min(h, w) − 1` (1 for a one-pixel-wide image).
fn linf_side(p: f32, h: usize, w: usize) -> usize {
    let s = ((p as f64) * (h * w) as f64).sqrt().round() as usize;
    s.clamp(1, h.min(w).saturating_sub(1).max(1))
}

/// The L2 square side: `round(√(p·h·w))`, at least 3 and odd, at most `min(h, w) − 1` (or
/// `min(h, w)` for images narrower than 2 pixels).
fn l2_side(p: f32, h: usize, w: usize) -> usize {
    let mut s = (((p as f64) * (h * w) as f64).sqrt().round() as usize).max(3);
    if s.is_multiple_of(2) {
        s += 1;
    }
    s.min(h.min(w).saturating_sub(1).max(1))
}

/// `clamp(fl(x0 + sign·ε), 0, 1)`.
fn linf_value(x0: f32, positive: bool, eps: f32) -> f32 {
    let v = if positive { x0 + eps } else { x0 - eps };
    v.clamp(0.0, 1.0)
}

/// Vertical stripes: every column of every channel at `x0 + ε` or `x0 − ε`, clipped.
fn linf_init(x0: &[f32], out: &mut [f32], [c, h, w]: [usize; 3], eps: f32, rng: &mut Rng) {
    for ch in 0..c {
        for col in 0..w {
            let up = rng.next_bool();
            for row in 0..h {
                let k = (ch * h + row) * w + col;
                out[k] = linf_value(x0[k], up, eps);
            }
        }
    }
}

/// `xc` with one random `s×s` window set to `x0 ± ε` (one sign per channel), written to `out`.
fn linf_update(
    x0: &[f32],
    xc: &[f32],
    out: &mut [f32],
    [c, h, w]: [usize; 3],
    eps: f32,
    p: f32,
    rng: &mut Rng,
) {
    out.copy_from_slice(xc);
    let s = linf_side(p, h, w);
    let (r0, c0) = (rng.index(h - s + 1), rng.index(w - s + 1));
    for _ in 0..LINF_REDRAWS {
        let mut changed = false;
        for ch in 0..c {
            let up = rng.next_bool();
            for row in r0..r0 + s {
                for col in c0..c0 + s {
                    let k = (ch * h + row) * w + col;
                    out[k] = linf_value(x0[k], up, eps);
                    changed |= out[k] != xc[k];
                }
            }
        }
        if changed {
            break;
        }
    }
}

/// The centre-weighted pattern of an `a×b` rectangle (row-major), of unit L2 norm (empty when
/// `a` or `b` is 0): `η_{r,c} = Σ_{k=d}^{K} 1/(k+1)²` with `d` the Chebyshev distance of
/// `(r, c)` to the centre `(⌊a/2⌋, ⌊b/2⌋)` and `K = max(⌊a/2⌋, ⌊b/2⌋)`.
fn rectangle_pattern(a: usize, b: usize) -> Vec<f64> {
    let (ca, cb) = (a / 2, b / 2);
    let top = ca.max(cb);
    let mut v: Vec<f64> = (0..a * b)
        .map(|k| {
            let (r, c) = (k / b, k % b);
            let dist = r.abs_diff(ca).max(c.abs_diff(cb));
            (dist..=top).map(|j| 1.0 / ((j + 1) as f64).powi(2)).sum()
        })
        .collect();
    normalise(&mut v);
    v
}

/// The paper's L2 update pattern of side `s` (row-major, unit norm): the rectangle pattern of
/// the upper `⌊s/2⌋` rows, minus that of the lower rows, transposed if asked.
fn square_pattern(s: usize, transpose: bool) -> Vec<f64> {
    let half = s / 2;
    let mut v = rectangle_pattern(half, s);
    v.extend(rectangle_pattern(s - half, s).into_iter().map(|e| -e));
    normalise(&mut v);
    if transpose {
        (0..s * s).map(|k| v[(k % s) * s + k / s]).collect()
    } else {
        v
    }
}

/// Scales `v` to unit L2 norm (leaves a zero vector alone).
fn normalise(v: &mut [f64]) {
    let norm = v.iter().map(|e| e * e).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|e| *e /= norm);
    }
}

/// `x0 + δ·ε/‖δ‖₂`, clipped to `[0, 1]` and rounded towards `x0`, into `out` (`x0` itself
/// where `δ = 0`). The rescaling aims slightly inside the sphere, by the margin of the L2
/// projection, so that the rounding of the norm cannot take the result outside the ball.
fn place_on_sphere(x0: &[f32], delta: &[f64], eps: f32, out: &mut [f32]) {
    let norm = delta.iter().map(|e| e * e).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        out.copy_from_slice(x0);
        return;
    }
    let shrink = 1.0 - 4.0 * (delta.len() as f64 + 8.0) * (f64::EPSILON / 2.0);
    let scale = eps as f64 * shrink / norm;
    for ((o, &v0), &e) in out.iter_mut().zip(x0).zip(delta) {
        *o = place_toward(v0, scale * e);
    }
}

/// A 5×5 grid of square tiles (side `⌊min(h, w)/5⌋`, at least 1; centred), each with the
/// update pattern and a random sign per channel, rescaled to `‖δ‖₂ = ε`.
fn l2_init(x0: &[f32], out: &mut [f32], [c, h, w]: [usize; 3], eps: f32, rng: &mut Rng) {
    let t = (h.min(w) / 5).max(1);
    let (nh, nw) = (h / t, w / t);
    let (oh, ow) = ((h - nh * t) / 2, (w - nw * t) / 2);
    let mut delta = vec![0.0f64; c * h * w];
    for th in 0..nh {
        for tw in 0..nw {
            let eta = square_pattern(t, rng.next_bool());
            for ch in 0..c {
                let sign = if rng.next_bool() { 1.0 } else { -1.0 };
                for i in 0..t {
                    for j in 0..t {
                        let k = (ch * h + oh + th * t + i) * w + ow + tw * t + j;
                        delta[k] = sign * eta[i * t + j];
                    }
                }
            }
        }
    }
    place_on_sphere(x0, &delta, eps, out);
}

/// The paper's L2 update of `xc` (see [`Square`]), written to `out`.
fn l2_update(
    x0: &[f32],
    xc: &[f32],
    out: &mut [f32],
    [c, h, w]: [usize; 3],
    eps: f32,
    p: f32,
    rng: &mut Rng,
) {
    let mut delta: Vec<f64> = xc
        .iter()
        .zip(x0)
        .map(|(&a, &o)| a as f64 - o as f64)
        .collect();
    let used: f64 = delta.iter().map(|e| e * e).sum();
    let spare = ((eps as f64).powi(2) - used).max(0.0) / c as f64;
    let s = l2_side(p, h, w);
    let (r1, c1) = (rng.index(h - s + 1), rng.index(w - s + 1));
    let (r2, c2) = (rng.index(h - s + 1), rng.index(w - s + 1));
    let in_w1 = |row: usize, col: usize| (r1..r1 + s).contains(&row) && (c1..c1 + s).contains(&col);
    let eta = square_pattern(s, rng.next_bool());
    let hw = h * w;
    for ch in 0..c {
        let plane = &mut delta[ch * hw..(ch + 1) * hw];
        let sign = if rng.next_bool() { 1.0 } else { -1.0 };
        let mut w1 = 0.0f64;
        for row in r1..r1 + s {
            for col in c1..c1 + s {
                w1 += plane[row * w + col].powi(2);
            }
        }
        let mut union = w1;
        for row in r2..r2 + s {
            for col in c2..c2 + s {
                if !in_w1(row, col) {
                    union += plane[row * w + col].powi(2);
                }
            }
        }
        let w1 = w1.sqrt();
        let mut dir: Vec<f64> = (0..s * s)
            .map(|k| {
                let old = plane[(r1 + k / s) * w + c1 + k % s];
                sign * eta[k] + if w1 > 0.0 { old / w1 } else { 0.0 }
            })
            .collect();
        normalise(&mut dir);
        if dir.iter().all(|&e| e == 0.0) {
            // The old window was exactly −sign·η: move along sign·η instead.
            dir = eta.iter().map(|&e| sign * e).collect();
        }
        let mass = (spare + union).sqrt();
        for row in r2..r2 + s {
            for col in c2..c2 + s {
                plane[row * w + col] = 0.0;
            }
        }
        for (k, &e) in dir.iter().enumerate() {
            plane[(r1 + k / s) * w + c1 + k % s] = e * mass;
        }
    }
    place_on_sphere(x0, &delta, eps, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_halves_p_at_the_papers_iterations() {
        let sq = Square::linf(0.1, 10_000).unwrap().p_init(0.8);
        let at = |i| sq.p_at(i);
        assert_eq!((at(0), at(10), at(11)), (0.8, 0.8, 0.4));
        assert_eq!((at(50), at(51), at(200), at(201)), (0.4, 0.2, 0.2, 0.1));
        assert_eq!(
            (at(1000), at(1001), at(8000), at(8001)),
            (0.05, 0.025, 0.003125, 0.0015625)
        );
        assert_eq!(at(9_999), 0.8 / 512.0);
        // Scaled to a 1,000-query budget: the thresholds come 10 times sooner.
        let short = Square::linf(0.1, 1_000).unwrap();
        assert_eq!(
            (short.p_at(1), short.p_at(2), short.p_at(5), short.p_at(6)),
            (0.8, 0.4, 0.4, 0.2)
        );
    }

    #[test]
    fn square_sides_follow_the_fraction_and_fit_the_image() {
        // 28×28 MNIST with p = 0.8: round(√627.2) = 25.
        assert_eq!(linf_side(0.8, 28, 28), 25);
        assert_eq!(linf_side(0.001, 28, 28), 1);
        assert_eq!(linf_side(1.0, 28, 28), 27);
        assert_eq!(linf_side(1.0, 1, 5), 1);
        // L2: odd, at least 3.
        assert_eq!(l2_side(0.8, 28, 28), 25);
        assert_eq!(l2_side(0.1, 32, 32), 11); // round(√102.4) = 10, made odd
        assert_eq!(l2_side(0.0001, 28, 28), 3);
        assert_eq!(l2_side(1.0, 2, 2), 1);
    }

    #[test]
    fn the_l2_pattern_is_centre_weighted_of_unit_norm_and_balanced() {
        // A 1×3 rectangle: centre 1 + 1/4, sides 1/4, before normalising.
        let r = rectangle_pattern(1, 3);
        let n = (1.25f64.powi(2) + 2.0 * 0.0625).sqrt();
        for (got, want) in r.iter().zip([0.25 / n, 1.25 / n, 0.25 / n]) {
            assert!((got - want).abs() < 1e-12, "{r:?}");
        }
        for s in 1..8 {
            let p = square_pattern(s, false);
            let norm: f64 = p.iter().map(|e| e * e).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-12, "side {s}: norm {norm}");
            let (top, bottom) = p.split_at(s / 2 * s);
            assert!(top.iter().all(|&e| e > 0.0) && bottom.iter().all(|&e| e < 0.0));
            if s >= 2 {
                // The two halves carry equal mass (each normalised before the whole).
                let mt: f64 = top.iter().map(|e| e * e).sum();
                let mb: f64 = bottom.iter().map(|e| e * e).sum();
                assert!((mt - mb).abs() < 1e-12, "side {s}: {mt} vs {mb}");
            }
            let t = square_pattern(s, true);
            for i in 0..s {
                for j in 0..s {
                    assert_eq!(t[i * s + j], p[j * s + i]);
                }
            }
        }
    }
}
