//! `cargo xtask repro mnist --experiments`: the paper's MNIST findings end to end — capacity
//! (Figure 4) with the transferability between independent copies across capacity, the
//! black-box transfer columns of Table 1 (an independent copy A′ and a naturally trained
//! network as sources), the loss landscape (Figures 1 and 2) and the robust model's filters
//! (Appendix C) — and `results/mnist-experiments/REPORT.md` with each claim of the paper beside
//! what the numbers show.
//!
//! It drives the `saddle` binary, as `repro` does, and every model it trains is reused when it
//! is there: the `mnist-quick` model A (`results/mnist-quick`, as `repro mnist --quick` leaves
//! it), its copy A′ and the capacity sweep's models (`runs/mnist-experiments`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::repro::{build_saddle, machine, read_json, run_checked, Args};

/// The budgets of the experiments (chosen to fit ≤ 3 hours on a 2-core machine with AVX2).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Budget {
    /// Width scales of the capacity sweep.
    pub scales: &'static str,
    /// Training steps of each capacity model (the mnist-quick recipe stretched).
    pub capacity_steps: u64,
    /// Test images of the capacity evaluation.
    pub capacity_limit: usize,
    /// Test images of the transfer matrices.
    pub transfer_limit: usize,
    /// Images, random starts and PGD steps of the landscape.
    pub landscape: (usize, usize, usize),
}

/// The budgets `--experiments` runs with.
pub const BUDGET: Budget = Budget {
    scales: "1,2,4,8,16",
    capacity_steps: 300,
    capacity_limit: 500,
    transfer_limit: 1000,
    landscape: (5, 1000, 100),
};

/// The seed of the independent copy A′ (mnist-quick's seed is 4557077).
pub const COPY_SEED: u64 = 4_557_078;

/// Where the models live, relative to the repository root.
const RUNS: &str = "runs/mnist-experiments";
/// Where the report goes, relative to the repository root.
const RESULTS: &str = "results/mnist-experiments";

/// One step of the run: what it ran and how long it took.
#[derive(Debug, serde::Serialize)]
struct Part {
    name: String,
    command: String,
    seconds: f64,
    /// The model was already there.
    reused: bool,
    /// What the part costs on a fresh run: its time here plus the recorded training time of
    /// what it reused.
    fresh_seconds: f64,
}

struct Runner {
    root: PathBuf,
    saddle: PathBuf,
    threads: Vec<String>,
    parts: Vec<Part>,
    /// `--reuse-evals`: the parts of the previous run (its `experiments.json`), reused where
    /// the command is the same and its output is still there.
    previous: Vec<Value>,
}

impl Runner {
    /// Runs `saddle ARGS` in the repository root and records it as the part `name`.
    fn saddle(&mut self, name: &str, args: &[String]) -> Result<()> {
        self.saddle_to(name, args, None)
    }

