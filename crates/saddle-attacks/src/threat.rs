//! Threat models: the set `S` of allowed perturbations, with a random start inside it, an ascent
//! step and the projection back onto it (then onto the image domain `[0, 1]`).
//!
//! One generic PGD loop ([`crate::Pgd`]) runs over any [`ThreatModel`], as in MadryLab's
//! `robustness` (`AttackerStep`: `random_perturb`, `step`, `project`); unlike it, the invariants
//! below are property-tested (`tests/properties.rs`).
//!
//! **Invariants** (for `x0` in `[0, 1]`, any finite `x`, any finite gradient, any finite α > 0):
//!
//! - [`Linf`]: `project` clamps each coordinate to `[fl(x0 − ε), fl(x0 + ε)]` and then to
//!   `[0, 1]`, in `f32`. Clamping to `[0, 1]` only moves a coordinate towards `x0` (which is in
//!   `[0, 1]`), so the output satisfies `fl(x0 − ε) ≤ x_adv ≤ fl(x0 + ε)` exactly, and with
//!   round-to-nearest `|fl(v) − v| ≤ ½·ulp(fl(v))`:
//!   **`|x_adv − x0| ≤ ε + ½·ulp(fl(x0 ± ε)) ≤ ε + 2⁻²⁴`**, `x_adv ∈ [0, 1]`; projecting twice
//!   equals projecting once exactly, and points already inside are left unchanged.
//! - [`L2`]: per example, `project` leaves `δ = x − x0` alone when its norm (computed in `f64`)
//!   is at most ε, and otherwise rescales it to `ε·(1 − γ)` with `γ = 4(d + 8)·2⁻⁵³` (`d` pixels
//!   per example, `γ ≈ 3.5·10⁻¹³` for MNIST), then clips to `[0, 1]` and rounds each coordinate
//!   to `f32` **towards `x0`** (never away from it). Hence
//!   **`‖x_adv − x0‖₂ ≤ ε·(1 + (d + 3)·2⁻⁵³)`** in exact arithmetic (the slack covers points
//!   whose `f64` norm rounds down to ε; a rescaled point is within ε exactly), `x_adv ∈ [0, 1]`,
//!   projecting twice equals projecting once exactly (the margin γ makes a rescaled point's
//!   computed norm at most ε), and points inside are unchanged.
//!
//! The L2 threat model computes its norms on the host in `f64`, so that gradients as large as
//! `1e30` or as small as `1e-30` (whose squares overflow or underflow `f32`) still give a unit
//! step; this reads the gradient and the iterate back from the device once per step.

use saddle_tensor::rng::{Normal, Rng, Uniform};
use saddle_tensor::{Backend, TensorError, TensorLike};

use crate::error::{check_eps, AttackError, Result};

