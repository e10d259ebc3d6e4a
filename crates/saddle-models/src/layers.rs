//! Layers that networks are composed of.
//!
//! A layer holds the indices of its tensors in its model's [`ParamSet`], where they are named by
//! PyTorch's `state_dict` keys (`block1.layer.0.bn1.running_mean`); it is built through a
//! [`Builder`], which names, initialises and registers those tensors, and records its forward
//! pass through a [`Ctx`], which turns tensors into graph variables, collects the trainable ones
//! (so that gradients are paired with parameters by index, that is by name) and the state
//! updates of training mode. A new architecture is a composition of these in one file; it
//! touches neither the backends nor autograd.
//!
//! ```
//! use saddle_autograd::Graph;
//! use saddle_models::layers::{Builder, Ctx, Init, Linear};
//! use saddle_models::ParamSet;
//! use saddle_tensor::{cpu::Cpu, rng::Rng, Backend, TensorLike};
//! let b = Cpu::new();
//! let (mut params, mut rng) = (ParamSet::new(), Rng::new(1));
//! let fc = Linear::new(&mut Builder::new(&b, &mut params, &mut rng), "fc", 4, 2, Init::Uniform(0.5), Some(Init::Zeros)).unwrap();
//! assert_eq!(params.names(), ["fc.weight", "fc.bias"]);
//! let g = Graph::new(b);
//! let mut cx = Ctx::new(&g, &params, true, false);
//! let x = g.input(b.full(&[3, 4], 1.0).unwrap());
//! let y = fc.forward(&mut cx, x).unwrap();
//! let f = cx.finish(y);
//! assert_eq!(g.value(f.logits).dims(), &[3, 2]);
//! assert_eq!(f.params.len(), 2); // both tensors are trainable leaves
//! ```

use saddle_autograd::{Graph, Var};
use saddle_tensor::rng::{Normal, Rng, Uniform};
use saddle_tensor::{Activation, ArrayExt, Backend, Conv2dParams, TensorLike};

use crate::error::{ModelError, Result};
use crate::params::{ParamSet, Role};
use crate::{Forward, ParamVars};

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// `U(−bound, bound)` (PyTorch's default for linear and convolution layers is
    /// `bound = 1/√fan_in`).
    Uniform(f32),
    /// `N(0, std²)` (He initialisation `std = √(2/(k·k·c_out))` in both CIFAR-10 codes).
    Normal(f32),
}

/// Registers a model's tensors under their names, with their roles and initial values.
#[derive(Debug)]
pub struct Builder<'a, B: Backend> {
    backend: &'a B,
    params: &'a mut ParamSet<B>,
    rng: &'a mut Rng,
}

impl<'a, B: Backend> Builder<'a, B> {
    /// A builder adding to `params`, drawing initial values from `rng`.
    pub fn new(backend: &'a B, params: &'a mut ParamSet<B>, rng: &'a mut Rng) -> Self {
        Builder {
            backend,
            params,
            rng,
        }
    }

    /// Adds the tensor `name` and returns its index.
    ///
    /// # Errors
    /// A name given twice, or a backend error.
    pub fn tensor(&mut self, name: &str, shape: &[usize], role: Role, init: Init) -> Result<usize> {
        let n = saddle_tensor::shape::checked_numel("init", shape)?;
        // Random initial values are drawn as host arrays through `ndarray_rand` with the
        // model's seeded generator: the same values, bit for bit, as `rng.uniform(-b, b)` /
        // `s * rng.normal()` called element by element in row-major order.
        let t = match init {
            Init::Zeros => self.backend.from_vec(shape, vec![0.0; n])?,
            Init::Ones => self.backend.from_vec(shape, vec![1.0; n])?,
            Init::Uniform(b) => {
                let a = self.rng.array(shape, Uniform::new(-b, b));
                self.backend.from_array(&a)?
            }
            Init::Normal(s) => {
                let a = self.rng.array(shape, Normal::new(s));
                self.backend.from_array(&a)?
            }
        };
        self.params.push_with(name, t, role)
    }

