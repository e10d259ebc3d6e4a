//! CIFAR-10 in its official binary format.
//!
//! Each file of `cifar-10-batches-bin/` is a sequence of 3,073-byte records: one label byte
//! (`0..10`), then the red, green and blue 32×32 planes, row-major. Training uses
//! `data_batch_1.bin` … `data_batch_5.bin` (50,000 images), testing `test_batch.bin`
//! (10,000). `cargo xtask download cifar10` writes them to
//! `datasets/cifar10/cifar-10-batches-bin/`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Split};
use crate::error::{DataError, Result};
use crate::idx::check_labels;

/// Folder name under the datasets root, and the name `cargo xtask download` takes.
pub const NAME: &str = "cifar10";

/// Sub-folder of `datasets/cifar10/` that holds the batches (as in the official archive).
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";

/// Bytes per record: 1 label + 3 × 32 × 32 pixels.
pub const RECORD_LEN: usize = 1 + IMAGE_LEN;

/// Bytes per image (CHW).
pub const IMAGE_LEN: usize = 3 * 32 * 32;

/// The ten classes, in label order (the lines of `batches.meta.txt`).
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The batch files of a split, in order.
pub fn file_names(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        Split::Test => &["test_batch.bin"],
    }
}

/// The labels and CHW pixels of one batch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// One label `0..10` per record.
    pub labels: Vec<u8>,
    /// `labels.len() × 3072` bytes, each image's R, G, B planes.
    pub pixels: Vec<u8>,
}

/// Reads one batch file.
pub fn read_batch(path: impl AsRef<Path>) -> Result<Batch> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_batch(&bytes, path)
}

/// Parses the bytes of one batch file; `path` only names it in errors.
pub fn parse_batch(bytes: &[u8], path: &Path) -> Result<Batch> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if !bytes.len().is_multiple_of(RECORD_LEN) {
        return Err(DataError::BadLength {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record: RECORD_LEN as u64,
        });
    }
    let n = bytes.len() / RECORD_LEN;
    let labels: Vec<u8> = bytes.chunks_exact(RECORD_LEN).map(|r| r[0]).collect();
    check_labels(&labels, path, 10)?;
    let mut pixels = Vec::with_capacity(n * IMAGE_LEN);
    for record in bytes.chunks_exact(RECORD_LEN) {
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(Batch { labels, pixels })
}

/// Loads a split of CIFAR-10: `[n, 3, 32, 32]` images in `[0, 1]` and labels `0..10`.
///
/// `dir` is the folder holding the `.bin` files, or its parent (e.g. `datasets/cifar10`) when
/// that holds `cifar-10-batches-bin/`.
pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
    let dir = batches_dir(dir.as_ref())?;
    let mut labels = Vec::new();
    let mut pixels = Vec::new();
    for file in file_names(split) {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(DataError::Missing {
                name: NAME.to_string(),
                path,
            });
        }
        let batch = read_batch(&path)?;
        labels.extend_from_slice(&batch.labels);
        pixels.extend_from_slice(&batch.pixels);
    }
    let split_name = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    let n = labels.len();
    Dataset::from_u8(
        format!("{NAME}/{split_name}"),
        &pixels,
        labels,
        [n, 3, 32, 32],
        10,
    )
}

fn batches_dir(dir: &Path) -> Result<PathBuf> {
    let nested = dir.join(BATCHES_DIR);
    if nested.is_dir() {
        Ok(nested)
    } else if dir.is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Err(DataError::Missing {
            name: NAME.to_string(),
            path: dir.to_path_buf(),
        })
    }
}
