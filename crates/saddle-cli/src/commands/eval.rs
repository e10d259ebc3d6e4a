//! `saddle eval`: natural accuracy and accuracy under the paper's white-box attacks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use saddle_attacks::{Apgd, ApgdLoss, Attack, Fab, Fgsm, Loss, Pgd, Square, Targeting, CW_PLUS};
use saddle_data::Split;
use saddle_models::{argmax_rows, Classifier};
use saddle_tensor::Backend;

use super::{in_pool, load_model};

mod sanity;
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
    /// Test set: mnist, fashion-mnist or cifar10. It sets the defaults of --eps, --alpha and
    /// --attacks to the paper's for that data set.
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Comma-separated attacks: fgsm; pgdK or pgdKxR (PGD, K steps, R restarts: pgd40,
    /// pgd100x20); cwK or cwKxR (PGD on the CW loss, κ = 0; cw = cw40); cw+ (PGD-40, CW loss
    /// with κ = 50); targeted (PGD-40 to the least-likely class); apgd-ce, apgd-dlr, apgd-t
    /// (Auto-PGD on cross-entropy, DLR, targeted DLR with 9 targets: AutoAttack's settings, 100
    /// steps); fab-t (FAB-T, 100 steps, 9 targets); square or squareN (the gradient-free Square
    /// attack, 5,000 or N queries); autoattack (AutoAttack's standard version:
    /// apgd-ce,apgd-t,fab-t,square as a cascade); paper (the data set's default list). Default: MNIST fgsm,pgd40,pgd100,cw,cw+,targeted (Table 1); CIFAR-10
    /// fgsm,pgd7,pgd20,cw30 (Table 2).
    #[arg(long)]
    attacks: Option<String>,
    /// L∞ radius in [0, 1] pixel units (default: 0.3 for MNIST, 8/255 for CIFAR-10).
    #[arg(long, allow_hyphen_values = true)]
    eps: Option<f32>,
    /// Step size of PGD, CW and targeted attacks (default: ε/30 for MNIST, the paper's 0.01 at
    /// ε = 0.3; ε/4 for CIFAR-10, the paper's 2/255 at ε = 8/255).
    #[arg(long, allow_hyphen_values = true)]
    alpha: Option<f32>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Which split to evaluate on: test (the default, for reports) or train (with --offset, the
    /// held-out tail of the training set that recipes are chosen on: train with
    /// `train_limit = 45000`, evaluate with `--split train --offset 45000`).
    #[arg(long, default_value = "test")]
    split: String,
    /// Skip the first N images of the split (then --limit counts from there).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Images per attack batch.
    #[arg(long, default_value_t = 200)]
    batch_size: usize,
    /// Seed of the random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run each attack only on the images every earlier attack left correctly classified, as
    /// AutoAttack does (on by default with `autoattack` in --attacks). Each row is then the
    /// accuracy after that stage.
    #[arg(long)]
    cascade: bool,
    /// Write, for each image, whether it is still classified correctly: clean, after each
    /// attack, and in the worst case (a boolean .npy of shape [images, attacks + 2]).
    #[arg(long, value_name = "FILE.npy")]
    per_example: Option<PathBuf>,
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

/// The paper's evaluation setting of a data set: what `saddle eval --data D` uses when
/// `--eps`, `--alpha` or `--attacks` is not given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    /// L∞ radius.
    pub eps: f32,
    /// The step size as a fraction of ε.
    pub alpha_over_eps: f32,
    /// The attacks of the paper's table, comma-separated (what `--attacks paper` means).
    pub attacks: &'static str,
}

/// The paper's evaluation setting for `data`: MNIST and Fashion-MNIST as Table 1 (ε = 0.3,
/// step 0.01 = ε/30; FGSM, PGD-40, PGD-100, CW, CW+, targeted), CIFAR-10 as Table 2
/// (ε = 8/255, step 2/255 = ε/4; FGSM, PGD-7, PGD-20, CW-30).
pub fn defaults(data: &str) -> Result<Defaults> {
    Ok(match data {
        "mnist" | "fashion-mnist" => Defaults {
            eps: 0.3,
            alpha_over_eps: 1.0 / 30.0,
            attacks: "fgsm,pgd40,pgd100,cw,cw+,targeted",
        },
        "cifar10" => Defaults {
            eps: 8.0 / 255.0,
            alpha_over_eps: 0.25,
            attacks: "fgsm,pgd7,pgd20,cw30",
        },
        other => bail!("--data {other}: expected mnist, fashion-mnist or cifar10"),
    })
}

/// AutoAttack's standard version (Croce & Hein 2020), in its order.
pub const AUTOATTACK: &str = "apgd-ce,apgd-t,fab-t,square";

/// The attack names of `list` (comma-separated), with `paper` replaced by `paper_list` and
/// `autoattack` by [`AUTOATTACK`].
pub fn attack_names(list: &str, paper_list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .flat_map(|s| {
            if s == "paper" {
                paper_list.split(',').map(str::to_string).collect()
            } else if s == "autoattack" {
                AUTOATTACK.split(',').map(str::to_string).collect()
            } else {
                vec![s.to_string()]
            }
        })
        .collect()
}

/// A named attack of the evaluation suite.
pub struct NamedAttack<B: Backend> {
    /// Name as given on the command line.
    pub name: String,
    /// What it is, for the table.
    pub description: String,
    /// Its hyperparameters, for the JSON: epsilon, alpha, steps, restarts, random_start, loss,
    /// kappa, targeting, seed.
    pub params: serde_json::Value,
    /// The attack.
    pub attack: Box<dyn Attack<B>>,
    /// Whether it uses only the model's outputs (no gradients): the sanity check compares what
    /// it finds with what the gradient attacks found.
    pub gradient_free: bool,
}

/// A short decimal for tables (0.3/30 prints as 0.01, not 0.010000001), or k/255 for a
/// multiple of 1/255 that needs more than two decimals (8/255, not 0.0314).
fn short(v: f32) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let k = (v * 255.0).round();
    let decimals = s.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals > 2 && k >= 1.0 && (v * 255.0 - k).abs() < 1e-3 {
        format!("{k}/255")
    } else {
        s.to_string()
    }
}

