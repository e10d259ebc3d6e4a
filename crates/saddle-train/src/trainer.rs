//! The training loop: natural, FGSM, PGD (the paper's adversarial training) and fast FGSM,
//! with checkpoints that resume bit-identically.
//!
//! Every random choice of step `t` (its batch, its attack's random start) is drawn from
//! generators derived from `(random_seed, t)` alone, so a run resumed at step `t` from a
//! checkpoint continues exactly as the uninterrupted run would have.

use std::collections::HashMap;
use std::time::Instant;

use saddle_attacks::{Attack, Pgd};
use saddle_autograd::Graph;
use saddle_data::{Augment, Batcher, Dataset};
use saddle_models::{
    params::{serialize_safetensors, HostTensor, ParamSet, Role},
    Classifier,
};
use saddle_tensor::{rng::Rng, Backend};
use serde::{Deserialize, Serialize};

use crate::adversary::adversarial_batch;
use crate::comm::{accumulate, shard_rows, GradientReducer, SingleProcess};
use crate::config::{Augmentation, KeepWeights, TrainConfig, TrainingMode};
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

/// What a robustness check ([`crate::RobustCheck`]) measured.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckMetrics {
    /// The step checked (steps completed).
    pub step: u64,
    /// Check images.
    pub examples: usize,
    /// Accuracy on the clean check images (evaluation mode).
    pub natural_accuracy: f32,
    /// Accuracy under the check's PGD.
    pub pgd_accuracy: f32,
    /// The best check so far (this one included): its step and PGD accuracy.
    pub best_step: u64,
    /// The best check's PGD accuracy.
    pub best_pgd_accuracy: f32,
    /// This check fell more than `max_drop` below the best, or its PGD accuracy is below
    /// `min_ratio` of its natural accuracy: training stops here, and the model handed out at
    /// the end is the best check's.
    pub collapsed: bool,
}

/// The best robustness check of a run: its step, accuracies and weights.
#[derive(Clone, Debug)]
struct BestCheck {
    step: u64,
    natural: f32,
    pgd: f32,
    /// The model's safetensors bytes at that step.
    model: Vec<u8>,
}

/// Which rule of the robustness check stopped a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The check's PGD accuracy fell more than `max_drop` below the best check's.
    #[default]
    Drop,
    /// The check's PGD accuracy was below `min_ratio` times its natural accuracy.
    Ratio,
}

/// Why and where a run stopped early.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    /// The step of the check that fell.
    pub step: u64,
    /// Its PGD accuracy.
    pub pgd_accuracy: f32,
    /// The best check's step: the weights kept.
    pub best_step: u64,
    /// The best check's PGD accuracy.
    pub best_pgd_accuracy: f32,
    /// The rule that stopped it (checkpoints written before there were two: `Drop`).
    #[serde(default)]
    pub reason: StopReason,
    /// The check's natural accuracy (0 in checkpoints written before it was recorded).
    #[serde(default)]
    pub natural_accuracy: f32,
}

impl Stopped {
    /// What happened, in a sentence: the step, the rule and the numbers, and which weights
    /// were kept.
    pub fn describe(&self) -> String {
        let what = match self.reason {
            StopReason::Drop => format!(
                "its robustness check fell to {:.1}% under PGD, more than the allowed drop below \
                 the best check",
                100.0 * self.pgd_accuracy
            ),
            StopReason::Ratio => format!(
                "its robustness check measured {:.1}% under PGD against {:.1}% natural, below \
                 the allowed fraction (robust_check.min_ratio)",
                100.0 * self.pgd_accuracy,
                100.0 * self.natural_accuracy
            ),
        };
        format!(
            "stopped at step {}: {what}; the weights kept are the best check's ({:.1}% under PGD \
             at step {})",
            self.step,
            100.0 * self.best_pgd_accuracy,
            self.best_step
        )
    }
}

/// The robustness-check state a checkpoint carries (metadata `saddle.robust_check`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckRecord {
    best_step: Option<u64>,
    best_natural: f32,
    best_pgd: f32,
    stopped: Option<Stopped>,
}

/// The checkpoint tensor holding the best check's model file (its bytes, as `U8`).
const CHECK_BEST: &str = "saddle.check_best";

