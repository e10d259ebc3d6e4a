//! The one error type of saddle-tensor.

use thiserror::Error;

/// What went wrong in a tensor operation. Every variant names the operation.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TensorError {
    /// The shapes given to `op` do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The operation, for example `"matmul"`.
        op: &'static str,
        /// The shapes involved and what was expected of them.
        detail: String,
    },
    /// An argument is outside its valid range (a negative size, a label out of range, ...).
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What was wrong with the argument.
        detail: String,
    },
    /// The backend does not implement this operation.
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The backend's name.
        backend: String,
    },
    /// A failure inside the backend itself (device lost, out of memory, ...).
    #[error("{backend} backend: {detail}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What the device or driver reported.
        detail: String,
    },
}

/// Result of a tensor operation.
pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    /// A shape error for `op`, formatting the shapes given.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        TensorError::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// An invalid-argument error for `op`.
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        TensorError::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }
}
