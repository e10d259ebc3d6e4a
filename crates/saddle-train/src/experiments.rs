//! The computations behind the paper's figures (Madry et al. 2018, Section 3 and Appendix C):
//! the loss landscape of the inner maximisation (PGD from many random starts), what a model's
//! first layer and softmax layer look like, the capacity study (Figure 4: natural, FGSM and PGD
//! training at growing network widths) and the similarity of two models' input gradients (the
//! transferability study). Drawing and files are left to the caller (the CLI): a capacity sweep
//! keeps its models in a [`ModelStore`] the caller implements.

use std::collections::HashMap;
use std::time::Instant;

use saddle_attacks::transfer::transfer;
use saddle_attacks::{predict, Attack, Fgsm, Pgd};
use saddle_data::Dataset;
use saddle_models::params::{safetensors_metadata, serialize_safetensors};
use saddle_models::{loss_and_input_grad, Classifier, Loss, Model, ParamSet};
use saddle_tensor::{Backend, TensorLike};
use serde::{Deserialize, Serialize};

use crate::config::{TrainConfig, TrainingMode};
use crate::error::{Result, TrainError};
use crate::schedule::Schedule;
use crate::trainer::{Event, Trainer};

/// How many copies of the images one PGD batch holds at most: restarts are run side by side in
/// a batch (each copy draws its own random start), which is much faster than one after another.
const MAX_BATCH: usize = 256;

/// PGD from many random starts on a few images.
#[derive(Clone, Debug, PartialEq)]
pub struct Landscape {
    /// `losses[i][r][t]`: the cross-entropy of image `i` at iterate `t` of restart `r`; `t = 0`
    /// is the random start, `t = steps` the final iterate.
    pub losses: Vec<Vec<Vec<f32>>>,
    /// Per image, the largest final loss over the restarts: the loss at [`Landscape::x_adv`].
    pub worst: Vec<f32>,
    /// Per image, the iterate with the largest final loss (row-major, like the input).
    pub x_adv: Vec<f32>,
}

impl Landscape {
    /// `finals()[i][r]`: the final loss of image `i` after restart `r`.
    pub fn finals(&self) -> Vec<Vec<f32>> {
        self.losses
            .iter()
            .map(|img| img.iter().map(|c| *c.last().expect("a curve")).collect())
            .collect()
    }
}

/// Runs `restarts` PGD attacks (L∞ ball of radius `eps`, step `alpha`, `steps` steps, a random
/// start each, no early stop) on the images `x` (`[n, c, h, w]`, host, in `[0, 1]`) with labels
/// `y` and records the cross-entropy at every iterate.
///
/// # Errors
/// Zero restarts or steps, a bad radius or step size, inputs that do not fit the model.
pub fn landscape<B: Backend>(
    model: &mut dyn Classifier<B>,
    x: &[f32],
    y: &[usize],
    eps: f32,
    alpha: f32,
    steps: usize,
    restarts: usize,
    seed: u64,
) -> Result<Landscape> {
    if restarts == 0 {
        return Err(TrainError::Config("restarts must be at least 1".into()));
    }
    if steps == 0 {
        return Err(TrainError::Config("steps must be at least 1".into()));
    }
    let n = y.len();
    let [c, h, w] = model.input_shape();
    let d = c * h * w;
    if n == 0 || x.len() != n * d {
        return Err(TrainError::Config(format!(
            "landscape needs at least one image of {d} values per label; got {} values for {n} \
             labels",
            x.len()
        )));
    }
    // `k` copies of the batch side by side; `rounds` PGD restarts of that wide batch.
    let k = restarts.min((MAX_BATCH / n).max(1));
    let rounds = restarts.div_ceil(k);
    let b = model.backend().clone();
    let xs: Vec<f32> = (0..k).flat_map(|_| x.iter().copied()).collect();
    let ys: Vec<f32> = (0..k).flat_map(|_| y.iter().map(|&v| v as f32)).collect();
    let xt = b.from_vec(&[k * n, c, h, w], xs)?;
    let yt = b.from_vec(&[k * n], ys)?;
    let pgd = Pgd::linf(eps, alpha, steps)?
        .restarts(rounds)
        .early_stop(false)
        .trace(true)
        .seed(seed);
    let res = pgd.perturb(model, &xt, &yt)?;
    let trace = res.trace.expect("trace asked for");
    let mut losses = vec![Vec::with_capacity(restarts); n];
    for round in &trace.losses {
        for j in 0..k {
            for (i, curves) in losses.iter_mut().enumerate() {
                if curves.len() < restarts {
                    curves.push(round.iter().map(|step| step[j * n + i]).collect());
                }
            }
        }
    }
    // Per image, the copy whose best restart went highest.
    let adv = b.to_vec(&res.x_adv)?;
    let mut worst = Vec::with_capacity(n);
    let mut x_adv = Vec::with_capacity(n * d);
    for i in 0..n {
        let j = (0..k)
            .max_by(|&a, &c| res.loss[a * n + i].total_cmp(&res.loss[c * n + i]))
            .expect("k >= 1");
        worst.push(res.loss[j * n + i]);
        x_adv.extend_from_slice(&adv[(j * n + i) * d..(j * n + i + 1) * d]);
    }
    Ok(Landscape {
        losses,
        worst,
        x_adv,
    })
}

/// Min, median, max of `v` (not empty, finite) and the ratio max / median.
pub fn spread(v: &[f32]) -> (f32, f32, f32, f32) {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let m = s.len();
    let median = if m % 2 == 1 {
        s[m / 2]
    } else {
        0.5 * (s[m / 2 - 1] + s[m / 2])
    };
    (s[0], median, s[m - 1], s[m - 1] / median)
}

/// The first layer's filters: `count` filters of `channels × height × width` weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Filters {
    /// The parameter they come from (for example `conv1.weight`).
    pub name: String,
    /// Number of filters (output channels).
    pub count: usize,
    /// Input channels.
    pub channels: usize,
    /// Kernel height.
    pub height: usize,
    /// Kernel width.
    pub width: usize,
    /// The weights, `[count, channels, height, width]` row-major.
    pub weights: Vec<f32>,
}