/// What [`Trainer::run`] reports to its caller.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepMetrics),
    /// A robustness check ran (after the step's [`Event::Step`], before its checkpoint).
    Check(&'a CheckMetrics),
    /// A checkpoint is due: its bytes and the step it holds. The caller writes it.
    Checkpoint {
        /// The safetensors bytes.
        bytes: Vec<u8>,
        /// Steps completed.
        step: u64,
        /// Whether this is the final checkpoint of the run.
        last: bool,
        /// At the final checkpoint, the model file the run hands out (safetensors, the weights
        /// alone): [`Trainer::final_model`], the best check's weights when a check stopped the
        /// run or `robust_check.keep = "best"`.
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

/// The number of rows whose arg-max equals the label.
fn hits(logits: &[f32], labels: &[f32], classes: usize) -> usize {
    saddle_models::argmax_rows(logits, classes)
        .iter()
        .zip(labels)
        .filter(|(&p, &y)| p as f32 == y)
        .count()
}

/// What one batch (or shard) contributes to a step.
struct Share<B: Backend> {
    /// The loss (weighted by the shard's share of the batch, for a shard).
    loss: f32,
    /// Each trainable tensor's gradient, by index; `None` when the loss is not finite.
    grads: Option<Vec<(usize, B::Tensor)>>,
    /// The logits of the batch trained on.
    logits: Vec<f32>,
}

/// The generator of step `step`'s random choices.
pub fn step_rng(seed: u64, step: u64, stream: u64) -> Rng {
    Rng::new(seed ^ 0x5AD0_1E5A_DD1E_0000).fork(step.wrapping_mul(0x100) ^ stream)
}

/// What a training step starts from (see `Trainer::step_start`).
struct StepStart {
    t0: Instant,
    step: u64,
    eps: f32,
    lr: f32,
    labels: Vec<f32>,
    classes: usize,
}

/// A model, its optimiser and its configuration, at some step.
#[derive(Debug)]
pub struct Trainer<B: Backend, M: Classifier<B>> {
    backend: B,
    model: M,
    config: TrainConfig,
    optimizer: Optimizer<B>,
    step: u64,
    reducer: Box<dyn GradientReducer>,
    /// The robustness check's images (see [`Trainer::set_check_set`]).
    check_set: Option<Dataset>,
    best: Option<BestCheck>,
    stopped: Option<Stopped>,
    /// The moving average of the weights ([`TrainConfig::ema_decay`]), one tensor per tensor
    /// of the model's parameter set, in its order.
    ema: Option<Vec<B::Tensor>>,
}

/// The checkpoint's prefix of the averaged weights' names (`ema.conv1.weight`, ...).
const EMA_PREFIX: &str = "ema.";

impl<B: Backend, M: Classifier<B>> Trainer<B, M> {
    /// A trainer at step 0.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new(model: M, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let backend = model.backend().clone();
        let optimizer = Optimizer::new(config.optimizer, &backend, model.params())?;
        let ema = config.ema_decay.map(|_| model.params().tensors().to_vec());
        Ok(Trainer {
            backend,
            model,
            config,
            optimizer,
            step: 0,
            reducer: Box::new(SingleProcess),
            check_set: None,
            best: None,
            stopped: None,
            ema,
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

    /// The images of the robustness check ([`TrainConfig::robust_check`]): its first
    /// `examples` are used. Without this, [`Trainer::run`] checks on the first training images.
    pub fn set_check_set(&mut self, data: Dataset) {
        self.check_set = Some(data);
    }

    /// Where and why the run stopped early (a robustness check fell), if it did; also after
    /// [`Trainer::restore`] of such a run's checkpoint.
    pub fn stopped(&self) -> Option<&Stopped> {
        self.stopped.as_ref()
    }

    /// The best robustness check so far: its step and the model file (safetensors bytes) of
    /// that step.
    pub fn best_check(&self) -> Option<(u64, &[u8])> {
        self.best.as_ref().map(|b| (b.step, b.model.as_slice()))
    }

    /// The model file the run hands out at its end (safetensors bytes): the best check's
    /// weights when a check stopped the run or `robust_check.keep = "best"`, else the moving
    /// average of the weights with `ema_decay`, else the current weights.
    ///
    /// # Errors
    /// Serialising the weights failed.
    pub fn final_model(&self) -> Result<Vec<u8>> {
        match (self.kept_check(), self.averaged()) {
            (Some(b), _) => Ok(b.model.clone()),
            (None, Some(set)) => Ok(serialize_safetensors(
                &set.to_host(&self.backend, "")?,
                self.model.metadata(),
            )?),
            (None, None) => Ok(self.model.to_safetensors()?),
        }
    }

    /// The moving average of the weights as a parameter set with the model's names and roles
    /// (without `ema_decay`: none).
    pub fn averaged(&self) -> Option<ParamSet<B>> {
        let ema = self.ema.as_ref()?;
        let mut set = self.model.params().clone();
        for (t, e) in set.tensors_mut().iter_mut().zip(ema) {
            *t = e.clone();
        }
        Some(set)
    }

    /// Folds the weights just updated into the moving average: `d·avg + (1 − d)·w` with
    /// `d = min(ema_decay, (1 + t)/(10 + t))`, `t` the steps before this one; batch norm's
    /// counter is copied.
    fn update_average(&mut self) -> Result<()> {
        let (Some(decay), Some(ema)) = (self.config.ema_decay, self.ema.as_mut()) else {
            return Ok(());
        };
        let t = self.step as f32;
        let d = decay.min((1.0 + t) / (10.0 + t));
        let set = self.model.params();
        for (i, (avg, w)) in ema.iter_mut().zip(set.tensors()).enumerate() {
            *avg = if set.role(i) == Role::Counter {
                w.clone()
            } else {
                let kept = self.backend.affine(avg, d, 0.0)?;
                self.backend
                    .add(&kept, &self.backend.affine(w, 1.0 - d, 0.0)?)?
            };
        }
        Ok(())
    }

    /// The step whose weights [`Trainer::final_model`] hands out.
    pub fn final_model_step(&self) -> u64 {
        self.kept_check().map_or(self.step, |b| b.step)
    }

    /// The best check, when its weights are the ones handed out.
    fn kept_check(&self) -> Option<&BestCheck> {
        let keep_best = self.stopped.is_some()
            || self
                .config
                .robust_check
                .as_ref()
                .is_some_and(|rc| rc.keep == KeepWeights::Best);
        self.best.as_ref().filter(|_| keep_best)
    }

    /// Runs the robustness check now on `data`'s first `examples` images: the model in
    /// evaluation mode, clean accuracy and accuracy under PGD-`k` (step `2.5ε/k`, a random
    /// start from the same seed at every check); updates the best check and, on a fall of more
    /// than `max_drop` (or PGD accuracy below `min_ratio` of natural), marks the run stopped.
    ///
    /// # Errors
    /// No check configured, data of another image shape, or a failing attack.
    pub fn robust_check(&mut self, data: &Dataset) -> Result<CheckMetrics> {
        let rc =
            self.config.robust_check.clone().ok_or_else(|| {
                TrainError::Config("robust_check: the configuration has none".into())
            })?;
        let n = rc.examples.min(data.len());
        if n == 0 {
            return Err(TrainError::Config(
                "robust_check: the check set is empty".into(),
            ));
        }
        let eps = self.config.epsilon;
        let pgd = Pgd::linf(eps, 2.5 * eps / rc.k as f32, rc.k)?
            .random_start(true)
            .seed(self.config.random_seed ^ 0xC0EC_0000_0000_C4EC);
        let classes = self.model.num_classes();
        let was_training = self.model.is_training();
        self.model.set_training(false);
        let (mut natural, mut robust) = (0usize, 0usize);
        let bs = self.config.eval_batch_size.max(1);
        let mut at = 0;
        while at < n {
            let idx: Vec<usize> = (at..(at + bs).min(n)).collect();
            let (xs, ys) = data.batch(&idx)?;
            let x = self.backend.from_vec(&data.batch_shape(idx.len()), xs)?;
            let y = self.backend.from_vec(&[idx.len()], ys.clone())?;
            let z = self.backend.to_vec(&self.model.logits(&x)?)?;
            natural += hits(&z, &ys, classes);
            let r = pgd.perturb(&mut self.model, &x, &y)?;
            robust += r.success.iter().filter(|&&s| !s).count();
            at += idx.len();
        }
        self.model.set_training(was_training);
        let (natural, pgd) = (natural as f32 / n as f32, robust as f32 / n as f32);
        if self.best.as_ref().is_none_or(|b| pgd > b.pgd) {
            self.best = Some(BestCheck {
                step: self.step,
                natural,
                pgd,
                model: self.model.to_safetensors()?,
            });
        }
        let best = self.best.as_ref().expect("set above");
        // The ratio rule: one-step training's catastrophic overfitting can set in before the
        // first check, leaving no better check for the drop rule to fall from.
        let learnt = natural >= 2.0 / classes as f32;
        let reason = if best.pgd - pgd > rc.max_drop {
            Some(StopReason::Drop)
        } else if self.config.training.one_step() && learnt && pgd < rc.min_ratio * natural {
            Some(StopReason::Ratio)
        } else {
            None
        };
        let collapsed = reason.is_some();
        if let Some(reason) = reason {
            self.stopped = Some(Stopped {
                step: self.step,
                pgd_accuracy: pgd,
                best_step: best.step,
                best_pgd_accuracy: best.pgd,
                reason,
                natural_accuracy: natural,
            });
        }
        Ok(CheckMetrics {
            step: self.step,
            examples: n,
            natural_accuracy: natural,
            pgd_accuracy: pgd,
            best_step: best.step,
            best_pgd_accuracy: best.pgd,
            collapsed,
        })
    }

    /// One optimiser step on the batch `x` `[n, c, h, w]`, `y` `[n]`: the batch is replaced by
    /// its adversarial examples (per the configuration) and the gradient is taken there
    /// (Danskin's theorem). With `measure_natural`, the clean batch's accuracy is measured too.
    ///
    /// The step is three parts: the gradients ([`TrainConfig::grad_shards`] shards of the
    /// batch, each attacked and differentiated alone), their reduction across workers (the
    /// [`GradientReducer`], nothing in one process), and the optimiser update. With one shard
    /// and one worker (the default) the gradients stay on the backend and the step is the
    /// plain full-batch step. With `S` shards in one process, the shards run one after the
    /// other and their gradients are summed in shard order; with `S` workers (see
    /// [`Trainer::set_reducer`]) each computes the shard of its rank, every worker being handed
    /// the same global batch, and the reducer sums in the same order: the same bits.
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
        let at = self.step_start(y)?;
        if self.config.grad_shards > 1 || self.reducer.size() > 1 {
            return self.sharded_step(x, measure_natural, at);
        }
        let (step, eps, classes, labels) = (at.step, at.eps, at.classes, &at.labels);

        let nat_accuracy = if measure_natural {
            // Measured as the model will be used: in evaluation mode (batch norm on its running
            // statistics), whatever mode the previous step left it in.
            self.model.set_training(false);
            let z = self.backend.to_vec(&self.model.logits(x)?)?;
            Some(accuracy(&z, labels, classes))
        } else {
            None
        };
        let mut rng = step_rng(self.config.random_seed, step, 1);
        // Batch norm's running statistics move as in PyTorch's training-mode forward passes,
        // one pass after the other; kept here to undo them if the loss is not finite.
        let before = self.state_snapshot();
        // 1. The gradients.
        let share = self.gradients(x, y, eps, None, &mut rng)?;
        let Some(gs) = share.grads else {
            return Err(self.non_finite(before, share.loss));
        };
        drop(before);
        // 2. The reduction: one process, one shard, nothing to do. 3. The update.
        let adv_accuracy = accuracy(&share.logits, labels, classes);
        self.apply(&gs, &at, share.loss, adv_accuracy, nat_accuracy)
    }

    /// What every step starts from: its time, number, ε, learning rate and the labels on the
    /// host.
    fn step_start(&self, y: &B::Tensor) -> Result<StepStart> {
        let step = self.step;
        Ok(StepStart {
            t0: Instant::now(),
            step,
            eps: self.config.epsilon_at(step),
            lr: self.config.learning_rate.at(step),
            labels: self.backend.to_vec(y)?,
            classes: self.model.num_classes(),
        })
    }

    /// The update of a step whose gradients `gs` are reduced, and its metrics.
    fn apply(
        &mut self,
        gs: &[(usize, B::Tensor)],
        at: &StepStart,
        loss: f32,
        adv_accuracy: f32,
        nat_accuracy: Option<f32>,
    ) -> Result<StepMetrics> {
        self.optimizer
            .step(&self.backend, self.model.params_mut(), gs, at.lr)?;
        self.update_average()?;
        self.backend.step_end()?;
        self.step += 1;
        let n = at.labels.len();
        Ok(StepMetrics {
            step: self.step,
            loss,
            adv_accuracy,
            nat_accuracy,
            lr: at.lr,
            epsilon: at.eps,
            examples_per_sec: n as f32 / at.t0.elapsed().as_secs_f32().max(1e-9),
        })
    }

    /// Replaces the reduction of each step's gradients: a [`GradientReducer`] of `size()`
    /// workers, this trainer being worker `rank()`. Every worker must be handed the same global
    /// batches (as [`Trainer::run`] does from the same data and seed); each computes the shard
    /// of its rank.
    ///
    /// # Errors
    /// A reducer of several workers when [`TrainConfig::grad_shards`] is not their number.
    pub fn set_reducer(&mut self, reducer: Box<dyn GradientReducer>) -> Result<()> {
        let size = reducer.size();
        if size > 1 && size != self.config.grad_shards {
            return Err(TrainError::Config(format!(
                "grad_shards = {} but the run has {size} workers: each worker computes one \
                 shard, so grad_shards must be the number of workers",
                self.config.grad_shards
            )));
        }
        if reducer.rank() >= size {
            return Err(TrainError::Config(format!(
                "worker {} of {size} does not exist",
                reducer.rank()
            )));
        }
        self.reducer = reducer;
        Ok(())
    }

    /// The non-trainable tensors (batch norm's running statistics and counters), to undo a
    /// step's training-mode passes.
    fn state_snapshot(&self) -> Vec<(usize, B::Tensor)> {
        let set = self.model.params();
        (0..set.len())
            .filter(|&i| !set.role(i).trainable())
            .map(|i| (i, set.tensors()[i].clone()))
            .collect()
    }

    fn restore_state(&mut self, before: &[(usize, B::Tensor)]) {
        let state = self.model.params_mut().tensors_mut();
        for (i, t) in before {
            state[*i] = t.clone();
        }
    }

    /// The error of a non-finite loss, the running statistics put back as they were.
    fn non_finite(&mut self, before: Vec<(usize, B::Tensor)>, value: f32) -> TrainError {
        self.restore_state(&before);
        TrainError::NonFinite {
            step: self.step + 1,
            value,
            last_good: self.step,
        }
    }

    /// The first part of a step on the batch (or shard) `x`, `y`: its adversarial examples at
    /// radius `eps` from `rng`, the training-mode passes (committing batch norm's running
    /// statistics), the mean loss (times `scale`, the shard's share of the global batch, when
    /// given) and, if that loss is finite, its gradient for each trainable parameter.
    fn gradients(
        &mut self,
        x: &B::Tensor,
        y: &B::Tensor,
        eps: f32,
        scale: Option<f32>,
        rng: &mut Rng,
    ) -> Result<Share<B>> {
        let x_adv = adversarial_batch(&mut self.model, &self.config, eps, x, y, rng)?;
        self.model.set_training(true);
        let g = Graph::new(self.backend.clone());
        let trades = self.config.training == TrainingMode::Trades;
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
        let loss = match scale {
            Some(s) => g.affine(loss, s, 0.0)?,
            None => loss,
        };
        let loss_value = self.backend.to_vec(&g.value(loss))?[0];
        // The accuracy reported is that on the batch the attack made.
        let logits = self
            .backend
            .to_vec(&g.value(passes.last().expect("one pass at least").logits))?;
        if !loss_value.is_finite() {
            return Ok(Share {
                loss: loss_value,
                grads: None,
                logits,
            });
        }
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
        Ok(Share {
            loss: loss_value,
            grads: Some(gs),
            logits,
        })
    }

    /// Rows `rows` of the host values `v` of a `[n, …]` tensor of shape `dims`, on the backend.
    fn rows(&self, v: &[f32], dims: &[usize], rows: std::ops::Range<usize>) -> Result<B::Tensor> {
        let per: usize = dims[1..].iter().product();
        let mut d = dims.to_vec();
        d[0] = rows.len();
        Ok(self
            .backend
            .from_vec(&d, v[rows.start * per..rows.end * per].to_vec())?)
    }

    /// A step of [`TrainConfig::grad_shards`] shards: this worker's shards (all of them in one
    /// process, the shard of its rank among several workers), each from the state before the
    /// step, written into one host buffer — `[loss, adversarial hits, natural hits, the
    /// gradients of the trainable tensors in index order, batch norm's running statistics]`,
    /// each shard's part weighted by its share of the rows — and summed in shard order.
    fn sharded_step(
        &mut self,
        x: &B::Tensor,
        measure_natural: bool,
        start: StepStart,
    ) -> Result<StepMetrics> {
        let (step, eps, classes) = (start.step, start.eps, start.classes);
        let labels = &start.labels;
        let n = labels.len();
        let shards = self.config.grad_shards;
        let (rank, size) = (self.reducer.rank(), self.reducer.size());
        let mine = if size == 1 { 0..shards } else { rank..rank + 1 };
        if n < shards {
            return Err(TrainError::Config(format!(
                "a batch of {n} examples cannot be split into grad_shards = {shards} shards"
            )));
        }
        // The buffer's layout, the same on every worker.
        let set = self.model.params();
        let dims = |i: usize| saddle_tensor::TensorLike::dims(&set.tensors()[i]).to_vec();
        let trainable: Vec<(usize, Vec<usize>)> = (0..set.len())
            .filter(|&i| set.role(i).trainable())
            .map(|i| (i, dims(i)))
            .collect();
        let stats: Vec<(usize, Vec<usize>)> = (0..set.len())
            .filter(|&i| set.role(i) == Role::State)
            .map(|i| (i, dims(i)))
            .collect();
        let numel = |v: &[(usize, Vec<usize>)]| -> usize {
            v.iter().map(|(_, d)| d.iter().product::<usize>()).sum()
        };
        const HEAD: usize = 3;
        let len = HEAD + numel(&trainable) + numel(&stats);
        // The batch on the host once; each shard uploads its rows.
        let x_host = self.backend.to_vec(x)?;
        let x_dims = saddle_tensor::TensorLike::dims(x).to_vec();
        let before = self.state_snapshot();
        let mut present: Vec<usize> = Vec::new();
        let mut sum: Option<Vec<f32>> = None;
        for k in mine {
            // Every shard starts from the state before the step, as every worker does.
            self.restore_state(&before);
            let r = shard_rows(n, shards, k);
            let w = r.len() as f32 / n as f32;
            let xk = self.rows(&x_host, &x_dims, r.clone())?;
            let lk = &labels[r.clone()];
            let yk = self.backend.from_vec(&[lk.len()], lk.to_vec())?;
            let mut share = vec![0.0f32; len];
            if measure_natural {
                self.model.set_training(false);
                let z = self.backend.to_vec(&self.model.logits(&xk)?)?;
                share[2] = hits(&z, lk, classes) as f32;
            }
            // Shard k's attack draws the k-th seed of the step's generator: shard 0 starts
            // where the one-shard step starts (its rows get the same random start).
            let mut rng = step_rng(self.config.random_seed, step, 1);
            for _ in 0..k {
                rng.next_u64();
            }
            let part = self.gradients(&xk, &yk, eps, Some(w), &mut rng)?;
            share[0] = part.loss;
            share[1] = hits(&part.logits, lk, classes) as f32;
            if let Some(gs) = &part.grads {
                present = gs.iter().map(|(i, _)| *i).collect();
                let mut at = HEAD;
                for (i, d) in &trainable {
                    let m: usize = d.iter().product();
                    if let Some((_, t)) = gs.iter().find(|(j, _)| j == i) {
                        share[at..at + m].copy_from_slice(&self.backend.to_vec(t)?);
                    }
                    at += m;
                }
                let params = self.model.params().tensors();
                for (i, d) in &stats {
                    let m: usize = d.iter().product();
                    let v = self.backend.to_vec(&params[*i])?;
                    for (o, s) in share[at..at + m].iter_mut().zip(v) {
                        *o = w * s;
                    }
                    at += m;
                }
            }
            match &mut sum {
                None => sum = Some(share),
                Some(acc) => accumulate(acc, &share),
            }
        }
        let mut sum = sum.expect("one shard at least");
        // 2. The reduction across workers.
        if size > 1 {
            self.reducer
                .all_reduce_sum(&mut sum)
                .map_err(|e| TrainError::Comm {
                    step: step + 1,
                    message: e.to_string(),
                })?;
        }
        let loss = sum[0];
        if !loss.is_finite() {
            return Err(self.non_finite(before, loss));
        }
        // Counters moved once per shard from the same value: they are those of any shard.
        let mut at = HEAD;
        let mut gs: Vec<(usize, B::Tensor)> = Vec::with_capacity(trainable.len());
        for (i, d) in &trainable {
            let m: usize = d.iter().product();
            if present.contains(i) {
                gs.push((*i, self.backend.from_vec(d, sum[at..at + m].to_vec())?));
            }
            at += m;
        }
        for (i, d) in &stats {
            let m: usize = d.iter().product();
            let t = self.backend.from_vec(d, sum[at..at + m].to_vec())?;
            self.model.params_mut().tensors_mut()[*i] = t;
            at += m;
        }
        drop(before);
        // 3. The update, the same on every worker.
        let nat_accuracy = measure_natural.then(|| sum[2] / n as f32);
        self.apply(&gs, &start, loss, sum[1] / n as f32, nat_accuracy)
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
        if bs.min(data.len()) < self.config.grad_shards {
            return Err(TrainError::Config(format!(
                "grad_shards = {}: the data set has only {} examples",
                self.config.grad_shards,
                data.len()
            )));
        }
        let every_out = self.config.num_output_steps.max(1);
        let every_ckpt = self.config.num_checkpoint_steps;
        if let Some(s) = &self.stopped {
            return Err(TrainError::Config(format!(
                "this run {}; it does not go on: start a new run",
                s.describe()
            )));
        }
        let check_set = match (&self.config.robust_check, self.check_set.take()) {
            (None, kept) => kept,
            (Some(_), Some(c)) => Some(c),
            (Some(rc), None) => Some(data.subset_first(rc.examples)),
        };
        let res = self.run_loop(
            data,
            check_set.as_ref(),
            every_out,
            every_ckpt,
            &mut on_event,
        );
        self.check_set = check_set;
        res
    }

    fn run_loop(
        &mut self,
        data: &Dataset,
        check_set: Option<&Dataset>,
        every_out: u64,
        every_ckpt: u64,
        on_event: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        let bs = self.config.training_batch_size;
        let mut batcher = Batcher::new(
            data.len(),
            bs.min(data.len()),
            true,
            self.config.random_seed,
        )?;
        batcher.seek(self.step);
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
            let mut last = self.step == self.config.max_num_training_steps;
            if let (Some(rc), Some(cs)) = (&self.config.robust_check, check_set) {
                if last || self.step.is_multiple_of(rc.every) {
                    let c = self.robust_check(cs)?;
                    on_event(Event::Check(&c))?;
                    last |= c.collapsed;
                }
            }
            if last || (every_ckpt > 0 && self.step.is_multiple_of(every_ckpt)) {
                let model = if last {
                    Some(self.final_model()?)
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
            if self.stopped.is_some() {
                break;
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
        if let Some(set) = self.averaged() {
            tensors.extend(set.to_host(&self.backend, EMA_PREFIX)?);
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
        if self.best.is_some() || self.stopped.is_some() {
            let b = self.best.as_ref();
            let record = CheckRecord {
                best_step: b.map(|b| b.step),
                best_natural: b.map_or(0.0, |b| b.natural),
                best_pgd: b.map_or(0.0, |b| b.pgd),
                stopped: self.stopped.clone(),
            };
            meta.insert(
                "saddle.robust_check".into(),
                serde_json::to_string(&record)
                    .map_err(|e| TrainError::Checkpoint(e.to_string()))?,
            );
            if let Some(b) = b {
                tensors.push(HostTensor {
                    name: CHECK_BEST.into(),
                    shape: vec![b.model.len()],
                    dtype: safetensors::Dtype::U8,
                    bytes: b.model.clone(),
                });
            }
        }
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
        if self.ema.is_some() {
            let mut set = self.model.params().clone();
            set.load_safetensors(&b, bytes, EMA_PREFIX).map_err(|e| {
                TrainError::Checkpoint(format!(
                    "the averaged weights ({EMA_PREFIX}*, kept with ema_decay): {e}"
                ))
            })?;
            self.ema = Some(set.tensors().to_vec());
        }
        let (mut best, mut stopped) = (None, None);
        if let Some(r) = meta.get("saddle.robust_check") {
            let r: CheckRecord = serde_json::from_str(r)
                .map_err(|e| TrainError::Checkpoint(format!("bad saddle.robust_check: {e}")))?;
            if let Some(step) = r.best_step {
                let v = st.tensor(CHECK_BEST).map_err(|_| {
                    TrainError::Checkpoint(format!(
                        "{CHECK_BEST} (the best check's model) is missing"
                    ))
                })?;
                if v.dtype() != safetensors::Dtype::U8 {
                    return Err(TrainError::Checkpoint(format!("{CHECK_BEST} is not U8")));
                }
                best = Some(BestCheck {
                    step,
                    natural: r.best_natural,
                    pgd: r.best_pgd,
                    model: v.data().to_vec(),
                });
            }
            stopped = r.stopped;
        }
        self.best = best;
        self.stopped = stopped;
        self.step = step;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Mutex};

    use saddle_models::{Model, ModelError};
    use saddle_tensor::cpu::Cpu;
    use saddle_tensor::rng::Uniform;

    type CpuTensorOf = <Cpu as Backend>::Tensor;

    use super::*;
    use crate::comm::{sum_in_order, CommError};
    use crate::config::BnMode;
    use crate::schedule::Schedule;

    /// Workers that are threads of one process: each puts its share in its slot, waits for the
    /// others, and folds every slot in rank order (what the MPI reducer does across processes).
    #[derive(Debug)]
    struct Threads {
        rank: usize,
        size: usize,
        slots: Arc<Mutex<Vec<Vec<f32>>>>,
        barrier: Arc<Barrier>,
    }

    impl Threads {
        fn group(size: usize) -> Vec<Threads> {
            let slots = Arc::new(Mutex::new(vec![Vec::new(); size]));
            let barrier = Arc::new(Barrier::new(size));
            (0..size)
                .map(|rank| Threads {
                    rank,
                    size,
                    slots: slots.clone(),
                    barrier: barrier.clone(),
                })
                .collect()
        }
    }

    impl GradientReducer for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn all_reduce_sum(&mut self, buf: &mut [f32]) -> std::result::Result<(), CommError> {
            self.slots.lock().unwrap()[self.rank] = buf.to_vec();
            self.barrier.wait();
            {
                let slots = self.slots.lock().unwrap();
                let shares: Vec<&[f32]> = slots.iter().map(Vec::as_slice).collect();
                sum_in_order(&shares, buf);
            }
            self.barrier.wait();
            Ok(())
        }
    }

    fn config(arch: &str, shards: usize) -> TrainConfig {
        TrainConfig {
            arch: arch.into(),
            dataset: if arch == "mnist" { "mnist" } else { "cifar10" }.into(),
            model_scale: 1,
            k: 3,
            a: 0.1,
            epsilon: 0.3,
            training_batch_size: 8,
            learning_rate: Schedule::Constant { value: 1e-3 },
            attack_bn_mode: BnMode::Train,
            grad_shards: shards,
            ..TrainConfig::mnist_paper()
        }
    }

    fn batch(arch: &str, step: u64) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
        let dims = if arch == "mnist" {
            vec![8, 1, 28, 28]
        } else {
            vec![8, 3, 32, 32]
        };
        let x = Rng::new(100 + step).array(&dims, Uniform::new(0.0, 1.0));
        let y = (0..8).map(|i| ((i + step as usize) % 10) as f32).collect();
        (dims, x.into_raw_vec_and_offset().0, y)
    }

    fn trainer(cfg: &TrainConfig) -> std::result::Result<Trainer<Cpu, Model<Cpu>>, ModelError> {
        let model = Model::build(&cfg.arch().unwrap(), Cpu::new(), cfg.random_seed)?;
        Ok(Trainer::new(model, cfg.clone()).unwrap())
    }

    /// Runs `steps` steps with `reducer` and returns every tensor's bits and the losses.
    fn train(cfg: &TrainConfig, reducer: Option<Threads>, steps: u64) -> (Vec<Vec<u32>>, Vec<u32>) {
        let b = Cpu::new();
        let mut t = trainer(cfg).unwrap();
        if let Some(r) = reducer {
            t.set_reducer(Box::new(r)).unwrap();
        }
        let mut losses = Vec::new();
        for s in 0..steps {
            let (dims, xs, ys) = batch(&cfg.arch, s);
            let x = b.from_vec(&dims, xs).unwrap();
            let y = b.from_vec(&[8], ys).unwrap();
            losses.push(t.train_step(&x, &y, s == 0).unwrap().loss.to_bits());
        }
        let bits = t
            .model()
            .params()
            .tensors()
            .iter()
            .map(|v| b.to_vec(v).unwrap().iter().map(|f| f.to_bits()).collect())
            .collect();
        (bits, losses)
    }

    fn in_threads(cfg: &TrainConfig, steps: u64) -> Vec<(Vec<Vec<u32>>, Vec<u32>)> {
        let handles: Vec<_> = Threads::group(cfg.grad_shards)
            .into_iter()
            .map(|r| {
                let cfg = cfg.clone();
                std::thread::spawn(move || train(&cfg, Some(r), steps))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// The seam: S workers, each computing the shard of its rank and summing through a reducer,
    /// end with weights, batch-norm statistics and losses bit-identical to one process that
    /// computes the S shards itself (`grad_shards = S`); on the MNIST network and on a wide
    /// ResNet with batch norm (attack in batch-norm training mode, running statistics
    /// averaged), with S = 2 and with S = 3 (shards of 3, 3 and 2 rows).
    #[test]
    fn workers_equal_one_process_computing_the_same_shards() {
        for (arch, shards, steps) in [("mnist", 2, 3), ("mnist", 3, 2), ("wrn-10-1", 2, 2)] {
            let cfg = config(arch, shards);
            let alone = train(&cfg, None, steps);
            for (rank, got) in in_threads(&cfg, steps).into_iter().enumerate() {
                assert!(got == alone, "{arch}, {shards} shards: rank {rank} differs");
            }
        }
    }

    /// One shard is today's full-batch step; two shards of natural training are the same step
    /// up to float rounding (the gradient sums 4 + 4 rows instead of 8).
    #[test]
    fn two_shards_are_one_up_to_rounding() {
        let natural = |s| TrainConfig {
            training: TrainingMode::Natural,
            ..config("mnist", s)
        };
        let (one, two) = (train(&natural(1), None, 2), train(&natural(2), None, 2));
        assert_ne!(one.0, two.0, "the shard count changes the rounding");
        let mut worst = 0.0f32;
        for (a, c) in one.0.iter().zip(&two.0) {
            for (&p, &q) in a.iter().zip(c) {
                worst = worst.max((f32::from_bits(p) - f32::from_bits(q)).abs());
            }
        }
        assert!(worst < 1e-5, "largest weight difference {worst}");
    }

    /// Shard 0 of a step attacks its rows exactly as the one-shard step does (its attack draws
    /// the step's first seed, and PGD's random start is drawn row after row), so its
    /// adversarial examples are bit-identical to the first rows of the one-shard step's.
    #[test]
    fn shard_zero_attacks_its_rows_as_the_whole_batch_does() {
        let cfg = config("mnist", 1);
        let b = Cpu::new();
        let (dims, xs, ys) = batch("mnist", 0);
        let mut t = trainer(&cfg).unwrap();
        let x = b.from_vec(&dims, xs.clone()).unwrap();
        let y = b.from_vec(&[8], ys.clone()).unwrap();
        let (xh, yh) = (
            t.rows(&xs, &dims, 0..4).unwrap(),
            t.rows(&ys, &[8], 0..4).unwrap(),
        );
        let mut attack = |x: &CpuTensorOf, y: &CpuTensorOf| {
            let mut rng = step_rng(cfg.random_seed, 0, 1);
            let a = adversarial_batch(&mut t.model, &cfg, 0.3, x, y, &mut rng).unwrap();
            b.to_vec(&a).unwrap()
        };
        let whole = attack(&x, &y);
        let half = attack(&xh, &yh);
        assert!(whole[..half.len()] == half[..]);
        assert!(
            whole[..half.len()] != xs[..half.len()],
            "the attack moved the rows"
        );
    }

    /// With `ema_decay` the model file holds the documented average of every step's weights,
    /// `avg ← d·avg + (1 − d)·w` with `d = min(ema_decay, (1 + t)/(10 + t))` from the initial
    /// weights, batch norm's running statistics averaged and its counter copied: recomputed
    /// here on the host from each step's weights, in the backend's order of operations (two
    /// rounded products, one rounded sum, as `affine` then `add` compute them), so it must
    /// agree bit for bit. A run resumed from a checkpoint after 2 of 4 steps hands out the same
    /// file as the uninterrupted one, and a checkpoint without the average is refused by a
    /// trainer that keeps one.
    #[test]
    fn the_average_is_the_documented_recurrence_and_resumes_bit_identically() {
        let b = Cpu::new();
        let cfg = TrainConfig {
            ema_decay: Some(0.5),
            ..config("wrn-10-1", 1)
        };
        let host = |t: &Trainer<Cpu, Model<Cpu>>| -> Vec<Vec<f32>> {
            let set = t.model().params();
            set.tensors().iter().map(|v| b.to_vec(v).unwrap()).collect()
        };
        let step = |t: &mut Trainer<Cpu, Model<Cpu>>, s: u64| {
            let (dims, xs, ys) = batch("wrn-10-1", s);
            let (x, y) = (
                b.from_vec(&dims, xs).unwrap(),
                b.from_vec(&[8], ys).unwrap(),
            );
            t.train_step(&x, &y, false).unwrap();
        };
        let mut t = trainer(&cfg).unwrap();
        let roles = t.model().params().roles().to_vec();
        assert!(roles.contains(&Role::State) && roles.contains(&Role::Counter));
        let mut want = host(&t);
        let mut resumed = None;
        for s in 0..4u64 {
            step(&mut t, s);
            let d = 0.5f32.min((1.0 + s as f32) / (10.0 + s as f32));
            for ((avg, w), role) in want.iter_mut().zip(host(&t)).zip(&roles) {
                for (a, x) in avg.iter_mut().zip(w) {
                    *a = if *role == Role::Counter {
                        x
                    } else {
                        (d * *a + 0.0) + ((1.0 - d) * x + 0.0)
                    };
                }
            }
            if s == 1 {
                let mut r = trainer(&cfg).unwrap();
                r.restore(&t.checkpoint().unwrap()).unwrap();
                resumed = Some(r);
            }
        }
        let got: Vec<Vec<f32>> = t
            .averaged()
            .unwrap()
            .tensors()
            .iter()
            .map(|v| b.to_vec(v).unwrap())
            .collect();
        for ((g, w), name) in got.iter().zip(&want).zip(t.model().params().names()) {
            let (g, w): (Vec<u32>, Vec<u32>) = (
                g.iter().map(|v| v.to_bits()).collect(),
                w.iter().map(|v| v.to_bits()).collect(),
            );
            assert!(g == w, "{name}: the average differs from the recurrence");
        }
        // The average moved away from the weights and from the initialisation.
        assert!(got != host(&t), "the average equals the last weights");
        let file = t.final_model().unwrap();
        let mut loaded = trainer(&cfg).unwrap();
        loaded
            .model_mut()
            .params_mut()
            .load_safetensors(&b, &file, "")
            .unwrap();
        assert!(host(&loaded) == got, "the model file is not the average");
        let mut r = resumed.unwrap();
        for s in 2..4u64 {
            step(&mut r, s);
        }
        assert!(
            r.final_model().unwrap() == file,
            "resumed run hands out another file"
        );
        let plain = trainer(&config("wrn-10-1", 1))
            .unwrap()
            .checkpoint()
            .unwrap();
        let e = trainer(&cfg)
            .unwrap()
            .restore(&plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ema.") && e.contains("ema_decay"), "{e}");
    }

    /// A sharded run resumed from its checkpoint continues bit-identically, and a reducer of
    /// another worker count than `grad_shards` is refused.
    #[test]
    fn sharded_runs_resume_and_check_their_worker_count() {
        let cfg = config("mnist", 2);
        let whole = train(&cfg, None, 3);
        let b = Cpu::new();
        let mut first = trainer(&cfg).unwrap();
        for s in 0..2 {
            let (dims, xs, ys) = batch("mnist", s);
            let (x, y) = (
                b.from_vec(&dims, xs).unwrap(),
                b.from_vec(&[8], ys).unwrap(),
            );
            first.train_step(&x, &y, false).unwrap();
        }
        let mut resumed = trainer(&cfg).unwrap();
        resumed.restore(&first.checkpoint().unwrap()).unwrap();
        let (dims, xs, ys) = batch("mnist", 2);
        let (x, y) = (
            b.from_vec(&dims, xs).unwrap(),
            b.from_vec(&[8], ys).unwrap(),
        );
        let loss = resumed.train_step(&x, &y, false).unwrap().loss;
        assert_eq!(loss.to_bits(), whole.1[2]);
        let mut t = trainer(&cfg).unwrap();
        let e = t
            .set_reducer(Box::new(Threads::group(3).remove(0)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("grad_shards = 2") && e.contains("3 workers"),
            "{e}"
        );
        assert!(TrainConfig {
            grad_shards: 9,
            ..config("mnist", 1)
        }
        .validate()
        .unwrap_err()
        .to_string()
        .contains("grad_shards = 9"));
    }
}
