//! `cargo xtask repro <mnist|cifar10> [--quick]`: one of the paper's experiments end to end —
//! download the data set if needed, train with a preset, evaluate with the paper's white-box
//! attacks, and write `results/<data set>-<preset>/REPORT.md` with the paper's column beside
//! ours (Table 1 for MNIST, Table 2 for CIFAR-10), plus the evaluation JSON, the training log
//! and the model. The two experiments share every step; an [`Experiment`] says what differs.
//!
//! It drives the `saddle` binary (built in release mode first), so what it does is exactly what
//! a user can do by hand with `saddle train` and `saddle eval`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Arguments of `cargo xtask repro`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The experiment: `mnist` (Table 1) or `cifar10` (Table 2).
    pub experiment: String,
    /// Train with the quick preset (`mnist-quick`: ≤ 60 min on 2 cores; `cifar-quick`: ≤ 2 h)
    /// instead of the paper's (`mnist-paper`, `cifar-paper`).
    #[arg(long)]
    pub quick: bool,
    /// Train with this preset instead (overrides --quick), e.g. mnist-smoke or cifar-smoke for
    /// a check.
    #[arg(long)]
    pub preset: Option<String>,
    /// Evaluate on the first N test images (default: all 10,000); for MNIST, the attacks
    /// without restarts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// MNIST: evaluate the 20-restart attacks on the first N test images (default: as --limit,
    /// or 1,000 with --quick: PGD-100 with 20 restarts costs 2,000 gradient passes per image).
    #[arg(long)]
    pub restart_limit: Option<usize>,
    /// Reuse a trained model in the output folder instead of training again.
    #[arg(long)]
    pub skip_training: bool,
    /// Continue an interrupted training run from the checkpoint in the output folder
    /// (`saddle train --resume`: bit for bit the run that was not interrupted) instead of
    /// starting over; the report's training time is then that of all its parts.
    #[arg(long, conflicts_with = "skip_training")]
    pub resume: bool,
    /// Reuse an evaluation JSON already in the output folder when it is of the same model file
    /// (not modified since), data set, attacks, ε and number of images; evaluate otherwise.
    #[arg(long)]
    pub reuse_evals: bool,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// MNIST: run the paper's experiments instead (capacity, transferability, loss landscape,
    /// the robust model's filters) and write `results/mnist-experiments/REPORT.md`; reuses the
    /// `mnist-quick` model of `results/mnist-quick` and every model already trained.
    #[arg(long)]
    pub experiments: bool,
}

/// Which images an evaluation pass runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Images {
    /// The first `--limit`.
    Limit,
    /// The first `--restart-limit`.
    RestartLimit,
    /// The first N (at most `--limit`).
    First(usize),
}

/// One `saddle eval` run of an experiment.
#[derive(Debug)]
struct Pass {
    /// Attacks, comma-separated.
    attacks: &'static str,
    images: Images,
    /// Output file in the experiment's folder.
    file: &'static str,
    /// `--norm`: `"linf"` or `"l2"`.
    norm: &'static str,
    /// `--eps`; `None`: the experiment's L∞ radius.
    eps: Option<f32>,
}

/// An L∞ pass at the experiment's radius.
const fn linf(attacks: &'static str, images: Images, file: &'static str) -> Pass {
    Pass {
        attacks,
        images,
        file,
        norm: "linf",
        eps: None,
    }
}

/// An L2 pass of PGD and HopSkipJump at radius `eps` on the first 200 images: the paper's
/// observation (§5, Figure 6) that its L∞-trained MNIST network resists gradient-based L2
/// attacks far better than decision-based ones.
const fn l2(eps: f32, file: &'static str) -> Pass {
    Pass {
        attacks: L2_ATTACKS,
        images: Images::First(200),
        file,
        norm: "l2",
        eps: Some(eps),
    }
}

/// The L2 pass's attacks: PGD-100 (step ε/10, random start) and HopSkipJump (10,000 queries).
const L2_ATTACKS: &str = "pgd100,hsj";

