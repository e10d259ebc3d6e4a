//! `saddle`: train, evaluate and attack adversarially robust models (Madry et al. 2018).
//!
//! The crate is the `saddle` binary and, as a library, the same command line callable from
//! Rust: [`Cli::parse_args`] parses a command line, [`run`] executes it, and [`main_with_args`]
//! does both and reports an error as the binary does (one line, exit status 2; no panic message,
//! no backtrace). [`npy`] reads and writes the `.npy` files of `saddle predict` and
//! `saddle attack`, and [`attack_names`] expands an `--attacks` list (`paper`, `autoattack`).
//!
//! ```sh
//! saddle train --preset mnist-smoke --out runs/smoke
//! saddle eval --model runs/smoke/model.safetensors --data mnist --attacks fgsm,pgd40
//! saddle predict --arch mnist --model STATE_DICT.safetensors --inputs X.npy --out LOGITS.npy
//! ```
//!
//! The same `saddle predict`, from Rust, on a freshly initialised network of the paper's MNIST
//! architecture:
//!
//! ```
//! use saddle_cli::{main_with_args, npy};
//! use saddle_models::{Arch, Classifier, Model};
//! use saddle_tensor::cpu::Cpu;
//!
//! let dir = std::env::temp_dir().join(format!("saddle-cli-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let net = Model::build(&"mnist".parse::<Arch>().unwrap(), Cpu::new(), 7).unwrap();
//! std::fs::write(dir.join("net.safetensors"), net.to_safetensors().unwrap()).unwrap();
//! std::fs::write(dir.join("x.npy"), npy::encode_f32(&[3, 1, 28, 28], &[0.5; 3 * 784])).unwrap();
//!
//! let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
//! let status = main_with_args([
//!     "saddle", "predict", "--model", &path("net.safetensors"),
//!     "--inputs", &path("x.npy"), "--out", &path("logits.npy"), "--threads", "1",
//! ]);
//! assert_eq!(status, std::process::ExitCode::SUCCESS);
//! let logits = npy::read(&dir.join("logits.npy")).unwrap();
//! assert_eq!(logits.shape, [3, 10]);
//! assert!(logits.data.iter().all(|v| v.is_finite()));
//! // Three identical images: three identical rows of logits.
//! assert_eq!(logits.data[..10], logits.data[10..20]);
//!
//! // A wrong command line is an error value, not an exit.
//! assert!(saddle_cli::Cli::parse_args(["saddle", "eval", "--eps", "0.3"]).is_err());
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! A program that embeds saddle's models, attacks or training uses the library crates
//! (`saddle-train`, `saddle-attacks`, `saddle-models`, `saddle-data`, `saddle-tensor`,
//! `saddle-wgsl`) directly; this one is for scripts that want the command line's exact
//! behaviour (its presets, reports and files). `tests/cli.rs` runs the binary end to end.

// The doc comments of the argument structs are `saddle --help` text, written for the terminal
// (`[0, 1]`, `[n]`, `models/<mode>-s<scale>`), not rustdoc links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod commands;
mod fsutil;
mod mpi;
pub mod npy;
mod plot;
mod progress;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use commands::attack::AttackArgs;
pub use commands::capacity::CapacityArgs;
pub use commands::eval::{attack_names, EvalArgs, AUTOATTACK};
pub use commands::inspect::InspectArgs;
pub use commands::landscape::LandscapeArgs;
pub use commands::train::TrainArgs;
pub use commands::transfer::{TransferArgs, TransferAttack};

/// Train and honestly evaluate adversarially robust models (Madry et al., ICLR 2018).
#[derive(Parser, Debug)]
#[command(name = "saddle", version, about)]
pub struct Cli {
    /// The subcommand and its arguments.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses a command line (its first item is the program name, as in `std::env::args_os`).
    ///
    /// # Errors
    /// clap's error for an unknown subcommand or flag, a missing argument or a bad value; also
    /// the "error" that carries `--help` and `--version` text (`use_stderr()` is false for it).
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }
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

/// The subcommands of `saddle`.
#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Accuracies and adversarial loss against network width, per training mode (the paper's
    /// Figure 4).
    Capacity(commands::capacity::CapacityArgs),
    /// A target's accuracy on examples crafted on other models, and gradient cosines
    /// (transferability).
    Transfer(commands::transfer::TransferArgs),
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
    #[command(flatten)]
    compute: crate::commands::Compute,
}

/// Executes a parsed command line.
///
/// # Errors
/// Whatever the command reports: a missing or corrupt file, a bad value, an invalid model or
/// configuration, an attack that leaves its threat model. A `SADDLE_CPU_ISA` this CPU cannot run
/// is refused before any work.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    saddle_tensor::cpu::cpu_isa()?;
    match cli.command {
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Predict(a) => commands::predict(a),
        Command::Attack(a) => commands::attack::run(a),
        Command::Landscape(a) => commands::landscape::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Capacity(a) => commands::capacity::run(a),
        Command::Transfer(a) => commands::transfer::run(a),
    }
}

/// The `saddle` binary: parses `args` (program name first), runs the command, and reports an
/// error as one line on stderr (`saddle: error: ...`), returning exit status 2; `--help` and
/// `--version` print their text and succeed.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print(); // --help, --version
                return ExitCode::SUCCESS;
            }
            // Usage errors in one line, like every other error.
            // The message is its lines up to the usage, which may list what is missing
            // ("the following required arguments were not provided:\n  --steps <STEPS>").
            let text = e.render().to_string();
            let lines: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let first = if lines.is_empty() {
                "invalid arguments".to_string()
            } else {
                lines.join(" ")
            };
            let first = first.trim_start_matches("error: ");
            eprintln!("saddle: error: {first} (see saddle --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("saddle: error: {msg}");
            ExitCode::from(2)
        }
    }
}
