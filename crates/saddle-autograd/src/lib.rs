//! # saddle-autograd
//!
//! Reverse-mode automatic differentiation over any [`Backend`]: a define-by-run [`Graph`] records
//! each operation with its backward rule, written right beside its forward computation. The same
//! machinery gives gradients with respect to inputs (attacks) and to parameters (training):
//! whatever was registered with [`Graph::leaf`] gets a gradient, and nothing else is computed
//! (an attack registers the input as a leaf and the weights as constants, so no weight gradient
//! is ever formed).
//!
//! ```
//! use saddle_autograd::Graph;
//! use saddle_tensor::{cpu::Cpu, Backend};
//! let b = Cpu::new();
//! let g = Graph::new(b);
//! // f(x) = sum(relu(x) * 3): df/dx = 3 where x > 0, else 0.
//! let x = g.leaf(b.from_vec(&[3], vec![-1.0, 2.0, 0.5]).unwrap());
//! let y = g.affine(g.relu(x).unwrap(), 3.0, 0.0).unwrap();
//! let loss = g.sum_all(y).unwrap();
//! let grads = g.backward(loss).unwrap();
//! assert_eq!(b.to_vec(grads.get(x).unwrap()).unwrap(), vec![0.0, 3.0, 3.0]);
//! ```
//!
//! **Invariants**: a graph's nodes are stored in creation order, which is a topological order, so
//! the backward pass is a single reverse sweep. A node keeps a backward rule only if one of its
//! parents needs a gradient; in a no-grad graph ([`Graph::no_grad`]) no rule is ever kept.

use std::cell::RefCell;
use std::mem::ManuallyDrop;

use saddle_tensor::backend::activation_grad_from_output;
use saddle_tensor::{
    Activation, Backend, BatchNormStats, Conv2dParams, Result, TensorError, TensorLike,
};

/// A handle to a value recorded in a [`Graph`]. Cheap to copy; only meaningful for its graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Var(usize);

impl Var {
    /// The node's position in its graph.
    pub fn index(self) -> usize {
        self.0
    }
}

type Tensor<B> = <B as Backend>::Tensor;
/// A backward rule: given the gradient of the node's output, the gradients of its parents.
type BackwardFn<B> = Box<dyn Fn(&B, &Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>>>;

/// A small shape stored inline (the backward rules keep shapes without allocating).
#[derive(Clone, Copy, Debug)]
struct Shape {
    n: u8,
    d: [usize; 8],
}

impl Shape {
    fn of(s: &[usize]) -> Option<Self> {
        (s.len() <= 8).then(|| {
            let mut d = [0; 8];
            d[..s.len()].copy_from_slice(s);
            Shape {
                n: s.len() as u8,
                d,
            }
        })
    }
    fn get(&self) -> &[usize] {
        &self.d[..self.n as usize]
    }
}

/// How a node passes its output gradient to its parents. The rules of the operations a
/// classifier's forward pass and loss use are plain data (no allocation per node); the others
/// are boxed closures.
enum Rule<B: Backend> {
    Closure(BackwardFn<B>),
    /// Broadcasting `a + b`: parents' gradients summed to their shapes.
    Add {
        a: Option<(Var, Shape)>,
        b: Option<(Var, Shape)>,
    },
    /// `op(a)·op(b)`.
    Matmul {
        a: Option<Var>,
        b: Option<Var>,
        va: Tensor<B>,
        vb: Tensor<B>,
        ta: bool,
        tb: bool,
    },
    Relu {
        x: Var,
        vx: Tensor<B>,
    },
    Reshape {
        x: Var,
        old: Shape,
    },
    Affine {
        x: Var,
        s: f32,
    },
    /// Sum over axes: the gradient (reshaped to the kept-dims shape) broadcast back.
    SumAxes {
        x: Var,
        old: Shape,
        kept: Shape,
    },
    CrossEntropy {
        z: Var,
        vz: Tensor<B>,
        labels: Tensor<B>,
    },
    CwLoss {
        z: Var,
        vz: Tensor<B>,
        labels: Tensor<B>,
        kappa: f32,
    },
    /// `max_pool2d(relu(conv2d(x, w, bias)))` (`size` = 0: no pool), with the ReLU output `z`.
    ConvRelu {
        x: Option<Var>,
        w: Option<Var>,
        bias: Option<Var>,
        vx: Tensor<B>,
        vw: Tensor<B>,
        z: Tensor<B>,
        p: Conv2dParams,
        size: usize,
    },
}

/// Up to three parent gradients, without allocating.
struct Out<B: Backend> {
    items: [Option<(Var, Tensor<B>)>; 3],
    boxed: Vec<(Var, Tensor<B>)>,
}

impl<B: Backend> Out<B> {
    fn new() -> Self {
        Out {
            items: [None, None, None],
            boxed: Vec::new(),
        }
    }
    fn push(&mut self, v: Var, t: Tensor<B>) {
        match self.items.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some((v, t)),
            None => self.boxed.push((v, t)),
        }
    }
    fn drain(&mut self) -> impl Iterator<Item = (Var, Tensor<B>)> + '_ {
        self.items
            .iter_mut()
            .filter_map(|s| s.take())
            .chain(self.boxed.drain(..))
    }
}