/// Steps and restarts of `pgdK` / `pgdKxR` / `cwK` / `cwKxR` (`rest` is what follows the prefix).
fn steps_and_restarts(rest: &str) -> Option<(usize, usize)> {
    let (k, r) = rest.split_once('x').unwrap_or((rest, "1"));
    match (k.parse(), r.parse()) {
        (Ok(k), Ok(r)) if k > 0 && r > 0 => Some((k, r)),
        _ => None,
    }
}

const KNOWN: &str =
    "fgsm, pgdK, pgdKxR, cw, cwK, cwKxR, cw+, targeted, apgd-ce, apgd-dlr, apgd-t, fab-t, \
     square, squareN, autoattack, paper";

/// FAB-T (`fab-t`) with AutoAttack's settings: 100 steps, 9 targets, one restart from the clean
/// image, α_max 0.1, η 1.05, β 0.9.
fn parse_fab<B: Backend>(name: &str, eps: f32, seed: u64) -> Result<Option<NamedAttack<B>>> {
    if name != "fab-t" {
        return Ok(None);
    }
    let a = Fab::linf(eps, 100)?.seed(seed);
    let params = serde_json::json!({
        "epsilon": eps, "steps": a.steps(), "restarts": a.restart_count(),
        "random_start": false, "loss": "linearised boundary", "target_classes": a.target_count(),
        "alpha_max": a.alpha_max_value(), "eta": a.eta_value(), "beta": a.beta_value(),
        "targeting": "top-ranked wrong classes", "seed": seed,
    });
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description: format!(
            "FAB-T, {} steps, {} targets, ε={}",
            a.steps(),
            a.target_count(),
            short(eps)
        ),
        params,
        attack: Box::new(a),
        gradient_free: false,
    }))
}

