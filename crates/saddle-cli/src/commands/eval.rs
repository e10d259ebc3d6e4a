//! `saddle eval`: natural accuracy and accuracy under the paper's white-box attacks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use saddle_attacks::{Attack, Fgsm, Loss, Pgd, Targeting, CW_PLUS};
use saddle_data::Split;
use saddle_models::{argmax_rows, Classifier};
use saddle_tensor::Backend;

use super::{in_pool, load_model};
use crate::{fsutil, Device};

/// Arguments of `saddle eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model weights (safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The architecture (mnist, wrn-madry-DEPTH-WIDTH, wrn-DEPTH-WIDTH): required for a file
    /// without `arch` metadata (a state_dict saved from PyTorch), checked against it otherwise.
    #[arg(long)]
    arch: Option<String>,
    /// Test set: mnist, fashion-mnist or cifar10.
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Comma-separated attacks: fgsm, pgd40, pgd40x20, pgd100, pgd100x20, cw, cw+, targeted
    /// (PGD with K steps and R restarts: pgdK or pgdKxR).
    #[arg(long, default_value = "fgsm,pgd40,pgd100,cw,cw+,targeted")]
    attacks: String,
    /// L∞ radius in [0, 1] pixel units.
    #[arg(long, default_value_t = 0.3, allow_hyphen_values = true)]
    eps: f32,
    /// PGD step size (default ε/30, the paper's 0.01 at ε = 0.3).
    #[arg(long, allow_hyphen_values = true)]
    alpha: Option<f32>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per attack batch.
    #[arg(long, default_value_t = 200)]
    batch_size: usize,
    /// Seed of the random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the results as JSON (default: the model's path with .eval.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compute device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The datasets folder (default: $SADDLE_DATASETS or ./datasets).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A named attack of the evaluation suite.
pub struct NamedAttack<B: Backend> {
    /// Name as given on the command line.
    pub name: String,
    /// What it is, for the table.
    pub description: String,
    /// The attack.
    pub attack: Box<dyn Attack<B>>,
}

/// A short decimal for tables (0.3/30 prints as 0.01, not 0.010000001).
fn short(v: f32) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Parses one attack name of the suite.
pub fn parse_attack<B: Backend>(
    name: &str,
    eps: f32,
    alpha: f32,
    seed: u64,
) -> Result<NamedAttack<B>> {
    let (e, al) = (short(eps), short(alpha));
    let pgd = |steps: usize| -> Result<Pgd> {
        Ok(Pgd::linf(eps, alpha, steps)?.random_start(true).seed(seed))
    };
    let (description, attack): (String, Box<dyn Attack<B>>) = match name {
        "fgsm" => (format!("FGSM, ε={e}"), Box::new(Fgsm::new(eps)?)),
        "cw" => (
            format!("PGD-40 on the CW loss (κ=0), ε={e}, α={al}"),
            Box::new(pgd(40)?.loss(Loss::Cw { kappa: 0.0 })),
        ),
        "cw+" => (
            format!("PGD-40 on the CW loss (κ=50), ε={e}, α={al}"),
            Box::new(pgd(40)?.loss(CW_PLUS)),
        ),
        "targeted" => (
            format!("targeted PGD-40 to the least-likely class, ε={e}, α={al}"),
            Box::new(pgd(40)?.targeting(Targeting::LeastLikely)),
        ),
        s if s.starts_with("pgd") => {
            let rest = &s[3..];
            let (k, r) = match rest.split_once('x') {
                Some((k, r)) => (k, r),
                None => (rest, "1"),
            };
            let (k, r): (usize, usize) = match (k.parse(), r.parse()) {
                (Ok(k), Ok(r)) if k > 0 && r > 0 => (k, r),
                _ => bail!(
                    "unknown attack '{s}': PGD is written pgdK or pgdKxR (e.g. pgd40, pgd100x20)"
                ),
            };
            (
                format!(
                    "PGD-{k}, {r} restart{}, ε={e}, α={al}, random start",
                    if r > 1 { "s" } else { "" }
                ),
                Box::new(pgd(k)?.restarts(r)),
            )
        }
        other => bail!("unknown attack '{other}'; known: fgsm, pgdK, pgdKxR, cw, cw+, targeted"),
    };
    Ok(NamedAttack {
        name: name.to_string(),
        description,
        attack,
    })
}

/// Loads the test split of `data`.
pub fn load_test_set(data: &str, data_dir: Option<&Path>) -> Result<saddle_data::Dataset> {
    let root = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(saddle_data::datasets_dir);
    Ok(match data {
        "mnist" => saddle_data::mnist::load(root.join("mnist"), Split::Test)?,
        "fashion-mnist" => {
            saddle_data::fashion_mnist::load(root.join("fashion-mnist"), Split::Test)?
        }
        "cifar10" => saddle_data::cifar10::load(root.join("cifar10"), Split::Test)?,
        other => bail!("--data {other}: expected mnist, fashion-mnist or cifar10"),
    })
}

