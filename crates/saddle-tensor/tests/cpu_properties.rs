//! Property tests of the CPU backend's pure attack steps (STYLE.md point 8): the sign step moves
//! each coordinate by exactly ±α or 0, projections land inside the ε-ball and `[0, 1]` and are
//! idempotent, whatever the inputs.

use proptest::prelude::*;
use saddle_tensor::cpu::Cpu;
use saddle_tensor::Backend;

/// A batch `[n, d]` for an attack step: clean `x0` in `[0, 1]`, a current `x` somewhere in
/// `[0, 1]`, a gradient with exact zeros mixed in, and `alpha`, `eps`.
#[derive(Clone, Debug)]
struct Case {
    n: usize,
    d: usize,
    x0: Vec<f32>,
    x: Vec<f32>,
    g: Vec<f32>,
    alpha: f32,
    eps: f32,
}

fn pixel() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(0.0f32), 1 => Just(1.0f32), 6 => 0.0f32..=1.0]
}

fn grad() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(0.0f32), 4 => -1.0f32..=1.0]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..4, 1usize..40).prop_flat_map(|(n, d)| {
        let len = n * d;
        (
            prop::collection::vec(pixel(), len),
            prop::collection::vec(pixel(), len),
            prop::collection::vec(grad(), len),
            0.001f32..0.5,
            0.0f32..0.6,
        )
            .prop_map(move |(x0, x, g, alpha, eps)| Case {
                n,
                d,
                x0,
                x,
                g,
                alpha,
                eps,
            })
    })
}

type T = <Cpu as Backend>::Tensor;

fn up(b: &Cpu, c: &Case, v: &[f32]) -> T {
    b.from_vec(&[c.n, c.d], v.to_vec()).unwrap()
}

/// The f32 rounding allowed on a value in `[0, 1]` (one ulp of 1).
const ROUND: f32 = f32::EPSILON;

fn assert_in_box(y: &[f32]) -> Result<(), TestCaseError> {
    for (i, &v) in y.iter().enumerate() {
        prop_assert!(
            (0.0..=1.0).contains(&v),
            "element {} = {} outside [0, 1]",
            i,
            v
        );
    }
    Ok(())
}

fn assert_in_linf_ball(y: &[f32], x0: &[f32], eps: f32) -> Result<(), TestCaseError> {
    for i in 0..y.len() {
        let d = (y[i] - x0[i]).abs();
        prop_assert!(d <= eps + ROUND, "|y − x0| = {} > eps {} at {}", d, eps, i);
    }
    Ok(())
}

fn assert_in_l2_ball(c: &Case, y: &[f32], eps: f32) -> Result<(), TestCaseError> {
    for e in 0..c.n {
        let r = e * c.d..(e + 1) * c.d;
        let norm = y[r.clone()]
            .iter()
            .zip(&c.x0[r])
            .map(|(&a, &b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        // The rescaled δ has norm eps up to a few roundings per coordinate.
        let slack = f64::from(eps) * 1e-5 + 1e-6;
        prop_assert!(
            norm <= f64::from(eps) + slack,
            "example {}: ‖y − x0‖ = {} > {}",
            e,
            norm,
            eps
        );
    }
    Ok(())
}

/// Cases per property: `PROPTEST_CASES` (as `cargo xtask proptest` sets it), 128 by default.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn linf_step_moves_each_coordinate_by_alpha_or_zero(mut c in case()) {
        // Keep the ball and the box out of the way: x in [α, 1 − α], ε larger than any move.
        c.alpha = c.alpha.min(0.45);
        for v in &mut c.x {
            *v = c.alpha + (1.0 - 2.0 * c.alpha) * *v;
        }
        let b = Cpu::new();
        let y = b.pgd_step_linf(&up(&b, &c, &c.x), &up(&b, &c, &c.x), &up(&b, &c, &c.g), c.alpha, 10.0).unwrap();
        let y = b.to_vec(&y).unwrap();
        for i in 0..y.len() {
            let s = if c.g[i] > 0.0 { 1.0 } else if c.g[i] < 0.0 { -1.0 } else { 0.0 };
            let moved = y[i] - c.x[i];
            prop_assert!(
                (moved - s * c.alpha).abs() <= ROUND,
                "coordinate {} moved by {} for g = {}, alpha = {}", i, moved, c.g[i], c.alpha
            );
        }
    }

    #[test]
    fn linf_step_stays_in_the_ball_and_the_box(c in case()) {
        let b = Cpu::new();
        // Start from a point of the ball, as PGD does after its random start.
        let x0 = up(&b, &c, &c.x0);
        let x = b.project_linf(&up(&b, &c, &c.x), &x0, c.eps).unwrap();
        let y = b.pgd_step_linf(&x, &x0, &up(&b, &c, &c.g), c.alpha, c.eps).unwrap();
        let y = b.to_vec(&y).unwrap();
        assert_in_box(&y)?;
        assert_in_linf_ball(&y, &c.x0, c.eps)?;
    }

    #[test]
    fn project_linf_is_idempotent_and_lands_in_the_ball_and_box(c in case()) {
        let b = Cpu::new();
        let x0 = up(&b, &c, &c.x0);
        let p1 = b.project_linf(&up(&b, &c, &c.x), &x0, c.eps).unwrap();
        let p2 = b.project_linf(&p1, &x0, c.eps).unwrap();
        let (p1, p2) = (b.to_vec(&p1).unwrap(), b.to_vec(&p2).unwrap());
        prop_assert_eq!(&p1, &p2);
        assert_in_box(&p1)?;
        assert_in_linf_ball(&p1, &c.x0, c.eps)?;
    }

    #[test]
    fn project_l2_is_idempotent_and_lands_in_the_ball_and_box(c in case()) {
        let b = Cpu::new();
        let x0 = up(&b, &c, &c.x0);
        let p1 = b.project_l2(&up(&b, &c, &c.x), &x0, c.eps).unwrap();
        let p2 = b.project_l2(&p1, &x0, c.eps).unwrap();
        let (p1, p2) = (b.to_vec(&p1).unwrap(), b.to_vec(&p2).unwrap());
        for i in 0..p1.len() {
            prop_assert!((p1[i] - p2[i]).abs() <= 2.0 * ROUND, "not idempotent at {}: {} then {}", i, p1[i], p2[i]);
        }
        assert_in_box(&p1)?;
        assert_in_l2_ball(&c, &p1, c.eps)?;
    }

    #[test]
    fn l2_step_stays_in_the_ball_and_the_box(c in case()) {
        let b = Cpu::new();
        let x0 = up(&b, &c, &c.x0);
        let x = b.project_l2(&up(&b, &c, &c.x), &x0, c.eps).unwrap();
        let y = b.pgd_step_l2(&x, &x0, &up(&b, &c, &c.g), c.alpha, c.eps).unwrap();
        let y = b.to_vec(&y).unwrap();
        assert_in_box(&y)?;
        assert_in_l2_ball(&c, &y, c.eps)?;
    }
}