/// The Square attack (`square`: AutoAttack's 5,000 queries; `squareN`: N queries), p_init 0.8.
fn parse_square<B: Backend>(name: &str, eps: f32, seed: u64) -> Result<Option<NamedAttack<B>>> {
    let Some(rest) = name.strip_prefix("square") else {
        return Ok(None);
    };
    let queries = if rest.is_empty() {
        5000
    } else {
        match rest.parse::<usize>() {
            Ok(q) if q > 0 => q,
            _ => bail!("unknown attack '{name}': Square is written square or squareN (N queries, e.g. square1000); known: {KNOWN}"),
        }
    };
    let a = Square::linf(eps, queries)?.seed(seed);
    let params = serde_json::json!({
        "epsilon": eps, "steps": queries, "queries": queries, "restarts": 1,
        "random_start": true, "loss": "margin", "p_init": 0.8, "targeting": "untargeted",
        "seed": seed,
    });
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description: format!(
            "Square (gradient-free), {queries} queries, p_init 0.8, ε={}",
            short(eps)
        ),
        params,
        attack: Box::new(a),
        gradient_free: true,
    }))
}

/// APGD (`apgd-ce`, `apgd-dlr`, `apgd-t`) with AutoAttack's standard settings: 100 steps, one
/// restart, 9 targets for APGD-T.
fn parse_apgd<B: Backend>(name: &str, eps: f32, seed: u64) -> Result<Option<NamedAttack<B>>> {
    let (loss, what, loss_name) = match name {
        "apgd-ce" => (ApgdLoss::CrossEntropy, "APGD-CE", "xent"),
        "apgd-dlr" => (ApgdLoss::Dlr, "APGD-DLR", "dlr"),
        "apgd-t" => (
            ApgdLoss::DlrTargeted,
            "APGD-T (targeted DLR)",
            "dlr-targeted",
        ),
        _ => return Ok(None),
    };
    let a = Apgd::linf(eps, 100)?.loss(loss).seed(seed);
    let targets = (loss == ApgdLoss::DlrTargeted).then_some(a.target_count());
    let description = format!(
        "{what}, {} steps{}, ε={}, random start",
        a.steps(),
        targets.map_or(String::new(), |t| format!(", {t} targets")),
        short(eps)
    );
    let params = serde_json::json!({
        "epsilon": eps, "steps": a.steps(), "restarts": a.restart_count(),
        "random_start": true, "loss": loss_name, "target_classes": targets,
        "initial_step": 2.0 * eps, "momentum": 0.75, "rho": 0.75,
        "checkpoints": a.checkpoints(), "targeting": if targets.is_some() { "top-ranked wrong classes" } else { "untargeted" },
        "seed": seed,
    });
    Ok(Some(NamedAttack {
        name: name.to_string(),
        description,
        params,
        attack: Box::new(a),
        gradient_free: false,
    }))
}

