//! `saddle eval`: natural accuracy and accuracy under the paper's white-box attacks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use saddle_data::Split;
use saddle_models::{argmax_rows, Classifier};
use saddle_tensor::Backend;

use super::{in_pool, load_model};
use crate::mpi::{self, Place};

mod sanity;
mod suite;
use crate::fsutil;
use crate::progress::Progress;
pub use suite::{doubled, parse_attack, short, NamedAttack, Norm};

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
    /// attack, 5,000 or N queries); hsj or hsjN (HopSkipJump, decision-based: the predicted
    /// label only, 10,000 or N queries; --norm l2); apgd-*, fab-t also take a step count
    /// (apgd-ce200); autoattack (AutoAttack's standard version:
    /// apgd-ce,apgd-t,fab-t,square as a cascade); paper (the data set's default list). Default: MNIST fgsm,pgd40,pgd100,cw,cw+,targeted (Table 1); CIFAR-10
    /// fgsm,pgd7,pgd20,cw30 (Table 2).
    #[arg(long)]
    attacks: Option<String>,
    /// The threat model: linf (the paper's) or l2. Every attack but FGSM (which becomes the
    /// L2 fast gradient method) and hsj (L2 only) runs in either.
    #[arg(long, value_enum, default_value = "linf")]
    norm: Norm,
    /// Radius in [0, 1] pixel units (default, L∞: 0.3 for MNIST, 8/255 for CIFAR-10; L2: 2.0
    /// for MNIST, 0.5 for CIFAR-10). An L2 radius may exceed 1.
    #[arg(long, allow_hyphen_values = true)]
    eps: Option<f32>,
    /// Step size of PGD, CW and targeted attacks (default, L∞: ε/30 for MNIST, the paper's 0.01
    /// at ε = 0.3; ε/4 for CIFAR-10, the paper's 2/255 at ε = 8/255; L2: ε/10).
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
    #[command(flatten)]
    run: super::Run,
}

/// The paper's evaluation setting of a data set: what `saddle eval --data D` uses when
/// `--eps`, `--alpha` or `--attacks` is not given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Defaults {
    /// L∞ radius.
    pub eps: f32,
    /// L2 radius (`--norm l2`).
    pub l2_eps: f32,
    /// The step size as a fraction of ε.
    pub alpha_over_eps: f32,
    /// The attacks of the paper's table, comma-separated (what `--attacks paper` means).
    pub attacks: &'static str,
}

impl Defaults {
    /// The L∞ radius and PGD step size of `--eps` and `--alpha`, these defaults filling in what
    /// is not given (the step: ε times `alpha_over_eps`).
    ///
    /// # Errors
    /// A radius outside `[0, 1]` (pixel units) or a step size that is not a positive number.
    pub fn linf(&self, eps: Option<f32>, alpha: Option<f32>) -> Result<(f32, f32)> {
        let eps = eps.unwrap_or(self.eps);
        if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
            bail!("--eps {eps}: expected a number in [0, 1] (pixel units)");
        }
        let alpha = alpha.unwrap_or(eps * self.alpha_over_eps);
        if !(alpha.is_finite() && alpha > 0.0) {
            bail!("--alpha {alpha}: the step size must be a positive number");
        }
        Ok((eps, alpha))
    }
}

/// An L∞ PGD's `--eps`, `--alpha` and `--seed`, as `landscape` and `transfer` take them.
#[derive(clap::Args, Debug, Clone)]
pub struct LinfArgs {
    /// L∞ radius in [0, 1] pixel units (default: 0.3 for MNIST, 8/255 for CIFAR-10).
    #[arg(long, allow_hyphen_values = true)]
    pub eps: Option<f32>,
    /// PGD's step size (default: ε/30 for MNIST, ε/4 for CIFAR-10, as `saddle eval`).
    #[arg(long, allow_hyphen_values = true)]
    pub alpha: Option<f32>,
    /// Seed of PGD's random starts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl LinfArgs {
    /// The radius and step for `data`: as given, else [`Defaults::linf`]'s.
    ///
    /// # Errors
    /// An unknown data set, a radius outside `[0, 1]`, a step that is not a positive number.
    pub fn resolve(&self, data: &str) -> Result<(f32, f32)> {
        defaults(data)?.linf(self.eps, self.alpha)
    }
}

