//! The training loop: natural, FGSM, PGD (the paper's adversarial training) and fast FGSM,
//! with checkpoints that resume bit-identically.
//!
//! Every random choice of step `t` (its batch, its attack's random start) is drawn from
//! generators derived from `(random_seed, t)` alone, so a run resumed at step `t` from a
//! checkpoint continues exactly as the uninterrupted run would have.

use std::collections::HashMap;
use std::time::Instant;

use saddle_autograd::Graph;
use saddle_data::{Augment, Batcher, Dataset};
use saddle_models::{
    params::{serialize_safetensors, HostTensor},
    Classifier,
};
use saddle_tensor::{rng::Rng, Backend};

use crate::adversary::adversarial_batch;
use crate::config::{Augmentation, TrainConfig, TrainingMode};
use crate::error::{Result, TrainError};
use crate::optim::Optimizer;

/// What one training step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// The step number (1-based: the number of optimiser updates after this step).
    pub step: u64,
    /// Mean training loss on the (adversarial) batch.
    pub loss: f32,
    /// Accuracy on the batch the model was trained on (adversarial, unless natural training).
    pub adv_accuracy: f32,
    /// Accuracy on the clean batch, when measured.
    pub nat_accuracy: Option<f32>,
    /// Learning rate used.
    pub lr: f32,
    /// ε of the training attack.
    pub epsilon: f32,
    /// Examples per second of this step (attack included).
    pub examples_per_sec: f32,
}

/// What [`Trainer::run`] reports to its caller.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepMetrics),
    /// A checkpoint is due: its bytes and the step it holds. The caller writes it.
    Checkpoint {
        /// The safetensors bytes.
        bytes: Vec<u8>,
        /// Steps completed.
        step: u64,
        /// Whether this is the final checkpoint of the run.
        last: bool,
        /// At the final checkpoint, the model's weights alone (safetensors).
        model: Option<Vec<u8>>,
    },
}

/// Fraction of rows whose arg-max equals the label.
pub fn accuracy(logits: &[f32], labels: &[f32], classes: usize) -> f32 {
    let n = labels.len();
    if n == 0 {
        return 0.0;
    }
    let hits = saddle_models::argmax_rows(logits, classes)
        .iter()
        .zip(labels)
        .filter(|(&p, &y)| p as f32 == y)
        .count();
    hits as f32 / n as f32
}

/// The generator of step `step`'s random choices.
pub fn step_rng(seed: u64, step: u64, stream: u64) -> Rng {
    Rng::new(seed ^ 0x5AD0_1E5A_DD1E_0000).fork(step.wrapping_mul(0x100) ^ stream)
}

/// A model, its optimiser and its configuration, at some step.
#[derive(Debug)]
pub struct Trainer<B: Backend, M: Classifier<B>> {
    backend: B,
    model: M,
    config: TrainConfig,
    optimizer: Optimizer<B>,
    step: u64,
}

impl<B: Backend, M: Classifier<B>> Trainer<B, M> {
    /// A trainer at step 0.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new(model: M, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let backend = model.backend().clone();
        let optimizer = Optimizer::new(config.optimizer, &backend, model.params())?;
        Ok(Trainer {
            backend,
            model,
            config,
            optimizer,
            step: 0,
        })
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutably.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// Gives the model back.
    pub fn into_model(self) -> M {
        self.model
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// One optimiser step on the batch `x` `[n, c, h, w]`, `y` `[n]`: the batch is replaced by
    /// its adversarial examples (per the configuration) and the gradient is taken there
    /// (Danskin's theorem). With `measure_natural`, the clean batch's accuracy is measured too.
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] if the loss is NaN or infinite; the model is then left as it
    /// was.
    pub fn train_step(
        &mut self,
        x: &B::Tensor,
        y: &B::Tensor,
        measure_natural: bool,
    ) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let step = self.step;
        let eps = self.config.epsilon_at(step);
        let lr = self.config.learning_rate.at(step);
        let labels = self.backend.to_vec(y)?;
        let n = labels.len();
        let classes = self.model.num_classes();

