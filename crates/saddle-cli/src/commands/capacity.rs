//! `saddle capacity`: the paper's capacity study (Figure 4): MNIST networks of growing width
//! trained naturally, with FGSM and with PGD, their natural, FGSM and PGD accuracy and their
//! adversarial training loss against capacity.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use saddle_data::Split;
use saddle_models::Model;
use saddle_tensor::Backend;
use saddle_train::experiments::{
    capacity_config, capacity_copy_config, capacity_sweep, copy_transfer, sweep_key, CapacityEval,
    CapacityEvent, CapacityRow, CopyTransfer, ModelStore,
};
use saddle_train::{TrainError, TrainingMode};
use serde_json::json;

use super::eval::load_split;
use super::in_pool;
use super::train::load_train_set;
use crate::fsutil;
use crate::plot::{self, LinePanel, LinePanels};
use crate::progress::Progress;

/// Arguments of `saddle capacity`.
#[derive(clap::Args, Debug)]
pub struct CapacityArgs {
    /// Data set: mnist or fashion-mnist (the MNIST network).
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Comma-separated width scales of the MNIST network (scale s: conv filters 2s and 4s, fc
    /// 64s; the paper's network is 16), each 1 to 64.
    #[arg(long, default_value = "1,2,4,8,16")]
    scales: String,
    /// Comma-separated training modes: natural, fgsm, pgd.
    #[arg(long, default_value = "natural,fgsm,pgd")]
    training: String,
    /// Training steps per model (the mnist-quick recipe, batch 100, its schedule stretched over
    /// these steps).
    #[arg(long, default_value_t = 500)]
    steps: u64,
    /// Evaluate on the first N test images.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Also train an independent copy A′ of each model (the same recipe from the next seed,
    /// stored as models/<mode>-s<scale>-seed<N>) and measure how its FGSM and PGD examples
    /// transfer to the model and the cosine of the two models' input gradients, against
    /// capacity: capacity-transfer.png/.svg and the `copies` of capacity.json.
    #[arg(long)]
    copies: bool,
    /// Where to write capacity.json, capacity.png/.svg and the models
    /// (models/<mode>-s<scale>/model.safetensors, reused when there).
    #[arg(long, default_value = "runs/capacity")]
    out: PathBuf,
    #[command(flatten)]
    run: super::Run,
}

/// The scales of `--scales`: numbers 1 to 64, at least one, none twice.
pub fn parse_scales(list: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for s in list.split(',').map(str::trim) {
        if s.is_empty() {
            continue;
        }
        let v: usize = s
            .parse()
            .with_context(|| format!("--scales: '{s}' is not a whole number"))?;
        if !(1..=64).contains(&v) {
            bail!("--scales: scale {v} is not in 1 to 64");
        }
        if out.contains(&v) {
            bail!("--scales: scale {v} is given twice");
        }
        out.push(v);
    }
    if out.is_empty() {
        bail!("--scales: give at least one scale, for example 1,2,4,8,16");
    }
    Ok(out)
}

/// The modes of `--training`: natural, fgsm, pgd; at least one, none twice.
pub fn parse_modes(list: &str) -> Result<Vec<TrainingMode>> {
    let mut out = Vec::new();
    for s in list.split(',').map(str::trim) {
        let m = match s {
            "" => continue,
            "natural" => TrainingMode::Natural,
            "fgsm" => TrainingMode::Fgsm,
            "pgd" => TrainingMode::Pgd,
            other => {
                bail!("--training: unknown training mode '{other}' (expected natural, fgsm or pgd)")
            }
        };
        if out.contains(&m) {
            bail!("--training: {s} is given twice");
        }
        out.push(m);
    }
    if out.is_empty() {
        bail!("--training: give at least one of natural, fgsm, pgd");
    }
    Ok(out)
}

/// `DIR/models/<key>/model.safetensors`, written atomically.
struct Files(PathBuf);

impl Files {
    fn path(&self, key: &str) -> PathBuf {
        self.0.join("models").join(key).join("model.safetensors")
    }
}

fn store_err(e: anyhow::Error) -> TrainError {
    TrainError::Checkpoint(format!("{e:#}"))
}

impl ModelStore for Files {
    fn load(&mut self, key: &str) -> saddle_train::Result<Option<Vec<u8>>> {
        let p = self.path(key);
        // What an interrupted write left (a killed run's temporary file) goes.
        if let Some(dir) = p.parent() {
            fsutil::remove_stale_temps(dir, &["model.safetensors"]).map_err(store_err)?;
        }
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err(
                anyhow::Error::new(e).context(format!("cannot read {}", p.display())),
            )),
        }
    }

    fn save(&mut self, key: &str, bytes: &[u8]) -> saddle_train::Result<()> {
        fsutil::write_atomic(&self.path(key), bytes).map_err(store_err)
    }
}

