//! Fashion-MNIST: 28×28 grey-scale clothing images, same files and format as MNIST.
//!
//! [`load`] reads the four IDX files from a folder (by default `datasets/fashion-mnist/`,
//! written by `cargo xtask download fashion-mnist`); `.gz` forms are accepted too.

use std::path::Path;

use crate::dataset::{Dataset, Split};
use crate::error::Result;

/// Folder name under the datasets root, and the name `cargo xtask download` takes.
pub const NAME: &str = "fashion-mnist";

/// The ten classes, in label order.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Loads a split of Fashion-MNIST from `dir`: `[n, 1, 28, 28]` images in `[0, 1]`, labels
/// `0..10`. The file names are MNIST's ([`crate::mnist::file_names`]).
pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Dataset> {
    crate::mnist::load_idx_dataset(dir.as_ref(), split, NAME)
}
