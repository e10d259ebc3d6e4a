//! # saddle-attacks
//!
//! The inner maximisation of the saddle point problem: threat models (L∞, L2), FGSM, PGD with
//! random starts and restarts, the CW margin loss, targeted and transfer attacks. (Being written:
//! see the attacks issue.)
