//! The op suite every backend must pass.
//!
//! One `pub fn check_<op>` per operation of [`Backend`], generic over the backend. Each runs
//! several seeded random cases (odd sizes that are not multiples of 4, 8, 16 or 64; batch 1 and
//! more; stride 1, 2, 3; padding 0, 1, 2; broadcasting) and compares the backend's `f32` result
//! with the naive `f64` [`crate::reference`]. Every backward op is compared with **central finite
//! differences in f64 of the reference forward**: for a random `gy`, the gradient of
//! `⟨gy, f(x)⟩` with step [`FD_STEP`], on inputs drawn at least [`KINK_GAP`] away from the kinks
//! of ReLU, max-pool and the CW margin. Documented tie-breaking (ReLU at 0, the first maximum of
//! a pooling window, the first largest other logit of the CW loss) is checked on hand-made
//! inputs. Every check also feeds its op mismatched shapes or invalid arguments and expects a
//! [`TensorError::Shape`] or [`TensorError::InvalidArgument`] naming the op, never a panic.
//!
//! A check returns `Err` with the op, the case, the shapes and the worst element (got, want,
//! allowed), so a failure can be reproduced from the message alone.
//!
//! # Using it
//!
//! [`op_suite!`](crate::op_suite) expands to one `#[test]` per op in a module `op_suite`, so a
//! failing op is named by its test:
//!
//! ```
//! // tests/cpu_ops.rs
//! use saddle_tensor::{cpu::Cpu, testing::Tol};
//! saddle_tensor::op_suite!(Cpu::new(), Tol::CPU);
//! # fn main() {}
//! ```
//!
//! or call one check, or [`check_all`], directly:
//!
//! ```
//! use saddle_tensor::{cpu::Cpu, testing::{check_conv2d, Tol}};
//! check_conv2d(&Cpu::new(), Tol::CPU).unwrap();
//! ```
//!
//! # Tolerances
//!
//! An element passes when `|got − want| ≤ atol + rtol · mag`, where `want` is the `f64`
//! reference and `mag` is the magnitude that the `f32` rounding error is proportional to: `|want|`
//! for element-wise ops, and for reductions (sums, dot products, convolutions, the losses, batch
//! norm) the sum of the absolute values of the terms, computed by running the reference on
//! absolute values (it equals `|want|` when nothing cancels). See [`Tol`] for the values.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::{
    activate, activation_grad_from_output, Activation, AdamParams, Backend, BatchNormStats,
    SgdParams, TensorLike,
};
use crate::error::TensorError;
use crate::reference::{self, RefTensor};
use crate::shape::Conv2dParams;

/// Step of the central finite differences, in `f64`. The truncation error is `O(h²)` ≈ 1e-12
/// times the third derivative; the rounding error is at most a few `f64::EPSILON · |f| / h`
/// ≈ 1e-10 · |f| and is added to the allowance (see `fd_grad`).
pub const FD_STEP: f64 = 1e-6;

/// How far random inputs are kept from kinks (ReLU at 0, ties in a pooling window or among the
/// CW loss's logits, the CW margin at 0), in absolute value: a thousand times [`FD_STEP`], so a
/// finite-difference stencil never straddles one.
pub const KINK_GAP: f32 = 1e-3;

/// What a check returns: `Err` holds a message naming the op, the case and the worst element.
pub type CheckResult = Result<(), String>;

/// One check of the suite, as listed by [`checks`].
pub type CheckFn<B> = fn(&B, Tol) -> CheckResult;

// ---- tolerance ------------------------------------------------------------------------------

/// A relative-plus-absolute tolerance: `|got − want| ≤ atol + rtol · mag` with `mag ≥ |want|`
/// the magnitude of the terms that made `want` (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// Relative part, times `mag`.
    pub rtol: f64,
    /// Absolute part, for results that are zero in `f64` but rounded in `f32`, and for the
    /// finite differences' own rounding.
    pub atol: f64,
}

impl Tol {
    /// For a CPU backend computing in `f32`: `rtol = 1e-5`, `atol = 1e-6`.
    ///
    /// The unit roundoff of `f32` is `u = 2⁻²⁴ ≈ 6e-8`. An element-wise op rounds once or twice
    /// (error ≤ 2u·|want|). A sum of `L` terms in any order errs by at most `γ_L ≈ L·u` times the
    /// sum of their absolute values (the `mag` used here), and by about `√L·u` times it with
    /// random rounding. `rtol = 1e-5 ≈ 170u` covers the worst case up to `L ≈ 170` and the
    /// typical case far beyond the longest reductions in the suite (`L = 4097`: `√L·u ≈ 3.8e-6`),
    /// while any real bug (a wrong index, a missing term) is off by `O(mag)`, a hundred thousand
    /// times more. `atol = 1e-6` absorbs the finite differences' rounding (≈ 1e-9 here) and
    /// results that are exactly zero in `f64`. Measured: the CPU backend's worst element over
    /// the whole suite is 2.1e-6·mag (Adam's bias correction at step 1000, `β2^t` in `f32`); every
    /// other op stays below 1e-6·mag.
    pub const CPU: Tol = Tol {
        rtol: 1e-5,
        atol: 1e-6,
    };

    /// For a GPU backend: `rtol = 1e-4`, `atol = 1e-5`, ten times looser than [`Tol::CPU`].
    ///
    /// WGSL only promises `exp`/`log` to about 3 ulp plus `2·|x|` ulp, division and `sqrt` to
    /// 2.5 ulp, and may contract multiply-adds; reductions are split across workgroups in an
    /// order the driver chooses. That moves the losses, batch norm and Adam by tens of ulp,
    /// still a thousand times below what a bug does.
    pub const GPU: Tol = Tol {
        rtol: 1e-4,
        atol: 1e-5,
    };

    /// The largest error allowed for `want` with magnitude `mag` (taken as at least `|want|`).
    pub fn allowance(&self, want: f64, mag: f64) -> f64 {
        self.atol + self.rtol * mag.max(want.abs())
    }

    /// Whether `got` is close enough to `want`. A NaN `want` requires a NaN `got`; an infinite
    /// `want` requires the same infinity.
    pub fn allows(&self, got: f64, want: f64, mag: f64) -> bool {
        if want.is_nan() {
            got.is_nan()
        } else if want.is_infinite() {
            got == want
        } else {
            (got - want).abs() <= self.allowance(want, mag)
        }
    }

    /// The same tolerance with `extra` added to `atol`.
    pub fn plus_atol(self, extra: f64) -> Tol {
        Tol {
            atol: self.atol + extra,
            ..self
        }
    }
}

impl Default for Tol {
    /// [`Tol::CPU`].
    fn default() -> Self {
        Tol::CPU
    }
}

// ---- random inputs --------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny seeded generator, enough for test inputs, with a
/// stream fixed forever by its seed.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]` (24 random bits, so every draw is exact in `f32` before scaling).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / 16_777_216.0;
        let v = lo + (hi - lo) * u;
        if v > hi {
            hi
        } else {
            v
        }
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.uniform(0.0, 1.0) < p
    }
}

/// `len` values uniform in `[lo, hi]` from `seed`.
pub fn random_vec(len: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.uniform(lo, hi)).collect()
}

/// A tensor of `shape` on backend `b` with values uniform in `[lo, hi]` from `seed`.
///
/// # Errors
/// Whatever [`Backend::from_vec`] returns (an overflowing shape, a device error).
pub fn random_tensor<B: Backend>(
    b: &B,
    shape: &[usize],
    lo: f32,
    hi: f32,
    seed: u64,
) -> crate::Result<B::Tensor> {
    let n = crate::shape::checked_numel("random_tensor", shape)?;
    b.from_vec(shape, random_vec(n, lo, hi, seed))
}

// ---- plumbing -------------------------------------------------------------------------------

/// Host data given identically to the backend (as `f32`) and to the reference (widened).
#[derive(Clone, Debug)]
struct Host {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Host {
    fn new(shape: &[usize], data: Vec<f32>) -> Host {
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "suite bug: host data for {shape:?}"
        );
        Host {
            shape: shape.to_vec(),
            data,
        }
    }

    fn random(rng: &mut SplitMix64, shape: &[usize], lo: f32, hi: f32) -> Host {
        let n = shape.iter().product();
        Host::new(shape, (0..n).map(|_| rng.uniform(lo, hi)).collect())
    }

    /// Random values with `lo ≤ |v| ≤ hi` and a random sign.
    fn random_magnitude(rng: &mut SplitMix64, shape: &[usize], lo: f32, hi: f32) -> Host {
        let mut h = Host::random(rng, shape, lo, hi);
        for v in &mut h.data {
            if rng.chance(0.5) {
                *v = -*v;
            }
        }
        h
    }

    /// Sets a fraction `p` of the elements to `value`.
    fn sprinkle(mut self, rng: &mut SplitMix64, p: f32, value: f32) -> Host {
        for v in &mut self.data {
            if rng.chance(p) {
                *v = value;
            }
        }
        self
    }

    fn r(&self) -> RefTensor {
        RefTensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| f64::from(v)).collect(),
        }
    }

    fn up<B: Backend>(&self, b: &B, ctx: &str) -> Result<B::Tensor, String> {
        b.from_vec(&self.shape, self.data.clone())
            .backend(ctx, "from_vec")
    }
}

/// Turns errors into the suite's messages.
trait Report<T> {
    /// An error from the backend under test, where none was expected.
    fn backend(self, ctx: &str, op: &str) -> Result<T, String>;
    /// An error from the reference: a bug in the suite itself.
    fn reference(self, ctx: &str) -> Result<T, String>;
}

impl<T> Report<T> for crate::Result<T> {
    fn backend(self, ctx: &str, op: &str) -> Result<T, String> {
        self.map_err(|e| format!("{ctx}: {op} returned an unexpected error: {e}"))
    }
    fn reference(self, ctx: &str) -> Result<T, String> {
        self.map_err(|e| format!("{ctx}: the reference failed (a bug in the suite): {e}"))
    }
}

fn unravel(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = flat % shape[a].max(1);
        flat /= shape[a].max(1);
    }
    idx
}

/// Compares a backend result, element by element, with the reference.
fn compare(
    ctx: &str,
    got_shape: &[usize],
    got: &[f32],
    want: &RefTensor,
    mag: Option<&RefTensor>,
    tol: Tol,
) -> CheckResult {
    if got_shape != want.shape.as_slice() {
        return Err(format!(
            "{ctx}: result has shape {got_shape:?}, expected {:?}",
            want.shape
        ));
    }
    if got.len() != want.data.len() {
        return Err(format!(
            "{ctx}: result of shape {got_shape:?} has {} elements, expected {}",
            got.len(),
            want.data.len()
        ));
    }
    let mut bad = 0usize;
    let mut worst: Option<(usize, f64)> = None;
    for i in 0..got.len() {
        let (g, w) = (f64::from(got[i]), want.data[i]);
        let m = mag.map_or(w.abs(), |m| m.data[i]);
        if !tol.allows(g, w, m) {
            bad += 1;
            let excess = (g - w).abs() / tol.allowance(w, m);
            let excess = if excess.is_nan() {
                f64::INFINITY
            } else {
                excess
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => {
            let (g, w) = (f64::from(got[i]), want.data[i]);
            let m = mag.map_or(w.abs(), |m| m.data[i]);
            Err(format!(
                "{ctx}: {bad} of {} elements outside |got − want| ≤ {:e} + {:e}·mag; worst at \
                 index {:?}: got {g:e}, want {w:e}, |got − want| = {:e}, allowed {:e} (mag {m:e})",
                got.len(),
                tol.atol,
                tol.rtol,
                unravel(got_shape, i),
                (g - w).abs(),
                tol.allowance(w, m),
            ))
        }
    }
}

/// Downloads `got` and compares it with `want`.
fn expect_close<B: Backend>(
    b: &B,
    ctx: &str,
    got: &B::Tensor,
    want: &RefTensor,
    mag: Option<&RefTensor>,
    tol: Tol,
) -> CheckResult {
    let data = b.to_vec(got).backend(ctx, "to_vec")?;
    compare(ctx, got.dims(), &data, want, mag, tol)
}

/// Expects `f` to fail with [`TensorError::Shape`] or [`TensorError::InvalidArgument`]; with
/// `strict`, one whose `op` is `op` (required ops name themselves; a default-bodied composite
/// reports the primitive that found the problem, so it is not held to its own name).
fn expect_err<T>(
    ctx: &str,
    op: &'static str,
    strict: bool,
    what: &str,
    f: impl FnOnce() -> crate::Result<T>,
) -> CheckResult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(p) => Err(format!(
            "{ctx}: {op} panicked on {what} instead of returning an error: {}",
            panic_message(&*p)
        )),
        Ok(Ok(_)) => Err(format!("{ctx}: {op} accepted {what}; expected an error")),
        Ok(Err(TensorError::Shape { op: o, .. } | TensorError::InvalidArgument { op: o, .. }))
            if !strict || o == op =>
        {
            Ok(())
        }
        Ok(Err(e)) => Err(format!(
            "{ctx}: {op} on {what} returned `{e}` ({e:?}); expected a Shape or InvalidArgument \
             error naming `{op}`"
        )),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Central finite differences of `F(x) = ⟨gy, f(x)⟩` in `f64` for every element of `x`.
///
/// Each difference is taken output by output, `Σ_j gy_j·(f_j(x + h e_i) − f_j(x − h e_i))`, so
/// outputs that do not depend on `x_i` contribute exactly zero. Returns the gradient and a bound
/// on its rounding error, `4·ε·Σ_j |gy_j·f_j(x)| / (2h)`, to add to the allowance.
fn fd_grad(
    ctx: &str,
    x: &RefTensor,
    gy: &RefTensor,
    f: impl Fn(&RefTensor) -> crate::Result<RefTensor>,
) -> Result<(RefTensor, f64), String> {
    let y0 = f(x).reference(ctx)?;
    if y0.shape != gy.shape {
        return Err(format!(
            "{ctx}: suite bug: gy {:?} for output {:?}",
            gy.shape, y0.shape
        ));
    }
    let noise = 4.0
        * f64::EPSILON
        * y0.data
            .iter()
            .zip(&gy.data)
            .map(|(y, g)| (y * g).abs())
            .sum::<f64>()
        / (2.0 * FD_STEP);
    let mut xp = x.clone();
    let mut grad = RefTensor::full(&x.shape, 0.0);
    for i in 0..x.numel() {
        let orig = x.data[i];
        let (hi, lo) = (orig + FD_STEP, orig - FD_STEP);
        xp.data[i] = hi;
        let yp = f(&xp).reference(ctx)?;
        xp.data[i] = lo;
        let ym = f(&xp).reference(ctx)?;
        xp.data[i] = orig;
        let mut s = 0.0;
        for j in 0..gy.numel() {
            let d = yp.data[j] - ym.data[j];
            if d != 0.0 {
                s += gy.data[j] * d;
            }
        }
        grad.data[i] = s / (hi - lo);
    }
    Ok((grad, noise))
}

fn p(stride: usize, padding: usize) -> Conv2dParams {
    Conv2dParams::new(stride, padding)
}

// ---- the list -------------------------------------------------------------------------------

/// Every check, with the name of its test in [`op_suite!`](crate::op_suite).
pub fn checks<B: Backend>() -> Vec<(&'static str, CheckFn<B>)> {
    vec![
        ("data", check_data::<B>),
        ("add", check_add::<B>),
        ("sub", check_sub::<B>),
        ("mul", check_mul::<B>),
        ("div", check_div::<B>),
        ("minimum", check_minimum::<B>),
        ("maximum", check_maximum::<B>),
        ("affine", check_affine::<B>),
        ("sqrt", check_sqrt::<B>),
        ("sign", check_sign::<B>),
        ("clamp", check_clamp::<B>),
        ("relu", check_relu::<B>),
        ("relu_backward", check_relu_backward::<B>),
        ("leaky_relu", check_leaky_relu::<B>),
        ("leaky_relu_backward", check_leaky_relu_backward::<B>),
        ("sum_axes", check_sum_axes::<B>),
        ("mean_axes", check_mean_axes::<B>),
        ("sum_all", check_sum_all::<B>),
        ("sum_to_shape", check_sum_to_shape::<B>),
        ("l2_norms", check_l2_norms::<B>),
        ("matmul", check_matmul::<B>),
        ("conv2d", check_conv2d::<B>),
        ("conv2d_backward_input", check_conv2d_backward_input::<B>),
        ("conv2d_backward_weight", check_conv2d_backward_weight::<B>),
        ("max_pool2d", check_max_pool2d::<B>),
        ("max_pool2d_backward", check_max_pool2d_backward::<B>),
        ("conv2d_relu", check_conv2d_relu::<B>),
        (
            "relu_max_pool2d_backward",
            check_relu_max_pool2d_backward::<B>,
        ),
        ("cross_entropy", check_cross_entropy::<B>),
        ("cross_entropy_backward", check_cross_entropy_backward::<B>),
        ("cw_loss", check_cw_loss::<B>),
        ("cw_loss_backward", check_cw_loss_backward::<B>),
        ("kl_div", check_kl_div::<B>),
        ("kl_div_backward", check_kl_div_backward::<B>),
        ("dlr_loss", check_dlr_loss::<B>),
        ("dlr_loss_backward", check_dlr_loss_backward::<B>),
        ("mul_rows", check_mul_rows::<B>),
        ("select_rows", check_select_rows::<B>),
        ("restart_merge", check_restart_merge::<B>),
        ("batch_norm_train", check_batch_norm_train::<B>),
        ("batch_norm_eval", check_batch_norm_eval::<B>),
        (
            "batch_norm_train_backward",
            check_batch_norm_train_backward::<B>,
        ),
        ("batch_norm_act", check_batch_norm_act::<B>),
        ("conv2d_add", check_conv2d_add::<B>),
        ("pgd_step_linf", check_pgd_step_linf::<B>),
        ("project_linf", check_project_linf::<B>),
        ("pgd_step_l2", check_pgd_step_l2::<B>),
        ("project_l2", check_project_l2::<B>),
        ("adam_update", check_adam_update::<B>),
        ("sgd_update", check_sgd_update::<B>),
    ]
}

/// Runs every check of [`checks`], catching panics, and reports all failures together.
///
/// # Errors
/// One message listing every failing check.
pub fn check_all<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let mut failures = Vec::new();
    let all = checks::<B>();
    for (name, check) in &all {
        match catch_unwind(AssertUnwindSafe(|| check(b, tol))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("- {name}: {e}")),
            Err(p) => failures.push(format!("- {name}: panicked: {}", panic_message(&*p))),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} op checks failed on {}:\n{}",
            failures.len(),
            all.len(),
            b.name(),
            failures.join("\n")
        ))
    }
}

// ---- data movement --------------------------------------------------------------------------

/// Same bits, or both NaN.
fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn expect_bits<B: Backend>(
    b: &B,
    ctx: &str,
    t: &B::Tensor,
    shape: &[usize],
    want: &[f32],
) -> CheckResult {
    if t.dims() != shape {
        return Err(format!("{ctx}: dims {:?}, expected {shape:?}", t.dims()));
    }
    let got = b.to_vec(t).backend(ctx, "to_vec")?;
    if got.len() != want.len() {
        return Err(format!(
            "{ctx}: {} elements, expected {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(&g, &w)| !same_bits(g, w)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{ctx}: element {i} is {:e}, expected exactly {:e}",
            got[i], want[i]
        )),
    }
}

