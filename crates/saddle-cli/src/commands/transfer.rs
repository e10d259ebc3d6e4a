//! `saddle transfer`: transferability (the paper's black-box columns): adversarial examples
//! crafted on each source model and on the target itself (white-box), the target's accuracy on
//! each set, and the cosine similarity of the source's and the target's input gradients.

use std::path::PathBuf;

use anyhow::{bail, Result};
use saddle_attacks::transfer::{transfer_matrix, TransferMatrix};
use saddle_attacks::{Attack, Fgsm, Pgd};
use saddle_data::Split;
use saddle_models::{Classifier, Model};
use saddle_tensor::Backend;
use saddle_train::experiments::{cosines, input_gradients, mean_defined};
use serde_json::json;

use super::eval::{load_split, short as num};
use super::{in_pool, load_model};
use crate::fsutil;
use crate::plot::{self, TransferFigure};

/// The attack that crafts the transferred examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransferAttack {
    /// FGSM: one step of size ε.
    Fgsm,
    /// PGD from a random start (`--steps` steps of `--alpha`).
    Pgd,
}

/// Arguments of `saddle transfer`.
#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// Comma-separated source models (safetensors) the examples are crafted on: for example an
    /// independently trained copy of the target (the paper's A') and a naturally trained model.
    #[arg(long, required = true, value_delimiter = ',')]
    sources: Vec<PathBuf>,
    /// The target model, evaluated on every source's examples and attacked itself (white-box).
    #[arg(long)]
    target: PathBuf,
    /// The attack that crafts the examples.
    #[arg(long, value_enum, default_value = "pgd")]
    attack: TransferAttack,
    /// Test set: mnist, fashion-mnist or cifar10 (sets the default --eps, --alpha, --steps).
    #[arg(long, default_value = "mnist")]
    data: String,
    /// The first N test images.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// PGD steps (default: 40 for MNIST as the paper's A' column, 7 for CIFAR-10).
    #[arg(long)]
    steps: Option<usize>,
    #[command(flatten)]
    pgd: super::eval::LinfArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 200)]
    batch_size: usize,
    /// Where to write transfer.json, transfer.png and transfer.svg.
    #[arg(long, default_value = "runs/transfer")]
    out: PathBuf,
    #[command(flatten)]
    run: super::Run,
}

