//! # saddle-train
//!
//! The outer minimisation: optimisers (Adam, SGD with momentum), learning-rate schedules, natural,
//! FGSM, PGD and fast adversarial training loops, and checkpoints. (Being written: see the
//! training issue.)