/// A norm ball around the clean input, intersected with the image domain `[0, 1]`.
///
/// Implementors provide the three pieces of a projected-gradient attack; the PGD loop composes
/// them as `x ← project(step(x, ∇ₓL, α), x0)` after `x ← random_init(x0)` (or `x ← x0`).
pub trait ThreatModel: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// A short name for messages: `"linf"` or `"l2"`.
    fn name(&self) -> &'static str;

    /// The radius ε of the ball, in `[0, 1]` pixel units.
    fn eps(&self) -> f32;

    /// A random point of the ball around `x0`, clipped to `[0, 1]` (then projected, so that it
    /// satisfies the same bounds as [`ThreatModel::project`]).
    ///
    /// # Errors
    /// A tensor error from the backend.
    fn random_init<B: Backend>(&self, b: &B, x0: &B::Tensor, rng: &mut Rng) -> Result<B::Tensor>;

    /// The ascent step from `x` along the gradient `g`, of size `alpha`, **before** projection.
    ///
    /// # Errors
    /// A tensor error; [`AttackError::NanGradient`] if the threat model reads the gradient and
    /// finds a NaN.
    fn step<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        g: &B::Tensor,
        alpha: f32,
    ) -> Result<B::Tensor>;

    /// [`ThreatModel::step`] with a step size per example (`alphas[i]` for example `i`, each
    /// finite and at least 0), before projection: what APGD's per-example step halving needs.
    ///
    /// # Errors
    /// As [`ThreatModel::step`]; a shape error if `alphas` does not have one entry per example.
    fn step_per_example<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        g: &B::Tensor,
        alphas: &[f32],
    ) -> Result<B::Tensor>;

    /// The projection onto the ball around `x0`, then onto `[0, 1]`. `x0` must be in `[0, 1]`.
    ///
    /// # Errors
    /// A tensor error (shapes); [`AttackError::NonFinite`] where the threat model needs finite
    /// coordinates (L2).
    fn project<B: Backend>(&self, b: &B, x: &B::Tensor, x0: &B::Tensor) -> Result<B::Tensor>;

    /// `project(step(x, g, alpha), x0)`; implementations override it with a fused version that
    /// gives the same result.
    ///
    /// # Errors
    /// As [`ThreatModel::step`] and [`ThreatModel::project`].
    fn step_and_project<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        x0: &B::Tensor,
        g: &B::Tensor,
        alpha: f32,
    ) -> Result<B::Tensor> {
        let moved = self.step(b, x, g, alpha)?;
        self.project(b, &moved, x0)
    }
}

/// The L∞ ball `{δ : ‖δ‖∞ ≤ ε}`: the paper's threat model (MNIST ε = 0.3, CIFAR-10 ε = 8/255).
///
/// - random start: `x0 + U(−ε, ε)` per coordinate, then projected;
/// - step: `x + α·sign(g)` with `sign(0) = 0`, so each coordinate moves by `+α`, `−α` or not at
///   all (exactly: the result is the `f32` sum `x + α`, `x − α` or `x`);
/// - projection: clamp to `[x0 − ε, x0 + ε]`, then to `[0, 1]` (the backend's fused
///   `pgd_step_linf` / `project_linf`).
///
/// See the [module documentation](self) for the proved bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linf {
    eps: f32,
}

impl Linf {
    /// The L∞ ball of radius `eps`.
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] if `eps` is negative, NaN or infinite.
    pub fn new(eps: f32) -> Result<Self> {
        check_eps("linf", eps)?;
        Ok(Linf { eps })
    }
}

impl ThreatModel for Linf {
    fn name(&self) -> &'static str {
        "linf"
    }

    fn eps(&self) -> f32 {
        self.eps
    }

    fn random_init<B: Backend>(&self, b: &B, x0: &B::Tensor, rng: &mut Rng) -> Result<B::Tensor> {
        // Drawn with ndarray-rand from saddle's seeded generator: the same values, in the same
        // order, as `rng.uniform(-ε, ε)` per coordinate.
        let (noise, _) = rng
            .array(x0.dims(), Uniform::new(-self.eps, self.eps))
            .into_raw_vec_and_offset();
        let noise = b.from_vec(x0.dims(), noise)?;
        let moved = b.add(x0, &noise)?;
        Ok(b.project_linf(&moved, x0, self.eps)?)
    }

    fn step<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        g: &B::Tensor,
        alpha: f32,
    ) -> Result<B::Tensor> {
        let s = b.sign(g)?;
        Ok(b.add(x, &b.affine(&s, alpha, 0.0)?)?)
    }

    fn step_per_example<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        g: &B::Tensor,
        alphas: &[f32],
    ) -> Result<B::Tensor> {
        check_same("linf step", x.dims(), g.dims())?;
        let (n, _) = batch_layout("linf step", x.dims())?;
        check_alphas("linf step", alphas, n)?;
        // x + αᵢ·sign(g) on the backend: each product is ±αᵢ or 0 exactly (sign(0) = 0 and
        // sign(NaN) = NaN, as `step`).
        let s = b.sign(g)?;
        let a = b.from_vec(&[n], alphas.to_vec())?;
        Ok(b.add(x, &b.mul_rows(&s, &a)?)?)
    }

    fn project<B: Backend>(&self, b: &B, x: &B::Tensor, x0: &B::Tensor) -> Result<B::Tensor> {
        Ok(b.project_linf(x, x0, self.eps)?)
    }

    fn step_and_project<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        x0: &B::Tensor,
        g: &B::Tensor,
        alpha: f32,
    ) -> Result<B::Tensor> {
        Ok(b.pgd_step_linf(x, x0, g, alpha, self.eps)?)
    }
}

