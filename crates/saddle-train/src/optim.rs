//! Optimisers: Adam and SGD with momentum and weight decay, with PyTorch's update rules (the
//! update itself is the backend's fused `adam_update` / `sgd_update`).

use serde::{Deserialize, Serialize};

use saddle_models::{ParamSet, Role};
use saddle_tensor::{AdamParams, Backend, SgdParams, TensorLike};

use crate::error::{Result, TrainError};

/// Which optimiser, with its hyper-parameters (the learning rate comes from a schedule).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba 2015); defaults β₁ 0.9, β₂ 0.999, ε 1e-8 as in TensorFlow and PyTorch.
    Adam {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator offset.
        eps: f32,
    },
    /// SGD with momentum and coupled weight decay (PyTorch's `SGD`).
    Sgd {
        /// Momentum (0.9 in the paper's CIFAR-10 training).
        momentum: f32,
        /// Weight decay (2e-4 in the paper's CIFAR-10 training).
        weight_decay: f32,
    },
}

impl OptimizerKind {
    /// Adam with the usual defaults.
    pub fn adam() -> Self {
        OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            OptimizerKind::Adam { beta1, beta2, eps } => {
                (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0
            }
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => (0.0..1.0).contains(&momentum) && weight_decay >= 0.0 && weight_decay.is_finite(),
        };
        if ok {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "optimiser hyper-parameters out of range: {self:?}"
            )))
        }
    }

    fn slots(&self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Adam { .. } => &["adam.m", "adam.v"],
            OptimizerKind::Sgd { .. } => &["sgd.momentum"],
        }
    }
}

/// An optimiser and its state for each trainable tensor of a [`ParamSet`].
///
/// Gradients are paired with parameters by their index in the set (that is, by name), never by
/// position in a list; weight decay applies to [`Role::Weight`] tensors only (convolution and
/// linear weights, as the paper's code does), not to biases or batch-norm parameters; state
/// tensors (running statistics) are never touched.
#[derive(Clone, Debug)]
pub struct Optimizer<B: Backend> {
    kind: OptimizerKind,
    /// The trainable tensors' indices in the parameter set, in order.
    trainable: Vec<usize>,
    /// `slot_of[i]`: the position of set index `i` in `trainable`, if trainable.
    slot_of: Vec<Option<usize>>,
    /// `state[slot][position in trainable]`.
    state: Vec<Vec<B::Tensor>>,
    /// `seen[position]`: the update number that last received this tensor's gradient.
    seen: Vec<u64>,
    steps: u64,
}

impl<B: Backend> Optimizer<B> {
    /// A fresh optimiser (zero moments) for the trainable tensors of `params`.
    pub fn new(kind: OptimizerKind, backend: &B, params: &ParamSet<B>) -> Result<Self> {
        kind.validate()?;
        let trainable: Vec<usize> = params.trainable().collect();
        let mut slot_of = vec![None; params.len()];
        for (j, &i) in trainable.iter().enumerate() {
            slot_of[i] = Some(j);
        }
        let state = kind
            .slots()
            .iter()
            .map(|_| {
                trainable
                    .iter()
                    .map(|&i| backend.zeros(params.tensors()[i].dims()))
                    .collect()
            })
            .collect::<std::result::Result<Vec<Vec<_>>, _>>()?;
        Ok(Optimizer {
            kind,
            seen: vec![0; trainable.len()],
            trainable,
            slot_of,
            state,
            steps: 0,
        })
    }