impl<B: Backend> Rule<B> {
    fn run(&self, be: &B, gy: &Tensor<B>, out: &mut Out<B>) -> Result<()> {
        match self {
            Rule::Closure(f) => {
                for (v, t) in f(be, gy)? {
                    out.push(v, t);
                }
            }
            Rule::Add { a, b } => {
                for (v, s) in [a, b].into_iter().flatten() {
                    out.push(*v, be.sum_to_shape(gy, s.get())?);
                }
            }
            Rule::Matmul {
                a,
                b,
                va,
                vb,
                ta,
                tb,
            } => {
                let (ta, tb) = (*ta, *tb);
                if let Some(a) = a {
                    let ga = if ta {
                        be.matmul(vb, gy, tb, true)?
                    } else {
                        be.matmul(gy, vb, false, !tb)?
                    };
                    out.push(*a, ga);
                }
                if let Some(b) = b {
                    let gb = if tb {
                        be.matmul(gy, va, true, ta)?
                    } else {
                        be.matmul(va, gy, !ta, false)?
                    };
                    out.push(*b, gb);
                }
            }
            Rule::Relu { x, vx } => out.push(*x, be.relu_backward(vx, gy)?),
            Rule::Reshape { x, old } => out.push(*x, be.reshape(gy, old.get())?),
            Rule::Affine { x, s } => out.push(*x, be.affine(gy, *s, 0.0)?),
            Rule::SumAxes { x, old, kept } => {
                let g = be.reshape(gy, kept.get())?;
                let ones = be.full(old.get(), 1.0)?;
                out.push(*x, be.mul(&ones, &g)?);
            }
            Rule::CrossEntropy { z, vz, labels } => {
                out.push(*z, be.cross_entropy_backward(vz, labels, gy)?)
            }
            Rule::CwLoss {
                z,
                vz,
                labels,
                kappa,
            } => out.push(*z, be.cw_loss_backward(vz, labels, *kappa, gy)?),
            Rule::ConvRelu {
                x,
                w,
                bias,
                vx,
                vw,
                z,
                p,
                size,
            } => {
                let gz = if *size == 0 {
                    be.relu_backward(z, gy)?
                } else {
                    be.relu_max_pool2d_backward(z, gy, *size)?
                };
                if let Some(x) = x {
                    out.push(*x, be.conv2d_backward_input(&gz, vw, vx.dims(), *p)?);
                }
                if let Some(w) = w {
                    out.push(*w, be.conv2d_backward_weight(vx, &gz, vw.dims(), *p)?);
                }
                if let Some(b) = bias {
                    out.push(*b, be.sum_axes(&gz, &[0, 2, 3], false)?);
                }
            }
        }
        Ok(())
    }
}

struct Node<B: Backend> {
    value: Tensor<B>,
    requires_grad: bool,
    backward: Option<Rule<B>>,
}

thread_local! {
    /// Emptied node and gradient vectors of dropped graphs, by type, for the next graph on this
    /// thread: a loop that builds one graph per step stops allocating after its first step.
    static SPARE: RefCell<Vec<Box<dyn std::any::Any>>> = const { RefCell::new(Vec::new()) };
}

/// A vector from the spare list (or a new one).
// Boxed vectors: a `Box<Vec<T>>` becomes the spare list's `Box<dyn Any>` without allocating.
#[allow(clippy::box_collection)]
fn spare_vec<T: 'static>() -> Box<Vec<T>> {
    SPARE
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let i = s.iter().position(|b| b.is::<Vec<T>>())?;
            s.swap_remove(i).downcast::<Vec<T>>().ok()
        })
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Returns an emptied vector to the spare list (at most 16 are kept per thread).
// Boxed vectors: a `Box<Vec<T>>` becomes the spare list's `Box<dyn Any>` without allocating.
#[allow(clippy::box_collection)]
fn give_vec<T: 'static>(mut v: Box<Vec<T>>) {
    v.clear();
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < 16 {
                s.push(v);
            }
        }
    });
}

/// A tape of operations over backend `B`.
// Boxed vectors: a `Box<Vec<T>>` becomes the spare list's `Box<dyn Any>` without allocating.
#[allow(clippy::box_collection)]
pub struct Graph<B: Backend> {
    backend: B,
    nodes: RefCell<ManuallyDrop<Box<Vec<Node<B>>>>>,
    grad_enabled: bool,
}

impl<B: Backend> Drop for Graph<B> {
    fn drop(&mut self) {
        // SAFETY: the field is not used after this.
        let nodes = unsafe { ManuallyDrop::take(self.nodes.get_mut()) };
        give_vec(nodes);
    }
}

