//! Checks on the real data sets, found under `$SADDLE_DATASETS` or `<workspace>/datasets`.
//!
//! All three data sets are required: when one is missing its test FAILS and says to run
//! `cargo xtask download NAME` (CI fetches all three), unless `SADDLE_SKIP_REAL_DATA=1`, the one
//! explicit opt-out, which skips them all and prints that it did.

mod common;

use std::path::PathBuf;

use saddle_data::{cifar10, fashion_mnist, mnist, Dataset, Split};

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// The data set's folder if the test should run, `None` (after printing why) if skipped.
fn locate(name: &str) -> Option<PathBuf> {
    let dir = common::datasets_root().join(name);
    if flag("SADDLE_SKIP_REAL_DATA") {
        eprintln!("skipped: real-data test for {name} (SADDLE_SKIP_REAL_DATA=1)");
        return None;
    }
    if dir.exists() {
        return Some(dir);
    }
    panic!(
        "{} is missing: run `cargo xtask download {name}` (or set SADDLE_SKIP_REAL_DATA=1 to \
         skip the real-data tests)",
        dir.display()
    );
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() < 5e-5,
        "{what}: got {got:.6}, want {want:.4}"
    );
}

fn check(d: &Dataset, n: usize, means: &[f64], stds: &[f64]) {
    assert_eq!(d.len(), n, "{}", d.name);
    for (ch, &(m, s)) in d.channel_mean_std().iter().enumerate() {
        assert_close(m, means[ch], &format!("{} mean of channel {ch}", d.name));
        assert_close(s, stds[ch], &format!("{} std of channel {ch}", d.name));
    }
}

#[test]
fn real_mnist() {
    let Some(dir) = locate("mnist") else {
        return;
    };
    let train = mnist::load(&dir, Split::Train).unwrap();
    check(&train, 60_000, &[0.1307], &[0.3081]);
    assert_eq!(
        train.label_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let test = mnist::load(&dir, Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.shape, [10_000, 1, 28, 28]);
}

#[test]
fn real_fashion_mnist() {
    let Some(dir) = locate("fashion-mnist") else {
        return;
    };
    let train = fashion_mnist::load(&dir, Split::Train).unwrap();
    check(&train, 60_000, &[0.2860], &[0.3530]);
    assert_eq!(train.label_counts(), vec![6000; 10]);
    assert_eq!(
        fashion_mnist::load(&dir, Split::Test).unwrap().len(),
        10_000
    );
}

#[test]
fn real_cifar10() {
    let Some(dir) = locate("cifar10") else {
        return;
    };
    let train = cifar10::load(&dir, Split::Train).unwrap();
    check(
        &train,
        50_000,
        &[0.4914, 0.4822, 0.4465],
        &[0.2470, 0.2435, 0.2616],
    );
    assert_eq!(train.label_counts(), vec![5000; 10]);
    let test = cifar10::load(&dir, Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.label_counts(), vec![1000; 10]);
}