/// `saddle capacity`.
pub fn run(a: CapacityArgs) -> Result<()> {
    if !["mnist", "fashion-mnist"].contains(&a.data.as_str()) {
        bail!(
            "--data {}: the capacity study trains the MNIST network; expected mnist or \
             fashion-mnist",
            a.data
        );
    }
    let scales = parse_scales(&a.scales)?;
    let modes = parse_modes(&a.training)?;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if a.limit == 0 {
        bail!("--limit must be at least 1");
    }
    in_pool(a.run.compute.threads, || {
        crate::commands::with_backend!(a.run.compute.device, |b| run_on(&b, &a, &scales, &modes))
    })
}

fn run_on<B: Backend>(
    b: &B,
    a: &CapacityArgs,
    scales: &[usize],
    modes: &[TrainingMode],
) -> Result<()> {
    let with_data = |c: saddle_train::TrainConfig| saddle_train::TrainConfig {
        dataset: a.data.clone(),
        ..c
    };
    let mut configs: Vec<_> = modes
        .iter()
        .flat_map(|&m| scales.iter().map(move |&s| capacity_config(m, s, a.steps)))
        .map(with_data)
        .collect();
    // The copies after all the originals: a sweep stopped early has Figure 4 first.
    let copies: Vec<_> = if a.copies {
        modes
            .iter()
            .flat_map(|&m| {
                scales
                    .iter()
                    .map(move |&s| capacity_copy_config(m, s, a.steps))
            })
            .map(with_data)
            .collect()
    } else {
        Vec::new()
    };
    let pairs: Vec<(String, String)> = configs
        .iter()
        .zip(&copies)
        .map(|(c, k)| (sweep_key(c), sweep_key(k)))
        .collect();
    configs.extend(copies);
    let train = load_train_set(&configs[0], a.run.data_dir.as_deref())?;
    let test = load_split(&a.data, Split::Test, a.run.data_dir.as_deref())?;
    let n = a.limit.min(test.len());
    let idx: Vec<usize> = (0..n).collect();
    let (x, y) = test.batch(&idx)?;
    let labels: Vec<usize> = y.iter().map(|&v| v as usize).collect();
    let eval = CapacityEval::mnist();
    let mut store = Files(a.out.clone());
    let mut bar: Option<Progress> = None;
    let mut so_far: Vec<CapacityRow> = Vec::new();
    let mut failed: Option<anyhow::Error> = None;
    // Said once the sweep starts (after its checks, so that an error stays one line).
    let mut started = false;
    let banner = || {
        eprintln!(
            "capacity: {} models ({} x scales {:?}{}), {} steps each; evaluation on {n} test \
             images (FGSM and PGD-{} of {}, eps {})",
            configs.len(),
            modes
                .iter()
                .map(|&m| m.name())
                .collect::<Vec<_>>()
                .join(","),
            scales,
            if a.copies { ", each twice" } else { "" },
            a.steps,
            eval.steps,
            eval.alpha,
            eval.eps
        );
    };
    let rows = capacity_sweep(
        b,
        &configs,
        &train,
        &x,
        &labels,
        &eval,
        &mut store,
        &mut |ev| {
            if !std::mem::replace(&mut started, true) {
                banner();
            }
            match ev {
                CapacityEvent::Reused(key) => {
                    eprintln!("{key}: reusing {}", store_path(&a.out, key).display())
                }
                CapacityEvent::Step {
                    key,
                    step,
                    total,
                    loss,
                } => {
                    if bar.is_none() {
                        eprintln!("{key}: training {total} steps");
                        bar = Progress::new(total, "training").ok();
                    }
                    if let Some(p) = bar.as_mut() {
                        p.set(step, format!("{key} loss {loss:.3}"));
                    }
                }
                CapacityEvent::Evaluating(key) => {
                    if let Some(p) = bar.take() {
                        p.finish();
                    }
                    eprintln!("{key}: evaluating");
                }
                CapacityEvent::Done(row) => {
                    eprintln!(
                        "{}: natural {:.1}%, FGSM {:.1}%, PGD {:.1}%, adversarial loss {:.3}",
                        row.key,
                        100.0 * row.natural_accuracy,
                        100.0 * row.fgsm_accuracy,
                        100.0 * row.pgd_accuracy,
                        row.adversarial_loss
                    );
                    so_far.push(row.clone());
                    // The table so far, so that an interrupted sweep leaves its numbers.
                    if let Err(e) = write_json(a, &eval, &so_far, &[]) {
                        failed.get_or_insert(e);
                    }
                }
            }
        },
    );
    if let Some(p) = bar.take() {
        p.finish();
    }
    let rows = rows.with_context(|| format!("capacity sweep in {}", a.out.display()))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut transfers: Vec<CopyRow> = Vec::with_capacity(pairs.len());
    for (key, copy_key) in &pairs {
        let row = rows
            .iter()
            .find(|r| &r.key == key)
            .expect("a row per model");
        eprintln!("{key}: transfer from its copy {copy_key}");
        let t0 = std::time::Instant::now();
        let mut model = stored_model(b, &a.out, key)?;
        let mut copy = stored_model(b, &a.out, copy_key)?;
        let t = copy_transfer(&mut model, &mut copy, &x, &labels, &eval)
            .with_context(|| format!("transfer from {copy_key} to {key}"))?;
        eprintln!(
            "{key}: under its copy's FGSM {:.1}% (white-box {:.1}%), PGD {:.1}% (white-box \
             {:.1}%), gradient cosine {:.3} ({:.0} s)",
            100.0 * t.fgsm_accuracy,
            100.0 * row.fgsm_accuracy,
            100.0 * t.pgd_accuracy,
            100.0 * row.pgd_accuracy,
            t.gradient_cosine,
            t0.elapsed().as_secs_f64()
        );
        transfers.push(CopyRow {
            key: key.clone(),
            copy: copy_key.clone(),
            training: row.training,
            scale: row.scale,
            transfer: t,
        });
    }
    write_json(a, &eval, &rows, &transfers)?;
    print_table(&rows);
    let originals: Vec<CapacityRow> = rows
        .iter()
        .filter(|r| !transfers.iter().any(|t| t.copy == r.key))
        .cloned()
        .collect();
    plot::save(&figure(&originals, modes), &a.out.join("capacity"))?;
    let mut wrote = "capacity.json, capacity.png, capacity.svg".to_string();
    if !transfers.is_empty() {
        plot::save(
            &transfer_figure(&transfers, modes),
            &a.out.join("capacity-transfer"),
        )?;
        wrote.push_str(", capacity-transfer.png, capacity-transfer.svg");
    }
    eprintln!("wrote {wrote} to {}", a.out.display());
    Ok(())
}

