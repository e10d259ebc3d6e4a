//! Optimisers: Adam and SGD with momentum and weight decay, with PyTorch's update rules (the
//! update itself is the backend's fused `adam_update` / `sgd_update`).

use serde::{Deserialize, Serialize};

use saddle_models::ParamSet;
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

/// An optimiser and its per-parameter state.
#[derive(Clone, Debug)]
pub struct Optimizer<B: Backend> {
    kind: OptimizerKind,
    /// `state[slot][param]`.
    state: Vec<Vec<B::Tensor>>,
    steps: u64,
}

impl<B: Backend> Optimizer<B> {
    /// A fresh optimiser (zero moments) for `params`.
    pub fn new(kind: OptimizerKind, backend: &B, params: &ParamSet<B>) -> Result<Self> {
        kind.validate()?;
        let state = kind
            .slots()
            .iter()
            .map(|_| {
                params
                    .tensors()
                    .iter()
                    .map(|t| backend.zeros(t.dims()))
                    .collect()
            })
            .collect::<std::result::Result<Vec<Vec<_>>, _>>()?;
        Ok(Optimizer {
            kind,
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

    /// One update of every parameter with its gradient at learning rate `lr`.
    ///
    /// # Errors
    /// A shape mismatch between a parameter and its gradient.
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut ParamSet<B>,
        grads: &[B::Tensor],
        lr: f32,
    ) -> Result<()> {
        if grads.len() != params.len() {
            return Err(TrainError::Config(format!(
                "{} gradients for {} parameters",
                grads.len(),
                params.len()
            )));
        }
        self.steps += 1;
        let tensors = params.tensors_mut();
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
                for (i, p) in tensors.iter_mut().enumerate() {
                    backend.adam_update(p, &grads[i], &mut ms[0][i], &mut vs[0][i], h)?;
                }
            }
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                let h = SgdParams {
                    lr,
                    momentum,
                    weight_decay,
                };
                for (i, p) in tensors.iter_mut().enumerate() {
                    backend.sgd_update(p, &grads[i], &mut self.state[0][i], h)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors `optim.<slot>.<param name>` for checkpoints.
    pub fn named_state<'a>(&'a self, names: &'a [String]) -> Vec<(String, &'a B::Tensor)> {
        let mut out = Vec::new();
        for (s, slot) in self.kind.slots().iter().enumerate() {
            for (i, n) in names.iter().enumerate() {
                out.push((format!("optim.{slot}.{n}"), &self.state[s][i]));
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
            for (i, n) in names.iter().enumerate() {
                let dims = self.state[s][i].dims().to_vec();
                self.state[s][i] = lookup(&format!("optim.{slot}.{n}"), &dims)?;
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
        p.push("w", b.from_vec(&[v.len()], v).unwrap()).unwrap();
        p
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        // With bias correction, Adam's first update is lr · g/(|g| + eps') ≈ lr · sign(g).
        let b = Cpu::new();
        let mut p = one_param(&b, vec![1.0, 1.0, 1.0]);
        let mut opt = Optimizer::new(OptimizerKind::adam(), &b, &p).unwrap();
        let g = b.from_vec(&[3], vec![0.5, -2.0, 0.0]).unwrap();
        opt.step(&b, &mut p, &[g], 0.1).unwrap();
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
        opt.step(&b, &mut p, &[b.from_vec(&[1], vec![1.0]).unwrap()], 0.01)
            .unwrap();
        opt.step(&b, &mut p, &[b.from_vec(&[1], vec![3.0]).unwrap()], 0.01)
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
            opt.step(&b, &mut p, &[b.from_vec(&[1], vec![0.5]).unwrap()], 0.1)
                .unwrap();
        }
        let got = b.to_vec(&p.tensors()[0]).unwrap()[0];
        assert!((got - 0.8266).abs() < 1e-6, "{got}");
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