/// `from_vec`, `to_vec`, `full`, `zeros` and `reshape` move data bit for bit (signed zeros,
/// subnormals, infinities and NaN included), and refuse inconsistent or overflowing shapes.
pub fn check_data<B: Backend>(b: &B, _tol: Tol) -> CheckResult {
    let name = b.name();
    if name.is_empty() {
        return Err("name() is empty".into());
    }
    let mut rng = SplitMix64::new(0xDA7A);
    let special = vec![
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0,
        -2.5,
    ];
    let mut cases = vec![
        Host::new(&[12], special.clone()),
        Host::new(&[3, 4], special),
    ];
    for shape in [&[][..], &[1], &[7], &[3, 5], &[2, 3, 4, 5], &[1037]] {
        cases.push(Host::random(&mut rng, shape, -10.0, 10.0));
    }
    for (i, h) in cases.iter().enumerate() {
        let ctx = format!("[{name}] from_vec/to_vec case {i} (shape {:?})", h.shape);
        let t = h.up(b, &ctx)?;
        expect_bits(b, &ctx, &t, &h.shape, &h.data)?;
    }
    for (i, (shape, v)) in [
        (&[2, 3][..], 1.5f32),
        (&[], -3.0),
        (&[1037], 0.25),
        (&[1, 7, 1], -0.0),
    ]
    .into_iter()
    .enumerate()
    {
        let ctx = format!("[{name}] full case {i} (shape {shape:?}, value {v})");
        let n = shape.iter().product();
        expect_bits(
            b,
            &ctx,
            &b.full(shape, v).backend(&ctx, "full")?,
            shape,
            &vec![v; n],
        )?;
        expect_bits(
            b,
            &ctx,
            &b.zeros(shape).backend(&ctx, "zeros")?,
            shape,
            &vec![0.0; n],
        )?;
    }
    let h = Host::random(&mut rng, &[2, 3, 4], -1.0, 1.0);
    let ctx = format!("[{name}] reshape of {:?}", h.shape);
    let t = h.up(b, &ctx)?;
    for shape in [&[6, 4][..], &[24], &[4, 1, 6], &[1, 24, 1], &[2, 3, 4]] {
        let r = b.reshape(&t, shape).backend(&ctx, "reshape")?;
        expect_bits(b, &format!("{ctx} to {shape:?}"), &r, shape, &h.data)?;
    }
    let one = b.from_vec(&[1], vec![4.5]).backend(&ctx, "from_vec")?;
    let s = b.reshape(&one, &[]).backend(&ctx, "reshape")?;
    expect_bits(b, &format!("[{name}] reshape [1] to []"), &s, &[], &[4.5])?;

    let ctx = format!("[{name}] data errors");
    expect_err(&ctx, "from_vec", true, "5 values for shape [2, 3]", || {
        b.from_vec(&[2, 3], vec![0.0; 5])
    })?;
    expect_err(&ctx, "from_vec", true, "an overflowing shape", || {
        b.from_vec(&[usize::MAX, 2], vec![])
    })?;
    expect_err(&ctx, "full", true, "an overflowing shape", || {
        b.full(&[usize::MAX, 2], 0.0)
    })?;
    expect_err(&ctx, "zeros", false, "an overflowing shape", || {
        b.zeros(&[usize::MAX / 2, 4])
    })?;
    expect_err(&ctx, "reshape", true, "[2, 3, 4] to [5, 5]", || {
        b.reshape(&t, &[5, 5])
    })?;
    expect_err(
        &ctx,
        "reshape",
        true,
        "[2, 3, 4] to an overflowing shape",
        || b.reshape(&t, &[usize::MAX, 2]),
    )?;
    Ok(())
}

// ---- element-wise ---------------------------------------------------------------------------

type BinOp<B> = fn(
    &B,
    &<B as Backend>::Tensor,
    &<B as Backend>::Tensor,
) -> crate::Result<<B as Backend>::Tensor>;
type RefBinOp = fn(&RefTensor, &RefTensor) -> crate::Result<RefTensor>;

/// Shape pairs for the broadcasting binary ops: equal shapes, a trailing vector, both sides
/// broadcasting, a scalar `[]` on either side, rank 4, an odd size of 1037; a per-channel
/// `[1, c, 1, 1]` and a per-image-and-channel `[n, c, 1, 1]` against a batch large enough
/// (73,728 elements) to be split over threads, on either side.
const BROADCAST_CASES: [(&[usize], &[usize]); 16] = [
    (&[2, 3], &[2, 3]),
    (&[2, 3], &[3]),
    (&[3], &[2, 3]),
    (&[4, 1, 5], &[3, 1]),
    (&[], &[3, 2]),
    (&[3, 2], &[]),
    (&[2, 1, 3], &[1, 4, 1]),
    (&[1037], &[1037]),
    (&[5, 1], &[1]),
    (&[2, 3, 4, 5], &[1, 3, 1, 5]),
    (&[1, 1], &[1]),
    (&[7, 9, 11], &[7, 1, 11]),
    (&[16, 8, 24, 24], &[1, 8, 1, 1]),
    (&[8, 1, 1], &[16, 8, 24, 24]),
    (&[16, 8, 24, 24], &[16, 8, 1, 1]),
    (&[3, 5, 7], &[5, 1]),
];

fn check_binary<B: Backend>(
    b: &B,
    tol: Tol,
    op: &'static str,
    f: BinOp<B>,
    rf: RefBinOp,
    seed: u64,
) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(seed);
    for (i, (sa, sb)) in BROADCAST_CASES.iter().enumerate() {
        let ctx = format!("[{name}] {op} case {i} ({sa:?} with {sb:?})");
        let x = Host::random(&mut rng, sa, -2.0, 2.0);
        let y = if op == "div" {
            Host::random_magnitude(&mut rng, sb, 0.5, 2.0)
        } else {
            Host::random(&mut rng, sb, -2.0, 2.0)
        };
        let want = rf(&x.r(), &y.r()).reference(&ctx)?;
        let got = f(b, &x.up(b, &ctx)?, &y.up(b, &ctx)?).backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, None, tol)?;
    }
    // Equal operands: exact ties for minimum/maximum, exact zeros for sub.
    let ctx = format!("[{name}] {op} with equal operands");
    let x = Host::random_magnitude(&mut rng, &[3, 7], 0.5, 2.0);
    let t = x.up(b, &ctx)?;
    let want = rf(&x.r(), &x.r()).reference(&ctx)?;
    expect_close(b, &ctx, &f(b, &t, &t).backend(&ctx, op)?, &want, None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    for (sa, sb) in [
        (&[2, 3][..], &[4][..]),
        (&[2, 3], &[3, 2]),
        (&[2, 3, 4], &[2, 1, 5]),
    ] {
        let x = Host::new(sa, vec![1.0; sa.iter().product()]).up(b, &ctx)?;
        let y = Host::new(sb, vec![1.0; sb.iter().product()]).up(b, &ctx)?;
        expect_err(&ctx, op, true, &format!("shapes {sa:?} and {sb:?}"), || {
            f(b, &x, &y)
        })?;
    }
    Ok(())
}

/// `add` with NumPy broadcasting against [`reference::add`].
pub fn check_add<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_binary(b, tol, "add", |b, x, y| b.add(x, y), reference::add, 0xADD)
}

/// `sub` with NumPy broadcasting against [`reference::sub`].
pub fn check_sub<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_binary(b, tol, "sub", |b, x, y| b.sub(x, y), reference::sub, 0x5B)
}

/// `mul` with NumPy broadcasting against [`reference::mul`].
pub fn check_mul<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_binary(b, tol, "mul", |b, x, y| b.mul(x, y), reference::mul, 0x3B1)
}

/// `div` with NumPy broadcasting against [`reference::div`] (divisors of magnitude ≥ 0.5).
pub fn check_div<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_binary(b, tol, "div", |b, x, y| b.div(x, y), reference::div, 0xD17)
}

/// `minimum` with NumPy broadcasting against [`reference::minimum`].
pub fn check_minimum<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_binary(
        b,
        tol,
        "minimum",
        |b, x, y| b.minimum(x, y),
        reference::minimum,
        0x314,
    )
}

/// `maximum` with NumPy broadcasting against [`reference::maximum`].
pub fn check_maximum<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_binary(
        b,
        tol,
        "maximum",
        |b, x, y| b.maximum(x, y),
        reference::maximum,
        0x3A8,
    )
}

/// Shapes for the unary ops: a scalar, odd vectors, rank 4.
const UNARY_SHAPES: [&[usize]; 5] = [&[], &[7], &[3, 5, 2], &[1037], &[2, 3, 5, 7]];

/// `affine` (`s·x + t`) against [`reference::affine`]; `mag = |s·x| + |t|` since the two terms
/// may cancel.
pub fn check_affine<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xAFF);
    for (s, t) in [
        (2.0f32, -1.0f32),
        (-0.5, 0.25),
        (0.0, 3.0),
        (1.0, 0.0),
        (1.0 / 255.0, 0.1),
    ] {
        for shape in UNARY_SHAPES {
            let ctx = format!("[{name}] affine (s {s}, t {t}, shape {shape:?})");
            let x = Host::random(&mut rng, shape, -2.0, 2.0);
            let want = reference::affine(&x.r(), s.into(), t.into());
            let mag = x.r().map(|v| (f64::from(s) * v).abs() + f64::from(t).abs());
            let got = b.affine(&x.up(b, &ctx)?, s, t).backend(&ctx, "affine")?;
            expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
        }
    }
    Ok(())
}

/// `sqrt` against [`reference::sqrt`], zeros and perfect squares included.
pub fn check_sqrt<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x5A7);
    for shape in UNARY_SHAPES {
        let ctx = format!("[{name}] sqrt (shape {shape:?})");
        let x = Host::random(&mut rng, shape, 0.0, 4.0)
            .sprinkle(&mut rng, 0.1, 0.0)
            .sprinkle(&mut rng, 0.1, 2.25);
        let got = b.sqrt(&x.up(b, &ctx)?).backend(&ctx, "sqrt")?;
        expect_close(b, &ctx, &got, &reference::sqrt(&x.r()), None, tol)?;
    }
    Ok(())
}

/// `sign` against [`reference::sign`]: exact, with `sign(±0) = 0` and `sign(NaN) = NaN`.
pub fn check_sign<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x516);
    let mut cases = vec![Host::new(
        &[9],
        vec![
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            3.0,
        ],
    )];
    for shape in UNARY_SHAPES {
        cases.push(Host::random(&mut rng, shape, -1.0, 1.0).sprinkle(&mut rng, 0.2, 0.0));
    }
    for (i, x) in cases.iter().enumerate() {
        let ctx = format!("[{name}] sign case {i} (shape {:?})", x.shape);
        let got = b.sign(&x.up(b, &ctx)?).backend(&ctx, "sign")?;
        // Exact: any difference is a whole unit.
        expect_close(b, &ctx, &got, &reference::sign(&x.r()), None, tol)?;
    }
    Ok(())
}

/// `clamp` against [`reference::clamp`]; `lo > hi` is an error.
pub fn check_clamp<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xC1A);
    for (lo, hi) in [(0.0f32, 1.0f32), (-0.5, 0.25), (0.3, 0.3), (-10.0, 10.0)] {
        for shape in UNARY_SHAPES {
            let ctx = format!("[{name}] clamp to [{lo}, {hi}] (shape {shape:?})");
            let x = Host::random(&mut rng, shape, -2.0, 2.0).sprinkle(&mut rng, 0.1, lo);
            let want = reference::clamp(&x.r(), lo.into(), hi.into()).reference(&ctx)?;
            let got = b.clamp(&x.up(b, &ctx)?, lo, hi).backend(&ctx, "clamp")?;
            expect_close(b, &ctx, &got, &want, None, tol)?;
        }
    }
    let ctx = format!("[{name}] clamp errors");
    let x = Host::new(&[3], vec![0.0, 1.0, 2.0]).up(b, &ctx)?;
    expect_err(&ctx, "clamp", true, "lo 1 > hi 0", || b.clamp(&x, 1.0, 0.0))
}

/// `relu` against [`reference::relu`].
pub fn check_relu<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x4E1);
    for shape in UNARY_SHAPES {
        let ctx = format!("[{name}] relu (shape {shape:?})");
        let x = Host::random(&mut rng, shape, -1.0, 1.0).sprinkle(&mut rng, 0.1, 0.0);
        let got = b.relu(&x.up(b, &ctx)?).backend(&ctx, "relu")?;
        expect_close(b, &ctx, &got, &reference::relu(&x.r()), None, tol)?;
    }
    Ok(())
}

/// `leaky_relu` against [`reference::leaky_relu`] for several slopes.
pub fn check_leaky_relu<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x1EA);
    for slope in [0.1f32, 0.01, 0.2, 0.0] {
        for shape in UNARY_SHAPES {
            let ctx = format!("[{name}] leaky_relu (slope {slope}, shape {shape:?})");
            let x = Host::random(&mut rng, shape, -1.0, 1.0).sprinkle(&mut rng, 0.1, 0.0);
            let got = b
                .leaky_relu(&x.up(b, &ctx)?, slope)
                .backend(&ctx, "leaky_relu")?;
            expect_close(
                b,
                &ctx,
                &got,
                &reference::leaky_relu(&x.r(), slope.into()),
                None,
                tol,
            )?;
        }
    }
    Ok(())
}

/// Random values at least [`KINK_GAP`] away from zero.
fn away_from_zero(rng: &mut SplitMix64, shape: &[usize], lo: f32, hi: f32) -> Host {
    let mut h = Host::random(rng, shape, lo, hi);
    for v in &mut h.data {
        while v.abs() < KINK_GAP {
            *v = rng.uniform(lo, hi);
        }
    }
    h
}

/// Shared by the two ReLU backward checks: finite differences away from 0, then the kink.
fn check_relu_like_backward<B: Backend>(
    b: &B,
    tol: Tol,
    op: &'static str,
    slope: f32,
    f: impl Fn(&B::Tensor, &B::Tensor) -> crate::Result<B::Tensor>,
) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xBAC + slope.to_bits() as u64);
    for shape in [&[7][..], &[3, 5, 2], &[1037], &[2, 3, 5, 7]] {
        let ctx = format!("[{name}] {op} (slope {slope}, shape {shape:?}) vs finite differences");
        let x = away_from_zero(&mut rng, shape, -1.0, 1.0);
        let gy = Host::random(&mut rng, shape, -2.0, 2.0);
        let (want, noise) = fd_grad(&ctx, &x.r(), &gy.r(), |x| {
            Ok(reference::leaky_relu(x, slope.into()))
        })?;
        let got = f(&x.up(b, &ctx)?, &gy.up(b, &ctx)?).backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, None, tol.plus_atol(noise))?;
    }
    // At the kink the documented rule holds: `x > 0` strictly, so x = ±0 takes the slope side.
    let ctx = format!("[{name}] {op} (slope {slope}) at x = ±0 and tiny x");
    let x = Host::new(&[6], vec![0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30]);
    let gy = Host::new(&[6], vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let s = f64::from(slope);
    let want =
        RefTensor::new(&[6], vec![2.0 * s, 3.0 * s, 4.0, 5.0 * s, 6.0, 7.0 * s]).reference(&ctx)?;
    let got = f(&x.up(b, &ctx)?, &gy.up(b, &ctx)?).backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    let x = Host::new(&[2, 3], vec![1.0; 6]).up(b, &ctx)?;
    let gy = Host::new(&[3, 2], vec![1.0; 6]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "x [2, 3] with gy [3, 2]", || f(&x, &gy))?;
    let gy = Host::new(&[3], vec![1.0; 3]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "x [2, 3] with gy [3]", || f(&x, &gy))
}

/// `relu_backward` against finite differences of [`reference::relu`], and 0 at `x = 0`.
pub fn check_relu_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    check_relu_like_backward(b, tol, "relu_backward", 0.0, |x, gy| b.relu_backward(x, gy))
}

/// `leaky_relu_backward` against finite differences of [`reference::leaky_relu`], and
/// `slope·gy` at `x = 0`.
pub fn check_leaky_relu_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    for slope in [0.1f32, 0.01] {
        check_relu_like_backward(b, tol, "leaky_relu_backward", slope, |x, gy| {
            b.leaky_relu_backward(x, gy, slope)
        })?;
    }
    Ok(())
}

// ---- reductions -----------------------------------------------------------------------------

/// `(shape, axes)` for the reductions: none, one, several, unsorted, all, long, a scalar; the
/// trailing axes (a global average pool) and all axes but the channels (a batch norm's
/// gradient), small and large enough (73,728 elements) to be split over threads.
const REDUCE_CASES: [(&[usize], &[usize]); 16] = [
    (&[2, 3, 4, 5], &[]),
    (&[2, 3, 4, 5], &[0]),
    (&[2, 3, 4, 5], &[3]),
    (&[2, 3, 4, 5], &[1, 2]),
    (&[2, 3, 4, 5], &[3, 0]),
    (&[2, 3, 4, 5], &[0, 1, 2, 3]),
    (&[7], &[0]),
    (&[3, 1025], &[1]),
    (&[1025, 3], &[0]),
    (&[4097], &[0]),
    (&[], &[]),
    (&[5, 1, 9], &[1]),
    (&[2, 3, 4, 5], &[2, 3]),
    (&[16, 8, 24, 24], &[2, 3]),
    (&[16, 8, 24, 24], &[0, 2, 3]),
    (&[16, 8, 24, 24], &[3, 2, 0]),
];

/// `sum_axes` with and without `keep_dims` against [`reference::sum_axes`]; `mag` is the sum of
/// absolute values. Axes out of range or repeated are errors.
pub fn check_sum_axes<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x5E3);
    for (shape, axes) in REDUCE_CASES {
        for keep in [false, true] {
            let ctx =
                format!("[{name}] sum_axes (shape {shape:?}, axes {axes:?}, keep_dims {keep})");
            let x = Host::random(&mut rng, shape, -1.0, 1.0);
            let want = reference::sum_axes(&x.r(), axes, keep).reference(&ctx)?;
            let mag = reference::sum_axes(&x.r().abs(), axes, keep).reference(&ctx)?;
            let got = b
                .sum_axes(&x.up(b, &ctx)?, axes, keep)
                .backend(&ctx, "sum_axes")?;
            expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
        }
    }
    let ctx = format!("[{name}] sum_axes errors");
    let x = Host::new(&[2, 3], vec![1.0; 6]).up(b, &ctx)?;
    expect_err(&ctx, "sum_axes", true, "axis 2 of a 2-D tensor", || {
        b.sum_axes(&x, &[2], false)
    })?;
    expect_err(&ctx, "sum_axes", true, "axes [1, 1]", || {
        b.sum_axes(&x, &[1, 1], true)
    })
}

/// `mean_axes` against [`reference::mean_axes`].
pub fn check_mean_axes<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x3EA);
    for (shape, axes) in REDUCE_CASES {
        for keep in [false, true] {
            let ctx =
                format!("[{name}] mean_axes (shape {shape:?}, axes {axes:?}, keep_dims {keep})");
            let x = Host::random(&mut rng, shape, -1.0, 1.0);
            let want = reference::mean_axes(&x.r(), axes, keep).reference(&ctx)?;
            let mag = reference::mean_axes(&x.r().abs(), axes, keep).reference(&ctx)?;
            let got = b
                .mean_axes(&x.up(b, &ctx)?, axes, keep)
                .backend(&ctx, "mean_axes")?;
            expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
        }
    }
    let ctx = format!("[{name}] mean_axes errors");
    let x = Host::new(&[2, 3], vec![1.0; 6]).up(b, &ctx)?;
    expect_err(&ctx, "mean_axes", false, "axis 5 of a 2-D tensor", || {
        b.mean_axes(&x, &[5], false)
    })
}

/// `sum_all` (shape `[]`) against [`reference::sum_all`].
pub fn check_sum_all<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x5A11);
    for shape in [
        &[][..],
        &[1],
        &[3, 5],
        &[2, 3, 4, 5],
        &[4097],
        &[3, 1, 1037],
    ] {
        let ctx = format!("[{name}] sum_all (shape {shape:?})");
        let x = Host::random(&mut rng, shape, -1.0, 1.0);
        let got = b.sum_all(&x.up(b, &ctx)?).backend(&ctx, "sum_all")?;
        let mag = reference::sum_all(&x.r().abs());
        expect_close(b, &ctx, &got, &reference::sum_all(&x.r()), Some(&mag), tol)?;
    }
    Ok(())
}

/// `sum_to_shape` (the gradient of a broadcast) against [`reference::sum_to_shape`].
pub fn check_sum_to_shape<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x5273);
    let cases: [(&[usize], &[usize]); 8] = [
        (&[2, 3, 4], &[3, 4]),
        (&[2, 3, 4], &[3, 1]),
        (&[2, 3, 4], &[1, 1, 4]),
        (&[2, 3, 4], &[2, 3, 4]),
        (&[2, 3, 4], &[]),
        (&[5, 1, 3], &[1, 3]),
        (&[50, 10], &[10]),
        (&[3, 7, 9, 11], &[7, 1, 1]),
    ];
    for (from, to) in cases {
        let ctx = format!("[{name}] sum_to_shape ({from:?} to {to:?})");
        let x = Host::random(&mut rng, from, -1.0, 1.0);
        let want = reference::sum_to_shape(&x.r(), to).reference(&ctx)?;
        let mag = reference::sum_to_shape(&x.r().abs(), to).reference(&ctx)?;
        let got = b
            .sum_to_shape(&x.up(b, &ctx)?, to)
            .backend(&ctx, "sum_to_shape")?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
    }
    let ctx = format!("[{name}] sum_to_shape errors");
    let x = Host::new(&[2, 3], vec![1.0; 6]).up(b, &ctx)?;
    expect_err(&ctx, "sum_to_shape", false, "[2, 3] to [4]", || {
        b.sum_to_shape(&x, &[4])
    })?;
    expect_err(&ctx, "sum_to_shape", false, "[2, 3] to [1, 2, 3]", || {
        b.sum_to_shape(&x, &[1, 2, 3])
    })
}