/// The L2 ball `{δ : ‖δ‖₂ ≤ ε}` per example (the paper's appendix on L2 robustness and its
/// gradient-masking caveat).
///
/// - random start: uniform in the ball (Gaussian direction, radius `ε·U^{1/d}`), then projected;
/// - step: `x + α·g/‖g‖₂` per example, no move where `‖g‖₂ = 0` (an infinite gradient entry
///   gives the direction of the infinite entries);
/// - projection: rescale `δ` onto the ball, then clip to `[0, 1]`, rounding towards `x0`.
///
/// See the [module documentation](self) for the proved bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct L2 {
    eps: f32,
}

impl L2 {
    /// The L2 ball of radius `eps`.
    ///
    /// # Errors
    /// [`AttackError::InvalidEpsilon`] if `eps` is negative, NaN or infinite.
    pub fn new(eps: f32) -> Result<Self> {
        check_eps("l2", eps)?;
        Ok(L2 { eps })
    }
}

/// `(n, d)`: batch size and elements per example of a batch shape.
fn batch_layout(op: &'static str, dims: &[usize]) -> Result<(usize, usize)> {
    match dims.split_first() {
        Some((&n, rest)) => Ok((n, rest.iter().product())),
        None => {
            Err(TensorError::shape(op, "a batch needs a leading batch axis, got a scalar").into())
        }
    }
}

/// One finite step size of at least 0 per example.
fn check_alphas(op: &'static str, alphas: &[f32], n: usize) -> Result<()> {
    if alphas.len() != n {
        return Err(TensorError::shape(
            op,
            format!("{} step sizes for a batch of {n}", alphas.len()),
        )
        .into());
    }
    match alphas.iter().find(|a| !(a.is_finite() && **a >= 0.0)) {
        Some(&alpha) => Err(AttackError::InvalidStepSize { attack: op, alpha }),
        None => Ok(()),
    }
}

fn check_same(op: &'static str, a: &[usize], b: &[usize]) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(TensorError::shape(op, format!("{a:?} and {b:?} must be equal")).into())
    }
}

