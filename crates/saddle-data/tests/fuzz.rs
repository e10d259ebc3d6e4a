//! Property tests feeding random and half-valid bytes to the IDX and CIFAR-10 readers: they
//! must return `Ok` with consistent contents or an error, never panic, hang or over-allocate.
//!
//! `cargo test -p saddle-data` runs 256 inputs per property (proptest's default). For a long
//! run, each of the four properties runs `PROPTEST_CASES` inputs and prints its count:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test -p saddle-data --release --test fuzz -- --nocapture
//! ```

mod common;

use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

use common::gzip;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use saddle_data::{cifar10, idx};

fn check_idx(bytes: &[u8]) {
    let p = Path::new("fuzz-input");
    if let Ok(img) = idx::parse_images(bytes, p) {
        assert_eq!(img.pixels.len(), img.count * img.rows * img.cols);
        assert!(img.rows > 0 && img.cols > 0);
    }
    if let Ok(labels) = idx::parse_labels(bytes, p, 10) {
        assert!(labels.iter().all(|&l| l < 10));
    }
}

fn check_cifar(bytes: &[u8]) {
    if let Ok(b) = cifar10::parse_batch(bytes, Path::new("fuzz-input")) {
        assert_eq!(b.pixels.len(), b.labels.len() * cifar10::IMAGE_LEN);
        assert!(!b.labels.is_empty() && b.labels.iter().all(|&l| l < 10));
    }
}

/// An IDX-like header (often with a valid magic number, small or enormous dimensions)
/// followed by a random payload.
fn idx_like() -> impl Strategy<Value = Vec<u8>> {
    let magic = prop_oneof![
        Just(0x0000_0803u32),
        Just(0x0000_0801u32),
        any::<u32>(),
        (0u32..=0xff).prop_map(|d| 0x0800 | d),
    ];
    let dim = prop_oneof![0u32..6, Just(28u32), any::<u32>(), Just(1u32 << 31)];
    (
        magic,
        prop::collection::vec(dim, 0..5),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(magic, dims, payload)| {
            let mut v = magic.to_be_bytes().to_vec();
            for d in dims {
                v.extend(d.to_be_bytes());
            }
            v.extend(payload);
            v
        })
}

/// Runs `check` on `PROPTEST_CASES` (default 256) values of `strategy`; prints the count.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value)) {
    let config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let cases = Cell::new(0u64);
    let start = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |v| {
        cases.set(cases.get() + 1);
        check(v);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {} inputs, no panic, {:.2} s",
        cases.get(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn fuzz_random_bytes() {
    fuzz(
        "random bytes",
        prop::collection::vec(any::<u8>(), 0..2048),
        |bytes| {
            check_idx(&bytes);
            check_cifar(&bytes);
        },
    );
}

#[test]
fn fuzz_idx_headers() {
    fuzz(
        "idx headers",
        (idx_like(), any::<prop::sample::Index>()),
        |(bytes, cut)| {
            check_idx(&bytes);
            check_idx(&bytes[..cut.index(bytes.len() + 1)]);
        },
    );
}

#[test]
fn fuzz_gzip() {
    let flips = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
    fuzz(
        "gzip",
        (idx_like(), flips, any::<prop::sample::Index>()),
        |(bytes, flips, cut)| {
            let mut gz = gzip(&bytes);
            check_idx(&gz);
            for (at, x) in flips {
                let i = at.index(gz.len());
                gz[i] ^= x;
            }
            check_idx(&gz);
            check_idx(&gz[..cut.index(gz.len() + 1)]);
        },
    );
}

#[test]
fn fuzz_cifar_records() {
    let labels = prop::collection::vec(any::<u8>(), 3);
    fuzz(
        "cifar records",
        (0usize..3, -2i64..3, any::<u8>(), labels),
        |(records, extra, fill, labels)| {
            let len = (records as i64 * cifar10::RECORD_LEN as i64 + extra).max(0) as usize;
            let mut bytes = vec![fill; len];
            for (r, &l) in labels.iter().enumerate().take(records) {
                if let Some(b) = bytes.get_mut(r * cifar10::RECORD_LEN) {
                    *b = l % 12;
                }
            }
            check_cifar(&bytes);
            check_idx(&bytes);
        },
    );
}