/// `l2_norms` (per example, over all axes but the first) against [`reference::l2_norms`].
pub fn check_l2_norms<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x12);
    for shape in [&[3, 5][..], &[2, 3, 4, 4], &[1, 1], &[4, 1037], &[5]] {
        let ctx = format!("[{name}] l2_norms (shape {shape:?})");
        let x = Host::random(&mut rng, shape, -1.0, 1.0).sprinkle(&mut rng, 0.05, 0.0);
        let want = reference::l2_norms(&x.r()).reference(&ctx)?;
        let got = b.l2_norms(&x.up(b, &ctx)?).backend(&ctx, "l2_norms")?;
        expect_close(b, &ctx, &got, &want, None, tol)?;
    }
    let ctx = format!("[{name}] l2_norms of a zero example");
    let got = b.l2_norms(&Host::new(&[2, 3], vec![0.0, 0.0, 0.0, 3.0, 4.0, 0.0]).up(b, &ctx)?);
    let want = RefTensor::new(&[2], vec![0.0, 5.0]).reference(&ctx)?;
    expect_close(b, &ctx, &got.backend(&ctx, "l2_norms")?, &want, None, tol)?;
    Ok(())
}

// ---- linear algebra -------------------------------------------------------------------------

/// `matmul` in all four transpose combinations against [`reference::matmul`], for odd sizes and
/// long inner dimensions (3136, the MNIST network's first fully connected layer); `mag` is
/// `|op(a)|·|op(b)|`.
pub fn check_matmul<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x3A7);
    let sizes = [
        (1, 1, 1),
        (3, 5, 7),
        (17, 33, 9),
        (64, 65, 63),
        (2, 300, 3),
        (50, 257, 10),
        (4, 3136, 5),
        (1, 129, 1),
    ];
    for (m, k, n) in sizes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ctx = format!("[{name}] matmul (m {m}, k {k}, n {n}, trans_a {ta}, trans_b {tb})");
            let a = Host::random(&mut rng, &if ta { [k, m] } else { [m, k] }, -1.0, 1.0);
            let c = Host::random(&mut rng, &if tb { [n, k] } else { [k, n] }, -1.0, 1.0);
            let want = reference::matmul(&a.r(), &c.r(), ta, tb).reference(&ctx)?;
            let mag = reference::matmul(&a.r().abs(), &c.r().abs(), ta, tb).reference(&ctx)?;
            let got = b
                .matmul(&a.up(b, &ctx)?, &c.up(b, &ctx)?, ta, tb)
                .backend(&ctx, "matmul")?;
            expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
        }
    }
    let ctx = format!("[{name}] matmul errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (a23, a45, a234, a3) = (t(&[2, 3])?, t(&[4, 5])?, t(&[2, 3, 4])?, t(&[3])?);
    expect_err(&ctx, "matmul", true, "[2, 3] · [4, 5]", || {
        b.matmul(&a23, &a45, false, false)
    })?;
    expect_err(&ctx, "matmul", true, "[2, 3] · [2, 3]", || {
        b.matmul(&a23, &a23, false, false)
    })?;
    expect_err(&ctx, "matmul", true, "[2, 3]ᵀ · [2, 3]ᵀ", || {
        b.matmul(&a23, &a23, true, true)
    })?;
    expect_err(&ctx, "matmul", true, "a 3-D left factor", || {
        b.matmul(&a234, &a45, false, false)
    })?;
    expect_err(&ctx, "matmul", true, "a 1-D right factor", || {
        b.matmul(&a23, &a3, false, false)
    })
}

/// A convolution case: input `[n, c, h, w]`, weight `[k, c, kh, kw]`, stride, padding.
#[derive(Clone, Copy, Debug)]
struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
}

const fn cc(
    n: usize,
    c: usize,
    hw: (usize, usize),
    k: usize,
    khw: (usize, usize),
    sp: (usize, usize),
) -> ConvCase {
    ConvCase {
        n,
        c,
        h: hw.0,
        w: hw.1,
        k,
        kh: khw.0,
        kw: khw.1,
        stride: sp.0,
        padding: sp.1,
    }
}

/// Small convolutions, cheap enough for finite differences: batch 1 and 2, stride 1, 2, 3,
/// padding 0, 1, 2, non-square kernels and images, 1×1 kernels, a kernel as large as the image,
/// a kernel larger than the image (fits only padded), rows the last window does not reach, and
/// stride larger than the kernel (pixels no window reads).
const CONV_SMALL: [ConvCase; 10] = [
    cc(1, 1, (5, 5), 1, (3, 3), (1, 0)),
    cc(2, 3, (7, 9), 4, (3, 3), (1, 1)),
    cc(2, 2, (11, 10), 3, (5, 5), (2, 2)),
    cc(2, 3, (9, 8), 3, (3, 3), (3, 1)),
    cc(1, 4, (6, 7), 2, (2, 3), (2, 0)),
    cc(2, 2, (5, 6), 3, (1, 1), (1, 0)),
    cc(1, 3, (4, 4), 2, (4, 4), (1, 0)),
    cc(2, 2, (3, 3), 3, (5, 5), (3, 2)),
    cc(1, 2, (8, 8), 2, (3, 3), (2, 0)),
    cc(1, 1, (7, 7), 1, (2, 2), (3, 0)),
];

/// Larger convolutions for the forward pass only: odd channel counts and the paper's MNIST
/// layers (5×5, padding 2, 32 and 64 filters), with long reductions (800 terms).
const CONV_LARGE: [ConvCase; 3] = [
    cc(1, 17, (13, 13), 33, (3, 3), (2, 1)),
    cc(3, 1, (28, 28), 32, (5, 5), (1, 2)),
    cc(2, 32, (14, 14), 64, (5, 5), (1, 2)),
];

impl ConvCase {
    fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    fn w_shape(&self) -> [usize; 4] {
        [self.k, self.c, self.kh, self.kw]
    }
    fn out_shape(&self) -> [usize; 4] {
        let oh = (self.h + 2 * self.padding - self.kh) / self.stride + 1;
        let ow = (self.w + 2 * self.padding - self.kw) / self.stride + 1;
        [self.n, self.k, oh, ow]
    }
    fn params(&self) -> Conv2dParams {
        p(self.stride, self.padding)
    }
    fn describe(&self) -> String {
        format!(
            "x {:?}, w {:?}, stride {}, padding {}",
            self.x_shape(),
            self.w_shape(),
            self.stride,
            self.padding
        )
    }
}

/// `conv2d` with and without bias against [`reference::conv2d`]; `mag` is the convolution of
/// the absolute values. Mismatched channels, non-4-D inputs, a wrong bias, a zero stride and a
/// kernel larger than the padded input are errors.
pub fn check_conv2d<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xC0);
    for (i, cs) in CONV_SMALL.iter().chain(&CONV_LARGE).enumerate() {
        let with_bias = i % 2 == 0;
        let ctx = format!(
            "[{name}] conv2d case {i} ({}, bias {with_bias})",
            cs.describe()
        );
        let x = Host::random(&mut rng, &cs.x_shape(), -1.0, 1.0);
        let w = Host::random(&mut rng, &cs.w_shape(), -1.0, 1.0);
        let bias = Host::random(&mut rng, &[cs.k], -1.0, 1.0);
        let rb = bias.r();
        let rb_abs = rb.abs();
        let want = reference::conv2d(
            &x.r(),
            &w.r(),
            with_bias.then_some(&rb),
            cs.stride,
            cs.padding,
        )
        .reference(&ctx)?;
        let mag = reference::conv2d(
            &x.r().abs(),
            &w.r().abs(),
            with_bias.then_some(&rb_abs),
            cs.stride,
            cs.padding,
        )
        .reference(&ctx)?;
        let bt = bias.up(b, &ctx)?;
        let got = b
            .conv2d(
                &x.up(b, &ctx)?,
                &w.up(b, &ctx)?,
                with_bias.then_some(&bt),
                cs.params(),
            )
            .backend(&ctx, "conv2d")?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
    }
    let ctx = format!("[{name}] conv2d errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, w, w4, x3) = (
        t(&[1, 2, 5, 5])?,
        t(&[3, 2, 3, 3])?,
        t(&[3, 4, 3, 3])?,
        t(&[2, 5, 5])?,
    );
    let (bias2, big) = (t(&[2])?, t(&[3, 2, 8, 8])?);
    expect_err(
        &ctx,
        "conv2d",
        true,
        "2 input channels with a 4-channel kernel",
        || b.conv2d(&x, &w4, None, p(1, 0)),
    )?;
    expect_err(&ctx, "conv2d", true, "a 3-D input", || {
        b.conv2d(&x3, &w, None, p(1, 0))
    })?;
    expect_err(&ctx, "conv2d", true, "a 3-D weight", || {
        b.conv2d(&x, &x3, None, p(1, 0))
    })?;
    expect_err(&ctx, "conv2d", true, "a bias [2] for 3 filters", || {
        b.conv2d(&x, &w, Some(&bias2), p(1, 0))
    })?;
    expect_err(&ctx, "conv2d", true, "stride 0", || {
        b.conv2d(&x, &w, None, p(0, 1))
    })?;
    expect_err(
        &ctx,
        "conv2d",
        true,
        "an 8×8 kernel on a 5×5 image with padding 1",
        || b.conv2d(&x, &big, None, p(1, 1)),
    )
}

/// `conv2d_backward_input` against finite differences of [`reference::conv2d`] in its input;
/// `mag` is the same gradient for `|gy|` and `|w|` (exact, the convolution being linear).
pub fn check_conv2d_backward_input<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "conv2d_backward_input";
    let mut rng = SplitMix64::new(0xC0B1);
    for (i, cs) in CONV_SMALL.iter().enumerate() {
        let ctx = format!(
            "[{name}] {op} case {i} ({}) vs finite differences",
            cs.describe()
        );
        let x = Host::random(&mut rng, &cs.x_shape(), -1.0, 1.0);
        let w = Host::random(&mut rng, &cs.w_shape(), -1.0, 1.0);
        let gy = Host::random(&mut rng, &cs.out_shape(), -1.0, 1.0);
        let (rw, rw_abs) = (w.r(), w.r().abs());
        let (want, noise) = fd_grad(&ctx, &x.r(), &gy.r(), |x| {
            reference::conv2d(x, &rw, None, cs.stride, cs.padding)
        })?;
        let (mag, _) = fd_grad(&ctx, &x.r(), &gy.r().abs(), |x| {
            reference::conv2d(x, &rw_abs, None, cs.stride, cs.padding)
        })?;
        let got = b
            .conv2d_backward_input(
                &gy.up(b, &ctx)?,
                &w.up(b, &ctx)?,
                &cs.x_shape(),
                cs.params(),
            )
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag.abs()), tol.plus_atol(noise))?;
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    // Input [1, 2, 5, 5], weight [3, 2, 3, 3], stride 1, padding 0: gy must be [1, 3, 3, 3].
    let (w, gy, gy_bad) = (t(&[3, 2, 3, 3])?, t(&[1, 3, 3, 3])?, t(&[1, 3, 4, 4])?);
    expect_err(
        &ctx,
        op,
        true,
        "gy [1, 3, 4, 4] where [1, 3, 3, 3] is due",
        || b.conv2d_backward_input(&gy_bad, &w, &[1, 2, 5, 5], p(1, 0)),
    )?;
    expect_err(
        &ctx,
        op,
        true,
        "an input shape with 4 channels for a 2-channel kernel",
        || b.conv2d_backward_input(&gy, &w, &[1, 4, 5, 5], p(1, 0)),
    )?;
    expect_err(&ctx, op, true, "a 3-D input shape", || {
        b.conv2d_backward_input(&gy, &w, &[2, 5, 5], p(1, 0))
    })?;
    expect_err(&ctx, op, true, "stride 0", || {
        b.conv2d_backward_input(&gy, &w, &[1, 2, 5, 5], p(0, 0))
    })
}

/// `conv2d_backward_weight` against finite differences of [`reference::conv2d`] in its weight;
/// `mag` is the same gradient for `|x|` and `|gy|`.
pub fn check_conv2d_backward_weight<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "conv2d_backward_weight";
    let mut rng = SplitMix64::new(0xC0B2);
    for (i, cs) in CONV_SMALL.iter().enumerate() {
        let ctx = format!(
            "[{name}] {op} case {i} ({}) vs finite differences",
            cs.describe()
        );
        let x = Host::random(&mut rng, &cs.x_shape(), -1.0, 1.0);
        let w = Host::random(&mut rng, &cs.w_shape(), -1.0, 1.0);
        let gy = Host::random(&mut rng, &cs.out_shape(), -1.0, 1.0);
        let (rx, rx_abs) = (x.r(), x.r().abs());
        let (want, noise) = fd_grad(&ctx, &w.r(), &gy.r(), |w| {
            reference::conv2d(&rx, w, None, cs.stride, cs.padding)
        })?;
        let (mag, _) = fd_grad(&ctx, &w.r(), &gy.r().abs(), |w| {
            reference::conv2d(&rx_abs, w, None, cs.stride, cs.padding)
        })?;
        let got = b
            .conv2d_backward_weight(
                &x.up(b, &ctx)?,
                &gy.up(b, &ctx)?,
                &cs.w_shape(),
                cs.params(),
            )
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag.abs()), tol.plus_atol(noise))?;
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, gy, gy_bad) = (t(&[1, 2, 5, 5])?, t(&[1, 3, 3, 3])?, t(&[1, 3, 4, 4])?);
    expect_err(
        &ctx,
        op,
        true,
        "gy [1, 3, 4, 4] where [1, 3, 3, 3] is due",
        || b.conv2d_backward_weight(&x, &gy_bad, &[3, 2, 3, 3], p(1, 0)),
    )?;
    expect_err(
        &ctx,
        op,
        true,
        "a weight shape with 4 channels for a 2-channel input",
        || b.conv2d_backward_weight(&x, &gy, &[3, 4, 3, 3], p(1, 0)),
    )?;
    expect_err(&ctx, op, true, "a 3-D weight shape", || {
        b.conv2d_backward_weight(&x, &gy, &[3, 2, 3], p(1, 0))
    })?;
    expect_err(&ctx, op, true, "stride 0", || {
        b.conv2d_backward_weight(&x, &gy, &[3, 2, 3, 3], p(0, 0))
    })
}

/// `(input shape, window)` for max-pool: the paper's 2, partial windows dropped, 3, 5, 1.
const POOL_CASES: [(&[usize], usize); 7] = [
    (&[1, 1, 4, 4], 2),
    (&[2, 3, 7, 9], 2),
    (&[2, 2, 9, 9], 3),
    (&[1, 1, 5, 7], 5),
    (&[3, 2, 8, 6], 4),
    (&[2, 3, 5, 5], 1),
    (&[2, 5, 28, 28], 2),
];

/// Raises each window's maximum so that it leads the runner-up by at least [`KINK_GAP`].
fn separate_window_maxima(x: &mut Host, size: usize) {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    for plane in 0..n * c {
        for i in 0..h / size {
            for j in 0..w / size {
                let idx: Vec<usize> = (0..size * size)
                    .map(|t| plane * h * w + (i * size + t / size) * w + j * size + t % size)
                    .collect();
                let top = *idx
                    .iter()
                    .max_by(|&&a, &&b| x.data[a].total_cmp(&x.data[b]))
                    .expect("window is not empty");
                let second = idx
                    .iter()
                    .filter(|&&k| k != top)
                    .map(|&k| x.data[k])
                    .fold(f32::NEG_INFINITY, f32::max);
                if x.data[top] - second < KINK_GAP {
                    x.data[top] = second + 2.0 * KINK_GAP;
                }
            }
        }
    }
}

/// `max_pool2d` against [`reference::max_pool2d`] (exact). A non-4-D input, a zero window and a
/// window larger than the image are errors.
pub fn check_max_pool2d<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0x9001);
    for (shape, size) in POOL_CASES {
        let ctx = format!("[{name}] max_pool2d (x {shape:?}, window {size})");
        let x = Host::random(&mut rng, shape, -1.0, 1.0);
        let want = reference::max_pool2d(&x.r(), size).reference(&ctx)?;
        let got = b
            .max_pool2d(&x.up(b, &ctx)?, size)
            .backend(&ctx, "max_pool2d")?;
        expect_close(b, &ctx, &got, &want, None, tol)?;
    }
    let ctx = format!("[{name}] max_pool2d of an all-negative image");
    let x = Host::random(&mut rng, &[1, 2, 4, 6], -3.0, -1.0);
    let want = reference::max_pool2d(&x.r(), 2).reference(&ctx)?;
    let got = b
        .max_pool2d(&x.up(b, &ctx)?, 2)
        .backend(&ctx, "max_pool2d")?;
    expect_close(b, &ctx, &got, &want, None, tol)?;

    let ctx = format!("[{name}] max_pool2d errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, x3) = (t(&[1, 1, 4, 4])?, t(&[1, 4, 4])?);
    expect_err(&ctx, "max_pool2d", true, "a 3-D input", || {
        b.max_pool2d(&x3, 2)
    })?;
    expect_err(&ctx, "max_pool2d", true, "window 0", || b.max_pool2d(&x, 0))?;
    expect_err(&ctx, "max_pool2d", true, "window 5 on a 4×4 image", || {
        b.max_pool2d(&x, 5)
    })
}

/// `max_pool2d_backward` against finite differences of [`reference::max_pool2d`] (window maxima
/// kept [`KINK_GAP`] ahead), and, on ties, the gradient going to the first maximum in row-major
/// order.
pub fn check_max_pool2d_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "max_pool2d_backward";
    let mut rng = SplitMix64::new(0x9002);
    for (shape, size) in POOL_CASES {
        let ctx = format!("[{name}] {op} (x {shape:?}, window {size}) vs finite differences");
        let mut x = Host::random(&mut rng, shape, -1.0, 1.0);
        separate_window_maxima(&mut x, size);
        let out: Vec<usize> = vec![shape[0], shape[1], shape[2] / size, shape[3] / size];
        let gy = Host::random(&mut rng, &out, -2.0, 2.0);
        let (want, noise) = fd_grad(&ctx, &x.r(), &gy.r(), |x| reference::max_pool2d(x, size))?;
        let got = b
            .max_pool2d_backward(&x.up(b, &ctx)?, &gy.up(b, &ctx)?, size)
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, None, tol.plus_atol(noise))?;
    }
    // Ties, worked by hand. x is 1×1×2×6 with three 2×2 windows:
    //   [5 5 | 1 2 | 7 0]
    //   [5 5 | 2 2 | 0 7]
    // window 0: all four equal → first, (0, 0); window 1: 2 at (0, 3), (1, 2), (1, 3) → first in
    // row-major order, (0, 3); window 2: 7 at (0, 4) and (1, 5) → (0, 4).
    let ctx = format!("[{name}] {op} with tied maxima");
    let x = Host::new(
        &[1, 1, 2, 6],
        vec![5.0, 5.0, 1.0, 2.0, 7.0, 0.0, 5.0, 5.0, 2.0, 2.0, 0.0, 7.0],
    );
    let gy = Host::new(&[1, 1, 1, 3], vec![10.0, 20.0, 30.0]);
    let want = RefTensor::new(
        &[1, 1, 2, 6],
        vec![
            10.0, 0.0, 0.0, 20.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ],
    )
    .reference(&ctx)?;
    let got = b
        .max_pool2d_backward(&x.up(b, &ctx)?, &gy.up(b, &ctx)?, 2)
        .backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, gy_bad, x3) = (t(&[1, 1, 4, 4])?, t(&[1, 1, 3, 3])?, t(&[1, 4, 4])?);
    expect_err(
        &ctx,
        op,
        true,
        "gy [1, 1, 3, 3] for a 2×2 pool of 4×4",
        || b.max_pool2d_backward(&x, &gy_bad, 2),
    )?;
    expect_err(&ctx, op, true, "a 3-D input", || {
        b.max_pool2d_backward(&x3, &gy_bad, 2)
    })?;
    expect_err(&ctx, op, true, "window 0", || {
        b.max_pool2d_backward(&x, &gy_bad, 0)
    })
}

// ---- fused ops ------------------------------------------------------------------------------

/// `conv2d_relu(x, w, bias)` with a replaceable op, so a unit test can show that a wrong fused
/// op fails the same cases.
type ConvReluFn<'a, B> = &'a dyn Fn(
    &<B as Backend>::Tensor,
    &<B as Backend>::Tensor,
    Option<&<B as Backend>::Tensor>,
    Conv2dParams,
) -> crate::Result<<B as Backend>::Tensor>;