impl ThreatModel for L2 {
    fn name(&self) -> &'static str {
        "l2"
    }

    fn eps(&self) -> f32 {
        self.eps
    }

    fn random_init<B: Backend>(&self, b: &B, x0: &B::Tensor, rng: &mut Rng) -> Result<B::Tensor> {
        let (n, d) = batch_layout("l2 random_init", x0.dims())?;
        let x0h = b.to_vec(x0)?;
        let mut x = vec![0.0f32; x0h.len()];
        let mut z = vec![0.0f64; d];
        for i in 0..n {
            let draw = rng.array(&[d], Normal::new(1.0));
            z.iter_mut()
                .zip(draw.iter())
                .for_each(|(v, &u)| *v = u as f64);
            let zn = z.iter().map(|v| v * v).sum::<f64>().sqrt();
            let radius = self.eps as f64 * rng.next_f64().powf(1.0 / d.max(1) as f64);
            let scale = if zn > 0.0 { radius / zn } else { 0.0 };
            for j in 0..d {
                let k = i * d + j;
                x[k] = (x0h[k] as f64 + scale * z[j]) as f32;
            }
        }
        let out = l2_project_host(&x, &x0h, n, d, self.eps)?;
        Ok(b.from_vec(x0.dims(), out)?)
    }

    fn step<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        g: &B::Tensor,
        alpha: f32,
    ) -> Result<B::Tensor> {
        check_same("l2 step", x.dims(), g.dims())?;
        let (n, d) = batch_layout("l2 step", x.dims())?;
        let out = l2_step_host(&b.to_vec(x)?, &b.to_vec(g)?, n, d, &vec![alpha; n])?;
        Ok(b.from_vec(x.dims(), out)?)
    }

    fn step_per_example<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        g: &B::Tensor,
        alphas: &[f32],
    ) -> Result<B::Tensor> {
        check_same("l2 step", x.dims(), g.dims())?;
        let (n, d) = batch_layout("l2 step", x.dims())?;
        check_alphas("l2 step", alphas, n)?;
        // On the host, as `step` and `project`: the norms and `x + αᵢ·g/‖g‖` in f64, rounded
        // once to f32. A backend composite (norms, `mul_rows`, `add`) would round the scale and
        // the product separately and change the attacks' results.
        let out = l2_step_host(&b.to_vec(x)?, &b.to_vec(g)?, n, d, alphas)?;
        Ok(b.from_vec(x.dims(), out)?)
    }

    fn project<B: Backend>(&self, b: &B, x: &B::Tensor, x0: &B::Tensor) -> Result<B::Tensor> {
        check_same("l2 project", x.dims(), x0.dims())?;
        let (n, d) = batch_layout("l2 project", x.dims())?;
        let out = l2_project_host(&b.to_vec(x)?, &b.to_vec(x0)?, n, d, self.eps)?;
        Ok(b.from_vec(x.dims(), out)?)
    }

    fn step_and_project<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        x0: &B::Tensor,
        g: &B::Tensor,
        alpha: f32,
    ) -> Result<B::Tensor> {
        check_same("l2 step", x.dims(), g.dims())?;
        check_same("l2 project", x.dims(), x0.dims())?;
        let (n, d) = batch_layout("l2 step", x.dims())?;
        let moved = l2_step_host(&b.to_vec(x)?, &b.to_vec(g)?, n, d, &vec![alpha; n])?;
        let out = l2_project_host(&moved, &b.to_vec(x0)?, n, d, self.eps)?;
        Ok(b.from_vec(x.dims(), out)?)
    }
}

/// `x + αᵢ·g/‖g‖₂` per example `i`, in `f64`, rounded to `f32` (no move where `‖g‖₂ = 0`).
fn l2_step_host(x: &[f32], g: &[f32], n: usize, d: usize, alphas: &[f32]) -> Result<Vec<f32>> {
    let mut out = x.to_vec();
    for i in 0..n {
        let alpha = alphas[i] as f64;
        let gi = &g[i * d..(i + 1) * d];
        if let Some(j) = gi.iter().position(|v| v.is_nan()) {
            return Err(AttackError::NanGradient {
                attack: "l2 step",
                restart: 0,
                step: 0,
                index: i * d + j,
                example: i,
            });
        }
        let infinite = gi.iter().filter(|v| v.is_infinite()).count();
        let oi = &mut out[i * d..(i + 1) * d];
        if infinite > 0 {
            // The direction of the infinite entries, each of weight 1/sqrt(count).
            let w = alpha / (infinite as f64).sqrt();
            for (o, &gv) in oi.iter_mut().zip(gi) {
                if gv.is_infinite() {
                    *o = (*o as f64 + w * gv.signum() as f64) as f32;
                }
            }
            continue;
        }
        // f64 holds the square of any finite f32 (≤ 1.2e77) and of any subnormal (≥ 2e-90).
        let norm = gi
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            continue;
        }
        for (o, &gv) in oi.iter_mut().zip(gi) {
            *o = (*o as f64 + alpha * (gv as f64 / norm)) as f32;
        }
    }
    Ok(out)
}