    /// As [`Runner::saddle`]; with `--reuse-evals`, a part whose command is the previous run's
    /// and whose `output` is still there is not run again (its recorded times carry over).
    fn saddle_to(&mut self, name: &str, args: &[String], output: Option<&str>) -> Result<()> {
        let mut all = args.to_vec();
        all.extend(self.threads.iter().cloned());
        let shown = format!("saddle {}", all.join(" "));
        let before = self
            .previous
            .iter()
            .find(|p| p["command"] == shown.as_str());
        if let (Some(p), Some(out)) = (before, output) {
            if self.root.join(out).is_file() {
                println!("== {name}: reusing {out} (--reuse-evals)");
                self.parts.push(Part {
                    name: name.into(),
                    command: shown,
                    seconds: 0.0,
                    reused: true,
                    fresh_seconds: f(&p["fresh_seconds"]),
                });
                return Ok(());
            }
        }
        println!("== {name}: {shown}");
        let t0 = Instant::now();
        run_checked(
            Command::new(&self.saddle)
                .current_dir(&self.root)
                .args(&all),
            &format!("saddle {}", args[0]),
        )?;
        self.parts.push(Part {
            name: name.into(),
            command: shown,
            seconds: t0.elapsed().as_secs_f64(),
            reused: false,
            fresh_seconds: t0.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Trains `preset` (with `seed`) into `dir` unless its model is there; resumes a stopped run.
    fn train(&mut self, name: &str, dir: &str, seed: Option<u64>) -> Result<()> {
        let model = Path::new(dir).join("model.safetensors");
        if self.root.join(&model).is_file() {
            println!("== {name}: reusing {}", model.display());
            self.parts.push(Part {
                name: name.into(),
                command: format!("(reused {})", model.display()),
                seconds: 0.0,
                reused: true,
                fresh_seconds: training_seconds(&self.root.join(dir).join("metrics.jsonl")),
            });
            return Ok(());
        }
        let mut args: Vec<String> = ["train", "--preset", "mnist-quick", "--out", dir]
            .map(String::from)
            .to_vec();
        if let Some(s) = seed {
            args.extend(["--seed".into(), s.to_string()]);
        }
        if self.root.join(dir).join("checkpoint.safetensors").is_file() {
            args.push("--resume".into());
        }
        self.saddle(name, &args)?;
        // A resumed run's time is that of all its sessions.
        let recorded = training_seconds(&self.root.join(dir).join("metrics.jsonl"));
        if let Some(p) = self.parts.last_mut() {
            p.fresh_seconds = recorded.max(p.seconds);
        }
        Ok(())
    }
}

/// The training time a `saddle train` log records (its last `elapsed_sec`), 0 if none.
fn training_seconds(metrics: &Path) -> f64 {
    std::fs::read_to_string(metrics)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
                .and_then(|v| v["elapsed_sec"].as_f64())
        })
        .unwrap_or(0.0)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs the experiments and writes the report.
pub fn run(args: &Args) -> Result<()> {
    if args.quick || args.preset.is_some() || args.limit.is_some() || args.skip_training {
        bail!(
            "--experiments runs with its own budgets (stated in its report); drop --quick, \
             --preset, --limit and --skip-training"
        );
    }
    let root = crate::workspace_root();
    let t0 = Instant::now();
    crate::download::run(crate::download::Args {
        dataset: crate::download::Target::Mnist,
        dir: None,
    })?;
    let saddle = build_saddle(&root)?;
    let mut r = Runner {
        root: root.clone(),
        saddle,
        threads: args
            .threads
            .map(|t| vec!["--threads".into(), t.to_string()])
            .unwrap_or_default(),
        parts: Vec::new(),
        previous: if args.reuse_evals {
            read_json(&root.join(RESULTS).join("experiments.json"))
                .ok()
                .and_then(|v| v["parts"].as_array().cloned())
                .unwrap_or_default()
        } else {
            Vec::new()
        },
    };
    let b = &BUDGET;
    let a = "results/mnist-quick/model.safetensors";
    let a_prime = format!("{RUNS}/a-prime/model.safetensors");
    let cap = format!("{RUNS}/capacity");
    let model = |key: &str| format!("{cap}/models/{key}/model.safetensors");
    let (natural, pgd16) = (model("natural-s16"), model("pgd-s16"));

    r.train("A: mnist-quick", "results/mnist-quick", None)?;
    r.train(
        "A': mnist-quick from another seed",
        &format!("{RUNS}/a-prime"),
        Some(COPY_SEED),
    )?;
    r.saddle(
        "capacity sweep with independent copies",
        &strings(&[
            "capacity",
            "--data",
            "mnist",
            "--scales",
            b.scales,
            "--training",
            "natural,fgsm,pgd",
            "--steps",
            &b.capacity_steps.to_string(),
            "--limit",
            &b.capacity_limit.to_string(),
            "--copies",
            "--out",
            &cap,
        ]),
    )?;
    // The sweep's reused models cost their recorded training time on a fresh run.
    let sweep = read_json(&root.join(&cap).join("capacity.json"))?;
    let reused: f64 = sweep["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["reused"] == true)
        .map(|row| f(&row["train_seconds"]))
        .sum();
    if let Some(p) = r.parts.last_mut() {
        p.fresh_seconds += reused;
    }
    for attack in ["pgd", "fgsm"] {
        let out = format!("{RUNS}/transfer-{attack}");
        r.saddle_to(
            &format!("transfer ({attack})"),
            &strings(&[
                "transfer",
                "--sources",
                &format!("{a_prime},{natural},{pgd16}"),
                "--target",
                a,
                "--attack",
                attack,
                "--limit",
                &b.transfer_limit.to_string(),
                "--out",
                &out,
            ]),
            Some(&format!("{out}/transfer.json")),
        )?;
    }
    let (images, restarts, steps) = b.landscape;
    r.saddle_to(
        "loss landscape",
        &strings(&[
            "landscape",
            "--model",
            &natural,
            "--model",
            a,
            "--data",
            "mnist",
            "--images",
            &images.to_string(),
            "--restarts",
            &restarts.to_string(),
            "--steps",
            &steps.to_string(),
            "--out",
            &format!("{RUNS}/landscape"),
        ]),
        Some(&format!("{RUNS}/landscape/landscape.json")),
    )?;
    r.saddle(
        "filters",
        &strings(&[
            "inspect",
            "--model",
            &natural,
            "--model",
            a,
            "--out",
            &format!("{RUNS}/inspect"),
        ]),
    )?;

    // What the report shows is copied beside it: the figures (PNG) and the numbers behind
    // them; the landscape's every loss (megabytes) stays in runs/, its spreads come along.
    let results = root.join(RESULTS);
    std::fs::create_dir_all(&results)
        .with_context(|| format!("cannot create {}", results.display()))?;
    let runs = root.join(RUNS);
    let copies = [
        ("capacity/capacity.png", "capacity.png"),
        ("capacity/capacity.json", "capacity.json"),
        ("capacity/capacity-transfer.png", "capacity-transfer.png"),
        ("transfer-pgd/transfer.png", "transfer-pgd.png"),
        ("transfer-pgd/transfer.json", "transfer-pgd.json"),
        ("transfer-fgsm/transfer.png", "transfer-fgsm.png"),
        ("transfer-fgsm/transfer.json", "transfer-fgsm.json"),
        ("landscape/landscape.png", "landscape.png"),
        ("landscape/landscape-hist.png", "landscape-hist.png"),
        ("inspect/inspect.png", "inspect.png"),
        ("inspect/inspect.json", "inspect.json"),
    ];
    for (from, to) in copies {
        let bytes = std::fs::read(runs.join(from))
            .with_context(|| format!("cannot read {}", runs.join(from).display()))?;
        crate::download::verify::write_bytes(&results.join(to), &bytes)?;
    }
    let mut landscape = read_json(&runs.join("landscape/landscape.json"))?;
    if let Some(models) = landscape["models"].as_array_mut() {
        for m in models {
            if let Some(o) = m.as_object_mut() {
                o.remove("losses");
                o.remove("worst");
            }
        }
    }
    landscape["layout"] = json!(
        "the spread of each image's final losses over the restarts; \
                                 every loss is in runs/mnist-experiments/landscape/landscape.json"
    );
    crate::download::verify::write_text(
        &results.join("landscape-summary.json"),
        &serde_json::to_string_pretty(&landscape)?,
    )?;
    let total = t0.elapsed().as_secs_f64();
    let run = json!({
        "command": "cargo xtask repro mnist --experiments",
        "machine": machine(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "budget": b,
        "parts": r.parts,
        "total_seconds": total,
    });
    crate::download::verify::write_text(
        &results.join("experiments.json"),
        &serde_json::to_string_pretty(&run)?,
    )?;
    let inputs = Inputs {
        run,
        capacity: read_json(&results.join("capacity.json"))?,
        transfer_pgd: read_json(&results.join("transfer-pgd.json"))?,
        transfer_fgsm: read_json(&results.join("transfer-fgsm.json"))?,
        landscape,
        inspect: read_json(&results.join("inspect.json"))?,
    };
    let path = results.join("REPORT.md");
    crate::download::verify::write_text(&path, &report(&inputs)?)?;
    println!(
        "== wrote {} ({:.0} min in all)",
        path.display(),
        total / 60.0
    );
    Ok(())
}

/// The numbers the report is written from.
pub struct Inputs {
    /// `experiments.json`: the parts, their commands and times.
    pub run: Value,
    /// `capacity.json`.
    pub capacity: Value,
    /// `transfer-pgd.json`.
    pub transfer_pgd: Value,
    /// `transfer-fgsm.json`.
    pub transfer_fgsm: Value,
    /// `landscape-summary.json`.
    pub landscape: Value,
    /// `inspect.json`.
    pub inspect: Value,
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn verdict(holds: bool) -> &'static str {
    if holds {
        "**seen**"
    } else {
        "**not seen**"
    }
}

/// The capacity rows of one training mode (the originals, not the copies), by scale.
fn mode_rows<'a>(capacity: &'a Value, mode: &str) -> Vec<&'a Value> {
    let copies: Vec<&str> = capacity["copies"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["copy"].as_str()).collect())
        .unwrap_or_default();
    let mut rows: Vec<&Value> = capacity["rows"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|r| r["training"] == mode)
                .filter(|r| !copies.contains(&r["key"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|r| r["scale"].as_u64());
    rows
}

fn series(rows: &[&Value], key: &str, fmt: fn(f64) -> String) -> String {
    rows.iter()
        .map(|r| fmt(f(&r[key])))
        .collect::<Vec<_>>()
        .join(" → ")
}

fn non_decreasing(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[1] >= w[0])
}

fn capacity_section(c: &Value) -> Result<String> {
    let nat = mode_rows(c, "natural");
    let fgsm = mode_rows(c, "fgsm");
    let pgd = mode_rows(c, "pgd");
    if nat.is_empty() || fgsm.is_empty() || pgd.is_empty() {
        bail!("capacity.json lacks a training mode (natural, fgsm and pgd are needed)");
    }
    let scales: Vec<String> = pgd.iter().map(|r| r["scale"].to_string()).collect();
    let mut s = format!(
        "## Capacity (the paper's Figure 4)\n\n![capacity](capacity.png)\n\nEach network is \
         the MNIST network at width scale s (conv filters 2s and 4s, fc 64s; the paper's is 16), \
         trained {} steps with the mnist-quick recipe stretched to the run, evaluated on the \
         first {} test images with FGSM and PGD-40 (ε = 0.3).\n\n| training | scale | \
         parameters | natural | FGSM | PGD-40 | adversarial loss |\n|---|---:|---:|---:|---:|\
         ---:|---:|\n",
        c["steps"], pgd[0]["examples"]
    );
    for rows in [&nat, &fgsm, &pgd] {
        for r in rows.iter() {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {:.3} |\n",
                r["training"].as_str().unwrap_or("?"),
                r["scale"],
                r["parameters"],
                pct(f(&r["natural_accuracy"])),
                pct(f(&r["fgsm_accuracy"])),
                pct(f(&r["pgd_accuracy"])),
                f(&r["adversarial_loss"])
            );
        }
    }
    let acc = |rows: &[&Value], k: &str| rows.iter().map(|r| f(&r[k])).collect::<Vec<f64>>();
    let pgd_pgd = acc(&pgd, "pgd_accuracy");
    let pgd_loss = acc(&pgd, "adversarial_loss");
    let nat_fgsm = acc(&nat, "fgsm_accuracy");
    let gap = fgsm
        .iter()
        .map(|&r| (f(&r["fgsm_accuracy"]) - f(&r["pgd_accuracy"]), r))
        .fold(None::<(f64, &Value)>, |m, x| match m {
            Some(m) if m.0 >= x.0 => Some(m),
            _ => Some(x),
        })
        .expect("fgsm rows");
    let small = pgd[0];
    let collapsed = f(&small["natural_accuracy"]) < 0.2
        && (f(&small["natural_accuracy"]) - f(&small["pgd_accuracy"])).abs() < 0.02;
    s += &format!(
        "\nScales {}. The paper's claims, against what we saw:\n\n\
         - **Capacity alone helps (natural training gains some robustness to one-step attacks \
         as capacity grows; more so at small ε).** {}: naturally trained networks' FGSM \
         accuracy at ε = 0.3 is {} across the scales.\n\
         - **FGSM training does not bring robustness against PGD (it overfits to FGSM: label \
         leaking).** {}: the largest FGSM-minus-PGD gap of an FGSM-trained network is at scale \
         {}: {} under FGSM against {} under PGD.\n\
         - **Weak models may fail to learn anything under PGD training.** {}: at scale {} the \
         PGD-trained network scores {} natural, {} under PGD{}.\n\
         - **With PGD training, robustness grows with capacity.** {}: PGD-40 accuracy {}.\n\
         - **The adversarial training loss falls as capacity grows.** {}: {}.\n",
        scales.join(", "),
        verdict(nat_fgsm.last() > nat_fgsm.first() && nat_fgsm.last().is_some_and(|v| *v > 0.05)),
        series(&nat, "fgsm_accuracy", pct),
        verdict(gap.0 > 0.3),
        gap.1["scale"],
        pct(f(&gap.1["fgsm_accuracy"])),
        pct(f(&gap.1["pgd_accuracy"])),
        verdict(collapsed),
        small["scale"],
        pct(f(&small["natural_accuracy"])),
        pct(f(&small["pgd_accuracy"])),
        if collapsed {
            " (one class for every input)"
        } else {
            ""
        },
        verdict(non_decreasing(&pgd_pgd) && pgd_pgd.last() > pgd_pgd.first()),
        series(&pgd, "pgd_accuracy", pct),
        verdict(pgd_loss.last() < pgd_loss.first()),
        series(&pgd, "adversarial_loss", |v| format!("{v:.2}")),
    );
    Ok(s)
}

fn copies_section(c: &Value) -> String {
    let Some(copies) = c["copies"].as_array().filter(|v| !v.is_empty()) else {
        return String::new();
    };
    let mut s = "## Transferability across capacity\n\n![capacity transfer](capacity-transfer.png)\
                 \n\nEach network of the sweep beside an independent copy A′ (the same recipe \
                 from the next seed): the network's accuracy under FGSM and PGD examples crafted \
                 on the copy (black-box) beside the copy's own white-box accuracy, and the mean \
                 cosine of the two networks' input gradients.\n\n| training | scale | under the \
                 copy's FGSM (white-box on the copy) | under the copy's PGD (white-box on the \
                 copy) | gradient cosine |\n|---|---:|---:|---:|---:|\n"
        .to_string();
    let mut by_mode: Vec<(String, Vec<f64>)> = Vec::new();
    for r in copies {
        let mode = r["training"].as_str().unwrap_or("?").to_string();
        s += &format!(
            "| {mode} | {} | {} ({}) | {} ({}) | {:.3} |\n",
            r["scale"],
            pct(f(&r["fgsm_accuracy"])),
            pct(f(&r["copy_fgsm_accuracy"])),
            pct(f(&r["pgd_accuracy"])),
            pct(f(&r["copy_pgd_accuracy"])),
            f(&r["gradient_cosine"])
        );
        match by_mode.iter_mut().find(|m| m.0 == mode) {
            Some(m) => m.1.push(f(&r["gradient_cosine"])),
            None => by_mode.push((mode, vec![f(&r["gradient_cosine"])])),
        }
    }
    let falls: Vec<String> = by_mode
        .iter()
        .map(|(m, v)| {
            format!(
                "{m} {} ({})",
                v.iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(" → "),
                if v.last() < v.first() {
                    "falls"
                } else {
                    "does not fall"
                }
            )
        })
        .collect();
    let all_fall = by_mode.iter().all(|(_, v)| v.last() < v.first());
    s += &format!(
        "\nThe paper's claim: **transferability falls as capacity grows**; the gradients of \
         two independently trained networks align less the wider they are. {}: the gradient \
         cosine from the smallest to the largest scale: {}.\n",
        verdict(all_fall),
        falls.join("; ")
    );
    s
}

fn transfer_section(pgd: &Value, fgsm: &Value) -> Result<String> {
    let models = |t: &Value| -> Result<Vec<Value>> {
        t["models"]
            .as_array()
            .cloned()
            .context("a transfer JSON without models")
    };
    let (mp, mf) = (models(pgd)?, models(fgsm)?);
    let target = mp
        .iter()
        .find(|m| m["role"] == "target")
        .context("a transfer JSON without its target")?;
    let mut s = format!(
        "## Transferability onto the robust model (the paper's black-box columns)\n\n\
         ![transfer](transfer-pgd.png)\n\nThe target A is the `mnist-quick` model \
         (`{}`). Sources: an independent copy A′ (mnist-quick from another seed), the \
         capacity sweep's naturally trained `natural-s16` and its PGD-trained `pgd-s16`. \
         First {} test images; the matrices are in `transfer-pgd.json` and \
         `transfer-fgsm.json`.\n\n| source | A's accuracy under its FGSM | under its PGD-40 | \
         source's white-box PGD-40 | gradient cosine with A |\n|---|---:|---:|---:|---:|\n",
        target["model"].as_str().unwrap_or("?"),
        pgd["examples"]
    );
    let mut a_prime_pgd = f64::NAN;
    let mut natural_pgd = f64::NAN;
    for (p, q) in mp.iter().zip(&mf) {
        let name = p["name"].as_str().unwrap_or("?");
        s += &format!(
            "| {} {name} | {} | {} | {} | {:.3} |\n",
            p["role"].as_str().unwrap_or(""),
            pct(f(&q["target_accuracy"])),
            pct(f(&p["target_accuracy"])),
            pct(f(&p["white_box_accuracy"])),
            f(&p["gradient_cosine"])
        );
        if p["model"].as_str().is_some_and(|m| m.contains("a-prime")) {
            a_prime_pgd = f(&p["target_accuracy"]);
        }
        if p["model"].as_str().is_some_and(|m| m.contains("natural")) {
            natural_pgd = f(&p["target_accuracy"]);
        }
    }
    let white = f(&target["white_box_accuracy"]);
    // The strongest black-box source: the one that leaves A the lowest accuracy.
    let strongest = mp
        .iter()
        .filter(|m| m["role"] == "source")
        .min_by(|a, b| f(&a["target_accuracy"]).total_cmp(&f(&b["target_accuracy"])));
    s += &format!(
        "\nThe paper's claim (Table 1's black-box rows: examples crafted on an independent copy \
         A′ and on a naturally trained network): **black-box attacks are weaker than white-box \
         ones**. {}: A keeps {} under its own PGD-40 and {} under A′'s, {} under the naturally \
         trained network's.\n",
        verdict(a_prime_pgd > white && natural_pgd > white),
        pct(white),
        pct(a_prime_pgd),
        pct(natural_pgd),
    );
    if let Some(m) = strongest {
        let most_aligned = mp
            .iter()
            .filter(|o| o["role"] == "source")
            .all(|o| f(&o["gradient_cosine"]) <= f(&m["gradient_cosine"]));
        s += &format!(
            "\nAlso seen here: the strongest black-box source is `{}` ({} left), {} input \
             gradients are the most aligned with A's of the sources (cosine {:.3}).\n",
            m["name"].as_str().unwrap_or("?"),
            pct(f(&m["target_accuracy"])),
            if most_aligned {
                "whose"
            } else {
                "though not the one whose"
            },
            f(&m["gradient_cosine"])
        );
    }
    Ok(s)
}

fn landscape_section(l: &Value) -> Result<String> {
    let models = l["models"]
        .as_array()
        .context("a landscape summary without models")?;
    let mut s = format!(
        "## Loss landscape (the paper's Figures 1 and 2)\n\n![landscape](landscape.png)\n\n\
         ![landscape histogram](landscape-hist.png)\n\nPGD from {} random starts in the \
         ε-ball ({} steps of {:.3}, ε = {:.3}) on each of the first {} test images, for the \
         naturally trained `natural-s16` and the robust `mnist-quick` model. Final \
         cross-entropy per image over the restarts:\n\n| model | image | min | median | max | \
         max/median |\n|---|---:|---:|---:|---:|---:|\n",
        l["restarts"],
        l["steps"],
        f(&l["alpha"]),
        f(&l["eps"]),
        l["images"].as_array().map_or(0, Vec::len)
    );
    let mut worst_ratio: f64 = 0.0;
    for m in models {
        let name = m["model"].as_str().unwrap_or("?");
        for p in m["spread"].as_array().into_iter().flatten() {
            let r = f(&p["max_over_median"]);
            if r.is_finite() {
                worst_ratio = worst_ratio.max(r);
            }
            s += &format!(
                "| `{name}` | {} | {:.4} | {:.4} | {:.4} | {:.2} |\n",
                p["image"],
                f(&p["min"]),
                f(&p["median"]),
                f(&p["max"]),
                r
            );
        }
    }
    s += &format!(
        "\nThe paper's claims: **the loss rises quickly over PGD's iterations and plateaus** \
         (the curves; look at the figure), and **the final losses of many restarts are \
         concentrated, without outliers** — many local maxima of similar value. {} (we count \
         an outlier as a final loss above twice its image's median): the largest max/median \
         is {:.2}.\n",
        verdict(worst_ratio <= 2.0),
        worst_ratio
    );
    Ok(s)
}

/// The share of each filter's absolute weight held by its largest weight, averaged over the
/// filters that are not zero: near 1 for single-pixel filters, small for dense ones.
fn peak_share(m: &Value) -> f64 {
    let shape: Vec<usize> = m["filters"]["shape"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|d| d.as_u64())
                .map(|d| d as usize)
                .collect()
        })
        .unwrap_or_default();
    let w: Vec<f64> = m["filters"]["weights"]
        .as_array()
        .map(|v| v.iter().map(f).collect())
        .unwrap_or_default();
    let per: usize = shape.iter().skip(1).product();
    if per == 0 || w.is_empty() {
        return f64::NAN;
    }
    let shares: Vec<f64> = w
        .chunks(per)
        .filter_map(|c| {
            let sum: f64 = c.iter().map(|v| v.abs()).sum();
            let top = c.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            (sum > 0.0).then_some(top / sum)
        })
        .collect();
    shares.iter().sum::<f64>() / shares.len().max(1) as f64
}