/// The paper's evaluation setting for `data`: MNIST and Fashion-MNIST as Table 1 (ε = 0.3,
/// step 0.01 = ε/30; FGSM, PGD-40, PGD-100, CW, CW+, targeted), CIFAR-10 as Table 2
/// (ε = 8/255, step 2/255 = ε/4; FGSM, PGD-7, PGD-20, CW-30).
pub fn defaults(data: &str) -> Result<Defaults> {
    Ok(match data {
        "mnist" | "fashion-mnist" => Defaults {
            eps: 0.3,
            l2_eps: 2.0,
            alpha_over_eps: 1.0 / 30.0,
            attacks: "fgsm,pgd40,pgd100,cw,cw+,targeted",
        },
        "cifar10" => Defaults {
            eps: 8.0 / 255.0,
            l2_eps: 0.5,
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
    let (eps, alpha_over_eps) = match a.norm {
        Norm::Linf => (a.eps.unwrap_or(d.eps), d.alpha_over_eps),
        Norm::L2 => (a.eps.unwrap_or(d.l2_eps), 0.1),
    };
    match a.norm {
        Norm::Linf if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) => {
            bail!("--eps {eps}: expected a number in [0, 1] (pixel units)")
        }
        Norm::L2 if !(eps.is_finite() && eps >= 0.0) => {
            bail!("--eps {eps}: an L2 radius must be a number of at least 0")
        }
        _ => {}
    }
    let alpha = a.alpha.unwrap_or(eps * alpha_over_eps);
    if a.alpha.is_some() && !(alpha.is_finite() && alpha > 0.0) {
        bail!("--alpha {alpha}: the step size must be a positive number");
    }
    let list = a.attacks.as_deref().unwrap_or(d.attacks);
    let names = attack_names(list, d.attacks);
    let cascade = a.cascade || list.split(',').any(|s| s.trim() == "autoattack");
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // Under `mpirun -np N`, rank r attacks the batches j with j mod N = r (each batch exactly
    // as one process makes it, so every per-example result is the same) and rank 0 gathers
    // them, prints the table and writes the files.
    let job = mpi::Job::start()?;
    let place = job.place();
    let res = in_pool(a.run.compute.threads, || {
        crate::commands::with_backend!(a.run.compute.device, |b| eval_on(
            b, &a, &names, eps, alpha, cascade, place
        ))
    });
    if let (Err(e), true) = (&res, place.size > 1) {
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

fn eval_on<B: Backend>(
    b: B,
    a: &EvalArgs,
    names: &[String],
    eps: f32,
    alpha: f32,
    cascade: bool,
    place: Place,
) -> Result<()> {
    let attacks: Vec<NamedAttack<B>> = names
        .iter()
        .map(|n| {
            if eps == 0.0 {
                bail!("--eps 0 leaves nothing to attack; use --attacks '' for natural accuracy")
            } else {
                parse_attack(n, a.norm, eps, alpha, a.seed)
            }
        })
        .collect::<Result<_>>()?;
    let mut model = load_model(&b, &a.model, a.arch.as_deref())?;
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => bail!("--split {other}: expected test or train"),
    };
    let mut data = load_split(&a.data, split, a.run.data_dir.as_deref())?;
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
    // This rank's batches: all of them in one process.
    let mine = |batch: usize| batch % place.size == place.rank;
    let units: usize = (0..n)
        .step_by(a.batch_size)
        .enumerate()
        .filter(|&(batch, _)| mine(batch))
        .map(|(_, s)| (n - s).min(a.batch_size) * (attacks.len() + 1))
        .sum();
    let mut bar = Progress::new(units as u64, "evaluation")?;
    let mut progress = |inc: u64, msg: Option<String>| {
        if place.is_root() {
            if let Some(m) = msg {
                bar.message(m);
            }
            bar.inc(inc);
        }
    };
    for (batch, s) in (0..n).step_by(a.batch_size).enumerate() {
        if !mine(batch) {
            continue;
        }
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
            progress(0, Some("sanity checks".into()));
            sanity = sanity::checks(&mut model, &x, &y, &labels, a.norm, eps, alpha, a.seed)?;
        }
        progress(idx.len() as u64, None);
        for (k, at) in attacks.iter().enumerate() {
            progress(0, Some(at.name.clone()));
            // In a cascade, only the images every earlier stage left correct.
            let live: Vec<usize> = (0..idx.len())
                .filter(|&j| {
                    !cascade || (natural_ok[idx[j]] && (0..k).all(|p| robust_ok[p][idx[j]]))
                })
                .collect();
            if live.is_empty() {
                progress(idx.len() as u64, None);
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
            progress(idx.len() as u64, None);
        }
    }
    if place.is_root() {
        bar.finish();
    }
    if place.size > 1 {
        gather(place, &mut natural_ok, &mut robust_ok, &mut seconds)?;
        if !place.is_root() {
            return Ok(());
        }
    }
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
    // Convergence: the strongest gradient attack with twice the steps, on the first images it
    // ran on (in a cascade: the first gradient stage with a step count, on the images the
    // stages before it left correct).
    let m = n.min(sanity::IMAGES);
    let before = |k: usize| -> Vec<usize> {
        (0..m)
            .filter(|&i| natural_ok[i] && (!cascade || (0..k).all(|p| robust_ok[p][i])))
            .collect()
    };
    let count = |k: usize| before(k).iter().filter(|&&i| robust_ok[k][i]).count();
    let mut candidates = (0..attacks.len())
        .filter(|&k| !attacks[k].gradient_free && doubled(&attacks[k].name).is_some());
    let strongest = if cascade {
        candidates.next()
    } else {
        candidates.min_by_key(|&k| count(k))
    };
    if let Some(k) = strongest.filter(|&k| !before(k).is_empty()) {
        let twice_name = doubled(&attacks[k].name).unwrap_or_default();
        let twice = parse_attack::<B>(&twice_name, a.norm, eps, alpha, a.seed)?;
        let idx = before(k);
        let (xs, ys) = data.batch(&idx)?;
        let x = b.from_vec(&data.batch_shape(idx.len()), xs)?;
        let y = b.from_vec(&[idx.len()], ys.clone())?;
        let r = twice
            .attack
            .perturb(&mut model, &x, &y)
            .with_context(|| format!("sanity check: {twice_name}"))?;
        let twice_correct = (0..idx.len())
            .filter(|&q| r.predictions[q] as f32 == ys[q])
            .count();
        sanity.push(sanity::convergence(
            &attacks[k].name,
            &twice_name,
            m,
            count(k),
            twice_correct,
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
        "model {}  data {} ({which})  {} ε = {}",
        a.model.display(),
        a.data,
        if a.norm == Norm::L2 { "L2" } else { "L∞" },
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
        "model": a.model.display().to_string(), "data": a.data, "split": a.split, "offset": a.offset, "examples": n, "norm": a.norm.as_str(), "epsilon": eps, "alpha": alpha,
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

/// Every rank's per-example results (each rank set those of its batches, the rest are false)
/// and the attacks' seconds (summed over the ranks), on every rank.
fn gather(
    place: Place,
    natural_ok: &mut [bool],
    robust_ok: &mut [Vec<bool>],
    seconds: &mut [f64],
) -> Result<()> {
    let mut buf: Vec<f32> = natural_ok
        .iter()
        .chain(robust_ok.iter().flatten())
        .map(|&o| f32::from(u8::from(o)))
        .chain(seconds.iter().map(|&t| t as f32))
        .collect();
    place.all_reduce_sum(&mut buf)?;
    let mut it = buf.into_iter();
    for o in natural_ok.iter_mut().chain(robust_ok.iter_mut().flatten()) {
        *o = it.next().is_some_and(|v| v > 0.5);
    }
    for t in seconds.iter_mut() {
        *t = f64::from(it.next().unwrap_or(0.0));
    }
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