/// `2⁻⁵³`, the unit roundoff of `f64`.
const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// Projection onto the L2 ball of radius `eps` around `x0` (per example), then onto `[0, 1]`;
/// see the module documentation for the bound this guarantees.
pub(crate) fn l2_project_host(
    x: &[f32],
    x0: &[f32],
    n: usize,
    d: usize,
    eps: f32,
) -> Result<Vec<f32>> {
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        return Err(AttackError::NonFinite {
            attack: "l2 project",
            what: "the point to project",
            index: k,
            value: x[k],
        });
    }
    let eps = eps as f64;
    let shrink = 1.0 - 4.0 * (d as f64 + 8.0) * UNIT_ROUNDOFF;
    let mut out = vec![0.0f32; x.len()];
    for i in 0..n {
        let (xi, x0i) = (&x[i * d..(i + 1) * d], &x0[i * d..(i + 1) * d]);
        let oi = &mut out[i * d..(i + 1) * d];
        let norm = xi
            .iter()
            .zip(x0i)
            .map(|(&a, &b)| {
                let v = a as f64 - b as f64;
                v * v
            })
            .sum::<f64>()
            .sqrt();
        if norm <= eps {
            for (o, &v) in oi.iter_mut().zip(xi) {
                *o = v.clamp(0.0, 1.0);
            }
        } else {
            let s = eps * shrink / norm;
            for ((o, &v), &v0) in oi.iter_mut().zip(xi).zip(x0i) {
                *o = place_toward(v0, s * (v as f64 - v0 as f64));
            }
        }
    }
    Ok(out)
}

/// `x0 + w` clipped to `[0, 1]` and rounded to an `f32` `r` with `r − x0` between 0 and `w`
/// (inclusive, exactly): the rounding never moves away from `x0`. `x0` must be in `[0, 1]`.
pub(crate) fn place_toward(x0: f32, w: f64) -> f32 {
    let t = (x0 as f64 + w).clamp(0.0, 1.0);
    let mut r = t as f32;
    if r == 0.0 {
        r = 0.0; // no negative zero, so that the bit steps below go the right way
    }
    loop {
        // r − x0 = hi + lo exactly (both are f32 values in [0, 1]; TwoSum in f64).
        let (hi, lo) = two_diff(r as f64, x0 as f64);
        let inside = if w >= 0.0 {
            r >= x0 && (hi < w || (hi == w && lo <= 0.0))
        } else {
            r <= x0 && (hi > w || (hi == w && lo >= 0.0))
        };
        if inside {
            return r;
        }
        // One ulp towards x0 (r ≥ 0 and r ≠ x0 here; r = x0 always satisfies the test).
        r = if r > x0 {
            f32::from_bits(r.to_bits() - 1)
        } else {
            f32::from_bits(r.to_bits() + 1)
        };
    }
}

