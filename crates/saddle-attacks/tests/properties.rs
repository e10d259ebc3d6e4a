//! Property tests of the attack invariants (the attacks issue's seven properties).
//!
//! Each property runs `PROPTEST_CASES` cases (default 128, so `cargo test` stays fast), counts
//! the cases its body actually ran and prints `property ID: ran N cases (M configured)`, which
//! `cargo xtask proptest` collects. `cargo xtask proptest` runs
//! `PROPTEST_CASES=10000 cargo test --release -p saddle-attacks --test properties -- --nocapture`.
//!
//! Inputs: random batch shapes `[1..4, 1..3, 1..5, 1..5]`, clean images in `[0, 1]` (with exact
//! 0s and 1s and tiny values), ε from 0 to 1e30, α from 1e-45 to `f32::MAX`, and gradients with
//! zeros (both signs), ordinary values, ±1e30, ±1e-30, ±`f32::MAX` and the smallest subnormal.
//!
//! The attacks are checked against references written here, outside the attack code: PGD with
//! the L∞ threat model (FGSM is its one step of size ε) as host loops over the model's input
//! gradient, and the L2 step and projection in `f64`. Each reference check is shown to reject a
//! deliberately wrong answer (an attack that returns its input, steps the wrong way, or a
//! random start that never moves) by the plain `#[test]`s at the end.
//!
//! Notation: `fl(v)` is `v` rounded to the nearest `f32`; `ulp⁺(v)` is the gap between `|v|` and
//! the next larger `f32`; `u = 2⁻⁵³` is the unit roundoff of the `f64` arithmetic the checks use.
//! Round-to-nearest gives `|fl(v) − v| ≤ ½·ulp⁺(fl(v))`.

mod common;

use std::cell::Cell;

use common::{batch, Mlp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use saddle_attacks::{Attack, Fgsm, Linf, Loss, Pgd, Targeting, ThreatModel, L2};
use saddle_models::Classifier;
use saddle_tensor::cpu::CpuTensor;
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend, TensorLike};

/// The unit roundoff of f64.
const U: f64 = f64::EPSILON / 2.0;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

/// Runs `body` on `PROPTEST_CASES` values of `strategy`, counting the cases the body ran, and
/// prints the count; panics with proptest's (shrunk) counterexample on a failure.
fn property<S: Strategy>(
    id: &str,
    strategy: S,
    body: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let configured = cases();
    let config = Config {
        cases: configured,
        failure_persistence: None,
        ..Config::default()
    };
    let ran = Cell::new(0u64);
    let result = TestRunner::new(config).run(&strategy, |v| {
        ran.set(ran.get() + 1);
        body(v)
    });
    if let Err(e) = result {
        panic!("property {id}: {e}");
    }
    println!(
        "property {id}: ran {} cases ({configured} configured)",
        ran.get()
    );
    assert!(
        ran.get() >= u64::from(configured),
        "property {id} ran {} cases, fewer than the {configured} configured",
        ran.get()
    );
}

// ---- strategies ----------------------------------------------------------------------------

fn dims() -> impl Strategy<Value = Vec<usize>> {
    (1usize..=4, 1usize..=3, 1usize..=5, 1usize..=5).prop_map(|(n, c, h, w)| vec![n, c, h, w])
}

fn signed(v: f32) -> impl Strategy<Value = f32> + Clone {
    prop_oneof![Just(v), Just(-v)]
}

/// A clean pixel in [0, 1].
fn pixel() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        6 => 0.0f32..=1.0,
        1 => Just(0.0f32),
        1 => Just(1.0f32),
        1 => Just(1e-30f32),
        1 => Just(1.0 - f32::EPSILON / 2.0),
    ]
}

/// A gradient entry.
fn gradient() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        4 => -10.0f32..10.0,
        2 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => signed(1e30),
        1 => signed(1e-30),
        1 => signed(f32::MAX),
        1 => signed(f32::from_bits(1)),
    ]
}

/// A finite point to project: near the image domain, or far away.
fn point() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![4 => -2.0f32..3.0, 3 => pixel(), 1 => signed(1e30), 1 => signed(f32::MAX)]
}

fn eps() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        4 => 0.0f32..=1.0,
        1 => Just(0.0f32),
        1 => Just(0.3f32),
        1 => Just(8.0f32 / 255.0),
        1 => Just(1e-30f32),
        1 => 1.0f32..100.0,
        1 => Just(1e30f32),
    ]
}

/// Step sizes over the whole positive f32 range (log-uniform, plus the extremes).
fn alpha() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![
        6 => (-30i32..=30, 1.0f32..10.0).prop_map(|(e, m)| m * 10f32.powi(e)),
        1 => Just(f32::MAX),
        1 => Just(f32::from_bits(1)),
        1 => Just(0.01f32),
    ]
}

/// A shape and `k` vectors of its size drawn from `elems[i]`.
fn tensors<S: Strategy<Value = f32> + Clone + 'static>(
    elems: [S; 3],
) -> impl Strategy<Value = (Vec<usize>, Vec<f32>, Vec<f32>, Vec<f32>)> {
    dims().prop_flat_map(move |d| {
        let n: usize = d.iter().product();
        (
            Just(d),
            prop::collection::vec(elems[0].clone(), n),
            prop::collection::vec(elems[1].clone(), n),
            prop::collection::vec(elems[2].clone(), n),
        )
    })
}

fn loss() -> impl Strategy<Value = Loss> {
    prop_oneof![
        Just(Loss::CrossEntropy),
        (0.0f32..60.0).prop_map(|kappa| Loss::Cw { kappa })
    ]
}

fn targeting() -> impl Strategy<Value = Targeting> {
    prop_oneof![3 => Just(Targeting::Untargeted), 1 => Just(Targeting::LeastLikely)]
}

// ---- the bounds ----------------------------------------------------------------------------

/// `ulp⁺(v)`: the gap between `|v|` and the next larger f32 (for `f32::MAX`, the gap below).
fn ulp_up(v: f32) -> f64 {
    let a = v.abs();
    if a == f32::MAX {
        return a as f64 - f32::from_bits(a.to_bits() - 1) as f64;
    }
    f32::from_bits(a.to_bits() + 1) as f64 - a as f64
}