    /// Adds `NAME.weight` of `shape` (a [`Role::Weight`]) and, with `bias_init`, `NAME.bias` of
    /// `[shape[0]]`; returns their indices.
    ///
    /// # Errors
    /// A name given twice, or a backend error.
    pub fn weight_and_bias(
        &mut self,
        name: &str,
        shape: &[usize],
        weight_init: Init,
        bias_init: Option<Init>,
    ) -> Result<(usize, Option<usize>)> {
        let w = self.tensor(&format!("{name}.weight"), shape, Role::Weight, weight_init)?;
        let b = bias_init
            .map(|init| self.tensor(&format!("{name}.bias"), &shape[..1], Role::Param, init))
            .transpose()?;
        Ok((w, b))
    }
}

/// The recording of one forward pass: the graph, the model's tensors, the mode, and what the
/// pass collects (trainable variables, state updates).
#[derive(Debug)]
pub struct Ctx<'g, B: Backend> {
    /// The graph the pass is recorded on.
    pub g: &'g Graph<B>,
    set: &'g ParamSet<B>,
    grads: bool,
    training: bool,
    params: ParamVars,
    state: ParamVars,
}

impl<'g, B: Backend> Ctx<'g, B> {
    /// A pass over `set`'s tensors on `g`; with `grads`, trainable tensors become leaves that
    /// receive gradients; `training` selects batch statistics for batch norm.
    pub fn new(g: &'g Graph<B>, set: &'g ParamSet<B>, grads: bool, training: bool) -> Self {
        Ctx {
            g,
            set,
            grads,
            training,
            params: ParamVars::empty(),
            state: ParamVars::empty(),
        }
    }

    /// Whether the pass runs in training mode.
    pub fn training(&self) -> bool {
        self.training
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        self.g.backend()
    }

    /// The current value of tensor `i`.
    pub fn tensor(&self, i: usize) -> &B::Tensor {
        &self.set.tensors()[i]
    }

    /// Tensor `i` as a variable: a leaf that receives a gradient if it is trainable and the pass
    /// wants parameter gradients, a constant otherwise.
    pub fn param(&mut self, i: usize) -> Var {
        let t = self.set.tensors()[i].clone();
        if self.grads && self.set.role(i).trainable() {
            let v = self.g.leaf(t);
            self.params.push(i, v);
            v
        } else {
            self.g.input(t)
        }
    }

    /// Records the new value of state tensor `i`, to be written by
    /// [`crate::Classifier::commit_state`].
    pub fn update_state(&mut self, i: usize, value: B::Tensor) {
        let v = self.g.input(value);
        self.state.push(i, v);
    }

    /// The finished pass.
    pub fn finish(self, logits: Var) -> Forward {
        Forward {
            logits,
            params: self.params,
            state: self.state,
        }
    }
}

/// A 2-D convolution (PyTorch's `Conv2d`), weight `[c_out, c_in, k, k]`, optional bias.
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    /// Index of `NAME.weight`.
    pub weight: usize,
    /// Index of `NAME.bias`, if the layer has one.
    pub bias: Option<usize>,
    /// Stride and padding.
    pub conv: Conv2dParams,
}

impl Conv2d {
    /// Registers `NAME.weight` `[cout, cin, k, k]` (and `NAME.bias` `[cout]` if `bias_init`).
    ///
    /// # Errors
    /// A name given twice, or a stride of 0.
    pub fn new<B: Backend>(
        b: &mut Builder<'_, B>,
        name: &str,
        [cout, cin, k]: [usize; 3],
        conv: Conv2dParams,
        weight_init: Init,
        bias_init: Option<Init>,
    ) -> Result<Self> {
        if conv.stride == 0 || k == 0 {
            return Err(ModelError::Config(format!(
                "{name}: stride and kernel size must be at least 1"
            )));
        }
        let (weight, bias) = b.weight_and_bias(name, &[cout, cin, k, k], weight_init, bias_init)?;
        Ok(Conv2d { weight, bias, conv })
    }