/// Parses one attack name of the suite.
pub fn parse_attack<B: Backend>(
    name: &str,
    eps: f32,
    alpha: f32,
    seed: u64,
) -> Result<NamedAttack<B>> {
    if let Some(a) = parse_apgd(name, eps, seed)? {
        return Ok(a);
    }
    if let Some(a) = parse_square(name, eps, seed)? {
        return Ok(a);
    }
    if let Some(a) = parse_fab(name, eps, seed)? {
        return Ok(a);
    }
    let (e, al) = (short(eps), short(alpha));
    let pgd = |steps: usize| -> Result<Pgd> {
        Ok(Pgd::linf(eps, alpha, steps)?.random_start(true).seed(seed))
    };
    let restarts = |r: usize| {
        if r > 1 {
            format!(", {r} restarts")
        } else {
            String::new()
        }
    };
    // (steps, restarts, random start, κ of the CW loss or None for cross-entropy, targeting)
    type Setting = (usize, usize, bool, Option<f32>, &'static str);
    let (description, attack, (steps, nrestarts, random, kappa, targeting)): (
        String,
        Box<dyn Attack<B>>,
        Setting,
    ) = match name {
        "fgsm" => (
            format!("FGSM, ε={e}"),
            Box::new(Fgsm::new(eps)?),
            (1, 1, false, None, "untargeted"),
        ),
        "cw" => (
            format!("PGD-40 on the CW loss (κ=0), ε={e}, α={al}"),
            Box::new(pgd(40)?.loss(Loss::Cw { kappa: 0.0 })),
            (40, 1, true, Some(0.0), "untargeted"),
        ),
        "cw+" => (
            format!("PGD-40 on the CW loss (κ=50), ε={e}, α={al}"),
            Box::new(pgd(40)?.loss(CW_PLUS)),
            (40, 1, true, Some(50.0), "untargeted"),
        ),
        "targeted" => (
            format!("targeted PGD-40 to the least-likely class, ε={e}, α={al}"),
            Box::new(pgd(40)?.targeting(Targeting::LeastLikely)),
            (40, 1, true, None, "least-likely"),
        ),
        s if s.starts_with("pgd") => {
            let Some((k, r)) = steps_and_restarts(&s[3..]) else {
                bail!("unknown attack '{s}': PGD is written pgdK or pgdKxR (e.g. pgd40, pgd100x20); known: {KNOWN}")
            };
            (
                format!(
                    "PGD-{k}, {r} restart{}, ε={e}, α={al}, random start",
                    if r > 1 { "s" } else { "" }
                ),
                Box::new(pgd(k)?.restarts(r)),
                (k, r, true, None, "untargeted"),
            )
        }
        s if s.starts_with("cw") => {
            let Some((k, r)) = steps_and_restarts(&s[2..]) else {
                bail!("unknown attack '{s}': PGD on the CW loss is written cwK or cwKxR (e.g. cw30); known: {KNOWN}")
            };
            (
                format!(
                    "PGD-{k} on the CW loss (κ=0){}, ε={e}, α={al}, random start",
                    restarts(r)
                ),
                Box::new(pgd(k)?.restarts(r).loss(Loss::Cw { kappa: 0.0 })),
                (k, r, true, Some(0.0), "untargeted"),
            )
        }
        other => bail!("unknown attack '{other}'; known: {KNOWN}"),
    };
    let step = if name == "fgsm" { eps } else { alpha };
    let params = serde_json::json!({
        "epsilon": eps, "alpha": step, "steps": steps, "restarts": nrestarts,
        "random_start": random, "loss": if kappa.is_some() { "cw" } else { "xent" },
        "kappa": kappa, "targeting": targeting, "seed": seed,
    });
    Ok(NamedAttack {
        name: name.to_string(),
        description,
        params,
        attack,
        gradient_free: false,
    })
}

/// Loads `split` of `data`.
pub fn load_split(
    data: &str,
    split: Split,
    data_dir: Option<&Path>,
) -> Result<saddle_data::Dataset> {
    let root = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(saddle_data::datasets_dir);
    Ok(match data {
        "mnist" => saddle_data::mnist::load(root.join("mnist"), split)?,
        "fashion-mnist" => saddle_data::fashion_mnist::load(root.join("fashion-mnist"), split)?,
        "cifar10" => saddle_data::cifar10::load(root.join("cifar10"), split)?,
        other => bail!("--data {other}: expected mnist, fashion-mnist or cifar10"),
    })
}

/// `saddle eval`.
pub fn run(a: EvalArgs) -> Result<()> {
    let d = defaults(&a.data)?;
    let eps = a.eps.unwrap_or(d.eps);
    if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
        bail!("--eps {eps}: expected a number in [0, 1]");
    }
    let alpha = a.alpha.unwrap_or(eps * d.alpha_over_eps);
    if a.alpha.is_some() && !(alpha.is_finite() && alpha > 0.0) {
        bail!("--alpha {alpha}: the step size must be a positive number");
    }
    let list = a.attacks.as_deref().unwrap_or(d.attacks);
    let names = attack_names(list, d.attacks);
    let cascade = a.cascade || list.split(',').any(|s| s.trim() == "autoattack");
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    in_pool(a.threads, || {
        crate::with_backend!(a.device, |b| eval_on(b, &a, &names, eps, alpha, cascade))
    })
}