/// `conv2d_relu` against [`reference::conv2d_relu`] (the float64 convolution, then ReLU) on every
/// convolution case of [`check_conv2d`]: strides 1 to 3, padding 0 to 2, odd sizes, and the
/// paper's MNIST layers (28×28×1 → 32 and 14×14×32 → 64, 5×5 kernels, padding 2), with and
/// without bias, plus a bias that makes most outputs negative.
///
/// Tolerance: the same as `conv2d` with `mag` the convolution of the absolute values. ReLU is
/// 1-Lipschitz (`|relu(a) − relu(b)| ≤ |a − b|`), so the fused op's error is at most the
/// convolution's, including outputs whose `f32` sum lands on the other side of 0 than the
/// `f64` one; a missing ReLU or a ReLU before the bias is off by `O(mag)` on about half the
/// outputs. Its errors are those of `conv2d` (named by the primitive when the op is a default
/// body, so the name is not held strictly).
pub fn check_conv2d_relu<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    conv2d_relu_cases(b, tol, &|x, w, bias, p| b.conv2d_relu(x, w, bias, p))
}

fn conv2d_relu_cases<B: Backend>(b: &B, tol: Tol, f: ConvReluFn<'_, B>) -> CheckResult {
    let name = b.name();
    let op = "conv2d_relu";
    let mut rng = SplitMix64::new(0xC0_4E1);
    let mut cases: Vec<(ConvCase, Option<(f32, f32)>)> = CONV_SMALL
        .iter()
        .chain(&CONV_LARGE)
        .enumerate()
        .map(|(i, cs)| (*cs, (i % 2 == 1).then_some((-1.0, 1.0))))
        .collect();
    // A strongly negative bias: most outputs are cut by the ReLU, a few survive.
    cases.push((cc(2, 3, (9, 11), 5, (3, 3), (1, 1)), Some((-4.0, -1.0))));
    cases.push((cc(2, 1, (28, 28), 32, (5, 5), (1, 2)), Some((-1.5, 0.5))));
    let (mut cut, mut total) = (0usize, 0usize);
    for (i, (cs, bias_range)) in cases.iter().enumerate() {
        let ctx = format!(
            "[{name}] {op} case {i} ({}, bias {bias_range:?})",
            cs.describe()
        );
        let x = Host::random(&mut rng, &cs.x_shape(), -1.0, 1.0);
        let w = Host::random(&mut rng, &cs.w_shape(), -1.0, 1.0);
        let (lo, hi) = bias_range.unwrap_or((0.0, 0.0));
        let bias = Host::random(&mut rng, &[cs.k], lo, hi);
        let (rb, rb_abs) = (bias.r(), bias.r().abs());
        let with_bias = bias_range.is_some();
        let want = reference::conv2d_relu(
            &x.r(),
            &w.r(),
            with_bias.then_some(&rb),
            cs.stride,
            cs.padding,
        )
        .reference(&ctx)?;
        let mag = reference::conv2d(
            &x.r().abs(),
            &w.r().abs(),
            with_bias.then_some(&rb_abs),
            cs.stride,
            cs.padding,
        )
        .reference(&ctx)?;
        cut += want.data.iter().filter(|&&v| v == 0.0).count();
        total += want.numel();
        let bt = bias.up(b, &ctx)?;
        let got = f(
            &x.up(b, &ctx)?,
            &w.up(b, &ctx)?,
            with_bias.then_some(&bt),
            cs.params(),
        )
        .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
    }
    // The ReLU must matter: a good share of the outputs on each side of it.
    if cut * 4 < total || cut * 4 > 3 * total {
        return Err(format!(
            "[{name}] {op}: suite bug: {cut} of {total} outputs cut by the ReLU"
        ));
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, w, w4, x3) = (
        t(&[1, 2, 5, 5])?,
        t(&[3, 2, 3, 3])?,
        t(&[3, 4, 3, 3])?,
        t(&[2, 5, 5])?,
    );
    let (bias2, big) = (t(&[2])?, t(&[3, 2, 8, 8])?);
    expect_err(
        &ctx,
        op,
        false,
        "2 input channels with a 4-channel kernel",
        || f(&x, &w4, None, p(1, 0)),
    )?;
    expect_err(&ctx, op, false, "a 3-D input", || f(&x3, &w, None, p(1, 0)))?;
    expect_err(&ctx, op, false, "a bias [2] for 3 filters", || {
        f(&x, &w, Some(&bias2), p(1, 0))
    })?;
    expect_err(&ctx, op, false, "stride 0", || f(&x, &w, None, p(0, 1)))?;
    expect_err(
        &ctx,
        op,
        false,
        "an 8×8 kernel on a 5×5 image with padding 1",
        || f(&x, &big, None, p(1, 1)),
    )
}

/// `relu_max_pool2d_backward(y, gy, size)` with a replaceable op (see [`ConvReluFn`]).
type ReluPoolBackFn<'a, B> = &'a dyn Fn(
    &<B as Backend>::Tensor,
    &<B as Backend>::Tensor,
    usize,
) -> crate::Result<<B as Backend>::Tensor>;

/// `(pre-activation shape, window)` for the fused ReLU + max-pool gradient, small enough for
/// finite differences. The 2×2 windows of the paper run 16 windows at a time on AVX-512 with
/// masked tails, so the output widths cover a full group (16), less than half a group (1, 7),
/// exactly half (8), more than half (9, 14), one past a group (17) and two groups and one
/// (33); odd heights and widths leave rows and columns no window reads; windows 1, 3 and 4
/// take the general loop. The full MNIST activations, whose planes split into several work
/// blocks, are checked against the exact reference in [`check_relu_max_pool2d_backward`].
const RELU_POOL_CASES: [(&[usize], usize); 14] = [
    (&[1, 1, 4, 4], 2),
    (&[2, 3, 7, 9], 2),
    (&[1, 2, 28, 28], 2),
    (&[1, 3, 14, 14], 2),
    (&[1, 2, 2, 32], 2),
    (&[1, 2, 5, 34], 2),
    (&[1, 1, 3, 67], 2),
    (&[2, 1, 2, 16], 2),
    (&[1, 2, 4, 19], 2),
    (&[1, 1, 2, 2], 2),
    (&[2, 2, 9, 9], 3),
    (&[3, 2, 8, 6], 4),
    (&[2, 3, 5, 5], 1),
    (&[2, 5, 28, 28], 2),
];

/// Pre-activations `z` for the ReLU + pool gradient: `|z| ≥ KINK_GAP` everywhere (ReLU's kink),
/// and every window's maximum at least `KINK_GAP` ahead of its runner-up (the pool's kink), so
/// that a positive maximum of `relu(z)` also leads the window's other `relu` values by that
/// much. Values uniform in `[lo, hi]`; a negative `lo` gives windows whose `relu` is all zero.
fn relu_pool_input(rng: &mut SplitMix64, shape: &[usize], size: usize, lo: f32, hi: f32) -> Host {
    let mut z = away_from_zero(rng, shape, lo, hi);
    separate_window_maxima(&mut z, size);
    // Separation only raises a window's maximum; one raised into (−KINK_GAP, KINK_GAP) is raised
    // further, which keeps it the maximum and its lead.
    for v in &mut z.data {
        if v.abs() < KINK_GAP {
            *v = 2.0 * KINK_GAP;
        }
    }
    z
}

/// `relu_max_pool2d_backward` (the gradient of `max_pool2d(relu(z))` in `z`, given
/// `y = relu(z)`) against:
///
/// - **central finite differences in float64** of `max_pool2d(relu(z))` composed from
///   [`reference::relu`] and [`reference::max_pool2d`], on pre-activations kept [`KINK_GAP`] from
///   both kinks (see `relu_pool_input`), with every other window all negative in some cases;
/// - the exact [`reference::relu_max_pool2d_backward`] (first maximum of `y`, only if positive)
///   on the same inputs, and on the paper's full MNIST activations (`[2, 32, 28, 28]` and
///   `[2, 64, 14, 14]`, too large for finite differences) and the SIMD-tail shapes with values
///   from {0, 0.25, 0.5} — exact ties everywhere, zero windows included —, where the first
///   maximum must take the gradient, and a zero maximum must pass none;
/// - a hand-worked case.
///
/// Tolerance: the gradient only selects `gy` values, so the backend's answer is exact; the
/// allowance is [`Tol`] plus the finite differences' rounding bound from `fd_grad` (≈ 1e-9).
/// Every injected mistake (the mask missing or taken as `y ≥ 0`, the last maximum taking a tied
/// window, a tail of windows dropped) is off by a whole `|gy|` ≥ 0.1 (`gy` is drawn from
/// `±[0.1, 2]`) on some element.
pub fn check_relu_max_pool2d_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    relu_max_pool2d_backward_cases(b, tol, &|y, gy, size| {
        b.relu_max_pool2d_backward(y, gy, size)
    })
}

fn relu_max_pool2d_backward_cases<B: Backend>(
    b: &B,
    tol: Tol,
    f: ReluPoolBackFn<'_, B>,
) -> CheckResult {
    let name = b.name();
    let op = "relu_max_pool2d_backward";
    let mut rng = SplitMix64::new(0x4E1_9002);
    let out_of = |s: &[usize], size: usize| vec![s[0], s[1], s[2] / size, s[3] / size];
    for (i, (shape, size)) in RELU_POOL_CASES.iter().enumerate() {
        // Alternate between balanced signs and mostly negative pre-activations.
        let (lo, hi) = if i % 2 == 0 { (-1.0, 1.0) } else { (-1.0, 0.4) };
        let ctx = format!(
            "[{name}] {op} (z {shape:?}, window {size}, z in [{lo}, {hi}]) vs finite differences"
        );
        let z = relu_pool_input(&mut rng, shape, *size, lo, hi);
        let y = Host::new(shape, z.data.iter().map(|&v| v.max(0.0)).collect());
        let gy = Host::random_magnitude(&mut rng, &out_of(shape, *size), 0.1, 2.0);
        let (want, noise) = fd_grad(&ctx, &z.r(), &gy.r(), |z| {
            reference::max_pool2d(&reference::relu(z), *size)
        })?;
        let got = f(&y.up(b, &ctx)?, &gy.up(b, &ctx)?, *size).backend(&ctx, op)?;
        let data = b.to_vec(&got).backend(&ctx, "to_vec")?;
        compare(&ctx, got.dims(), &data, &want, None, tol.plus_atol(noise))?;
        let exact = reference::relu_max_pool2d_backward(&y.r(), &gy.r(), *size).reference(&ctx)?;
        compare(
            &format!("{ctx}, exact reference"),
            got.dims(),
            &data,
            &exact,
            None,
            tol,
        )?;
    }
    // Exact ties everywhere, including all-zero windows, on the MNIST activations and the tails.
    let tie_shapes: [&[usize]; 6] = [
        &[2, 32, 28, 28],
        &[2, 64, 14, 14],
        &[1, 2, 5, 34],
        &[1, 1, 3, 67],
        &[2, 1, 2, 16],
        &[1, 2, 4, 19],
    ];
    for shape in tie_shapes {
        let ctx = format!("[{name}] {op} (y {shape:?}, window 2) with tied and zero maxima");
        let mut y = Host::random(&mut rng, shape, 0.0, 1.0);
        for v in &mut y.data {
            *v = [0.0, 0.0, 0.25, 0.5][rng.below(4)];
        }
        let gy = Host::random_magnitude(&mut rng, &out_of(shape, 2), 0.1, 2.0);
        let want = reference::relu_max_pool2d_backward(&y.r(), &gy.r(), 2).reference(&ctx)?;
        let got = f(&y.up(b, &ctx)?, &gy.up(b, &ctx)?, 2).backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, None, tol)?;
    }
    // By hand, y is 1×1×2×8 with four 2×2 windows:
    //   [0 0 | 3 1 | 2 2 | 0 4]
    //   [0 0 | 3 2 | 2 2 | 0 0]
    // window 0 is all zero → nothing; window 1: 3 at (0, 2) and (1, 2) → the first, (0, 2);
    // window 2: four ties → (0, 4); window 3: 4 at (0, 7).
    let ctx = format!("[{name}] {op} by hand");
    let y = Host::new(
        &[1, 1, 2, 8],
        vec![
            0.0, 0.0, 3.0, 1.0, 2.0, 2.0, 0.0, 4.0, //
            0.0, 0.0, 3.0, 2.0, 2.0, 2.0, 0.0, 0.0,
        ],
    );
    let gy = Host::new(&[1, 1, 1, 4], vec![10.0, 20.0, 30.0, 40.0]);
    let want = RefTensor::new(
        &[1, 1, 2, 8],
        vec![
            0.0, 0.0, 20.0, 0.0, 30.0, 0.0, 0.0, 40.0, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ],
    )
    .reference(&ctx)?;
    let got = f(&y.up(b, &ctx)?, &gy.up(b, &ctx)?, 2).backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (y, gy_bad, y3) = (t(&[1, 1, 4, 4])?, t(&[1, 1, 3, 3])?, t(&[1, 4, 4])?);
    expect_err(
        &ctx,
        op,
        false,
        "gy [1, 1, 3, 3] for a 2×2 pool of 4×4",
        || f(&y, &gy_bad, 2),
    )?;
    expect_err(&ctx, op, false, "a 3-D input", || f(&y3, &gy_bad, 2))?;
    expect_err(&ctx, op, false, "window 0", || f(&y, &gy_bad, 0))?;
    expect_err(&ctx, op, false, "window 5 on a 4×4 image", || {
        f(&y, &gy_bad, 5)
    })
}

// ---- losses ---------------------------------------------------------------------------------

/// Random labels in `0..k`.
fn labels(rng: &mut SplitMix64, n: usize, k: usize) -> Host {
    Host::new(&[n], (0..n).map(|_| rng.below(k) as f32).collect())
}

/// The error cases shared by the four losses: shapes that do not fit, and labels that are not a
/// class (too large, negative, fractional, NaN, infinite). `f(logits, labels)` runs the op.
fn loss_errors<B: Backend>(
    b: &B,
    op: &'static str,
    f: impl Fn(&B::Tensor, &B::Tensor) -> crate::Result<B::Tensor>,
) -> CheckResult {
    let ctx = format!("[{}] {op} errors", b.name());
    let t = |s: &[usize], v: Vec<f32>| Host::new(s, v).up(b, &ctx);
    let logits = t(&[2, 4], vec![0.5; 8])?;
    let (y3, y21) = (t(&[3], vec![0.0; 3])?, t(&[2, 1], vec![0.0; 2])?);
    let (z1, y4) = (t(&[4], vec![0.5; 4])?, t(&[4], vec![0.0; 4])?);
    expect_err(&ctx, op, true, "3 labels for 2 rows", || f(&logits, &y3))?;
    expect_err(&ctx, op, true, "labels [2, 1]", || f(&logits, &y21))?;
    expect_err(&ctx, op, true, "1-D logits", || f(&z1, &y4))?;
    for bad in [4.0f32, 7.0, -1.0, 1.5, f32::NAN, f32::INFINITY, 1e9] {
        let y = t(&[2], vec![0.0, bad])?;
        expect_err(
            &ctx,
            op,
            true,
            &format!("label {bad} with 4 classes"),
            || f(&logits, &y),
        )?;
    }
    Ok(())
}

/// `(n, k, lo, hi)` for the loss cases: logits uniform in `[lo, hi]`, including logits of 80 to
/// 100 (whose `exp` overflows `f32` unless the maximum is subtracted) and 1000 classes.
const LOSS_CASES: [(usize, usize, f32, f32); 7] = [
    (1, 2, -3.0, 3.0),
    (3, 10, -5.0, 5.0),
    (50, 10, -5.0, 5.0),
    (7, 17, -1.0, 1.0),
    (2, 1000, -5.0, 5.0),
    (4, 7, 80.0, 100.0),
    (5, 3, -100.0, -80.0),
];

/// Per row: the maximum logit `m` and `s = Σ_j exp(z_j − m)`.
fn row_stats(z: &RefTensor) -> Vec<(f64, f64)> {
    let k = z.shape[1];
    z.data
        .chunks(k)
        .map(|row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (m, row.iter().map(|&v| (v - m).exp()).sum())
        })
        .collect()
}

/// `cross_entropy` against [`reference::cross_entropy`]; `mag = |m| + |z_y| + |ln s| + 1` per
/// row (`m` the maximum logit, `s` the sum of `exp(z − m)`): the loss is a difference of those,
/// and the `+1` takes the relative rounding of `s` as an absolute error of `ln s`. Labels that
/// are not a class are errors.
pub fn check_cross_entropy<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xCE);
    for (n, k, lo, hi) in LOSS_CASES {
        let ctx = format!("[{name}] cross_entropy (logits [{n}, {k}] in [{lo}, {hi}])");
        let z = Host::random(&mut rng, &[n, k], lo, hi);
        let y = labels(&mut rng, n, k);
        let want = reference::cross_entropy(&z.r(), &y.r()).reference(&ctx)?;
        let rz = z.r();
        let mag = RefTensor {
            shape: vec![n],
            data: row_stats(&rz)
                .iter()
                .enumerate()
                .map(|(i, &(m, s))| {
                    m.abs() + rz.data[i * k + y.data[i] as usize].abs() + s.ln().abs() + 1.0
                })
                .collect(),
        };
        let got = b
            .cross_entropy(&z.up(b, &ctx)?, &y.up(b, &ctx)?)
            .backend(&ctx, "cross_entropy")?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
    }
    loss_errors(b, "cross_entropy", |z, y| b.cross_entropy(z, y))
}

/// `cross_entropy_backward` against finite differences of [`reference::cross_entropy`];
/// `mag_ij = |gy_i|·(p_ij·(1 + |z_ij − m_i|) + [j = y_i])` (each entry is `gy` times a softmax
/// probability minus the one-hot, the probability carrying the rounding of `z − m`).
pub fn check_cross_entropy_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "cross_entropy_backward";
    let mut rng = SplitMix64::new(0xCEB);
    for (n, k, lo, hi) in LOSS_CASES {
        let ctx =
            format!("[{name}] {op} (logits [{n}, {k}] in [{lo}, {hi}]) vs finite differences");
        let z = Host::random(&mut rng, &[n, k], lo, hi);
        let y = labels(&mut rng, n, k);
        let gy = Host::random(&mut rng, &[n], -2.0, 2.0);
        let ry = y.r();
        let (want, noise) = fd_grad(&ctx, &z.r(), &gy.r(), |z| reference::cross_entropy(z, &ry))?;
        let rz = z.r();
        let stats = row_stats(&rz);
        let mut mag = RefTensor::full(&[n, k], 0.0);
        for i in 0..n {
            let (m, s) = stats[i];
            for j in 0..k {
                let pij = (rz.data[i * k + j] - m).exp() / s;
                let onehot = if j == y.data[i] as usize { 1.0 } else { 0.0 };
                mag.data[i * k + j] = f64::from(gy.data[i]).abs()
                    * (pij * (1.0 + (rz.data[i * k + j] - m).abs()) + onehot);
            }
        }
        let got = b
            .cross_entropy_backward(&z.up(b, &ctx)?, &y.up(b, &ctx)?, &gy.up(b, &ctx)?)
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol.plus_atol(noise))?;
    }
    let ctx = format!("[{name}] {op} errors");
    let gy2 = Host::new(&[2], vec![1.0; 2]).up(b, &ctx)?;
    loss_errors(b, op, |z, y| b.cross_entropy_backward(z, y, &gy2))?;
    let z = Host::new(&[2, 4], vec![0.5; 8]).up(b, &ctx)?;
    let y = Host::new(&[2], vec![0.0, 3.0]).up(b, &ctx)?;
    let gy3 = Host::new(&[3], vec![1.0; 3]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "gy [3] for 2 rows", || {
        b.cross_entropy_backward(&z, &y, &gy3)
    })
}

/// `kl_div` against [`reference::kl_div`] (probabilities formed explicitly); `mag = 1 + Σ_j
/// P_ij·(|z_pj − m_p| + |z_qj − m_q|)` per row: the divergence is a P-weighted sum of
/// differences of log-probabilities, each carrying the rounding of its logits. Includes equal
/// rows (KL = 0) and logits of 80 to 100.
pub fn check_kl_div<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "kl_div";
    let mut rng = SplitMix64::new(0x4B1);
    for (n, k, lo, hi) in LOSS_CASES {
        let ctx = format!("[{name}] {op} (logits [{n}, {k}] in [{lo}, {hi}])");
        let p = Host::random(&mut rng, &[n, k], lo, hi);
        let mut q = Host::random(&mut rng, &[n, k], lo, hi);
        // The first row of q equals p's: a divergence of exactly zero.
        q.data[..k].copy_from_slice(&p.data[..k]);
        let want = reference::kl_div(&p.r(), &q.r()).reference(&ctx)?;
        let (rp, rq) = (p.r(), q.r());
        let (sp, sq) = (row_stats(&rp), row_stats(&rq));
        let mag = RefTensor {
            shape: vec![n],
            data: (0..n)
                .map(|i| {
                    1.0 + (0..k)
                        .map(|j| {
                            let zp = rp.data[i * k + j] - sp[i].0;
                            let zq = rq.data[i * k + j] - sq[i].0;
                            zp.exp() / sp[i].1 * (zp.abs() + zq.abs())
                        })
                        .sum::<f64>()
                })
                .collect(),
        };
        let got = b
            .kl_div(&p.up(b, &ctx)?, &q.up(b, &ctx)?)
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
        let v = b.to_vec(&got).backend(&ctx, "to_vec")?;
        if !v.iter().all(|&x| x >= -1e-6) {
            return Err(format!("{ctx}: a divergence is negative: {v:?}"));
        }
    }
    let ctx = format!("[{name}] {op} errors");
    let a = Host::new(&[2, 4], vec![0.5; 8]).up(b, &ctx)?;
    let c = Host::new(&[2, 3], vec![0.5; 6]).up(b, &ctx)?;
    let d = Host::new(&[8], vec![0.5; 8]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "[2, 4] against [2, 3]", || b.kl_div(&a, &c))?;
    expect_err(&ctx, op, true, "1-D logits", || b.kl_div(&d, &d))
}

