//! `cargo xtask bench [--peer] [--isa avx512|avx2|portable]`: saddle's CPU benchmarks as one
//! table.
//!
//! Runs `cargo bench -p saddle-models --bench mnist_speed` (the paper's MNIST network: PGD step
//! at batch 50 and 256, one PGD-40 + Adam training iteration at batch 50, inference),
//! `cargo bench -p saddle-train --bench cifar_speed` (the CIFAR-10 wide ResNets of presets
//! `cifar-quick` and `cifar-paper`: a PGD step and one iteration of the preset's training recipe,
//! `Trainer::train_step` itself, at batch 128) and the per-op bench of saddle-tensor, and prints
//! images×steps/s, examples/s, GFLOP/s and the share of the machine's sgemm rate. With `--peer`
//! it also runs `benches/peer/pytorch_mnist.py` and `benches/peer/pytorch_cifar.py` (same
//! networks, same batches, same recipes, `torch.set_num_threads(2)`), creating a virtual
//! environment with torch if there is none, and prints saddle / PyTorch per row. The CIFAR-10
//! presets' architectures and recipes are read from the saddle bench (which reads them from
//! `TrainConfig::preset`) and handed to the PyTorch script (`SADDLE_CIFAR_{QUICK,PAPER}_ARCH`,
//! `SADDLE_CIFAR_{QUICK,PAPER}_RECIPE`), so both sides follow a preset that changes.
//!
//! The two sides are interleaved row by row and round by round (saddle, PyTorch, PyTorch,
//! saddle, ...), and each side's figure is the median over the rounds, so that a ratio holds on
//! a shared, noisy machine. The rows of the paper's CIFAR-10 network (`wrn-madry-34-10`: tens of
//! seconds per PGD step, minutes per training iteration on 2 cores) run in the first round only,
//! each timed once after one warm-up; `SADDLE_BENCH_CIFAR_PAPER=0` leaves them out. Environment:
//! `SADDLE_BENCH_ROUNDS` (3), `SADDLE_BENCH_SECS` (2, per row and run), `SADDLE_THREADS` (2),
//! `SADDLE_PEER_VENV` (the virtual environment, by default `target/peer-venv`),
//! `SADDLE_SGEMM_GFLOPS` (146, the sgemm rate PyTorch measured here),
//! `SADDLE_BENCH_CIFAR_PAPER` (1; 0 leaves the paper network's rows out).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also run the PyTorch reference script and print saddle / PyTorch per row.
    #[arg(long)]
    pub peer: bool,
    /// Run both sides on this instruction set: avx512, avx2 or portable (saddle through
    /// `SADDLE_CPU_ISA`; PyTorch through `ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA`).
    /// Default: each side's own choice for this CPU.
    #[arg(long)]
    pub isa: Option<String>,
}

/// Environment variables to set for a process.
type Envs = Vec<(String, String)>;

/// The environment that caps each side to the instruction set `isa`: (saddle's, PyTorch's).
fn isa_envs(isa: &str) -> Result<(Envs, Envs)> {
    let (aten, onednn) = match isa {
        "avx512" => ("avx512", "AVX512_CORE"),
        "avx2" => ("avx2", "AVX2"),
        "portable" => ("default", "SSE41"),
        other => bail!("--isa {other}: use avx512, avx2 or portable"),
    };
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    Ok((
        vec![kv("SADDLE_CPU_ISA", isa)],
        vec![
            kv("ATEN_CPU_CAPABILITY", aten),
            kv("ONEDNN_MAX_CPU_ISA", onednn),
        ],
    ))
}

/// Which bench executable (and PyTorch script) prints a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    /// `mnist_speed` of saddle-models, `pytorch_mnist.py`.
    Mnist,
    /// `cifar_speed` of saddle-train, `pytorch_cifar.py`.
    Cifar,
    /// `cifar_speed` too, the paper's network: first round only, left out with
    /// `SADDLE_BENCH_CIFAR_PAPER=0`.
    CifarPaper,
}

/// A row compared with PyTorch: the bench row's name, what it counts, the target ratio (if
/// any), and the suite that prints it.
struct Spec {
    name: &'static str,
    what: &'static str,
    target: Option<f64>,
    suite: Suite,
}

const fn spec(name: &'static str, what: &'static str, target: Option<f64>, suite: Suite) -> Spec {
    Spec {
        name,
        what,
        target,
        suite,
    }
}