/// `a − b = hi + lo` exactly, `hi = fl(a − b)` (Knuth's TwoSum, no overflow for our inputs).
fn two_diff(a: f64, b: f64) -> (f64, f64) {
    let nb = -b;
    let s = a + nb;
    let bb = s - a;
    let err = (a - (s - bb)) + (nb - bb);
    (s, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The random starts draw through ndarray-rand (`Rng::array`) the very values the
    /// element-by-element draws gave, so seeded attacks and trained models stay reproducible.
    #[test]
    fn random_starts_equal_the_element_by_element_draws() {
        use saddle_tensor::cpu::Cpu;
        let b = Cpu::new();
        let (n, d) = (3, 50);
        let x0h: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32 / 6.0).collect();
        let x0 = b.from_vec(&[n, 1, 5, 10], x0h.clone()).unwrap();
        for seed in [0, 1, 99] {
            let eps = 0.3;
            let got = Linf::new(eps)
                .unwrap()
                .random_init(&b, &x0, &mut Rng::new(seed))
                .unwrap();
            let mut rng = Rng::new(seed);
            let want: Vec<f32> = x0h
                .iter()
                .map(|&v| {
                    let moved = v + rng.uniform(-eps, eps);
                    moved.clamp(v - eps, v + eps).clamp(0.0, 1.0)
                })
                .collect();
            assert_eq!(b.to_vec(&got).unwrap(), want, "L∞, seed {seed}");

            let got = L2::new(1.0)
                .unwrap()
                .random_init(&b, &x0, &mut Rng::new(seed))
                .unwrap();
            let mut rng = Rng::new(seed);
            let mut x = vec![0.0f32; n * d];
            for i in 0..n {
                let z: Vec<f64> = (0..d).map(|_| rng.normal() as f64).collect();
                let zn = z.iter().map(|v| v * v).sum::<f64>().sqrt();
                let radius = rng.next_f64().powf(1.0 / d as f64);
                for j in 0..d {
                    x[i * d + j] = (x0h[i * d + j] as f64 + radius / zn * z[j]) as f32;
                }
            }
            let want = l2_project_host(&x, &x0h, n, d, 1.0).unwrap();
            assert_eq!(b.to_vec(&got).unwrap(), want, "L2, seed {seed}");
        }
    }

    #[test]
    fn place_toward_never_rounds_away_from_the_centre() {
        // 0.1 + 1e-9 rounds to the f32 above 0.1 + 1e-9's nearest; the result must not pass it.
        for &(x0, w) in &[
            (0.1f32, 1e-9f64),
            (0.1, -1e-9),
            (0.75, 0.3e-7),
            (0.75, -0.3e-7),
            (1e-30, 0.5),
            (0.5, 1e-30),
            (0.0, -1.0),
            (1.0, 1.0),
            (0.3, 0.0),
        ] {
            let r = place_toward(x0, w);
            let (hi, lo) = two_diff(r as f64, x0 as f64);
            assert!((0.0..=1.0).contains(&r), "{x0} {w} -> {r}");
            if w >= 0.0 {
                assert!(
                    hi + lo >= 0.0 && (hi < w || (hi == w && lo <= 0.0)),
                    "{x0} {w} -> {r}"
                );
            } else {
                assert!(
                    hi + lo <= 0.0 && (hi > w || (hi == w && lo >= 0.0)),
                    "{x0} {w} -> {r}"
                );
            }
        }
        // A move of 0.4 ulp stays at x0 (round-to-nearest would too), 1.6 ulp moves one ulp.
        let x0 = 0.75f32;
        let ulp = (f32::from_bits(x0.to_bits() + 1) - x0) as f64;
        assert_eq!(place_toward(x0, 0.4 * ulp), x0);
        assert_eq!(
            place_toward(x0, 1.6 * ulp),
            f32::from_bits(x0.to_bits() + 1)
        );
        assert_eq!(place_toward(x0, 0.6 * ulp), x0);
    }

    #[test]
    fn l2_step_has_unit_direction_for_huge_and_tiny_gradients() {
        for &gv in &[1e30f32, 1e-30, 1e-44, f32::MAX] {
            let out = l2_step_host(&[0.5, 0.5], &[gv, gv], 1, 2, &[0.1]).unwrap();
            let moved = ((out[0] - 0.5) as f64).hypot((out[1] - 0.5) as f64);
            assert!((moved - 0.1).abs() < 1e-7, "{gv}: {out:?}");
        }
        assert_eq!(
            l2_step_host(&[0.5, 0.25], &[0.0, -0.0], 1, 2, &[0.1]).unwrap(),
            vec![0.5, 0.25]
        );
        assert!(matches!(
            l2_step_host(&[0.5, 0.25], &[0.0, f32::NAN], 1, 2, &[0.1]),
            Err(AttackError::NanGradient { index: 1, .. })
        ));
    }

    #[test]
    fn l2_projection_of_a_far_point_lands_on_the_sphere() {
        let x0 = [0.5f32; 4];
        let x = [1e30f32, 0.5, 0.5, 0.5];
        let out = l2_project_host(&x, &x0, 1, 4, 0.25).unwrap();
        assert!(
            (out[0] - 0.75).abs() < 1e-6 && out[1..] == [0.5; 3],
            "{out:?}"
        );
    }
}