    /// `conv(x)`.
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        let w = cx.param(self.weight);
        let b = self.bias.map(|i| cx.param(i));
        Ok(cx.g.conv2d(x, w, b, self.conv)?)
    }

    /// `conv(x) + residual(cx)` as one node (a residual connection: the backend may make the
    /// sum in the convolution's output pass), with the values and gradients of the two in
    /// sequence. The layer's parameters are taken before `residual` runs, so the forward pass
    /// lists its parameter leaves in the same order as `forward` then the residual would.
    pub fn forward_add<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        x: Var,
        residual: impl FnOnce(&mut Ctx<'_, B>) -> Result<Var>,
    ) -> Result<Var> {
        let w = cx.param(self.weight);
        let b = self.bias.map(|i| cx.param(i));
        let r = residual(cx)?;
        Ok(cx.g.conv2d_add(x, w, b, self.conv, r)?)
    }

    /// `max_pool(relu(conv(x)))` as one fused node (the MNIST network's stages).
    pub fn forward_relu_max_pool<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        x: Var,
        size: usize,
    ) -> Result<Var> {
        let w = cx.param(self.weight);
        let b = self.bias.map(|i| cx.param(i));
        Ok(cx.g.conv2d_relu_max_pool2d(x, w, b, self.conv, size)?)
    }
}

/// A fully connected layer (PyTorch's `Linear`), weight `[out, in]`, bias `[out]`.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    /// Index of `NAME.weight`.
    pub weight: usize,
    /// Index of `NAME.bias`, if the layer has one.
    pub bias: Option<usize>,
}

impl Linear {
    /// Registers `NAME.weight` `[out, in]` (and `NAME.bias` `[out]` if `bias_init`).
    ///
    /// # Errors
    /// A name given twice.
    pub fn new<B: Backend>(
        b: &mut Builder<'_, B>,
        name: &str,
        inputs: usize,
        outputs: usize,
        weight_init: Init,
        bias_init: Option<Init>,
    ) -> Result<Self> {
        let (weight, bias) = b.weight_and_bias(name, &[outputs, inputs], weight_init, bias_init)?;
        Ok(Linear { weight, bias })
    }

    /// `x·Wᵀ + b` for `x` `[n, in]`.
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        let w = cx.param(self.weight);
        let b = self.bias.map(|i| cx.param(i));
        Ok(cx.g.linear(x, w, b)?)
    }
}

/// Batch normalisation over the channels of `[n, c, h, w]` with `torch.nn.BatchNorm2d`'s
/// semantics: in training mode, the batch's mean and biased variance normalise, and the running
/// statistics move by `momentum` towards the batch mean and the **unbiased** batch variance
/// (`num_batches_tracked` counts the updates); in evaluation mode, the running statistics
/// normalise.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm2d {
    /// Index of `NAME.weight` (γ).
    pub weight: usize,
    /// Index of `NAME.bias` (β).
    pub bias: usize,
    /// Index of `NAME.running_mean`.
    pub running_mean: usize,
    /// Index of `NAME.running_var`.
    pub running_var: usize,
    /// Index of `NAME.num_batches_tracked`.
    pub num_batches_tracked: usize,
    /// Added to the variance (PyTorch's default 1e-5; 1e-3 in MadryLab's TensorFlow model).
    pub eps: f32,
    /// Weight of the batch in the running statistics' update (PyTorch's default 0.1).
    pub momentum: f32,
}