/// `kl_div_backward` against finite differences of [`reference::kl_div`], with respect to each
/// argument; `mag_ij = |gy_i|·(P_ij·(1 + |z_pj − m_p| + |z_qj − m_q|) + Q_ij)`.
pub fn check_kl_div_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "kl_div_backward";
    let mut rng = SplitMix64::new(0x4B1B);
    for (n, k, lo, hi) in LOSS_CASES {
        if k > 100 {
            continue; // finite differences over 2,000 logits twice: slow, nothing new
        }
        let ctx =
            format!("[{name}] {op} (logits [{n}, {k}] in [{lo}, {hi}]) vs finite differences");
        let p = Host::random(&mut rng, &[n, k], lo, hi);
        let q = Host::random(&mut rng, &[n, k], lo, hi);
        let gy = Host::random(&mut rng, &[n], -2.0, 2.0);
        let (rp, rq) = (p.r(), q.r());
        let (want_p, noise_p) = fd_grad(&ctx, &rp, &gy.r(), |z| reference::kl_div(z, &rq))?;
        let (want_q, noise_q) = fd_grad(&ctx, &rq, &gy.r(), |z| reference::kl_div(&rp, z))?;
        let (sp, sq) = (row_stats(&rp), row_stats(&rq));
        let mut mag = RefTensor::full(&[n, k], 0.0);
        for i in 0..n {
            for j in 0..k {
                let zp = rp.data[i * k + j] - sp[i].0;
                let zq = rq.data[i * k + j] - sq[i].0;
                let (pj, qj) = (zp.exp() / sp[i].1, zq.exp() / sq[i].1);
                mag.data[i * k + j] =
                    f64::from(gy.data[i]).abs() * (pj * (1.0 + zp.abs() + zq.abs()) + qj);
            }
        }
        let (gp, gq) = b
            .kl_div_backward(&p.up(b, &ctx)?, &q.up(b, &ctx)?, &gy.up(b, &ctx)?)
            .backend(&ctx, op)?;
        expect_close(
            b,
            &format!("{ctx}, ∂/∂p"),
            &gp,
            &want_p,
            Some(&mag),
            tol.plus_atol(noise_p),
        )?;
        expect_close(
            b,
            &format!("{ctx}, ∂/∂q"),
            &gq,
            &want_q,
            Some(&mag),
            tol.plus_atol(noise_q),
        )?;
    }
    let ctx = format!("[{name}] {op} errors");
    let a = Host::new(&[2, 4], vec![0.5; 8]).up(b, &ctx)?;
    let g3 = Host::new(&[3], vec![1.0; 3]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "gy [3] for 2 rows", || {
        b.kl_div_backward(&a, &a, &g3)
    })
}

/// `(n, k, κ)` for the CW loss: κ = 0, 0.5 and the MNIST challenge's 50.
const CW_CASES: [(usize, usize, f32); 6] = [
    (5, 10, 0.0),
    (8, 3, 0.5),
    (4, 10, 50.0),
    (1, 2, 0.0),
    (50, 10, 0.0),
    (9, 17, 1.0),
];

/// Logits `[n, k]` in `[-3, 3]`, each row redrawn until its margin `z_y − max_{j≠y} z_j + κ` and
/// the gap between the two largest other logits are at least [`KINK_GAP`] from zero.
fn cw_inputs(rng: &mut SplitMix64, n: usize, k: usize, kappa: f32) -> (Host, Host) {
    let y = labels(rng, n, k);
    let mut z = Host::random(rng, &[n, k], -3.0, 3.0);
    for i in 0..n {
        let label = y.data[i] as usize;
        loop {
            let row = &z.data[i * k..(i + 1) * k];
            let mut others: Vec<f32> = (0..k).filter(|&j| j != label).map(|j| row[j]).collect();
            others.sort_by(|a, b| b.total_cmp(a));
            let margin = row[label] - others[0] + kappa;
            let gap = if others.len() > 1 {
                others[0] - others[1]
            } else {
                f32::INFINITY
            };
            if margin.abs() >= KINK_GAP && gap >= KINK_GAP {
                break;
            }
            for v in &mut z.data[i * k..(i + 1) * k] {
                *v = rng.uniform(-3.0, 3.0);
            }
        }
    }
    (z, y)
}

/// `cw_loss` against [`reference::cw_loss`]; `mag = |z_y| + |max_{j≠y} z_j| + κ` per row.
pub fn check_cw_loss<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xC3);
    for (n, k, kappa) in CW_CASES {
        let ctx = format!("[{name}] cw_loss (logits [{n}, {k}], kappa {kappa})");
        let (z, y) = cw_inputs(&mut rng, n, k, kappa);
        let want = reference::cw_loss(&z.r(), &y.r(), kappa.into()).reference(&ctx)?;
        let mut mag = RefTensor::full(&[n], 0.0);
        for i in 0..n {
            let row = &z.data[i * k..(i + 1) * k];
            let label = y.data[i] as usize;
            let other = (0..k)
                .filter(|&j| j != label)
                .map(|j| row[j])
                .fold(f32::NEG_INFINITY, f32::max);
            mag.data[i] = f64::from(row[label]).abs() + f64::from(other).abs() + f64::from(kappa);
        }
        let got = b
            .cw_loss(&z.up(b, &ctx)?, &y.up(b, &ctx)?, kappa)
            .backend(&ctx, "cw_loss")?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
    }
    loss_errors(b, "cw_loss", |z, y| b.cw_loss(z, y, 0.0))
}

/// `cw_loss_backward` against finite differences of [`reference::cw_loss`] (away from kinks),
/// and, on ties among the other logits, the `+gy` going to the first largest one.
pub fn check_cw_loss_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "cw_loss_backward";
    let mut rng = SplitMix64::new(0xC3B);
    for (n, k, kappa) in CW_CASES {
        let ctx = format!("[{name}] {op} (logits [{n}, {k}], kappa {kappa}) vs finite differences");
        let (z, y) = cw_inputs(&mut rng, n, k, kappa);
        let gy = Host::random(&mut rng, &[n], -2.0, 2.0);
        let ry = y.r();
        let (want, noise) = fd_grad(&ctx, &z.r(), &gy.r(), |z| {
            reference::cw_loss(z, &ry, kappa.into())
        })?;
        let got = b
            .cw_loss_backward(&z.up(b, &ctx)?, &y.up(b, &ctx)?, kappa, &gy.up(b, &ctx)?)
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, None, tol.plus_atol(noise))?;
    }
    // Worked by hand, gy = [2, 3, 4, 5], κ = 5 so that every margin is active: the gradient is
    // −gy at the label and +gy at the first largest *other* logit.
    //   row 0: z = [1, 3, 3, 0], y = 0 → j = 1: [−2, 2, 0, 0]
    //   row 1: z = [3, 3, 1, 0], y = 1 → j = 0 (the label's own tie does not count): [3, −3, 0, 0]
    //   row 2: z = [2, 4, 4, 1], y = 1 → j = 2, after the label: [0, −4, 4, 0]
    //   row 3: z = [0, 0, 0, 0], y = 2 → j = 0: [5, 0, −5, 0]
    let ctx = format!("[{name}] {op} with tied logits");
    let z = Host::new(
        &[4, 4],
        vec![
            1.0, 3.0, 3.0, 0.0, 3.0, 3.0, 1.0, 0.0, 2.0, 4.0, 4.0, 1.0, 0.0, 0.0, 0.0, 0.0,
        ],
    );
    let y = Host::new(&[4], vec![0.0, 1.0, 1.0, 2.0]);
    let gy = Host::new(&[4], vec![2.0, 3.0, 4.0, 5.0]);
    let want = RefTensor::new(
        &[4, 4],
        vec![
            -2.0, 2.0, 0.0, 0.0, 3.0, -3.0, 0.0, 0.0, 0.0, -4.0, 4.0, 0.0, 5.0, 0.0, -5.0, 0.0,
        ],
    )
    .reference(&ctx)?;
    let got = b
        .cw_loss_backward(&z.up(b, &ctx)?, &y.up(b, &ctx)?, 5.0, &gy.up(b, &ctx)?)
        .backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;
    // κ = −10: every margin is negative, the loss is flat, the gradient zero.
    let ctx = format!("[{name}] {op} with inactive margins");
    let got = b
        .cw_loss_backward(&z.up(b, &ctx)?, &y.up(b, &ctx)?, -10.0, &gy.up(b, &ctx)?)
        .backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &RefTensor::full(&[4, 4], 0.0), None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    let gy2 = Host::new(&[2], vec![1.0; 2]).up(b, &ctx)?;
    loss_errors(b, op, |z, y| b.cw_loss_backward(z, y, 0.0, &gy2))?;
    let z = Host::new(&[2, 4], vec![0.5; 8]).up(b, &ctx)?;
    let y = Host::new(&[2], vec![0.0, 3.0]).up(b, &ctx)?;
    let gy3 = Host::new(&[3], vec![1.0; 3]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "gy [3] for 2 rows", || {
        b.cw_loss_backward(&z, &y, 0.0, &gy3)
    })
}

// ---- DLR loss -------------------------------------------------------------------------------

/// `(n, k, targeted)` for the DLR loss: 3 and 4 classes (the least each variant takes), 10 and
/// 17, batch 1 to 50.
const DLR_CASES: [(usize, usize, bool); 8] = [
    (5, 10, false),
    (5, 10, true),
    (1, 3, false),
    (3, 4, true),
    (50, 10, true),
    (9, 17, false),
    (7, 17, true),
    (4, 5, false),
];

/// Logits `[n, k]` in `[-3, 3]`, labels, and (when `targeted`) targets other than the label.
/// Each row is redrawn until its five largest logits are at least [`KINK_GAP`] apart (so the
/// sort, and the maximum over the other classes, are constant within a finite-difference
/// stencil) and `z_π1 − z_π3 ≥ 0.5` (so the denominator, whose third derivative grows as its
/// fourth inverse power, is not small).
fn dlr_inputs(
    rng: &mut SplitMix64,
    n: usize,
    k: usize,
    targeted: bool,
) -> (Host, Host, Option<Host>) {
    let y = labels(rng, n, k);
    let t = targeted.then(|| {
        let data = y
            .data
            .iter()
            .map(|&l| ((l as usize + 1 + rng.below(k - 1)) % k) as f32)
            .collect();
        Host::new(&[n], data)
    });
    let mut z = Host::random(rng, &[n, k], -3.0, 3.0);
    for i in 0..n {
        loop {
            let mut s = z.data[i * k..(i + 1) * k].to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            let top = &s[..k.min(5)];
            if top.windows(2).all(|w| w[0] - w[1] >= KINK_GAP) && s[0] - s[2] >= 0.5 {
                break;
            }
            for v in &mut z.data[i * k..(i + 1) * k] {
                *v = rng.uniform(-3.0, 3.0);
            }
        }
    }
    (z, y, t)
}

/// For one row: the loss's rounding magnitude `(|z_y| + |z_o|)/D + |u|·S_D/D²` (`u = z_y − z_o`,
/// `S_D` the sum of the magnitudes of the logits in `D`), and per class the sum of the
/// magnitudes of the gradient's terms times `1 + S/D` (`S` every logit involved): how far `f32`
/// rounding of the inputs' differences can move each result.
fn dlr_mags(z: &[f32], y: usize, t: Option<usize>) -> (f64, Vec<f64>) {
    let z: Vec<f64> = z.iter().map(|&v| f64::from(v)).collect();
    let mut pi: Vec<usize> = (0..z.len()).collect();
    pi.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    let (o, tail): (usize, Vec<(usize, f64)>) = match t {
        None => (if pi[0] == y { pi[1] } else { pi[0] }, vec![(pi[2], 1.0)]),
        Some(t) => (t, vec![(pi[2], 0.5), (pi[3], 0.5)]),
    };
    let d = z[pi[0]] - tail.iter().map(|&(c, w)| w * z[c]).sum::<f64>();
    let u = (z[y] - z[o]).abs();
    let s_d = z[pi[0]].abs() + tail.iter().map(|&(c, w)| w * z[c].abs()).sum::<f64>();
    let s = s_d + z[y].abs() + z[o].abs();
    let loss = (z[y].abs() + z[o].abs()) / d + u * s_d / (d * d);
    let mut g = vec![0.0; z.len()];
    g[y] += 1.0 / d;
    g[o] += 1.0 / d;
    g[pi[0]] += u / (d * d);
    for (c, w) in tail {
        g[c] += w * u / (d * d);
    }
    for v in &mut g {
        *v *= 1.0 + s / d;
    }
    (loss, g)
}

/// The error cases of the DLR loss beyond [`loss_errors`]: too few classes, targets of the wrong
/// shape or not a class. `f(logits, labels, targets)` runs the op.
fn dlr_errors<B: Backend>(
    b: &B,
    op: &'static str,
    f: impl Fn(&B::Tensor, &B::Tensor, Option<&B::Tensor>) -> crate::Result<B::Tensor>,
) -> CheckResult {
    loss_errors(b, op, |z, y| f(z, y, None))?;
    let ctx = format!("[{}] {op} errors", b.name());
    let t = |s: &[usize], v: Vec<f32>| Host::new(s, v).up(b, &ctx);
    let (z2, z3, z4) = (
        t(&[2, 2], vec![0.5; 4])?,
        t(&[2, 3], vec![0.5; 6])?,
        t(&[2, 4], vec![0.5; 8])?,
    );
    let y = t(&[2], vec![0.0, 1.0])?;
    expect_err(&ctx, op, true, "2 classes", || f(&z2, &y, None))?;
    expect_err(&ctx, op, true, "3 classes with targets", || {
        f(&z3, &y, Some(&y))
    })?;
    let t3 = t(&[3], vec![1.0; 3])?;
    expect_err(&ctx, op, true, "3 targets for 2 rows", || {
        f(&z4, &y, Some(&t3))
    })?;
    let t21 = t(&[2, 1], vec![1.0; 2])?;
    expect_err(&ctx, op, true, "targets [2, 1]", || f(&z4, &y, Some(&t21)))?;
    for bad in [4.0f32, -1.0, 1.5, f32::NAN] {
        let tb = t(&[2], vec![1.0, bad])?;
        expect_err(
            &ctx,
            op,
            true,
            &format!("target {bad} with 4 classes"),
            || f(&z4, &y, Some(&tb)),
        )?;
    }
    Ok(())
}

/// `dlr_loss` against [`reference::dlr_loss`], untargeted and targeted, with the magnitudes of
/// `dlr_mags`; the loss is invariant to shifting and scaling the logits.
pub fn check_dlr_loss<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "dlr_loss";
    let mut rng = SplitMix64::new(0xD1);
    for (n, k, targeted) in DLR_CASES {
        let ctx = format!("[{name}] {op} (logits [{n}, {k}], targeted {targeted})");
        let (z, y, t) = dlr_inputs(&mut rng, n, k, targeted);
        let rt = t.as_ref().map(Host::r);
        let want = reference::dlr_loss(&z.r(), &y.r(), rt.as_ref()).reference(&ctx)?;
        let mut mag = RefTensor::full(&[n], 0.0);
        for i in 0..n {
            let ti = t.as_ref().map(|t| t.data[i] as usize);
            mag.data[i] = dlr_mags(&z.data[i * k..(i + 1) * k], y.data[i] as usize, ti).0;
        }
        let tt = t.as_ref().map(|t| t.up(b, &ctx)).transpose()?;
        let got = b
            .dlr_loss(&z.up(b, &ctx)?, &y.up(b, &ctx)?, tt.as_ref())
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
        // 3·z + 7 has the same loss (up to the 1e-12 in the denominator and rounding).
        let moved = Host::new(&[n, k], z.data.iter().map(|v| 3.0 * v + 7.0).collect());
        let ctx2 = format!("{ctx}, logits 3·z + 7");
        let got = b
            .dlr_loss(&moved.up(b, &ctx2)?, &y.up(b, &ctx2)?, tt.as_ref())
            .backend(&ctx2, op)?;
        let mut mag2 = mag.clone();
        for (i, m) in mag2.data.iter_mut().enumerate() {
            let ti = t.as_ref().map(|t| t.data[i] as usize);
            *m = m.max(dlr_mags(&moved.data[i * k..(i + 1) * k], y.data[i] as usize, ti).0);
        }
        expect_close(b, &ctx2, &got, &want, Some(&mag2), tol)?;
    }
    dlr_errors(b, op, |z, y, t| b.dlr_loss(z, y, t))
}

/// `dlr_loss_backward` against central finite differences of [`reference::dlr_loss`] (away from
/// the sort's kinks), with the magnitudes of `dlr_mags`; on tied logits, by hand: the lower
/// index ranks first.
pub fn check_dlr_loss_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "dlr_loss_backward";
    let mut rng = SplitMix64::new(0xD1B);
    for (n, k, targeted) in DLR_CASES {
        let ctx =
            format!("[{name}] {op} (logits [{n}, {k}], targeted {targeted}) vs finite differences");
        let (z, y, t) = dlr_inputs(&mut rng, n, k, targeted);
        let gy = Host::random(&mut rng, &[n], -2.0, 2.0);
        let (ry, rt) = (y.r(), t.as_ref().map(Host::r));
        let (want, noise) = fd_grad(&ctx, &z.r(), &gy.r(), |z| {
            reference::dlr_loss(z, &ry, rt.as_ref())
        })?;
        let mut mag = RefTensor::full(&[n, k], 0.0);
        for i in 0..n {
            let ti = t.as_ref().map(|t| t.data[i] as usize);
            let g = dlr_mags(&z.data[i * k..(i + 1) * k], y.data[i] as usize, ti).1;
            for j in 0..k {
                mag.data[i * k + j] = f64::from(gy.data[i]).abs() * g[j];
            }
        }
        let tt = t.as_ref().map(|t| t.up(b, &ctx)).transpose()?;
        let got = b
            .dlr_loss_backward(
                &z.up(b, &ctx)?,
                &y.up(b, &ctx)?,
                tt.as_ref(),
                &gy.up(b, &ctx)?,
            )
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol.plus_atol(noise))?;
    }
    // Untargeted, by hand: z = [0, 3, 3, 1, 2], y = 0, gy = 2. π = (1, 2, 4, 3, 0): of the tied
    // classes 1 and 2, class 1 ranks first, so it is both π1 and the largest other logit.
    // u = z_0 − z_1 = −3, D = z_1 − z_4 = 1; ∂(−u/D) = −∂u/D + u·∂D/D²:
    //   class 0: −1; class 1: +1 + u = −2; class 4: −u = 3  → times gy: [−2, −4, 0, 0, 6].
    let ctx = format!("[{name}] {op} with tied logits (untargeted)");
    let z = Host::new(&[1, 5], vec![0.0, 3.0, 3.0, 1.0, 2.0]);
    let y = Host::new(&[1], vec![0.0]);
    let gy = Host::new(&[1], vec![2.0]);
    let want = RefTensor::new(&[1, 5], vec![-2.0, -4.0, 0.0, 0.0, 6.0]).reference(&ctx)?;
    let got = b
        .dlr_loss_backward(&z.up(b, &ctx)?, &y.up(b, &ctx)?, None, &gy.up(b, &ctx)?)
        .backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;
    let loss = b
        .dlr_loss(&z.up(b, &ctx)?, &y.up(b, &ctx)?, None)
        .backend(&ctx, "dlr_loss")?;
    expect_close(b, &ctx, &loss, &RefTensor::full(&[1], 3.0), None, tol)?;
    // Targeted, by hand: z = [3, 2, 1, 0.5, 0.5, −1], y = 5, t = 1. π = (0, 1, 2, 3, 4, 5): of
    // the tied classes 3 and 4, class 3 is π4 and class 4 gets no gradient.
    // u = z_5 − z_1 = −3, D = 3 − (1 + 0.5)/2 = 2.25.
    let ctx = format!("[{name}] {op} with tied logits (targeted)");
    let z = Host::new(&[1, 6], vec![3.0, 2.0, 1.0, 0.5, 0.5, -1.0]);
    let (y, t) = (Host::new(&[1], vec![5.0]), Host::new(&[1], vec![1.0]));
    let gy = Host::new(&[1], vec![1.0]);
    let (u, d) = (-3.0f64, 2.25f64);
    let want = RefTensor::new(
        &[1, 6],
        vec![
            u / (d * d),
            1.0 / d,
            -0.5 * u / (d * d),
            -0.5 * u / (d * d),
            0.0,
            -1.0 / d,
        ],
    )
    .reference(&ctx)?;
    let tt = t.up(b, &ctx)?;
    let got = b
        .dlr_loss_backward(
            &z.up(b, &ctx)?,
            &y.up(b, &ctx)?,
            Some(&tt),
            &gy.up(b, &ctx)?,
        )
        .backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    let gy2 = Host::new(&[2], vec![1.0; 2]).up(b, &ctx)?;
    dlr_errors(b, op, |z, y, t| b.dlr_loss_backward(z, y, t, &gy2))?;
    let z = Host::new(&[2, 4], vec![0.5; 8]).up(b, &ctx)?;
    let y = Host::new(&[2], vec![0.0, 3.0]).up(b, &ctx)?;
    let gy3 = Host::new(&[3], vec![1.0; 3]).up(b, &ctx)?;
    expect_err(&ctx, op, true, "gy [3] for 2 rows", || {
        b.dlr_loss_backward(&z, &y, None, &gy3)
    })
}

