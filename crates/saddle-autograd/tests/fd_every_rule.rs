//! Graph-level finite differences for every differentiable operation of [`Graph`].
//!
//! Each case is written once, generically over [`Ops`], and run twice: on a [`Graph`] over the
//! CPU backend (`f32`, backpropagation) and on [`RefOps`], the naive float64 reference of
//! `saddle_tensor::reference` (independent of every backend). The graph's output `y` is turned
//! into a scalar `L = Σ c ⊙ y` with random weights `c` (so that a gradient sent to the wrong
//! element is seen), `L`'s gradient with respect to each leaf is taken by [`Graph::backward`],
//! and it is compared with **central finite differences in float64** of the reference `L`.
//!
//! Every case also runs with each differentiable input alone as the leaf (the others as
//! constants), so each rule's "this parent needs no gradient" branches run too, and constants
//! must get no gradient. A leaf used several times checks the accumulation of gradients, rank-9
//! tensors check the boxed-closure fallbacks of the rules that store shapes inline (rank ≤ 8),
//! and one case seeds [`Graph::backward_with`] with the weights instead.
//!
//! [`every_public_operation_is_covered`] reads `src/lib.rs` and fails if `Graph` gains a public
//! method that no case calls and that is not listed as non-differentiable. (The rules
//! themselves, `enum Rule` and the closures, are private, so coverage is checked on the public
//! operations that create them; each case names the rule paths it takes.)
//!
//! # Tolerances
//!
//! - Finite differences: step [`H`] = 1e-7 in float64. The truncation error is
//!   `h²/6·|L'''| ≈ 2e-15·|L'''|`; the rounding error is about `ε64·Σ|terms of L| / (2h)`, with
//!   `Σ|terms| ≲ 10³` here: ≲ 1e-6 at the very worst and about 1e-9 in practice, within
//!   `ATOL`.
//! - Kinks: [`RefOps`] records, at the unperturbed inputs, the distance of every ReLU input from
//!   0, of every `maximum` pair, of every pooling window's maximum from its runner-up and of the
//!   CW margin from its kink, and a case fails as a test bug if one is below [`GAP`] = 1e-4. A
//!   step of `h` moves an intermediate value of these small graphs by at most `h` times the sum
//!   of the absolute weights along its paths (< 10³), so by less than `1e-4 = GAP`, and no
//!   stencil straddles a kink.
//! - Comparison, per leaf tensor: `|got − want| ≤ RTOL·max|want| + ATOL` with `RTOL` = 1e-5
//!   (≈ 170 `f32` unit roundoffs `u = 6e-8`, as the op suite's `Tol::CPU`) and `ATOL` = 1e-6
//!   (the finite differences' rounding, and gradients that are 0). Each gradient element of the
//!   `f32` backward pass is a sum of at most a few hundred rounded terms bounded by about
//!   `max|want|`, so it errs by at most ≈ `100·u·max|want| = 6e-6·max|want|`, and by
//!   `√L·u`-sized amounts in practice: every case prints its worst `|got − want| / max|want|`
//!   (run with `--nocapture`), and the largest over all cases is 2.9e-7 (the small CNN), 34
//!   times below `RTOL`. A wrong rule (a missing term, a wrong sign, a transposed or wrongly
//!   summed axis, a gradient sent to the wrong parent) is off by a sizeable fraction of
//!   `max|want|`, thousands of times the allowance; [`a_wrong_rule_is_caught`] shows the
//!   harness failing on one.
//! - The forward values must agree too (`|y − y64| ≤ RTOL·max|y64| + ATOL`), which shows that
//!   the float64 mirror computes the graph's function.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use saddle_autograd::{Graph, Var};
use saddle_tensor::cpu::Cpu;
use saddle_tensor::reference::{self, RefTensor};
use saddle_tensor::testing::SplitMix64;
use saddle_tensor::{Activation, Backend, Conv2dParams, TensorLike};

/// Finite-difference step (float64).
const H: f64 = 1e-7;
/// Smallest distance from a kink allowed at the unperturbed inputs.
const GAP: f64 = 1e-4;
/// Relative part of the comparison, times the largest finite-difference gradient of the leaf.
const RTOL: f64 = 1e-5;
/// Absolute part of the comparison.
const ATOL: f64 = 1e-6;

// ---- the operations, twice ------------------------------------------------------------------

