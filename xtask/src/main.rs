//! `cargo xtask`: the project's development tasks.
//!
//! * `cargo xtask download <mnist|fashion-mnist|cifar10|all> [--dir DIR]`: fetch and verify
//!   the data sets (see `datasets/README.md`).
//! * `proptest`, `repro`, `bench`: placeholders for tasks still to come.
//!
//! Each subcommand lives in its own module; add a new one by adding a module, a variant of
//! [`Command`] and a line in `main`.

mod bench;
mod download;
mod proptest;
mod repro;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Development tasks for saddle",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download and verify data sets into datasets/ (or --dir).
    Download(download::Args),
    /// Long property-test runs (not yet implemented).
    Proptest(proptest::Args),
    /// Reproduce the paper's results (not yet implemented).
    Repro(repro::Args),
    /// Benchmarks (not yet implemented).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Download(args) => download::run(args),
        Command::Proptest(args) => proptest::run(args),
        Command::Repro(args) => repro::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The error of a subcommand that does not exist yet.
fn not_yet_implemented(name: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "`cargo xtask {name}` is not yet implemented; it is reserved for a later issue \
         (see xtask/src/{name}.rs)"
    )
}