// ---- per-example ops ------------------------------------------------------------------------

/// Batch shapes for the per-example ops: images, a batch of 1, a batch of vectors, one scalar
/// per example (`[n]`), odd sizes, and an empty row.
const ROW_CASES: [&[usize]; 6] = [
    &[5, 3, 4, 4],
    &[1, 1, 7, 9],
    &[6, 13],
    &[9],
    &[3, 1, 28, 28],
    &[4, 0],
];

/// `mul_rows` against [`reference::mul_rows`] (one rounding: `mag = |want|`), with zero,
/// negative and non-finite scales, and its shape errors.
pub fn check_mul_rows<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "mul_rows";
    let mut rng = SplitMix64::new(0x3A);
    for shape in ROW_CASES {
        let ctx = format!("[{name}] {op} ({shape:?})");
        let n = shape[0];
        let x = Host::random(&mut rng, shape, -2.0, 2.0).sprinkle(&mut rng, 0.05, 0.0);
        let s = Host::random(&mut rng, &[n], -3.0, 3.0).sprinkle(&mut rng, 0.2, 0.0);
        let want = reference::mul_rows(&x.r(), &s.r()).reference(&ctx)?;
        let got = b
            .mul_rows(&x.up(b, &ctx)?, &s.up(b, &ctx)?)
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, None, tol)?;
    }
    let ctx = format!("[{name}] {op} with non-finite values");
    let x = Host::new(&[3, 2], vec![1.0, -2.0, f32::INFINITY, 0.5, 3.0, f32::NAN]);
    let s = Host::new(&[3], vec![f32::INFINITY, 2.0, -1.0]);
    let want = reference::mul_rows(&x.r(), &s.r()).reference(&ctx)?;
    let got = b
        .mul_rows(&x.up(b, &ctx)?, &s.up(b, &ctx)?)
        .backend(&ctx, op)?;
    expect_close(b, &ctx, &got, &want, None, tol)?;

    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![0.5; s.iter().product()]).up(b, &ctx);
    let (x, s3, s21, scalar) = (t(&[2, 3])?, t(&[3])?, t(&[2, 1])?, t(&[])?);
    expect_err(&ctx, op, true, "3 scales for 2 rows", || {
        b.mul_rows(&x, &s3)
    })?;
    expect_err(&ctx, op, true, "scales [2, 1]", || b.mul_rows(&x, &s21))?;
    expect_err(&ctx, op, true, "a scalar x", || b.mul_rows(&scalar, &s3))
}

/// `select_rows` bit for bit against [`reference::select_rows`] (NaN and infinities in the rows
/// are copied; `−0` in the mask counts as zero), and its shape errors.
pub fn check_select_rows<B: Backend>(b: &B, _tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "select_rows";
    let mut rng = SplitMix64::new(0x5E);
    for shape in ROW_CASES {
        let ctx = format!("[{name}] {op} ({shape:?})");
        let n = shape[0];
        let a = Host::random(&mut rng, shape, -2.0, 2.0)
            .sprinkle(&mut rng, 0.05, f32::NAN)
            .sprinkle(&mut rng, 0.05, f32::NEG_INFINITY);
        let c = Host::random(&mut rng, shape, -2.0, 2.0).sprinkle(&mut rng, 0.05, -0.0);
        let choices = [0.0f32, 1.0, -0.0, -2.5, 1e-30];
        let m = Host::new(&[n], (0..n).map(|_| choices[rng.below(5)]).collect());
        let want = reference::select_rows(&m.r(), &a.r(), &c.r()).reference(&ctx)?;
        // Exact: the selected rows' own bits (the reference's f64 values narrow back exactly).
        let d = a.data.len().checked_div(n).unwrap_or(0);
        let bits: Vec<f32> = (0..a.data.len())
            .map(|f| {
                if m.data[f / d.max(1)] != 0.0 {
                    a.data[f]
                } else {
                    c.data[f]
                }
            })
            .collect();
        if want
            .to_f32()
            .iter()
            .zip(&bits)
            .any(|(w, v)| !same_bits(*w, *v))
        {
            return Err(format!(
                "{ctx}: suite bug: reference and host selection differ"
            ));
        }
        let got = b
            .select_rows(&m.up(b, &ctx)?, &a.up(b, &ctx)?, &c.up(b, &ctx)?)
            .backend(&ctx, op)?;
        expect_bits(b, &ctx, &got, shape, &bits)?;
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![0.5; s.iter().product()]).up(b, &ctx);
    let (a, a32, m2, m3, scalar) = (t(&[2, 3])?, t(&[3, 2])?, t(&[2])?, t(&[3])?, t(&[])?);
    expect_err(&ctx, op, true, "a [2, 3] and b [3, 2]", || {
        b.select_rows(&m2, &a, &a32)
    })?;
    expect_err(&ctx, op, true, "3 mask values for 2 rows", || {
        b.select_rows(&m3, &a, &a)
    })?;
    expect_err(&ctx, op, true, "scalar rows", || {
        b.select_rows(&m2, &scalar, &scalar)
    })
}

/// `(n, k)` of the [`Backend::restart_merge`] cases: one class, batch 1, MNIST's and a large
/// batch, and an empty batch.
const MERGE_CASES: [(usize, usize); 6] = [(1, 1), (1, 4), (5, 3), (9, 10), (300, 10), (0, 3)];

/// `restart_merge` bit for bit against [`reference::restart_merge`] (the op only compares,
/// selects and negates): logits drawn from a few values so that rows tie for their maximum, with
/// NaN and infinities; losses from a few values so that the candidate ties with the best, and
/// NaN; labels that the prediction often hits; with and without a best so far, untargeted and
/// targeted; a hand-made case of every rule; and its shape errors.
pub fn check_restart_merge<B: Backend>(b: &B, _tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "restart_merge";
    let mut rng = SplitMix64::new(0x8E57);
    let logit_values = [
        -1.0f32,
        0.0,
        0.5,
        2.0,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
    ];
    let loss_values = [0.25f32, 1.0, 2.0, -0.0, 0.0, f32::INFINITY, f32::NAN];
    let run = |ctx: &str,
               best: Option<&Host>,
               z: &Host,
               loss: &Host,
               y: &Host,
               targeted: bool|
     -> CheckResult {
        let n = loss.data.len();
        let (want_take, want_best) = reference::restart_merge(
            best.map(|h| h.r()).as_ref(),
            &z.r(),
            &loss.r(),
            &y.r(),
            targeted,
        )
        .reference(ctx)?;
        let best_t = best.map(|h| h.up(b, ctx)).transpose()?;
        let (take, merged) = b
            .restart_merge(
                best_t.as_ref(),
                &z.up(b, ctx)?,
                &loss.up(b, ctx)?,
                &y.up(b, ctx)?,
                targeted,
            )
            .backend(ctx, op)?;
        expect_bits(b, &format!("{ctx}: take"), &take, &[n], &want_take.to_f32())?;
        expect_bits(
            b,
            &format!("{ctx}: best"),
            &merged,
            &[3, n],
            &want_best.to_f32(),
        )
    };
    for (n, k) in MERGE_CASES {
        let pick = |rng: &mut SplitMix64, vals: &[f32]| vals[rng.below(vals.len())];
        // Mostly finite logits from four values (ties), now and then a non-finite one.
        let z = Host::new(
            &[n, k],
            (0..n * k)
                .map(|_| {
                    let i = if rng.chance(0.15) {
                        rng.below(7)
                    } else {
                        rng.below(4)
                    };
                    logit_values[i]
                })
                .collect(),
        );
        let loss = Host::new(&[n], (0..n).map(|_| pick(&mut rng, &loss_values)).collect());
        // Labels: the row's prediction half of the time (successes either way).
        let preds = reference::restart_merge(None, &z.r(), &loss.r(), &loss.r(), false)
            .reference("restart_merge predictions")?
            .1;
        let y = Host::new(
            &[n],
            (0..n)
                .map(|i| {
                    if rng.chance(0.5) {
                        preds.data[n + i] as f32
                    } else {
                        rng.below(k) as f32
                    }
                })
                .collect(),
        );
        let best = Host::new(
            &[3, n],
            (0..3 * n)
                .map(|f| match f / n.max(1) {
                    0 => {
                        let v = pick(&mut rng, &loss_values);
                        if rng.chance(0.5) {
                            -v
                        } else {
                            v
                        }
                    }
                    1 => rng.below(k) as f32,
                    _ => {
                        if rng.chance(0.5) {
                            1.0
                        } else {
                            0.0
                        }
                    }
                })
                .collect(),
        );
        for targeted in [false, true] {
            for with_best in [false, true] {
                let ctx = format!(
                    "[{name}] {op} (n {n}, k {k}, targeted {targeted}, best {})",
                    if with_best { "given" } else { "none" }
                );
                run(&ctx, with_best.then_some(&best), &z, &loss, &y, targeted)?;
            }
        }
    }
    // Every rule once, untargeted (labels 1, so success means predicting 0; the prediction is
    // the first maximum):
    // 0: the best succeeded, the candidate has a higher loss but does not: keep;
    // 1: neither succeeds, the candidate's loss is higher: take;
    // 2: the candidate succeeds with a lower loss: take;
    // 3: a tie (equal loss, both fail): keep;
    // 4: a tie in the logits: the first maximum (class 0 = the label) is predicted, a success
    //    where the best failed: take;
    // 5: the candidate's loss is NaN, both fail: keep.
    let ctx = format!("[{name}] {op} (each rule by hand)");
    let z = Host::new(
        &[6, 2],
        vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 0.0, 1.0],
    );
    let loss = Host::new(&[6], vec![5.0, 2.0, 0.1, 2.0, 0.5, f32::NAN]);
    let y = Host::new(&[6], vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    let best = Host::new(
        &[3, 6],
        vec![
            1.0, 1.0, 5.0, 2.0, 9.0, 1.0, // objective
            1.0, 1.0, 0.0, 1.0, 1.0, 1.0, // prediction
            1.0, 0.0, 0.0, 0.0, 0.0, 0.0, // success
        ],
    );
    let y_un = Host::new(&[6], vec![1.0; 6]);
    let (want_take, _) =
        reference::restart_merge(Some(&best.r()), &z.r(), &loss.r(), &y_un.r(), false)
            .reference(&ctx)?;
    if want_take.data != [0.0, 1.0, 1.0, 0.0, 1.0, 0.0] {
        return Err(format!(
            "{ctx}: suite bug: the reference takes {:?}",
            want_take.data
        ));
    }
    run(&ctx, Some(&best), &z, &loss, &y_un, false)?;
    run(
        &format!("{ctx}, targeted"),
        Some(&best),
        &z,
        &loss,
        &y,
        true,
    )?;

    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![0.0; s.iter().product()]).up(b, &ctx);
    let (z23, z20, v2, v3, b32, b22) = (
        t(&[2, 3])?,
        t(&[2, 0])?,
        t(&[2])?,
        t(&[3])?,
        t(&[3, 2])?,
        t(&[2, 2])?,
    );
    expect_err(&ctx, op, true, "logits with no class", || {
        b.restart_merge(None, &z20, &v2, &v2, false)
    })?;
    expect_err(&ctx, op, true, "3 losses for 2 rows", || {
        b.restart_merge(None, &z23, &v3, &v2, false)
    })?;
    expect_err(&ctx, op, true, "3 labels for 2 rows", || {
        b.restart_merge(None, &z23, &v2, &v3, false)
    })?;
    expect_err(&ctx, op, true, "best [2, 2]", || {
        b.restart_merge(Some(&b22), &z23, &v2, &v2, true)
    })?;
    expect_err(&ctx, op, true, "best [3]", || {
        b.restart_merge(Some(&v3), &z23, &v2, &v2, true)
    })?;
    b.restart_merge(Some(&b32), &z23, &v2, &v2, true)
        .map(|_| ())
        .backend(&ctx, op)
}

// ---- batch normalisation --------------------------------------------------------------------

/// `(x shape, value range, eps)` for batch norm: `[n, c]` and `[n, c, h, w]`, batch 1 with a
/// spatial extent, odd channel counts, and inputs off-centre (as after a ReLU).
const BN_CASES: [(&[usize], f32, f32, f32); 7] = [
    (&[5, 3], -1.0, 1.0, 1e-5),
    (&[4, 3, 5, 7], -1.0, 1.0, 1e-5),
    (&[1, 2, 3, 3], -1.0, 1.0, 1e-3),
    (&[2, 17, 4, 4], 0.5, 1.5, 1e-5),
    (&[50, 10], -2.0, 2.0, 1e-5),
    (&[3, 4, 1, 1], 0.0, 1.0, 1e-5),
    // Large enough (73,728 elements) for the work to be split over threads.
    (&[16, 8, 24, 24], -1.0, 1.0, 1e-5),
];

/// Per-element channel index of a batch-norm input.
fn channel_of(shape: &[usize], flat: usize) -> usize {
    let inner: usize = shape[2..].iter().product();
    (flat / inner) % shape[1]
}

/// Random `gamma` in `[0.5, 1.5]` (either sign) and `beta` in `[-1, 1]`, shape `[c]`.
fn bn_affine(rng: &mut SplitMix64, c: usize) -> (Host, Host) {
    (
        Host::random_magnitude(rng, &[c], 0.5, 1.5),
        Host::random(rng, &[c], -1.0, 1.0),
    )
}

/// `mag` of batch-norm outputs: `(|x| + |mean|)/sqrt(var + eps)·|gamma| + |beta|`.
fn bn_mag(
    x: &RefTensor,
    gamma: &RefTensor,
    beta: &RefTensor,
    mean: &RefTensor,
    var: &RefTensor,
    eps: f64,
) -> RefTensor {
    let mut m = x.clone();
    for i in 0..x.numel() {
        let c = channel_of(&x.shape, i);
        m.data[i] = (x.data[i].abs() + mean.data[c].abs()) / (var.data[c] + eps).sqrt()
            * gamma.data[c].abs()
            + beta.data[c].abs();
    }
    m
}

/// `batch_norm_train` (output, batch mean, biased batch variance) against
/// [`reference::batch_norm_train`].
pub fn check_batch_norm_train<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "batch_norm_train";
    let mut rng = SplitMix64::new(0xB7);
    for (shape, lo, hi, eps) in BN_CASES {
        let ctx = format!("[{name}] {op} (x {shape:?} in [{lo}, {hi}], eps {eps})");
        let x = Host::random(&mut rng, shape, lo, hi);
        let c = shape[1];
        let (gamma, beta) = bn_affine(&mut rng, c);
        let (y, mean, var) = reference::batch_norm_train(&x.r(), &gamma.r(), &beta.r(), eps.into())
            .reference(&ctx)?;
        let (gy, stats) = b
            .batch_norm_train(
                &x.up(b, &ctx)?,
                &gamma.up(b, &ctx)?,
                &beta.up(b, &ctx)?,
                eps,
            )
            .backend(&ctx, op)?;
        let ymag = bn_mag(&x.r(), &gamma.r(), &beta.r(), &mean, &var, eps.into());
        expect_close(b, &format!("{ctx}, output"), &gy, &y, Some(&ymag), tol)?;
        // The mean sums |x|; the variance sums (|x| + |mean|)², both over the count.
        let cnt = (x.data.len() / c) as f64;
        let mut mmag = RefTensor::full(&[c], 0.0);
        let mut vmag = RefTensor::full(&[c], 0.0);
        for i in 0..x.data.len() {
            let ch = channel_of(shape, i);
            let v = f64::from(x.data[i]).abs();
            mmag.data[ch] += v / cnt;
            vmag.data[ch] += (v + mean.data[ch].abs()).powi(2) / cnt;
        }
        expect_close(
            b,
            &format!("{ctx}, mean"),
            &stats.mean,
            &mean,
            Some(&mmag),
            tol,
        )?;
        expect_close(
            b,
            &format!("{ctx}, var"),
            &stats.var,
            &var,
            Some(&vmag),
            tol,
        )?;
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, x3, x1, g3, g4) = (
        t(&[2, 3, 2, 2])?,
        t(&[2, 3, 4])?,
        t(&[3])?,
        t(&[3])?,
        t(&[4])?,
    );
    expect_err(&ctx, op, true, "gamma [4] for 3 channels", || {
        b.batch_norm_train(&x, &g4, &g3, 1e-5)
    })?;
    expect_err(&ctx, op, true, "beta [4] for 3 channels", || {
        b.batch_norm_train(&x, &g3, &g4, 1e-5)
    })?;
    expect_err(&ctx, op, true, "a 3-D input", || {
        b.batch_norm_train(&x3, &g3, &g3, 1e-5)
    })?;
    expect_err(&ctx, op, true, "a 1-D input", || {
        b.batch_norm_train(&x1, &g3, &g3, 1e-5)
    })
}

/// `batch_norm_eval` with given statistics against [`reference::batch_norm_eval`].
pub fn check_batch_norm_eval<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "batch_norm_eval";
    let mut rng = SplitMix64::new(0xBE);
    for (shape, lo, hi, eps) in BN_CASES {
        let ctx = format!("[{name}] {op} (x {shape:?} in [{lo}, {hi}], eps {eps})");
        let x = Host::random(&mut rng, shape, lo, hi);
        let c = shape[1];
        let (gamma, beta) = bn_affine(&mut rng, c);
        let mean = Host::random(&mut rng, &[c], -0.5, 0.5);
        let var = Host::random(&mut rng, &[c], 0.05, 2.0).sprinkle(&mut rng, 0.2, 0.0);
        let (rx, rg, rb, rm, rv) = (x.r(), gamma.r(), beta.r(), mean.r(), var.r());
        let want =
            reference::batch_norm_eval(&rx, &rg, &rb, &rm, &rv, eps.into()).reference(&ctx)?;
        let mag = bn_mag(&rx, &rg, &rb, &rm, &rv, eps.into());
        let got = b
            .batch_norm_eval(
                &x.up(b, &ctx)?,
                &gamma.up(b, &ctx)?,
                &beta.up(b, &ctx)?,
                &mean.up(b, &ctx)?,
                &var.up(b, &ctx)?,
                eps,
            )
            .backend(&ctx, op)?;
        expect_close(b, &ctx, &got, &want, Some(&mag), tol)?;
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, x3, g3, g4) = (t(&[2, 3, 2, 2])?, t(&[2, 3, 4])?, t(&[3])?, t(&[4])?);
    expect_err(&ctx, op, true, "mean [4] for 3 channels", || {
        b.batch_norm_eval(&x, &g3, &g3, &g4, &g3, 1e-5)
    })?;
    expect_err(&ctx, op, true, "var [4] for 3 channels", || {
        b.batch_norm_eval(&x, &g3, &g3, &g3, &g4, 1e-5)
    })?;
    expect_err(&ctx, op, true, "gamma [4] for 3 channels", || {
        b.batch_norm_eval(&x, &g4, &g3, &g3, &g3, 1e-5)
    })?;
    expect_err(&ctx, op, true, "a 3-D input", || {
        b.batch_norm_eval(&x3, &g3, &g3, &g3, &g3, 1e-5)
    })
}