fn eval_on<B: Backend>(
    b: B,
    a: &EvalArgs,
    names: &[String],
    eps: f32,
    alpha: f32,
    cascade: bool,
) -> Result<()> {
    let attacks: Vec<NamedAttack<B>> = names
        .iter()
        .map(|n| {
            if eps == 0.0 {
                bail!("--eps 0 leaves nothing to attack; use --attacks '' for natural accuracy")
            } else {
                parse_attack(n, eps, alpha, a.seed)
            }
        })
        .collect::<Result<_>>()?;
    let mut model = load_model(&b, &a.model, a.arch.as_deref())?;
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => bail!("--split {other}: expected test or train"),
    };
    let mut data = load_split(&a.data, split, a.data_dir.as_deref())?;
    if a.offset >= data.len() {
        bail!(
            "--offset {}: the {} split of {} has only {} images",
            a.offset,
            a.split,
            a.data,
            data.len()
        );
    }
    let count = match a.limit {
        Some(0) => bail!("--limit must be at least 1"),
        Some(n) => n.min(data.len() - a.offset),
        None => data.len() - a.offset,
    };
    if a.offset > 0 || count < data.len() {
        let idx: Vec<usize> = (a.offset..a.offset + count).collect();
        data = data.select(&idx)?;
    }
    let n = data.len();
    let classes = model.num_classes();
    let mut sanity: Vec<sanity::Flag> = Vec::new();
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
        if s == 0 {
            bar.set_message("sanity checks");
            sanity = sanity::checks(&mut model, &x, &y, &labels, eps, alpha, a.seed)?;
        }
        bar.inc(idx.len() as u64);
        for (k, at) in attacks.iter().enumerate() {
            bar.set_message(at.name.clone());
            // In a cascade, only the images every earlier stage left correct.
            let live: Vec<usize> = (0..idx.len())
                .filter(|&j| {
                    !cascade || (natural_ok[idx[j]] && (0..k).all(|p| robust_ok[p][idx[j]]))
                })
                .collect();
            if live.is_empty() {
                bar.inc(idx.len() as u64);
                continue;
            }
            let (xl, yl) = if live.len() == idx.len() {
                (x.clone(), y.clone())
            } else {
                let (xs, ys) = data.batch(&live.iter().map(|&j| idx[j]).collect::<Vec<_>>())?;
                (
                    b.from_vec(&data.batch_shape(live.len()), xs)?,
                    b.from_vec(&[live.len()], ys)?,
                )
            };
            let t = Instant::now();
            let r = at
                .attack
                .perturb(&mut model, &xl, &yl)
                .with_context(|| format!("attack {}", at.name))?;
            seconds[k] += t.elapsed().as_secs_f64();
            for (q, &j) in live.iter().enumerate() {
                robust_ok[k][idx[j]] = r.predictions[q] == labels[j];
            }
            bar.inc(idx.len() as u64);
        }
    }
    bar.finish_and_clear();
    // A gradient-free attack breaking images that every gradient attack left correct.
    let gradient_free: Vec<usize> = (0..attacks.len())
        .filter(|&k| attacks[k].gradient_free)
        .collect();
    let gradient: Vec<usize> = (0..attacks.len())
        .filter(|&k| !gradient_free.contains(&k))
        .collect();
    if !gradient_free.is_empty() && !gradient.is_empty() {
        let missed = (0..n)
            .filter(|&i| {
                natural_ok[i]
                    && gradient_free.iter().any(|&k| {
                        // Correct under what ran before: in a cascade, the earlier stages.
                        let before = if cascade {
                            (0..k).all(|p| robust_ok[p][i])
                        } else {
                            gradient.iter().all(|&p| robust_ok[p][i])
                        };
                        before && !robust_ok[k][i]
                    })
            })
            .count();
        sanity.push(sanity::Flag::new(
            "gradient-free attack finds no more",
            missed == 0,
            format!(
                "the gradient-free attack broke {missed} image(s) that every gradient attack \
                 left correct{}",
                if missed > 0 {
                    ": possible gradient masking"
                } else {
                    ""
                }
            ),
        ));
    }
    let pct = |v: &[bool]| 100.0 * v.iter().filter(|&&o| o).count() as f64 / n as f64;
    let worst: Vec<bool> = (0..n)
        .map(|i| natural_ok[i] && robust_ok.iter().all(|r| r[i]))
        .collect();
    let which = if a.offset == 0 {
        format!("first {n} {} images", a.split)
    } else {
        format!("{} images {}–{}", a.split, a.offset, a.offset + n - 1)
    };
    println!(
        "model {}  data {} ({which})  ε = {}",
        a.model.display(),
        a.data,
        short(eps)
    );
    for f in &sanity {
        if !f.ok {
            println!("WARNING ({}): {}", f.name, f.evidence);
        }
    }
    println!("{:<12} {:>9}  details", "attack", "accuracy");
    println!("{:<12} {:>8.2}%  clean images", "natural", pct(&natural_ok));
    let mut rows = Vec::new();
    for (k, at) in attacks.iter().enumerate() {
        println!(
            "{:<12} {:>8.2}%  {} ({:.1} s)",
            at.name,
            pct(&robust_ok[k]),
            at.description,
            seconds[k]
        );
        let mut row = serde_json::json!({"name": at.name, "description": at.description, "accuracy": pct(&robust_ok[k]) / 100.0, "seconds": seconds[k], "cascade": cascade});
        if let (Some(row), Some(p)) = (row.as_object_mut(), at.params.as_object()) {
            row.extend(p.clone());
        }
        rows.push(row);
    }
    if !attacks.is_empty() {
        println!(
            "{:<12} {:>8.2}%  correct under every attack above (per-example worst case)",
            "worst-case",
            pct(&worst)
        );
    }
    let report = serde_json::json!({
        "model": a.model.display().to_string(), "data": a.data, "split": a.split, "offset": a.offset, "examples": n, "epsilon": eps, "alpha": alpha,
        "seed": a.seed, "natural_accuracy": pct(&natural_ok) / 100.0, "attacks": rows,
        "worst_case_accuracy": pct(&worst) / 100.0, "worst_case_over": names, "cascade": cascade,
        "sanity": sanity.iter().map(|f| serde_json::json!({"check": f.name, "ok": f.ok, "evidence": f.evidence})).collect::<Vec<_>>(),
        "per_example": a.per_example.as_ref().map(|p| p.display().to_string()),
    });
    if let Some(path) = &a.per_example {
        // Columns: clean, each attack in order, worst case.
        let cols = attacks.len() + 2;
        let mut table = Vec::with_capacity(n * cols);
        for i in 0..n {
            table.push(natural_ok[i]);
            table.extend(robust_ok.iter().map(|r| r[i]));
            table.push(worst[i]);
        }
        fsutil::write_atomic(path, &crate::npy::encode_bool(&[n, cols], &table))?;
        eprintln!("wrote {}", path.display());
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.with_extension("eval.json"));
    fsutil::write_atomic(&out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radii_print_as_short_decimals_or_multiples_of_1_255() {
        assert_eq!(short(0.3), "0.3");
        assert_eq!(short(0.3 / 30.0), "0.01");
        assert_eq!(short(0.2), "0.2");
        assert_eq!(short(8.0 / 255.0), "8/255");
        assert_eq!(short(8.0 / 255.0 * 0.25), "2/255");
        assert_eq!(short(0.005), "0.005");
    }

    #[test]
    fn paper_in_a_list_is_the_data_sets_default_list() {
        let cifar = defaults("cifar10").unwrap();
        assert_eq!(
            attack_names(" paper, pgd40x2 ,", cifar.attacks),
            ["fgsm", "pgd7", "pgd20", "cw30", "pgd40x2"]
        );
        assert_eq!(
            defaults("fashion-mnist").unwrap(),
            defaults("mnist").unwrap()
        );
        assert_eq!(cifar.eps * cifar.alpha_over_eps, 2.0 / 255.0);
        assert!(defaults("svhn").is_err());
    }
}
