//! `saddle train`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use saddle_data::{Dataset, Split};
use saddle_models::{Classifier, Model};
use saddle_train::config::{N_FGSM_NOISE, PRESETS};
use saddle_train::{Event, TrainConfig, Trainer, TrainingMode};

use super::in_pool;
use crate::fsutil;
use crate::progress::Progress;

// The MPI glue, shared with `saddle eval` (`super::train::mpi`).
use crate::mpi::{self, Place};

/// Arguments of `saddle train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// A TOML config (keys as in MadryLab's mnist_challenge config.json: max_num_training_steps,
    /// training_batch_size, epsilon, k, a, random_start, loss_func, ...).
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// A built-in recipe: mnist-paper, mnist-quick, mnist-natural, mnist-smoke, cifar-paper,
    /// cifar-quick, cifar-smoke.
    #[arg(long)]
    preset: Option<String>,
    /// Override the config's arch: the network to train (mnist, wrn-madry-34-10, wrn-28-10, ...).
    #[arg(long)]
    arch: Option<String>,
    /// Override the config's random_seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the config's max_num_training_steps (the learning-rate schedule is kept as it
    /// is, so a shorter run stops part of the way through it; see --stretch-schedule).
    #[arg(long)]
    steps: Option<u64>,
    /// With --steps N: stretch the learning-rate schedule to the N steps (a one-cycle total and
    /// piecewise boundaries scaled by N / the config's steps), e.g. `--preset cifar-quick
    /// --steps 1800 --stretch-schedule` for a machine where the preset's steps take too long.
    #[arg(long, requires = "steps")]
    stretch_schedule: bool,
    /// Turn on the robustness check (the guard against catastrophic overfitting) every N steps,
    /// with the config's `[robust_check]` settings or the defaults (512 check images, PGD-10,
    /// stop on a fall of 20 points below the best check): the checks go to metrics.jsonl, and a
    /// run that falls stops with the best check's weights in model.safetensors.
    #[arg(long, value_name = "N")]
    robust_check: Option<u64>,
    /// Override the config's grad_shards: split each global batch into S shards attacked and
    /// differentiated one by one, their gradients summed in shard order (default 1: the whole
    /// batch). `mpirun -np S saddle train` computes one shard per rank and gives the same
    /// weights, bit for bit, as one process with --grad-shards S; under mpirun the shard count
    /// is the number of ranks.
    #[arg(long, value_name = "S")]
    grad_shards: Option<usize>,
    /// Output folder: config.toml, metrics.jsonl, checkpoint.safetensors, model.safetensors.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    run: super::Run,
}

/// The training set named by the config, limited to `train_limit` examples.
pub fn load_train_set(cfg: &TrainConfig, data_dir: Option<&Path>) -> Result<Dataset> {
    Ok(load_train_and_check_sets(cfg, data_dir)?.0)
}

/// The training set (as [`load_train_set`]) and, with a `[robust_check]`, its check images:
/// training images `train_limit..` when the limit leaves enough of them (held out), else the
/// first training images; with a line that says which.
fn load_train_and_check_sets(
    cfg: &TrainConfig,
    data_dir: Option<&Path>,
) -> Result<(Dataset, Option<(Dataset, String)>)> {
    let root = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(saddle_data::datasets_dir);
    let ds = match cfg.dataset.as_str() {
        "mnist" => saddle_data::mnist::load(root.join("mnist"), Split::Train)?,
        "fashion-mnist" => {
            saddle_data::fashion_mnist::load(root.join("fashion-mnist"), Split::Train)?
        }
        "cifar10" => saddle_data::cifar10::load(root.join("cifar10"), Split::Train)?,
        other => bail!("unknown dataset {other}"),
    };
    let check = cfg.robust_check.as_ref().map(|rc| {
        let n = rc.examples.min(ds.len());
        let held = cfg.train_limit > 0 && ds.len() - cfg.train_limit.min(ds.len()) >= n;
        if held {
            let idx: Vec<usize> = (cfg.train_limit..cfg.train_limit + n).collect();
            let what = format!(
                "training images {}..{} (held out: after train_limit)",
                cfg.train_limit,
                cfg.train_limit + n
            );
            ds.select(&idx).map(|d| (d, what))
        } else {
            Ok((
                ds.subset_first(n),
                format!(
                    "the first {n} training images (trained on; set train_limit to hold some out)"
                ),
            ))
        }
    });
    let check = check.transpose()?;
    let train = if cfg.train_limit > 0 && cfg.train_limit < ds.len() {
        ds.subset_first(cfg.train_limit)
    } else {
        ds
    };
    Ok((train, check))
}