/// `conv2d_add` gives bit for bit the backend's own `conv2d` then `add` (whose values the
/// checks above hold against the reference), with and without bias, on shapes a backend may fuse
/// (3×3, stride 1, padding 1, 32 input channels, odd sizes) and shapes it may not (stride 2,
/// 5×5); a residual of another shape is refused.
pub fn check_conv2d_add<B: Backend>(b: &B, _tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "conv2d_add";
    let mut rng = SplitMix64::new(0xAD);
    let cases: [(&[usize], &[usize], usize, usize); 4] = [
        (&[2, 32, 7, 6], &[16, 32, 3, 3], 1, 1),
        (&[3, 40, 4, 4], &[24, 40, 3, 3], 1, 1),
        (&[2, 8, 9, 9], &[16, 8, 3, 3], 2, 1),
        (&[2, 3, 8, 8], &[4, 3, 5, 5], 1, 2),
    ];
    for (xs, ws, stride, pad) in cases {
        for with_bias in [false, true] {
            let ctx = format!("[{name}] {op} (x {xs:?}, w {ws:?}, bias {with_bias})");
            let x = Host::random(&mut rng, xs, -1.0, 1.0).up(b, &ctx)?;
            let w = Host::random(&mut rng, ws, -0.5, 0.5).up(b, &ctx)?;
            let bias = Host::random(&mut rng, &[ws[0]], -0.5, 0.5).up(b, &ctx)?;
            let bias = with_bias.then_some(&bias);
            let p = p(stride, pad);
            let y = b.conv2d(&x, &w, bias, p).backend(&ctx, "conv2d")?;
            let shape = y.dims().to_vec();
            let r = Host::random(&mut rng, &shape, -1.0, 1.0).up(b, &ctx)?;
            let want = b.add(&y, &r).backend(&ctx, "add")?;
            let got = b.conv2d_add(&x, &w, bias, p, &r).backend(&ctx, op)?;
            let want = b.to_vec(&want).backend(&ctx, "to_vec")?;
            expect_bits(b, &ctx, &got, &shape, &want)?;
            let mut wrong = shape.clone();
            wrong[1] += 1;
            let r2 = Host::random(&mut rng, &wrong, -1.0, 1.0).up(b, &ctx)?;
            expect_err(&ctx, op, true, "a residual of another shape", || {
                b.conv2d_add(&x, &w, bias, p, &r2)
            })?;
        }
    }
    Ok(())
}

/// The fused `batch_norm_act_train`, `batch_norm_act_eval` and `batch_norm_act_train_backward`
/// give bit for bit what the backend's own unfused ops give in sequence (batch norm, then
/// `relu`/`leaky_relu`; for the gradient, `relu_backward`/`leaky_relu_backward` at the batch
/// norm's output, then `batch_norm_train_backward`), for ReLU and leaky ReLU on every batch-norm
/// case; the unfused ops are checked against the reference by the checks above, so this pins
/// the fused ones to them exactly (a fused path is the same arithmetic per element, in the same
/// order). A negative or NaN leaky slope is refused (the gradient is read from the output).
pub fn check_batch_norm_act<B: Backend>(b: &B, _tol: Tol) -> CheckResult {
    let name = b.name();
    let mut rng = SplitMix64::new(0xBA);
    let acts = [Activation::Relu, Activation::LeakyRelu(0.1)];
    for (shape, lo, hi, eps) in BN_CASES {
        for act in acts {
            let ctx = format!("[{name}] batch_norm_act ({act:?}, x {shape:?}, eps {eps})");
            let c = shape[1];
            let x = Host::random(&mut rng, shape, lo, hi).up(b, &ctx)?;
            let (gamma, beta) = bn_affine(&mut rng, c);
            let (g, bt) = (gamma.up(b, &ctx)?, beta.up(b, &ctx)?);
            let gy = Host::random(&mut rng, shape, -1.0, 1.0).up(b, &ctx)?;
            let host = |t: &B::Tensor, what: &str| b.to_vec(t).backend(&ctx, what);

            // Training mode: output and statistics.
            let (z, st) = b
                .batch_norm_train(&x, &g, &bt, eps)
                .backend(&ctx, "train")?;
            let want = activate(b, &z, act).backend(&ctx, "activation")?;
            let (y, fst) = b
                .batch_norm_act_train(&x, &g, &bt, eps, act)
                .backend(&ctx, "batch_norm_act_train")?;
            expect_bits(
                b,
                &format!("{ctx} train output"),
                &y,
                shape,
                &host(&want, "y")?,
            )?;
            expect_bits(
                b,
                &format!("{ctx} mean"),
                &fst.mean,
                &[c],
                &host(&st.mean, "m")?,
            )?;
            expect_bits(
                b,
                &format!("{ctx} var"),
                &fst.var,
                &[c],
                &host(&st.var, "v")?,
            )?;

            // Its gradients: the activation's (at the batch norm's output z), then the norm's.
            let gz = activation_grad_from_output(b, &z, &gy, act).backend(&ctx, "act grad")?;
            let want = b
                .batch_norm_train_backward(&x, &g, &st, &gz, eps)
                .backend(&ctx, "batch_norm_train_backward")?;
            let got = b
                .batch_norm_act_train_backward(&x, &g, &fst, &y, &gy, eps, act)
                .backend(&ctx, "batch_norm_act_train_backward")?;
            expect_bits(
                b,
                &format!("{ctx} dx"),
                &got.x,
                shape,
                &host(&want.x, "dx")?,
            )?;
            let dg = host(&want.gamma, "dgamma")?;
            expect_bits(b, &format!("{ctx} dgamma"), &got.gamma, &[c], &dg)?;
            let db = host(&want.beta, "dbeta")?;
            expect_bits(b, &format!("{ctx} dbeta"), &got.beta, &[c], &db)?;

            // Evaluation mode, with the batch's statistics as running ones.
            let z = b
                .batch_norm_eval(&x, &g, &bt, &st.mean, &st.var, eps)
                .backend(&ctx, "eval")?;
            let want = activate(b, &z, act).backend(&ctx, "activation")?;
            let y = b
                .batch_norm_act_eval(&x, &g, &bt, &st.mean, &st.var, eps, act)
                .backend(&ctx, "batch_norm_act_eval")?;
            expect_bits(
                b,
                &format!("{ctx} eval output"),
                &y,
                shape,
                &host(&want, "y")?,
            )?;
        }
    }
    let ctx = format!("[{name}] batch_norm_act");
    let x = Host::random(&mut rng, &[4, 3, 2, 2], -1.0, 1.0).up(b, &ctx)?;
    let g = Host::random(&mut rng, &[3], 0.5, 1.5).up(b, &ctx)?;
    for slope in [-0.1, f32::NAN] {
        let act = Activation::LeakyRelu(slope);
        let what = format!("a leaky slope of {slope}");
        expect_err(&ctx, "batch_norm_act_train", true, &what, || {
            b.batch_norm_act_train(&x, &g, &g, 1e-5, act)
        })?;
        expect_err(&ctx, "batch_norm_act_eval", true, &what, || {
            b.batch_norm_act_eval(&x, &g, &g, &g, &g, 1e-5, act)
        })?;
    }
    Ok(())
}

/// `batch_norm_train_backward` (gradients in `x`, `gamma`, `beta`, given the statistics the
/// backend's own forward returned) against finite differences of
/// [`reference::batch_norm_train`]. With `x̂ = (x − mean)/σ`, `σ = sqrt(var + eps)`:
/// `mag` of `dx` is `|gamma|/σ·(|gy| + mean|gy| + |x̂|·mean|gy·x̂|)`, of `dgamma` `Σ|gy·x̂|`,
/// of `dbeta` `Σ|gy|` (per channel).
pub fn check_batch_norm_train_backward<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "batch_norm_train_backward";
    let mut rng = SplitMix64::new(0xBB);
    for (shape, lo, hi, eps) in BN_CASES {
        let ctx =
            format!("[{name}] {op} (x {shape:?} in [{lo}, {hi}], eps {eps}) vs finite differences");
        let x = Host::random(&mut rng, shape, lo, hi);
        let c = shape[1];
        let (gamma, beta) = bn_affine(&mut rng, c);
        let gy = Host::random(&mut rng, shape, -1.0, 1.0);
        let (rx, rg, rb, rgy) = (x.r(), gamma.r(), beta.r(), gy.r());
        let e = f64::from(eps);
        // Magnitudes from the reference statistics.
        let ones = RefTensor::full(&[c], 1.0);
        let zeros = RefTensor::full(&[c], 0.0);
        let (xhat, _, var) = reference::batch_norm_train(&rx, &ones, &zeros, e).reference(&ctx)?;
        let cnt = (rx.numel() / c) as f64;
        let (mut gy_abs, mut gyx_abs) = (vec![0.0; c], vec![0.0; c]);
        let (mut gy_sum, mut gyx_sum) = (vec![0.0; c], vec![0.0; c]);
        for i in 0..rx.numel() {
            let ch = channel_of(shape, i);
            gy_abs[ch] += rgy.data[i].abs();
            gyx_abs[ch] += (rgy.data[i] * xhat.data[i]).abs();
            gy_sum[ch] += rgy.data[i];
            gyx_sum[ch] += rgy.data[i] * xhat.data[i];
        }
        // Finite differences cost one reference forward per element; past 4,096 elements (the
        // case large enough to be split over threads) the expected gradients are the closed
        // form in f64 instead: dβ = Σ gy, dγ = Σ gy·x̂, dx = γ/σ·(gy − mean gy − x̂·mean gy·x̂).
        let ((dx, nx), (dg, ng), (db, nb)) = if rx.numel() <= 4096 {
            (
                fd_grad(&ctx, &rx, &rgy, |x| {
                    Ok(reference::batch_norm_train(x, &rg, &rb, e)?.0)
                })?,
                fd_grad(&ctx, &rg, &rgy, |g| {
                    Ok(reference::batch_norm_train(&rx, g, &rb, e)?.0)
                })?,
                fd_grad(&ctx, &rb, &rgy, |bt| {
                    Ok(reference::batch_norm_train(&rx, &rg, bt, e)?.0)
                })?,
            )
        } else {
            let mut dx = rx.clone();
            for i in 0..rx.numel() {
                let ch = channel_of(shape, i);
                dx.data[i] = rg.data[ch] / (var.data[ch] + e).sqrt()
                    * (rgy.data[i] - gy_sum[ch] / cnt - xhat.data[i] * gyx_sum[ch] / cnt);
            }
            let per_channel = |data: Vec<f64>| RefTensor {
                shape: vec![c],
                data,
            };
            (
                (dx, 0.0),
                (per_channel(gyx_sum.clone()), 0.0),
                (per_channel(gy_sum.clone()), 0.0),
            )
        };
        let mut mx = rx.clone();
        for i in 0..rx.numel() {
            let ch = channel_of(shape, i);
            mx.data[i] = rg.data[ch].abs() / (var.data[ch] + e).sqrt()
                * (rgy.data[i].abs() + gy_abs[ch] / cnt + xhat.data[i].abs() * gyx_abs[ch] / cnt);
        }
        let mg = RefTensor {
            shape: vec![c],
            data: gyx_abs,
        };
        let mb = RefTensor {
            shape: vec![c],
            data: gy_abs,
        };

        let xt = x.up(b, &ctx)?;
        let gt = gamma.up(b, &ctx)?;
        let (_, stats) = b
            .batch_norm_train(&xt, &gt, &beta.up(b, &ctx)?, eps)
            .backend(&ctx, "batch_norm_train")?;
        let grads = b
            .batch_norm_train_backward(&xt, &gt, &stats, &gy.up(b, &ctx)?, eps)
            .backend(&ctx, op)?;
        expect_close(
            b,
            &format!("{ctx}, dx"),
            &grads.x,
            &dx,
            Some(&mx),
            tol.plus_atol(nx),
        )?;
        expect_close(
            b,
            &format!("{ctx}, dgamma"),
            &grads.gamma,
            &dg,
            Some(&mg),
            tol.plus_atol(ng),
        )?;
        expect_close(
            b,
            &format!("{ctx}, dbeta"),
            &grads.beta,
            &db,
            Some(&mb),
            tol.plus_atol(nb),
        )?;
    }
    let ctx = format!("[{name}] {op} errors");
    let t = |s: &[usize]| Host::new(s, vec![1.0; s.iter().product()]).up(b, &ctx);
    let (x, g3, g4, gy_bad) = (t(&[2, 3, 2, 2])?, t(&[3])?, t(&[4])?, t(&[2, 3, 2, 3])?);
    let stats = BatchNormStats {
        mean: g3.clone(),
        var: g3.clone(),
    };
    let bad_stats = BatchNormStats {
        mean: g4.clone(),
        var: g3.clone(),
    };
    expect_err(&ctx, op, true, "gy [2, 3, 2, 3] for x [2, 3, 2, 2]", || {
        b.batch_norm_train_backward(&x, &g3, &stats, &gy_bad, 1e-5)
    })?;
    expect_err(&ctx, op, true, "gamma [4] for 3 channels", || {
        b.batch_norm_train_backward(&x, &g4, &stats, &x, 1e-5)
    })?;
    expect_err(&ctx, op, true, "a mean [4] for 3 channels", || {
        b.batch_norm_train_backward(&x, &g3, &bad_stats, &x, 1e-5)
    })
}

// ---- adversarial steps ----------------------------------------------------------------------

/// Shapes for the attack steps: MNIST-like, CIFAR-like, flat, and an odd size.
const ATTACK_SHAPES: [&[usize]; 4] = [&[3, 1, 5, 5], &[2, 3, 7, 7], &[1, 10], &[4, 1037]];

/// `x0` in `[0, 1]` with some pixels exactly 0 or 1 (as in MNIST), and `x` a random point of the
/// box `[x0 − spread, x0 + spread] ∩ [0, 1]`.
fn attack_inputs(rng: &mut SplitMix64, shape: &[usize], spread: f32) -> (Host, Host) {
    let x0 = Host::random(rng, shape, 0.0, 1.0)
        .sprinkle(rng, 0.15, 0.0)
        .sprinkle(rng, 0.15, 1.0);
    let mut x = x0.clone();
    for v in &mut x.data {
        *v = (*v + rng.uniform(-spread, spread)).clamp(0.0, 1.0);
    }
    (x0, x)
}

/// `mag` of an attack step: `|x| + |x0| + alpha + eps` (every result is a few roundings of those).
fn attack_mag(x: &Host, x0: &Host, alpha: f32, eps: f32) -> RefTensor {
    let mut m = x.r();
    for i in 0..m.numel() {
        m.data[i] =
            m.data[i].abs() + f64::from(x0.data[i]).abs() + f64::from(alpha) + f64::from(eps);
    }
    m
}

/// The error cases shared by the attack steps: `x0` (or `g`, when the op takes one) of another
/// shape that does not broadcast.
fn attack_errors<B: Backend>(
    b: &B,
    op: &'static str,
    takes_g: bool,
    f: impl Fn(&B::Tensor, &B::Tensor, &B::Tensor) -> crate::Result<B::Tensor>,
) -> CheckResult {
    let ctx = format!("[{}] {op} errors", b.name());
    let t = |s: &[usize]| Host::new(s, vec![0.5; s.iter().product()]).up(b, &ctx);
    let (x, other) = (t(&[2, 3])?, t(&[4, 5])?);
    expect_err(&ctx, op, false, "x0 [4, 5] for x [2, 3]", || {
        f(&x, &other, &x)
    })?;
    expect_err(&ctx, op, false, "x [4, 5] for x0 [2, 3]", || {
        f(&other, &x, &x)
    })?;
    if takes_g {
        expect_err(&ctx, op, false, "g [4, 5] for x [2, 3]", || {
            f(&x, &x, &other)
        })?;
    }
    Ok(())
}

/// `pgd_step_linf` against [`reference::pgd_step_linf`], with zero gradient entries (sign 0) and
/// pixels at the box's edges.
pub fn check_pgd_step_linf<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "pgd_step_linf";
    let mut rng = SplitMix64::new(0x961);
    for shape in ATTACK_SHAPES {
        for (alpha, eps) in [
            (0.01f32, 0.3f32),
            (0.1, 0.03),
            (2.0 / 255.0, 8.0 / 255.0),
            (0.5, 1.0),
        ] {
            let ctx = format!("[{name}] {op} (shape {shape:?}, alpha {alpha}, eps {eps})");
            let (x0, x) = attack_inputs(&mut rng, shape, eps);
            let g = Host::random(&mut rng, shape, -1.0, 1.0).sprinkle(&mut rng, 0.2, 0.0);
            let want = reference::pgd_step_linf(&x.r(), &x0.r(), &g.r(), alpha.into(), eps.into())
                .reference(&ctx)?;
            let got = b
                .pgd_step_linf(
                    &x.up(b, &ctx)?,
                    &x0.up(b, &ctx)?,
                    &g.up(b, &ctx)?,
                    alpha,
                    eps,
                )
                .backend(&ctx, op)?;
            expect_close(
                b,
                &ctx,
                &got,
                &want,
                Some(&attack_mag(&x, &x0, alpha, eps)),
                tol,
            )?;
        }
    }
    attack_errors(b, op, true, |x, x0, g| b.pgd_step_linf(x, x0, g, 0.1, 0.3))
}

/// `project_linf` against [`reference::project_linf`], from points up to `2·eps` away.
pub fn check_project_linf<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "project_linf";
    let mut rng = SplitMix64::new(0x962);
    for shape in ATTACK_SHAPES {
        for eps in [0.3f32, 8.0 / 255.0, 0.0] {
            let ctx = format!("[{name}] {op} (shape {shape:?}, eps {eps})");
            let (x0, x) = attack_inputs(&mut rng, shape, 2.0 * eps + 0.01);
            let want = reference::project_linf(&x.r(), &x0.r(), eps.into()).reference(&ctx)?;
            let got = b
                .project_linf(&x.up(b, &ctx)?, &x0.up(b, &ctx)?, eps)
                .backend(&ctx, op)?;
            expect_close(
                b,
                &ctx,
                &got,
                &want,
                Some(&attack_mag(&x, &x0, 0.0, eps)),
                tol,
            )?;
        }
    }
    attack_errors(b, op, false, |x, x0, _| b.project_linf(x, x0, 0.3))
}

/// `pgd_step_l2` against [`reference::pgd_step_l2`], with an all-zero gradient example (no
/// move), steps inside and beyond the ball.
pub fn check_pgd_step_l2<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "pgd_step_l2";
    let mut rng = SplitMix64::new(0x963);
    for shape in ATTACK_SHAPES {
        for (alpha, eps) in [(0.5f32, 2.0f32), (0.25, 0.1), (1.0, 1.0)] {
            let ctx = format!("[{name}] {op} (shape {shape:?}, alpha {alpha}, eps {eps})");
            let (x0, x) = attack_inputs(&mut rng, shape, 0.05);
            let mut g = Host::random(&mut rng, shape, -1.0, 1.0);
            let per = g.data.len() / shape[0];
            g.data[..per].iter_mut().for_each(|v| *v = 0.0);
            let want = reference::pgd_step_l2(&x.r(), &x0.r(), &g.r(), alpha.into(), eps.into())
                .reference(&ctx)?;
            let got = b
                .pgd_step_l2(
                    &x.up(b, &ctx)?,
                    &x0.up(b, &ctx)?,
                    &g.up(b, &ctx)?,
                    alpha,
                    eps,
                )
                .backend(&ctx, op)?;
            expect_close(
                b,
                &ctx,
                &got,
                &want,
                Some(&attack_mag(&x, &x0, alpha, eps)),
                tol,
            )?;
        }
    }
    attack_errors(b, op, true, |x, x0, g| b.pgd_step_l2(x, x0, g, 0.1, 0.3))?;
    let ctx = format!("[{name}] {op} errors");
    let s = Host::new(&[], vec![0.5]).up(b, &ctx)?;
    expect_err(&ctx, op, false, "scalar inputs", || {
        b.pgd_step_l2(&s, &s, &s, 0.1, 0.3)
    })
}

/// `project_l2` against [`reference::project_l2`], per example, from points inside and outside
/// the ball.
pub fn check_project_l2<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "project_l2";
    let mut rng = SplitMix64::new(0x964);
    for shape in ATTACK_SHAPES {
        for (spread, eps) in [(0.3f32, 0.5f32), (0.05, 2.0), (0.5, 0.0), (0.2, 1.0)] {
            let ctx = format!("[{name}] {op} (shape {shape:?}, spread {spread}, eps {eps})");
            let (x0, x) = attack_inputs(&mut rng, shape, spread);
            let want = reference::project_l2(&x.r(), &x0.r(), eps.into()).reference(&ctx)?;
            let got = b
                .project_l2(&x.up(b, &ctx)?, &x0.up(b, &ctx)?, eps)
                .backend(&ctx, op)?;
            expect_close(
                b,
                &ctx,
                &got,
                &want,
                Some(&attack_mag(&x, &x0, 0.0, eps)),
                tol,
            )?;
        }
    }
    attack_errors(b, op, false, |x, x0, _| b.project_l2(x, x0, 0.3))?;
    let ctx = format!("[{name}] {op} errors");
    let s = Host::new(&[], vec![0.5]).up(b, &ctx)?;
    expect_err(&ctx, op, false, "scalar inputs", || {
        b.project_l2(&s, &s, 0.3)
    })
}