/// The rows compared with PyTorch. `pgd_step_b50@1` runs both sides on one thread: on a machine
/// shared with other work, where a process may get less than its two cores, it shows the
/// per-core speed that the 2-thread rows may hide.
const ROWS: [Spec; 10] = [
    spec(
        "pgd_step_b50",
        "PGD step, batch 50 (images×steps/s)",
        Some(1.25),
        Suite::Mnist,
    ),
    spec(
        "pgd_step_b256",
        "PGD step, batch 256 (images×steps/s)",
        Some(1.25),
        Suite::Mnist,
    ),
    spec(
        "train_iter_b50",
        "PGD-40 + Adam iteration, batch 50 (examples/s)",
        Some(1.25),
        Suite::Mnist,
    ),
    spec(
        "inference_b256",
        "inference, batch 256 (images/s)",
        Some(1.0),
        Suite::Mnist,
    ),
    spec(
        "inference_b50",
        "inference, batch 50 (images/s)",
        None,
        Suite::Mnist,
    ),
    spec(
        "pgd_step_b50@1",
        "PGD step, batch 50, 1 thread each (images×steps/s)",
        None,
        Suite::Mnist,
    ),
    spec(
        "cifar_pgd_step_quick_b128",
        "CIFAR-10 cifar-quick network: PGD step, eval-mode BN, batch 128 (images×steps/s)",
        Some(1.25),
        Suite::Cifar,
    ),
    spec(
        "cifar_train_iter_quick_b128",
        "CIFAR-10 cifar-quick recipe: training iteration, batch 128 (examples/s)",
        Some(1.25),
        Suite::Cifar,
    ),
    spec(
        "cifar_pgd_step_paper_b128",
        "CIFAR-10 cifar-paper network: PGD step, eval-mode BN, batch 128, 1 run (images×steps/s)",
        Some(1.25),
        Suite::CifarPaper,
    ),
    spec(
        "cifar_train_iter_paper_b128",
        "CIFAR-10 cifar-paper recipe: PGD-7 training iteration, batch 128, 1 run (examples/s)",
        Some(1.25),
        Suite::CifarPaper,
    ),
];

