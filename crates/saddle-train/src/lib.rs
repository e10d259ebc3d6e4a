//! # saddle-train
//!
//! The outer minimisation of the saddle point problem: optimisers ([`Optimizer`]: Adam, SGD with
//! momentum and weight decay), learning-rate [`Schedule`]s, and the [`Trainer`] loop for natural,
//! FGSM, PGD (Madry et al. 2018) and fast FGSM (Wong et al. 2020) training, with checkpoints that
//! resume bit-identically.
//!
//! **Invariants**: no I/O: checkpoints are handed to the caller as bytes (the CLI writes them to
//! a temporary file and renames it). A non-finite loss stops training before the update, so the
//! model and the last checkpoint stay good. Runs are reproducible from `random_seed`.

pub mod adversary;
pub mod config;
pub mod error;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::{Augmentation, BnMode, LossFunc, TrainConfig, TrainingMode};
pub use error::{Result, TrainError};
pub use optim::{Optimizer, OptimizerKind};
pub use schedule::Schedule;
pub use trainer::{accuracy, Event, StepMetrics, Trainer};