    /// The optimiser's kind.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update at learning rate `lr` of every trainable tensor of `params`, each with the
    /// gradient `(index in params, gradient)` in `grads`.
    ///
    /// # Errors
    /// Before anything is changed: a gradient for a tensor that is not trainable or out of range,
    /// two gradients for one tensor, a trainable tensor without a gradient (named), or a shape
    /// mismatch.
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut ParamSet<B>,
        grads: &[(usize, B::Tensor)],
        lr: f32,
    ) -> Result<()> {
        if params.len() != self.slot_of.len() {
            return Err(TrainError::Config(format!(
                "the optimiser was made for {} tensors, the model has {}",
                self.slot_of.len(),
                params.len()
            )));
        }
        let stamp = self.steps + 1;
        for (i, g) in grads {
            let name = params.names().get(*i).map(String::as_str).unwrap_or("?");
            let j = self.slot_of.get(*i).copied().flatten().ok_or_else(|| {
                TrainError::Config(format!("a gradient for {name}, which is not trainable"))
            })?;
            if self.seen[j] == stamp {
                return Err(TrainError::Config(format!("two gradients for {name}")));
            }
            self.seen[j] = stamp;
            if g.dims() != params.tensors()[*i].dims() {
                return Err(TrainError::Config(format!(
                    "the gradient of {name} has shape {:?}, the tensor {:?}",
                    g.dims(),
                    params.tensors()[*i].dims()
                )));
            }
        }
        if let Some(j) = self.seen.iter().position(|&s| s != stamp) {
            return Err(TrainError::Config(format!(
                "the parameter {} got no gradient",
                params.names()[self.trainable[j]]
            )));
        }
        self.steps = stamp;
        let tensors = params.tensors_mut_with_roles();
        match self.kind {
            OptimizerKind::Adam { beta1, beta2, eps } => {
                let h = AdamParams {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    step: self.steps,
                };
                let (ms, vs) = self.state.split_at_mut(1);
                for (i, g) in grads {
                    let j = self.slot_of[*i].expect("checked above");
                    backend.adam_update(&mut tensors.0[*i], g, &mut ms[0][j], &mut vs[0][j], h)?;
                }
            }
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                for (i, g) in grads {
                    let j = self.slot_of[*i].expect("checked above");
                    let h = SgdParams {
                        lr,
                        momentum,
                        weight_decay: if tensors.1[*i] == Role::Weight {
                            weight_decay
                        } else {
                            0.0
                        },
                    };
                    backend.sgd_update(&mut tensors.0[*i], g, &mut self.state[0][j], h)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors `optim.<slot>.<param name>` for checkpoints.
    pub fn named_state<'a>(&'a self, names: &'a [String]) -> Vec<(String, &'a B::Tensor)> {
        let mut out = Vec::new();
        for (s, slot) in self.kind.slots().iter().enumerate() {
            for (j, &i) in self.trainable.iter().enumerate() {
                out.push((format!("optim.{slot}.{}", names[i]), &self.state[s][j]));
            }
        }
        out
    }

    /// Restores the state from named tensors (as written by [`Optimizer::named_state`]) and
    /// the number of updates taken.
    pub fn restore(
        &mut self,
        names: &[String],
        mut lookup: impl FnMut(&str, &[usize]) -> Result<B::Tensor>,
        steps: u64,
    ) -> Result<()> {
        for (s, slot) in self.kind.slots().iter().enumerate() {
            for (j, &i) in self.trainable.iter().enumerate() {
                let dims = self.state[s][j].dims().to_vec();
                self.state[s][j] = lookup(&format!("optim.{slot}.{}", names[i]), &dims)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_tensor::cpu::Cpu;

    fn one_param(b: &Cpu, v: Vec<f32>) -> ParamSet<Cpu> {
        let mut p = ParamSet::new();
        p.push_with("w", b.from_vec(&[v.len()], v).unwrap(), Role::Weight)
            .unwrap();
        p
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        // With bias correction, Adam's first update is lr · g/(|g| + eps') ≈ lr · sign(g).
        let b = Cpu::new();
        let mut p = one_param(&b, vec![1.0, 1.0, 1.0]);
        let mut opt = Optimizer::new(OptimizerKind::adam(), &b, &p).unwrap();
        let g = b.from_vec(&[3], vec![0.5, -2.0, 0.0]).unwrap();
        opt.step(&b, &mut p, &[(0, g)], 0.1).unwrap();
        let w = b.to_vec(&p.tensors()[0]).unwrap();
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6 && w[2] == 1.0,
            "{w:?}"
        );
    }

    #[test]
    fn adam_matches_a_hand_computed_second_step() {
        // g1 = 1, g2 = 3 on one weight, lr 0.01:
        // m1 = 0.1, v1 = 0.001; m2 = 0.09 + 0.3 = 0.39, v2 = 0.000999 + 0.009 = 0.009999
        // m̂2 = 0.39/0.19 = 2.0526315, v̂2 = 0.009999/0.001999 = 5.0020010, step = 0.01·m̂/(√v̂ + 1e-8)
        let b = Cpu::new();
        let mut p = one_param(&b, vec![0.0]);
        let mut opt = Optimizer::new(OptimizerKind::adam(), &b, &p).unwrap();
        opt.step(
            &b,
            &mut p,
            &[(0, b.from_vec(&[1], vec![1.0]).unwrap())],
            0.01,
        )
        .unwrap();
        opt.step(
            &b,
            &mut p,
            &[(0, b.from_vec(&[1], vec![3.0]).unwrap())],
            0.01,
        )
        .unwrap();
        let want = -0.01 - 0.01 * (0.39f64 / 0.19) / (0.009999f64 / 0.001999).sqrt();
        let got = b.to_vec(&p.tensors()[0]).unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn sgd_momentum_and_weight_decay_follow_pytorch() {
        // p = 1, g = 0.5, wd 0.1, momentum 0.9, lr 0.1:
        // step 1: d = 0.5 + 0.1 = 0.6, buf = 0.6, p = 1 − 0.06 = 0.94
        // step 2: d = 0.5 + 0.094 = 0.594, buf = 0.54 + 0.594 = 1.134, p = 0.94 − 0.1134 = 0.8266
        let b = Cpu::new();
        let mut p = one_param(&b, vec![1.0]);
        let kind = OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(kind, &b, &p).unwrap();
        for _ in 0..2 {
            opt.step(
                &b,
                &mut p,
                &[(0, b.from_vec(&[1], vec![0.5]).unwrap())],
                0.1,
            )
            .unwrap();
        }
        let got = b.to_vec(&p.tensors()[0]).unwrap()[0];
        assert!((got - 0.8266).abs() < 1e-6, "{got}");
    }

    /// A weight, a bias and a running statistic: SGD with weight decay 0.1 and no momentum, lr
    /// 1, gradient 0 everywhere. Only the weight decays (p −= lr·wd·p = 1 → 0.9); the bias keeps
    /// its value, and the state tensor is neither updated nor accepted as a gradient target.
    #[test]
    fn weight_decay_touches_weights_only_and_state_never() {
        let b = Cpu::new();
        let mut p = ParamSet::new();
        let one = |b: &Cpu| b.from_vec(&[1, 1], vec![1.0]).unwrap();
        p.push_with("fc.weight", one(&b), Role::Weight).unwrap();
        p.push_with("fc.bias", b.from_vec(&[1], vec![1.0]).unwrap(), Role::Param)
            .unwrap();
        p.push_with(
            "bn.running_mean",
            b.from_vec(&[1], vec![1.0]).unwrap(),
            Role::State,
        )
        .unwrap();
        let kind = OptimizerKind::Sgd {
            momentum: 0.0,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(kind, &b, &p).unwrap();
        let zero = |b: &Cpu, d: &[usize]| b.zeros(d).unwrap();
        // The bias's gradient comes first: pairing is by index, not by position.
        let grads = [(1, zero(&b, &[1])), (0, zero(&b, &[1, 1]))];
        opt.step(&b, &mut p, &grads, 1.0).unwrap();
        let v: Vec<f32> = p
            .tensors()
            .iter()
            .map(|t| b.to_vec(t).unwrap()[0])
            .collect();
        assert!(
            (v[0] - 0.9).abs() < 1e-7 && v[1] == 1.0 && v[2] == 1.0,
            "{v:?}"
        );
        // A gradient for the state, a missing one, or two for one tensor are errors.
        let e = opt
            .step(
                &b,
                &mut p,
                &[(2, zero(&b, &[1])), (0, zero(&b, &[1, 1]))],
                1.0,
            )
            .unwrap_err();
        assert!(e.to_string().contains("bn.running_mean"), "{e}");
        let e = opt
            .step(&b, &mut p, &[(0, zero(&b, &[1, 1]))], 1.0)
            .unwrap_err();
        assert!(e.to_string().contains("fc.bias got no gradient"), "{e}");
        let e = opt
            .step(
                &b,
                &mut p,
                &[(0, zero(&b, &[1, 1])), (0, zero(&b, &[1, 1]))],
                1.0,
            )
            .unwrap_err();
        assert!(e.to_string().contains("two gradients for fc.weight"), "{e}");
        assert_eq!(opt.steps(), 1, "a refused step is not counted");
    }

    #[test]
    fn bad_hyper_parameters_are_errors() {
        let b = Cpu::new();
        let p = one_param(&b, vec![0.0]);
        assert!(Optimizer::new(
            OptimizerKind::Adam {
                beta1: 1.0,
                beta2: 0.999,
                eps: 1e-8
            },
            &b,
            &p
        )
        .is_err());
        assert!(Optimizer::new(
            OptimizerKind::Sgd {
                momentum: -0.1,
                weight_decay: 0.0
            },
            &b,
            &p
        )
        .is_err());
    }
}