/// `saddle eval`.
pub fn run(a: EvalArgs) -> Result<()> {
    if !(a.eps.is_finite() && (0.0..=1.0).contains(&a.eps)) {
        bail!("--eps {}: expected a number in [0, 1]", a.eps);
    }
    let alpha = a.alpha.unwrap_or(a.eps / 30.0);
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    in_pool(a.threads, || {
        crate::with_backend!(a.device, |b| eval_on(b, &a, alpha))
    })
}

fn eval_on<B: Backend>(b: B, a: &EvalArgs, alpha: f32) -> Result<()> {
    let names: Vec<&str> = a
        .attacks
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let attacks: Vec<NamedAttack<B>> = names
        .iter()
        .map(|n| {
            if a.eps == 0.0 {
                bail!("--eps 0 leaves nothing to attack; use --attacks '' for natural accuracy")
            } else {
                parse_attack(n, a.eps, alpha, a.seed)
            }
        })
        .collect::<Result<_>>()?;
    let mut model = load_model(&b, &a.model, a.arch.as_deref())?;
    let mut data = load_test_set(&a.data, a.data_dir.as_deref())?;
    if let Some(n) = a.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        data = data.subset_first(n.min(data.len()));
    }
    let n = data.len();
    let classes = model.num_classes();
    let mut natural_ok = vec![false; n];
    let mut robust_ok: Vec<Vec<bool>> = vec![vec![false; n]; attacks.len()];
    let mut seconds = vec![0.0f64; attacks.len()];
    let bar = ProgressBar::new((n * (attacks.len() + 1)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta} {msg}")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    for s in (0..n).step_by(a.batch_size) {
        let idx: Vec<usize> = (s..(s + a.batch_size).min(n)).collect();
        let (xs, ys) = data.batch(&idx)?;
        let x = b.from_vec(&data.batch_shape(idx.len()), xs)?;
        let y = b.from_vec(&[idx.len()], ys.clone())?;
        let labels: Vec<usize> = ys.iter().map(|&v| v as usize).collect();
        let pred = argmax_rows(&b.to_vec(&model.logits(&x)?)?, classes);
        for (j, &i) in idx.iter().enumerate() {
            natural_ok[i] = pred[j] == labels[j];
        }
        bar.inc(idx.len() as u64);
        for (k, at) in attacks.iter().enumerate() {
            bar.set_message(at.name.clone());
            let t = Instant::now();
            let r = at
                .attack
                .perturb(&mut model, &x, &y)
                .with_context(|| format!("attack {}", at.name))?;
            seconds[k] += t.elapsed().as_secs_f64();
            for (j, &i) in idx.iter().enumerate() {
                robust_ok[k][i] = r.predictions[j] == labels[j];
            }
            bar.inc(idx.len() as u64);
        }
    }
    bar.finish_and_clear();
    let pct = |v: &[bool]| 100.0 * v.iter().filter(|&&o| o).count() as f64 / n as f64;
    let worst: Vec<bool> = (0..n)
        .map(|i| natural_ok[i] && robust_ok.iter().all(|r| r[i]))
        .collect();
    println!(
        "model {}  data {} (first {n} test images)  ε = {}",
        a.model.display(),
        a.data,
        a.eps
    );
    println!("{:<12} {:>9}  details", "attack", "accuracy");
    println!(
        "{:<12} {:>8.2}%  clean test images",
        "natural",
        pct(&natural_ok)
    );
    let mut rows = Vec::new();
    for (k, at) in attacks.iter().enumerate() {
        println!(
            "{:<12} {:>8.2}%  {} ({:.1} s)",
            at.name,
            pct(&robust_ok[k]),
            at.description,
            seconds[k]
        );
        rows.push(serde_json::json!({"name": at.name, "description": at.description, "accuracy": pct(&robust_ok[k]) / 100.0, "seconds": seconds[k]}));
    }
    if !attacks.is_empty() {
        println!(
            "{:<12} {:>8.2}%  correct under every attack above (per-example worst case)",
            "worst-case",
            pct(&worst)
        );
    }
    let report = serde_json::json!({
        "model": a.model.display().to_string(), "data": a.data, "examples": n, "epsilon": a.eps, "alpha": alpha,
        "seed": a.seed, "natural_accuracy": pct(&natural_ok) / 100.0, "attacks": rows,
        "worst_case_accuracy": pct(&worst) / 100.0,
    });
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.with_extension("eval.json"));
    fsutil::write_atomic(&out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