fn inspect_section(i: &Value) -> Result<String> {
    let models = i["models"]
        .as_array()
        .context("an inspect JSON without models")?;
    if models.len() != 2 {
        bail!("inspect.json should hold the natural and the robust model");
    }
    let mut s = "## The robust model's filters (the paper's Appendix C)\n\n![inspect](inspect.png)\
                 \n\n| model | non-zero first-layer filters | largest weight's share of a \
                 filter's absolute weight (mean) | softmax biases (min, max) |\n|---|---:|---:|\
                 ---:|\n"
        .to_string();
    let mut shares = Vec::new();
    for m in models {
        let count = m["filters"]["shape"][0].as_u64().unwrap_or(0);
        let b: Vec<f64> = m["softmax_bias"]["values"]
            .as_array()
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default();
        let (lo, hi) = b
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, c), &v| {
                (a.min(v), c.max(v))
            });
        let share = peak_share(m);
        shares.push(share);
        s += &format!(
            "| `{}` | {} of {count} | {share:.2} | {lo:.3}, {hi:.3} |\n",
            m["model"].as_str().unwrap_or("?"),
            m["filters"]["nonzero"],
        );
    }
    s += &format!(
        "\nThe paper's claim: **the robust model's first-layer filters are few and sparse, \
         each close to a single pixel: thresholds** that filter out the small perturbations. \
         {}: the largest weight holds {:.0}% of a robust filter's absolute weight on average, \
         {:.0}% of a natural one's (a 5×5 filter of equal weights would give 4%).\n",
        verdict(shares[1] > 2.0 * shares[0]),
        100.0 * shares[1],
        100.0 * shares[0]
    );
    Ok(s)
}

