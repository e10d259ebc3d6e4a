//! `saddle inspect`: what a model learned (the paper's Appendix C): its first-layer filters as
//! an image grid, how many of them are not zero, and its softmax-layer biases.

use std::path::PathBuf;

use anyhow::{bail, Result};
use saddle_models::Classifier;
use saddle_tensor::cpu::Cpu;
use saddle_train::experiments::{first_layer_filters, softmax_biases, ZERO_FILTER_FRACTION};
use serde_json::json;

use super::load_model;
use crate::fsutil;
use crate::plot::{self, Inspect, InspectRow};

/// Arguments of `saddle inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Model weights (safetensors); give it twice to put a naturally and an adversarially
    /// trained model side by side.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// The network, for weights without saddle's metadata (a PyTorch state dict): mnist,
    /// wrn-madry-34-10, wrn-16-2, ... (default: the file's `saddle.arch` metadata).
    #[arg(long)]
    arch: Option<String>,
    /// Where to write inspect.png, inspect.svg and inspect.json.
    #[arg(long)]
    out: PathBuf,
}

/// `saddle inspect`.
pub fn run(a: InspectArgs) -> Result<()> {
    let b = Cpu::new();
    let mut rows = Vec::new();
    let mut json_models = Vec::new();
    let mut shape = None;
    let names = plot::names(&a.model);
    for (p, name) in a.model.iter().zip(&names) {
        let m = load_model(&b, p, a.arch.as_deref())?;
        match shape {
            None => shape = Some((p, m.input_shape())),
            Some((first, s)) if s != m.input_shape() => bail!(
                "models of different input shapes: {} takes {s:?}, {} takes {:?}",
                first.display(),
                p.display(),
                m.input_shape()
            ),
            Some(_) => {}
        }
        let f = first_layer_filters(&b, m.params())?;
        let (bias_name, biases) = softmax_biases(&b, m.params(), m.num_classes())?;
        let nonzero = f.nonzero();
        let cols = (f.count as f64).sqrt().ceil() as usize;
        let grid = f.grid(cols.max(1), 1);
        println!(
            "{}: {} of {} first-layer filters ({}, {}x{}x{}) are not zero \
             (largest |weight| >= {}% of the layer's largest)",
            p.display(),
            nonzero,
            f.count,
            f.name,
            f.channels,
            f.height,
            f.width,
            ZERO_FILTER_FRACTION * 100.0
        );
        let fmt: Vec<String> = biases.iter().map(|v| format!("{v:.3}")).collect();
        println!("  softmax biases ({bias_name}): {}", fmt.join(" "));
        json_models.push(json!({
            "model": p.display().to_string(),
            "filters": {
                "parameter": f.name,
                "shape": [f.count, f.channels, f.height, f.width],
                "max_abs": f.max_abs(),
                "nonzero": nonzero,
                "weights": f.weights,
            },
            "softmax_bias": { "parameter": bias_name, "values": biases },
        }));
        rows.push(InspectRow {
            title: format!("{name} ({nonzero}/{} non-zero)", f.count),
            grid,
            biases,
        });
    }
    let json = json!({
        "command": "inspect",
        "zero_filter_rule": format!(
            "a filter is zero when its largest |weight| is below {ZERO_FILTER_FRACTION} times \
             the largest |weight| of the layer"
        ),
        "models": json_models,
    });
    fsutil::write_atomic(
        &a.out.join("inspect.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    plot::save(&Inspect { rows }, &a.out.join("inspect"))?;
    eprintln!(
        "wrote inspect.json, inspect.png, inspect.svg to {}",
        a.out.display()
    );
    Ok(())
}