/// The operations of [`Graph`], by the same names, on values `V`: graph variables or float64
/// tensors. `labels`, `mean` and `var` arguments are values too (never differentiated).
trait Ops {
    type V: Clone;
    fn add(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn sub(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn mul(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn div(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn maximum(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn affine(&self, x: &Self::V, s: f32, t: f32) -> Self::V;
    fn sqrt(&self, x: &Self::V) -> Self::V;
    fn relu(&self, x: &Self::V) -> Self::V;
    fn leaky_relu(&self, x: &Self::V, slope: f32) -> Self::V;
    fn reshape(&self, x: &Self::V, shape: &[usize]) -> Self::V;
    fn flatten(&self, x: &Self::V) -> Self::V;
    fn sum_axes(&self, x: &Self::V, axes: &[usize], keep_dims: bool) -> Self::V;
    fn sum_all(&self, x: &Self::V) -> Self::V;
    fn mean_all(&self, x: &Self::V) -> Self::V;
    fn matmul(&self, a: &Self::V, b: &Self::V, ta: bool, tb: bool) -> Self::V;
    fn linear(&self, x: &Self::V, w: &Self::V, bias: Option<&Self::V>) -> Self::V;
    fn conv2d(
        &self,
        x: &Self::V,
        w: &Self::V,
        bias: Option<&Self::V>,
        s: usize,
        p: usize,
    ) -> Self::V;
    /// `conv2d(x, w, bias) + r` (one node on the graph).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_add(
        &self,
        x: &Self::V,
        w: &Self::V,
        bias: Option<&Self::V>,
        s: usize,
        p: usize,
        r: &Self::V,
    ) -> Self::V;
    fn conv2d_relu(
        &self,
        x: &Self::V,
        w: &Self::V,
        bias: Option<&Self::V>,
        s: usize,
        p: usize,
    ) -> Self::V;
    #[allow(clippy::too_many_arguments)]
    fn conv2d_relu_max_pool2d(
        &self,
        x: &Self::V,
        w: &Self::V,
        bias: Option<&Self::V>,
        s: usize,
        p: usize,
        size: usize,
    ) -> Self::V;
    fn max_pool2d(&self, x: &Self::V, size: usize) -> Self::V;
    fn cross_entropy(&self, z: &Self::V, labels: &Self::V) -> Self::V;
    fn kl_div(&self, p: &Self::V, q: &Self::V) -> Self::V;
    fn cw_loss(&self, z: &Self::V, labels: &Self::V, kappa: f32) -> Self::V;
    fn batch_norm_train(&self, x: &Self::V, g: &Self::V, b: &Self::V, eps: f32) -> Self::V;
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        x: &Self::V,
        g: &Self::V,
        b: &Self::V,
        mean: &Self::V,
        var: &Self::V,
        eps: f32,
    ) -> Self::V;
    /// Batch norm in training mode, then `act` (the fused op on the graph).
    fn batch_norm_act_train(
        &self,
        x: &Self::V,
        g: &Self::V,
        b: &Self::V,
        eps: f32,
        act: Activation,
    ) -> Self::V;
    /// Batch norm with given statistics, then `act` (the fused op on the graph).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_eval(
        &self,
        x: &Self::V,
        g: &Self::V,
        b: &Self::V,
        mean: &Self::V,
        var: &Self::V,
        eps: f32,
        act: Activation,
    ) -> Self::V;
}

/// A [`Graph`] over the CPU backend, recording which of its methods the cases call.
struct GraphOps {
    g: Graph<Cpu>,
    used: RefCell<BTreeSet<&'static str>>,
}

impl GraphOps {
    fn new() -> Self {
        GraphOps {
            g: Graph::new(Cpu::new()),
            used: RefCell::new(BTreeSet::new()),
        }
    }
    fn note(&self, op: &'static str) {
        self.used.borrow_mut().insert(op);
    }
    fn t(&self, v: &Var) -> <Cpu as Backend>::Tensor {
        self.g.value(*v)
    }
}

/// Unwraps a graph result, naming the operation.
fn ok<T>(op: &str, r: saddle_tensor::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("Graph::{op} failed: {e}"))
}

impl Ops for GraphOps {
    type V = Var;
    fn add(&self, a: &Var, b: &Var) -> Var {
        self.note("add");
        ok("add", self.g.add(*a, *b))
    }
    fn sub(&self, a: &Var, b: &Var) -> Var {
        self.note("sub");
        ok("sub", self.g.sub(*a, *b))
    }
    fn mul(&self, a: &Var, b: &Var) -> Var {
        self.note("mul");
        ok("mul", self.g.mul(*a, *b))
    }
    fn div(&self, a: &Var, b: &Var) -> Var {
        self.note("div");
        ok("div", self.g.div(*a, *b))
    }
    fn maximum(&self, a: &Var, b: &Var) -> Var {
        self.note("maximum");
        ok("maximum", self.g.maximum(*a, *b))
    }
    fn affine(&self, x: &Var, s: f32, t: f32) -> Var {
        self.note("affine");
        ok("affine", self.g.affine(*x, s, t))
    }
    fn sqrt(&self, x: &Var) -> Var {
        self.note("sqrt");
        ok("sqrt", self.g.sqrt(*x))
    }
    fn relu(&self, x: &Var) -> Var {
        self.note("relu");
        ok("relu", self.g.relu(*x))
    }
    fn leaky_relu(&self, x: &Var, slope: f32) -> Var {
        self.note("leaky_relu");
        ok("leaky_relu", self.g.leaky_relu(*x, slope))
    }
    fn reshape(&self, x: &Var, shape: &[usize]) -> Var {
        self.note("reshape");
        ok("reshape", self.g.reshape(*x, shape))
    }
    fn flatten(&self, x: &Var) -> Var {
        self.note("flatten");
        ok("flatten", self.g.flatten(*x))
    }
    fn sum_axes(&self, x: &Var, axes: &[usize], keep_dims: bool) -> Var {
        self.note("sum_axes");
        ok("sum_axes", self.g.sum_axes(*x, axes, keep_dims))
    }
    fn sum_all(&self, x: &Var) -> Var {
        self.note("sum_all");
        ok("sum_all", self.g.sum_all(*x))
    }
    fn mean_all(&self, x: &Var) -> Var {
        self.note("mean_all");
        ok("mean_all", self.g.mean_all(*x))
    }
    fn matmul(&self, a: &Var, b: &Var, ta: bool, tb: bool) -> Var {
        self.note("matmul");
        ok("matmul", self.g.matmul(*a, *b, ta, tb))
    }
    fn linear(&self, x: &Var, w: &Var, bias: Option<&Var>) -> Var {
        self.note("linear");
        ok("linear", self.g.linear(*x, *w, bias.copied()))
    }
    fn conv2d(&self, x: &Var, w: &Var, bias: Option<&Var>, s: usize, p: usize) -> Var {
        self.note("conv2d");
        let cp = Conv2dParams::new(s, p);
        ok("conv2d", self.g.conv2d(*x, *w, bias.copied(), cp))
    }
    fn conv2d_add(&self, x: &Var, w: &Var, bias: Option<&Var>, s: usize, p: usize, r: &Var) -> Var {
        self.note("conv2d_add");
        let cp = Conv2dParams::new(s, p);
        ok(
            "conv2d_add",
            self.g.conv2d_add(*x, *w, bias.copied(), cp, *r),
        )
    }
    fn conv2d_relu(&self, x: &Var, w: &Var, bias: Option<&Var>, s: usize, p: usize) -> Var {
        self.note("conv2d_relu");
        let cp = Conv2dParams::new(s, p);
        ok("conv2d_relu", self.g.conv2d_relu(*x, *w, bias.copied(), cp))
    }
    fn conv2d_relu_max_pool2d(
        &self,
        x: &Var,
        w: &Var,
        bias: Option<&Var>,
        s: usize,
        p: usize,
        size: usize,
    ) -> Var {
        self.note("conv2d_relu_max_pool2d");
        let cp = Conv2dParams::new(s, p);
        ok(
            "conv2d_relu_max_pool2d",
            self.g
                .conv2d_relu_max_pool2d(*x, *w, bias.copied(), cp, size),
        )
    }
    fn max_pool2d(&self, x: &Var, size: usize) -> Var {
        self.note("max_pool2d");
        ok("max_pool2d", self.g.max_pool2d(*x, size))
    }
    fn cross_entropy(&self, z: &Var, labels: &Var) -> Var {
        self.note("cross_entropy");
        ok("cross_entropy", self.g.cross_entropy(*z, &self.t(labels)))
    }
    fn kl_div(&self, p: &Var, q: &Var) -> Var {
        self.note("kl_div");
        ok("kl_div", self.g.kl_div(*p, *q))
    }
    fn cw_loss(&self, z: &Var, labels: &Var, kappa: f32) -> Var {
        self.note("cw_loss");
        ok("cw_loss", self.g.cw_loss(*z, &self.t(labels), kappa))
    }
    fn batch_norm_train(&self, x: &Var, g: &Var, b: &Var, eps: f32) -> Var {
        self.note("batch_norm_train");
        ok("batch_norm_train", self.g.batch_norm_train(*x, *g, *b, eps)).0
    }
    fn batch_norm_eval(&self, x: &Var, g: &Var, b: &Var, mean: &Var, var: &Var, eps: f32) -> Var {
        self.note("batch_norm_eval");
        let (m, v) = (self.t(mean), self.t(var));
        ok(
            "batch_norm_eval",
            self.g.batch_norm_eval(*x, *g, *b, &m, &v, eps),
        )
    }
    fn batch_norm_act_train(&self, x: &Var, g: &Var, b: &Var, eps: f32, act: Activation) -> Var {
        self.note("batch_norm_act_train");
        let y = self.g.batch_norm_act_train(*x, *g, *b, eps, act);
        ok("batch_norm_act_train", y).0
    }
    fn batch_norm_act_eval(
        &self,
        x: &Var,
        g: &Var,
        b: &Var,
        mean: &Var,
        var: &Var,
        eps: f32,
        act: Activation,
    ) -> Var {
        self.note("batch_norm_act_eval");
        let (m, v) = (self.t(mean), self.t(var));
        ok(
            "batch_norm_act_eval",
            self.g.batch_norm_act_eval(*x, *g, *b, &m, &v, eps, act),
        )
    }
}

/// The float64 reference, recording the smallest distance from a kink it met.
struct RefOps {
    gap: Cell<f64>,
}

impl RefOps {
    fn new() -> Self {
        RefOps {
            gap: Cell::new(f64::INFINITY),
        }
    }
    fn kink(&self, d: f64) {
        if d < self.gap.get() {
            self.gap.set(d);
        }
    }
    /// Records every window's lead of the maximum over the runner-up; with `positive_only`,
    /// only windows whose maximum is positive (a window of ReLU zeros has no kink of its own).
    fn pool_gaps(&self, x: &RefTensor, size: usize, positive_only: bool) {
        if size < 2 {
            return;
        }
        let s = &x.shape;
        let (h, w) = (s[2], s[3]);
        for plane in 0..s[0] * s[1] {
            for i in 0..h / size {
                for j in 0..w / size {
                    let mut v: Vec<f64> = (0..size * size)
                        .map(|t| {
                            x.data[plane * h * w + (i * size + t / size) * w + j * size + t % size]
                        })
                        .collect();
                    v.sort_by(|a, b| b.total_cmp(a));
                    if !positive_only || v[0] > 0.0 {
                        self.kink(v[0] - v[1]);
                    }
                }
            }
        }
    }
    fn relu_gaps(&self, x: &RefTensor) {
        for &v in &x.data {
            self.kink(v.abs());
        }
    }
}

fn r<T>(r: saddle_tensor::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("the float64 reference failed (a test bug): {e}"))
}