fn build_config(a: &TrainArgs, place: Place) -> Result<TrainConfig> {
    let mut cfg = match (&a.config, &a.preset) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            toml::from_str::<TrainConfig>(&text)
                .with_context(|| format!("config {}", path.display()))?
        }
        (None, Some(p)) => TrainConfig::preset(p).with_context(|| {
            format!(
                "unknown preset '{p}'; the presets are {}",
                PRESETS.join(", ")
            )
        })?,
        (None, None) => bail!(
            "give --config FILE.toml or --preset NAME ({})",
            PRESETS.join(", ")
        ),
    };
    if let Some(s) = &a.arch {
        cfg.arch = s.clone();
    }
    if let Some(s) = a.seed {
        cfg.random_seed = s;
    }
    if let Some(s) = a.steps {
        if a.stretch_schedule {
            cfg.learning_rate = cfg.learning_rate.stretched(cfg.max_num_training_steps, s);
        }
        cfg.max_num_training_steps = s;
    }
    if let Some(every) = a.robust_check {
        cfg.robust_check = Some(saddle_train::RobustCheck {
            every,
            ..cfg.robust_check.unwrap_or_default()
        });
    }
    if let Some(s) = a.grad_shards {
        cfg.grad_shards = s;
    }
    if place.size > 1 {
        // One shard per rank: the step of N ranks is the N-shard step.
        if cfg.grad_shards == 1 {
            cfg.grad_shards = place.size;
        } else if cfg.grad_shards != place.size {
            bail!(
                "grad_shards = {} but mpirun started {} ranks: each rank computes one shard; \
                 run {} ranks or leave grad_shards out",
                cfg.grad_shards,
                place.size,
                cfg.grad_shards
            );
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `saddle train`; under `mpirun -np N` (in a build with the `mpi` feature) rank `r` computes
/// shard `r` of every global batch, and rank 0 alone prints and writes files.
pub fn run(a: TrainArgs) -> Result<()> {
    let job = mpi::Job::start()?;
    let place = job.place();
    let res = in_pool(a.run.compute.threads, || {
        let cfg = build_config(&a, place)?;
        crate::commands::with_backend!(a.run.compute.device, |b| train_on(
            b,
            &a,
            cfg.clone(),
            place
        ))
    });
    if let (Err(e), true) = (&res, place.size > 1) {
        // The other ranks would wait for this one: end the job.
        eprintln!(
            "saddle: error: rank {} of {}: {}",
            place.rank,
            place.size,
            format!("{e:#}").replace('\n', " ")
        );
        place.abort(2);
    }
    res
}

fn train_on<B: saddle_tensor::Backend>(
    b: B,
    a: &TrainArgs,
    cfg: TrainConfig,
    place: Place,
) -> Result<()> {
    let root = place.is_root();
    let (data, check) = load_train_and_check_sets(&cfg, a.run.data_dir.as_deref())?;
    let ckpt_path = a.out.join("checkpoint.safetensors");
    let model = Model::build(&cfg.arch()?, b, cfg.random_seed)?;
    let mut trainer = Trainer::new(model, cfg.clone())?;
    trainer.set_reducer(place.reducer())?;
    if let Some((set, what)) = check {
        if root {
            let rc = cfg
                .robust_check
                .as_ref()
                .expect("a check set comes with a check");
            eprintln!(
                "robustness check every {} steps: PGD-{} at ε = {} on {what}; a fall of more than \
                 {:.0} points below the best check stops training{}{}",
                rc.every,
                rc.k,
                cfg.epsilon,
                100.0 * rc.max_drop,
                if rc.min_ratio > 0.0 && cfg.training.one_step() {
                    format!(
                        ", as does PGD accuracy below {} of natural accuracy",
                        rc.min_ratio
                    )
                } else {
                    String::new()
                },
                if rc.keep == saddle_train::KeepWeights::Best {
                    "; keep = \"best\": the model file will hold the best check's weights"
                } else {
                    ""
                }
            );
        }
        trainer.set_check_set(set);
    }
    if let (Some(d), true) = (cfg.ema_decay, root) {
        eprintln!(
            "weights averaged (ema_decay = {d}): the model file will hold the average, the \
             checkpoint both; the robustness checks measure the trained weights"
        );
    }
    if !root {
        return train_quietly(trainer, a, &data, place);
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let stale = fsutil::remove_stale_temps(
        &a.out,
        &[
            "checkpoint.safetensors",
            "model.safetensors",
            "config.toml",
            "metrics.jsonl",
        ],
    )?;
    if stale > 0 {
        eprintln!("removed {stale} temporary file(s) left by an interrupted run");
    }
    // Training time before this part (a resumed run's log goes on counting from it).
    let mut before = 0.0;
    if a.resume {
        let bytes = std::fs::read(&ckpt_path)
            .with_context(|| format!("--resume: cannot read {}", ckpt_path.display()));
        let bytes = place.broadcast("reading the checkpoint", bytes)?;
        let saved = trainer
            .restore(&bytes)
            .with_context(|| format!("--resume: {}", ckpt_path.display()))?;
        if saved.grad_shards != cfg.grad_shards {
            eprintln!(
                "note: the checkpoint was trained with grad_shards = {}, the run goes on with {} \
                 (the steps from here on are those of {} shards)",
                saved.grad_shards, cfg.grad_shards, cfg.grad_shards
            );
        }
        check_resumable(&saved, &cfg, a)?;
        eprintln!(
            "resuming from step {} of {}",
            trainer.step(),
            cfg.max_num_training_steps
        );
        // The log continues from the checkpoint: lines the killed run wrote after it go, and
        // `elapsed_sec` goes on from the time the log recorded there (the time spent after the
        // checkpoint by the killed run is not the model's: those steps are done again).
        before = fsutil::trim_log(&a.out.join("metrics.jsonl"), trainer.step())?.elapsed_sec;
    } else {
        let _ = std::fs::remove_file(a.out.join("metrics.jsonl"));
    }
    fsutil::write_atomic(
        &a.out.join("config.toml"),
        toml::to_string(&cfg)?.as_bytes(),
    )?;

    if place.size > 1 {
        eprintln!(
            "data-parallel: {} ranks, {} examples each of every global batch of {}",
            place.size,
            cfg.training_batch_size / place.size,
            cfg.training_batch_size
        );
    }
    let total = cfg.max_num_training_steps;
    let mut bar = Progress::new(total, "training")?;
    bar.resume_at(trainer.step());
    let metrics_path = a.out.join("metrics.jsonl");
    let t0 = Instant::now();
    let model_path = a.out.join("model.safetensors");
    // Whether this run wrote the model file (a file there may be an earlier run's).
    let mut wrote_model = false;
    let res = trainer.run(&data, |ev| {
        match ev {
            Event::Step(m) => {
                bar.set(
                    m.step,
                    format!(
                        "loss {:.3} adv acc {:.1}%{}",
                        m.loss,
                        100.0 * m.adv_accuracy,
                        m.nat_accuracy
                            .map(|v| format!(" nat {:.1}%", 100.0 * v))
                            .unwrap_or_default()
                    ),
                );
                if m.nat_accuracy.is_some() || m.step == total {
                    let line = serde_json::json!({
                        "step": m.step, "loss": m.loss, "adv_accuracy": m.adv_accuracy,
                        "nat_accuracy": m.nat_accuracy, "lr": m.lr, "epsilon": m.epsilon,
                        "examples_per_sec": m.examples_per_sec,
                        "elapsed_sec": before + t0.elapsed().as_secs_f64(),
                    });
                    fsutil::append_line(&metrics_path, &line.to_string())
                        .map_err(|e| saddle_train::TrainError::Checkpoint(format!("{e:#}")))?;
                }
            }
            Event::Check(c) => {
                let line = serde_json::json!({
                    "step": c.step, "check_examples": c.examples,
                    "check_natural_accuracy": c.natural_accuracy,
                    "check_pgd_accuracy": c.pgd_accuracy,
                    "check_best_step": c.best_step,
                    "check_best_pgd_accuracy": c.best_pgd_accuracy,
                    "check_collapsed": c.collapsed,
                    "elapsed_sec": before + t0.elapsed().as_secs_f64(),
                });
                fsutil::append_line(&metrics_path, &line.to_string())
                    .map_err(|e| saddle_train::TrainError::Checkpoint(format!("{e:#}")))?;
                bar.println(format!(
                    "check at step {}: natural {:.1}%, PGD {:.1}% (best {:.1}% at step {}){}",
                    c.step,
                    100.0 * c.natural_accuracy,
                    100.0 * c.pgd_accuracy,
                    100.0 * c.best_pgd_accuracy,
                    c.best_step,
                    if c.collapsed {
                        ": catastrophic overfitting, training stops"
                    } else {
                        ""
                    }
                ));
            }
            Event::Checkpoint { bytes, model, .. } => {
                fsutil::write_atomic(&ckpt_path, &bytes)
                    .map_err(|e| saddle_train::TrainError::Checkpoint(format!("{e:#}")))?;
                if let Some(m) = model {
                    fsutil::write_atomic(&model_path, &m)
                        .map_err(|e| saddle_train::TrainError::Checkpoint(format!("{e:#}")))?;
                    wrote_model = true;
                }
            }
        }
        Ok(())
    });
    bar.finish();
    res.with_context(|| {
        format!(
            "training stopped; the last checkpoint is {}",
            ckpt_path.display()
        )
    })?;
    if !wrote_model {
        // A run killed between its last checkpoint and the model file resumes at its last step,
        // where the loop above writes nothing: the model is the checkpoint's (its weights, or
        // its best check's). A model file already there may be an earlier run's.
        fsutil::write_atomic(&model_path, &trainer.final_model()?)?;
    }
    if let Some(st) = trainer.stopped() {
        eprintln!(
            "{}; {} holds those weights, of the {total} steps planned ({})",
            st.describe(),
            model_path.display(),
            remedy(trainer.config()),
        );
    } else if trainer.final_model_step() != trainer.step() {
        eprintln!(
            "robust_check.keep = \"best\": {} holds the best check's weights, of step {}",
            model_path.display(),
            trainer.final_model_step()
        );
    }
    eprintln!(
        "trained {} steps in {:.1} s{}; model: {} ({} parameters)",
        trainer.step(),
        before + t0.elapsed().as_secs_f64(),
        if a.resume {
            format!(
                " ({:.1} s of them in this part)",
                t0.elapsed().as_secs_f64()
            )
        } else {
            String::new()
        },
        model_path.display(),
        trainer.model().params().numel()
    );
    Ok(())
}

/// What to change first in a run that a robustness check stopped. One-step training overfit
/// catastrophically: N-FGSM, or for an N-FGSM run with less than its paper's noise, that noise
/// (held out on CIFAR-10, `n_fgsm_noise = 1` overfit by step 1,000 where 2 trained 6,900
/// steps). Multi-step training fell from its best check: robust overfitting.
fn remedy(cfg: &TrainConfig) -> String {
    let one_step = |what: &str| {
        format!(
            "a known failure of one-step training: try {what}, a smaller step `a`, or another seed"
        )
    };
    match cfg.training {
        TrainingMode::NFgsm if cfg.n_fgsm_noise < N_FGSM_NOISE => one_step(&format!(
            "N-FGSM's noise of {N_FGSM_NOISE} ε (n_fgsm_noise = {N_FGSM_NOISE})"
        )),
        TrainingMode::NFgsm => one_step("a larger n_fgsm_noise (up to 16)"),
        t if t.one_step() => one_step("N-FGSM (training = \"n_fgsm\")"),
        _ => "robust overfitting (Rice et al. 2020): a long multi-step run's robustness can peak \
              before its end; the best check's weights are the model, and a shorter schedule ends \
              nearer that peak"
            .into(),
    }
}

/// Whether `saved`, the configuration of a checkpoint, may go on as `cfg`: only
/// `max_num_training_steps`, `grad_shards` (the number of ranks) and `robust_check.keep` (which
/// weights the model file holds, nothing of training) may change.
fn check_resumable(saved: &TrainConfig, cfg: &TrainConfig, a: &TrainArgs) -> Result<()> {
    let mut same = TrainConfig {
        max_num_training_steps: cfg.max_num_training_steps,
        grad_shards: cfg.grad_shards,
        ..saved.clone()
    };
    if let (Some(s), Some(c)) = (&mut same.robust_check, &cfg.robust_check) {
        s.keep = c.keep;
    }
    if &same != cfg {
        bail!(
            "--resume: the checkpoint was trained with another configuration (only \
             max_num_training_steps, grad_shards and robust_check.keep may change); compare {} \
             with your config",
            a.out.join("config.toml").display()
        );
    }
    Ok(())
}

/// A rank other than 0: the same steps, nothing printed or written.
fn train_quietly<B: saddle_tensor::Backend>(
    mut trainer: Trainer<B, Model<B>>,
    a: &TrainArgs,
    data: &Dataset,
    place: Place,
) -> Result<()> {
    if a.resume {
        let bytes = place.broadcast("reading the checkpoint", Ok(Vec::new()))?;
        let saved = trainer.restore(&bytes).context("--resume")?;
        check_resumable(&saved, trainer.config(), a)?;
    }
    trainer
        .run(data, |_| Ok(()))
        .with_context(|| format!("rank {}: training stopped", place.rank))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice after catastrophic overfitting names what the run did not already do.
    #[test]
    fn the_overfitting_remedy_fits_the_recipe() {
        let fast = TrainConfig {
            training: TrainingMode::FastFgsm,
            ..TrainConfig::default()
        };
        assert!(remedy(&fast).contains("one-step training: try N-FGSM (training = \"n_fgsm\")"));
        let quiet = TrainConfig {
            training: TrainingMode::NFgsm,
            n_fgsm_noise: 1.0,
            ..TrainConfig::default()
        };
        assert!(
            remedy(&quiet).contains("n_fgsm_noise = 2"),
            "{}",
            remedy(&quiet)
        );
        let paper = TrainConfig {
            training: TrainingMode::NFgsm,
            ..TrainConfig::default()
        };
        assert!(remedy(&paper).contains("try a larger n_fgsm_noise (up to 16)"));
        let pgd = TrainConfig::default();
        assert!(
            remedy(&pgd).starts_with("robust overfitting") && !remedy(&pgd).contains("one-step"),
            "{}",
            remedy(&pgd)
        );
    }
}