        let nat_accuracy = if measure_natural {
            // Measured as the model will be used: in evaluation mode (batch norm on its running
            // statistics), whatever mode the previous step left it in.
            self.model.set_training(false);
            let z = self.backend.to_vec(&self.model.logits(x)?)?;
            Some(accuracy(&z, &labels, classes))
        } else {
            None
        };
        let mut rng = step_rng(self.config.random_seed, step, 1);
        let x_adv = adversarial_batch(&mut self.model, &self.config, eps, x, y, &mut rng)?;

        self.model.set_training(true);
        let g = Graph::new(self.backend.clone());
        let trades = self.config.training == TrainingMode::Trades;
        // Batch norm's running statistics move as in PyTorch's training-mode forward passes,
        // one pass after the other; kept here to undo them if the loss is not finite.
        let set = self.model.params();
        let before: Vec<(usize, B::Tensor)> = (0..set.len())
            .filter(|&i| !set.role(i).trainable())
            .map(|i| (i, set.tensors()[i].clone()))
            .collect();
        let mut passes = Vec::with_capacity(2);
        let loss = if trades {
            // TRADES: CE on the clean batch plus β·KL(clean ‖ adversarial), both passes in
            // training mode; the running statistics see the clean batch, then the adversarial.
            let nat = self.model.forward(&g, g.input(x.clone()), true)?;
            self.model.commit_state(&g, &nat)?;
            let adv = self.model.forward(&g, g.input(x_adv), true)?;
            self.model.commit_state(&g, &adv)?;
            let ce = g.mean_all(g.cross_entropy(nat.logits, y)?)?;
            let kl = g.mean_all(g.kl_div(nat.logits, adv.logits)?)?;
            let robust = g.affine(kl, self.config.trades_beta, 0.0)?;
            passes.push(nat);
            passes.push(adv);
            g.add(ce, robust)?
        } else {
            let f = self.model.forward(&g, g.input(x_adv), true)?;
            self.model.commit_state(&g, &f)?;
            let loss = g.mean_all(g.cross_entropy(f.logits, y)?)?;
            passes.push(f);
            loss
        };
        let loss_value = self.backend.to_vec(&g.value(loss))?[0];
        if !loss_value.is_finite() {
            let state = self.model.params_mut().tensors_mut();
            for (i, t) in before {
                state[i] = t;
            }
            return Err(TrainError::NonFinite {
                step: step + 1,
                value: loss_value,
                last_good: step,
            });
        }
        drop(before);
        let mut grads = g.backward(loss)?;
        // One gradient per parameter: the sum over the passes that used it.
        let mut gs: Vec<(usize, B::Tensor)> = Vec::new();
        for f in &passes {
            for &(i, p) in f.params.iter() {
                let t = grads.take(p).ok_or_else(|| {
                    TrainError::Config(format!(
                        "the parameter {} got no gradient",
                        self.model.params().names()[i]
                    ))
                })?;
                match gs.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, acc)) => *acc = self.backend.add(acc, &t)?,
                    None => gs.push((i, t)),
                }
            }
        }
        // The accuracy reported is that on the batch the attack made.
        let z = self
            .backend
            .to_vec(&g.value(passes.last().expect("one pass at least").logits))?;
        drop(g);
        self.optimizer
            .step(&self.backend, self.model.params_mut(), &gs, lr)?;
        self.step += 1;
        Ok(StepMetrics {
            step: self.step,
            loss: loss_value,
            adv_accuracy: accuracy(&z, &labels, classes),
            nat_accuracy,
            lr,
            epsilon: eps,
            examples_per_sec: n as f32 / t0.elapsed().as_secs_f32().max(1e-9),
        })
    }

    /// Trains on `data` until `max_num_training_steps`, reporting every step and every due
    /// checkpoint to `on_event` (which may stop the run by returning an error).
    pub fn run(
        &mut self,
        data: &Dataset,
        mut on_event: impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        let [_, c, h, w] = data.batch_shape(1);
        let want = self.model.input_shape();
        if [c, h, w] != want {
            return Err(TrainError::Config(format!(
                "the data set's images are {:?} but the model takes {:?}",
                [c, h, w],
                want
            )));
        }
        let bs = self.config.training_batch_size;
        let mut batcher = Batcher::new(
            data.len(),
            bs.min(data.len()),
            true,
            self.config.random_seed,
        )?;
        batcher.seek(self.step);
        let every_out = self.config.num_output_steps.max(1);
        let every_ckpt = self.config.num_checkpoint_steps;
        while self.step < self.config.max_num_training_steps {
            let idx = batcher.next_batch().to_vec();
            let (mut xs, ys) = data.batch(&idx)?;
            let shape = data.batch_shape(idx.len());
            if self.config.augment == Augmentation::CropFlip {
                let mut rng = step_rng(self.config.random_seed, self.step, 2);
                Augment::CIFAR10.apply(&mut xs, shape, &mut rng)?;
            }
            let x = self.backend.from_vec(&shape, xs)?;
            let y = self.backend.from_vec(&[idx.len()], ys)?;
            let measure = (self.step + 1).is_multiple_of(every_out) || self.step == 0;
            let m = self.train_step(&x, &y, measure)?;
            on_event(Event::Step(&m))?;
            let last = self.step == self.config.max_num_training_steps;
            if last || (every_ckpt > 0 && self.step.is_multiple_of(every_ckpt)) {
                let model = if last {
                    Some(self.model.to_safetensors()?)
                } else {
                    None
                };
                on_event(Event::Checkpoint {
                    bytes: self.checkpoint()?,
                    step: self.step,
                    last,
                    model,
                })?;
            }
        }
        Ok(())
    }

    /// The checkpoint: the model's weights under their PyTorch names (so the file also loads as
    /// a model), the optimiser state as `optim.<slot>.<name>`, and metadata (`saddle.step`,
    /// `saddle.optimizer_steps`, `saddle.config` as JSON, `saddle.rng` describing the per-step
    /// generators, plus the model's own metadata).
    pub fn checkpoint(&self) -> Result<Vec<u8>> {
        let mut tensors = self.model.params().to_host(&self.backend, "")?;
        for (name, t) in self.optimizer.named_state(self.model.params().names()) {
            let v = self.backend.to_vec(t)?;
            tensors.push(HostTensor::f32(
                name,
                saddle_tensor::TensorLike::dims(t),
                &v,
            ));
        }
        let mut meta: HashMap<String, String> = self.model.metadata();
        meta.insert("saddle.step".into(), self.step.to_string());
        meta.insert(
            "saddle.optimizer_steps".into(),
            self.optimizer.steps().to_string(),
        );
        meta.insert(
            "saddle.config".into(),
            serde_json::to_string(&self.config)
                .map_err(|e| TrainError::Checkpoint(e.to_string()))?,
        );
        meta.insert(
            "saddle.rng".into(),
            format!(
                "per-step xoshiro256++ derived from random_seed {} and the step",
                self.config.random_seed
            ),
        );
        Ok(serialize_safetensors(&tensors, meta)?)
    }

    /// Restores weights, optimiser state and step from checkpoint bytes written by
    /// [`Trainer::checkpoint`] for the same architecture. The configuration stored in the
    /// checkpoint is returned so the caller can compare it with its own.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<TrainConfig> {
        let meta = saddle_models::params::safetensors_metadata(bytes)?;
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                TrainError::Checkpoint(format!("metadata has no {k}: not a saddle checkpoint"))
            })
        };
        let step: u64 = get("saddle.step")?
            .parse()
            .map_err(|_| TrainError::Checkpoint("bad saddle.step".into()))?;
        let osteps: u64 = get("saddle.optimizer_steps")?
            .parse()
            .map_err(|_| TrainError::Checkpoint("bad saddle.optimizer_steps".into()))?;
        let cfg: TrainConfig = serde_json::from_str(get("saddle.config")?)
            .map_err(|e| TrainError::Checkpoint(format!("bad saddle.config: {e}")))?;
        let b = self.backend.clone();
        self.model.params_mut().load_safetensors(&b, bytes, "")?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        let names = self.model.params().names().to_vec();
        self.optimizer.restore(
            &names,
            |name, dims| {
                let v = st.tensor(name).map_err(|_| {
                    TrainError::Checkpoint(format!("optimiser state {name} is missing"))
                })?;
                if v.shape() != dims || v.dtype() != safetensors::Dtype::F32 {
                    return Err(TrainError::Checkpoint(format!(
                        "optimiser state {name} has shape {:?}, expected {dims:?}",
                        v.shape()
                    )));
                }
                Ok(b.from_vec(dims, saddle_models::params::f32_from_le(v.data()))?)
            },
            osteps,
        )?;
        self.step = step;
        Ok(cfg)
    }
}
