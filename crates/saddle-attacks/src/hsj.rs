//! HopSkipJump: a decision-based attack, which sees only the model's predicted label.

use saddle_models::Classifier;
use saddle_tensor::{rng::Rng, Backend, TensorLike};

use crate::attack::{
    argmax_rows, check_batch, finite_logits, label_margins, Attack, AttackResult, ModeGuard,
};
use crate::error::{check_eps, AttackError, Result};
use crate::threat::{l2_project_host, ThreatModel, L2};

const NAME: &str = "hsj";

/// Images per forward pass of the attack's queries.
const CHUNK: usize = 1024;
/// Uniform-noise images tried per example to find an adversarial starting point.
const INIT_TRIES: usize = 100;
/// Halvings of the step size before an iteration gives up its update.
const MAX_HALVINGS: usize = 20;
/// Fewest gradient-estimation queries an iteration is worth running with.
const MIN_EVALS: usize = 10;

/// HopSkipJump (HopSkipJumpAttack), Chen, Jordan & Wainwright, *HopSkipJumpAttack: A
/// Query-Efficient Decision-Based Attack*, IEEE S&P 2020 (arXiv:1904.02144), untargeted, L2.
///
/// It needs only the predicted label `φ(x) = [argmax z(x) ≠ y]` (no logits, no gradient), the
/// threat Madry et al. (2018, §5) point to when their L∞-trained MNIST model looks robust to
/// gradient-based L2 attacks and is not to decision-based ones. Per example:
///
/// ```text
/// x ← uniform noise with φ = 1 (up to 100 draws), else the nearest image of the batch that
///     the model puts in another class (none: the example stays robust)
/// x ← boundary(x0, x)           binary search on the segment: the adversarial end, at most θ
///                               (in blend fraction) from the boundary, θ = γ / d^{3/2}
/// for t = 1, 2, ... while queries remain:
///     δ ← 0.1 at t = 1, else √d · θ · ‖x − x0‖
///     g ← Σ_b (φ(x + δ u_b) − φ̄) u_b, u_b uniform on the unit sphere, clipped to [0, 1]
///         (B_t = min(100 √t, 10,000) queries; φ̄ their mean, 0 if all are equal and then
///         g ← φ̄ Σ u_b); g ← g / ‖g‖
///     ξ ← ‖x − x0‖ / √t, halved until φ(clip(x + ξ g)) = 1 (at most 20 times)
///     x ← boundary(x0, clip(x + ξ g))
/// ```
///
/// The best (closest) adversarial point is kept per example. With [`HopSkipJump::stop_at_eps`]
/// (on by default) an example stops as soon as it is within ε of `x0`; off, it spends its whole
/// budget minimising the distance (what [`HopSkipJump::perturb_with_distances`] reports, from
/// which the accuracy at any radius can be read).
///
/// **Defaults** (the paper's): γ = 1, 100 initial gradient queries growing as √t up to 10,000,
/// geometric step search. The query budget per example is the caller's (the paper's figures
/// run to 25,000).
///
/// **Queries** are counted per example: every image whose decision the attack asks for counts
/// one (initial noise, binary-search points, gradient samples, step-size trials); the forward
/// pass that finds which images are correct at `x0`, and the final one reporting the result,
/// are not counted. An example never exceeds the budget: an iteration runs only when what it
/// may spend (its gradient queries, 20 step trials and a full binary search) fits.
///
/// **Result**: `x_adv` is the closest adversarial point found when it lies within ε (projected,
/// which leaves it unchanged up to rounding towards `x0`), else the best point projected onto
/// the ε-ball (the attack failed there), else `x0`. Every `x_adv` satisfies the bound of
/// [`L2`]. [`AttackResult::loss`] is the negated margin at `x_adv`.
#[derive(Clone, Debug)]
pub struct HopSkipJump {
    threat: L2,
    queries: usize,
    init_evals: usize,
    max_evals: usize,
    gamma: f64,
    stop_at_eps: bool,
    seed: u64,
}

