//! `cargo xtask`: the project's development tasks.
//!
//! * `cargo xtask download <mnist|fashion-mnist|cifar10|all> [--dir DIR]`: fetch and verify
//!   the data sets (see `datasets/README.md`).
//! * `cargo xtask proptest [--cases N]`: the attack invariants' property tests, 10,000 cases each.
//! * `cargo xtask repro <mnist|cifar10> [--quick]`: train, evaluate, and report beside the
//!   paper's Table 1 (MNIST) or Table 2 (CIFAR-10).
//! * `cargo xtask bench [--peer]`: saddle's speed, and with `--peer` PyTorch's beside it.
//! * `cargo xtask fuzz [--cases N] [--seed S]`: malformed inputs to every reader of untrusted
//!   bytes, under `catch_unwind` and a counting allocator; fails on any panic or allocation
//!   beyond what the input's size justifies.
//!
//! Each subcommand lives in its own module; add a new one by adding a module, a variant of
//! [`Command`] and a line in `main`.

mod bench;
mod download;
mod experiments;
mod fuzz;
mod proptest;
mod repro;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Counts live bytes, so that `cargo xtask fuzz` can bound what each input makes a reader
/// allocate; otherwise the system allocator.
#[global_allocator]
static ALLOC: fuzz::CountingAlloc = fuzz::CountingAlloc;

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
    /// Property tests of the attack invariants with many cases.
    Proptest(proptest::Args),
    /// Reproduce the paper's MNIST (Table 1) or CIFAR-10 (Table 2) results and write a report.
    Repro(repro::Args),
    /// Benchmarks; with --peer, PyTorch side by side.
    Bench(bench::Args),
    /// Malformed inputs to every reader (model files, .npy, configs, IDX, CIFAR-10).
    Fuzz(fuzz::Args),
}

/// The workspace this xtask works on: the parent of `xtask/` as `cargo run` names it at run
/// time (`CARGO_MANIFEST_DIR` is set for the process), else as it was at build time. The
/// run-time name matters when two checkouts share one target directory: the binary built in
/// one would otherwise read and write the other's `results/` and `datasets/`.
pub(crate) fn workspace_root() -> PathBuf {
    // Only cargo's own name for this package counts (a process cargo started for another
    // package, such as a test, passes on that package's folder).
    let ours = std::env::var("CARGO_PKG_NAME").is_ok_and(|n| n == env!("CARGO_PKG_NAME"));
    workspace_of(std::env::var_os("CARGO_MANIFEST_DIR").filter(|_| ours))
}

/// The workspace of the xtask manifest folder named at run time, else at build time.
fn workspace_of(run_time: Option<std::ffi::OsString>) -> PathBuf {
    let manifest = run_time
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().unwrap_or(Path::new(".")).to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Download(args) => download::run(args),
        Command::Proptest(args) => proptest::run(args),
        Command::Repro(args) => repro::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary built in one checkout and run by `cargo xtask` in another works on the other
    /// (two checkouts sharing a target directory: `repro --resume` in one looked for the
    /// checkpoint in the other, whose build cargo had found fresh).
    #[test]
    fn the_workspace_is_the_one_cargo_runs_the_task_in() {
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert_eq!(
            workspace_of(Some("other/checkout/xtask".into())),
            Path::new("other/checkout")
        );
        assert_eq!(workspace_of(None), built);
        assert_eq!(workspace_of(Some("".into())), built);
    }
}
