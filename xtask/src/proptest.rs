//! `cargo xtask proptest [--cases N]`: the property tests of the attack invariants (and of the
//! CPU backend's step and projection ops) with a large case count, in release mode. `cargo test`
//! runs the same properties with a small count.
//!
//! The number of cases is **counted, not assumed**: each test runs on its own with
//! `PROPTEST_VERBOSE=2`, under which proptest's runner prints `proptest: Test case passed` once
//! for every case that ran and passed; this task counts those lines per test (and swallows them
//! and the inputs proptest prints beside them). A test that prints its own count
//! (`property ID: ran N cases (M configured)`, as `saddle-attacks`' properties do) is
//! cross-checked against it. The task fails if a property ran fewer cases than asked for or the
//! two counts disagree.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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

/// What proptest's runner prints (on stderr) for each passing case at verbosity 2.
const PASSED: &str = "proptest: Test case passed";

/// One test's outcome.
struct Count {
    target: String,
    test: String,
    /// Cases counted from proptest's per-case lines.
    counted: u64,
    /// The count the test printed itself, if it does.
    own: Option<u64>,
    seconds: f64,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn test_args<'a>(pkg: &'a str, test: &'a str) -> Vec<&'a str> {
    vec!["test", "--release", "--quiet", "-p", pkg, "--test", test]
}

/// The names of the tests of a target (`-- --list`).
fn list_tests(pkg: &str, test: &str) -> Result<Vec<String>> {
    let out = Command::new(cargo())
        .args(test_args(pkg, test))
        .args(["--", "--list", "--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run cargo test for {pkg}"))?;
    if !out.status.success() {
        bail!("cannot build or list the tests of {pkg} ({test})");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// `N` from a line `property ID: ran N cases (M configured)`.
fn own_count(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("property ")?;
    let (_, after) = rest.rsplit_once(": ran ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// Runs one test alone with proptest's per-case messages on, counting them.
fn run_one(pkg: &str, target: &str, name: &str, cases: u32) -> Result<Count> {
    let t = Instant::now();
    let mut child = Command::new(cargo())
        .args(test_args(pkg, target))
        .args(["--", "--exact", name, "--nocapture", "--test-threads", "1"])
        .env("PROPTEST_CASES", cases.to_string())
        .env("PROPTEST_VERBOSE", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run cargo test for {pkg}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    // The test's own output (and its own count) on stdout, read beside stderr.
    let reader = std::thread::spawn(move || {
        let mut own = None;
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Some(n) = own_count(&line) {
                own = Some(n);
            }
            let quiet = line.trim().is_empty()
                || line.trim() == "."
                || line.starts_with("running ")
                || line.starts_with("test result:");
            if !quiet {
                println!("   {line}");
            }
        }
        own
    });
    let mut counted = 0u64;
    let stderr = child.stderr.take().context("no stderr")?;
    for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
        if line == PASSED {
            counted += 1;
        } else if !line.starts_with("proptest: ") {
            eprintln!("   {line}");
        }
    }
    let status = child.wait()?;
    let own = reader.join().unwrap_or(None);
    if !status.success() {
        bail!("{pkg} --test {target} {name} failed: see the output above");
    }
    Ok(Count {
        target: format!("{pkg}/{target}"),
        test: name.to_string(),
        counted,
        own,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Runs every property-test target with `PROPTEST_CASES` set, one test at a time, and prints
/// the number of cases each property ran.
pub fn run(args: Args) -> Result<()> {
    if args.cases == 0 {
        bail!("--cases must be at least 1");
    }
    let start = Instant::now();
    let mut counts = Vec::new();
    for (pkg, target) in TARGETS {
        let tests = list_tests(pkg, target)?;
        println!(
            "== {pkg} --test {target}: {} tests, {} cases per property",
            tests.len(),
            args.cases
        );
        for name in &tests {
            let c = run_one(pkg, target, name, args.cases)?;
            println!(
                "   {name}: {} ({:.1} s)",
                match c.counted {
                    0 => "a plain test, no cases".to_string(),
                    n => format!("ran {n} cases"),
                },
                c.seconds
            );
            counts.push(c);
        }
    }
    println!();
    println!(
        "== cases run per property (counted; {} asked for)",
        args.cases
    );
    let width = counts.iter().map(|c| c.test.len()).max().unwrap_or(0);
    let mut problems = Vec::new();
    for c in &counts {
        if c.counted == 0 && c.own.is_none() {
            continue;
        }
        let own = match c.own {
            Some(n) if n == c.counted => "  (its own count agrees)".to_string(),
            Some(n) => {
                problems.push(format!(
                    "{} {}: proptest ran {} cases, the test counted {n}",
                    c.target, c.test, c.counted
                ));
                format!("  (its own count: {n}, DISAGREES)")
            }
            None => String::new(),
        };
        println!("{:<28} {:<width$} {:>8}{own}", c.target, c.test, c.counted);
        if c.counted < u64::from(args.cases) {
            problems.push(format!(
                "{} {}: ran {} cases, fewer than the {} asked for",
                c.target, c.test, c.counted, args.cases
            ));
        }
    }
    let total: u64 = counts.iter().map(|c| c.counted).sum();
    println!(
        "{total} cases in all, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_property_s_own_count() {
        assert_eq!(
            own_count("property 3b (L2 step: a: b): ran 128 cases (128 configured)"),
            Some(128)
        );
        assert_eq!(own_count("property 1: 10 cases"), None);
        assert_eq!(own_count("test p1 ... ok"), None);
    }
}
