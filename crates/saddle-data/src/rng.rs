//! The random number generator of the data pipeline: saddle-tensor's portable, seeded
//! xoshiro256++ ([`saddle_tensor::rng::Rng`]), so that shuffles, samples and augmentations are
//! bit-for-bit the same for a given seed on every platform and with every dependency version.

pub use saddle_tensor::rng::Rng;
