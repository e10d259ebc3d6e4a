//! `cargo xtask proptest [--cases N]`: the property tests of the attack invariants (and of the
//! CPU backend's step and projection ops) with a large case count, in release mode. `cargo test`
//! runs the same properties with a small count.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Arguments of `cargo xtask proptest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cases per property.
    #[arg(long, default_value_t = 10_000)]
    pub cases: u32,
}

/// The property-test targets: (package, test target).
const TARGETS: &[(&str, &str)] = &[
    ("saddle-attacks", "properties"),
    ("saddle-tensor", "cpu_properties"),
];

/// Runs every property-test target with `PROPTEST_CASES` set, printing what they report.
pub fn run(args: Args) -> Result<()> {
    if args.cases == 0 {
        bail!("--cases must be at least 1");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (pkg, test) in TARGETS {
        println!("== {pkg} --test {test}: {} cases per property", args.cases);
        let t = Instant::now();
        let status = Command::new(&cargo)
            .args([
                "test",
                "--release",
                "--quiet",
                "-p",
                pkg,
                "--test",
                test,
                "--",
                "--nocapture",
                "--test-threads",
                "2",
            ])
            .env("PROPTEST_CASES", args.cases.to_string())
            .status()
            .with_context(|| format!("cannot run cargo test for {pkg}"))?;
        if !status.success() {
            bail!("property tests of {pkg} ({test}) failed: see the output above");
        }
        println!(
            "== {pkg} --test {test}: passed in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