fn reshaped(x: &RefTensor, shape: &[usize]) -> RefTensor {
    r(RefTensor::new(shape, x.data.clone()))
}

impl Ops for RefOps {
    type V = RefTensor;
    fn add(&self, a: &RefTensor, b: &RefTensor) -> RefTensor {
        r(reference::add(a, b))
    }
    fn sub(&self, a: &RefTensor, b: &RefTensor) -> RefTensor {
        r(reference::sub(a, b))
    }
    fn mul(&self, a: &RefTensor, b: &RefTensor) -> RefTensor {
        r(reference::mul(a, b))
    }
    fn div(&self, a: &RefTensor, b: &RefTensor) -> RefTensor {
        r(reference::div(a, b))
    }
    fn maximum(&self, a: &RefTensor, b: &RefTensor) -> RefTensor {
        for &d in &r(reference::sub(a, b)).data {
            self.kink(d.abs());
        }
        r(reference::maximum(a, b))
    }
    fn affine(&self, x: &RefTensor, s: f32, t: f32) -> RefTensor {
        reference::affine(x, s.into(), t.into())
    }
    fn sqrt(&self, x: &RefTensor) -> RefTensor {
        reference::sqrt(x)
    }
    fn relu(&self, x: &RefTensor) -> RefTensor {
        self.relu_gaps(x);
        reference::relu(x)
    }
    fn leaky_relu(&self, x: &RefTensor, slope: f32) -> RefTensor {
        self.relu_gaps(x);
        reference::leaky_relu(x, slope.into())
    }
    fn reshape(&self, x: &RefTensor, shape: &[usize]) -> RefTensor {
        reshaped(x, shape)
    }
    fn flatten(&self, x: &RefTensor) -> RefTensor {
        let n = x.shape[0];
        reshaped(x, &[n, x.numel() / n])
    }
    fn sum_axes(&self, x: &RefTensor, axes: &[usize], keep_dims: bool) -> RefTensor {
        r(reference::sum_axes(x, axes, keep_dims))
    }
    fn sum_all(&self, x: &RefTensor) -> RefTensor {
        reference::sum_all(x)
    }
    fn mean_all(&self, x: &RefTensor) -> RefTensor {
        // The graph multiplies by 1/n rounded to f32.
        let n = x.numel().max(1);
        reference::affine(&reference::sum_all(x), f64::from(1.0 / n as f32), 0.0)
    }
    fn matmul(&self, a: &RefTensor, b: &RefTensor, ta: bool, tb: bool) -> RefTensor {
        r(reference::matmul(a, b, ta, tb))
    }
    fn linear(&self, x: &RefTensor, w: &RefTensor, bias: Option<&RefTensor>) -> RefTensor {
        let y = r(reference::matmul(x, w, false, true));
        match bias {
            Some(b) => r(reference::add(&y, b)),
            None => y,
        }
    }
    fn conv2d(
        &self,
        x: &RefTensor,
        w: &RefTensor,
        bias: Option<&RefTensor>,
        s: usize,
        p: usize,
    ) -> RefTensor {
        r(reference::conv2d(x, w, bias, s, p))
    }
    fn conv2d_add(
        &self,
        x: &RefTensor,
        w: &RefTensor,
        bias: Option<&RefTensor>,
        s: usize,
        p: usize,
        res: &RefTensor,
    ) -> RefTensor {
        let y = self.conv2d(x, w, bias, s, p);
        self.add(&y, res)
    }
    fn conv2d_relu(
        &self,
        x: &RefTensor,
        w: &RefTensor,
        bias: Option<&RefTensor>,
        s: usize,
        p: usize,
    ) -> RefTensor {
        let z = r(reference::conv2d(x, w, bias, s, p));
        self.relu(&z)
    }
    fn conv2d_relu_max_pool2d(
        &self,
        x: &RefTensor,
        w: &RefTensor,
        bias: Option<&RefTensor>,
        s: usize,
        p: usize,
        size: usize,
    ) -> RefTensor {
        let y = self.conv2d_relu(x, w, bias, s, p);
        self.pool_gaps(&y, size, true);
        r(reference::max_pool2d(&y, size))
    }
    fn max_pool2d(&self, x: &RefTensor, size: usize) -> RefTensor {
        self.pool_gaps(x, size, false);
        r(reference::max_pool2d(x, size))
    }
    fn cross_entropy(&self, z: &RefTensor, labels: &RefTensor) -> RefTensor {
        r(reference::cross_entropy(z, labels))
    }
    fn kl_div(&self, p: &RefTensor, q: &RefTensor) -> RefTensor {
        r(reference::kl_div(p, q))
    }
    fn cw_loss(&self, z: &RefTensor, labels: &RefTensor, kappa: f32) -> RefTensor {
        let k = z.shape[1];
        for (i, row) in z.data.chunks(k).enumerate() {
            let y = labels.data[i] as usize;
            let mut others: Vec<f64> = (0..k).filter(|&j| j != y).map(|j| row[j]).collect();
            others.sort_by(|a, b| b.total_cmp(a));
            // The margin's kink, and ties for the largest other logit.
            self.kink((row[y] - others[0] + f64::from(kappa)).abs());
            if others.len() > 1 {
                self.kink(others[0] - others[1]);
            }
        }
        r(reference::cw_loss(z, labels, kappa.into()))
    }
    fn batch_norm_train(&self, x: &RefTensor, g: &RefTensor, b: &RefTensor, eps: f32) -> RefTensor {
        r(reference::batch_norm_train(x, g, b, eps.into())).0
    }
    fn batch_norm_eval(
        &self,
        x: &RefTensor,
        g: &RefTensor,
        b: &RefTensor,
        mean: &RefTensor,
        var: &RefTensor,
        eps: f32,
    ) -> RefTensor {
        r(reference::batch_norm_eval(x, g, b, mean, var, eps.into()))
    }
    fn batch_norm_act_train(
        &self,
        x: &RefTensor,
        g: &RefTensor,
        b: &RefTensor,
        eps: f32,
        act: Activation,
    ) -> RefTensor {
        let z = self.batch_norm_train(x, g, b, eps);
        self.activation(&z, act)
    }
    fn batch_norm_act_eval(
        &self,
        x: &RefTensor,
        g: &RefTensor,
        b: &RefTensor,
        mean: &RefTensor,
        var: &RefTensor,
        eps: f32,
        act: Activation,
    ) -> RefTensor {
        let z = self.batch_norm_eval(x, g, b, mean, var, eps);
        self.activation(&z, act)
    }
}