/// What one example's search holds.
#[derive(Clone, Debug)]
struct Search {
    /// The current boundary point (adversarial).
    x: Vec<f32>,
    /// Its distance to `x0`.
    dist: f64,
    /// Queries spent.
    queries: usize,
    /// Still searching.
    live: bool,
}

impl HopSkipJump {
    /// HopSkipJump in the L2 ball of radius `eps` with a budget of `queries` decisions per
    /// example; the paper's γ = 1 and gradient-query schedule, stopping at ε, seed 0.
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] unless `eps` is finite and at least 0;
    /// [`AttackError::ZeroCount`] for zero queries.
    pub fn l2(eps: f32, queries: usize) -> Result<Self> {
        let a = HopSkipJump {
            threat: L2::new(eps)?,
            queries,
            init_evals: 100,
            max_evals: 10_000,
            gamma: 1.0,
            stop_at_eps: true,
            seed: 0,
        };
        a.validate()?;
        Ok(a)
    }

    /// The seed of the random draws (0 by default).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether an example stops once it is within ε (default true); off, every example spends
    /// its whole budget shrinking its distance.
    pub fn stop_at_eps(mut self, stop: bool) -> Self {
        self.stop_at_eps = stop;
        self
    }

    /// The paper's γ, which sets the binary search's precision θ = γ / d^{3/2} (default 1;
    /// must be finite and positive, checked when attacking).
    pub fn gamma(mut self, gamma: f64) -> Self {
        self.gamma = gamma;
        self
    }

    /// The threat model.
    pub fn threat(&self) -> &L2 {
        &self.threat
    }

    /// The query budget per example.
    pub fn queries(&self) -> usize {
        self.queries
    }

    fn validate(&self) -> Result<()> {
        check_eps(NAME, self.threat.eps())?;
        if self.queries == 0 {
            return Err(AttackError::ZeroCount {
                attack: NAME,
                what: "queries",
            });
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(AttackError::InvalidStepSize {
                attack: NAME,
                alpha: self.gamma as f32,
            });
        }
        Ok(())
    }

    /// Attacks the batch `x` (labels `y`); also returns, per example, the L2 distance of the
    /// closest adversarial point found (0 for an image misclassified at `x`, infinity where
    /// none was found) and the queries spent.
    ///
    /// # Errors
    /// As [`Attack::perturb`]; [`AttackError::NonFinite`] if the model returns a non-finite
    /// logit.
    pub fn perturb_with_distances<B: Backend>(
        &self,
        model: &mut dyn Classifier<B>,
        x0: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<(AttackResult<B>, Vec<f32>, Vec<usize>)> {
        self.validate()?;
        let (n, labels) = check_batch(NAME, model, x0, y, "labels")?;
        if n == 0 {
            return Ok((AttackResult::empty(x0), Vec::new(), Vec::new()));
        }
        let model = ModeGuard::eval(model);
        let m: &dyn Classifier<B> = &*model;
        let b = m.backend().clone();
        let shape = m.input_shape();
        let d: usize = shape.iter().product();
        let x0h = b.to_vec(x0)?;
        let eps = self.threat.eps() as f64;
        let theta = self.gamma / (d as f64 * (d as f64).sqrt());
        // Binary-search steps to bring an interval of length 1 under θ.
        let search_steps = (1.0 / theta).log2().ceil().max(0.0) as usize;
        let k = m.num_classes();
        let clean = argmax_rows(&finite_logits(NAME, m, x0)?, k);

        let mut base = Rng::new(self.seed);
        let mut rngs: Vec<Rng> = (0..n).map(|i| base.fork(i as u64)).collect();
        let mut s: Vec<Search> = (0..n)
            .map(|i| Search {
                x: x0h[i * d..(i + 1) * d].to_vec(),
                dist: if clean[i] == labels[i] {
                    f64::INFINITY
                } else {
                    0.0
                },
                queries: 0,
                live: clean[i] == labels[i] && d > 0,
            })
            .collect();
        let ctx = Ctx {
            m,
            shape,
            d,
            x0: &x0h,
            labels: &labels,
            theta,
        };

        // An adversarial start: uniform noise, at most INIT_TRIES draws, then to the boundary.
        let mut found = vec![false; n];
        for _ in 0..INIT_TRIES {
            let want: Vec<usize> = (0..n)
                .filter(|&i| {
                    s[i].live && !found[i] && s[i].queries + 1 + search_steps <= self.queries
                })
                .collect();
            if want.is_empty() {
                break;
            }
            let mut imgs = Vec::with_capacity(want.len() * d);
            for &i in &want {
                imgs.extend((0..d).map(|_| rngs[i].next_f32()));
            }
            let adv = ctx.decide(&imgs, &want)?;
            for (j, &i) in want.iter().enumerate() {
                s[i].queries += 1;
                if adv[j] {
                    found[i] = true;
                    s[i].x.copy_from_slice(&imgs[j * d..(j + 1) * d]);
                }
            }
        }
        // Else the other images of the batch the model puts in another class, nearest first.
        for i in 0..n {
            if !s[i].live || found[i] {
                continue;
            }
            let xi = &x0h[i * d..(i + 1) * d];
            let mut others: Vec<(f64, usize)> = (0..n)
                .filter(|&j| clean[j] != labels[i])
                .map(|j| (distance(&x0h[j * d..(j + 1) * d], xi), j))
                .collect();
            others.sort_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(&(_, j)) = others.first() {
                s[i].x.copy_from_slice(&x0h[j * d..(j + 1) * d]);
                found[i] = true;
            }
        }
        for i in 0..n {
            if s[i].live && !found[i] {
                s[i].live = false; // no adversarial start: nothing to search from
            }
        }
        let starts: Vec<usize> = (0..n).filter(|&i| s[i].live).collect();
        ctx.to_boundary(&mut s, &starts)?;
        let mut best: Vec<(f64, Vec<f32>)> = s.iter().map(|e| (e.dist, e.x.clone())).collect();
        let stop = |e: &Search| self.stop_at_eps && e.dist <= eps;
        for e in s.iter_mut() {
            if stop(e) {
                e.live = false;
            }
        }

        let mut t = 0usize;
        loop {
            t += 1;
            let evals = ((self.init_evals as f64 * (t as f64).sqrt()) as usize).min(self.max_evals);
            let reserve = MAX_HALVINGS + search_steps;
            // The gradient queries each live example can afford this iteration.
            let budget: Vec<usize> = (0..n)
                .map(|i| {
                    let left = self.queries.saturating_sub(s[i].queries + reserve);
                    if s[i].live {
                        evals.min(left)
                    } else {
                        0
                    }
                })
                .collect();
            for i in 0..n {
                if s[i].live && budget[i] < MIN_EVALS {
                    s[i].live = false;
                }
            }
            let live: Vec<usize> = (0..n).filter(|&i| s[i].live).collect();
            if live.is_empty() {
                break;
            }
            let delta: Vec<f64> = live
                .iter()
                .map(|&i| {
                    if t == 1 {
                        0.1
                    } else {
                        (d as f64).sqrt() * theta * s[i].dist
                    }
                })
                .collect();
            let grads = ctx.estimate_gradients(&mut s, &live, &budget, &delta, &mut rngs)?;

            // Geometric step-size search along the estimated gradient.
            let mut xi: Vec<f64> = live
                .iter()
                .map(|&i| s[i].dist / (t as f64).sqrt())
                .collect();
            let mut moved: Vec<Option<Vec<f32>>> = vec![None; live.len()];
            for _ in 0..MAX_HALVINGS {
                let pending: Vec<usize> = (0..live.len())
                    .filter(|&j| moved[j].is_none() && grads[j].is_some())
                    .collect();
                if pending.is_empty() {
                    break;
                }
                let mut imgs = Vec::with_capacity(pending.len() * d);
                for &j in &pending {
                    if let Some(g) = grads[j].as_deref() {
                        let x = &s[live[j]].x;
                        imgs.extend(
                            x.iter()
                                .zip(g)
                                .map(|(&v, &gv)| (v as f64 + xi[j] * gv).clamp(0.0, 1.0) as f32),
                        );
                    }
                }
                let who: Vec<usize> = pending.iter().map(|&j| live[j]).collect();
                let adv = ctx.decide(&imgs, &who)?;
                for (q, &j) in pending.iter().enumerate() {
                    s[live[j]].queries += 1;
                    if adv[q] {
                        moved[j] = Some(imgs[q * d..(q + 1) * d].to_vec());
                    } else {
                        xi[j] /= 2.0;
                    }
                }
            }
            let mut stepped = Vec::new();
            for (j, &i) in live.iter().enumerate() {
                if let Some(x) = moved[j].take() {
                    s[i].x = x;
                    stepped.push(i);
                }
            }
            ctx.to_boundary(&mut s, &stepped)?;
            for &i in &live {
                if s[i].dist < best[i].0 {
                    best[i] = (s[i].dist, s[i].x.clone());
                }
                if stop(&s[i]) {
                    s[i].live = false;
                }
            }
        }

        // The result: within ε, the closest point; beyond, the closest point pulled to ε.
        let mut out = x0h.clone();
        for i in 0..n {
            if best[i].0.is_finite() && best[i].0 > 0.0 {
                out[i * d..(i + 1) * d].copy_from_slice(&best[i].1);
            }
        }
        let out = l2_project_host(&out, &x0h, n, d, self.threat.eps())?;
        let x_adv = b.from_vec(x0.dims(), out)?;
        let z = finite_logits(NAME, m, &x_adv)?;
        let predictions = argmax_rows(&z, k);
        let loss = label_margins(&z, k, &labels).iter().map(|&v| -v).collect();
        let success = (0..n).map(|i| predictions[i] != labels[i]).collect();
        let res = AttackResult {
            x_adv,
            loss,
            success,
            predictions,
            trace: None,
        };
        let distances = best.iter().map(|(dist, _)| *dist as f32).collect();
        Ok((res, distances, s.iter().map(|e| e.queries).collect()))
    }
}

