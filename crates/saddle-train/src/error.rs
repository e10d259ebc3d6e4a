//! The error type of saddle-train.

use saddle_models::ModelError;
use saddle_tensor::TensorError;
use thiserror::Error;

/// What went wrong while training.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The model failed (shapes, weights).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The attack that makes adversarial batches failed.
    #[error("attack: {0}")]
    Attack(String),
    /// The data set failed.
    #[error(transparent)]
    Data(#[from] saddle_data::DataError),
    /// An invalid configuration value, naming the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The loss became NaN or infinite; the model was not updated with that step.
    #[error("the training loss became {value} at step {step}; the model was left as it was after step {last_good} (lower the learning rate, or check the data)")]
    NonFinite {
        /// The step whose loss was not finite.
        step: u64,
        /// The value.
        value: f32,
        /// The last step that completed.
        last_good: u64,
    },
    /// A checkpoint could not be read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The gradient reduction across workers (ranks) failed at this step.
    #[error("gradient reduction at step {step}: {message}")]
    Comm {
        /// The step being reduced.
        step: u64,
        /// What the reducer reported.
        message: String,
    },
}

/// An attack's error, as the message of [`TrainError::Attack`].
impl From<saddle_attacks::AttackError> for TrainError {
    fn from(e: saddle_attacks::AttackError) -> Self {
        TrainError::Attack(e.to_string())
    }
}

/// Result of a training operation.
pub type Result<T> = std::result::Result<T, TrainError>;