impl RefOps {
    /// The reference activation (recording its kinks).
    fn activation(&self, z: &RefTensor, act: Activation) -> RefTensor {
        match act {
            Activation::Relu => self.relu(z),
            Activation::LeakyRelu(s) => self.leaky_relu(z, s),
        }
    }
}

// ---- cases ----------------------------------------------------------------------------------

/// How an input's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Gen {
    /// Uniform in `[lo, hi]`.
    Uniform(f32, f32),
    /// Uniform magnitude in `[lo, hi]` with a random sign (away from 0: ReLU inputs, divisors).
    Magnitude(f32, f32),
    /// Class indices in `0..k` (never differentiated).
    Labels(usize),
}

/// One input of a case: its shape, its values, and whether it can be a leaf.
#[derive(Clone, Debug)]
struct Input {
    shape: Vec<usize>,
    gen: Gen,
    diff: bool,
}

fn leaf(shape: &[usize], gen: Gen) -> Input {
    Input {
        shape: shape.to_vec(),
        gen,
        diff: true,
    }
}

fn constant(shape: &[usize], gen: Gen) -> Input {
    Input {
        shape: shape.to_vec(),
        gen,
        diff: false,
    }
}

fn u(lo: f32, hi: f32) -> Gen {
    Gen::Uniform(lo, hi)
}

fn m(lo: f32, hi: f32) -> Gen {
    Gen::Magnitude(lo, hi)
}

/// A case: its inputs, and its function built on a graph and on the reference.
struct Case {
    inputs: Vec<Input>,
    graph: fn(&GraphOps, &[Var]) -> Var,
    reference: fn(&RefOps, &[RefTensor]) -> RefTensor,
    /// Seed the backward pass with the weights `c` through [`Graph::backward_with`] instead of
    /// reducing `Σ c ⊙ y` on the graph.
    seeded: bool,
}

/// `case!([inputs], |o, v| body)`: `body` builds the case's output from the inputs `v` with
/// the operations of `o`, generically, for both the graph and the reference.
macro_rules! case {
    ([$($input:expr),* $(,)?], |$o:ident, $v:ident| $body:expr) => {
        case!(@ false, [$($input),*], |$o, $v| $body)
    };
    (seeded [$($input:expr),* $(,)?], |$o:ident, $v:ident| $body:expr) => {
        case!(@ true, [$($input),*], |$o, $v| $body)
    };
    (@ $seeded:expr, [$($input:expr),*], |$o:ident, $v:ident| $body:expr) => {{
        // A case's body may itself be a block.
        #[allow(unused_braces)]
        fn build<O: Ops>($o: &O, $v: &[O::V]) -> O::V {
            $body
        }
        Case {
            inputs: vec![$($input),*],
            graph: build::<GraphOps>,
            reference: build::<RefOps>,
            seeded: $seeded,
        }
    }};
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xF00D_u64, |h, c| {
        h.wrapping_mul(0x100_0000_01B3) ^ u64::from(c)
    })
}

fn draw(rng: &mut SplitMix64, input: &Input) -> Vec<f32> {
    let n: usize = input.shape.iter().product();
    (0..n)
        .map(|_| match input.gen {
            Gen::Uniform(lo, hi) => rng.uniform(lo, hi),
            Gen::Magnitude(lo, hi) => {
                let v = rng.uniform(lo, hi);
                if rng.chance(0.5) {
                    -v
                } else {
                    v
                }
            }
            Gen::Labels(k) => rng.below(k) as f32,
        })
        .collect()
}

fn to_ref(shape: &[usize], data: &[f32]) -> RefTensor {
    r(RefTensor::from_f32(shape, data))
}