/// Property 1's bound, for every coordinate:
///
/// - `x_adv ∈ [0, 1]`;
/// - `fl(x0 − ε) ≤ x_adv ≤ fl(x0 + ε)` exactly (the clamp bounds as computed in f32; clamping
///   to [0, 1] afterwards only moves towards `x0 ∈ [0, 1]`);
/// - hence `|x_adv − x0| ≤ ε + ½·ulp⁺(fl(x0 ± ε))` (the side `x_adv` is on), which is at most
///   `ε + 2⁻²⁴` since the bound that binds is in [0, 1]. Checked in f64; the check's own
///   rounding is at most `2u` relative, allowed for.
fn check_linf(x0: &[f32], xa: &[f32], eps: f32) -> Result<(), TestCaseError> {
    for (j, (&a, &o)) in xa.iter().zip(x0).enumerate() {
        prop_assert!((0.0..=1.0).contains(&a), "pixel {j}: {a} outside [0, 1]");
        let (lo, hi) = (o - eps, o + eps);
        prop_assert!(
            lo <= a && a <= hi,
            "pixel {j}: {a} outside [{lo}, {hi}] (x0 {o}, ε {eps})"
        );
        let (dev, edge) = if a >= o {
            (a as f64 - o as f64, hi)
        } else {
            (o as f64 - a as f64, lo)
        };
        let bound = eps as f64 + 0.5 * ulp_up(edge);
        prop_assert!(
            dev <= bound * (1.0 + 2.0 * U),
            "pixel {j}: |x_adv − x0| = {dev:e} exceeds ε + ½ulp = {bound:e} (x0 {o}, ε {eps})"
        );
        prop_assert!(dev <= eps as f64 + 2f64.powi(-24) * (1.0 + 2.0 * U));
    }
    Ok(())
}

/// Property 2's bound, per example of `d` pixels: `x_adv ∈ [0, 1]` and
/// `‖x_adv − x0‖₂ ≤ ε·(1 + (d + 3)·u)` (the projection's guarantee, see
/// `saddle_attacks::threat`), checked in f64 whose evaluation of the norm adds at most
/// `(d/2 + 3)·u` relative: the test allows `ε·(1 + (2d + 16)·u)`.
fn check_l2(x0: &[f32], xa: &[f32], d: usize, eps: f32) -> Result<(), TestCaseError> {
    prop_assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)), "outside [0, 1]");
    for (i, (a, o)) in xa.chunks(d).zip(x0.chunks(d)).enumerate() {
        let norm = l2_dist(a, o);
        let bound = eps as f64 * (1.0 + (2 * d + 16) as f64 * U);
        prop_assert!(
            norm <= bound,
            "example {i}: ‖x_adv − x0‖ = {norm:e} > {bound:e} (ε {eps})"
        );
    }
    Ok(())
}

fn l2_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn t(b: &Cpu, dims: &[usize], v: &[f32]) -> saddle_tensor::cpu::CpuTensor {
    b.from_vec(dims, v.to_vec()).unwrap()
}

// ---- references written outside the attack code -------------------------------------------

/// The labels an attack aims at and the sign of its objective: the true labels and `+1`
/// (ascend their loss), or the clean input's least-likely classes (first minimum) and `−1`.
fn aim_of(net: &Mlp, x: &CpuTensor, y: &CpuTensor, targeting: Targeting) -> (CpuTensor, f32) {
    let b = Cpu::new();
    match targeting {
        Targeting::Untargeted => (y.clone(), 1.0),
        Targeting::LeastLikely => {
            let k = net.num_classes();
            let clean = b.to_vec(&net.logits(x).unwrap()).unwrap();
            let ll: Vec<f32> = clean.chunks(k).map(|r| argmin(r) as f32).collect();
            (b.from_vec(&[ll.len()], ll).unwrap(), -1.0)
        }
    }
}

/// The gradient of the attack's objective at `x`: `sign · ∇ₓ Σ L(x, aim)` from the model's input
/// gradient (`saddle_models::loss_and_input_grad`), on the host.
fn objective_grad(net: &Mlp, x: &CpuTensor, aim: &CpuTensor, sign: f32, loss: Loss) -> Vec<f32> {
    let (_, g, _) = saddle_models::loss_and_input_grad(net, x, aim, loss).unwrap();
    let g = Cpu::new().to_vec(&g).unwrap();
    g.into_iter().map(|v| sign * v).collect()
}

/// PGD with the L∞ threat model, from `x0` (no random start, one restart, no early stop), as a
/// host loop written here: `x ← clip(clamp(x + α·sign(∇ₓ), x0 − ε, x0 + ε), 0, 1)` in f32 with
/// `sign(0) = 0`. Every operation is exact or one correctly rounded f32 sum, so the attack must
/// match it bit for bit. FGSM is the case `α = ε`, one step.
#[allow(clippy::too_many_arguments)]
fn pgd_linf_reference(
    net: &Mlp,
    x: &CpuTensor,
    y: &CpuTensor,
    eps: f32,
    alpha: f32,
    steps: usize,
    loss: Loss,
    targeting: Targeting,
) -> Vec<f32> {
    let b = Cpu::new();
    let x0 = b.to_vec(x).unwrap();
    let (aim, sign) = aim_of(net, x, y, targeting);
    let mut cur = x0.clone();
    for _ in 0..steps {
        let g = objective_grad(net, &t(&b, x.dims(), &cur), &aim, sign, loss);
        for ((c, &o), gv) in cur.iter_mut().zip(&x0).zip(g) {
            let s = if gv > 0.0 {
                alpha
            } else if gv < 0.0 {
                -alpha
            } else {
                0.0
            };
            let v = *c + s;
            let (lo, hi) = (o - eps, o + eps);
            let v = if v < lo {
                lo
            } else if v > hi {
                hi
            } else {
                v
            };
            *c = v.clamp(0.0, 1.0);
        }
    }
    cur
}

