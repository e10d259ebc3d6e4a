//! saddle's numbered examples, each a short program that CI runs:
//!
//! | example | what it shows |
//! |---|---|
//! | `01-attack-your-own-model` | `Classifier` for your own network; PGD, APGD-CE, APGD-T, worst case |
//! | `02-train-robust-mnist` | PGD adversarial training with the library API, then evaluation |
//! | `03-load-pytorch-state-dict` | a PyTorch `state_dict` in safetensors, named `mnist`, evaluated |
//! | `04-cpu-autograd-ndarray` | the CPU backend and autograd alone, on `ndarray` arrays |
//!
//! `cargo run -p saddle-examples --example NAME` runs one (02 and 03 read MNIST from
//! `datasets/mnist`, fetched by `cargo xtask download mnist`). This library holds nothing else.

/// The crates' READMEs, compiled and run as doc-tests (`cargo test -p saddle-examples --doc`),
/// so that their examples keep working. (saddle-data's reads the data sets from a relative path
/// and saddle-wgsl's needs a GPU; their crate docs carry tested examples instead.)
#[cfg(doctest)]
mod readmes {
    #[doc = include_str!("../crates/saddle-tensor/README.md")]
    struct SaddleTensor;
    #[doc = include_str!("../crates/saddle-autograd/README.md")]
    struct SaddleAutograd;
    #[doc = include_str!("../crates/saddle-models/README.md")]
    struct SaddleModels;
    #[doc = include_str!("../crates/saddle-attacks/README.md")]
    struct SaddleAttacks;
    #[doc = include_str!("../crates/saddle-train/README.md")]
    struct SaddleTrain;
}