/// A model of the sweep and its independent copy: how the copy's examples transfer to it.
#[derive(serde::Serialize)]
struct CopyRow {
    key: String,
    copy: String,
    training: TrainingMode,
    scale: usize,
    #[serde(flatten)]
    transfer: CopyTransfer,
}

fn stored_model<B: Backend>(b: &B, out: &Path, key: &str) -> Result<Model<B>> {
    super::load_model(b, &store_path(out, key), None)
}

fn store_path(out: &Path, key: &str) -> PathBuf {
    Files(out.to_path_buf()).path(key)
}

fn write_json(
    a: &CapacityArgs,
    eval: &CapacityEval,
    rows: &[CapacityRow],
    copies: &[CopyRow],
) -> Result<()> {
    let json = json!({
        "command": "capacity",
        "data": a.data,
        "steps": a.steps,
        "recipe": "mnist-quick with training, model_scale and max_num_training_steps set, its \
                   one-cycle schedule and epsilon ramp stretched to the steps",
        "evaluation": eval,
        "adversarial_loss": "natural: mean cross-entropy of the evaluation PGD's examples of \
                             the first training batch; fgsm, pgd: mean loss of the training \
                             batches over the last loss_window steps",
        "rows": rows,
        "copies_meaning": "per model A and its independently trained copy A' (key copy, the \
                           next seed): A's natural accuracy, A's accuracy under FGSM and PGD \
                           examples crafted on A' (fgsm_accuracy, pgd_accuracy) beside the \
                           copy's white-box ones (copy_*), and the mean cosine of the two \
                           models' gradients over the images where both are non-zero",
        "copies": copies,
    });
    fsutil::write_atomic(
        &a.out.join("capacity.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )
}

fn print_table(rows: &[CapacityRow]) {
    println!(
        "{:<9} {:>5} {:>10} {:>6} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "training", "scale", "parameters", "steps", "natural", "FGSM", "PGD", "adv loss", "train s"
    );
    for r in rows {
        println!(
            "{:<9} {:>5} {:>10} {:>6} {:>7.1}% {:>7.1}% {:>7.1}% {:>9.4} {:>8.1}{}",
            r.training.name(),
            r.scale,
            r.parameters,
            r.steps,
            100.0 * r.natural_accuracy,
            100.0 * r.fgsm_accuracy,
            100.0 * r.pgd_accuracy,
            r.adversarial_loss,
            r.train_seconds,
            if r.reused { " (reused)" } else { "" }
        );
    }
}

/// One line per training mode: `f` of each of its rows against the row's scale.
fn by_mode<R>(
    rows: &[R],
    modes: &[TrainingMode],
    of: impl Fn(&R) -> (TrainingMode, usize),
    f: &dyn Fn(&R) -> f32,
) -> Vec<(String, Vec<(f32, f32)>)> {
    modes
        .iter()
        .map(|&m| {
            let pts = rows
                .iter()
                .filter(|r| of(r).0 == m)
                .map(|r| (of(r).1 as f32, f(r)))
                .collect();
            (m.name().to_string(), pts)
        })
        .collect()
}

/// Transferability against capacity: the cosine of a model's and its copy's input gradients,
/// and the model's accuracy under its copy's FGSM and PGD examples.
fn transfer_figure(rows: &[CopyRow], modes: &[TrainingMode]) -> LinePanels {
    let series = |f: &dyn Fn(&CopyRow) -> f32| by_mode(rows, modes, |r| (r.training, r.scale), f);
    let pct = Some((0.0, 100.0));
    LinePanels {
        x_label: "capacity scale (log)".into(),
        panels: vec![
            LinePanel {
                title: "input-gradient cosine, model vs copy".into(),
                y_label: "mean cosine".into(),
                y_range: None,
                series: series(&|r| r.transfer.gradient_cosine as f32),
            },
            LinePanel {
                title: "accuracy under the copy's FGSM".into(),
                y_label: "accuracy (%)".into(),
                y_range: pct,
                series: series(&|r| 100.0 * r.transfer.fgsm_accuracy as f32),
            },
            LinePanel {
                title: "accuracy under the copy's PGD".into(),
                y_label: "accuracy (%)".into(),
                y_range: pct,
                series: series(&|r| 100.0 * r.transfer.pgd_accuracy as f32),
            },
        ],
    }
}

fn figure(rows: &[CapacityRow], modes: &[TrainingMode]) -> LinePanels {
    let series =
        |f: &dyn Fn(&CapacityRow) -> f32| by_mode(rows, modes, |r| (r.training, r.scale), f);
    let pct = Some((0.0, 100.0));
    LinePanels {
        x_label: "capacity scale (log)".into(),
        panels: vec![
            LinePanel {
                title: "natural accuracy".into(),
                y_label: "accuracy (%)".into(),
                y_range: pct,
                series: series(&|r| 100.0 * r.natural_accuracy as f32),
            },
            LinePanel {
                title: "accuracy under FGSM".into(),
                y_label: "accuracy (%)".into(),
                y_range: pct,
                series: series(&|r| 100.0 * r.fgsm_accuracy as f32),
            },
            LinePanel {
                title: "accuracy under PGD".into(),
                y_label: "accuracy (%)".into(),
                y_range: pct,
                series: series(&|r| 100.0 * r.pgd_accuracy as f32),
            },
            LinePanel {
                title: "adversarial training loss".into(),
                y_label: "cross-entropy".into(),
                y_range: None,
                series: series(&|r| r.adversarial_loss),
            },
        ],
    }
}