/// `Σ c ⊙ f(inputs)` in float64.
fn ref_loss(case: &Case, inputs: &[RefTensor], c: &RefTensor, ops: &RefOps) -> f64 {
    let y = (case.reference)(ops, inputs);
    assert_eq!(y.shape, c.shape, "test bug: weights for the output");
    y.data.iter().zip(&c.data).map(|(a, b)| a * b).sum()
}

/// Runs one case: forward against the reference, then for each leaf set (all differentiable
/// inputs; each alone) backpropagation against float64 finite differences. Returns the worst
/// `|got − want| / max|want|` met.
fn run(name: &str, case: &Case) -> f64 {
    let mut rng = SplitMix64::new(seed_of(name));
    let host: Vec<Vec<f32>> = case.inputs.iter().map(|i| draw(&mut rng, i)).collect();
    let refs: Vec<RefTensor> = case
        .inputs
        .iter()
        .zip(&host)
        .map(|(i, h)| to_ref(&i.shape, h))
        .collect();

    // The forward pass, and the kinks it met.
    let ops = RefOps::new();
    let y64 = (case.reference)(&ops, &refs);
    assert!(
        ops.gap.get() >= GAP,
        "{name}: an input is {:e} from a kink (< {GAP:e}): a test bug, draw other inputs",
        ops.gap.get()
    );
    let c_host = draw(&mut rng, &constant(&y64.shape, u(-1.0, 1.0)));
    let c64 = to_ref(&y64.shape, &c_host);

    // Finite differences of L = Σ c ⊙ y for every element of every differentiable input.
    let quiet = RefOps::new();
    let fd: Vec<Option<RefTensor>> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(k, input)| {
            input.diff.then(|| {
                let mut xs = refs.clone();
                let mut g = RefTensor::full(&input.shape, 0.0);
                for e in 0..refs[k].numel() {
                    let x0 = refs[k].data[e];
                    xs[k].data[e] = x0 + H;
                    let lp = ref_loss(case, &xs, &c64, &quiet);
                    xs[k].data[e] = x0 - H;
                    let lm = ref_loss(case, &xs, &c64, &quiet);
                    xs[k].data[e] = x0;
                    g.data[e] = (lp - lm) / (2.0 * H);
                }
                g
            })
        })
        .collect();

    let diff: Vec<usize> = (0..case.inputs.len())
        .filter(|&k| case.inputs[k].diff)
        .collect();
    assert!(
        !diff.is_empty(),
        "{name}: test bug: nothing to differentiate"
    );
    let mut leaf_sets = vec![diff.clone()];
    if diff.len() > 1 {
        leaf_sets.extend(diff.iter().map(|&k| vec![k]));
    }
    let b = Cpu::new();
    let mut worst = 0.0f64;
    for leaves in &leaf_sets {
        let go = GraphOps::new();
        let vars: Vec<Var> = case
            .inputs
            .iter()
            .zip(&host)
            .enumerate()
            .map(|(k, (i, h))| {
                let t = b.from_vec(&i.shape, h.clone()).unwrap();
                if leaves.contains(&k) {
                    go.g.leaf(t)
                } else {
                    go.g.input(t)
                }
            })
            .collect();
        let y = (case.graph)(&go, &vars);

        // Forward: the graph and the float64 mirror compute the same function.
        let yv = b.to_vec(&go.g.value(y)).unwrap();
        assert_eq!(
            go.g.value(y).dims(),
            y64.shape.as_slice(),
            "{name}: output shape"
        );
        let scale = y64.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (e, (&got, &want)) in yv.iter().zip(&y64.data).enumerate() {
            assert!(
                (f64::from(got) - want).abs() <= RTOL * scale + ATOL,
                "{name}: forward element {e} is {got}, float64 gives {want}"
            );
        }

        let grads = if case.seeded {
            let seed = b.from_vec(&y64.shape, c_host.clone()).unwrap();
            go.note("backward_with");
            go.g.backward_with(y, seed).unwrap()
        } else {
            let cv = go.g.input(b.from_vec(&y64.shape, c_host.clone()).unwrap());
            let l = go.sum_all(&go.mul(&y, &cv));
            go.note("backward");
            go.g.backward(l).unwrap()
        };
        for (k, var) in vars.iter().enumerate() {
            let got = grads.get(*var);
            if !leaves.contains(&k) {
                assert!(
                    got.is_none(),
                    "{name}: input {k} is a constant (leaves {leaves:?}) but got a gradient"
                );
                continue;
            }
            let got = b
                .to_vec(got.unwrap_or_else(|| {
                    panic!("{name}: leaf {k} (leaves {leaves:?}) got no gradient")
                }))
                .unwrap();
            let want = fd[k].as_ref().expect("leaves are differentiable");
            let scale = want.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "{name}: test bug: input {k} barely matters");
            for (e, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
                let err = (f64::from(g) - w).abs();
                worst = worst.max(err / scale);
                assert!(
                    err <= RTOL * scale + ATOL,
                    "{name}: d/d(input {k})[{e}] (leaves {leaves:?}): backprop {g:e}, finite \
                     differences {w:e}, |diff| {err:e} > {:e} (max|grad| {scale:e})",
                    RTOL * scale + ATOL
                );
            }
        }
    }
    eprintln!("{name}: worst |backprop − fd| / max|fd| = {worst:.2e}");
    worst
}

// ---- the cases ------------------------------------------------------------------------------

fn add_broadcast() -> Case {
    // [2, 1, 3] + [4, 1]: both sides broadcast, so both gradients are summed to shape.
    case!(
        [leaf(&[2, 1, 3], u(-1.0, 1.0)), leaf(&[4, 1], u(-1.0, 1.0))],
        |o, v| { o.add(&v[0], &v[1]) }
    )
}

fn add_scalar_and_same_leaf_twice() -> Case {
    // x + s with a scalar s, then + x again: x's gradient accumulates from two uses.
    case!(
        [leaf(&[3, 4], u(-1.0, 1.0)), leaf(&[], u(-1.0, 1.0))],
        |o, v| {
            let y = o.add(&v[0], &v[1]);
            o.add(&y, &v[0])
        }
    )
}

fn sub_broadcast() -> Case {
    case!(
        [leaf(&[3, 5], u(-1.0, 1.0)), leaf(&[5], u(-1.0, 1.0))],
        |o, v| {
            let a = o.sub(&v[0], &v[1]);
            o.sub(&v[1], &a)
        }
    )
}

fn mul_broadcast_and_square() -> Case {
    // x·w with w broadcast over rows, times x again: d/dx = 2·x·w·c.
    case!(
        [leaf(&[4, 3], u(-1.0, 1.0)), leaf(&[1, 3], u(-1.0, 1.0))],
        |o, v| {
            let a = o.mul(&v[0], &v[1]);
            o.mul(&a, &v[0])
        }
    )
}

