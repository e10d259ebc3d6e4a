//! # saddle-data
//!
//! Readers for MNIST, Fashion-MNIST and CIFAR-10, a seeded batcher, and the CIFAR-10
//! augmentation used by *Towards Deep Learning Models Resistant to Adversarial Attacks*
//! (Madry et al., 2018).
//!
//! ```no_run
//! use saddle_data::{mnist, Augment, Batcher, Rng, Split};
//! let train = mnist::load("datasets/mnist", Split::Train)?;   // [60000, 1, 28, 28] in [0, 1]
//! let mut batcher = Batcher::new(train.len(), 50, true, 0)?;
//! let (x, y) = train.batch(batcher.next_batch())?;             // 50·784 pixels, 50 labels
//! assert_eq!((x.len(), y.len()), (50 * 784, 50));
//!
//! let cifar = saddle_data::cifar10::load("datasets/cifar10", Split::Train)?;
//! let idx = Batcher::new(cifar.len(), 128, true, 0)?.next_batch().to_vec();
//! let (mut x, _y) = cifar.batch(&idx)?;
//! Augment::CIFAR10.apply(&mut x, cifar.batch_shape(idx.len()), &mut Rng::seed_from_u64(1))?;
//! # Ok::<(), saddle_data::DataError>(())
//! ```
//!
//! **Invariants**: readers never trust a file. Magic numbers, dimension counts, lengths and
//! label ranges are checked and reported as a [`DataError`] naming the file; nothing is
//! allocated beyond what the file's length justifies; no input makes a reader panic. This crate
//! reads files only: no network, no printing. The files come from `cargo xtask download`.

pub mod augment;
pub mod batcher;
pub mod cifar10;
pub mod dataset;
pub mod error;
pub mod fashion_mnist;
pub mod idx;
pub mod mnist;
pub mod rng;

use std::path::PathBuf;

pub use augment::{crop_flip, Augment};
pub use batcher::Batcher;
pub use dataset::{Dataset, Split};
pub use error::{DataError, Result};
pub use rng::Rng;

/// Environment variable naming the datasets root (the folder holding `mnist/`,
/// `fashion-mnist/` and `cifar10/`).
pub const DATASETS_ENV: &str = "SADDLE_DATASETS";

/// The datasets root: `$SADDLE_DATASETS` if set and not empty, else `datasets` relative to the
/// current directory (the workspace root when commands are run from there).
pub fn datasets_dir() -> PathBuf {
    std::env::var_os(DATASETS_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("datasets"))
}
