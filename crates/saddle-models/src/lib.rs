//! # saddle-models
//!
//! Layers, the paper's networks and their weights in safetensors with PyTorch's names and
//! layouts.
//!
//! - [`Classifier`]: maps a batch in `[0, 1]` to logits and records its forward pass on a
//!   [`Graph`], so that gradients with respect to the input (attacks) or the parameters
//!   (training) come from one mechanism. Normalisation lives inside the model: attacks always
//!   work in pixel space.
//! - [`layers`]: what networks are composed of (convolution, batch norm with running
//!   statistics, linear, the wide ResNets' shortcuts and pooling), each holding the indices of
//!   its named tensors in the model's [`ParamSet`].
//! - [`MnistNet`]: the MNIST network of Madry et al. (2018), with the capacity scale of the
//!   paper's appendix; [`WideResNet`]: the CIFAR-10 wide ResNets (`wrn-madry-D-W`, `wrn-D-W`).
//! - [`arch`]: the registry of networks by name ([`Arch`]) and [`Model`], any of them, loaded
//!   from a file by its `arch` metadata or by the name a caller gives.
//! - [`ParamSet`]: ordered named tensors with a [`Role`] each (trainable with or without weight
//!   decay, state, counter), with safetensors (de)serialisation.
//!
//! ```
//! use saddle_models::{Classifier, MnistNet};
//! use saddle_tensor::{cpu::Cpu, Backend, TensorLike};
//! let b = Cpu::new();
//! let net = MnistNet::new(b, 1, 7).unwrap(); // scale 1: 2 and 4 filters, fc 64
//! let x = b.full(&[3, 1, 28, 28], 0.5).unwrap();
//! let logits = net.logits(&x).unwrap();
//! assert_eq!(logits.dims(), &[3, 10]);
//! ```
//!
//! **Invariants**: no I/O here; weights come in and go out as bytes. A malformed or mismatched
//! weight file is a [`ModelError`] naming the tensor, never a panic.

/// The `Classifier` accessors every network of this crate implements alike, from its fields
/// `backend`, `params` and `training`.
macro_rules! module_accessors {
    () => {
        fn backend(&self) -> &B {
            &self.backend
        }
        fn params(&self) -> &ParamSet<B> {
            &self.params
        }
        fn params_mut(&mut self) -> &mut ParamSet<B> {
            &mut self.params
        }
        fn is_training(&self) -> bool {
            self.training
        }
        fn set_training(&mut self, training: bool) {
            self.training = training;
        }
    };
}

pub mod arch;
pub mod error;
pub mod layers;
pub mod mnist;
pub mod params;
pub mod wrn;

pub use arch::{Arch, Model};
pub use error::{ModelError, Result};
pub use mnist::MnistNet;
pub use params::{ParamSet, Role};
pub use wrn::WideResNet;

use saddle_autograd::{Graph, Var};
use saddle_tensor::{Backend, TensorLike};

/// The loss an attack maximises or training minimises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy.
    CrossEntropy,
    /// The CW margin loss of MadryLab's `mnist_challenge`, `−relu(z_y − max_{j≠y} z_j + κ)`.
    Cw {
        /// Confidence margin κ (50 in the challenge code).
        kappa: f32,
    },
}

impl Loss {
    /// Per-example loss values `[n]` of `logits` against `labels` recorded on `g`.
    pub fn per_example<B: Backend>(
        &self,
        g: &Graph<B>,
        logits: Var,
        labels: &B::Tensor,
    ) -> Result<Var> {
        Ok(match *self {
            Loss::CrossEntropy => g.cross_entropy(logits, labels)?,
            Loss::Cw { kappa } => g.cw_loss(logits, labels, kappa)?,
        })
    }
}

/// A forward pass recorded on a graph.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The logits `[n, classes]`.
    pub logits: Var,
    /// `(index in the model's ParamSet, variable)` for every trainable tensor, when the forward
    /// pass was recorded with `param_grads`; empty otherwise. Gradients are paired with
    /// parameters through this index (a name in the [`ParamSet`]), never by position.
    pub params: ParamVars,
    /// `(index in the model's ParamSet, new value)` of the state a training-mode forward pass
    /// updates (batch norm's running statistics and counters); empty in evaluation mode.
    /// [`Classifier::commit_state`] writes them into the model.
    pub state: ParamVars,
}

/// `(ParamSet index, variable)` pairs: a slice (through `Deref`) kept inline for up to
/// [`ParamVars::INLINE`] entries, so that a training step of a small network allocates nothing
/// for it.
#[derive(Clone, Debug)]
pub struct ParamVars {
    inline: [(usize, Var); ParamVars::INLINE],
    len: usize,
    heap: Vec<(usize, Var)>,
}

impl ParamVars {
    /// Entries held without a heap allocation.
    pub const INLINE: usize = 16;

    /// No entries.
    pub fn empty() -> Self {
        ParamVars {
            inline: [(0, Var::default()); ParamVars::INLINE],
            len: 0,
            heap: Vec::new(),
        }
    }

    /// The entries of `vars`, in order.
    pub fn from_slice(vars: &[(usize, Var)]) -> Self {
        let mut p = ParamVars::empty();
        for &v in vars {
            p.push(v.0, v.1);
        }
        p
    }

    /// Appends an entry.
    pub fn push(&mut self, index: usize, var: Var) {
        if self.len < Self::INLINE {
            self.inline[self.len] = (index, var);
        } else {
            if self.len == Self::INLINE {
                self.heap.extend_from_slice(&self.inline);
            }
            self.heap.push((index, var));
        }
        self.len += 1;
    }
}