/// Runs the benchmarks (`peer`: with PyTorch side by side).
pub fn run(args: Args) -> Result<()> {
    let peer = args.peer;
    let (isa_saddle, isa_torch) = match &args.isa {
        Some(i) => isa_envs(i)?,
        None => (vec![], vec![]),
    };
    let root = crate::workspace_root();
    let rounds: usize = env_num("SADDLE_BENCH_ROUNDS", 3.0) as usize;
    let secs = env_num("SADDLE_BENCH_SECS", 2.0);
    let sgemm = env_num("SADDLE_SGEMM_GFLOPS", 146.0);
    let threads = std::env::var("SADDLE_THREADS").unwrap_or_else(|_| "2".into());

    eprintln!("building the benchmarks ...");
    let speed = bench_executable(&root, "saddle-models", "mnist_speed")?;
    let cifar = bench_executable(&root, "saddle-train", "cifar_speed")?;
    let ops = bench_executable(&root, "saddle-tensor", "ops")?;
    let python = if peer {
        Some(peer_python(&root)?)
    } else {
        None
    };
    let script = root.join("benches/peer/pytorch_mnist.py");
    let cifar_script = root.join("benches/peer/pytorch_cifar.py");
    let paper_on = std::env::var("SADDLE_BENCH_CIFAR_PAPER").as_deref() != Ok("0");
    // The CIFAR-10 presets' networks and recipes, as the saddle bench reads them from
    // `TrainConfig::preset`, for the PyTorch side.
    let cifar_info = run_cmd(
        Command::new(&cifar)
            .env("SADDLE_BENCH_ROWS", "none")
            .envs(isa_saddle.clone()),
        "saddle CIFAR-10 bench (presets)",
    )?;
    // Its header and the networks' forward FLOP per image.
    let cifar_header = cifar_info
        .lines()
        .filter(|l| l.starts_with("# "))
        .map(|l| l.trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let mut cifar_envs: Envs = Vec::new();
    for l in cifar_info.lines().filter(|l| l.starts_with("preset=")) {
        let kv: BTreeMap<&str, &str> = l
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .collect();
        let key = match kv.get("preset") {
            Some(&"cifar-quick") => "QUICK",
            Some(&"cifar-paper") => "PAPER",
            _ => continue,
        };
        if let Some(arch) = kv.get("arch") {
            cifar_envs.push((format!("SADDLE_CIFAR_{key}_ARCH"), arch.to_string()));
        }
        cifar_envs.push((format!("SADDLE_CIFAR_{key}_RECIPE"), l.to_string()));
    }
    if cifar_envs.len() != 4 {
        bail!("the saddle CIFAR-10 bench did not print both presets' recipes:\n{cifar_info}");
    }

    // `row@t` runs `row` on `t` threads.
    let envs = |row: &str| {
        let (r, t) = match row.split_once('@') {
            Some((r, t)) => (r, t.to_string()),
            None => (row, threads.clone()),
        };
        vec![
            ("SADDLE_BENCH_ROWS".to_string(), r.to_string()),
            ("SADDLE_BENCH_SECS".to_string(), secs.to_string()),
            ("SADDLE_THREADS".to_string(), t),
        ]
    };
    let mut ours: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
    let mut theirs: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
    let load0 = loadavg();
    let mut header = String::new();
    for round in 0..rounds {
        for (i, row) in ROWS.iter().enumerate() {
            let name = row.name;
            if row.suite == Suite::CifarPaper && (round > 0 || !paper_on) {
                continue;
            }
            eprintln!("round {}/{rounds}: {name}", round + 1);
            let (exe, py_script) = match row.suite {
                Suite::Mnist => (&speed, &script),
                Suite::Cifar | Suite::CifarPaper => (&cifar, &cifar_script),
            };
            // Alternate which side goes first, so neither always runs on a warmer machine.
            let saddle_first = (round + i) % 2 == 0;
            for side in 0..2 {
                let is_saddle = (side == 0) == saddle_first;
                if is_saddle {
                    let out = run_cmd(
                        Command::new(exe).envs(envs(name)).envs(isa_saddle.clone()),
                        "saddle bench",
                    )?;
                    let first =
                        header.is_empty() && !name.contains('@') && row.suite == Suite::Mnist;
                    if let Some(l) = out.lines().find(|l| first && l.starts_with("# saddle")) {
                        header = l.trim_start_matches("# ").to_string();
                    }
                    ours.entry(name)
                        .or_default()
                        .extend(parse_rows(&out, base(name)));
                } else if let Some(py) = &python {
                    let mut c = Command::new(py);
                    c.arg(py_script)
                        .envs(envs(name))
                        .envs(cifar_envs.clone())
                        .envs(isa_torch.clone());
                    let out = run_cmd(&mut c, "PyTorch reference")?;
                    theirs
                        .entry(name)
                        .or_default()
                        .extend(parse_rows(&out, base(name)));
                }
            }
        }
    }
    eprintln!("allocation counts and per-op rates ...");
    let allocs = run_cmd(
        Command::new(&speed)
            .envs(envs("allocations"))
            .envs(isa_saddle.clone()),
        "saddle allocation count",
    )?;
    let ops_out = run_cmd(
        Command::new(&ops)
            .env("SADDLE_THREADS", &threads)
            .envs(isa_saddle.clone()),
        "saddle per-op bench",
    )?;
    let load1 = loadavg();

    println!(
        "\nsaddle CPU benchmarks, {threads} threads, median of {rounds} interleaved rounds \
         (load average {load0} before, {load1} after)\n{header}\n{cifar_header}{}\n",
        match &args.isa {
            Some(_) => format!(
                "; PyTorch capped with {}",
                isa_torch
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => String::new(),
        }
    );
    let peer_col = if peer {
        " PyTorch | saddle/PyTorch | target |"
    } else {
        ""
    };
    println!("| row | saddle | GFLOP/s | share of sgemm ({sgemm:.0}) |{peer_col}");
    println!(
        "|---|---|---|---|{}",
        if peer { "---|---|---|" } else { "" }
    );
    for Spec {
        name, what, target, ..
    } in ROWS
    {
        let Some(s) = median_row(ours.get(name)) else {
            continue;
        };
        let gf = s.gflops.map(|g| format!("{g:.1}")).unwrap_or_default();
        let share = s
            .gflops
            .map(|g| format!("{:.0}%", 100.0 * g / sgemm))
            .unwrap_or_default();
        let mut line = format!("| {what} | {} | {gf} | {share} |", rate(s.rate));
        if peer {
            match median_row(theirs.get(name)) {
                Some(t) => {
                    let ratio = s.rate / t.rate;
                    let tg = match target {
                        Some(x) => {
                            format!("≥ {x:.2}× {}", if ratio >= x { "met" } else { "NOT met" })
                        }
                        None => "–".into(),
                    };
                    line += &format!(" {} | {ratio:.2}× | {tg} |", rate(t.rate));
                }
                None => line += " – | – | – |",
            }
        }
        println!("{line}");
    }
    if !paper_on {
        println!(
            "\nthe rows of the paper's CIFAR-10 network (cifar_pgd_step_paper_b128, \
             cifar_train_iter_paper_b128) were left out: SADDLE_BENCH_CIFAR_PAPER=0 (tens of \
             seconds per PGD step, minutes per training iteration on 2 cores)"
        );
    }
    for l in allocs.lines().filter(|l| l.starts_with("allocs")) {
        println!(
            "\nheap allocations after warm-up (counting allocator): {}",
            &l[7..]
        );
    }
    println!(
        "\nper-op (batch 50; wall GFLOP/s, share of sgemm {sgemm:.0}; CPU-time GFLOP/s per core):"
    );
    for l in ops_out.lines().filter(|l| l.contains("GFLOP/s")) {
        let wall = l
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[1] == "GFLOP/s")
            .and_then(|w| w[0].parse::<f64>().ok());
        match wall {
            Some(g) => println!("  {l}  [{:.0}% of sgemm]", 100.0 * g / sgemm),
            None => println!("  {l}"),
        }
    }
    Ok(())
}

/// A rate with three significant digits or more (the CIFAR-10 rows are single digits).
fn rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.2}")
    } else {
        format!("{r:.1}")
    }
}