/// The L2 step and projection, written independently of `saddle_attacks::threat` in f64, per
/// example of `d` pixels: `y = x + α·g/‖g‖₂` (`y = x` where `‖g‖₂ = 0`; where `g` has infinite
/// entries, the direction of those entries), `δ = y − x0`, `δ ← ε·δ/‖δ‖₂` where `‖δ‖₂ > ε`,
/// then `x0 + δ` clipped to `[0, 1]`. Returns the point and, per example, the distance the f32
/// implementation may lie from it:
///
/// - the implementation rounds `y` to f32 (`≤ 2⁻²⁴·|yⱼ|` per coordinate, `2⁻¹⁴⁹` for
///   subnormals) after computing it in f64 (`≤ (d + 5)·u·α + u·|yⱼ|`): in all, at most
///   `e = 2⁻²³·(‖y‖₂ + α) + √d·2⁻¹⁴⁹` in L2 for `d ≤ 10⁴`;
/// - the radial projection is 1-Lipschitz, and `ε/R`-Lipschitz between points at distance at
///   least `R` from x0 (the inner-product-space Dunkl–Williams inequality), so that error
///   becomes at most `e·min(1, ε/(‖δ‖₂ − e))`; clipping to [0, 1] is 1-Lipschitz;
/// - the implementation aims at `ε(1 − γ)`, `γ = 4(d + 8)·u`, and computes the norms in f64:
///   at most `8(d + 8)·u·ε`;
/// - it rounds each coordinate to f32 towards x0, less than one ulp of a value in [0, 1]
///   (`≤ 2⁻²⁴`): at most `√d·2⁻²³` with a factor 2 to spare.
///
/// The sum, times `1 + 2⁻²⁰` for this function's own f64 rounding, is the tolerance.
fn l2_reference(
    x: &[f32],
    x0: &[f32],
    g: &[f32],
    alpha: f32,
    eps: f32,
    d: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (alpha, eps) = (alpha as f64, eps as f64);
    let mut out = Vec::with_capacity(x.len());
    let mut tol = Vec::new();
    for ((xi, oi), gi) in x.chunks(d).zip(x0.chunks(d)).zip(g.chunks(d)) {
        let infinite = gi.iter().filter(|v| v.is_infinite()).count();
        let dir: Vec<f64> = if infinite > 0 {
            let w = 1.0 / (infinite as f64).sqrt();
            gi.iter()
                .map(|v| {
                    if v.is_infinite() {
                        w * v.signum() as f64
                    } else {
                        0.0
                    }
                })
                .collect()
        } else {
            let n = gi.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            gi.iter()
                .map(|&v| if n > 0.0 { v as f64 / n } else { 0.0 })
                .collect()
        };
        let y: Vec<f64> = xi
            .iter()
            .zip(&dir)
            .map(|(&a, &u)| a as f64 + alpha * u)
            .collect();
        let mut delta: Vec<f64> = y.iter().zip(oi).map(|(&a, &o)| a - o as f64).collect();
        let r = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
        if r > eps {
            delta.iter_mut().for_each(|v| *v *= eps / r);
        }
        out.extend(
            delta
                .iter()
                .zip(oi)
                .map(|(&dv, &o)| (o as f64 + dv).clamp(0.0, 1.0)),
        );
        let ynorm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        let sd = (d as f64).sqrt();
        let e = 2f64.powi(-23) * (ynorm + alpha) + sd * 2f64.powi(-149);
        let lip = if r > e { (eps / (r - e)).min(1.0) } else { 1.0 };
        let bound = lip * e + 8.0 * (d as f64 + 8.0) * U * eps + sd * 2f64.powi(-23);
        tol.push(bound * (1.0 + 2f64.powi(-20)));
    }
    (out, tol)
}