/// `saddle transfer`.
pub fn run(a: TransferArgs) -> Result<()> {
    let (eps, alpha) = a.pgd.resolve(&a.data)?;
    if a.limit == 0 {
        bail!("--limit must be at least 1");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let steps = a.steps.unwrap_or(if a.data == "cifar10" { 7 } else { 40 });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    in_pool(a.run.compute.threads, || {
        crate::commands::with_backend!(a.run.compute.device, |b| run_on(&b, &a, eps, alpha, steps))
    })
}

fn run_on<B: Backend>(b: &B, a: &TransferArgs, eps: f32, alpha: f32, steps: usize) -> Result<()> {
    // The sources, then the target unless it is one of them.
    let mut paths = a.sources.clone();
    let t = match paths.iter().position(|p| *p == a.target) {
        Some(i) => i,
        None => {
            paths.push(a.target.clone());
            paths.len() - 1
        }
    };
    let mut models: Vec<Model<B>> = Vec::with_capacity(paths.len());
    for p in &paths {
        let m = load_model(b, p, None)?;
        if let Some(first) = models.first() {
            if first.input_shape() != m.input_shape() {
                bail!(
                    "models of different input shapes: {} takes {:?}, {} takes {:?}",
                    paths[0].display(),
                    first.input_shape(),
                    p.display(),
                    m.input_shape()
                );
            }
            if first.num_classes() != m.num_classes() {
                bail!(
                    "models of different class counts: {} has {}, {} has {}",
                    paths[0].display(),
                    first.num_classes(),
                    p.display(),
                    m.num_classes()
                );
            }
        }
        models.push(m);
    }
    let data = load_split(&a.data, Split::Test, a.run.data_dir.as_deref())?;
    let shape = models[0].input_shape();
    if data.image_shape() != shape {
        bail!(
            "the models take images of shape {shape:?}, {} has {:?}",
            a.data,
            data.image_shape()
        );
    }
    let n = a.limit.min(data.len());
    let per: usize = shape.iter().product();
    let attack_name = match a.attack {
        TransferAttack::Fgsm => format!("FGSM, eps {}", num(eps)),
        TransferAttack::Pgd => format!(
            "PGD-{steps}, eps {}, step {}, random start",
            num(eps),
            num(alpha)
        ),
    };
    eprintln!(
        "transfer: {attack_name}, crafted on {} models, on {n} test images",
        models.len()
    );
    let mut matrix = TransferMatrix::new(models.len());
    let mut cos: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(n); models.len()];
    for s in (0..n).step_by(a.batch_size) {
        let e = (s + a.batch_size).min(n);
        let idx: Vec<usize> = (s..e).collect();
        let (xs, ys) = data.batch(&idx)?;
        let x = b.from_vec(&data.batch_shape(idx.len()), xs)?;
        let y = b.from_vec(&[idx.len()], ys)?;
        let attack: Box<dyn Attack<B>> = match a.attack {
            TransferAttack::Fgsm => Box::new(Fgsm::new(eps)?),
            TransferAttack::Pgd => {
                Box::new(Pgd::linf(eps, alpha, steps)?.seed(a.pgd.seed ^ s as u64))
            }
        };
        matrix.add(&transfer_matrix(&*attack, &mut models, &x, &y)?);
        let gt = input_gradients(&mut models[t], &x, &y)?;
        for (i, m) in models.iter_mut().enumerate() {
            let g = input_gradients(m, &x, &y)?;
            cos[i].extend(cosines(&g, &gt, per));
        }
        eprintln!("  {e}/{n} images");
    }

    let names = plot::names(&paths);
    let tname = &names[t];
    println!("target: {} ({})", tname, a.target.display());
    println!(
        "{:<30} {:>8} {:>10} {:>10} {:>9}",
        "crafted on", "natural", "white-box", "target", "grad cos"
    );
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (c, k) = mean_defined(&cos[i]);
        let label = if i == t {
            format!("{name} (target)")
        } else {
            name.clone()
        };
        println!(
            "{:<30} {:>7.1}% {:>9.1}% {:>9.1}% {:>9.4}",
            label,
            100.0 * matrix.natural_accuracy(i),
            100.0 * matrix.white_box(i),
            100.0 * matrix.accuracy(i, t),
            c
        );
        rows.push(json!({
            "model": paths[i].display().to_string(),
            "name": name,
            "role": if i == t { "target" } else { "source" },
            "natural_accuracy": matrix.natural_accuracy(i),
            "white_box_accuracy": matrix.white_box(i),
            "target_accuracy": matrix.accuracy(i, t),
            "gradient_cosine": c,
            "gradient_cosine_images": k,
        }));
    }
    let k = models.len();
    let acc: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|j| matrix.accuracy(i, j)).collect())
        .collect();
    let json = json!({
        "command": "transfer",
        "data": a.data,
        "examples": n,
        "attack": {
            "name": match a.attack { TransferAttack::Fgsm => "fgsm", TransferAttack::Pgd => "pgd" },
            "description": attack_name,
            "epsilon": eps,
            "alpha": if a.attack == TransferAttack::Fgsm { eps } else { alpha },
            "steps": if a.attack == TransferAttack::Fgsm { 1 } else { steps },
            "seed": a.pgd.seed,
        },
        "target": t,
        "models": rows,
        "matrix_layout": "accuracy[i][j]: model j's accuracy on the examples crafted on model i; \
                          the diagonal is white-box",
        "accuracy": acc,
        "gradient_cosine": "per image, the cosine similarity of the model's and the target's \
                            gradients of the cross-entropy with respect to the input, averaged \
                            over the images where both are non-zero",
    });
    fsutil::write_atomic(
        &a.out.join("transfer.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let fig = TransferFigure {
        title: format!(
            "accuracy under transferred {} ({n} images)",
            match a.attack {
                TransferAttack::Fgsm => "FGSM",
                TransferAttack::Pgd => "PGD",
            }
        ),
        names: names.clone(),
        accuracy: acc,
        cosine_title: format!("input-gradient cosine with {}", short(tname, 20)),
        cosines: names
            .iter()
            .enumerate()
            .map(|(i, nm)| (nm.clone(), mean_defined(&cos[i]).0))
            .collect(),
    };
    plot::save(&fig, &a.out.join("transfer"))?;
    eprintln!(
        "wrote transfer.json, transfer.png, transfer.svg to {}",
        a.out.display()
    );
    Ok(())
}

/// At most `max` characters of `s`.
fn short(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