/// The report: the budget and its time split, then one section per experiment.
pub fn report(x: &Inputs) -> Result<String> {
    let mut s = format!(
        "# MNIST experiments: capacity, transferability, loss landscape, filters\n\nWritten by \
         `cargo xtask repro mnist --experiments` on {} ({} cores). Each section puts the \
         paper's claim beside what the numbers show; **seen** / **not seen** is decided by the \
         rule stated with it, from the JSON beside this report.\n\n## The run\n\n| part | \
         this run | a fresh run | command |\n|---|---:|---:|---|\n",
        x.run["machine"].as_str().unwrap_or("?"),
        x.run["cores"]
    );
    let mut fresh = 0.0;
    for p in x.run["parts"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {:.1} min | `{}` |\n",
            p["name"].as_str().unwrap_or("?"),
            if p["reused"] == true {
                "reused".to_string()
            } else {
                format!("{:.1} min", f(&p["seconds"]) / 60.0)
            },
            f(&p["fresh_seconds"]) / 60.0,
            p["command"].as_str().unwrap_or("?")
        );
        fresh += f(&p["fresh_seconds"]);
    }
    s += &format!(
        "\nThis run: {:.0} min in all. A fresh run (nothing to reuse): {:.0} min, counting each \
         reused model at the training time recorded when it was trained (its `metrics.jsonl` \
         or the sweep's `train_seconds`); the budget is at most 3 hours. Times on a machine \
         shared with other jobs are upper bounds. Models are in `runs/mnist-experiments/` \
         (not committed).\n\n",
        f(&x.run["total_seconds"]) / 60.0,
        fresh / 60.0
    );
    s += &capacity_section(&x.capacity)?;
    s += "\n";
    s += &copies_section(&x.capacity);
    s += "\n";
    s += &transfer_section(&x.transfer_pgd, &x.transfer_fgsm)?;
    s += "\n";
    s += &landscape_section(&x.landscape)?;
    s += "\n";
    s += &inspect_section(&x.inspect)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, scale: u64, nat: f64, fgsm: f64, pgd: f64, loss: f64) -> Value {
        json!({"key": format!("{mode}-s{scale}"), "training": mode, "scale": scale,
               "parameters": 100 * scale, "examples": 500, "natural_accuracy": nat,
               "fgsm_accuracy": fgsm, "pgd_accuracy": pgd, "adversarial_loss": loss})
    }

    fn capacity(pgd_acc: [f64; 3]) -> Value {
        json!({"steps": 300, "rows": [
            row("natural", 1, 0.9, 0.0, 0.0, 11.0), row("natural", 4, 0.95, 0.01, 0.0, 10.0),
            row("natural", 16, 0.99, 0.08, 0.0, 9.0),
            row("fgsm", 1, 0.3, 0.2, 0.08, 2.2), row("fgsm", 4, 0.45, 0.54, 0.006, 1.4),
            row("fgsm", 16, 0.95, 0.7, 0.03, 0.8),
            row("pgd", 1, 0.134, 0.134, 0.134, 2.3), row("pgd", 4, 0.85, 0.41, pgd_acc[1], 1.9),
            row("pgd", 16, 0.95, 0.66, pgd_acc[2], 1.2),
            row("pgd", 16, 0.5, 0.5, 0.5, 9.9).as_object().map(|o| {
                let mut o = o.clone();
                o.insert("key".into(), json!("pgd-s16-seed2"));
                Value::Object(o)
            }).unwrap(),
        ], "copies": [
            {"key": "pgd-s1", "copy": "pgd-s1-seed2", "training": "pgd", "scale": 1,
             "fgsm_accuracy": 0.2, "copy_fgsm_accuracy": 0.1, "pgd_accuracy": 0.2,
             "copy_pgd_accuracy": 0.1, "gradient_cosine": 0.6},
            {"key": "pgd-s16", "copy": "pgd-s16-seed2", "training": "pgd", "scale": 16,
             "fgsm_accuracy": 0.8, "copy_fgsm_accuracy": 0.6, "pgd_accuracy": 0.8,
             "copy_pgd_accuracy": 0.5, "gradient_cosine": 0.3},
        ], "_": pgd_acc[0]})
    }

    #[test]
    fn capacity_verdicts_follow_the_numbers() {
        let c = capacity([0.134, 0.34, 0.49]);
        let s = capacity_section(&c).unwrap();
        // The copy's row is not one of the sweep's originals.
        assert_eq!(s.matches("| pgd | 16 |").count(), 1, "{s}");
        assert!(
            s.contains("**seen**: PGD-40 accuracy 13.4% → 34.0% → 49.0%"),
            "{s}"
        );
        assert!(
            s.contains("**seen**: the largest FGSM-minus-PGD gap"),
            "{s}"
        );
        assert!(
            s.contains("scores 13.4% natural, 13.4% under PGD (one class"),
            "{s}"
        );
        // Robustness that does not grow with capacity is reported as not seen.
        let s = capacity_section(&capacity([0.134, 0.5, 0.45])).unwrap();
        assert!(
            s.contains("**not seen**: PGD-40 accuracy 13.4% → 50.0% → 45.0%"),
            "{s}"
        );
        let c = copies_section(&c);
        assert!(c.contains("**seen**: the gradient cosine") && c.contains("0.60 → 0.30 (falls)"));
        assert!(capacity_section(&json!({"rows": []})).is_err());
    }

    #[test]
    fn the_report_sums_a_fresh_run_from_recorded_times() {
        let m = |name: &str, role: &str| {
            json!({"model": format!("runs/{name}/model.safetensors"), "name": name,
                   "role": role, "target_accuracy": 0.9, "white_box_accuracy": 0.9,
                   "gradient_cosine": 0.2})
        };
        let t = json!({"examples": 10, "models": [m("a-prime", "source"),
                       m("mnist-quick", "target")]});
        let filters = json!({"shape": [1, 1, 1, 2], "weights": [1, 0], "nonzero": 1});
        let x = Inputs {
            run: json!({"machine": "test CPU", "cores": 2, "total_seconds": 600.0, "parts": [
                {"name": "A", "command": "(reused a)", "seconds": 0.0, "reused": true,
                 "fresh_seconds": 1800.0},
                {"name": "sweep", "command": "saddle capacity", "seconds": 600.0,
                 "reused": false, "fresh_seconds": 1200.0}]}),
            capacity: capacity([0.134, 0.34, 0.49]),
            transfer_pgd: t.clone(),
            transfer_fgsm: t,
            landscape: json!({"restarts": 1, "steps": 1, "alpha": 0.1, "eps": 0.3,
                              "images": [0], "models": []}),
            inspect: json!({"models": [
                {"model": "nat", "filters": filters, "softmax_bias": {"values": [0.0]}},
                {"model": "rob", "filters": filters, "softmax_bias": {"values": [0.0]}}]}),
        };
        let s = report(&x).unwrap();
        assert!(
            s.contains("| A | reused | 30.0 min | `(reused a)` |"),
            "{s}"
        );
        assert!(s.contains("This run: 10 min in all. A fresh run (nothing to reuse): 50 min"));
        for h in [
            "## Capacity",
            "## Transferability across",
            "## Transferability onto",
            "## Loss landscape",
            "## The robust model's filters",
        ] {
            assert!(s.contains(h), "{h}");
        }
    }

    #[test]
    fn transfer_landscape_and_filter_verdicts_follow_the_numbers() {
        let m = |name: &str, role: &str, t: f64, w: f64| {
            json!({"model": format!("runs/{name}/model.safetensors"), "name": name, "role": role,
                   "target_accuracy": t, "white_box_accuracy": w, "gradient_cosine": 0.2})
        };
        let t = json!({"examples": 1000, "models": [m("a-prime", "source", 0.96, 0.9),
            m("natural-s16", "source", 0.98, 0.0), m("mnist-quick", "target", 0.9, 0.9)]});
        let s = transfer_section(&t, &t).unwrap();
        assert!(s.contains("**seen**: A keeps 90.0% under its own PGD-40 and 96.0% under"));
        assert!(s.contains("98.0% under the naturally trained"), "{s}");
        assert!(s.contains("source is `a-prime` (96.0% left), whose"), "{s}");
        let t2 = json!({"examples": 1000, "models": [m("a-prime", "source", 0.85, 0.9),
            m("natural-s16", "source", 0.8, 0.0), m("mnist-quick", "target", 0.9, 0.9)]});
        let s = transfer_section(&t2, &t2).unwrap();
        assert_eq!(s.matches("**not seen**").count(), 1, "{s}");
        assert!(s.contains("source is `natural-s16` (80.0% left)"), "{s}");

        let l = |ratio: f64| {
            json!({"restarts": 10, "steps": 5, "alpha": 0.01, "eps": 0.3, "images": [0],
                   "models": [{"model": "m", "spread": [{"image": 0, "min": 1.0, "median": 1.0,
                   "max": ratio, "max_over_median": ratio}]}]})
        };
        assert!(landscape_section(&l(1.4)).unwrap().contains("**seen**"));
        assert!(landscape_section(&l(3.0)).unwrap().contains("**not seen**"));

        // One dense and one single-pixel filter of 4 weights.
        let insp = |robust: [f64; 4]| {
            json!({"models": [
                {"model": "nat", "filters": {"shape": [1, 1, 2, 2], "weights": [1, -1, 1, -1],
                 "nonzero": 1}, "softmax_bias": {"values": [0.1, -0.1]}},
                {"model": "rob", "filters": {"shape": [1, 1, 2, 2], "weights": robust,
                 "nonzero": 1}, "softmax_bias": {"values": [0.2, -0.2]}}]})
        };
        let s = inspect_section(&insp([0.0, 0.9, 0.0, 0.1])).unwrap();
        assert!(s.contains("**seen**: the largest weight holds 90%"), "{s}");
        assert!(inspect_section(&insp([1.0, 1.0, -1.0, 1.0]))
            .unwrap()
            .contains("**not seen**"));
    }
}