// ---- optimisers -----------------------------------------------------------------------------

/// `adam_update` against [`reference::adam_update`] at steps 1, 2, 10 and 1000, with entries
/// where gradient and moments are all zero (an update of `0/eps`). `mag` of the parameter is
/// `|p| + lr·(β1|m| + (1−β1)|g|)/(1−β1^t)/(sqrt(v̂) + eps)`, the moments' cancellation carried
/// through. On a shape error the parameter and moments are left as they were.
pub fn check_adam_update<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "adam_update";
    let mut rng = SplitMix64::new(0xADA3);
    for shape in [&[7][..], &[3, 5, 11], &[1037]] {
        for (step, lr) in [(1u64, 0.1f32), (2, 0.01), (10, 0.1), (1000, 0.05)] {
            let h = AdamParams {
                lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step,
            };
            let ctx = format!("[{name}] {op} (shape {shape:?}, {h:?})");
            let param = Host::random(&mut rng, shape, -1.0, 1.0);
            let mut grad = Host::random(&mut rng, shape, -1.0, 1.0);
            let mut m = Host::random(&mut rng, shape, -0.1, 0.1);
            let mut v = Host::random(&mut rng, shape, 0.0, 0.01);
            for i in 0..grad.data.len() {
                if rng.chance(0.1) {
                    grad.data[i] = 0.0;
                    m.data[i] = 0.0;
                    v.data[i] = 0.0;
                }
            }
            let (wp, wm, wv) =
                reference::adam_update(&param.r(), &grad.r(), &m.r(), &v.r(), h).reference(&ctx)?;
            let (b1, b2) = (f64::from(h.beta1), f64::from(h.beta2));
            let t = step.max(1) as i32;
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let mm = RefTensor {
                shape: shape.to_vec(),
                data: (0..wm.numel())
                    .map(|i| {
                        b1 * f64::from(m.data[i]).abs() + (1.0 - b1) * f64::from(grad.data[i]).abs()
                    })
                    .collect(),
            };
            let mp = RefTensor {
                shape: shape.to_vec(),
                data: (0..wp.numel())
                    .map(|i| {
                        f64::from(param.data[i]).abs()
                            + f64::from(lr) * mm.data[i]
                                / bc1
                                / ((wv.data[i] / bc2).sqrt() + f64::from(h.eps))
                    })
                    .collect(),
            };
            let mut pt = param.up(b, &ctx)?;
            let mut mt = m.up(b, &ctx)?;
            let mut vt = v.up(b, &ctx)?;
            b.adam_update(&mut pt, &grad.up(b, &ctx)?, &mut mt, &mut vt, h)
                .backend(&ctx, op)?;
            expect_close(b, &format!("{ctx}, param"), &pt, &wp, Some(&mp), tol)?;
            expect_close(b, &format!("{ctx}, m"), &mt, &wm, Some(&mm), tol)?;
            expect_close(b, &format!("{ctx}, v"), &vt, &wv, None, tol)?;
        }
    }
    let ctx = format!("[{name}] {op} errors");
    let h = AdamParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
    };
    let p0 = Host::new(&[2, 3], vec![0.5; 6]);
    let (mut pt, mut mt, mut vt) = (p0.up(b, &ctx)?, p0.up(b, &ctx)?, p0.up(b, &ctx)?);
    let bad = Host::new(&[3, 2], vec![1.0; 6]).up(b, &ctx)?;
    expect_err(&ctx, op, false, "grad [3, 2] for param [2, 3]", || {
        b.adam_update(&mut pt, &bad, &mut mt, &mut vt, h)
    })?;
    for (what, t) in [("param", &pt), ("m", &mt), ("v", &vt)] {
        expect_bits(
            b,
            &format!("{ctx}: {what} after the failed update"),
            t,
            &[2, 3],
            &p0.data,
        )?;
    }
    Ok(())
}

/// `sgd_update` (PyTorch's momentum and coupled weight decay) against
/// [`reference::sgd_update`]. On a shape error the parameter and buffer are left as they were.
pub fn check_sgd_update<B: Backend>(b: &B, tol: Tol) -> CheckResult {
    let name = b.name();
    let op = "sgd_update";
    let mut rng = SplitMix64::new(0x56D);
    for shape in [&[7][..], &[3, 5, 11], &[1037]] {
        for (lr, momentum, weight_decay) in [
            (0.1f32, 0.9f32, 2e-4f32),
            (0.1, 0.0, 0.0),
            (0.01, 0.9, 0.1),
            (1.0, 0.5, 0.0),
        ] {
            let h = SgdParams {
                lr,
                momentum,
                weight_decay,
            };
            let ctx = format!("[{name}] {op} (shape {shape:?}, {h:?})");
            let param = Host::random(&mut rng, shape, -1.0, 1.0);
            let grad = Host::random(&mut rng, shape, -1.0, 1.0);
            let buf = Host::random(&mut rng, shape, -1.0, 1.0);
            let (wp, wb) =
                reference::sgd_update(&param.r(), &grad.r(), &buf.r(), h).reference(&ctx)?;
            let (lr, mo, wd) = (f64::from(lr), f64::from(momentum), f64::from(weight_decay));
            let mb = RefTensor {
                shape: shape.to_vec(),
                data: (0..wb.numel())
                    .map(|i| {
                        mo * f64::from(buf.data[i]).abs()
                            + f64::from(grad.data[i]).abs()
                            + wd * f64::from(param.data[i]).abs()
                    })
                    .collect(),
            };
            let mp = RefTensor {
                shape: shape.to_vec(),
                data: (0..wp.numel())
                    .map(|i| f64::from(param.data[i]).abs() + lr * mb.data[i])
                    .collect(),
            };
            let mut pt = param.up(b, &ctx)?;
            let mut bt = buf.up(b, &ctx)?;
            b.sgd_update(&mut pt, &grad.up(b, &ctx)?, &mut bt, h)
                .backend(&ctx, op)?;
            expect_close(b, &format!("{ctx}, param"), &pt, &wp, Some(&mp), tol)?;
            expect_close(b, &format!("{ctx}, momentum_buf"), &bt, &wb, Some(&mb), tol)?;
        }
    }
    let ctx = format!("[{name}] {op} errors");
    let h = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let p0 = Host::new(&[2, 3], vec![0.5; 6]);
    let (mut pt, mut bt) = (p0.up(b, &ctx)?, p0.up(b, &ctx)?);
    let bad = Host::new(&[3, 2], vec![1.0; 6]).up(b, &ctx)?;
    expect_err(&ctx, op, false, "grad [3, 2] for param [2, 3]", || {
        b.sgd_update(&mut pt, &bad, &mut bt, h)
    })?;
    for (what, t) in [("param", &pt), ("momentum_buf", &bt)] {
        expect_bits(
            b,
            &format!("{ctx}: {what} after the failed update"),
            t,
            &[2, 3],
            &p0.data,
        )?;
    }
    Ok(())
}

// ---- the macro ------------------------------------------------------------------------------

/// Expands to a module `op_suite` holding one `#[test]` per check of
/// [`saddle_tensor::testing`](crate::testing), named after the op (`op_suite::conv2d`,
/// `op_suite::conv2d_backward_input`, ...), plus a test that the list is complete.
///
/// - `op_suite!(backend, tol)`: `backend` is an expression giving the backend, evaluated once per
///   test (make it cheap, e.g. a clone of a backend kept in a `OnceLock`).
/// - `op_suite!(optional: backend, tol)`: `backend` gives an `Option` of the backend; on `None`
///   (say, no GPU adapter on this machine) each test prints that it was skipped and passes.
///
/// `tol` is a [`Tol`](crate::testing::Tol). Names in scope where the macro is invoked are visible
/// to both expressions.
///
/// ```
/// use saddle_tensor::{cpu::Cpu, testing::Tol};
/// saddle_tensor::op_suite!(Cpu::new(), Tol::CPU);
///
/// mod maybe {
///     use super::*;
///     fn adapter() -> Option<Cpu> {
///         None
///     }
///     saddle_tensor::op_suite!(optional: adapter(), Tol::GPU);
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! op_suite {
    (@tests ($opt:expr) ($tol:expr) $($test:ident => $check:ident),* $(,)?) => {
        #[allow(unused_imports)]
        mod op_suite {
            use super::*;

            $(
                #[test]
                fn $test() {
                    let Some(backend) = $opt else {
                        eprintln!("op_suite::{}: skipped, no backend", stringify!($test));
                        return;
                    };
                    if let Err(e) = $crate::testing::$check(&backend, $tol) {
                        panic!("{}", e);
                    }
                }
            )*

            /// The macro's list and `testing::checks` name the same checks in the same order.
            #[test]
            fn lists_every_check() {
                // Typed from the expression without evaluating it.
                fn names_of<B: $crate::Backend>(_: &dyn Fn() -> Option<B>) -> Vec<&'static str> {
                    $crate::testing::checks::<B>().into_iter().map(|(n, _)| n).collect()
                }
                let listed: Vec<&'static str> = vec![$(stringify!($test)),*];
                assert_eq!(listed, names_of(&|| $opt));
            }
        }
    };
    (@list ($opt:expr) ($tol:expr)) => {
        $crate::op_suite!(@tests ($opt) ($tol)
            data => check_data,
            add => check_add,
            sub => check_sub,
            mul => check_mul,
            div => check_div,
            minimum => check_minimum,
            maximum => check_maximum,
            affine => check_affine,
            sqrt => check_sqrt,
            sign => check_sign,
            clamp => check_clamp,
            relu => check_relu,
            relu_backward => check_relu_backward,
            leaky_relu => check_leaky_relu,
            leaky_relu_backward => check_leaky_relu_backward,
            sum_axes => check_sum_axes,
            mean_axes => check_mean_axes,
            sum_all => check_sum_all,
            sum_to_shape => check_sum_to_shape,
            l2_norms => check_l2_norms,
            matmul => check_matmul,
            conv2d => check_conv2d,
            conv2d_backward_input => check_conv2d_backward_input,
            conv2d_backward_weight => check_conv2d_backward_weight,
            max_pool2d => check_max_pool2d,
            max_pool2d_backward => check_max_pool2d_backward,
            conv2d_relu => check_conv2d_relu,
            relu_max_pool2d_backward => check_relu_max_pool2d_backward,
            cross_entropy => check_cross_entropy,
            cross_entropy_backward => check_cross_entropy_backward,
            cw_loss => check_cw_loss,
            cw_loss_backward => check_cw_loss_backward,
            kl_div => check_kl_div,
            kl_div_backward => check_kl_div_backward,
            dlr_loss => check_dlr_loss,
            dlr_loss_backward => check_dlr_loss_backward,
            mul_rows => check_mul_rows,
            select_rows => check_select_rows,
            restart_merge => check_restart_merge,
            batch_norm_train => check_batch_norm_train,
            batch_norm_eval => check_batch_norm_eval,
            batch_norm_train_backward => check_batch_norm_train_backward,
            batch_norm_act => check_batch_norm_act,
            conv2d_add => check_conv2d_add,
            pgd_step_linf => check_pgd_step_linf,
            project_linf => check_project_linf,
            pgd_step_l2 => check_pgd_step_l2,
            project_l2 => check_project_l2,
            adam_update => check_adam_update,
            sgd_update => check_sgd_update,
        );
    };
    (optional: $backend:expr, $tol:expr $(,)?) => {
        $crate::op_suite!(@list ($backend) ($tol));
    };
    ($backend:expr, $tol:expr $(,)?) => {
        $crate::op_suite!(@list (::std::option::Option::Some($backend)) ($tol));
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_relative_plus_absolute() {
        let t = Tol {
            rtol: 1e-3,
            atol: 1e-6,
        };
        assert!(t.allows(1.0005, 1.0, 1.0));
        assert!(!t.allows(1.002, 1.0, 1.0));
        // A cancelled sum is judged against the size of its terms.
        assert!(t.allows(5e-4, 0.0, 1.0));
        assert!(!t.allows(5e-4, 0.0, 0.0));
        assert!(t.allows(f64::NAN, f64::NAN, 0.0));
        assert!(!t.allows(0.0, f64::NAN, 0.0));
        assert!(!t.allows(f64::NAN, 1.0, 1.0));
        assert!(t.allows(f64::INFINITY, f64::INFINITY, 0.0));
        assert!(!t.allows(f64::MAX, f64::INFINITY, 0.0));
    }

    #[test]
    fn compare_names_the_worst_element() {
        let want = RefTensor::new(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(compare("c", &[2, 2], &[1.0, 2.0, 3.0, 4.0], &want, None, Tol::CPU).is_ok());
        let e = compare("c", &[2, 2], &[1.0, 2.5, 3.0, 9.0], &want, None, Tol::CPU).unwrap_err();
        assert!(e.contains("2 of 4") && e.contains("[1, 1]"), "{e}");
        assert!(compare("c", &[4], &[1.0, 2.0, 3.0, 4.0], &want, None, Tol::CPU).is_err());
    }

    #[test]
    fn finite_differences_of_a_known_function() {
        // f(x) = x², ⟨gy, f⟩ with gy = [1, 2]: gradient [2·x0, 4·x1] = [6, −4] at x = [3, −1].
        let x = RefTensor::new(&[2], vec![3.0, -1.0]).unwrap();
        let gy = RefTensor::new(&[2], vec![1.0, 2.0]).unwrap();
        let (g, noise) = fd_grad("t", &x, &gy, |x| Ok(x.map(|v| v * v))).unwrap();
        assert!(
            (g.data[0] - 6.0).abs() < 1e-8 && (g.data[1] + 4.0).abs() < 1e-8,
            "{g:?}"
        );
        assert!(noise < 1e-8);
    }

    #[test]
    fn generator_is_seeded_and_in_range() {
        assert_eq!(random_vec(5, 0.0, 1.0, 7), random_vec(5, 0.0, 1.0, 7));
        assert_ne!(random_vec(5, 0.0, 1.0, 7), random_vec(5, 0.0, 1.0, 8));
        assert!(random_vec(10_000, -2.0, 3.0, 1)
            .iter()
            .all(|&v| (-2.0..=3.0).contains(&v)));
        let mut r = SplitMix64::new(3);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }

    #[test]
    fn window_maxima_are_separated() {
        let mut x = Host::new(&[1, 1, 2, 2], vec![1.0, 1.0, 0.5, 1.0]);
        separate_window_maxima(&mut x, 2);
        let mut v = x.data.clone();
        v.sort_by(f32::total_cmp);
        assert!(v[3] - v[2] >= KINK_GAP);
    }
    // ---- the fused-op checks catch wrong fused ops ------------------------------------------

    use crate::cpu::Cpu;

    type T = <Cpu as Backend>::Tensor;

    /// The check passes with the right op and fails with `wrong`; prints what it said.
    fn caught(what: &str, good: CheckResult, bad: CheckResult) {
        assert!(good.is_ok(), "the check fails on the CPU backend: {good:?}");
        let e = bad.expect_err(&format!("the injected bug ({what}) was not caught"));
        eprintln!("{what}: caught: {e}");
    }

    fn conv_relu_caught(what: &str, wrong: ConvReluFn<'_, Cpu>) {
        let b = Cpu::new();
        let good = conv2d_relu_cases(&b, Tol::CPU, &|x, w, bias, p| b.conv2d_relu(x, w, bias, p));
        caught(what, good, conv2d_relu_cases(&b, Tol::CPU, wrong));
    }

    #[test]
    fn conv2d_relu_check_catches_a_missing_relu() {
        let b = Cpu::new();
        conv_relu_caught("conv2d without the ReLU", &|x, w, bias, p| {
            b.conv2d(x, w, bias, p)
        });
    }

    #[test]
    fn conv2d_relu_check_catches_the_relu_before_the_bias() {
        let b = Cpu::new();
        conv_relu_caught("relu(conv2d(x, w)) + bias", &|x, w, bias, p| {
            let y = b.conv2d_relu(x, w, None, p)?;
            match bias {
                None => Ok(y),
                Some(bias) => b.add(&y, &b.reshape(bias, &[bias.dims()[0], 1, 1])?),
            }
        });
    }

    /// Host version of the fused gradient with a chosen mistake, for the injected bugs.
    #[derive(Clone, Copy, Debug)]
    enum PoolBug {
        /// ReLU's mask forgotten: a window whose maximum is 0 still passes its gradient.
        NoMask,
        /// A tied window's gradient goes to its last maximum.
        LastMax,
        /// Windows 16 and beyond in each row get nothing (an AVX-512 tail or second group lost).
        DropAfter16,
        /// The last window of each row gets nothing when the row's window count is odd.
        DropOddTail,
    }

    fn buggy_pool_back(b: &Cpu, y: &T, gy: &T, size: usize, bug: PoolBug) -> crate::Result<T> {
        let good = b.relu_max_pool2d_backward(y, gy, size)?;
        let (yv, gv) = (b.to_vec(y)?, b.to_vec(gy)?);
        let d = y.dims().to_vec();
        let (h, w) = (d[2], d[3]);
        let (oh, ow) = (h / size, w / size);
        let mut out = vec![0.0f32; yv.len()];
        for plane in 0..d[0] * d[1] {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best: Option<(usize, f32)> = None;
                    for u in 0..size {
                        for v in 0..size {
                            let at = plane * h * w + (i * size + u) * w + j * size + v;
                            let better = match (bug, best) {
                                (_, None) => true,
                                (PoolBug::LastMax, Some((_, m))) => yv[at] >= m,
                                (_, Some((_, m))) => yv[at] > m,
                            };
                            if better {
                                best = Some((at, yv[at]));
                            }
                        }
                    }
                    let (at, m) = best.expect("window is not empty");
                    let pass = match bug {
                        PoolBug::NoMask => true,
                        PoolBug::DropAfter16 => m > 0.0 && j < 16,
                        PoolBug::DropOddTail => m > 0.0 && !(ow % 2 == 1 && j == ow - 1),
                        PoolBug::LastMax => m > 0.0,
                    };
                    if pass {
                        out[at] = gv[plane * oh * ow + i * ow + j];
                    }
                }
            }
        }
        drop(good);
        b.from_vec(&d, out)
    }

    fn pool_caught(bug: PoolBug) {
        let b = Cpu::new();
        let good = relu_max_pool2d_backward_cases(&b, Tol::CPU, &|y, gy, s| {
            b.relu_max_pool2d_backward(y, gy, s)
        });
        let bad = relu_max_pool2d_backward_cases(&b, Tol::CPU, &|y, gy, s| {
            buggy_pool_back(&b, y, gy, s, bug)
        });
        caught(&format!("{bug:?}"), good, bad);
    }

    #[test]
    fn relu_pool_check_catches_a_missing_relu_mask() {
        pool_caught(PoolBug::NoMask);
    }

    #[test]
    fn relu_pool_check_catches_ties_to_the_last_maximum() {
        pool_caught(PoolBug::LastMax);
    }

    #[test]
    fn relu_pool_check_catches_a_lost_second_simd_group() {
        pool_caught(PoolBug::DropAfter16);
    }

    #[test]
    fn relu_pool_check_catches_a_lost_odd_tail() {
        pool_caught(PoolBug::DropOddTail);
    }

    #[test]
    fn the_host_bug_model_is_right_without_a_bug() {
        // `buggy_pool_back`'s own loop, with no mistake that the cases can see on untied,
        // positive-only, even-width, narrow input: equals the backend.
        let b = Cpu::new();
        let y = b
            .from_vec(&[1, 1, 2, 4], vec![1.0, 2.0, 4.0, 3.0, 0.5, 0.25, 0.1, 0.2])
            .unwrap();
        let gy = b.from_vec(&[1, 1, 1, 2], vec![7.0, 9.0]).unwrap();
        let good = b
            .to_vec(&b.relu_max_pool2d_backward(&y, &gy, 2).unwrap())
            .unwrap();
        for bug in [
            PoolBug::NoMask,
            PoolBug::LastMax,
            PoolBug::DropAfter16,
            PoolBug::DropOddTail,
        ] {
            let got = b
                .to_vec(&buggy_pool_back(&b, &y, &gy, 2, bug).unwrap())
                .unwrap();
            assert_eq!(got, good, "{bug:?}");
        }
        assert_eq!(good, vec![0.0, 7.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
