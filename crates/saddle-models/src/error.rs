//! The error type of saddle-models.

use saddle_tensor::TensorError;
use thiserror::Error;

/// What went wrong building, running, loading or saving a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A tensor operation failed (shapes, arguments, device).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The bytes are not a valid safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// The file is valid but does not fit the model (missing tensor, wrong shape or dtype).
    #[error("weights do not fit the model: {0}")]
    Mismatch(String),
    /// An invalid model configuration (for example a capacity scale of 0).
    #[error("invalid model configuration: {0}")]
    Config(String),
}

/// Result of a model operation.
pub type Result<T> = std::result::Result<T, ModelError>;