/// What differs between the experiments: the data set, the presets, the evaluation passes, the
/// paper's column and the report's words.
#[derive(Debug)]
struct Experiment {
    /// The name on the command line, and the start of the output folder's name.
    name: &'static str,
    /// The data set: `saddle eval --data`, `cargo xtask download`.
    data: &'static str,
    download: crate::download::Target,
    /// The presets of `--quick` and of the paper's recipe; every preset of this experiment
    /// starts with `preset_prefix`.
    quick_preset: &'static str,
    paper_preset: &'static str,
    preset_prefix: &'static str,
    /// The L∞ radius of the evaluation.
    eps: f32,
    /// Evaluation passes.
    passes: &'static [Pass],
    /// A published AutoAttack accuracy of the paper's own model: (who measured it, %).
    autoattack_published: Option<(&'static str, f64)>,
    /// The paper's column: (our attack name, the paper's row, accuracy %).
    paper: &'static [(&'static str, &'static str, f64)],
    /// The report's title before ", preset": the data set's name.
    title: &'static str,
    /// The paper's table, for the title.
    table: &'static str,
    /// The paragraph under the title: the paper's setting and ours.
    intro: &'static str,
    /// What follows the standard error's explanation (may be empty).
    note: &'static str,
    /// The files of the output folder.
    files: &'static str,
}

/// The robustness checks of the training log (`[robust_check]`): how many, the best and the
/// last, whether one stopped the run (and by which rule, from the config's `rc`) and which
/// weights were evaluated; empty without checks.
fn checks_summary(checks: &[&serde_json::Value], rc: Option<&saddle_train::RobustCheck>) -> String {
    let (Some(first), Some(last)) = (checks.first(), checks.last()) else {
        return String::new();
    };
    let pc = |v: &serde_json::Value| format!("{:.1}%", 100.0 * v.as_f64().unwrap_or(f64::NAN));
    let mut s = format!(
        "\nRobustness checks (PGD on {} check images, in `metrics.jsonl`): {}, the best {} at \
         step {}, the last {} at step {}.",
        first["check_examples"],
        checks.len(),
        pc(&last["check_best_pgd_accuracy"]),
        last["check_best_step"],
        pc(&last["check_pgd_accuracy"]),
        last["step"],
    );
    let num = |k: &str| last[k].as_f64().unwrap_or(f64::NAN) as f32;
    if last["check_collapsed"].as_bool() == Some(true) {
        // The trainer's test, in f32: a fall of more than `max_drop`, else the ratio rule.
        let rule = match rc {
            Some(rc)
                if num("check_best_pgd_accuracy") - num("check_pgd_accuracy") > rc.max_drop =>
            {
                format!(
                    "a fall of more than {:.0} points below the best check",
                    100.0 * rc.max_drop
                )
            }
            Some(rc) => format!(
                "PGD accuracy below {} of its natural accuracy ({})",
                rc.min_ratio,
                pc(&last["check_natural_accuracy"])
            ),
            None => "a fall below the best check or PGD accuracy far below natural".into(),
        };
        s.push_str(&format!(
            " **Training stopped there**: catastrophic overfitting ({rule}), and the model \
             evaluated is the best check's, of step {}.",
            last["check_best_step"]
        ));
    } else {
        match rc.map(|rc| rc.keep) {
            Some(saddle_train::KeepWeights::Best) => s.push_str(&format!(
                " The model evaluated is the best check's (`keep = \"best\"`), of step {}.",
                last["check_best_step"]
            )),
            Some(saddle_train::KeepWeights::Last) => {
                s.push_str(" The model evaluated is the last step's.")
            }
            None => {}
        }
    }
    s.push('\n');
    s
}

/// The cheap white-box attacks, run on `--limit` images.
const CHEAP_ATTACKS: &str = "fgsm,pgd40,pgd100,targeted,cw,cw+";
/// The cheap attacks and the 20-restart ones, run on `--restart-limit` images, so that pass
/// also gives the per-example worst case over every attack.
const ALL_MNIST_ATTACKS: &str = "fgsm,pgd40,pgd100,targeted,cw,cw+,pgd40x20,pgd100x20";

/// The paper's Table 1, MNIST, white-box (source A), ε = 0.3: (our attack name, the paper's
/// row, accuracy %).
const PAPER_MNIST: &[(&str, &str, f64)] = &[
    ("natural", "Natural", 98.8),
    ("fgsm", "FGSM", 95.6),
    ("pgd40", "PGD, 40 steps, 1 restart", 93.2),
    ("pgd100", "PGD, 100 steps, 1 restart", 91.8),
    ("pgd40x20", "PGD, 40 steps, 20 restarts", 90.4),
    ("pgd100x20", "PGD, 100 steps, 20 restarts", 89.3),
    ("targeted", "Targeted, 40 steps, 1 restart", 92.7),
    ("cw", "CW, 40 steps, 1 restart", 94.0),
    ("cw+", "CW+, 40 steps, 1 restart", 93.9),
];

/// The attacks of the paper's Table 2, in `saddle eval` names (its `--data cifar10` default).
const CIFAR_ATTACKS: &str = "fgsm,pgd7,pgd20,cw30";

/// The paper's Table 2, CIFAR-10, white-box (source A), the adversarially trained wide
/// ResNet, ε = 8/255: (our attack name, the paper's row, accuracy %).
const PAPER_CIFAR: &[(&str, &str, f64)] = &[
    ("natural", "Natural", 87.3),
    ("fgsm", "FGSM", 56.1),
    ("pgd7", "PGD, 7 steps", 50.0),
    ("pgd20", "PGD, 20 steps", 45.8),
    ("cw30", "CW, 30 steps", 46.8),
];

const MNIST: Experiment = Experiment {
    name: "mnist",
    data: "mnist",
    download: crate::download::Target::Mnist,
    quick_preset: "mnist-quick",
    paper_preset: "mnist-paper",
    preset_prefix: "mnist-",
    eps: 0.3,
    passes: &[
        linf(CHEAP_ATTACKS, Images::Limit, "eval.json"),
        linf(
            ALL_MNIST_ATTACKS,
            Images::RestartLimit,
            "eval-restarts.json",
        ),
        linf("autoattack", Images::First(1000), "eval-autoattack.json"),
        l2(1.5, "eval-l2-1.5.json"),
        l2(2.0, "eval-l2-2.0.json"),
        l2(2.5, "eval-l2-2.5.json"),
    ],
    autoattack_published: Some((
        "Croce & Hein (2020), AutoAttack on MadryLab's released MNIST model",
        88.50,
    )),
    paper: PAPER_MNIST,
    title: "MNIST",
    table: "Table 1",
    intro: "Madry et al. (2018), Table 1, MNIST, white-box attacks on the adversarially trained \
            network (source A), L∞ ε = 0.3. Ours: the model trained here, evaluated with \
            `saddle eval` (step 0.01 for PGD, CW and targeted attacks; random starts from seed \
            0). Accuracy is over the first *n* test images; an attack with restarts counts an \
            image as robust only if no restart fools the model.",
    note: " The paper's targeted attack does not say which target it aims at; ours aims at the \
           least-likely class, so that row is not like for like.",
    files: "`model.safetensors` (weights, PyTorch names), `checkpoint.safetensors`, \
            `config.toml`, `metrics.jsonl` (training log), `eval.json`, `eval-restarts.json`, \
            `eval-autoattack.json` (AutoAttack, first 1,000 images), `eval-l2-*.json` (L2, \
            first 200 images)",
};

const CIFAR10: Experiment = Experiment {
    name: "cifar10",
    data: "cifar10",
    download: crate::download::Target::Cifar10,
    quick_preset: "cifar-quick",
    paper_preset: "cifar-paper",
    preset_prefix: "cifar-",
    eps: 8.0 / 255.0,
    passes: &[linf(CIFAR_ATTACKS, Images::Limit, "eval.json")],
    autoattack_published: None,
    paper: PAPER_CIFAR,
    title: "CIFAR-10",
    table: "Table 2",
    intro: "Madry et al. (2018), Table 2, CIFAR-10, white-box attacks on the adversarially \
            trained wide ResNet (source A), L∞ ε = 8/255. Ours: the model trained here (the \
            network and schedule of the recipe below), evaluated with `saddle eval --data \
            cifar10` (PGD and CW — PGD on the CW margin loss, κ = 0 — with steps of 2/255 from a \
            random start, seed 0; FGSM one step of 8/255). Accuracy is over the first *n* test \
            images.",
    note: " The paper's numbers are of its wide ResNet (`wrn-madry-34-10`) after 80,000 steps \
           of PGD-7 training; a preset with another network or schedule is not like for like.",
    files: "`model.safetensors` (weights, PyTorch names), `checkpoint.safetensors`, \
            `config.toml`, `metrics.jsonl` (training log), `eval.json`",
};

/// The experiments `repro` knows.
const EXPERIMENTS: &[&Experiment] = &[&MNIST, &CIFAR10];

fn experiment(name: &str) -> Result<&'static Experiment> {
    match EXPERIMENTS.iter().find(|e| e.name == name) {
        Some(e) => Ok(e),
        None => bail!(
            "unknown experiment '{name}': expected {}",
            EXPERIMENTS
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs the experiment.
pub fn run(args: Args) -> Result<()> {
    let exp = experiment(&args.experiment)?;
    if args.experiments {
        if exp.name != "mnist" {
            bail!(
                "--experiments: the paper's experiments run on mnist, not {}",
                exp.name
            );
        }
        return crate::experiments::run(&args);
    }
    let preset = args.preset.clone().unwrap_or_else(|| {
        if args.quick {
            exp.quick_preset.into()
        } else {
            exp.paper_preset.into()
        }
    });
    if !preset.starts_with(exp.preset_prefix) {
        bail!(
            "--preset {preset}: the {} experiment trains with a {}* preset",
            exp.name,
            exp.preset_prefix
        );
    }
    let has_restart_pass = exp.passes.iter().any(|p| p.images == Images::RestartLimit);
    if args.restart_limit.is_some() && !has_restart_pass {
        bail!(
            "--restart-limit: the {} experiment has no restart attacks; use --limit",
            exp.name
        );
    }
    let root = crate::workspace_root();
    // Paths handed to `saddle` (which runs in the repository root) are relative to the root, so
    // that the evaluation JSON committed beside the report names no machine's folders.
    let rel_out = Path::new("results").join(output_folder(exp, &preset));
    let out = root.join(&rel_out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    if args.resume && !out.join("checkpoint.safetensors").is_file() {
        bail!(
            "--resume: no checkpoint in {} to continue from; drop --resume to train from \
             the start",
            out.display()
        );
    }
    let t0 = Instant::now();

    crate::download::run(crate::download::Args {
        dataset: exp.download,
        dir: None,
    })?;

    let saddle = build_saddle(&root)?;
    let threads: Vec<String> = args
        .threads
        .map(|t| vec!["--threads".into(), t.to_string()])
        .unwrap_or_default();

    let model = rel_out.join("model.safetensors");
    let t_train = Instant::now();
    let trained = !(args.skip_training && root.join(&model).exists());
    if trained {
        let resume = args.resume.then_some("--resume");
        println!(
            "== training with preset {preset} into {}{}",
            out.display(),
            if args.resume {
                " (resuming from its checkpoint)"
            } else {
                ""
            }
        );
        run_checked(
            Command::new(&saddle)
                .current_dir(&root)
                .args(["train", "--preset", &preset, "--out"])
                .arg(&rel_out)
                .args(resume)
                .args(&threads),
            "saddle train",
        )?;
    }
    let train_secs = t_train.elapsed().as_secs_f64();

    let limit = args.limit.unwrap_or(10_000);
    let rlimit = args
        .restart_limit
        .unwrap_or(if args.quick { limit.min(1000) } else { limit });
    if limit == 0 || rlimit == 0 {
        bail!("--limit and --restart-limit must be at least 1");
    }
    let mut evals = Vec::new();
    for pass in exp.passes {
        let (attacks, file) = (pass.attacks, pass.file);
        let eps = pass.eps.unwrap_or(exp.eps);
        let n = match pass.images {
            Images::Limit => limit,
            Images::RestartLimit => rlimit,
            Images::First(k) => k.min(limit),
        };
        let json = out.join(file);
        if args.reuse_evals {
            if let Some(v) = reusable_eval(&root, &json, &model, exp, pass, n)? {
                println!("== reusing {} ({attacks} on {n} images)", json.display());
                evals.push(v);
                continue;
            }
        }
        println!(
            "== evaluating {attacks} ({} ε = {eps}) on the first {n} test images",
            pass.norm
        );
        run_checked(
            Command::new(&saddle)
                .current_dir(&root)
                .args([
                    "eval",
                    "--data",
                    exp.data,
                    "--norm",
                    pass.norm,
                    "--eps",
                    &eps.to_string(),
                    "--attacks",
                    attacks,
                    "--limit",
                    &n.to_string(),
                    "--model",
                ])
                .arg(&model)
                .arg("--out")
                .arg(rel_out.join(file))
                .args(&threads),
            "saddle eval",
        )?;
        evals.push(read_json(&json)?);
    }
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap_or_default();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    let run = RunInfo {
        preset: &preset,
        config: &config,
        metrics: &metrics,
        train_secs: trained.then_some(train_secs),
        resumed: args.resume,
        total_secs: t0.elapsed().as_secs_f64(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        machine: machine(),
        model_sha256: crate::download::verify::hash_file(&root.join(&model))?.sha256,
    };
    let report = report(exp, &run, &evals)?;
    let path = out.join("REPORT.md");
    crate::download::verify::write_text(&path, &report)?;
    println!("== wrote {}", path.display());
    Ok(())
}

/// Builds the `saddle` binary in release mode (cargo's own progress is hidden; the time is
/// said) and returns its path.
///
/// `SADDLE_BIN=/path/to/saddle` uses that binary instead (a prebuilt one, or one frozen while
/// the sources change).
pub(crate) fn build_saddle(root: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SADDLE_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("SADDLE_BIN={}: no such file", bin.display());
        }
        println!("== using saddle from SADDLE_BIN={}", bin.display());
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("== building saddle (cargo build --release -p saddle-cli; minutes on a new machine)");
    let t_build = Instant::now();
    run_checked(
        Command::new(&cargo).current_dir(root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "saddle-cli",
        ]),
        "building saddle",
    )?;
    println!("   built in {:.0} s", t_build.elapsed().as_secs_f64());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let saddle = target.join("release").join("saddle");
    Ok(saddle)
}

/// The CPU's model name (Linux's `/proc/cpuinfo`) and the instruction set the CPU kernels use.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let isa = saddle_tensor::cpu::cpu_isa()
        .map(|i| i.name())
        .unwrap_or("unknown");
    format!("{cpu}; CPU kernels: {isa}")
}

/// The output folder under `results/`: `mnist-quick` for the MNIST experiment's presets (whose
/// names already say the data set), `cifar10-cifar-quick` for CIFAR-10's.
fn output_folder(exp: &Experiment, preset: &str) -> String {
    if preset.starts_with(&format!("{}-", exp.name)) {
        preset.to_string()
    } else {
        format!("{}-{preset}", exp.name)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// An evaluation JSON that answers the same question (model file, relative to `root`, data set,
/// attacks, norm, ε, images) and is newer than the model, or `None`.
fn reusable_eval(
    root: &Path,
    json: &Path,
    model: &Path,
    exp: &Experiment,
    pass: &Pass,
    n: usize,
) -> Result<Option<serde_json::Value>> {
    let attacks = pass.attacks.replace("autoattack", saddle_cli::AUTOATTACK);
    let eps = pass.eps.unwrap_or(exp.eps);
    let (Ok(jm), Ok(mm)) = (std::fs::metadata(json), std::fs::metadata(root.join(model))) else {
        return Ok(None);
    };
    if jm.modified()? < mm.modified()? {
        return Ok(None);
    }
    let v = read_json(json)?;
    let names: Vec<&str> = v["attacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str())
        .collect();
    let same = names == attacks.split(',').collect::<Vec<_>>()
        && v["examples"].as_u64() == Some(n as u64)
        && v["model"].as_str().map(Path::new) == Some(model)
        && v["data"].as_str() == Some(exp.data)
        && v["norm"].as_str().unwrap_or("linf") == pass.norm
        && (v["epsilon"].as_f64().unwrap_or(f64::NAN) - f64::from(eps)).abs() < 1e-6;
    Ok(same.then_some(v))
}

/// What the report says about the run besides the evaluations.
#[derive(Clone)]
struct RunInfo<'a> {
    preset: &'a str,
    /// The effective training config (`config.toml`), or empty.
    config: &'a str,
    /// The training log (`metrics.jsonl`), or empty.
    metrics: &'a str,
    /// Wall time of the training done by this invocation (`None`: the model was reused).
    train_secs: Option<f64>,
    /// The training was resumed from a checkpoint: `train_secs` is the last part's.
    resumed: bool,
    total_secs: f64,
    cores: usize,
    /// The CPU and the instruction set of the CPU kernels, e.g. `AMD EPYC; kernels: avx512`.
    machine: String,
    /// SHA-256 of the evaluated model file.
    model_sha256: String,
}

/// One measured number: accuracy in %, the images it was measured on, seconds it took.
struct Measured {
    acc: f64,
    n: u64,
    secs: Option<f64>,
}

/// The binomial standard error, in points, of an accuracy of `acc` % over `n` images.
fn std_error(acc: f64, n: u64) -> f64 {
    let p = acc / 100.0;
    100.0 * (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

fn pct(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN) * 100.0
}

/// The sanity checks of each evaluation (`saddle eval`'s `sanity` list): the failed ones with
/// their evidence, or that all passed. Empty when no evaluation carries checks.
fn sanity_section(evals: &[serde_json::Value]) -> String {
    let mut s = String::new();
    for e in evals {
        let Some(checks) = e["sanity"].as_array().filter(|c| !c.is_empty()) else {
            continue;
        };
        let attacks: Vec<&str> = e["attacks"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
        let failed: Vec<&serde_json::Value> = checks
            .iter()
            .filter(|c| c["ok"].as_bool() != Some(true))
            .collect();
        if s.is_empty() {
            s.push_str("\n## Sanity checks\n\n");
        }
        if failed.is_empty() {
            s.push_str(&format!(
                "- evaluation with {}: all {} checks passed ({}).\n",
                attacks.join(", "),
                checks.len(),
                checks
                    .iter()
                    .filter_map(|c| c["check"].as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        } else {
            for c in failed {
                s.push_str(&format!(
                    "- **WARNING** (evaluation with {}): {}: {}\n",
                    attacks.join(", "),
                    c["check"].as_str().unwrap_or("?"),
                    c["evidence"].as_str().unwrap_or("")
                ));
            }
        }
    }
    s
}

/// The AutoAttack evaluations (cascades): accuracy after each stage, beside a published number
/// for the paper's own model. Empty without one.
fn autoattack_section<'a>(
    exp: &Experiment,
    evals: impl Iterator<Item = &'a serde_json::Value>,
) -> String {
    let mut s = String::new();
    for e in evals {
        let n = e["examples"].as_u64().unwrap_or(0);
        s.push_str(&format!(
            "\n## AutoAttack (standard version)\n\nEach stage runs only on the images every \
             earlier stage left correct (`saddle eval --attacks autoattack`); the accuracy after \
             the last is AutoAttack's number. First {n} test images, L∞ ε = {}.\n\n\
             | stage | accuracy after it | ± s.e. | time |\n|---|---:|---:|---:|\n",
            e["epsilon"]
                .as_f64()
                .map_or("?".into(), |v| format!("{v:.4}")
                    .trim_end_matches('0')
                    .to_string())
        ));
        let nat = pct(&e["natural_accuracy"]);
        s.push_str(&format!(
            "| natural | {nat:.2}% | {:.2} | |\n",
            std_error(nat, n)
        ));
        for a in e["attacks"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let acc = pct(&a["accuracy"]);
            s.push_str(&format!(
                "| {} | {acc:.2}% | {:.2} | {:.1} min |\n",
                a["description"]
                    .as_str()
                    .or(a["name"].as_str())
                    .unwrap_or("?"),
                std_error(acc, n),
                a["seconds"].as_f64().unwrap_or(f64::NAN) / 60.0
            ));
        }
        if let Some((who, acc)) = exp.autoattack_published {
            s.push_str(&format!(
                "\nPublished: {acc:.2}% ({who}; all 10,000 test images). The paper's own PGD \
                 numbers are in the table above.\n"
            ));
        }
    }
    s
}

/// The L2 evaluations: per radius, accuracy under PGD (gradient-based) and HopSkipJump
/// (decision-based). Empty without one.
fn l2_section<'a>(evals: impl Iterator<Item = &'a serde_json::Value>) -> String {
    let mut rows: Vec<(f64, String)> = Vec::new();
    for e in evals {
        let n = e["examples"].as_u64().unwrap_or(0);
        let eps = e["epsilon"].as_f64().unwrap_or(f64::NAN);
        let cell = |name: &str| {
            e["attacks"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["name"] == name))
                .map_or("not run".to_string(), |x| {
                    let acc = pct(&x["accuracy"]);
                    format!("{acc:.1}% ± {:.1}", std_error(acc, n))
                })
        };
        let hsj = e["attacks"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|x| x["name"].as_str().is_some_and(|n| n.starts_with("hsj")))
            })
            .and_then(|x| x["name"].as_str())
            .unwrap_or("hsj");
        rows.push((
            eps,
            format!(
                "| {eps:.1} | {:.1}% | {} | {} | {:.1}% | {n} |\n",
                pct(&e["natural_accuracy"]),
                cell("pgd100"),
                cell(hsj),
                pct(&e["worst_case_accuracy"]),
            ),
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut s = String::from(
        "\n## The L2 finding\n\nThe paper (§5 and its appendix) notes that its L∞-trained MNIST \
         network looks robust to gradient-based L2 attacks but not to decision-based ones, \
         which need no gradient and so are not misled by the thresholding first layer. The same \
         model under PGD-100 in the L2 ball (step ε/10, random start) and HopSkipJump (the \
         predicted label only, 10,000 queries per image):\n\n\
         | L2 ε | natural | PGD-100 (L2) | HopSkipJump | worst case | images |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for (_, r) in rows {
        s.push_str(&r);
    }
    s
}

fn report(exp: &Experiment, run: &RunInfo, evals: &[serde_json::Value]) -> Result<String> {
    // For each key, the measurement on the most images (the cheap pass beats the restart pass).
    let mut ours: Vec<(String, Measured)> = Vec::new();
    let mut put = |key: &str, m: Measured| match ours.iter_mut().find(|(k, _)| k == key) {
        Some((_, old)) if old.n >= m.n => {}
        Some((_, old)) => *old = m,
        None => ours.push((key.to_string(), m)),
    };
    let mut worst: Option<(f64, u64, usize)> = None;
    let is_l2 = |e: &serde_json::Value| e["norm"].as_str() == Some("l2");
    let is_cascade = |e: &serde_json::Value| e["cascade"].as_bool() == Some(true);
    for e in evals.iter().filter(|e| !is_l2(e) && !is_cascade(e)) {
        let n = e["examples"].as_u64().unwrap_or(0);
        put(
            "natural",
            Measured {
                acc: pct(&e["natural_accuracy"]),
                n,
                secs: None,
            },
        );
        let attacks = e["attacks"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for a in attacks {
            put(
                a["name"].as_str().unwrap_or("?"),
                Measured {
                    acc: pct(&a["accuracy"]),
                    n,
                    secs: a["seconds"].as_f64(),
                },
            );
        }
        if worst.is_none_or(|(_, _, k)| attacks.len() > k) {
            worst = Some((pct(&e["worst_case_accuracy"]), n, attacks.len()));
        }
    }
    let mut s = String::new();
    s.push_str(&format!(
        "# {}, preset `{}`: saddle beside the paper's {}\n\n{}\n\n",
        exp.title, run.preset, exp.table, exp.intro
    ));
    s.push_str(
        "| attack | paper | saddle | ± s.e. | saddle − paper | test images | eval time |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (key, row, paper) in exp.paper {
        match ours.iter().find(|(k, _)| k == key) {
            Some((_, m)) => s.push_str(&format!(
                "| {row} | {paper:.1}% | {:.2}% | {:.2} | {:+.2} | {} | {} |\n",
                m.acc,
                std_error(m.acc, m.n),
                m.acc - paper,
                m.n,
                m.secs
                    .map(|t| format!("{:.1} min", t / 60.0))
                    .unwrap_or_else(|| "-".into())
            )),
            None => s.push_str(&format!("| {row} | {paper:.1}% | not run | | | | |\n")),
        }
    }
    if let Some((acc, n, k)) = worst {
        s.push_str(&format!(
            "| Worst case per image over the {k} attacks above | – | {acc:.2}% | {:.2} | | {n} | |\n",
            std_error(acc, n)
        ));
    }
    s.push_str(&format!(
        "\n± s.e.: the binomial standard error of the accuracy over that many images, in points \
         (a 95% interval is about twice it).{}\n",
        exp.note
    ));

    s.push_str(&autoattack_section(
        exp,
        evals.iter().filter(|e| is_cascade(e)),
    ));
    s.push_str(&l2_section(evals.iter().filter(|e| is_l2(e))));
    s.push_str(&sanity_section(evals));
    s.push_str("\n## Training\n\n");
    let lines: Vec<serde_json::Value> = run
        .metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    // Step lines have a loss; robustness-check lines (`--robust-check`) a check accuracy.
    let last = lines.iter().rev().find(|m| m.get("loss").is_some());
    let checks: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|m| m.get("check_pgd_accuracy").is_some())
        .collect();
    // The training time is the log's last time: a robustness check after the last step line
    // (the final one) belongs to it.
    let logged = lines
        .iter()
        .filter_map(|m| m.get("elapsed_sec")?.as_f64())
        .fold(f64::NAN, f64::max);
    let checked = if checks.iter().any(|c| c.get("elapsed_sec").is_some()) {
        ", robustness checks included"
    } else {
        ""
    };
    match (&last, run.train_secs) {
        (Some(m), t) => {
            s.push_str(&format!(
                "{} steps in {:.1} min of training{checked} ({}); {:.0} examples/s at the end; \
                 last logged batch: loss {:.3}, natural accuracy {:.0}%, adversarial accuracy \
                 {:.0}% (training attack).\n",
                m["step"].as_u64().unwrap_or(0),
                logged / 60.0,
                match t {
                    Some(t) if run.resumed => format!(
                        "resumed from a checkpoint: the last part took {:.1} min wall time \
                         including start-up; the time before is the log's",
                        t / 60.0
                    ),
                    Some(t) => format!("{:.1} min wall time including start-up", t / 60.0),
                    None => "model reused from an earlier run".into(),
                },
                m["examples_per_sec"].as_f64().unwrap_or(f64::NAN),
                m["loss"].as_f64().unwrap_or(f64::NAN),
                pct(&m["nat_accuracy"]),
                pct(&m["adv_accuracy"]),
            ));
        }
        (None, _) => s.push_str("No training log (`metrics.jsonl`) in the output folder.\n"),
    }
    let rc = toml::from_str::<saddle_train::TrainConfig>(run.config)
        .ok()
        .and_then(|c| c.robust_check);
    s.push_str(&checks_summary(&checks, rc.as_ref()));
    if !run.config.trim().is_empty() {
        s.push_str(&format!(
            "\nThe recipe (`config.toml`; `saddle train --config` takes it back):\n\n```toml\n{}\n```\n",
            run.config.trim_end()
        ));
    }
    s.push_str(&format!(
        "\nThis invocation took {:.1} min on this machine ({} logical cores, {}); evaluations it \
         reused are not in that time. The model evaluated: SHA-256 `{}`.\n",
        run.total_secs / 60.0,
        run.cores,
        run.machine,
        run.model_sha256
    ));
    s.push_str(&format!("\nFiles: {}.\n", exp.files));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(n: u64, nat: f64, worst: f64, attacks: &[(&str, f64)]) -> serde_json::Value {
        serde_json::json!({
            "examples": n,
            "natural_accuracy": nat,
            "worst_case_accuracy": worst,
            "attacks": attacks.iter().map(|(k, a)| serde_json::json!({
                "name": k, "accuracy": a, "seconds": 60.0
            })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn the_report_carries_the_failed_sanity_checks_with_their_evidence() {
        let ok = serde_json::json!({"attacks": [{"name": "pgd20"}], "sanity": [
            {"check": "deterministic model", "ok": true, "evidence": "same"},
        ]});
        let bad = serde_json::json!({"attacks": [{"name": "square"}], "sanity": [
            {"check": "deterministic model", "ok": true, "evidence": "same"},
            {"check": "nothing is robust at ε = 1", "ok": false, "evidence": "3 of 9 correct"},
        ]});
        let s = sanity_section(&[ok, bad]);
        assert!(
            s.contains("evaluation with pgd20: all 1 checks passed"),
            "{s}"
        );
        assert!(
            s.contains("**WARNING** (evaluation with square): nothing is robust at ε = 1: 3 of 9"),
            "{s}"
        );
        assert!(!s.contains("square): deterministic"), "{s}");
        assert_eq!(sanity_section(&[serde_json::json!({"attacks": []})]), "");
    }

    #[test]
    fn report_puts_each_attack_beside_the_paper_and_prefers_the_larger_sample() {
        let evals = [
            eval(10_000, 0.985, 0.90, &[("fgsm", 0.95), ("pgd40", 0.92)]),
            eval(
                1000,
                0.99,
                0.88,
                &[("fgsm", 0.97), ("pgd40", 0.93), ("pgd100x20", 0.885)],
            ),
        ];
        let run = RunInfo {
            preset: "mnist-quick",
            config: "k = 10",
            metrics: "{\"step\":7800,\"elapsed_sec\":3300.0,\"examples_per_sec\":230.0,\
                      \"loss\":0.3,\"nat_accuracy\":0.99,\"adv_accuracy\":0.9}\n",
            train_secs: Some(3310.0),
            resumed: false,
            total_secs: 6000.0,
            cores: 2,
            machine: "test CPU; CPU kernels: avx2".into(),
            model_sha256: "00".into(),
        };
        let r = report(&MNIST, &run, &evals).unwrap();
        // Natural and FGSM come from the 10,000-image pass, not the 1,000-image one; the
        // s.e. of 98.5% over 10,000 images is 100·√(0.985·0.015/10⁴) = 0.12 points.
        assert!(
            r.contains("| Natural | 98.8% | 98.50% | 0.12 | -0.30 | 10000 |"),
            "{r}"
        );
        assert!(
            r.contains("| FGSM | 95.6% | 95.00% | 0.22 | -0.60 | 10000 | 1.0 min |"),
            "{r}"
        );
        assert!(
            r.contains("| PGD, 100 steps, 20 restarts | 89.3% | 88.50% | 1.01 | -0.80 | 1000 |"),
            "{r}"
        );
        assert!(
            r.contains("| CW, 40 steps, 1 restart | 94.0% | not run |"),
            "{r}"
        );
        // The worst case comes from the pass with the most attacks.
        assert!(
            r.contains("over the 3 attacks above | – | 88.00% | 1.03 | | 1000 |"),
            "{r}"
        );
        assert!(r.contains("7800 steps in 55.0 min"), "{r}");
        assert!(r.contains("```toml\nk = 10\n```"), "{r}");
    }

    #[test]
    fn autoattack_and_l2_passes_get_their_own_sections_and_stay_out_of_table_1() {
        let mut aa = eval(
            1000,
            0.99,
            0.895,
            &[
                ("apgd-ce", 0.91),
                ("apgd-t", 0.90),
                ("fab-t", 0.90),
                ("square", 0.895),
            ],
        );
        aa["cascade"] = true.into();
        aa["epsilon"] = 0.3.into();
        let l2 = |eps: f64, pgd: f64, hsj: f64| {
            let mut e = eval(200, 0.99, hsj.min(pgd), &[("pgd100", pgd), ("hsj", hsj)]);
            e["norm"] = "l2".into();
            e["epsilon"] = eps.into();
            e
        };
        let evals = [
            eval(10_000, 0.985, 0.92, &[("fgsm", 0.95), ("pgd100", 0.92)]),
            l2(2.5, 0.70, 0.10),
            l2(1.5, 0.90, 0.45),
            aa,
        ];
        let run = RunInfo {
            preset: "mnist-quick",
            config: "",
            metrics: "",
            train_secs: None,
            resumed: false,
            total_secs: 60.0,
            cores: 2,
            machine: "test CPU; CPU kernels: avx2".into(),
            model_sha256: "00".into(),
        };
        let r = report(&MNIST, &run, &evals).unwrap();
        // Table 1's PGD-100 row is the L∞ pass's, and its worst case ignores the other passes.
        assert!(
            r.contains("| PGD, 100 steps, 1 restart | 91.8% | 92.00% |"),
            "{r}"
        );
        assert!(r.contains("over the 2 attacks above | – | 92.00%"), "{r}");
        // AutoAttack: each stage on 1,000 images (s.e. of 89.5%: 0.97), beside 88.50%.
        assert!(r.contains("## AutoAttack (standard version)"), "{r}");
        assert!(r.contains("L∞ ε = 0.3."), "{r}");
        assert!(r.contains("| square | 89.50% | 0.97 | 1.0 min |"), "{r}");
        assert!(r.contains("Published: 88.50%"), "{r}");
        // The L2 finding, sorted by radius (s.e. of 45% over 200 images: 3.5 points).
        let i15 = r.find("| 1.5 | 99.0% | 90.0% ± 2.1 | 45.0% ± 3.5 | 45.0% | 200 |");
        let i25 = r.find("| 2.5 | 99.0% | 70.0% ± 3.2 | 10.0% ± 2.1 | 10.0% | 200 |");
        assert!(i15.is_some() && i25.is_some() && i15 < i25, "{r}");
        // CIFAR-10 has no published AutoAttack line.
        assert!(!autoattack_section(&CIFAR10, std::iter::once(&evals[3])).contains("Published"));
    }

    #[test]
    fn the_training_section_summarises_the_robustness_checks() {
        // Checks take 0.03 s a step of the log's time past the step line's 0.6 s.
        let check = |step: u64, pgd: f64, best: (u64, f64), collapsed: bool| {
            format!(
                "{{\"step\":{step},\"check_examples\":512,\"check_natural_accuracy\":0.5,\
                 \"check_pgd_accuracy\":{pgd},\"check_best_step\":{},\
                 \"check_best_pgd_accuracy\":{},\"check_collapsed\":{collapsed},\
                 \"elapsed_sec\":{}}}\n",
                best.0,
                best.1,
                step as f64 * 0.63
            )
        };
        let step = "{\"step\":1000,\"elapsed_sec\":600.0,\"examples_per_sec\":128.0,\
                    \"loss\":1.5,\"nat_accuracy\":0.5,\"adv_accuracy\":0.4}\n";
        let evals = [eval(100, 0.5, 0.3, &[("pgd20", 0.3)])];
        let metrics = format!(
            "{}{step}{}",
            check(500, 0.30, (500, 0.30), false),
            check(1000, 0.05, (500, 0.30), true)
        );
        let run = RunInfo {
            preset: "cifar-quick",
            config: "",
            metrics: &metrics,
            train_secs: Some(700.0),
            resumed: false,
            total_secs: 800.0,
            cores: 2,
            machine: "test CPU".into(),
            model_sha256: "00".into(),
        };
        let r = report(&CIFAR10, &run, &evals).unwrap();
        // The last step line, not the last line (a check), gives the summary's numbers; the
        // time is the log's last, the final check's.
        assert!(
            r.contains("1000 steps in 10.5 min of training, robustness checks included")
                && r.contains("loss 1.500"),
            "{r}"
        );
        assert!(
            r.contains(
                "PGD on 512 check images, in `metrics.jsonl`): 2, the best 30.0% at step 500, \
                 the last 5.0% at step 1000. **Training stopped there**"
            ) && r.contains("the best check's, of step 500."),
            "{r}"
        );
        // The rule, when the config says what the thresholds were: a fall of 25 points is
        // more than 20, not more than 30 (then the ratio rule fired: 5% < 0.25 × 50%).
        let with = |config| {
            report(
                &CIFAR10,
                &RunInfo {
                    config,
                    ..run.clone()
                },
                &evals,
            )
            .unwrap()
        };
        let r = with("[robust_check]\nmax_drop = 0.2\n");
        assert!(
            r.contains("(a fall of more than 20 points below the best check)"),
            "{r}"
        );
        let r = with("[robust_check]\nmax_drop = 0.3\n");
        assert!(
            r.contains("(PGD accuracy below 0.25 of its natural accuracy (50.0%))"),
            "{r}"
        );
        // A run that went to its end: the last step's weights, unless the config keeps the
        // best check's.
        let to_end = format!(
            "{}{step}{}",
            check(500, 0.30, (500, 0.30), false),
            check(1000, 0.25, (500, 0.30), false)
        );
        let last = RunInfo {
            metrics: &to_end,
            ..run
        };
        let r = report(&CIFAR10, &last, &evals).unwrap();
        assert!(
            r.contains("the last 25.0% at step 1000.") && !r.contains("Training stopped"),
            "{r}"
        );
        // The config (empty here) has no check: nothing said of the weights.
        assert!(!r.contains("The model evaluated is"), "{r}");
        let r = report(
            &CIFAR10,
            &RunInfo {
                config: "[robust_check]\n",
                ..last.clone()
            },
            &evals,
        )
        .unwrap();
        assert!(r.contains("The model evaluated is the last step's."), "{r}");
        let best = RunInfo {
            config: "[robust_check]\nkeep = \"best\"\n",
            ..last
        };
        let r = report(&CIFAR10, &best, &evals).unwrap();
        assert!(
            r.contains("The model evaluated is the best check's (`keep = \"best\"`), of step 500."),
            "{r}"
        );
        // Without checks, no such sentence.
        let quiet = RunInfo {
            metrics: step,
            ..best
        };
        let r = report(&CIFAR10, &quiet, &evals).unwrap();
        assert!(!r.contains("Robustness checks"), "{r}");
    }

    #[test]
    fn cifar_report_puts_each_table_2_attack_beside_the_paper() {
        let evals = [eval(
            200,
            0.40,
            0.20,
            &[
                ("fgsm", 0.30),
                ("pgd7", 0.25),
                ("pgd20", 0.22),
                ("cw30", 0.215),
            ],
        )];
        let run = RunInfo {
            preset: "cifar-smoke",
            config: "dataset = \"cifar10\"\narch = \"wrn-10-1\"",
            metrics: "{\"step\":200,\"elapsed_sec\":300.0,\"examples_per_sec\":42.0,\
                      \"loss\":2.1,\"nat_accuracy\":0.3,\"adv_accuracy\":0.2}\n",
            train_secs: Some(320.0),
            resumed: false,
            total_secs: 600.0,
            cores: 2,
            machine: "test CPU; CPU kernels: avx2".into(),
            model_sha256: "00".into(),
        };
        let r = report(&CIFAR10, &run, &evals).unwrap();
        assert!(
            r.starts_with("# CIFAR-10, preset `cifar-smoke`: saddle beside the paper's Table 2\n"),
            "{r}"
        );
        assert!(
            r.contains("Table 2, CIFAR-10") && r.contains("ε = 8/255"),
            "{r}"
        );
        // Each of Table 2's rows beside its paper number; the s.e. of 40% over 200 images is
        // 100·√(0.4·0.6/200) = 3.46 points, of 21.5% is 2.90.
        for row in [
            "| Natural | 87.3% | 40.00% | 3.46 | -47.30 | 200 | - |",
            "| FGSM | 56.1% | 30.00% | 3.24 | -26.10 | 200 | 1.0 min |",
            "| PGD, 7 steps | 50.0% | 25.00% | 3.06 | -25.00 | 200 | 1.0 min |",
            "| PGD, 20 steps | 45.8% | 22.00% | 2.93 | -23.80 | 200 | 1.0 min |",
            "| CW, 30 steps | 46.8% | 21.50% | 2.90 | -25.30 | 200 | 1.0 min |",
            "| Worst case per image over the 4 attacks above | – | 20.00% | 2.83 | | 200 | |",
        ] {
            assert!(r.contains(row), "missing {row}:\n{r}");
        }
        // No MNIST rows or notes.
        assert!(
            !r.contains("restart") && !r.contains("Table 1") && !r.contains("targeted"),
            "{r}"
        );
        assert!(r.contains("200 steps in 5.0 min of training"), "{r}");
        assert!(r.contains("5.3 min wall time including start-up"), "{r}");
        let resumed = report(
            &CIFAR10,
            &RunInfo {
                resumed: true,
                ..run.clone()
            },
            &evals,
        )
        .unwrap();
        assert!(
            resumed.contains(
                "200 steps in 5.0 min of training (resumed from a checkpoint: \
                              the last part took 5.3 min"
            ),
            "{resumed}"
        );
        assert!(r.contains("42 examples/s"), "{r}");
        assert!(
            r.contains("```toml\ndataset = \"cifar10\"\narch = \"wrn-10-1\"\n```"),
            "{r}"
        );
        assert!(
            r.contains("`eval.json`.") && !r.contains("eval-restarts"),
            "{r}"
        );
    }

    #[test]
    fn experiments_their_output_folders_and_evaluation_radii() {
        assert_eq!(output_folder(&MNIST, "mnist-quick"), "mnist-quick");
        assert_eq!(
            output_folder(&CIFAR10, "cifar-smoke"),
            "cifar10-cifar-smoke"
        );
        assert_eq!(experiment("cifar10").unwrap().data, "cifar10");
        let e = experiment("imagenet").unwrap_err().to_string();
        assert!(e.contains("mnist or cifar10"), "{e}");
        // The radius handed to `saddle eval` reads back as the same f32.
        assert_eq!(CIFAR10.eps.to_string().parse::<f32>().unwrap(), 8.0 / 255.0);
        assert_eq!(MNIST.eps.to_string(), "0.3");
        assert_eq!(
            ALL_MNIST_ATTACKS,
            format!("{CHEAP_ATTACKS},pgd40x20,pgd100x20")
        );
    }
}