fn div_broadcast() -> Case {
    // Divisors kept in ±[0.5, 2].
    case!(
        [leaf(&[2, 3, 4], u(-1.0, 1.0)), leaf(&[3, 1], m(0.5, 2.0))],
        |o, v| { o.div(&v[0], &v[1]) }
    )
}

fn div_by_self_used_value() -> Case {
    // (a / b) / b: the rule uses its own output y = a/b.
    case!(
        [leaf(&[5], u(-1.0, 1.0)), leaf(&[5], m(0.5, 2.0))],
        |o, v| {
            let q = o.div(&v[0], &v[1]);
            o.div(&q, &v[1])
        }
    )
}

fn maximum_broadcast() -> Case {
    // Random pairs; RefOps checks no pair is within GAP of a tie.
    case!(
        [leaf(&[3, 4], u(-1.0, 1.0)), leaf(&[4], u(-1.0, 1.0))],
        |o, v| { o.maximum(&v[0], &v[1]) }
    )
}

fn affine_and_sqrt() -> Case {
    // sqrt on [0.2, 2] (its derivative is bounded there), then an affine map.
    case!([leaf(&[2, 7], u(0.2, 2.0))], |o, v| {
        let s = o.sqrt(&v[0]);
        o.affine(&s, -1.5, 0.25)
    })
}

fn relu_of_a_leaf_and_of_a_product() -> Case {
    case!(
        [leaf(&[4, 5], m(0.01, 1.0)), leaf(&[5], m(0.5, 1.0))],
        |o, v| {
            let a = o.relu(&v[0]);
            let b = o.relu(&o.mul(&v[0], &v[1]));
            o.add(&a, &b)
        }
    )
}

fn leaky_relu_slopes() -> Case {
    case!([leaf(&[3, 7], m(0.01, 1.0))], |o, v| {
        let a = o.leaky_relu(&v[0], 0.1);
        let b = o.leaky_relu(&v[0], 0.01);
        o.sub(&a, &o.affine(&b, 2.0, 0.0))
    })
}

fn reshape_flatten_sum_axes() -> Case {
    // [2, 3, 4] → [6, 4] → sum over axis 0 kept → [1, 4] · x reshaped, flatten of rank 4,
    // sums over unsorted axes without keeping them.
    case!(
        [
            leaf(&[2, 3, 4], u(-1.0, 1.0)),
            leaf(&[2, 3, 2, 2], u(-1.0, 1.0))
        ],
        |o, v| {
            let a = o.reshape(&v[0], &[6, 4]);
            let s = o.sum_axes(&a, &[0], true);
            let p = o.mul(&a, &s);
            let f = o.flatten(&v[1]);
            let q = o.sum_axes(&o.reshape(&f, &[2, 3, 4]), &[2, 0], false);
            let q = o.reshape(&q, &[3, 1]);
            o.add(&o.sum_axes(&o.reshape(&p, &[3, 2, 4]), &[1], false), &q)
        }
    )
}

fn sum_all_mean_all() -> Case {
    case!(
        [leaf(&[3, 5], u(-1.0, 1.0)), leaf(&[7], u(-1.0, 1.0))],
        |o, v| {
            let s = o.sum_all(&o.mul(&v[0], &v[0]));
            let mm = o.mean_all(&o.mul(&v[1], &v[1]));
            let t = o.mul(&s, &mm);
            o.add(&t, &o.mean_all(&v[0]))
        }
    )
}

fn rank9_closure_fallbacks() -> Case {
    // Rank 9: `add`, `reshape` and `sum_axes` fall back from the inline-shape rules to boxed
    // closures.
    case!(
        [
            leaf(&[1, 2, 1, 1, 1, 1, 1, 2, 3], u(-1.0, 1.0)),
            leaf(&[2, 1, 3], u(-1.0, 1.0))
        ],
        |o, v| {
            let a = o.add(&v[0], &v[1]);
            let b = o.reshape(&a, &[2, 2, 1, 1, 1, 1, 1, 2, 3]);
            let c = o.sum_axes(&b, &[8, 0], false);
            let d = o.sum_all(&o.mul(&b, &b));
            o.add(&c, &d)
        }
    )
}

fn matmul_all_transposes() -> Case {
    // a [3, 4], b [4, 5]: aᵀ and bᵀ are given stored transposed.
    case!(
        [
            leaf(&[3, 4], u(-1.0, 1.0)),
            leaf(&[4, 5], u(-1.0, 1.0)),
            leaf(&[4, 3], u(-1.0, 1.0)),
            leaf(&[5, 4], u(-1.0, 1.0))
        ],
        |o, v| {
            let nn = o.matmul(&v[0], &v[1], false, false);
            let tn = o.matmul(&v[2], &v[1], true, false);
            let nt = o.matmul(&v[0], &v[3], false, true);
            let tt = o.matmul(&v[2], &v[3], true, true);
            let s = o.add(&o.add(&nn, &tn), &o.add(&nt, &tt));
            // A product of leaves with themselves: both parents of one node are the same leaf.
            let g = o.matmul(&v[0], &v[0], false, true);
            o.add(&o.sum_all(&s), &o.sum_all(&g))
        }
    )
}

fn linear_with_and_without_bias() -> Case {
    case!(
        [
            leaf(&[4, 6], u(-1.0, 1.0)),
            leaf(&[3, 6], u(-1.0, 1.0)),
            leaf(&[3], u(-1.0, 1.0))
        ],
        |o, v| {
            let a = o.linear(&v[0], &v[1], Some(&v[2]));
            let b = o.linear(&v[0], &v[1], None);
            o.mul(&a, &b)
        }
    )
}

fn conv2d_bias_stride_padding() -> Case {
    case!(
        [
            leaf(&[2, 3, 7, 6], u(-1.0, 1.0)),
            leaf(&[4, 3, 3, 3], u(-1.0, 1.0)),
            leaf(&[4], u(-1.0, 1.0))
        ],
        |o, v| o.conv2d(&v[0], &v[1], Some(&v[2]), 2, 1)
    )
}

fn conv2d_mnist_kernel_no_bias() -> Case {
    // The paper's 5×5 kernels with padding 2, no bias.
    case!(
        [
            leaf(&[1, 2, 6, 6], u(-1.0, 1.0)),
            leaf(&[3, 2, 5, 5], u(-1.0, 1.0))
        ],
        |o, v| o.conv2d(&v[0], &v[1], None, 1, 2)
    )
}

