//! The one error type of saddle-attacks.

use saddle_models::ModelError;
use saddle_tensor::TensorError;
use thiserror::Error;

/// What went wrong setting up or running an attack. Every variant names the attack (or threat
/// model) and the offending value.
#[derive(Debug, Error)]
pub enum AttackError {
    /// The radius ε is negative, NaN or infinite.
    #[error("{attack}: ε = {eps} is invalid: it must be finite and at least 0")]
    InvalidEpsilon {
        /// The attack or threat model, for example `"pgd"` or `"linf"`.
        attack: &'static str,
        /// The value given.
        eps: f32,
    },
    /// The step size α is zero, negative, NaN or infinite.
    #[error("{attack}: step size α = {alpha} is invalid: it must be finite and greater than 0")]
    InvalidStepSize {
        /// The attack.
        attack: &'static str,
        /// The value given.
        alpha: f32,
    },
    /// A count that must be positive is zero (PGD steps, restarts).
    #[error("{attack}: the number of {what} is 0; it must be at least 1")]
    ZeroCount {
        /// The attack.
        attack: &'static str,
        /// What was counted: `"steps"` or `"restarts"`.
        what: &'static str,
    },
    /// The model has fewer classes than the attack's objective needs (DLR: 3; targeted DLR: 4
    /// and one more than the number of targets).
    #[error("{attack}: the model has {classes} classes; this attack needs at least {need}")]
    TooFewClasses {
        /// The attack.
        attack: &'static str,
        /// The model's number of classes.
        classes: usize,
        /// The number needed.
        need: usize,
    },
    /// A fraction that must lie in `(0, 1]` does not (the Square attack's `p_init`).
    #[error("{attack}: {what} = {value} is invalid: it must be in (0, 1]")]
    InvalidFraction {
        /// The attack.
        attack: &'static str,
        /// Which parameter, for example `"p_init"`.
        what: &'static str,
        /// The value given.
        value: f32,
    },
    /// The CW loss confidence κ is NaN or infinite.
    #[error("{attack}: CW confidence κ = {kappa} is invalid: it must be finite")]
    InvalidKappa {
        /// The attack.
        attack: &'static str,
        /// The value given.
        kappa: f32,
    },
    /// An input pixel is outside `[0, 1]` or is not finite.
    #[error(
        "{attack}: input pixel {index} (example {example}) is {value}; inputs must be finite and \
         in [0, 1]"
    )]
    InputOutOfRange {
        /// The attack.
        attack: &'static str,
        /// Flat index of the pixel in the batch.
        index: usize,
        /// The example it belongs to.
        example: usize,
        /// Its value.
        value: f32,
    },
    /// The batch of images and the labels (or targets) do not have the same batch size.
    #[error("{attack}: images {x_dims:?} and {what} {y_dims:?} do not form a batch: {what} must be [{n}]")]
    BatchMismatch {
        /// The attack.
        attack: &'static str,
        /// `"labels"` or `"targets"`.
        what: &'static str,
        /// Shape of the images.
        x_dims: Vec<usize>,
        /// Shape of the labels.
        y_dims: Vec<usize>,
        /// The batch size of the images (0 if they have no axes).
        n: usize,
    },
    /// A label or target is not a class index of the model.
    #[error("{attack}: {what} {value} of example {index} is not a class index in 0..{classes}")]
    InvalidLabel {
        /// The attack.
        attack: &'static str,
        /// `"label"` or `"target"`.
        what: &'static str,
        /// The example.
        index: usize,
        /// The value found.
        value: f32,
        /// The model's number of classes.
        classes: usize,
    },
    /// The gradient of the loss with respect to the input has a NaN entry: the attack cannot
    /// take a meaningful step (a diverged model, NaN weights, overflowing logits).
    #[error(
        "{attack}: the loss gradient is NaN at pixel {index} (example {example}) at step {step} \
         of restart {restart}"
    )]
    NanGradient {
        /// The attack or threat model.
        attack: &'static str,
        /// The restart (0-based).
        restart: usize,
        /// The step (0-based).
        step: usize,
        /// Flat index of the first NaN entry.
        index: usize,
        /// The example it belongs to.
        example: usize,
    },
    /// A point handed to a threat model has a non-finite coordinate where a finite one is needed.
    #[error("{attack}: {what} has the non-finite value {value} at index {index}")]
    NonFinite {
        /// The threat model operation, for example `"l2 project"`.
        attack: &'static str,
        /// Which tensor.
        what: &'static str,
        /// Flat index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The model failed (shapes, weights).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed (shapes, device).
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Result of an attack.
pub type Result<T> = std::result::Result<T, AttackError>;

/// Checks ε: finite and at least 0.
pub(crate) fn check_eps(attack: &'static str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(AttackError::InvalidEpsilon { attack, eps })
    }
}

/// Checks α: finite and greater than 0.
pub(crate) fn check_alpha(attack: &'static str, alpha: f32) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(AttackError::InvalidStepSize { attack, alpha })
    }
}