/// A filter counts as zero when its largest absolute weight is below this fraction of the
/// largest absolute weight of the layer.
///
/// Relative, because a ReLU network's scale can move between layers; 1 %, because a filter that
/// small changes its feature map by less than 1 % of the strongest filter's on any input in
/// `[0, 1]`, far below what the next layer's (initially comparable) weights can tell apart,
/// while untrained filters (all drawn from one distribution) are all far above it.
pub const ZERO_FILTER_FRACTION: f32 = 0.01;

impl Filters {
    /// Per filter, its largest absolute weight.
    pub fn max_abs(&self) -> Vec<f32> {
        let per = self.channels * self.height * self.width;
        self.weights
            .chunks(per)
            .map(|f| f.iter().fold(0.0f32, |a, v| a.max(v.abs())))
            .collect()
    }

    /// How many filters are not zero: largest absolute weight at least
    /// [`ZERO_FILTER_FRACTION`] of the layer's largest.
    pub fn nonzero(&self) -> usize {
        let m = self.max_abs();
        let top = m.iter().fold(0.0f32, |a, &v| a.max(v));
        if top == 0.0 {
            return 0;
        }
        m.iter()
            .filter(|&&v| v >= ZERO_FILTER_FRACTION * top)
            .count()
    }

    /// The filters as one grayscale image: a grid of `cols` columns with one tile per filter
    /// (the channels' mean for filters of several input channels), tiles separated by `gap`
    /// pixels, values scaled to `[-1, 1]` by the layer's largest absolute weight (gaps are 0).
    pub fn grid(&self, cols: usize, gap: usize) -> Grid {
        let cols = cols.clamp(1, self.count.max(1));
        let rows = self.count.div_ceil(cols);
        let (th, tw) = (self.height, self.width);
        let width = cols * tw + (cols + 1) * gap;
        let height = rows * th + (rows + 1) * gap;
        let top = self.max_abs().iter().fold(0.0f32, |a, &v| a.max(v));
        let scale = if top > 0.0 { 1.0 / top } else { 0.0 };
        let mut pixels = vec![0.0f32; width * height];
        let per = self.channels * th * tw;
        let mut tiles = Vec::with_capacity(self.count);
        for f in 0..self.count {
            let (r, c) = (f / cols, f % cols);
            let (y0, x0) = (gap + r * (th + gap), gap + c * (tw + gap));
            tiles.push((x0, y0));
            let w = &self.weights[f * per..(f + 1) * per];
            for y in 0..th {
                for x in 0..tw {
                    let v: f32 = (0..self.channels)
                        .map(|ch| w[ch * th * tw + y * tw + x])
                        .sum::<f32>()
                        / self.channels as f32;
                    pixels[(y0 + y) * width + x0 + x] = v * scale;
                }
            }
        }
        Grid {
            width,
            height,
            tile_width: tw,
            tile_height: th,
            tiles,
            pixels,
        }
    }
}

/// A grid of filter tiles.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width of one tile.
    pub tile_width: usize,
    /// Height of one tile.
    pub tile_height: usize,
    /// The top-left corner `(x, y)` of each tile, one per filter.
    pub tiles: Vec<(usize, usize)>,
    /// `height × width` values in `[-1, 1]`, row-major.
    pub pixels: Vec<f32>,
}

/// The first convolution's weights: the first four-dimensional parameter.
///
/// # Errors
/// A model without one.
pub fn first_layer_filters<B: Backend>(b: &B, params: &ParamSet<B>) -> Result<Filters> {
    let (name, t) = params
        .iter()
        .find(|(_, t)| t.dims().len() == 4)
        .ok_or_else(|| TrainError::Config("the model has no convolution".into()))?;
    let d = t.dims();
    Ok(Filters {
        name: name.to_string(),
        count: d[0],
        channels: d[1],
        height: d[2],
        width: d[3],
        weights: b.to_vec(t)?,
    })
}

/// The softmax layer's biases: the bias of the last two-dimensional (linear) weight with
/// `classes` rows. Returns its name and values.
///
/// # Errors
/// A model without such a layer or bias.
pub fn softmax_biases<B: Backend>(
    b: &B,
    params: &ParamSet<B>,
    classes: usize,
) -> Result<(String, Vec<f32>)> {
    let (wname, _) = params
        .iter()
        .filter(|(_, t)| t.dims().len() == 2 && t.dims()[0] == classes)
        .last()
        .ok_or_else(|| TrainError::Config("the model has no linear layer to the classes".into()))?;
    let bname = match wname.strip_suffix("weight") {
        Some(p) => format!("{p}bias"),
        None => String::new(),
    };
    let t = params
        .get(&bname)
        .filter(|t| t.dims() == [classes])
        .ok_or_else(|| TrainError::Config(format!("the layer {wname} has no bias")))?;
    Ok((bname, b.to_vec(t)?))
}

/// The training modes of the paper's capacity study (Figure 4), in its order.
pub const CAPACITY_MODES: [TrainingMode; 3] =
    [TrainingMode::Natural, TrainingMode::Fgsm, TrainingMode::Pgd];

/// The name under which a capacity sweep stores the model of `mode` at `scale`: `pgd-s4`.
pub fn capacity_key(mode: TrainingMode, scale: usize) -> String {
    format!("{}-s{scale}", mode.name())
}

/// The name under which a capacity sweep stores the model of `cfg`: [`capacity_key`] for the
/// preset's seed, `pgd-s4-seed<N>` for another (an independently trained copy, as
/// [`capacity_copy_config`] makes).
pub fn sweep_key(cfg: &TrainConfig) -> String {
    let key = capacity_key(cfg.training, cfg.model_scale);
    let preset = TrainConfig::preset("mnist-quick").expect("a built-in preset");
    if cfg.random_seed == preset.random_seed {
        key
    } else {
        format!("{key}-seed{}", cfg.random_seed)
    }
}

/// The independently trained copy A′ of [`capacity_config`]'s model: the same recipe from
/// another seed (the next one), so another initialisation, batch order and random starts.
pub fn capacity_copy_config(mode: TrainingMode, scale: usize, steps: u64) -> TrainConfig {
    let c = capacity_config(mode, scale, steps);
    TrainConfig {
        random_seed: c.random_seed.wrapping_add(1),
        ..c
    }
}