impl std::ops::Deref for ParamVars {
    type Target = [(usize, Var)];
    fn deref(&self) -> &[(usize, Var)] {
        if self.len <= Self::INLINE {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

impl<'a> IntoIterator for &'a ParamVars {
    type Item = &'a (usize, Var);
    type IntoIter = std::slice::Iter<'a, (usize, Var)>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A model mapping images in `[0, 1]` to logits.
pub trait Classifier<B: Backend> {
    /// The backend the model's tensors live on.
    fn backend(&self) -> &B;

    /// Number of classes.
    fn num_classes(&self) -> usize;

    /// Shape of one input image `[c, h, w]`.
    fn input_shape(&self) -> [usize; 3];

    /// The parameters and state, named as in PyTorch's `state_dict`, each with its
    /// [`params::Role`].
    fn params(&self) -> &ParamSet<B>;

    /// Mutable parameters and state (for optimisers and loading).
    fn params_mut(&mut self) -> &mut ParamSet<B>;

    /// Whether the model is in training mode (batch statistics for batch norm, whose running
    /// statistics a forward pass then updates).
    fn is_training(&self) -> bool;

    /// Switches between training and evaluation mode.
    fn set_training(&mut self, training: bool);

    /// Writes the state updates of a forward pass recorded on `g` ([`Forward::state`]) into the
    /// model: what `torch.nn.BatchNorm2d` does in place during a training-mode forward pass.
    /// A forward pass whose state is not committed leaves the model unchanged.
    ///
    /// # Errors
    /// An index that is not a state tensor of this model, or a new value of another shape.
    fn commit_state(&mut self, g: &Graph<B>, f: &Forward) -> Result<()> {
        let set = self.params_mut();
        for &(i, v) in &f.state {
            let t = g.value(v);
            if i >= set.len() || set.role(i).trainable() || set.tensors()[i].dims() != t.dims() {
                return Err(ModelError::Config(format!(
                    "state update {i} with shape {:?} does not fit the model's state",
                    t.dims()
                )));
            }
            set.tensors_mut()[i] = t;
        }
        Ok(())
    }

    /// Key-value metadata describing the architecture (for example `arch` and `scale`), stored
    /// with the weights so that a file says what it holds.
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        std::collections::HashMap::new()
    }

    /// Records the forward pass of `x` on `g`. With `param_grads` the parameters are leaves that
    /// receive gradients; otherwise they are constants and no parameter gradient is computed.
    fn forward(&self, g: &Graph<B>, x: Var, param_grads: bool) -> Result<Forward>;

    /// The weights as safetensors bytes, with PyTorch's names and layouts and
    /// [`Classifier::metadata`].
    fn to_safetensors(&self) -> Result<Vec<u8>> {
        let tensors = self.params().to_host(self.backend(), "")?;
        params::serialize_safetensors(&tensors, self.metadata())
    }

    /// Logits of a batch, without recording gradients.
    fn logits(&self, x: &B::Tensor) -> Result<B::Tensor> {
        let g = Graph::no_grad(self.backend().clone());
        let xv = g.input(x.clone());
        let f = self.forward(&g, xv, false)?;
        Ok(g.value(f.logits))
    }

    /// Checks that `x` is a batch of this model's inputs.
    fn check_input(&self, x: &B::Tensor) -> Result<()> {
        let s = self.input_shape();
        let d = x.dims();
        if d.len() != 4 || d[1..] != s {
            return Err(ModelError::Tensor(saddle_tensor::TensorError::shape(
                "model input",
                format!(
                    "expected a batch [n, {}, {}, {}], got {d:?}",
                    s[0], s[1], s[2]
                ),
            )));
        }
        Ok(())
    }
}

/// Per-example losses `[n]` and the gradient of their **sum** with respect to the input, with
/// the parameters held constant (the inner step of every gradient attack). The model runs in
/// the mode it is in; in training mode its state is not updated (the forward pass's state
/// updates are dropped).
pub fn loss_and_input_grad<B: Backend, M: Classifier<B> + ?Sized>(
    model: &M,
    x: &B::Tensor,
    labels: &B::Tensor,
    loss: Loss,
) -> Result<(B::Tensor, B::Tensor, B::Tensor)> {
    let g = Graph::new(model.backend().clone());
    let xv = g.leaf(x.clone());
    let f = model.forward(&g, xv, false)?;
    let per = loss.per_example(&g, f.logits, labels)?;
    let total = g.sum_all(per)?;
    let mut grads = g.backward(total)?;
    let gx = grads.take(xv).ok_or_else(|| {
        ModelError::Tensor(saddle_tensor::TensorError::invalid(
            "input gradient",
            "no gradient reached the input",
        ))
    })?;
    Ok((g.value(per), gx, g.value(f.logits)))
}

/// Argmax of each row of a row-major `[n, k]` matrix (first maximum on ties, as PyTorch).
pub fn argmax_rows(logits: &[f32], k: usize) -> Vec<usize> {
    logits
        .chunks(k.max(1))
        .map(|row| first_extreme(row, |a, b| a > b))
        .collect()
}

/// Argmin of each row (first minimum on ties).
pub fn argmin_rows(logits: &[f32], k: usize) -> Vec<usize> {
    logits
        .chunks(k.max(1))
        .map(|row| first_extreme(row, |a, b| a < b))
        .collect()
}

fn first_extreme(row: &[f32], better: impl Fn(f32, f32) -> bool) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate().skip(1) {
        if better(v, row[best]) || row[best].is_nan() && !v.is_nan() {
            best = j;
        }
    }
    best
}
