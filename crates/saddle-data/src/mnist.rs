//! MNIST: 28×28 grey-scale digits, 60,000 for training and 10,000 for testing.
//!
//! [`load`] reads the four official IDX files from a folder (by default `datasets/mnist/`,
//! written by `cargo xtask download mnist`). Each file may also be gzip-compressed with a `.gz`
//! suffix.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Split};
use crate::error::{DataError, Result};
use crate::idx;

/// Folder name under the datasets root, and the name `cargo xtask download` takes.
pub const NAME: &str = "mnist";

/// The digits.
pub const CLASS_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// File names (without `.gz`) of the images and labels of a split.
pub fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// Loads a split of MNIST from `dir` (the folder holding the IDX files): `[n, 1, 28, 28]`
/// images in `[0, 1]` and labels `0..10`.
pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
    load_idx_dataset(dir.as_ref(), split, NAME)
}

/// Shared by MNIST and Fashion-MNIST, which have the same files and format.
pub(crate) fn load_idx_dataset(dir: &Path, split: Split, name: &str) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::Missing {
            name: name.to_string(),
            path: dir.to_path_buf(),
        });
    }
    let (images_name, labels_name) = file_names(split);
    let images_path = find_file(dir, images_name, name)?;
    let labels_path = find_file(dir, labels_name, name)?;
    let images = idx::read_images(&images_path)?;
    if (images.rows, images.cols) != (28, 28) {
        return Err(DataError::BadShape {
            path: images_path,
            problem: format!("images are {}×{}, expected 28×28", images.rows, images.cols),
        });
    }
    let labels = idx::read_labels(&labels_path, 10)?;
    if labels.len() != images.count {
        return Err(DataError::CountMismatch {
            images_path,
            images: images.count,
            labels_path,
            labels: labels.len(),
        });
    }
    let split_name = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    Dataset::from_u8(
        format!("{name}/{split_name}"),
        &images.pixels,
        labels,
        [images.count, 1, 28, 28],
        10,
    )
}

/// `dir/file`, or `dir/file.gz` when only the compressed form exists.
fn find_file(dir: &Path, file: &str, name: &str) -> Result<PathBuf> {
    let raw = dir.join(file);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{file}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        name: name.to_string(),
        path: raw,
    })
}