/// Checks an f32 L2 step-and-project result against [`l2_reference`], per example in L2.
fn check_l2_reference(
    x: &[f32],
    x0: &[f32],
    g: &[f32],
    alpha: f32,
    eps: f32,
    d: usize,
    got: &[f32],
) -> Result<(), TestCaseError> {
    let (want, tol) = l2_reference(x, x0, g, alpha, eps, d);
    for (i, ((w, o), tol)) in want.chunks(d).zip(got.chunks(d)).zip(tol).enumerate() {
        let dist = w
            .iter()
            .zip(o)
            .map(|(&a, &b)| (a - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        prop_assert!(
            dist <= tol,
            "example {i}: the L2 step and projection lie {dist:e} from the f64 reference \
             (tolerance {tol:e}; α {alpha}, ε {eps})"
        );
    }
    Ok(())
}

/// Random starts must move. `starts` are draws for `x0` from different seeds; if `x0` has a
/// coordinate where one draw stays put with probability at most `2⁻¹⁰`, some draw must differ
/// from `x0` somewhere (a false alarm has probability at most `2⁻⁴⁰` with four draws).
///
/// - L∞: the noise is `U(−ε, ε)` (24-bit grid); a coordinate `0 < x0ⱼ < 1` with
///   `ε ≥ 2¹⁰·ulp⁺(x0ⱼ)` moves by at least `ulp⁺(x0ⱼ)`, hence to another f32 (clipping to
///   [0, 1] moves it to 0 or 1, also different), unless `|noise| < ulp⁺(x0ⱼ)`: probability
///   `≤ 2⁻¹⁰ + 2⁻²³`.
/// - L2: the radius is `ε·U^{1/d} ≥ ε·2⁻¹⁰` with probability `≥ 1 − 2⁻¹⁰`, and then some
///   coordinate moves by at least `ε·2⁻¹⁰/√d`; if every coordinate of an example has
///   `0 < x0ⱼ < 1` and `ε ≥ 2¹¹·√d·ulp⁺(x0ⱼ)`, that is two ulps, which rounding towards x0
///   cannot undo.
fn check_start_moves(
    x0: &[f32],
    starts: &[Vec<f32>],
    eps: f32,
    d: usize,
    l2: bool,
) -> Result<(), TestCaseError> {
    let interior = |o: f32| o > 0.0 && o < 1.0;
    let eligible = if l2 {
        let sd = (d as f64).sqrt();
        x0.chunks(d).any(|ex| {
            ex.iter()
                .all(|&o| interior(o) && eps as f64 >= 2f64.powi(11) * sd * ulp_up(o))
        })
    } else {
        x0.iter()
            .any(|&o| interior(o) && eps as f64 >= 2f64.powi(10) * ulp_up(o))
    };
    if eligible {
        let moved = starts.iter().any(|s| s.iter().zip(x0).any(|(a, o)| a != o));
        prop_assert!(
            moved,
            "no {} random start moved from x0 (ε {eps}, {} draws)",
            if l2 { "L2" } else { "L∞" },
            starts.len()
        );
    }
    Ok(())
}

// ---- properties ----------------------------------------------------------------------------

/// Property 1: L∞ projection: within ε + ½ulp, in [0,1], idempotent, identity inside.
#[test]
fn p1_linf_projection() {
    property(
        "1 (L∞ projection: within ε + ½ulp, in [0,1], idempotent, identity inside)",
        (
            tensors([
                pixel().boxed(),
                prop_oneof![8 => point(), 1 => signed(f32::INFINITY)].boxed(),
                (-1.0f32..=1.0).boxed(),
            ]),
            eps(),
        ),
        |((dims, x0, x, s), eps)| {
            let b = Cpu::new();
            let tm = Linf::new(eps).unwrap();
            let x0t = t(&b, &dims, &x0);
            let p = b
                .to_vec(&tm.project(&b, &t(&b, &dims, &x), &x0t).unwrap())
                .unwrap();
            check_linf(&x0, &p, eps)?;
            // Idempotent, exactly (as numbers: ±0 compare equal).
            let pp = b
                .to_vec(&tm.project(&b, &t(&b, &dims, &p), &x0t).unwrap())
                .unwrap();
            prop_assert_eq!(&pp, &p);
            // Identity on points inside: x0 + s·ε in f32, kept where inside the f32 box and [0, 1].
            let q: Vec<f32> = x0
                .iter()
                .zip(&s)
                .map(|(&o, &sv)| {
                    let v = o + sv * eps;
                    if (0.0..=1.0).contains(&v) && o - eps <= v && v <= o + eps {
                        v
                    } else {
                        o
                    }
                })
                .collect();
            let pq = b
                .to_vec(&tm.project(&b, &t(&b, &dims, &q), &x0t).unwrap())
                .unwrap();
            prop_assert_eq!(pq, q);
            Ok(())
        },
    );
}

/// Property 2: L2 projection: within ε(1 + O(d·2⁻⁵³)), in [0,1], idempotent, identity inside.
#[test]
fn p2_l2_projection() {
    property(
        "2 (L2 projection: within ε(1 + O(d·2⁻⁵³)), in [0,1], idempotent, identity inside)",
        (
            tensors([pixel().boxed(), point().boxed(), (-1.0f32..=1.0).boxed()]),
            eps(),
            0.0f64..0.99,
        ),
        |((dims, x0, x, w), eps, shrink)| {
            let b = Cpu::new();
            let tm = L2::new(eps).unwrap();
            let d: usize = dims[1..].iter().product();
            let x0t = t(&b, &dims, &x0);
            let p = b
                .to_vec(&tm.project(&b, &t(&b, &dims, &x), &x0t).unwrap())
                .unwrap();
            check_l2(&x0, &p, d, eps)?;
            // Idempotent: exactly (the rescaling aims at ε(1 − γ), whose computed norm is ≤ ε).
            let pp = b
                .to_vec(&tm.project(&b, &t(&b, &dims, &p), &x0t).unwrap())
                .unwrap();
            prop_assert_eq!(&pp, &p);
            for (i, ((xi, oi), pi)) in x.chunks(d).zip(x0.chunks(d)).zip(p.chunks(d)).enumerate() {
                // A far point whose projection needs no clipping lands on the sphere, up to one f32
                // ulp (≤ 2⁻²³ in [0, 1]) per coordinate lost by rounding towards x0.
                let dist = l2_dist(xi, oi);
                if eps >= 1e-3 && dist > eps as f64 {
                    let s = eps as f64 / dist;
                    let unclipped = xi.iter().zip(oi).all(|(&a, &o)| {
                        (0.0..=1.0).contains(&(o as f64 + s * (a as f64 - o as f64)))
                    });
                    if unclipped {
                        let got = l2_dist(pi, oi);
                        let slack = (d as f64).sqrt() * 2f64.powi(-23) + eps as f64 * 1e-9;
                        prop_assert!(got >= eps as f64 - slack, "example {i}: {got} < ε = {eps}");
                    }
                }
            }
            // Identity on points inside: x0 + w·shrink·ε/‖w‖, clipped; checked where its norm is
            // below ε (rounding to f32 can push a point meant to be inside a hair outside).
            let mut q = x0.clone();
            for ((qi, oi), wi) in q.chunks_mut(d).zip(x0.chunks(d)).zip(w.chunks(d)) {
                let wn = wi.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                if wn > 0.0 {
                    let s = shrink * eps as f64 / wn;
                    for ((qv, &o), &wv) in qi.iter_mut().zip(oi).zip(wi) {
                        *qv = ((o as f64 + s * wv as f64) as f32).clamp(0.0, 1.0);
                    }
                }
                if l2_dist(qi, oi) > eps as f64 * (1.0 - 1e-9) {
                    qi.copy_from_slice(oi);
                }
            }
            let pq = b
                .to_vec(&tm.project(&b, &t(&b, &dims, &q), &x0t).unwrap())
                .unwrap();
            prop_assert_eq!(pq, q);
            Ok(())
        },
    );
}

/// Property 3: sign step: each coordinate moves by exactly +α, −α or 0; 0 iff g = 0.
#[test]
fn p3_sign_step() {
    property(
        "3 (sign step: each coordinate moves by exactly +α, −α or 0; 0 iff g = 0)",
        (
            tensors([pixel().boxed(), pixel().boxed(), gradient().boxed()]),
            eps(),
            alpha(),
        ),
        |((dims, x, x0, g), eps, alpha)| {
            let b = Cpu::new();
            let tm = Linf::new(eps).unwrap();
            let (xt, gt) = (t(&b, &dims, &x), t(&b, &dims, &g));
            let out = b.to_vec(&tm.step(&b, &xt, &gt, alpha).unwrap()).unwrap();
            for j in 0..x.len() {
                let (xv, gv, ov) = (x[j], g[j], out[j]);
                let s = if gv > 0.0 {
                    1.0
                } else if gv < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                // Exactly the f32 sum x + α, x − α, or x itself where g = 0 (both signs of zero).
                let want = if s > 0.0 {
                    xv + alpha
                } else if s < 0.0 {
                    xv - alpha
                } else {
                    xv
                };
                prop_assert_eq!(ov, want, "pixel {}: x {} g {} α {}", j, xv, gv, alpha);
                // In exact arithmetic the move is s·α up to the rounding of that sum.
                let moved = ov as f64 - xv as f64;
                let err = (moved - s * alpha as f64).abs();
                prop_assert!(err <= 0.5 * ulp_up(ov) + 4.0 * U * (alpha as f64 + 1.0));
                // It moves (in the gradient's direction) wherever g ≠ 0 and α is not below the
                // float spacing at x; it does not move where g = 0.
                if s == 0.0 {
                    prop_assert_eq!(ov, xv);
                } else if alpha as f64 >= ulp_up(xv) {
                    prop_assert!((ov > xv) == (s > 0.0) && ov != xv, "pixel {}: no move", j);
                }
            }
            // The fused step-and-project equals the composition, exactly, for both threat models.
            let x0t = t(&b, &dims, &x0);
            let fused = b
                .to_vec(&tm.step_and_project(&b, &xt, &x0t, &gt, alpha).unwrap())
                .unwrap();
            let composed = b
                .to_vec(
                    &tm.project(&b, &tm.step(&b, &xt, &gt, alpha).unwrap(), &x0t)
                        .unwrap(),
                )
                .unwrap();
            prop_assert_eq!(fused, composed);
            let l2 = L2::new(eps).unwrap();
            let fused = b
                .to_vec(&l2.step_and_project(&b, &xt, &x0t, &gt, alpha).unwrap())
                .unwrap();
            let composed = b
                .to_vec(
                    &l2.project(&b, &l2.step(&b, &xt, &gt, alpha).unwrap(), &x0t)
                        .unwrap(),
                )
                .unwrap();
            prop_assert_eq!(&fused, &composed);
            // Both of those call the same host code: the fused L2 step and projection are also
            // checked against the independent f64 reference written in this file.
            let d: usize = dims[1..].iter().product();
            check_l2_reference(&x, &x0, &g, alpha, eps, d, &fused)?;
            Ok(())
        },
    );
}

/// Property 3b: L2 step: α·g/‖g‖ per example, no move where ‖g‖ = 0.
#[test]
fn p3b_l2_step() {
    property(
        "3b (L2 step: α·g/‖g‖ per example, no move where ‖g‖ = 0)",
        (
            tensors([pixel().boxed(), pixel().boxed(), gradient().boxed()]),
            0usize..4,
            alpha(),
        ),
        |((dims, x, _x0, g), zero_example, alpha)| {
            let b = Cpu::new();
            let tm = L2::new(0.5).unwrap();
            let d: usize = dims[1..].iter().product();
            let mut g = g;
            if zero_example < dims[0] {
                g[zero_example * d..(zero_example + 1) * d].fill(0.0);
            }
            let out = b
                .to_vec(
                    &tm.step(&b, &t(&b, &dims, &x), &t(&b, &dims, &g), alpha)
                        .unwrap(),
                )
                .unwrap();
            for i in 0..dims[0] {
                let r = i * d..(i + 1) * d;
                let (xi, gi, oi) = (&x[r.clone()], &g[r.clone()], &out[r]);
                let norm = gi.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                if norm == 0.0 {
                    prop_assert_eq!(oi, xi);
                    continue;
                }
                // Each coordinate moves by α·gⱼ/‖g‖ up to the rounding of the f32 result.
                for j in 0..d {
                    let want = alpha as f64 * (gi[j] as f64 / norm);
                    let err = ((oi[j] as f64 - xi[j] as f64) - want).abs();
                    prop_assert!(
                        err <= 0.5 * ulp_up(oi[j]) + 8.0 * U * (alpha as f64 + 1.0),
                        "example {} pixel {}: moved {} instead of {}",
                        i,
                        j,
                        oi[j] - xi[j],
                        want
                    );
                }
            }
            Ok(())
        },
    );
}

/// Property 4: random start: inside the ball and in [0,1], and moving, L∞ and L2.
#[test]
fn p4_random_start() {
    property(
        "4 (random start: inside the ball and in [0,1], and moving, L∞ and L2)",
        (
            tensors([pixel().boxed(), pixel().boxed(), pixel().boxed()]),
            eps(),
            any::<u64>(),
        ),
        |((dims, x0, _a, _b), eps, seed)| {
            let b = Cpu::new();
            let d: usize = dims[1..].iter().product();
            let x0t = t(&b, &dims, &x0);
            let linf = Linf::new(eps).unwrap();
            let s = b
                .to_vec(&linf.random_init(&b, &x0t, &mut Rng::new(seed)).unwrap())
                .unwrap();
            check_linf(&x0, &s, eps)?;
            let again = b
                .to_vec(&linf.random_init(&b, &x0t, &mut Rng::new(seed)).unwrap())
                .unwrap();
            prop_assert_eq!(&again, &s);
            let l2 = L2::new(eps).unwrap();
            let s = b
                .to_vec(&l2.random_init(&b, &x0t, &mut Rng::new(seed)).unwrap())
                .unwrap();
            check_l2(&x0, &s, d, eps)?;
            // The starts move: four draws (other seeds) of each threat model.
            let draws = |l2_ball: bool| -> Vec<Vec<f32>> {
                (0..4u64)
                    .map(|k| {
                        let mut rng = Rng::new(seed ^ (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                        let s = if l2_ball {
                            l2.random_init(&b, &x0t, &mut rng)
                        } else {
                            linf.random_init(&b, &x0t, &mut rng)
                        };
                        b.to_vec(&s.unwrap()).unwrap()
                    })
                    .collect()
            };
            check_start_moves(&x0, &draws(false), eps, d, false)?;
            check_start_moves(&x0, &draws(true), eps, d, true)?;
            Ok(())
        },
    );
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
}

fn argmin(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, j| if row[j] < row[best] { j } else { best })
}

/// A random stand-in model and batch.
#[derive(Clone, Debug)]
struct Setup {
    n: usize,
    shape: [usize; 3],
    classes: usize,
    hidden: usize,
    scale: f32,
    seed: u64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..=4,
        1usize..=2,
        1usize..=5,
        1usize..=5,
        2usize..=5,
        1usize..=8,
        prop_oneof![Just(0.1f32), Just(1.0), Just(10.0)],
        any::<u64>(),
    )
        .prop_map(|(n, c, h, w, classes, hidden, scale, seed)| Setup {
            n,
            shape: [c, h, w],
            classes,
            hidden,
            scale,
            seed,
        })
}

impl Setup {
    fn build(
        &self,
    ) -> (
        Mlp,
        saddle_tensor::cpu::CpuTensor,
        saddle_tensor::cpu::CpuTensor,
    ) {
        let net = Mlp::new(self.shape, self.hidden, self.classes, self.scale, self.seed);
        let (x, y) = batch(
            &Cpu::new(),
            self.n,
            self.shape,
            self.classes,
            self.seed ^ 0x5eed,
        );
        (net, x, y)
    }
    fn d(&self) -> usize {
        self.shape.iter().product()
    }
}

/// PGD options drawn by a property.
#[derive(Clone, Copy, Debug)]
struct Opts {
    random_start: bool,
    restarts: usize,
    early_stop: bool,
    loss: Loss,
    targeting: Targeting,
    seed: u64,
}

impl Opts {
    fn apply<T: ThreatModel>(&self, p: Pgd<T>) -> Pgd<T> {
        p.random_start(self.random_start)
            .restarts(self.restarts)
            .early_stop(self.early_stop)
            .loss(self.loss)
            .targeting(self.targeting)
            .seed(self.seed)
    }
}

/// Property 5: FGSM equals one PGD step of size ε from x0 and the host reference, exactly.
#[test]
fn p5_fgsm_is_one_pgd_step() {
    property(
        "5 (FGSM equals one PGD step of size ε from x0 and the host reference, exactly)",
        (
            setup(),
            prop_oneof![4 => 1e-6f32..=1.0, 1 => Just(0.3f32), 1 => Just(1e-30f32), 1 => Just(5.0f32)],
            loss(),
            targeting(),
        ),
        |(s, eps, loss, targeting)| {
            let b = Cpu::new();
            let (mut net, x, y) = s.build();
            let f = Fgsm::new(eps)
                .unwrap()
                .loss(loss)
                .targeting(targeting)
                .perturb(&mut net, &x, &y)
                .unwrap();
            let p = Pgd::linf(eps, eps, 1)
                .unwrap()
                .random_start(false)
                .loss(loss)
                .targeting(targeting)
                .perturb(&mut net, &x, &y)
                .unwrap();
            prop_assert_eq!(b.to_vec(&f.x_adv).unwrap(), b.to_vec(&p.x_adv).unwrap());
            prop_assert_eq!(f.loss, p.loss);
            prop_assert_eq!(f.success, p.success);
            check_linf(&b.to_vec(&x).unwrap(), &b.to_vec(&f.x_adv).unwrap(), eps)?;
            // FGSM is built on PGD, so the comparison above cannot catch a fault they share:
            // check both against the reference written here, clip(x ± ε·sign(∇ₓL), 0, 1) from
            // the model's input gradient (towards the least-likely class: minus), exactly.
            let want = pgd_linf_reference(&net, &x, &y, eps, eps, 1, loss, targeting);
            prop_assert_eq!(b.to_vec(&f.x_adv).unwrap(), want);
            Ok(())
        },
    );
}

/// Property 6: PGD output satisfies 1 and 2 for any α and number of steps, and equals the host reference.
#[test]
fn p6_pgd_stays_inside() {
    property(
        "6 (PGD output satisfies 1 and 2 for any α and number of steps, and equals the host reference)",
        (setup(), any::<bool>(), eps(), alpha(), 1usize..=20, any::<bool>(), 1usize..=3, any::<bool>(), loss(), targeting()),
        |(s, l2, eps, alpha, steps, random_start, restarts, early_stop, loss, targeting)| {
            let b = Cpu::new();
            let (mut net, x, y) = s.build();
            let x0 = b.to_vec(&x).unwrap();
            let opts = Opts { random_start, restarts, early_stop, loss, targeting, seed: s.seed };
            let res = if l2 {
                opts.apply(Pgd::l2(eps, alpha, steps).unwrap()).trace(true).perturb(&mut net, &x, &y)
            } else {
                opts.apply(Pgd::linf(eps, alpha, steps).unwrap()).trace(true).perturb(&mut net, &x, &y)
            }
            .unwrap();
            let xa = b.to_vec(&res.x_adv).unwrap();
            if l2 { check_l2(&x0, &xa, s.d(), eps)?; } else { check_linf(&x0, &xa, eps)?; }
            prop_assert_eq!(res.loss.len(), s.n);
            // What is reported belongs to x_adv: predictions, success and loss recomputed there.
            let logits = net.logits(&res.x_adv).unwrap();
            let lv = b.to_vec(&logits).unwrap();
            let pred: Vec<usize> = lv.chunks(s.classes).map(argmax).collect();
            prop_assert_eq!(&pred, &res.predictions);
            let (aim, sign) = match targeting {
                Targeting::Untargeted => (y.clone(), 1.0f32),
                Targeting::LeastLikely => {
                    let clean = b.to_vec(&net.logits(&x).unwrap()).unwrap();
                    let ll: Vec<f32> = clean.chunks(s.classes).map(|r| argmin(r) as f32).collect();
                    (b.from_vec(&[s.n], ll).unwrap(), -1.0)
                }
            };
            let per = match loss {
                Loss::CrossEntropy => b.cross_entropy(&logits, &aim).unwrap(),
                Loss::Cw { kappa } => b.cw_loss(&logits, &aim, kappa).unwrap(),
            };
            let want: Vec<f32> = b.to_vec(&per).unwrap().iter().map(|v| sign * v).collect();
            prop_assert_eq!(&want, &res.loss);
            let aim = b.to_vec(&aim).unwrap();
            for i in 0..s.n {
                let hit = pred[i] == aim[i] as usize;
                prop_assert_eq!(res.success[i], hit == (targeting == Targeting::LeastLikely));
            }
            // Without a random start or early stop, PGD is the reference loop written here: for
            // L∞ exactly (any number of steps); for L2, one step within the f64 reference's
            // tolerance. (A PGD that returned its input would fail both wherever the gradient
            // moves a pixel.)
            if !random_start && !early_stop {
                if !l2 {
                    let want = pgd_linf_reference(&net, &x, &y, eps, alpha, steps, loss, targeting);
                    prop_assert_eq!(&xa, &want);
                } else if steps == 1 {
                    let (aim_t, sign) = aim_of(&net, &x, &y, targeting);
                    let g = objective_grad(&net, &x, &aim_t, sign, loss);
                    check_l2_reference(&x0, &x0, &g, alpha, eps, s.d(), &xa)?;
                }
            }
            let trace = res.trace.unwrap();
            prop_assert!(!trace.losses.is_empty() && trace.losses.len() <= restarts);
            prop_assert!(trace.losses.iter().all(|r| !r.is_empty() && r.len() <= steps + 1));
            Ok(())
        },
    );
}

/// Property 7: restarts: the worst case over k+1 restarts is at least as strong as over k.
#[test]
fn p7_more_restarts_are_no_weaker() {
    property(
        "7 (restarts: the worst case over k+1 restarts is at least as strong as over k)",
        (
            setup(),
            any::<bool>(),
            0.0f32..0.5,
            1e-3f32..0.2,
            1usize..=8,
            1usize..=3,
            any::<bool>(),
            loss(),
            targeting(),
        ),
        |(s, l2, eps, alpha, steps, k, early_stop, loss, targeting)| {
            let (mut net, x, y) = s.build();
            let run = |net: &mut Mlp, restarts: usize| {
                let opts = Opts {
                    random_start: true,
                    restarts,
                    early_stop,
                    loss,
                    targeting,
                    seed: s.seed,
                };
                if l2 {
                    opts.apply(Pgd::l2(eps, alpha, steps).unwrap())
                        .perturb(net, &x, &y)
                        .unwrap()
                } else {
                    opts.apply(Pgd::linf(eps, alpha, steps).unwrap())
                        .perturb(net, &x, &y)
                        .unwrap()
                }
            };
            let (a, b) = (run(&mut net, k), run(&mut net, k + 1));
            for i in 0..s.n {
                let stronger_or_equal = (b.success[i] && !a.success[i])
                    || (b.success[i] == a.success[i] && b.loss[i] >= a.loss[i]);
                prop_assert!(
                    stronger_or_equal,
                    "example {}: {} restarts gave ({}, {}), {} gave ({}, {})",
                    i,
                    k,
                    a.success[i],
                    a.loss[i],
                    k + 1,
                    b.success[i],
                    b.loss[i]
                );
            }
            Ok(())
        },
    );
}

/// The L∞ bound of property 1 is tight: with `x` far above, the projection returns
/// `fl(x0 + ε)`, which exceeds `x0 + ε` by up to half an ulp; a test demanding `≤ ε` would fail.
#[test]
fn the_linf_rounding_slack_is_needed_and_sufficient() {
    let b = Cpu::new();
    let mut worst = (0.0f64, 0.0f32, 0.0f32);
    for &eps in &[0.3f32, 8.0 / 255.0, 0.1, 0.01, 2.0 / 255.0] {
        let tm = Linf::new(eps).unwrap();
        let x0: Vec<f32> = (0..=1000).map(|i| i as f32 / 1000.0).collect();
        let far = vec![f32::INFINITY; x0.len()];
        let x0t = b.from_vec(&[x0.len()], x0.clone()).unwrap();
        let p = b
            .to_vec(
                &tm.project(&b, &b.from_vec(&[x0.len()], far).unwrap(), &x0t)
                    .unwrap(),
            )
            .unwrap();
        for (&a, &o) in p.iter().zip(&x0) {
            let excess = (a as f64 - o as f64) - eps as f64;
            let half_ulp = 0.5 * ulp_up(o + eps);
            assert!(
                excess <= half_ulp,
                "x0 {o} ε {eps}: excess {excess:e} > ½ulp {half_ulp:e}"
            );
            if excess / half_ulp > worst.0 {
                worst = (excess / half_ulp, o, eps);
            }
        }
    }
    println!(
        "largest |x_adv − x0| − ε: {:.3} half-ulps (x0 = {}, ε = {})",
        worst.0, worst.1, worst.2
    );
    assert!(
        worst.0 > 0.0,
        "some projection should exceed ε by a rounding"
    );
}

// ---- the reference checks can fail ---------------------------------------------------------

/// A small setup where the gradient moves pixels: 3 images of `[1, 4, 4]`, 4 classes.
fn small() -> (Mlp, CpuTensor, CpuTensor) {
    Setup {
        n: 3,
        shape: [1, 4, 4],
        classes: 4,
        hidden: 8,
        scale: 3.0,
        seed: 7,
    }
    .build()
}

/// The PGD/FGSM reference accepts the attack and rejects an attack that returns its input or
/// steps down the loss instead of up.
#[test]
fn the_pgd_reference_rejects_an_unmoved_or_reversed_attack() {
    let b = Cpu::new();
    let (mut net, x, y) = small();
    let x0 = b.to_vec(&x).unwrap();
    for targeting in [Targeting::Untargeted, Targeting::LeastLikely] {
        for (alpha, steps) in [(0.3f32, 1usize), (0.05, 8)] {
            let res = Pgd::linf(0.3, alpha, steps)
                .unwrap()
                .random_start(false)
                .targeting(targeting)
                .perturb(&mut net, &x, &y)
                .unwrap();
            let loss = Loss::CrossEntropy;
            let want = pgd_linf_reference(&net, &x, &y, 0.3, alpha, steps, loss, targeting);
            assert_eq!(b.to_vec(&res.x_adv).unwrap(), want, "{targeting:?}");
            assert_ne!(x0, want, "returning the input would pass ({targeting:?})");
            let reversed = match targeting {
                Targeting::Untargeted => Targeting::LeastLikely,
                Targeting::LeastLikely => Targeting::Untargeted,
            };
            let other = pgd_linf_reference(&net, &x, &y, 0.3, alpha, steps, loss, reversed);
            assert_ne!(
                other, want,
                "the other objective would pass ({targeting:?})"
            );
        }
        let fgsm = Fgsm::new(0.3)
            .unwrap()
            .targeting(targeting)
            .perturb(&mut net, &x, &y)
            .unwrap();
        let (aim_t, sign) = aim_of(&net, &x, &y, targeting);
        let g = objective_grad(&net, &x, &aim_t, sign, Loss::CrossEntropy);
        // Down the objective: x − ε·sign(∇), which the reference must not equal.
        let descent: Vec<f32> = x0
            .iter()
            .zip(&g)
            .map(|(&o, &gv)| (o - 0.3 * gv.signum() * f32::from(gv != 0.0)).clamp(0.0, 1.0))
            .collect();
        let want = pgd_linf_reference(&net, &x, &y, 0.3, 0.3, 1, Loss::CrossEntropy, targeting);
        assert_eq!(b.to_vec(&fgsm.x_adv).unwrap(), want);
        assert_ne!(descent, want);
    }
}

/// The f64 L2 reference accepts the implementation's step and projection and rejects: no move,
/// a step against the gradient, an unprojected step, and a step normalised in L1.
#[test]
fn the_l2_reference_rejects_wrong_steps_and_projections() {
    let b = Cpu::new();
    let dims = [2usize, 1, 2, 3];
    let d = 6;
    let x0: Vec<f32> = vec![0.5, 0.2, 0.9, 0.4, 0.6, 0.1, 0.3, 0.7, 0.5, 0.5, 0.2, 0.8];
    let x: Vec<f32> = x0.iter().map(|v| v + 0.01).collect();
    let g: Vec<f32> = vec![
        1.0, -2.0, 0.5, 3.0, -1.0, 0.25, -0.5, 1.5, 2.0, -3.0, 0.0, 1.0,
    ];
    let (eps, alpha) = (0.5f32, 0.2f32);
    let tm = L2::new(eps).unwrap();
    let got = b
        .to_vec(
            &tm.step_and_project(
                &b,
                &t(&b, &dims, &x),
                &t(&b, &dims, &x0),
                &t(&b, &dims, &g),
                alpha,
            )
            .unwrap(),
        )
        .unwrap();
    check_l2_reference(&x, &x0, &g, alpha, eps, d, &got).unwrap();
    let rejects = |wrong: &[f32], what: &str| {
        assert!(
            check_l2_reference(&x, &x0, &g, alpha, eps, d, wrong).is_err(),
            "the L2 reference check accepts {what}"
        );
    };
    rejects(&x, "a step that does not move");
    let neg: Vec<f32> = g.iter().map(|v| -v).collect();
    let back = b
        .to_vec(
            &tm.step_and_project(
                &b,
                &t(&b, &dims, &x),
                &t(&b, &dims, &x0),
                &t(&b, &dims, &neg),
                alpha,
            )
            .unwrap(),
        )
        .unwrap();
    rejects(&back, "a step against the gradient");
    // A step far outside the ball, left unprojected (only clipped).
    let (big, small_eps) = (2.0f32, 0.05f32);
    let far = b
        .to_vec(
            &tm.step(&b, &t(&b, &dims, &x), &t(&b, &dims, &g), big)
                .unwrap(),
        )
        .unwrap();
    let clipped: Vec<f32> = far.iter().map(|v| v.clamp(0.0, 1.0)).collect();
    assert!(
        check_l2_reference(&x, &x0, &g, big, small_eps, d, &clipped).is_err(),
        "the L2 reference check accepts an unprojected step"
    );
    // The step normalised by the L1 norm instead of the L2 norm.
    let mut l1 = x.clone();
    for (xi, gi) in l1.chunks_mut(d).zip(g.chunks(d)) {
        let n: f32 = gi.iter().map(|v| v.abs()).sum();
        xi.iter_mut()
            .zip(gi)
            .for_each(|(v, &gv)| *v += alpha * gv / n);
    }
    rejects(&l1, "a step normalised in L1");
}

/// The movement check rejects random starts that never move, for both threat models, and
/// accepts the real ones.
#[test]
fn a_random_start_that_never_moves_is_rejected() {
    let b = Cpu::new();
    let dims = [2usize, 1, 4, 4];
    let x0: Vec<f32> = (0..32).map(|i| 0.05 + 0.9 * i as f32 / 31.0).collect();
    let x0t = t(&b, &dims, &x0);
    for eps in [0.3f32, 8.0 / 255.0, 1e-3] {
        let unmoved = vec![x0.clone(); 4];
        assert!(check_start_moves(&x0, &unmoved, eps, 16, false).is_err());
        assert!(check_start_moves(&x0, &unmoved, eps, 16, true).is_err());
        let linf = Linf::new(eps).unwrap();
        let l2 = L2::new(eps).unwrap();
        let draw = |l2_ball: bool, seed: u64| {
            let mut rng = Rng::new(seed);
            let s = if l2_ball {
                l2.random_init(&b, &x0t, &mut rng)
            } else {
                linf.random_init(&b, &x0t, &mut rng)
            };
            b.to_vec(&s.unwrap()).unwrap()
        };
        for l2_ball in [false, true] {
            let starts: Vec<Vec<f32>> = (0..4).map(|k| draw(l2_ball, k)).collect();
            check_start_moves(&x0, &starts, eps, 16, l2_ball).unwrap();
        }
    }
}