/// The bench row behind a table row (`pgd_step_b50@1` → `pgd_step_b50`).
fn base(name: &str) -> &str {
    name.split_once('@').map_or(name, |(r, _)| r)
}

#[derive(Clone, Copy, Debug)]
struct Row {
    rate: f64,
    gflops: Option<f64>,
}

/// `row=NAME rate=R unit=U ms=M [gflops=G]` lines for `name`.
fn parse_rows(out: &str, name: &str) -> Vec<Row> {
    out.lines()
        .filter_map(|l| {
            let kv: BTreeMap<&str, &str> = l
                .split_whitespace()
                .filter_map(|t| t.split_once('='))
                .collect();
            if kv.get("row") != Some(&name) {
                return None;
            }
            Some(Row {
                rate: kv.get("rate")?.parse().ok()?,
                gflops: kv.get("gflops").and_then(|g| g.parse().ok()),
            })
        })
        .collect()
}

/// The row of median rate.
fn median_row(v: Option<&Vec<Row>>) -> Option<Row> {
    let mut v = v?.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    Some(v[v.len() / 2])
}

fn env_num(k: &str, default: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds a bench target in release mode and returns its executable.
fn bench_executable(root: &Path, package: &str, bench: &str) -> Result<PathBuf> {
    let out = Command::new(cargo())
        .current_dir(root)
        .args([
            "bench",
            "-p",
            package,
            "--bench",
            bench,
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!(
            "building bench {bench} of {package} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == bench {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo did not report an executable for bench {bench} of {package}")
}

/// The Python of the peer's virtual environment, created with torch if missing.
fn peer_python(root: &Path) -> Result<PathBuf> {
    let venv = std::env::var_os("SADDLE_PEER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/peer-venv"));
    let py = venv.join("bin/python");
    let has_torch = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch, numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if py.exists() && has_torch(&py) {
        return Ok(py);
    }
    if !py.exists() {
        eprintln!("creating the virtual environment {} ...", venv.display());
        run_cmd(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    eprintln!(
        "installing torch and numpy into {} (about 3 GB) ...",
        venv.display()
    );
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "torch", "numpy"])
        .status()
        .context("running pip")?;
    if !status.success() || !has_torch(&py) {
        bail!("pip install torch numpy into {} failed", venv.display());
    }
    Ok(py)
}

/// Runs a command, returning its standard output; fails with its standard error.
fn run_cmd(c: &mut Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running the {what}"))?;
    if !out.status.success() {
        bail!(
            "the {what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