fn conv2d_add_residual() -> Case {
    // A residual block's sum: 3×3, stride 1, padding 1, with bias, the residual a leaf too.
    case!(
        [
            leaf(&[2, 3, 5, 4], u(-1.0, 1.0)),
            leaf(&[4, 3, 3, 3], u(-1.0, 1.0)),
            leaf(&[4], u(-1.0, 1.0)),
            leaf(&[2, 4, 5, 4], u(-1.0, 1.0))
        ],
        |o, v| o.conv2d_add(&v[0], &v[1], Some(&v[2]), 1, 1, &v[3])
    )
}

fn conv2d_relu_fused() -> Case {
    case!(
        [
            leaf(&[2, 2, 5, 5], u(-1.0, 1.0)),
            leaf(&[3, 2, 3, 3], u(-1.0, 1.0)),
            leaf(&[3], u(-0.5, 0.5))
        ],
        |o, v| {
            let a = o.conv2d_relu(&v[0], &v[1], Some(&v[2]), 1, 1);
            let b = o.conv2d_relu(&v[0], &v[1], None, 2, 0);
            o.add(&o.sum_all(&a), &o.sum_all(&o.mul(&b, &b)))
        }
    )
}

fn conv2d_relu_max_pool2d_fused() -> Case {
    // Odd spatial size (a row and a column no window reads), 5×5 padding 2 as in the paper.
    case!(
        [
            leaf(&[2, 2, 7, 9], u(-1.0, 1.0)),
            leaf(&[3, 2, 5, 5], u(-0.3, 0.3)),
            leaf(&[3], u(-0.3, 0.3))
        ],
        |o, v| o.conv2d_relu_max_pool2d(&v[0], &v[1], Some(&v[2]), 1, 2, 2)
    )
}

fn conv2d_relu_max_pool2d_no_bias_window3() -> Case {
    case!(
        [
            leaf(&[1, 2, 7, 7], u(-1.0, 1.0)),
            leaf(&[2, 2, 2, 2], u(-1.0, 1.0))
        ],
        |o, v| o.conv2d_relu_max_pool2d(&v[0], &v[1], None, 1, 1, 3)
    )
}

fn max_pool2d_windows() -> Case {
    case!([leaf(&[2, 3, 7, 9], u(-1.0, 1.0))], |o, v| {
        let a = o.max_pool2d(&v[0], 2);
        let b = o.max_pool2d(&v[0], 3);
        o.add(&o.sum_all(&o.mul(&a, &a)), &o.sum_all(&b))
    })
}

fn cross_entropy_mean() -> Case {
    case!(
        [leaf(&[5, 7], u(-3.0, 3.0)), constant(&[5], Gen::Labels(7))],
        |o, v| o.mean_all(&o.cross_entropy(&v[0], &v[1]))
    )
}

fn kl_div_both_arguments() -> Case {
    case!(
        [leaf(&[4, 6], u(-3.0, 3.0)), leaf(&[4, 6], u(-3.0, 3.0))],
        |o, v| { o.kl_div(&v[0], &v[1]) }
    )
}

fn cw_loss_margins() -> Case {
    // κ = 1 with logits in [−3, 3]: some rows' margins are active, some are not.
    case!(
        [leaf(&[8, 5], u(-3.0, 3.0)), constant(&[8], Gen::Labels(5))],
        |o, v| o.cw_loss(&v[0], &v[1], 1.0)
    )
}

fn batch_norm_train_4d() -> Case {
    case!(
        [
            leaf(&[3, 2, 3, 4], u(-1.0, 1.0)),
            leaf(&[2], u(0.5, 1.5)),
            leaf(&[2], u(-0.5, 0.5))
        ],
        |o, v| o.batch_norm_train(&v[0], &v[1], &v[2], 1e-5)
    )
}

fn batch_norm_train_2d() -> Case {
    case!(
        [
            leaf(&[6, 3], u(-1.0, 1.0)),
            leaf(&[3], u(0.5, 1.5)),
            leaf(&[3], u(-0.5, 0.5))
        ],
        |o, v| o.batch_norm_train(&v[0], &v[1], &v[2], 1e-3)
    )
}

fn batch_norm_eval_running_stats() -> Case {
    case!(
        [
            leaf(&[2, 3, 2, 3], u(-1.0, 1.0)),
            leaf(&[3], u(0.5, 1.5)),
            leaf(&[3], u(-0.5, 0.5)),
            constant(&[3], u(-0.3, 0.3)),
            constant(&[3], u(0.2, 2.0))
        ],
        |o, v| o.batch_norm_eval(&v[0], &v[1], &v[2], &v[3], &v[4], 1e-5)
    )
}

fn batch_norm_act_train_relu() -> Case {
    case!(
        [
            leaf(&[3, 2, 3, 4], u(-1.0, 1.0)),
            leaf(&[2], u(0.5, 1.5)),
            leaf(&[2], u(-0.5, 0.5))
        ],
        |o, v| o.batch_norm_act_train(&v[0], &v[1], &v[2], 1e-5, Activation::Relu)
    )
}

fn batch_norm_act_train_leaky() -> Case {
    case!(
        [
            leaf(&[6, 3], u(-1.0, 1.0)),
            leaf(&[3], u(0.5, 1.5)),
            leaf(&[3], u(-0.5, 0.5))
        ],
        |o, v| o.batch_norm_act_train(&v[0], &v[1], &v[2], 1e-3, Activation::LeakyRelu(0.1))
    )
}

fn batch_norm_act_eval_relu_and_leaky() -> Case {
    case!(
        [
            leaf(&[2, 3, 2, 3], u(-1.0, 1.0)),
            leaf(&[3], u(0.5, 1.5)),
            leaf(&[3], u(-0.5, 0.5)),
            constant(&[3], u(-0.3, 0.3)),
            constant(&[3], u(0.2, 2.0))
        ],
        |o, v| {
            let a =
                o.batch_norm_act_eval(&v[0], &v[1], &v[2], &v[3], &v[4], 1e-5, Activation::Relu);
            let leaky = Activation::LeakyRelu(0.1);
            let b = o.batch_norm_act_eval(&v[0], &v[1], &v[2], &v[3], &v[4], 1e-5, leaky);
            o.mul(&a, &b)
        }
    )
}