impl BatchNorm2d {
    /// Registers γ = 1, β = 0, running mean 0, running variance 1 and a count of 0 for `c`
    /// channels, momentum 0.1.
    ///
    /// # Errors
    /// A name given twice, or `eps` not positive.
    pub fn new<B: Backend>(b: &mut Builder<'_, B>, name: &str, c: usize, eps: f32) -> Result<Self> {
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(ModelError::Config(format!(
                "{name}: batch-norm epsilon {eps} must be positive"
            )));
        }
        Ok(BatchNorm2d {
            weight: b.tensor(&format!("{name}.weight"), &[c], Role::Param, Init::Ones)?,
            bias: b.tensor(&format!("{name}.bias"), &[c], Role::Param, Init::Zeros)?,
            running_mean: b.tensor(
                &format!("{name}.running_mean"),
                &[c],
                Role::State,
                Init::Zeros,
            )?,
            running_var: b.tensor(
                &format!("{name}.running_var"),
                &[c],
                Role::State,
                Init::Ones,
            )?,
            num_batches_tracked: b.tensor(
                &format!("{name}.num_batches_tracked"),
                &[1],
                Role::Counter,
                Init::Zeros,
            )?,
            eps,
            momentum: 0.1,
        })
    }

    /// Normalises `x` in the context's mode; in training mode, records the running statistics'
    /// update.
    ///
    /// # Errors
    /// In training mode, a batch with one value per channel (the unbiased variance is then
    /// undefined; PyTorch refuses it too).
    pub fn forward<B: Backend>(&self, cx: &mut Ctx<'_, B>, x: Var) -> Result<Var> {
        self.forward_with(cx, x, None)
    }

    /// [`BatchNorm2d::forward`] followed by `act`, in one backend op: the same values and
    /// gradients bit for bit as the two in sequence, one pass over the output fewer.
    ///
    /// # Errors
    /// As [`BatchNorm2d::forward`]; a negative leaky slope.
    pub fn forward_act<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        x: Var,
        act: Activation,
    ) -> Result<Var> {
        self.forward_with(cx, x, Some(act))
    }

    fn forward_with<B: Backend>(
        &self,
        cx: &mut Ctx<'_, B>,
        x: Var,
        act: Option<Activation>,
    ) -> Result<Var> {
        let gamma = cx.param(self.weight);
        let beta = cx.param(self.bias);
        if !cx.training() {
            let (m, v) = (cx.tensor(self.running_mean), cx.tensor(self.running_var));
            return Ok(match act {
                None => cx.g.batch_norm_eval(x, gamma, beta, m, v, self.eps)?,
                Some(a) => {
                    cx.g.batch_norm_act_eval(x, gamma, beta, m, v, self.eps, a)?
                }
            });
        }
        let dims = cx.g.dims(x);
        let count: usize = dims
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 1)
            .map(|(_, d)| d)
            .product();
        if count < 2 {
            return Err(ModelError::Config(format!(
                "batch norm in training mode needs more than one value per channel, got input {dims:?}"
            )));
        }
        let (y, stats) = match act {
            None => cx.g.batch_norm_train(x, gamma, beta, self.eps)?,
            Some(a) => cx.g.batch_norm_act_train(x, gamma, beta, self.eps, a)?,
        };
        let be = cx.backend().clone();
        let m = self.momentum;
        let unbias = count as f32 / (count - 1) as f32;
        let mean = be.add(
            &be.affine(cx.tensor(self.running_mean), 1.0 - m, 0.0)?,
            &be.affine(&stats.mean, m, 0.0)?,
        )?;
        let var = be.add(
            &be.affine(cx.tensor(self.running_var), 1.0 - m, 0.0)?,
            &be.affine(&stats.var, m * unbias, 0.0)?,
        )?;
        let tracked = be.affine(cx.tensor(self.num_batches_tracked), 1.0, 1.0)?;
        cx.update_state(self.running_mean, mean);
        cx.update_state(self.running_var, var);
        cx.update_state(self.num_batches_tracked, tracked);
        Ok(y)
    }
}

/// Average pooling with window and stride `stride` followed by zero-padding the channels from
/// `cin` to `cout` (`(cout − cin)/2` zero channels on each side): the shortcut of MadryLab's wide
/// ResNet (`tf.nn.avg_pool` + `tf.pad`). Both are one fixed, non-trainable convolution, whose
/// weight is `1/stride²` from input channel `i` to output channel `i + (cout − cin)/2` and 0
/// elsewhere, so the layer needs no operation of its own from the backends.
#[derive(Clone, Debug)]
pub struct AvgPoolPadChannels<T> {
    weight: T,
    stride: usize,
}

impl<T: TensorLike> AvgPoolPadChannels<T> {
    /// The layer for `cin → cout` channels (`cout − cin` even and not negative) and `stride`.
    ///
    /// # Errors
    /// An odd or negative channel difference, or a stride of 0.
    pub fn new<B: Backend<Tensor = T>>(
        backend: &B,
        cin: usize,
        cout: usize,
        stride: usize,
    ) -> Result<Self> {
        if cout < cin || !(cout - cin).is_multiple_of(2) || stride == 0 {
            return Err(ModelError::Config(format!(
                "channel padding {cin} → {cout} with stride {stride}: the difference must be even \
                 and not negative, the stride at least 1"
            )));
        }
        let pad = (cout - cin) / 2;
        let k2 = stride * stride;
        let mut w = vec![0.0f32; cout * cin * k2];
        for i in 0..cin {
            let o = i + pad;
            w[(o * cin + i) * k2..(o * cin + i + 1) * k2].fill(1.0 / k2 as f32);
        }
        Ok(AvgPoolPadChannels {
            weight: backend.from_vec(&[cout, cin, stride, stride], w)?,
            stride,
        })
    }

