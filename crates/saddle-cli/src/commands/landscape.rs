//! `saddle landscape`: PGD from many random starts in the ε-ball, the loss at every iteration
//! (the paper's Figure 1) and the histogram of the final losses (Figure 2).

use std::path::PathBuf;

use anyhow::{bail, Result};
use saddle_data::Split;
use saddle_models::{Classifier, Model};
use saddle_tensor::Backend;
use saddle_train::experiments::{landscape, spread, Landscape};
use serde_json::json;

use super::eval::load_split;
use super::{in_pool, load_model};
use crate::fsutil;
use crate::plot::{self, CurvePanel, Curves, HistPanel, Histograms};

/// Curves drawn per image in `landscape.png`/`.svg` (all of them are in the JSON): enough to
/// show the spread, few enough for a small SVG.
pub const DRAWN_PER_IMAGE: usize = 100;

/// Arguments of `saddle landscape`.
#[derive(clap::Args, Debug)]
pub struct LandscapeArgs {
    /// Model weights (safetensors); give it twice to compare, for example a naturally and an
    /// adversarially trained model. The models must take inputs of one shape.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// The network, for weights without saddle's metadata (a PyTorch state dict): mnist,
    /// wrn-madry-34-10, wrn-16-2, ... (default: the file's `saddle.arch` metadata).
    #[arg(long)]
    arch: Option<String>,
    /// Test set: mnist, fashion-mnist or cifar10 (sets the default --eps and --alpha).
    #[arg(long, default_value = "mnist")]
    data: String,
    /// The first N test images.
    #[arg(long, default_value_t = 5)]
    images: usize,
    /// Random starts per image.
    #[arg(long, default_value_t = 1000)]
    restarts: usize,
    /// PGD steps per restart.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[command(flatten)]
    pgd: super::eval::LinfArgs,
    /// Where to write landscape.json, landscape.png/.svg and landscape-hist.png/.svg.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: super::Run,
}

/// `saddle landscape`.
pub fn run(a: LandscapeArgs) -> Result<()> {
    let (eps, alpha) = a.pgd.resolve(&a.data)?;
    if a.restarts == 0 {
        bail!("--restarts must be at least 1");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if a.images == 0 {
        bail!("--images must be at least 1");
    }
    in_pool(a.run.compute.threads, || {
        crate::commands::with_backend!(a.run.compute.device, |b| run_on(&b, &a, eps, alpha))
    })
}

fn run_on<B: Backend>(b: &B, a: &LandscapeArgs, eps: f32, alpha: f32) -> Result<()> {
    let mut models: Vec<Model<B>> = Vec::new();
    for p in &a.model {
        let m = load_model(b, p, a.arch.as_deref())?;
        if let Some(first) = models.first() {
            if first.input_shape() != m.input_shape() {
                bail!(
                    "models of different input shapes: {} takes {:?}, {} takes {:?}",
                    a.model[0].display(),
                    first.input_shape(),
                    p.display(),
                    m.input_shape()
                );
            }
        }
        models.push(m);
    }
    let data = load_split(&a.data, Split::Test, a.run.data_dir.as_deref())?;
    if data.image_shape() != models[0].input_shape() {
        bail!(
            "the model takes images of shape {:?}, {} has {:?}",
            models[0].input_shape(),
            a.data,
            data.image_shape()
        );
    }
    let n = a.images.min(data.len());
    let idx: Vec<usize> = (0..n).collect();
    let (x, y) = data.batch(&idx)?;
    let labels: Vec<usize> = y.iter().map(|&v| v as usize).collect();

    let mut runs: Vec<Landscape> = Vec::new();
    let mut json_models = Vec::new();
    for (path, m) in a.model.iter().zip(models.iter_mut()) {
        eprintln!(
            "{}: PGD, {} restarts x {} steps on {n} images (eps {eps:.4}, step {alpha:.4})",
            path.display(),
            a.restarts,
            a.steps
        );
        let l = landscape(m, &x, &labels, eps, alpha, a.steps, a.restarts, a.pgd.seed)?;
        println!(
            "{}: final losses over {} restarts",
            path.display(),
            a.restarts
        );
        println!(
            "  {:>5} {:>5} {:>10} {:>10} {:>10} {:>10}",
            "image", "label", "min", "median", "max", "max/median"
        );
        let mut spreads = Vec::new();
        for (i, finals) in l.finals().iter().enumerate() {
            let (lo, med, hi, ratio) = spread(finals);
            println!(
                "  {i:>5} {:>5} {lo:>10.4} {med:>10.4} {hi:>10.4} {ratio:>10.3}",
                labels[i]
            );
            spreads.push(json!({
                "image": i, "label": labels[i], "min": lo, "median": med, "max": hi,
                "max_over_median": ratio,
            }));
        }
        json_models.push(json!({
            "model": path.display().to_string(),
            "spread": spreads,
            "worst": l.worst,
            "losses": l.losses,
        }));
        runs.push(l);
    }

    let json = json!({
        "command": "landscape",
        "data": a.data,
        "images": idx,
        "labels": labels,
        "eps": eps,
        "alpha": alpha,
        "steps": a.steps,
        "restarts": a.restarts,
        "seed": a.pgd.seed,
        "loss": "cross-entropy",
        "layout": "models[m].losses[image][restart][iteration]; iteration 0 is the random start",
        "models": json_models,
    });
    let out = &a.out;
    fsutil::write_atomic(
        &out.join("landscape.json"),
        serde_json::to_string(&json)?.as_bytes(),
    )?;

    let names = plot::names(&a.model);
    let drawn = a.restarts.min(DRAWN_PER_IMAGE);
    let curves = Curves {
        panels: names
            .iter()
            .zip(&runs)
            .map(|(name, l)| CurvePanel {
                title: format!("{name}: {n} images x {drawn} restarts"),
                curves: l
                    .losses
                    .iter()
                    .enumerate()
                    .flat_map(|(i, img)| img.iter().take(drawn).map(move |c| (i, c.clone())))
                    .collect(),
            })
            .collect(),
        x_label: "PGD iteration".into(),
        y_label: "cross-entropy".into(),
    };
    plot::save(&curves, &out.join("landscape"))?;
    let hist = Histograms {
        rows: runs.len(),
        cols: n,
        panels: names
            .iter()
            .zip(&runs)
            .flat_map(|(name, l)| {
                l.finals()
                    .into_iter()
                    .enumerate()
                    .map(|(i, values)| HistPanel {
                        title: format!("{name} image {i} (label {})", labels[i]),
                        values,
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        bins: 30,
        x_label: "final cross-entropy".into(),
    };
    plot::save(&hist, &out.join("landscape-hist"))?;
    eprintln!(
        "wrote landscape.json, landscape.png/.svg, landscape-hist.png/.svg to {}",
        out.display()
    );
    Ok(())
}
