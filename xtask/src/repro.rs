//! `cargo xtask repro mnist [--quick]`: the paper's MNIST experiment end to end — download
//! MNIST if needed, train with a preset, evaluate with the paper's white-box attacks, and write
//! `results/mnist-<preset>/REPORT.md` with the paper's Table 1 column beside ours (plus the
//! evaluation JSON, the training log and the model).
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
    /// The experiment (only `mnist` so far).
    pub experiment: String,
    /// Train with the `mnist-quick` preset (≤ 60 min on 2 cores) instead of `mnist-paper`.
    #[arg(long)]
    pub quick: bool,
    /// Train with this preset instead (overrides --quick), e.g. mnist-smoke for a check.
    #[arg(long)]
    pub preset: Option<String>,
    /// Evaluate the cheap attacks on the first N test images (default: all 10,000).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate the 20-restart attacks on the first N test images (default: as --limit, or
    /// 1,000 with --quick: PGD-100 with 20 restarts costs 2,000 gradient passes per image).
    #[arg(long)]
    pub restart_limit: Option<usize>,
    /// Reuse a trained model in the output folder instead of training again.
    #[arg(long)]
    pub skip_training: bool,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
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
    if args.experiment != "mnist" {
        bail!(
            "unknown experiment '{}': only `mnist` is available",
            args.experiment
        );
    }
    let preset = args.preset.clone().unwrap_or_else(|| {
        if args.quick {
            "mnist-quick".into()
        } else {
            "mnist-paper".into()
        }
    });
    let root = root();
    let out = root.join("results").join(&preset);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let t0 = Instant::now();

    crate::download::run(crate::download::Args {
        dataset: crate::download::Target::Mnist,
        dir: None,
    })?;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_checked(
        Command::new(&cargo).current_dir(&root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "saddle-cli",
        ]),
        "building saddle",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let saddle = target.join("release").join("saddle");
    let threads: Vec<String> = args
        .threads
        .map(|t| vec!["--threads".into(), t.to_string()])
        .unwrap_or_default();

    let model = out.join("model.safetensors");
    let t_train = Instant::now();
    if !(args.skip_training && model.exists()) {
        println!("== training with preset {preset} into {}", out.display());
        run_checked(
            Command::new(&saddle)
                .current_dir(&root)
                .args(["train", "--preset", &preset, "--out"])
                .arg(&out)
                .args(&threads),
            "saddle train",
        )?;
    }
    let train_secs = t_train.elapsed().as_secs_f64();

    let limit = args.limit.unwrap_or(10_000);
    let rlimit = args
        .restart_limit
        .unwrap_or(if args.quick { limit.min(1000) } else { limit });
    let mut evals = Vec::new();
    for (attacks, n, file) in [
        ("fgsm,pgd40,pgd100,targeted,cw,cw+", limit, "eval.json"),
        ("pgd40x20,pgd100x20", rlimit, "eval-restarts.json"),
    ] {
        println!("== evaluating {attacks} on the first {n} test images");
        let json = out.join(file);
        run_checked(
            Command::new(&saddle)
                .current_dir(&root)
                .args([
                    "eval",
                    "--data",
                    "mnist",
                    "--eps",
                    "0.3",
                    "--attacks",
                    attacks,
                    "--limit",
                    &n.to_string(),
                    "--model",
                ])
                .arg(&model)
                .arg("--out")
                .arg(&json)
                .args(&threads),
            "saddle eval",
        )?;
        let text = std::fs::read_to_string(&json)?;
        evals.push(serde_json::from_str::<serde_json::Value>(&text)?);
    }
    let report = report(&preset, &evals, train_secs, t0.elapsed().as_secs_f64())?;
    let path = out.join("REPORT.md");
    std::fs::write(&path, report).with_context(|| format!("cannot write {}", path.display()))?;
    println!("== wrote {}", path.display());
    Ok(())
}

fn report(
    preset: &str,
    evals: &[serde_json::Value],
    train_secs: f64,
    total_secs: f64,
) -> Result<String> {
    let mut ours: Vec<(String, f64, u64)> = Vec::new();
    for e in evals {
        let n = e["examples"].as_u64().unwrap_or(0);
        if ours.iter().all(|(k, _, _)| k != "natural") {
            ours.push((
                "natural".into(),
                e["natural_accuracy"].as_f64().unwrap_or(f64::NAN) * 100.0,
                n,
            ));
        }
        for a in e["attacks"].as_array().into_iter().flatten() {
            ours.push((
                a["name"].as_str().unwrap_or("?").to_string(),
                a["accuracy"].as_f64().unwrap_or(f64::NAN) * 100.0,
                n,
            ));
        }
    }
    let mut s = String::new();
    s.push_str(&format!(
        "# MNIST, preset `{preset}`: saddle beside the paper's Table 1\n\n"
    ));
    s.push_str(
        "Madry et al. (2018), Table 1, MNIST, white-box attacks on the adversarially trained \
                network (source A), L∞ ε = 0.3. Ours: the model trained here, evaluated with \
                `saddle eval` (random starts from seed 0).\n\n",
    );
    s.push_str("| attack | paper | saddle | test images |\n|---|---:|---:|---:|\n");
    for (key, row, paper) in PAPER_MNIST {
        let (acc, n) = ours
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, a, n)| (format!("{a:.2}%"), n.to_string()))
            .unwrap_or_else(|| ("not run".into(), "-".into()));
        s.push_str(&format!("| {row} | {paper:.1}% | {acc} | {n} |\n"));
    }
    s.push_str(&format!(
        "\nTraining took {:.1} min; the whole run {:.1} min, on this machine ({} logical cores).\n",
        train_secs / 60.0,
        total_secs / 60.0,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    ));
    s.push_str("\nFiles: `model.safetensors` (weights, PyTorch names), `checkpoint.safetensors`, \
                `config.toml`, `metrics.jsonl` (training log), `eval.json`, `eval-restarts.json`.\n");
    Ok(s)
}