/// One model of the capacity sweep: the `mnist-quick` preset with `training`, `model_scale` and
/// `max_num_training_steps` set. Its one-cycle learning rate is stretched over `steps` (the
/// preset's cycle of 7,800 steps would otherwise still be warming up at the end of a short run)
/// and its ε ramp keeps the preset's fraction of the run (2,000 / 7,800); checkpoints only at
/// the end.
pub fn capacity_config(mode: TrainingMode, scale: usize, steps: u64) -> TrainConfig {
    let quick = TrainConfig::preset("mnist-quick").expect("a built-in preset");
    let full = quick.max_num_training_steps.max(1);
    let learning_rate = match quick.learning_rate {
        Schedule::OneCycle {
            max, warmup, div, ..
        } => Schedule::OneCycle {
            max,
            total: steps,
            warmup,
            div,
        },
        other => other,
    };
    TrainConfig {
        training: mode,
        model_scale: scale,
        max_num_training_steps: steps,
        epsilon_ramp_steps: quick.epsilon_ramp_steps * steps / full,
        learning_rate,
        num_checkpoint_steps: 0,
        ..quick
    }
}

/// How each model of a capacity sweep is evaluated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityEval {
    /// L∞ radius of FGSM and PGD, in `[0, 1]` pixel units.
    pub eps: f32,
    /// PGD's step size.
    pub alpha: f32,
    /// PGD's steps (from a random start, one restart).
    pub steps: usize,
    /// Images per attack batch.
    pub batch_size: usize,
    /// Seed of PGD's random starts.
    pub seed: u64,
}

impl CapacityEval {
    /// `saddle eval`'s MNIST setting (the paper's): ε = 0.3, FGSM, and PGD-40 of step 0.01
    /// from a random start; batches of 200.
    pub fn mnist() -> Self {
        CapacityEval {
            eps: 0.3,
            alpha: 0.01,
            steps: 40,
            batch_size: 200,
            seed: 0,
        }
    }
}

/// One model of a capacity sweep: how it was trained and what it scored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityRow {
    /// Its key in the [`ModelStore`] (`pgd-s4`).
    pub key: String,
    /// The training mode.
    pub training: TrainingMode,
    /// The width scale of the MNIST network (filters 2s and 4s, fc 64s).
    pub scale: usize,
    /// The training seed (the preset's, or the next one for an independent copy).
    pub seed: u64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Training steps.
    pub steps: u64,
    /// Test images evaluated.
    pub examples: usize,
    /// Accuracy on the clean test images.
    pub natural_accuracy: f64,
    /// Accuracy under FGSM.
    pub fgsm_accuracy: f64,
    /// Accuracy under PGD.
    pub pgd_accuracy: f64,
    /// The figure's adversarial training loss: [`CapacityRow::train_loss`] for adversarial
    /// training, [`CapacityRow::pgd_train_loss`] for natural training (whose training batches
    /// are clean).
    pub adversarial_loss: f32,
    /// Mean loss of the training batches over the last [`CapacityRow::loss_window`] steps (the
    /// batches' FGSM or PGD examples; the clean batches for natural training).
    pub train_loss: f32,
    /// Steps averaged in [`CapacityRow::train_loss`].
    pub loss_window: u64,
    /// Mean cross-entropy of the evaluation PGD's examples of the first training batch, after
    /// training.
    pub pgd_train_loss: f32,
    /// Seconds of training (as recorded when the model was trained).
    pub train_seconds: f64,
    /// Seconds of evaluation.
    pub eval_seconds: f64,
    /// Whether the model was found in the store instead of trained.
    pub reused: bool,
}