impl<B: Backend> std::fmt::Debug for Graph<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("backend", &self.backend.name())
            .field("nodes", &self.nodes.borrow().len())
            .field("grad_enabled", &self.grad_enabled)
            .finish()
    }
}

/// Gradients of a backward pass, for the leaves of the graph.
#[derive(Debug)]
// Boxed vectors: a `Box<Vec<T>>` becomes the spare list's `Box<dyn Any>` without allocating.
#[allow(clippy::box_collection)]
pub struct Grads<B: Backend> {
    grads: ManuallyDrop<Box<Vec<Option<Tensor<B>>>>>,
}

impl<B: Backend> Drop for Grads<B> {
    fn drop(&mut self) {
        // SAFETY: the field is not used after this.
        give_vec(unsafe { ManuallyDrop::take(&mut self.grads) });
    }
}

impl<B: Backend> Grads<B> {
    /// The gradient of the loss with respect to `v`, if `v` is a leaf that the loss depends on.
    pub fn get(&self, v: Var) -> Option<&Tensor<B>> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Takes the gradient out, leaving `None`.
    pub fn take(&mut self, v: Var) -> Option<Tensor<B>> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }
}

impl<B: Backend> Graph<B> {
    /// A graph that records operations for a backward pass.
    pub fn new(backend: B) -> Self {
        Graph {
            backend,
            nodes: RefCell::new(ManuallyDrop::new(spare_vec())),
            grad_enabled: true,
        }
    }