/// What the query helpers share.
struct Ctx<'a, B: Backend> {
    m: &'a dyn Classifier<B>,
    shape: [usize; 3],
    d: usize,
    x0: &'a [f32],
    labels: &'a [usize],
    theta: f64,
}

impl<B: Backend> Ctx<'_, B> {
    /// Whether each image of `imgs` (one after the other) is adversarial for the example
    /// `who[j]` it belongs to: the model's label differs from that example's.
    fn decide(&self, imgs: &[f32], who: &[usize]) -> Result<Vec<bool>> {
        let [c, h, w] = self.shape;
        let k = self.m.num_classes();
        let mut out = Vec::with_capacity(who.len());
        for (chunk, ids) in imgs.chunks(CHUNK * self.d.max(1)).zip(who.chunks(CHUNK)) {
            let x = self
                .m
                .backend()
                .from_vec(&[ids.len(), c, h, w], chunk.to_vec())?;
            let pred = argmax_rows(&finite_logits(NAME, self.m, &x)?, k);
            out.extend(ids.iter().zip(pred).map(|(&i, p)| p != self.labels[i]));
        }
        Ok(out)
    }

    /// `x0 + frac (x − x0)` of example `i`.
    fn blend(&self, i: usize, x: &[f32], frac: f64, out: &mut Vec<f32>) {
        let x0 = &self.x0[i * self.d..(i + 1) * self.d];
        out.extend(
            x0.iter()
                .zip(x)
                .map(|(&a, &v)| (a as f64 + frac * (v as f64 - a as f64)) as f32),
        );
    }

    /// Binary search on the segment from `x0` to the (adversarial) `s[i].x` of each `i` in
    /// `which`, until the adversarial end is within θ (in blend fraction) of the last
    /// non-adversarial point; `s[i].x` becomes that end and `s[i].dist` its distance.
    fn to_boundary(&self, s: &mut [Search], which: &[usize]) -> Result<()> {
        let d = self.d;
        let mut lo = vec![0.0f64; which.len()];
        let mut hi = vec![1.0f64; which.len()];
        loop {
            let open: Vec<usize> = (0..which.len())
                .filter(|&j| hi[j] - lo[j] > self.theta)
                .collect();
            if open.is_empty() {
                break;
            }
            let mut imgs = Vec::with_capacity(open.len() * d);
            for &j in &open {
                self.blend(which[j], &s[which[j]].x, 0.5 * (lo[j] + hi[j]), &mut imgs);
            }
            let who: Vec<usize> = open.iter().map(|&j| which[j]).collect();
            let adv = self.decide(&imgs, &who)?;
            for (q, &j) in open.iter().enumerate() {
                s[which[j]].queries += 1;
                let mid = 0.5 * (lo[j] + hi[j]);
                if adv[q] {
                    hi[j] = mid;
                } else {
                    lo[j] = mid;
                }
            }
        }
        for (j, &i) in which.iter().enumerate() {
            let mut x = Vec::with_capacity(d);
            self.blend(i, &s[i].x, hi[j], &mut x);
            s[i].x = x;
            s[i].dist = distance(&s[i].x, &self.x0[i * d..(i + 1) * d]);
        }
        Ok(())
    }

    /// The Monte-Carlo estimate of the boundary's normal at `s[i].x` for each `i = live[j]`,
    /// from `budget[i]` random unit directions of length `delta[j]`, normalised (None where it
    /// vanishes).
    fn estimate_gradients(
        &self,
        s: &mut [Search],
        live: &[usize],
        budget: &[usize],
        delta: &[f64],
        rngs: &mut [Rng],
    ) -> Result<Vec<Option<Vec<f64>>>> {
        let d = self.d;
        let mut sum_fu = vec![vec![0.0f64; d]; live.len()];
        let mut sum_u = vec![vec![0.0f64; d]; live.len()];
        let mut sum_f = vec![0.0f64; live.len()];
        let mut done = vec![0usize; live.len()];
        let per_round = (CHUNK / live.len().max(1)).max(1);
        let mut dir = vec![0.0f64; d];
        loop {
            let mut imgs = Vec::new();
            let mut who = Vec::new();
            let mut owner = Vec::new();
            for (j, &i) in live.iter().enumerate() {
                let take = per_round.min(budget[i] - done[j]);
                for _ in 0..take {
                    dir.iter_mut().for_each(|v| *v = rngs[i].normal() as f64);
                    let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
                    let x = &s[i].x;
                    imgs.extend(
                        x.iter().zip(&dir).map(|(&v, &u)| {
                            (v as f64 + delta[j] * u / norm).clamp(0.0, 1.0) as f32
                        }),
                    );
                    who.push(i);
                    owner.push(j);
                }
                done[j] += take;
            }
            if who.is_empty() {
                break;
            }
            let adv = self.decide(&imgs, &who)?;
            for (q, &j) in owner.iter().enumerate() {
                let i = live[j];
                s[i].queries += 1;
                let f = if adv[q] { 1.0 } else { -1.0 };
                sum_f[j] += f;
                let (x, img) = (&s[i].x, &imgs[q * d..(q + 1) * d]);
                for p in 0..d {
                    // The direction actually taken, after clipping to [0, 1].
                    let u = (img[p] as f64 - x[p] as f64) / delta[j];
                    sum_fu[j][p] += f * u;
                    sum_u[j][p] += u;
                }
            }
        }
        Ok((0..live.len())
            .map(|j| {
                let m = done[j] as f64;
                let mean_f = sum_f[j] / m;
                let g: Vec<f64> = if mean_f.abs() == 1.0 {
                    sum_u[j].iter().map(|u| mean_f * u / m).collect()
                } else {
                    sum_fu[j]
                        .iter()
                        .zip(&sum_u[j])
                        .map(|(fu, u)| (fu - mean_f * u) / m)
                        .collect()
                };
                let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                (norm > 0.0 && norm.is_finite()).then(|| g.iter().map(|v| v / norm).collect())
            })
            .collect())
    }
}

/// The L2 distance of `a` and `b`, in `f64`.
fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| {
            let v = p as f64 - q as f64;
            v * v
        })
        .sum::<f64>()
        .sqrt()
}

impl<B: Backend> Attack<B> for HopSkipJump {
    fn name(&self) -> &'static str {
        NAME
    }

    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>> {
        Ok(self.perturb_with_distances(model, x, y)?.0)
    }
}