/// Where a capacity sweep keeps its models, so that an interrupted sweep resumes: the CLI
/// stores `DIR/models/<key>/model.safetensors`, written atomically.
pub trait ModelStore {
    /// The bytes stored under `key`, or `None`.
    ///
    /// # Errors
    /// A store that cannot be read.
    fn load(&mut self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Stores `bytes` under `key`, in full or not at all.
    ///
    /// # Errors
    /// A store that cannot be written.
    fn save(&mut self, key: &str, bytes: &[u8]) -> Result<()>;
}

/// What a capacity sweep reports while it runs.
#[derive(Debug)]
pub enum CapacityEvent<'a> {
    /// The model `key` was found in the store and is not trained again.
    Reused(&'a str),
    /// Model `key` finished training step `step` of `total` with this batch loss.
    Step {
        /// The model's key.
        key: &'a str,
        /// Steps done.
        step: u64,
        /// Steps in all.
        total: u64,
        /// The loss of this step's batch.
        loss: f32,
    },
    /// Model `key` is being evaluated.
    Evaluating(&'a str),
    /// A model is done.
    Done(&'a CapacityRow),
}

/// The safetensors metadata key of what a capacity sweep records with each model.
pub const CAPACITY_METADATA: &str = "saddle.capacity";

/// What a capacity sweep stores with a model (as JSON under [`CAPACITY_METADATA`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Trained {
    config: TrainConfig,
    train_loss: f32,
    loss_window: u64,
    train_seconds: f64,
}

/// Natural, FGSM and PGD accuracy of `model` on the images `x` (host, `[n, c, h, w]` in
/// `[0, 1]`) with labels `y`, in batches of `eval.batch_size`; the model runs in evaluation
/// mode.
///
/// # Errors
/// Images that do not fit the model or the labels, invalid attack settings.
pub fn attack_accuracies<B: Backend>(
    model: &mut dyn Classifier<B>,
    x: &[f32],
    y: &[usize],
    eval: &CapacityEval,
) -> Result<(f64, f64, f64)> {
    let [c, h, w] = model.input_shape();
    let d = c * h * w;
    let n = y.len();
    if n == 0 || x.len() != n * d {
        return Err(TrainError::Config(format!(
            "the evaluation needs at least one image of {d} values per label; got {} values \
             for {n} labels",
            x.len()
        )));
    }
    if eval.batch_size == 0 {
        return Err(TrainError::Config(
            "the evaluation batch size must be at least 1".into(),
        ));
    }
    let b = model.backend().clone();
    let fgsm = Fgsm::new(eval.eps)?;
    model.set_training(false);
    let (mut nat, mut fg, mut pg) = (0usize, 0usize, 0usize);
    for s in (0..n).step_by(eval.batch_size) {
        let e = (s + eval.batch_size).min(n);
        let labels = &y[s..e];
        let xt = b.from_vec(&[e - s, c, h, w], x[s * d..e * d].to_vec())?;
        let yt = b.from_vec(&[e - s], labels.iter().map(|&v| v as f32).collect())?;
        nat += predict(&*model, &xt)?
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
        fg += fgsm.perturb(model, &xt, &yt)?.correct(labels);
        let pgd = Pgd::linf(eval.eps, eval.alpha, eval.steps)?.seed(eval.seed ^ s as u64);
        pg += pgd.perturb(model, &xt, &yt)?.correct(labels);
    }
    let r = |k: usize| k as f64 / n as f64;
    Ok((r(nat), r(fg), r(pg)))
}

/// Mean cross-entropy of the evaluation PGD's examples of the first training batch.
fn pgd_train_loss<B: Backend>(
    model: &mut dyn Classifier<B>,
    train: &Dataset,
    batch: usize,
    eval: &CapacityEval,
) -> Result<f32> {
    let b = model.backend().clone();
    let idx: Vec<usize> = (0..batch.min(train.len()).max(1)).collect();
    let (xs, ys) = train.batch(&idx)?;
    let xt = b.from_vec(&train.batch_shape(idx.len()), xs)?;
    let yt = b.from_vec(&[idx.len()], ys)?;
    let res = Pgd::linf(eval.eps, eval.alpha, eval.steps)?
        .seed(eval.seed)
        .perturb(model, &xt, &yt)?;
    Ok((res.loss.iter().map(|&v| v as f64).sum::<f64>() / res.loss.len().max(1) as f64) as f32)
}

/// Trains the models of `configs` (each an MNIST network of its `model_scale`, trained as its
/// `training` says, for example with [`capacity_config`]) on `train`, or takes them from
/// `store` where they are already there, and evaluates each on the test images `test_x`
/// (`[n, c, h, w]` host values in `[0, 1]`) with labels `test_y`: natural accuracy, accuracy
/// under FGSM and PGD ([`CapacityEval`]), and the adversarial training loss (the paper's
/// Figure 4). A trained model is stored under [`sweep_key`] as soon as it is trained, with
/// its training loss and time in its metadata, so that a sweep resumes where it was stopped.
///
/// # Errors
/// No configs, two configs with one key, an invalid config, a stored model that was trained
/// with another configuration (found before anything is trained), images that do not fit,
/// and whatever training, the attacks or the store report.
#[allow(clippy::too_many_arguments)]
pub fn capacity_sweep<B: Backend>(
    backend: &B,
    configs: &[TrainConfig],
    train: &Dataset,
    test_x: &[f32],
    test_y: &[usize],
    eval: &CapacityEval,
    store: &mut dyn ModelStore,
    on_event: &mut dyn FnMut(CapacityEvent<'_>),
) -> Result<Vec<CapacityRow>> {
    if configs.is_empty() {
        return Err(TrainError::Config(
            "a capacity sweep needs at least one model".into(),
        ));
    }
    // Everything that can be checked before hours of training is checked first.
    let d: usize = train.image_shape().iter().product();
    if test_y.is_empty() || test_x.len() != test_y.len() * d {
        return Err(TrainError::Config(format!(
            "the evaluation needs at least one test image of {d} values (the training images' \
             size) per label; got {} values for {} labels",
            test_x.len(),
            test_y.len()
        )));
    }
    let mut found = Vec::with_capacity(configs.len());
    let mut keys: Vec<String> = Vec::with_capacity(configs.len());
    for cfg in configs {
        cfg.validate()?;
        let key = sweep_key(cfg);
        if keys.contains(&key) {
            return Err(TrainError::Config(format!(
                "the model {key} is asked for twice"
            )));
        }
        let stored = match store.load(&key)? {
            Some(bytes) => {
                let meta = safetensors_metadata(&bytes)?;
                let t: Trained = meta
                    .get(CAPACITY_METADATA)
                    .and_then(|s| serde_json::from_str(s).ok())
                    .ok_or_else(|| {
                        TrainError::Checkpoint(format!(
                            "the stored model {key} has no readable {CAPACITY_METADATA} \
                             metadata: it was not written by a capacity sweep"
                        ))
                    })?;
                if t.config != *cfg {
                    return Err(TrainError::Checkpoint(format!(
                        "the stored model {key} was trained with another configuration ({} \
                         steps, not {}, or other settings): remove it or sweep into another \
                         folder",
                        t.config.max_num_training_steps, cfg.max_num_training_steps
                    )));
                }
                Some((bytes, t))
            }
            None => None,
        };
        keys.push(key);
        found.push(stored);
    }
    let mut rows = Vec::with_capacity(configs.len());
    for ((cfg, key), stored) in configs.iter().zip(&keys).zip(found) {
        let reused = stored.is_some();
        let (mut model, t) = match stored {
            Some((bytes, t)) => {
                on_event(CapacityEvent::Reused(key));
                (Model::load(backend.clone(), &bytes, None)?, t)
            }
            None => {
                let (model, t) = train_one(backend, cfg, train, key, on_event)?;
                let mut meta: HashMap<String, String> = model.metadata();
                meta.insert(
                    CAPACITY_METADATA.into(),
                    serde_json::to_string(&t).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
                );
                let bytes = serialize_safetensors(&model.params().to_host(backend, "")?, meta)?;
                store.save(key, &bytes)?;
                (model, t)
            }
        };
        on_event(CapacityEvent::Evaluating(key));
        let t0 = Instant::now();
        let (nat, fgsm, pgd) = attack_accuracies(&mut model, test_x, test_y, eval)?;
        let pgd_loss = pgd_train_loss(&mut model, train, cfg.training_batch_size, eval)?;
        let row = CapacityRow {
            key: key.clone(),
            training: cfg.training,
            scale: cfg.model_scale,
            seed: cfg.random_seed,
            parameters: model.params().numel(),
            steps: cfg.max_num_training_steps,
            examples: test_y.len(),
            natural_accuracy: nat,
            fgsm_accuracy: fgsm,
            pgd_accuracy: pgd,
            adversarial_loss: if cfg.training == TrainingMode::Natural {
                pgd_loss
            } else {
                t.train_loss
            },
            train_loss: t.train_loss,
            loss_window: t.loss_window,
            pgd_train_loss: pgd_loss,
            train_seconds: t.train_seconds,
            eval_seconds: t0.elapsed().as_secs_f64(),
            reused,
        };
        on_event(CapacityEvent::Done(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// How adversarial examples crafted on an independently trained copy A′ transfer to the model
/// A (the paper's transferability across capacity): A's accuracy under FGSM and PGD examples of
/// A′, and the mean cosine similarity of the two models' input gradients.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CopyTransfer {
    /// Test images.
    pub examples: usize,
    /// A's accuracy on the clean images.
    pub natural_accuracy: f64,
    /// A′'s accuracy under its own (white-box) FGSM examples.
    pub copy_fgsm_accuracy: f64,
    /// A's accuracy under FGSM examples crafted on A′.
    pub fgsm_accuracy: f64,
    /// A′'s accuracy under its own (white-box) PGD examples.
    pub copy_pgd_accuracy: f64,
    /// A's accuracy under PGD examples crafted on A′.
    pub pgd_accuracy: f64,
    /// Mean over the images of the cosine of A's and A′'s input gradients of the cross-entropy.
    pub gradient_cosine: f64,
    /// Images where both gradients are non-zero, so that the cosine is defined.
    pub cosine_images: usize,
}

/// [`CopyTransfer`] of `copy` (the source A′) onto `model` (the target A) on the test images
/// `x` (`[n, c, h, w]` host values in `[0, 1]`) with labels `y`, with the attacks of `eval`
/// (the PGD seeds per batch as in [`attack_accuracies`]).
///
/// # Errors
/// Models of different inputs or classes, images that do not fit, invalid attack settings.
pub fn copy_transfer<B: Backend>(
    model: &mut dyn Classifier<B>,
    copy: &mut dyn Classifier<B>,
    x: &[f32],
    y: &[usize],
    eval: &CapacityEval,
) -> Result<CopyTransfer> {
    let [c, h, w] = model.input_shape();
    let d = c * h * w;
    let n = y.len();
    if n == 0 || x.len() != n * d || eval.batch_size == 0 {
        return Err(TrainError::Config(format!(
            "the transfer needs at least one image of {d} values per label and a batch size of \
             at least 1; got {} values for {n} labels, batch size {}",
            x.len(),
            eval.batch_size
        )));
    }
    let b = model.backend().clone();
    let fgsm = Fgsm::new(eval.eps)?;
    let (mut nat, mut copy_fg, mut fg, mut copy_pg, mut pg) = (0, 0, 0, 0, 0);
    let mut cos = Vec::with_capacity(n);
    for s in (0..n).step_by(eval.batch_size) {
        let e = (s + eval.batch_size).min(n);
        let xt = b.from_vec(&[e - s, c, h, w], x[s * d..e * d].to_vec())?;
        let yt = b.from_vec(&[e - s], y[s..e].iter().map(|&v| v as f32).collect())?;
        cos.extend(gradient_cosine(model, copy, &xt, &yt)?);
        let r = transfer(&fgsm, copy, model, &xt, &yt)?;
        nat += r.target_natural;
        copy_fg += r.source_adversarial;
        fg += r.target_adversarial;
        let pgd = Pgd::linf(eval.eps, eval.alpha, eval.steps)?.seed(eval.seed ^ s as u64);
        let r = transfer(&pgd, copy, model, &xt, &yt)?;
        copy_pg += r.source_adversarial;
        pg += r.target_adversarial;
    }
    let (gradient_cosine, cosine_images) = mean_defined(&cos);
    let r = |k: usize| k as f64 / n as f64;
    Ok(CopyTransfer {
        examples: n,
        natural_accuracy: r(nat),
        copy_fgsm_accuracy: r(copy_fg),
        fgsm_accuracy: r(fg),
        copy_pgd_accuracy: r(copy_pg),
        pgd_accuracy: r(pg),
        gradient_cosine,
        cosine_images,
    })
}

/// Trains one model of the sweep; its mean loss over the last tenth of the steps (at least one).
fn train_one<B: Backend>(
    backend: &B,
    cfg: &TrainConfig,
    train: &Dataset,
    key: &str,
    on_event: &mut dyn FnMut(CapacityEvent<'_>),
) -> Result<(Model<B>, Trained)> {
    let model = Model::build(&cfg.arch()?, backend.clone(), cfg.random_seed)?;
    let mut trainer = Trainer::new(model, cfg.clone())?;
    let total = cfg.max_num_training_steps;
    let mut losses = Vec::with_capacity(total as usize);
    let t0 = Instant::now();
    trainer.run(train, |ev| {
        if let Event::Step(m) = ev {
            losses.push(m.loss);
            on_event(CapacityEvent::Step {
                key,
                step: m.step,
                total,
                loss: m.loss,
            });
        }
        Ok(())
    })?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let window = (losses.len() / 10).max(1).min(losses.len());
    let last = &losses[losses.len() - window..];
    let train_loss = (last.iter().map(|&v| v as f64).sum::<f64>() / window.max(1) as f64) as f32;
    // The experiments' runs have no robustness check: the model is the last step's, as
    // `Trainer::final_model` would hand out.
    Ok((
        trainer.into_model(),
        Trained {
            config: cfg.clone(),
            train_loss,
            loss_window: window as u64,
            train_seconds,
        },
    ))
}

// The similarity of two models' input gradients (transferability).

/// The gradient of each image's cross-entropy with respect to the image (host, shaped like
/// `x`), with the model in evaluation mode (its mode is restored).
///
/// # Errors
/// Images or labels that do not fit the model.
pub fn input_gradients<B: Backend>(
    model: &mut dyn Classifier<B>,
    x: &B::Tensor,
    y: &B::Tensor,
) -> Result<Vec<f32>> {
    let was = model.is_training();
    model.set_training(false);
    // The gradient of the batch's summed loss: image i's gradient is that of its own loss.
    let r = loss_and_input_grad(&*model, x, y, Loss::CrossEntropy);
    model.set_training(was);
    let (_, gx, _) = r?;
    Ok(model.backend().to_vec(&gx)?)
}

/// Per image (`per` values each), the cosine similarity of the gradients `a` and `b` (in `f64`),
/// or `None` where either is exactly zero (a saturated softmax), where it is undefined.
pub fn cosines(a: &[f32], b: &[f32], per: usize) -> Vec<Option<f64>> {
    a.chunks(per.max(1))
        .zip(b.chunks(per.max(1)))
        .map(|(u, v)| {
            let (mut uv, mut uu, mut vv) = (0.0f64, 0.0f64, 0.0f64);
            for (&p, &q) in u.iter().zip(v) {
                let (p, q) = (p as f64, q as f64);
                uv += p * q;
                uu += p * p;
                vv += q * q;
            }
            (uu > 0.0 && vv > 0.0).then(|| (uv / (uu * vv).sqrt()).clamp(-1.0, 1.0))
        })
        .collect()
}

/// Per image of `x` (labels `y`), the cosine similarity of the input gradients of the
/// cross-entropy of models `a` and `b` (`None` where either gradient is zero).
///
/// # Errors
/// Models of different input shapes or class counts; images or labels that do not fit.
pub fn gradient_cosine<B: Backend>(
    a: &mut dyn Classifier<B>,
    b: &mut dyn Classifier<B>,
    x: &B::Tensor,
    y: &B::Tensor,
) -> Result<Vec<Option<f64>>> {
    if a.input_shape() != b.input_shape() || a.num_classes() != b.num_classes() {
        return Err(TrainError::Config(format!(
            "models of different inputs or classes: {:?} images to {} classes, and {:?} images \
             to {} classes",
            a.input_shape(),
            a.num_classes(),
            b.input_shape(),
            b.num_classes()
        )));
    }
    let [c, h, w] = a.input_shape();
    let ga = input_gradients(a, x, y)?;
    let gb = input_gradients(b, x, y)?;
    Ok(cosines(&ga, &gb, c * h * w))
}

/// The mean of the defined values of `v` and how many there are (0 and 0 for none).
pub fn mean_defined(v: &[Option<f64>]) -> (f64, usize) {
    let d: Vec<f64> = v.iter().flatten().copied().collect();
    if d.is_empty() {
        (0.0, 0)
    } else {
        (d.iter().sum::<f64>() / d.len() as f64, d.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_models::MnistNet;
    use saddle_tensor::cpu::Cpu;

    fn images(n: usize) -> (Vec<f32>, Vec<usize>) {
        let x = (0..n * 784)
            .map(|i| ((i * 31) % 101) as f32 / 101.0)
            .collect();
        (x, (0..n).map(|i| (i * 3) % 10).collect())
    }

    fn ce(net: &MnistNet<Cpu>, x: &[f32], y: &[usize]) -> Vec<f32> {
        let b = Cpu::new();
        let n = y.len();
        let xt = b.from_vec(&[n, 1, 28, 28], x.to_vec()).unwrap();
        let yt = b
            .from_vec(&[n], y.iter().map(|&v| v as f32).collect())
            .unwrap();
        let z = net.logits(&xt).unwrap();
        b.to_vec(&b.cross_entropy(&z, &yt).unwrap()).unwrap()
    }

    #[test]
    fn curves_have_one_point_per_iterate_and_end_at_the_returned_example() {
        let mut net = MnistNet::new(Cpu::new(), 1, 5).unwrap();
        let (x, y) = images(3);
        // 7 restarts of 3 images run side by side in one batch of 21.
        let l = landscape(&mut net, &x, &y, 0.3, 0.05, 4, 7, 1).unwrap();
        assert_eq!(l.losses.len(), 3);
        for img in &l.losses {
            assert_eq!(img.len(), 7);
            assert!(img.iter().all(|c| c.len() == 5));
        }
        let finals = l.finals();
        let at_adv = ce(&net, &l.x_adv, &y);
        for i in 0..3 {
            let top = finals[i].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            assert!((top - l.worst[i]).abs() < 1e-5, "{top} vs {}", l.worst[i]);
            assert!((at_adv[i] - l.worst[i]).abs() < 1e-4 * (1.0 + at_adv[i].abs()));
            // Random starts differ.
            assert!(l.losses[i][0][0] != l.losses[i][1][0]);
            // The adversarial example stays in the ball.
            let d = x[i * 784..(i + 1) * 784]
                .iter()
                .zip(&l.x_adv[i * 784..(i + 1) * 784])
                .fold(0.0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(d <= 0.3 + 1e-6);
        }
    }

    #[test]
    fn without_a_ball_every_curve_is_the_clean_loss() {
        let mut net = MnistNet::new(Cpu::new(), 1, 2).unwrap();
        let (x, y) = images(2);
        let clean = ce(&net, &x, &y);
        let l = landscape(&mut net, &x, &y, 0.0, 0.01, 3, 2, 0).unwrap();
        for i in 0..2 {
            for c in &l.losses[i] {
                for &v in c {
                    assert!((v - clean[i]).abs() < 1e-5, "{v} vs {}", clean[i]);
                }
            }
        }
    }

    #[test]
    fn restarts_beyond_one_batch_run_in_rounds() {
        let mut net = MnistNet::new(Cpu::new(), 1, 3).unwrap();
        let (x, y) = images(1);
        let l = landscape(&mut net, &x, &y, 0.1, 0.05, 1, MAX_BATCH + 3, 4).unwrap();
        assert_eq!(l.losses[0].len(), MAX_BATCH + 3);
        let top = l.finals()[0]
            .iter()
            .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        assert_eq!(top, l.worst[0]);
    }

    #[test]
    fn zero_restarts_or_steps_are_errors() {
        let mut net = MnistNet::new(Cpu::new(), 1, 3).unwrap();
        let (x, y) = images(1);
        assert!(landscape(&mut net, &x, &y, 0.3, 0.01, 2, 0, 0).is_err());
        assert!(landscape(&mut net, &x, &y, 0.3, 0.01, 0, 2, 0).is_err());
        assert!(landscape(&mut net, &x[..10], &y, 0.3, 0.01, 2, 2, 0).is_err());
    }

    #[test]
    fn spread_of_final_losses() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0, 1.5));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0, 1.6));
    }

    #[test]
    fn the_filter_grid_has_one_tile_per_filter() {
        let b = Cpu::new();
        let net = MnistNet::new(b, 3, 1).unwrap();
        let f = first_layer_filters(&b, net.params()).unwrap();
        assert_eq!(f.name, "conv1.weight");
        assert_eq!((f.count, f.channels, f.height, f.width), (6, 1, 5, 5));
        let g = f.grid(4, 1);
        assert_eq!(g.tiles.len(), 6);
        assert_eq!((g.width, g.height), (4 * 5 + 5, 2 * 5 + 3));
        // Tile 5 (row 1, column 1) holds filter 5, scaled by the layer's largest weight.
        let top = f.max_abs().iter().fold(0.0f32, |a, &v| a.max(v));
        let (x0, y0) = g.tiles[5];
        assert_eq!((x0, y0), (7, 7));
        assert_eq!(g.pixels[y0 * g.width + x0], f.weights[5 * 25] / top);
        assert!(g.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(f.nonzero(), 6);
    }

    #[test]
    fn small_filters_count_as_zero() {
        let mut weights = vec![0.0f32; 3 * 4];
        weights[0] = 1.0; // filter 0: max 1
        weights[4] = -0.5; // filter 1: max 0.5
        weights[8] = 0.009; // filter 2: below 1 % of 1
        let f = Filters {
            name: "w".into(),
            count: 3,
            channels: 1,
            height: 2,
            width: 2,
            weights,
        };
        assert_eq!(f.nonzero(), 2);
    }

    #[test]
    fn softmax_biases_are_the_last_linear_layers() {
        let b = Cpu::new();
        let net = MnistNet::new(b, 1, 1).unwrap();
        let (name, v) = softmax_biases(&b, net.params(), 10).unwrap();
        assert_eq!(name, "fc2.bias");
        assert_eq!(v, b.to_vec(net.params().get("fc2.bias").unwrap()).unwrap());
        assert!(softmax_biases(&b, net.params(), 7).is_err());
    }

    /// A model store in memory that counts what it is asked.
    #[derive(Default)]
    struct Memory {
        files: HashMap<String, Vec<u8>>,
        saves: usize,
    }

    impl ModelStore for Memory {
        fn load(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
            Ok(self.files.get(key).cloned())
        }
        fn save(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
            self.saves += 1;
            self.files.insert(key.to_string(), bytes.to_vec());
            Ok(())
        }
    }

    fn tiny_sweep() -> (
        Vec<TrainConfig>,
        Dataset,
        Vec<f32>,
        Vec<usize>,
        CapacityEval,
    ) {
        let (x, y) = images(30);
        let train = Dataset::new(
            "synthetic",
            x.clone(),
            y.iter().map(|&v| v as u8).collect(),
            [30, 1, 28, 28],
            10,
        )
        .unwrap();
        let configs = [TrainingMode::Natural, TrainingMode::Pgd]
            .into_iter()
            .map(|m| TrainConfig {
                training_batch_size: 10,
                k: 2,
                a: 0.1,
                ..capacity_config(m, 1, 3)
            })
            .collect();
        let eval = CapacityEval {
            eps: 0.3,
            alpha: 0.1,
            steps: 2,
            batch_size: 4,
            seed: 3,
        };
        (
            configs,
            train,
            x[..10 * 784].to_vec(),
            y[..10].to_vec(),
            eval,
        )
    }

    #[test]
    fn the_capacity_config_is_mnist_quick_shrunk_to_the_run() {
        let c = capacity_config(TrainingMode::Fgsm, 4, 780);
        let q = TrainConfig::preset("mnist-quick").unwrap();
        assert_eq!((c.training, c.model_scale), (TrainingMode::Fgsm, 4));
        assert_eq!((c.max_num_training_steps, c.epsilon_ramp_steps), (780, 200));
        assert!(matches!(
            c.learning_rate,
            Schedule::OneCycle { total: 780, .. }
        ));
        assert_eq!(
            (c.k, c.a, c.training_batch_size),
            (q.k, q.a, q.training_batch_size)
        );
        c.validate().unwrap();
    }

    #[test]
    fn a_capacity_sweep_writes_one_row_per_model_and_reuses_stored_models() {
        let (configs, train, x, y, eval) = tiny_sweep();
        let b = Cpu::new();
        let mut store = Memory::default();
        let mut steps = 0;
        let rows = capacity_sweep(&b, &configs, &train, &x, &y, &eval, &mut store, &mut |e| {
            if let CapacityEvent::Step { .. } = e {
                steps += 1;
            }
        })
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(store.saves, 2);
        assert_eq!(steps, 6, "two models of 3 steps");
        assert_eq!(rows[0].key, "natural-s1");
        assert_eq!(rows[1].key, "pgd-s1");
        for r in &rows {
            assert!(!r.reused);
            assert_eq!((r.scale, r.steps, r.examples, r.loss_window), (1, 3, 10, 1));
            for a in [r.natural_accuracy, r.fgsm_accuracy, r.pgd_accuracy] {
                // Accuracies on 10 images are multiples of 1/10.
                assert!((0.0..=1.0).contains(&a) && ((a * 10.0).round() - a * 10.0).abs() < 1e-9);
            }
            assert!(r.train_loss.is_finite() && r.pgd_train_loss.is_finite());
        }
        // Natural training's figure loss is the PGD loss, adversarial training's its own.
        assert_eq!(rows[0].adversarial_loss, rows[0].pgd_train_loss);
        assert_eq!(rows[1].adversarial_loss, rows[1].train_loss);

        // Again: nothing is trained or stored, and every number is the same.
        let mut steps = 0;
        let again = capacity_sweep(&b, &configs, &train, &x, &y, &eval, &mut store, &mut |e| {
            if let CapacityEvent::Step { .. } = e {
                steps += 1;
            }
        })
        .unwrap();
        assert_eq!((store.saves, steps), (2, 0));
        for (r, a) in rows.iter().zip(&again) {
            assert!(a.reused);
            let same = CapacityRow {
                eval_seconds: r.eval_seconds,
                reused: true,
                ..r.clone()
            };
            assert_eq!(
                CapacityRow {
                    eval_seconds: r.eval_seconds,
                    ..a.clone()
                },
                same
            );
        }

        // A stored model trained otherwise is an error before anything is trained.
        let mut longer = configs.clone();
        longer[1].max_num_training_steps = 4;
        let mut steps = 0;
        let e = capacity_sweep(&b, &longer, &train, &x, &y, &eval, &mut store, &mut |e| {
            if let CapacityEvent::Step { .. } = e {
                steps += 1;
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("pgd-s1"), "{e}");
        assert_eq!((store.saves, steps), (2, 0));
    }

    #[test]
    fn a_capacity_sweep_refuses_bad_inputs() {
        let (configs, train, x, y, eval) = tiny_sweep();
        let b = Cpu::new();
        let mut store = Memory::default();
        let mut none = |_: CapacityEvent<'_>| {};
        assert!(capacity_sweep(&b, &[], &train, &x, &y, &eval, &mut store, &mut none).is_err());
        let twice = vec![configs[0].clone(), configs[0].clone()];
        assert!(capacity_sweep(&b, &twice, &train, &x, &y, &eval, &mut store, &mut none).is_err());
        assert!(capacity_sweep(
            &b,
            &configs,
            &train,
            &x[..100],
            &y,
            &eval,
            &mut store,
            &mut none
        )
        .is_err());
        assert_eq!(store.saves, 0);
    }

    #[test]
    fn copies_have_their_own_keys_and_a_copy_of_itself_transfers_as_white_box() {
        let c = capacity_copy_config(TrainingMode::Pgd, 4, 30);
        assert_eq!(
            sweep_key(&capacity_config(TrainingMode::Pgd, 4, 30)),
            "pgd-s4"
        );
        assert_eq!(
            sweep_key(&c),
            format!(
                "pgd-s4-seed{}",
                capacity_config(TrainingMode::Pgd, 4, 30).random_seed + 1
            )
        );
        c.validate().unwrap();

        let b = Cpu::new();
        let (x, y) = images(6);
        let eval = CapacityEval {
            eps: 0.3,
            alpha: 0.1,
            steps: 3,
            batch_size: 4,
            seed: 1,
        };
        let mut a = MnistNet::new(b, 1, 5).unwrap();
        let mut twin = MnistNet::new(b, 1, 5).unwrap();
        // A copy with identical weights: its examples are A's own white-box examples, so the
        // "transferred" accuracies equal the white-box ones of attack_accuracies (same seeds
        // per batch), and the gradients agree (cosine 1 within f64 rounding, as below).
        let t = copy_transfer(&mut a, &mut twin, &x, &y, &eval).unwrap();
        let (nat, fg, pg) = attack_accuracies(&mut a, &x, &y, &eval).unwrap();
        assert_eq!((t.examples, t.natural_accuracy), (6, nat));
        assert_eq!((t.fgsm_accuracy, t.copy_fgsm_accuracy), (fg, fg));
        assert_eq!((t.pgd_accuracy, t.copy_pgd_accuracy), (pg, pg));
        assert_eq!(t.cosine_images, 6);
        assert!(
            (t.gradient_cosine - 1.0).abs() < 1e-12,
            "{}",
            t.gradient_cosine
        );
        // Another initialisation: the gradients point elsewhere.
        let mut other = MnistNet::new(b, 1, 6).unwrap();
        let t = copy_transfer(&mut a, &mut other, &x, &y, &eval).unwrap();
        assert!(t.gradient_cosine < 0.99, "{}", t.gradient_cosine);
        assert!(copy_transfer(&mut a, &mut other, &x[..10], &y, &eval).is_err());
    }

    #[test]
    fn the_gradient_cosine_of_a_model_with_itself_is_one() {
        let b = Cpu::new();
        let (x, y) = images(4);
        let xt = b.from_vec(&[4, 1, 28, 28], x).unwrap();
        let yt = b
            .from_vec(&[4], y.iter().map(|&v| v as f32).collect())
            .unwrap();
        let mut a = MnistNet::new(b, 1, 5).unwrap();
        let mut twin = MnistNet::new(b, 1, 5).unwrap();
        let mut other = MnistNet::new(b, 1, 6).unwrap();
        let same = gradient_cosine(&mut a, &mut twin, &xt, &yt).unwrap();
        assert_eq!(same.len(), 4);
        // Identical weights give identical gradients; the f64 cosine of a vector with itself
        // is 1 up to a few roundings (1e-12 is ~5,000 ulp of 1).
        for c in &same {
            assert!((c.unwrap() - 1.0).abs() < 1e-12, "{c:?}");
        }
        let g = input_gradients(&mut a, &xt, &yt).unwrap();
        assert!(cosines(&g, &g, 784)
            .iter()
            .all(|c| (c.unwrap() - 1.0).abs() < 1e-12));
        // Another initialisation points elsewhere: the check above is not vacuous.
        let diff = gradient_cosine(&mut a, &mut other, &xt, &yt).unwrap();
        let back = gradient_cosine(&mut other, &mut a, &xt, &yt).unwrap();
        let (mean, k) = mean_defined(&diff);
        assert_eq!(k, 4);
        assert!(mean < 0.99, "{mean}");
        for (p, q) in diff.iter().zip(&back) {
            assert!((p.unwrap() - q.unwrap()).abs() < 1e-12);
            assert!((-1.0..=1.0).contains(&p.unwrap()));
        }
    }

    #[test]
    fn cosines_by_hand() {
        // Image 0: (1, 0) and (1, 1): 1/√2. Image 1: a zero gradient: undefined.
        let c = cosines(&[1.0, 0.0, 0.0, 0.0], &[1.0, 1.0, 2.0, 3.0], 2);
        assert!((c[0].unwrap() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
        assert_eq!(c[1], None);
        assert_eq!(mean_defined(&c), (c[0].unwrap(), 1));
        assert_eq!(cosines(&[1.0, 2.0], &[-2.0, -4.0], 2), vec![Some(-1.0)]);
    }

    #[test]
    fn models_of_different_inputs_have_no_gradient_cosine() {
        let b = Cpu::new();
        let mut a = MnistNet::new(b, 1, 5).unwrap();
        let arch: saddle_models::Arch = "wrn-10-1".parse().unwrap();
        let mut w = Model::build(&arch, b, 1).unwrap();
        let x = b.full(&[1, 1, 28, 28], 0.5).unwrap();
        let y = b.from_vec(&[1], vec![0.0]).unwrap();
        assert!(gradient_cosine(&mut a, &mut w, &x, &y).is_err());
    }
}
