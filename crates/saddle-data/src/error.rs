//! The one error type of saddle-data.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout saddle-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or using a data set.
///
/// Every variant about a file names the file. Readers never panic on bad input and never
/// allocate more than the file's length can justify: a malformed header is one of these errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The data set's folder or one of its files does not exist.
    #[error(
        "{}: not found; run `cargo xtask download {name}` (or set SADDLE_DATASETS to the folder \
         that holds `{name}/`)",
        path.display()
    )]
    Missing {
        /// Data set name as `cargo xtask download` spells it (`mnist`, `fashion-mnist`, `cifar10`).
        name: String,
        /// The folder or file that is missing.
        path: PathBuf,
    },
    /// The operating system refused to read the file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file (or the decompressed stream) holds no bytes at all.
    #[error("{}: empty file", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is shorter than its header (or the format) requires.
    #[error("{}: truncated: needs {needed} bytes but has {actual}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header or format requires.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file is longer than its header says.
    #[error("{}: {actual} bytes but the header describes {expected}: trailing data", path.display())]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Bytes the header describes.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The first four bytes are not the expected IDX magic number.
    #[error("{}: bad magic number 0x{found:08x}, expected 0x{expected:08x}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read.
        found: u32,
        /// The magic number required.
        expected: u32,
    },
    /// The IDX header announces the wrong number of dimensions.
    #[error("{}: {found} dimensions, expected {expected}", path.display())]
    BadDimensionCount {
        /// The file.
        path: PathBuf,
        /// Dimension count in the header.
        found: u8,
        /// Dimension count required (3 for images, 1 for labels).
        expected: u8,
    },
    /// The header's dimensions multiply to more than 2^64 (or the address space).
    #[error("{}: dimensions {dims:?} overflow", path.display())]
    Overflow {
        /// The file.
        path: PathBuf,
        /// The dimensions read from the header.
        dims: Vec<u64>,
    },
    /// A gzip file's header claims more data than the compressed file could possibly hold.
    #[error(
        "{}: header claims {claimed} bytes, more than a gzip file of this size can hold \
         (at most {limit})",
        path.display()
    )]
    Implausible {
        /// The file.
        path: PathBuf,
        /// Decompressed bytes the header claims.
        claimed: u64,
        /// Upper bound justified by the compressed length.
        limit: u64,
    },
    /// The gzip stream does not decompress (bad header, corrupt data, checksum mismatch).
    #[error("{}: gzip does not decompress: {message}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// What the decompressor reported.
        message: String,
    },
    /// A label is not a valid class index.
    #[error("{}: label {label} at index {index} is not below {classes}", path.display())]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Position of the label (record number).
        index: usize,
        /// The label read.
        label: u8,
        /// Number of classes.
        classes: usize,
    },
    /// The file's length is not a whole number of fixed-size records.
    #[error(
        "{}: {len} bytes is not a whole number of {record}-byte records (truncated?)",
        path.display()
    )]
    BadLength {
        /// The file.
        path: PathBuf,
        /// File length.
        len: u64,
        /// Record size.
        record: u64,
    },
    /// The content is well formed but not the shape this data set requires.
    #[error("{}: {problem}", path.display())]
    BadShape {
        /// The file.
        path: PathBuf,
        /// What is wrong (e.g. "images are 32×32, expected 28×28").
        problem: String,
    },
    /// An images file and its labels file disagree on the number of examples.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// Number of images.
        images: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Number of labels.
        labels: usize,
    },
    /// A caller passed an argument that cannot work (index out of range, batch size 0, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
