//! `saddle`: train, evaluate and attack adversarially robust models (Madry et al. 2018).
//!
//! Every error ends the program with a one-line message naming the problem and exit status 2;
//! no panic message, no backtrace.
//!
//! ```sh
//! saddle train --preset mnist-smoke --out runs/smoke
//! saddle eval --model runs/smoke/model.safetensors --data mnist --attacks fgsm,pgd40
//! saddle predict --arch mnist --model STATE_DICT.safetensors --inputs X.npy --out LOGITS.npy
//! ```
//!
//! This crate is the command line only; a program that embeds saddle uses the library crates
//! (`saddle-train`, `saddle-attacks`, `saddle-models`, `saddle-data`, `saddle-tensor`,
//! `saddle-wgsl`) directly. `tests/cli.rs` runs the binary end to end.

// The doc comments of the argument structs are `saddle --help` text, written for the terminal
// (`[0, 1]`, `[n]`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod commands;
mod fsutil;
mod npy;
mod plot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Train and honestly evaluate adversarially robust models (Madry et al., ICLR 2018).
#[derive(Parser, Debug)]
#[command(name = "saddle", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where tensors are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The CPU backend (ndarray, all cores or `--threads`).
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal or DX12).
    Gpu,
    /// The GPU if a real (not CPU-emulated) one is present, else the CPU.
    Auto,
    /// Any wgpu adapter, software ones (Mesa's lavapipe) included: for testing the GPU path.
    Any,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model from a preset or a TOML config (keys as in MadryLab's mnist_challenge).
    Train(commands::train::TrainArgs),
    /// Evaluate a model: natural accuracy and accuracy under attacks, as a table and JSON.
    Eval(commands::eval::EvalArgs),
    /// Logits of a batch of images (.npy, float32 NCHW in [0,1]).
    Predict(PredictArgs),
    /// Adversarial examples for a batch of images and labels.
    Attack(commands::attack::AttackArgs),
    /// The loss landscape of PGD from many random starts (the paper's Figures 1 and 2).
    Landscape(commands::landscape::LandscapeArgs),
    /// A model's first-layer filters and softmax biases (the paper's Appendix C).
    Inspect(commands::inspect::InspectArgs),
}

/// Arguments of `saddle predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Model weights (safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The architecture (mnist, wrn-madry-DEPTH-WIDTH, wrn-DEPTH-WIDTH): required for a file
    /// without `arch` metadata (a state_dict saved from PyTorch), checked against it otherwise.
    #[arg(long)]
    arch: Option<String>,
    /// Images, float32 NCHW in [0, 1] ([n, 1, 28, 28] for MNIST, [n, 3, 32, 32] for CIFAR-10).
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the logits, float32 [n, 10].
    #[arg(long)]
    out: PathBuf,
    /// Compute device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    // Errors are reported as one line; a panic (a bug) is reported the same way, without a
    // backtrace, and with a request to report it.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("saddle: internal error (please report it): {msg}");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print(); // --help, --version
                return ExitCode::SUCCESS;
            }
            // Usage errors in one line, like every other error.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.trim_start_matches("error: ");
            eprintln!("saddle: error: {first} (see saddle --help)");
            return ExitCode::from(2);
        }
    };
    // A SADDLE_CPU_ISA the CPU cannot run (or a misspelt one) is refused before any work.
    if let Err(e) = saddle_tensor::cpu::cpu_isa() {
        eprintln!("saddle: error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Predict(a) => commands::predict(a),
        Command::Attack(a) => commands::attack::run(a),
        Command::Landscape(a) => commands::landscape::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("saddle: error: {msg}");
            ExitCode::from(2)
        }
    }
}