fn small_cnn_end_to_end() -> Case {
    // The MNIST network in miniature: conv-ReLU-pool, flatten, linear, batch norm over the
    // batch of 4, ReLU, linear with bias, cross-entropy, mean.
    case!(
        [
            leaf(&[4, 1, 6, 6], u(0.0, 1.0)),
            leaf(&[2, 1, 3, 3], u(-1.0, 1.0)),
            leaf(&[2], u(-0.2, 0.2)),
            leaf(&[5, 18], u(-0.5, 0.5)),
            leaf(&[3], u(-0.5, 0.5)),
            leaf(&[5], u(0.5, 1.5)),
            leaf(&[5], u(-0.5, 0.5)),
            leaf(&[3, 5], u(-1.0, 1.0)),
            constant(&[4], Gen::Labels(3))
        ],
        |o, v| {
            let h = o.conv2d_relu_max_pool2d(&v[0], &v[1], Some(&v[2]), 1, 1, 2);
            // No bias before batch norm (it would cancel): the bias is on the last layer.
            let h = o.linear(&o.flatten(&h), &v[3], None);
            let h = o.relu(&o.batch_norm_train(&h, &v[5], &v[6], 1e-5));
            let z = o.linear(&h, &v[7], Some(&v[4]));
            o.mean_all(&o.cross_entropy(&z, &v[8]))
        }
    )
}

fn backward_with_seed() -> Case {
    // A non-scalar output seeded with the weights through `Graph::backward_with`.
    case!(seeded [leaf(&[3, 4], u(-1.0, 1.0)), leaf(&[4, 2], u(-1.0, 1.0))], |o, v| {
        let y = o.matmul(&v[0], &v[1], false, false);
        o.mul(&y, &y)
    })
}

/// One `#[test]` per case, and the list of all cases for the coverage test.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod fd {
            $(
                #[test]
                fn $name() {
                    super::run(stringify!($name), &super::$name());
                }
            )*
        }

        fn all_cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), $name())),*]
        }
    };
}

cases!(
    add_broadcast,
    add_scalar_and_same_leaf_twice,
    sub_broadcast,
    mul_broadcast_and_square,
    div_broadcast,
    div_by_self_used_value,
    maximum_broadcast,
    affine_and_sqrt,
    relu_of_a_leaf_and_of_a_product,
    leaky_relu_slopes,
    reshape_flatten_sum_axes,
    sum_all_mean_all,
    rank9_closure_fallbacks,
    matmul_all_transposes,
    linear_with_and_without_bias,
    conv2d_bias_stride_padding,
    conv2d_mnist_kernel_no_bias,
    conv2d_add_residual,
    conv2d_relu_fused,
    conv2d_relu_max_pool2d_fused,
    conv2d_relu_max_pool2d_no_bias_window3,
    max_pool2d_windows,
    cross_entropy_mean,
    kl_div_both_arguments,
    cw_loss_margins,
    batch_norm_train_4d,
    batch_norm_train_2d,
    batch_norm_eval_running_stats,
    batch_norm_act_train_relu,
    batch_norm_act_train_leaky,
    batch_norm_act_eval_relu_and_leaky,
    small_cnn_end_to_end,
    backward_with_seed,
);

/// Public methods of `Graph` that record no operation with a backward rule.
const NOT_DIFFERENTIABLE: [&str; 10] = [
    "new",
    "no_grad",
    "backend",
    "grad_enabled",
    "len",
    "is_empty",
    "input",
    "leaf",
    "value",
    "dims",
];

/// The public methods of `impl<B: Backend> Graph<B>` in `src/lib.rs`.
fn graph_methods() -> BTreeSet<String> {
    let src = include_str!("../src/lib.rs");
    let start = src
        .find("impl<B: Backend> Graph<B> {")
        .expect("src/lib.rs has `impl<B: Backend> Graph<B> {`");
    // The block ends at the first line that is exactly `}` after its start.
    let body = &src[start..];
    let end = body.find("\n}\n").expect("the impl block ends");
    body[..end]
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub fn "))
        .map(|l| l.split(['(', '<']).next().unwrap_or("").to_string())
        .collect()
}

/// Every public method of `Graph` is either called by some case (so its rule is checked by
/// finite differences) or listed in [`NOT_DIFFERENTIABLE`]; a new differentiable operation
/// added without a case here fails this test.
#[test]
fn every_public_operation_is_covered() {
    let methods = graph_methods();
    assert!(
        methods.len() > 20 && methods.contains("conv2d") && methods.contains("backward"),
        "could not read Graph's methods from src/lib.rs: {methods:?}"
    );
    // Which `Graph` methods the cases call: build every case on a graph (no backward pass).
    let mut used = BTreeSet::new();
    let b = Cpu::new();
    for (name, case) in all_cases() {
        let mut rng = SplitMix64::new(seed_of(name));
        let go = GraphOps::new();
        let vars: Vec<Var> = case
            .inputs
            .iter()
            .map(|i| {
                let t = b.from_vec(&i.shape, draw(&mut rng, i)).unwrap();
                if i.diff {
                    go.g.leaf(t)
                } else {
                    go.g.input(t)
                }
            })
            .collect();
        let _ = (case.graph)(&go, &vars);
        used.extend(go.used.into_inner());
        used.insert(if case.seeded {
            "backward_with"
        } else {
            "backward"
        });
        if !case.seeded {
            // `run` reduces Σ c ⊙ y with these two.
            used.extend(["mul", "sum_all"]);
        }
    }
    let missing: Vec<&String> = methods
        .iter()
        .filter(|m| !used.contains(m.as_str()) && !NOT_DIFFERENTIABLE.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "Graph methods with no finite-difference case: {missing:?}"
    );
    let stale: Vec<&&str> = NOT_DIFFERENTIABLE
        .iter()
        .filter(|m| !methods.contains(**m))
        .collect();
    assert!(stale.is_empty(), "listed but not in Graph: {stale:?}");
}

/// The harness itself rejects a wrong gradient: the graph computes `x·x₀` with `x₀` a constant
/// copy of `x` — the same values as the reference's `x·x`, so the forward check passes — whose
/// backpropagated gradient `x₀·c` is half the true `2·x·c`, as a rule that forgot one parent's
/// term would give. `run` must fail on it, naming the finite differences.
#[test]
fn a_wrong_rule_is_caught() {
    fn graph(o: &GraphOps, v: &[Var]) -> Var {
        let x0 = o.g.input(o.g.value(v[0]));
        o.mul(&v[0], &x0)
    }
    fn reference(o: &RefOps, v: &[RefTensor]) -> RefTensor {
        o.mul(&v[0], &v[0])
    }
    let case = Case {
        inputs: vec![leaf(&[3, 4], m(0.5, 1.0))],
        graph,
        reference,
        seeded: false,
    };
    let r = std::panic::catch_unwind(|| run("a_wrong_rule_is_caught", &case));
    let msg = r.expect_err("a gradient missing half its terms was accepted");
    let msg = msg
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "(non-string panic)".into());
    assert!(msg.contains("finite differences"), "{msg}");
}
