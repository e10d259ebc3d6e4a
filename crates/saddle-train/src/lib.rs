//! # saddle-train
//!
//! The outer minimisation of the saddle point problem: optimisers ([`Optimizer`]: Adam, SGD with
//! momentum and weight decay), learning-rate [`Schedule`]s, and the [`Trainer`] loop for natural,
//! FGSM, PGD (Madry et al. 2018) and fast FGSM (Wong et al. 2020) training, with checkpoints that
//! resume bit-identically.
//!
//! ```
//! use saddle_models::MnistNet;
//! use saddle_tensor::{cpu::Cpu, rng::{Rng, Uniform}, ArrayExt, Backend};
//! use saddle_train::{TrainConfig, Trainer};
//!
//! let b = Cpu::new();
//! // The paper's MNIST recipe with 3 attack steps of 0.1 and the smallest network (scale 1).
//! let config = TrainConfig { model_scale: 1, k: 3, a: 0.1, ..TrainConfig::mnist_paper() };
//! let mut trainer = Trainer::new(MnistNet::new(b, 1, config.random_seed)?, config)?;
//! let x = b.from_array(&Rng::new(1).array(&[8, 1, 28, 28], Uniform::new(0.0, 1.0)))?;
//! let y = b.from_vec(&[8], (0..8).map(|i| i as f32).collect())?;
//! let m = trainer.train_step(&x, &y, true)?; // PGD on the batch, then one Adam step there
//! assert_eq!((m.step, m.epsilon), (1, 0.3));
//!
//! // A checkpoint restored into a fresh trainer continues exactly where this one is.
//! let bytes = trainer.checkpoint()?;
//! let config = trainer.config().clone();
//! let mut resumed = Trainer::new(MnistNet::new(b, 1, 0)?, config)?;
//! resumed.restore(&bytes)?;
//! let (a, c) = (trainer.train_step(&x, &y, false)?, resumed.train_step(&x, &y, false)?);
//! assert_eq!(a.loss.to_bits(), c.loss.to_bits());
//! # Ok::<(), saddle_train::TrainError>(())
//! ```
//!
//! `Trainer::run` loops over a `saddle_data::Dataset` and reports each step and checkpoint to a
//! callback; `examples/02-train-robust-mnist.rs` in the repository trains a robust MNIST model
//! that way.
//!
//! **Invariants**: no I/O: checkpoints are handed to the caller as bytes (the CLI writes them to
//! a temporary file and renames it). A non-finite loss stops training before the update, so the
//! model and the last checkpoint stay good. Runs are reproducible from `random_seed`.

pub mod adversary;
pub mod comm;
pub mod config;
pub mod error;
pub mod experiments;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use comm::{CommError, GradientReducer, SingleProcess};
pub use config::{
    Augmentation, BnMode, KeepWeights, LossFunc, RobustCheck, TrainConfig, TrainingMode,
};
pub use error::{Result, TrainError};
pub use optim::{Optimizer, OptimizerKind};
pub use schedule::Schedule;
pub use trainer::{accuracy, CheckMetrics, Event, StepMetrics, StopReason, Stopped, Trainer};
