//! # saddle-tensor
//!
//! Shapes, the [`Backend`] trait and the CPU backend ([`cpu::Cpu`], on ndarray) of saddle.
//!
//! The trait holds the few operations that the models, attacks and training of *Towards Deep
//! Learning Models Resistant to Adversarial Attacks* (Madry et al., 2018) need: matmul,
//! convolution and its two gradients, max-pool, element-wise ops, reductions, the losses, batch
//! norm, and the fused PGD step. Every backend passes the same op suite (module `testing`, behind
//! the cargo feature `testing`, so that a plain user does not compile it), which compares it with
//! a naive float64 reference (module `reference`, same feature) and with finite differences.
//! [`ArrayExt`] moves [`ndarray`] arrays onto any backend and back; [`rng::Rng`] is the seeded
//! generator that every random draw of saddle comes from (host arrays through `ndarray_rand`).
//!
//! ```
//! use saddle_tensor::{cpu::Cpu, Backend, TensorLike};
//! let b = Cpu::new();
//! let x = b.from_vec(&[2, 2], vec![1.0, -2.0, 3.0, -4.0]).unwrap();
//! let y = b.relu(&x).unwrap();
//! assert_eq!(b.to_vec(&y).unwrap(), vec![1.0, 0.0, 3.0, 0.0]);
//! assert_eq!(y.dims(), &[2, 2]);
//! ```
//!
//! **Invariants**: no operation panics on bad shapes or arguments; each returns a
//! [`TensorError`] naming the operation and the shapes. This crate does no I/O.

#[cfg(feature = "testing")]
pub mod alloc_count;
pub mod array;
pub mod backend;
pub mod cpu;
pub mod error;
#[cfg(feature = "testing")]
pub mod reference;
pub mod rng;
pub mod shape;
#[cfg(feature = "testing")]
pub mod testing;

pub use array::ArrayExt;
pub use backend::{
    Activation, AdamParams, Backend, BatchNormGrads, BatchNormStats, SgdParams, TensorLike,
};
pub use error::{Result, TensorError};
pub use shape::Conv2dParams;
