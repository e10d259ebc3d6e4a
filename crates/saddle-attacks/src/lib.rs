//! # saddle-attacks
//!
//! The inner maximisation of the saddle point problem of Madry et al. (2018),
//! `max_{δ∈S} L(θ, x + δ, y)`: threat models, FGSM, PGD with random starts and restarts, the CW
//! margin loss, targeted and transfer attacks, and AutoAttack's APGD.
//!
//! - [`ThreatModel`] ([`Linf`], [`L2`]): `random_init`, `step`, `project` — the set `S`,
//!   separate from the loop.
//! - [`Attack`]: `perturb(model, x, y) -> AttackResult` (adversarial batch, per-example loss and
//!   success, optional per-step loss trace). Implemented by [`Pgd`] (generic over the threat
//!   model), [`Fgsm`] and [`Apgd`] (Auto-PGD on cross-entropy, DLR or targeted DLR: the
//!   gradient stages of AutoAttack), [`Fab`] (FAB-T), [`Square`] (score-based, gradient-free)
//!   and [`HopSkipJump`] (decision-based: the predicted label only, L2).
//! - [`transfer()`]: craft on one model, evaluate on another.
//!
//! All parameters are in `[0, 1]` pixel units; inputs must be in `[0, 1]` (models normalise
//! internally). Each attack documents its paper and the paper's defaults.
//!
//! ```
//! use saddle_attacks::{Attack, Pgd, ThreatModel};
//! use saddle_models::MnistNet;
//! use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};
//!
//! let b = Cpu::new();
//! let mut net = MnistNet::new(b, 1, 7).unwrap(); // a tiny network (scale 1)
//! let mut rng = Rng::new(1);
//! let x = b.from_vec(&[4, 1, 28, 28], (0..4 * 784).map(|_| rng.next_f32()).collect()).unwrap();
//! let y = b.from_vec(&[4], vec![0.0, 1.0, 2.0, 3.0]).unwrap();
//!
//! // The paper's MNIST attack has 40 steps; 5 keep the example quick.
//! let pgd = Pgd::linf(0.3, 0.01, 5).unwrap().restarts(2).seed(42);
//! let res = pgd.perturb(&mut net, &x, &y).unwrap();
//!
//! let (xa, x0) = (b.to_vec(&res.x_adv).unwrap(), b.to_vec(&x).unwrap());
//! let eps = pgd.threat().eps();
//! assert!(xa.iter().zip(&x0).all(|(a, o)| (a - o).abs() <= eps + 2f32.powi(-24)));
//! assert!(xa.iter().all(|v| (0.0..=1.0).contains(v)));
//! assert_eq!(res.success.len(), 4);
//! ```
//!
//! **Invariants**: every adversarial example lies in `[0, 1]` and within the threat model up to
//! the rounding bound stated in [`threat`] (property-tested with `cargo xtask proptest`); the
//! model is in evaluation mode during an attack and gets its mode back afterwards, also on
//! error; invalid parameters and inputs are [`AttackError`]s, never panics. This crate does no
//! I/O and prints nothing.

pub mod apgd;
pub mod attack;
pub mod error;
pub mod fab;
pub mod hsj;
pub mod pgd;
pub mod square;
pub mod threat;
pub mod transfer;

pub use apgd::{Apgd, ApgdLoss};
pub use attack::{predict, Attack, AttackResult, LossTrace};
pub use error::{AttackError, Result};
pub use fab::Fab;
pub use hsj::HopSkipJump;
pub use pgd::{Fgsm, Pgd, Targeting, CW_PLUS};
pub use saddle_models::Loss;
/// The model side, re-exported so that attacking one's own network needs this crate only:
/// implement [`Classifier`] (its forward pass on [`saddle_autograd::Graph`]) and attack it.
pub use saddle_models::{Classifier, Forward, MnistNet, ParamSet};
pub use square::Square;
pub use threat::{Linf, ThreatModel, L2};
pub use transfer::{transfer, transfer_matrix, TransferMatrix, TransferReport};
pub use {saddle_autograd, saddle_models};