    /// A graph that records nothing: for evaluation. [`Graph::backward`] on it is an error.
    pub fn no_grad(backend: B) -> Self {
        Graph {
            backend,
            nodes: RefCell::new(ManuallyDrop::new(spare_vec())),
            grad_enabled: false,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether operations are recorded.
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, value: Tensor<B>, requires_grad: bool, backward: Option<Rule<B>>) -> Var {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            value,
            requires_grad,
            backward,
        });
        Var(nodes.len() - 1)
    }

    /// A constant: no gradient flows to it.
    pub fn input(&self, value: Tensor<B>) -> Var {
        self.push(value, false, None)
    }

    /// A leaf that receives a gradient (a parameter, or an input being attacked).
    pub fn leaf(&self, value: Tensor<B>) -> Var {
        self.push(value, self.grad_enabled, None)
    }

    /// The value of `v` (a cheap clone on backends whose tensors share buffers).
    pub fn value(&self, v: Var) -> Tensor<B> {
        self.nodes.borrow()[v.0].value.clone()
    }

    /// The shape of `v`.
    pub fn dims(&self, v: Var) -> Vec<usize> {
        self.nodes.borrow()[v.0].value.dims().to_vec()
    }

    fn requires_grad(&self, v: Var) -> bool {
        self.nodes.borrow()[v.0].requires_grad
    }

    /// Whether a node with these parents records a backward rule.
    fn tracks(&self, parents: &[Var]) -> bool {
        self.grad_enabled && parents.iter().any(|&p| self.requires_grad(p))
    }

    /// Records `value`; its backward rule `bw` is kept only if some parent needs a gradient.
    fn record(
        &self,
        value: Tensor<B>,
        parents: &[Var],
        bw: impl Fn(&B, &Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> + 'static,
    ) -> Var {
        if self.tracks(parents) {
            self.push(value, true, Some(Rule::Closure(Box::new(bw))))
        } else {
            self.push(value, false, None)
        }
    }

    /// Records `value` with a data rule, built only if some parent needs a gradient.
    fn record_rule(
        &self,
        value: Tensor<B>,
        parents: &[Var],
        rule: impl FnOnce() -> Rule<B>,
    ) -> Var {
        if self.tracks(parents) {
            self.push(value, true, Some(rule()))
        } else {
            self.push(value, false, None)
        }
    }

    /// `Some(v)` if `v` needs a gradient.
    fn wants(&self, v: Var) -> Option<Var> {
        self.requires_grad(v).then_some(v)
    }

    /// Runs the backward pass from the scalar `loss` (a tensor of one element).
    ///
    /// # Errors
    /// If the graph records no gradients, or `loss` has more than one element.
    pub fn backward(&self, loss: Var) -> Result<Grads<B>> {
        let seed = {
            let nodes = self.nodes.borrow();
            let dims = nodes[loss.0].value.dims();
            if dims.iter().product::<usize>() != 1 {
                return Err(TensorError::shape(
                    "backward",
                    format!("the loss must have one element, not shape {dims:?}"),
                ));
            }
            self.backend.full(dims, 1.0)?
        };
        self.backward_with(loss, seed)
    }

    /// Runs the backward pass from `v` with the given output gradient (shaped like `v`).
    pub fn backward_with(&self, v: Var, seed: Tensor<B>) -> Result<Grads<B>> {
        if !self.grad_enabled {
            return Err(TensorError::invalid(
                "backward",
                "this graph was built without gradients",
            ));
        }
        let nodes = self.nodes.borrow();
        if seed.dims() != nodes[v.0].value.dims() {
            return Err(TensorError::shape(
                "backward",
                format!(
                    "seed {:?} for a value of shape {:?}",
                    seed.dims(),
                    nodes[v.0].value.dims()
                ),
            ));
        }
        let mut grads: Box<Vec<Option<Tensor<B>>>> = spare_vec();
        grads.resize_with(nodes.len(), || None);
        grads[v.0] = Some(seed);
        let mut out = Out::new();
        for i in (0..=v.0).rev() {
            let node = &nodes[i];
            let Some(bw) = node.backward.as_ref() else {
                continue;
            };
            let Some(gy) = grads[i].take() else { continue };
            bw.run(&self.backend, &gy, &mut out)?;
            drop(gy);
            for (p, gp) in out.drain() {
                if !nodes[p.0].requires_grad {
                    continue;
                }
                grads[p.0] = Some(match grads[p.0].take() {
                    None => gp,
                    Some(acc) => self.backend.add(&acc, &gp)?,
                });
            }
        }
        // Keep leaf gradients only.
        for (i, g) in grads.iter_mut().enumerate() {
            if nodes[i].backward.is_some() {
                *g = None;
            }
        }
        Ok(Grads {
            grads: ManuallyDrop::new(grads),
        })
    }

    // ---- element-wise ----------------------------------------------------------------------

    /// `a + b` with broadcasting.
    pub fn add(&self, a: Var, b: Var) -> Result<Var> {
        let (va, vb) = (self.value(a), self.value(b));
        let y = self.backend.add(&va, &vb)?;
        if let (Some(sa), Some(sb)) = (Shape::of(va.dims()), Shape::of(vb.dims())) {
            return Ok(self.record_rule(y, &[a, b], || Rule::Add {
                a: self.wants(a).map(|a| (a, sa)),
                b: self.wants(b).map(|b| (b, sb)),
            }));
        }
        let (sa, sb) = (va.dims().to_vec(), vb.dims().to_vec());
        let (ra, rb) = (self.requires_grad(a), self.requires_grad(b));
        Ok(self.record(y, &[a, b], move |be, gy| {
            let mut out = Vec::new();
            if ra {
                out.push((a, be.sum_to_shape(gy, &sa)?));
            }
            if rb {
                out.push((b, be.sum_to_shape(gy, &sb)?));
            }
            Ok(out)
        }))
    }

    /// `a − b` with broadcasting.
    pub fn sub(&self, a: Var, b: Var) -> Result<Var> {
        let (va, vb) = (self.value(a), self.value(b));
        let y = self.backend.sub(&va, &vb)?;
        let (sa, sb) = (va.dims().to_vec(), vb.dims().to_vec());
        let (ra, rb) = (self.requires_grad(a), self.requires_grad(b));
        Ok(self.record(y, &[a, b], move |be, gy| {
            let mut out = Vec::new();
            if ra {
                out.push((a, be.sum_to_shape(gy, &sa)?));
            }
            if rb {
                out.push((b, be.sum_to_shape(&be.affine(gy, -1.0, 0.0)?, &sb)?));
            }
            Ok(out)
        }))
    }

    /// `a · b` with broadcasting. d/da = gy·b, d/db = gy·a.
    pub fn mul(&self, a: Var, b: Var) -> Result<Var> {
        let (va, vb) = (self.value(a), self.value(b));
        let y = self.backend.mul(&va, &vb)?;
        let (ra, rb) = (self.requires_grad(a), self.requires_grad(b));
        Ok(self.record(y, &[a, b], move |be, gy| {
            let mut out = Vec::new();
            if ra {
                out.push((a, be.sum_to_shape(&be.mul(gy, &vb)?, va.dims())?));
            }
            if rb {
                out.push((b, be.sum_to_shape(&be.mul(gy, &va)?, vb.dims())?));
            }
            Ok(out)
        }))
    }

    /// `a / b` with broadcasting. d/da = gy/b, d/db = −gy·a/b².
    pub fn div(&self, a: Var, b: Var) -> Result<Var> {
        let (va, vb) = (self.value(a), self.value(b));
        let y = self.backend.div(&va, &vb)?;
        let (ra, rb) = (self.requires_grad(a), self.requires_grad(b));
        let yv = y.clone();
        Ok(self.record(y, &[a, b], move |be, gy| {
            let mut out = Vec::new();
            let gyb = be.div(gy, &vb)?;
            if rb {
                let gb = be.affine(&be.mul(&gyb, &yv)?, -1.0, 0.0)?;
                out.push((b, be.sum_to_shape(&gb, vb.dims())?));
            }
            if ra {
                out.push((a, be.sum_to_shape(&gyb, va.dims())?));
            }
            Ok(out)
        }))
    }

    /// Element-wise maximum with broadcasting; the gradient goes to `a` where `a ≥ b`, else to `b`.
    pub fn maximum(&self, a: Var, b: Var) -> Result<Var> {
        let (va, vb) = (self.value(a), self.value(b));
        let y = self.backend.maximum(&va, &vb)?;
        let (ra, rb) = (self.requires_grad(a), self.requires_grad(b));
        Ok(self.record(y, &[a, b], move |be, gy| {
            // mask_a = 1 where a >= b: sign(a − b) is in {−1, 0, 1}; (sign + 1)/2 rounded up.
            let d = be.sign(&be.sub(&va, &vb)?)?;
            let mask_a = be.clamp(&be.affine(&d, 1.0, 1.0)?, 0.0, 1.0)?;
            let mut out = Vec::new();
            if ra {
                out.push((a, be.sum_to_shape(&be.mul(gy, &mask_a)?, va.dims())?));
            }
            if rb {
                let mask_b = be.affine(&mask_a, -1.0, 1.0)?;
                out.push((b, be.sum_to_shape(&be.mul(gy, &mask_b)?, vb.dims())?));
            }
            Ok(out)
        }))
    }

    /// `s · x + t`.
    pub fn affine(&self, x: Var, s: f32, t: f32) -> Result<Var> {
        let y = self.backend.affine(&self.value(x), s, t)?;
        Ok(self.record_rule(y, &[x], || Rule::Affine { x, s }))
    }

    /// `sqrt(x)`; d/dx = gy / (2·sqrt(x)).
    pub fn sqrt(&self, x: Var) -> Result<Var> {
        let y = self.backend.sqrt(&self.value(x))?;
        let yv = y.clone();
        Ok(self.record(y, &[x], move |be, gy| {
            Ok(vec![(x, be.div(gy, &be.affine(&yv, 2.0, 0.0)?)?)])
        }))
    }

    /// `max(x, 0)`.
    pub fn relu(&self, x: Var) -> Result<Var> {
        let vx = self.value(x);
        let y = self.backend.relu(&vx)?;
        Ok(self.record_rule(y, &[x], || Rule::Relu { x, vx }))
    }

    /// Leaky ReLU with `slope` for negative inputs.
    pub fn leaky_relu(&self, x: Var, slope: f32) -> Result<Var> {
        let vx = self.value(x);
        let y = self.backend.leaky_relu(&vx, slope)?;
        Ok(self.record(y, &[x], move |be, gy| {
            Ok(vec![(x, be.leaky_relu_backward(&vx, gy, slope)?)])
        }))
    }

    // ---- shapes and reductions -------------------------------------------------------------

    /// The same values under another shape.
    pub fn reshape(&self, x: Var, shape: &[usize]) -> Result<Var> {
        let vx = self.value(x);
        let y = self.backend.reshape(&vx, shape)?;
        if let Some(old) = Shape::of(vx.dims()) {
            return Ok(self.record_rule(y, &[x], || Rule::Reshape { x, old }));
        }
        let old = vx.dims().to_vec();
        Ok(self.record(y, &[x], move |be, gy| Ok(vec![(x, be.reshape(gy, &old)?)])))
    }

    /// Flattens all axes but the first: `[n, ...] → [n, prod(...)]` (PyTorch's `flatten(1)`).
    pub fn flatten(&self, x: Var) -> Result<Var> {
        let (n, rest) = {
            let nodes = self.nodes.borrow();
            let d = nodes[x.0].value.dims();
            let n = *d
                .first()
                .ok_or_else(|| TensorError::shape("flatten", "scalar input"))?;
            (n, d[1..].iter().product())
        };
        self.reshape(x, &[n, rest])
    }

    /// Sum over `axes`; the gradient is broadcast back.
    pub fn sum_axes(&self, x: Var, axes: &[usize], keep_dims: bool) -> Result<Var> {
        let vx = self.value(x);
        let y = self.backend.sum_axes(&vx, axes, true)?;
        if let (Some(old), Some(kept)) = (Shape::of(vx.dims()), Shape::of(y.dims())) {
            let y = if keep_dims {
                y
            } else {
                let mut s = [0usize; 8];
                let mut n = 0;
                for (i, &d) in old.get().iter().enumerate() {
                    if !axes.contains(&i) {
                        s[n] = d;
                        n += 1;
                    }
                }
                self.backend.reshape(&y, &s[..n])?
            };
            return Ok(self.record_rule(y, &[x], || Rule::SumAxes { x, old, kept }));
        }
        let old = vx.dims().to_vec();
        let kept = y.dims().to_vec();
        let y = if keep_dims {
            y
        } else {
            let s: Vec<usize> = old
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect();
            self.backend.reshape(&y, &s)?
        };
        Ok(self.record(y, &[x], move |be, gy| {
            let g = be.reshape(gy, &kept)?;
            let ones = be.full(&old, 1.0)?;
            Ok(vec![(x, be.mul(&ones, &g)?)])
        }))
    }

    /// Sum of all elements, shape `[]`.
    pub fn sum_all(&self, x: Var) -> Result<Var> {
        let rank = self.nodes.borrow()[x.0].value.dims().len();
        if rank <= 8 {
            let axes = [0, 1, 2, 3, 4, 5, 6, 7];
            return self.sum_axes(x, &axes[..rank], false);
        }
        let axes: Vec<usize> = (0..rank).collect();
        self.sum_axes(x, &axes, false)
    }

    /// Mean of all elements, shape `[]`.
    pub fn mean_all(&self, x: Var) -> Result<Var> {
        let n = self.nodes.borrow()[x.0]
            .value
            .dims()
            .iter()
            .product::<usize>()
            .max(1);
        let s = self.sum_all(x)?;
        self.affine(s, 1.0 / n as f32, 0.0)
    }

    // ---- linear algebra --------------------------------------------------------------------

    /// `op(a)·op(b)` for 2-D operands.
    /// With `C = A·B`: dA = dC·Bᵀ, dB = Aᵀ·dC (and the transposed variants).
    pub fn matmul(&self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
        let (va, vb) = (self.value(a), self.value(b));
        let y = self.backend.matmul(&va, &vb, ta, tb)?;
        Ok(self.record_rule(y, &[a, b], || Rule::Matmul {
            a: self.wants(a),
            b: self.wants(b),
            va,
            vb,
            ta,
            tb,
        }))
    }

    /// A linear layer in PyTorch's layout: `x·wᵀ + bias`, with `w` `[out, in]`.
    pub fn linear(&self, x: Var, w: Var, bias: Option<Var>) -> Result<Var> {
        let y = self.matmul(x, w, false, true)?;
        match bias {
            Some(b) => self.add(y, b),
            None => Ok(y),
        }
    }

    /// 2-D convolution of `x` `[n, c, h, w]` with `w` `[k, c, kh, kw]` plus `bias` `[k]`.
    pub fn conv2d(&self, x: Var, w: Var, bias: Option<Var>, p: Conv2dParams) -> Result<Var> {
        self.conv_node(x, w, bias, p, None)
    }

    /// `conv2d(x, w, bias) + residual` as one node (the backend may make the sum in the
    /// convolution's output pass): the same values and gradients as [`Graph::conv2d`] then
    /// [`Graph::add`], the residual's gradient being the output's.
    pub fn conv2d_add(
        &self,
        x: Var,
        w: Var,
        bias: Option<Var>,
        p: Conv2dParams,
        residual: Var,
    ) -> Result<Var> {
        self.conv_node(x, w, bias, p, Some(residual))
    }

    /// A convolution node, plus `residual` if given.
    fn conv_node(
        &self,
        x: Var,
        w: Var,
        bias: Option<Var>,
        p: Conv2dParams,
        residual: Option<Var>,
    ) -> Result<Var> {
        let (vx, vw) = (self.value(x), self.value(w));
        let vb = bias.map(|b| self.value(b));
        let y = match residual {
            None => self.backend.conv2d(&vx, &vw, vb.as_ref(), p)?,
            Some(r) => self
                .backend
                .conv2d_add(&vx, &vw, vb.as_ref(), p, &self.value(r))?,
        };
        let (rx, rw) = (self.requires_grad(x), self.requires_grad(w));
        let rb = bias.filter(|&b| self.requires_grad(b));
        let rr = residual.filter(|&r| self.requires_grad(r));
        let mut parents = vec![x, w];
        parents.extend(residual);
        parents.extend(bias);
        Ok(self.record(y, &parents, move |be, gy| {
            let mut out = Vec::new();
            if rx {
                out.push((x, be.conv2d_backward_input(gy, &vw, vx.dims(), p)?));
            }
            if rw {
                out.push((w, be.conv2d_backward_weight(&vx, gy, vw.dims(), p)?));
            }
            if let Some(b) = rb {
                out.push((b, be.sum_axes(gy, &[0, 2, 3], false)?));
            }
            if let Some(r) = rr {
                out.push((r, gy.clone()));
            }
            Ok(out)
        }))
    }

    /// `relu(conv2d(x, w, bias))` as one node (the backend fuses the ReLU into the convolution's
    /// output). The ReLU's gradient needs only the output: `z > 0` exactly where `relu(z) > 0`.
    pub fn conv2d_relu(&self, x: Var, w: Var, bias: Option<Var>, p: Conv2dParams) -> Result<Var> {
        self.conv_relu(x, w, bias, p, 0)
    }

    /// `max_pool2d(relu(conv2d(x, w, bias)), size)` as one node: the convolution with its ReLU
    /// fused, then the pool; backward routes each window's gradient to its maximum only where
    /// that maximum is positive, in one pass.
    pub fn conv2d_relu_max_pool2d(
        &self,
        x: Var,
        w: Var,
        bias: Option<Var>,
        p: Conv2dParams,
        size: usize,
    ) -> Result<Var> {
        if size == 0 {
            return Err(TensorError::invalid(
                "max_pool2d",
                "window size must be at least 1",
            ));
        }
        self.conv_relu(x, w, bias, p, size)
    }

    fn conv_relu(
        &self,
        x: Var,
        w: Var,
        bias: Option<Var>,
        p: Conv2dParams,
        size: usize,
    ) -> Result<Var> {
        let (vx, vw) = (self.value(x), self.value(w));
        let vb = bias.map(|b| self.value(b));
        let z = self.backend.conv2d_relu(&vx, &vw, vb.as_ref(), p)?;
        let y = if size == 0 {
            z.clone()
        } else {
            self.backend.max_pool2d(&z, size)?
        };
        let parents = [x, w, bias.unwrap_or(x)];
        Ok(
            self.record_rule(y, &parents[..2 + bias.is_some() as usize], || {
                Rule::ConvRelu {
                    x: self.wants(x),
                    w: self.wants(w),
                    bias: bias.and_then(|b| self.wants(b)),
                    vx,
                    vw,
                    z,
                    p,
                    size,
                }
            }),
        )
    }

    /// Max-pool with window and stride `size`.
    pub fn max_pool2d(&self, x: Var, size: usize) -> Result<Var> {
        let vx = self.value(x);
        let y = self.backend.max_pool2d(&vx, size)?;
        Ok(self.record(y, &[x], move |be, gy| {
            Ok(vec![(x, be.max_pool2d_backward(&vx, gy, size)?)])
        }))
    }

    // ---- losses ----------------------------------------------------------------------------

    /// Per-example cross-entropy of `logits` `[n, k]` against `labels` `[n]` (class indices as
    /// f32): shape `[n]`.
    pub fn cross_entropy(&self, logits: Var, labels: &Tensor<B>) -> Result<Var> {
        let vz = self.value(logits);
        let y = self.backend.cross_entropy(&vz, labels)?;
        Ok(self.record_rule(y, &[logits], || Rule::CrossEntropy {
            z: logits,
            vz,
            labels: labels.clone(),
        }))
    }

    /// Per-example `KL(softmax(p_i) ‖ softmax(q_i))` of logits `p`, `q` `[n, k]`: shape `[n]`
    /// (TRADES' robust loss, `p` the clean logits). Gradients reach both arguments.
    pub fn kl_div(&self, p: Var, q: Var) -> Result<Var> {
        let (vp, vq) = (self.value(p), self.value(q));
        let y = self.backend.kl_div(&vp, &vq)?;
        let (rp, rq) = (self.requires_grad(p), self.requires_grad(q));
        Ok(self.record(y, &[p, q], move |be, gy| {
            let (gp, gq) = be.kl_div_backward(&vp, &vq, gy)?;
            let mut out = Vec::new();
            if rp {
                out.push((p, gp));
            }
            if rq {
                out.push((q, gq));
            }
            Ok(out)
        }))
    }

    /// Per-example CW margin loss `−relu(z_y − max_{j≠y} z_j + κ)`: shape `[n]`.
    pub fn cw_loss(&self, logits: Var, labels: &Tensor<B>, kappa: f32) -> Result<Var> {
        let vz = self.value(logits);
        let y = self.backend.cw_loss(&vz, labels, kappa)?;
        Ok(self.record_rule(y, &[logits], || Rule::CwLoss {
            z: logits,
            vz,
            labels: labels.clone(),
            kappa,
        }))
    }

    // ---- batch normalisation ---------------------------------------------------------------

    /// Batch norm with batch statistics; returns the output and the statistics (for running
    /// averages).
    pub fn batch_norm_train(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        eps: f32,
    ) -> Result<(Var, BatchNormStats<Tensor<B>>)> {
        self.batch_norm_node(x, gamma, beta, eps, None)
    }

    /// Batch norm in training mode, then `act` if given, as one node.
    fn batch_norm_node(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        eps: f32,
        act: Option<Activation>,
    ) -> Result<(Var, BatchNormStats<Tensor<B>>)> {
        let (vx, vg, vb) = (self.value(x), self.value(gamma), self.value(beta));
        let (y, stats) = match act {
            None => self.backend.batch_norm_train(&vx, &vg, &vb, eps)?,
            Some(a) => self.backend.batch_norm_act_train(&vx, &vg, &vb, eps, a)?,
        };
        let (rx, rg, rb) = (
            self.requires_grad(x),
            self.requires_grad(gamma),
            self.requires_grad(beta),
        );
        // The activation's gradient is read from the output: kept only when there is one.
        let (st, vy) = (stats.clone(), act.map(|a| (a, y.clone())));
        let v = self.record(y, &[x, gamma, beta], move |be, gy| {
            let g = match &vy {
                None => be.batch_norm_train_backward(&vx, &vg, &st, gy, eps)?,
                Some((a, y)) => be.batch_norm_act_train_backward(&vx, &vg, &st, y, gy, eps, *a)?,
            };
            let mut out = Vec::new();
            if rx {
                out.push((x, g.x));
            }
            if rg {
                out.push((gamma, g.gamma));
            }
            if rb {
                out.push((beta, g.beta));
            }
            Ok(out)
        });
        Ok((v, stats))
    }

    /// Batch norm with fixed (running) statistics: an affine map per channel,
    /// `y = x·s + (beta − mean·s)` with `s = gamma/sqrt(var + eps)`.
    pub fn batch_norm_eval(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        mean: &Tensor<B>,
        var: &Tensor<B>,
        eps: f32,
    ) -> Result<Var> {
        let (vx, vg, vb) = (self.value(x), self.value(gamma), self.value(beta));
        let y = self
            .backend
            .batch_norm_eval(&vx, &vg, &vb, mean, var, eps)?;
        let (rx, rg, rb) = (
            self.requires_grad(x),
            self.requires_grad(gamma),
            self.requires_grad(beta),
        );
        let (mean, var) = (mean.clone(), var.clone());
        let want = [rx, rg, rb];
        Ok(self.record(y, &[x, gamma, beta], move |be, gy| {
            bn_eval_grads(be, [x, gamma, beta], want, &vx, &vg, &mean, &var, eps, gy)
        }))
    }

    /// `act(batch_norm_train(x))` in one backend op (the gradient read from the output); as
    /// [`Graph::batch_norm_train`], followed by [`Graph::relu`] or [`Graph::leaky_relu`], with
    /// the same values and gradients bit for bit, one pass and one stored tensor fewer.
    pub fn batch_norm_act_train(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        eps: f32,
        act: Activation,
    ) -> Result<(Var, BatchNormStats<Tensor<B>>)> {
        self.batch_norm_node(x, gamma, beta, eps, Some(act))
    }

    /// `act(batch_norm_eval(x))` in one backend op; as [`Graph::batch_norm_eval`] followed by
    /// the activation, bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_act_eval(
        &self,
        x: Var,
        gamma: Var,
        beta: Var,
        mean: &Tensor<B>,
        var: &Tensor<B>,
        eps: f32,
        act: Activation,
    ) -> Result<Var> {
        let (vx, vg, vb) = (self.value(x), self.value(gamma), self.value(beta));
        let y = self
            .backend
            .batch_norm_act_eval(&vx, &vg, &vb, mean, var, eps, act)?;
        let want = [
            self.requires_grad(x),
            self.requires_grad(gamma),
            self.requires_grad(beta),
        ];
        let (mean, var, vy) = (mean.clone(), var.clone(), y.clone());
        Ok(self.record(y, &[x, gamma, beta], move |be, gy| {
            let gz = activation_grad_from_output(be, &vy, gy, act)?;
            bn_eval_grads(be, [x, gamma, beta], want, &vx, &vg, &mean, &var, eps, &gz)
        }))
    }
}