    /// The pooled and padded `x`.
    pub fn forward<B: Backend<Tensor = T>>(&self, g: &Graph<B>, x: Var) -> Result<Var> {
        let w = g.input(self.weight.clone());
        let p = Conv2dParams {
            stride: self.stride,
            padding: 0,
        };
        Ok(g.conv2d(x, w, None, p)?)
    }
}

/// The mean over the spatial axes: `[n, c, h, w] → [n, c]`.
///
/// # Errors
/// An input that is not 4-D.
pub fn global_avg_pool<B: Backend>(g: &Graph<B>, x: Var) -> Result<Var> {
    let d = g.dims(x);
    if d.len() != 4 || d[2] * d[3] == 0 {
        return Err(ModelError::Config(format!(
            "global average pooling takes a non-empty [n, c, h, w], not {d:?}"
        )));
    }
    let s = g.sum_axes(x, &[2, 3], false)?;
    Ok(g.affine(s, 1.0 / (d[2] * d[3]) as f32, 0.0)?)
}

/// TensorFlow's `per_image_standardization`: each image minus its mean, divided by
/// `max(std, 1/√numel)` (biased standard deviation over all its values), as the first layer of
/// MadryLab's CIFAR-10 model. The clamp is taken on the variance (`√max(var, 1/numel)`, the
/// same value), so a constant image gets a finite gradient.
///
/// # Errors
/// An input that is not 4-D.
pub fn per_image_standardization<B: Backend>(g: &Graph<B>, x: Var) -> Result<Var> {
    let d = g.dims(x);
    if d.len() != 4 {
        return Err(ModelError::Config(format!(
            "per-image standardisation takes [n, c, h, w], not {d:?}"
        )));
    }
    let numel = (d[1] * d[2] * d[3]).max(1) as f32;
    let mean = g.affine(g.sum_axes(x, &[1, 2, 3], true)?, 1.0 / numel, 0.0)?;
    let centred = g.sub(x, mean)?;
    let sq = g.mul(centred, centred)?;
    let var = g.affine(g.sum_axes(sq, &[1, 2, 3], true)?, 1.0 / numel, 0.0)?;
    let floor = g.input(g.backend().full(&[1, 1, 1, 1], 1.0 / numel)?);
    let std = g.sqrt(g.maximum(var, floor)?)?;
    Ok(g.div(centred, std)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_tensor::cpu::Cpu;

    /// The initial values are those of the element-by-element draws the builder made before it
    /// drew arrays through `ndarray_rand` (trained results and golden tests depend on them).
    #[test]
    fn initial_values_are_the_scalar_draws_bit_for_bit() {
        let b = Cpu::new();
        let (mut params, mut rng) = (ParamSet::new(), Rng::new(2018));
        let mut legacy = rng.clone();
        let mut bld = Builder::new(&b, &mut params, &mut rng);
        let shapes: [(&str, &[usize], Init); 5] = [
            ("conv.weight", &[4, 1, 5, 5], Init::Uniform(0.2)),
            ("conv.bias", &[4], Init::Uniform(0.2)),
            ("bn.weight", &[4], Init::Ones),
            ("fc.weight", &[10, 36], Init::Normal(0.05)),
            ("fc.bias", &[10], Init::Zeros),
        ];
        for (name, shape, init) in shapes {
            bld.tensor(name, shape, Role::Param, init).unwrap();
        }
        for (i, (_, shape, init)) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let want: Vec<f32> = match *init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Uniform(bd) => (0..n).map(|_| legacy.uniform(-bd, bd)).collect(),
                Init::Normal(s) => (0..n).map(|_| s * legacy.normal()).collect(),
            };
            let got = b.to_vec(&params.tensors()[i]).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{}", shapes[i].0);
        }
        assert_eq!(
            rng, legacy,
            "the generator ends where the scalar draws leave it"
        );
    }

    #[test]
    fn a_shape_too_large_is_an_error() {
        let b = Cpu::new();
        let (mut params, mut rng) = (ParamSet::new(), Rng::new(1));
        let mut bld = Builder::new(&b, &mut params, &mut rng);
        assert!(bld
            .tensor("w", &[usize::MAX, 2], Role::Weight, Init::Uniform(1.0))
            .is_err());
    }
}