/// Gradients of batch norm with fixed statistics (an affine map per channel,
/// `y = x·s + (beta − mean·s)`, `s = gamma/sqrt(var + eps)`) for the inputs `vars` whose
/// `want` is set, given the output gradient `gy`.
#[allow(clippy::too_many_arguments)]
fn bn_eval_grads<B: Backend>(
    be: &B,
    vars: [Var; 3],
    want: [bool; 3],
    vx: &Tensor<B>,
    vg: &Tensor<B>,
    mean: &Tensor<B>,
    var: &Tensor<B>,
    eps: f32,
    gy: &Tensor<B>,
) -> Result<Vec<(Var, Tensor<B>)>> {
    let [x, gamma, beta] = vars;
    let [rx, rg, rb] = want;
    let dims = vx.dims().to_vec();
    let c = dims[1];
    let mut bshape = vec![1usize; dims.len()];
    bshape[1] = c;
    let inv = be.reshape(
        &be.div(&be.full(&[c], 1.0)?, &be.sqrt(&be.affine(var, 1.0, eps)?)?)?,
        &bshape,
    )?;
    let red: Vec<usize> = (0..dims.len()).filter(|&i| i != 1).collect();
    let mut out = Vec::new();
    if rx {
        let s = be.mul(&inv, &be.reshape(vg, &bshape)?)?;
        out.push((x, be.mul(gy, &s)?));
    }
    if rg {
        let xhat = be.mul(&be.sub(vx, &be.reshape(mean, &bshape)?)?, &inv)?;
        out.push((gamma, be.sum_axes(&be.mul(gy, &xhat)?, &red, false)?));
    }
    if rb {
        out.push((beta, be.sum_axes(gy, &red, false)?));
    }
    Ok(out)
}
