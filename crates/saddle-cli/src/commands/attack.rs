//! `saddle attack`: adversarial examples for a batch of images.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use saddle_attacks::{Attack, Fgsm, Loss, Pgd};
use saddle_models::Classifier;
use saddle_tensor::{Backend, TensorLike};

use super::{in_pool, load_images, load_labels, load_model};
use crate::{fsutil, npy};

/// Which attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    /// One signed step of size ε (Goodfellow et al. 2015).
    Fgsm,
    /// Projected gradient descent (Madry et al. 2018).
    Pgd,
}

/// Which loss the attack ascends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LossKind {
    /// Cross-entropy.
    Xent,
    /// CW margin loss with κ = 50 (mnist_challenge's "cw").
    Cw,
}

/// Arguments of `saddle attack`.
#[derive(clap::Args, Debug)]
pub struct AttackArgs {
    /// Model weights (safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The architecture (mnist, wrn-madry-DEPTH-WIDTH, wrn-DEPTH-WIDTH): required for a file
    /// without `arch` metadata (a state_dict saved from PyTorch), checked against it otherwise.
    #[arg(long)]
    arch: Option<String>,
    /// Images, float32 NCHW in [0, 1] ([n, 1, 28, 28] for MNIST, [n, 3, 32, 32] for CIFAR-10).
    #[arg(long)]
    inputs: PathBuf,
    /// True labels, integer [n].
    #[arg(long)]
    labels: PathBuf,
    /// The attack.
    #[arg(long, value_enum)]
    attack: AttackKind,
    /// L∞ radius in [0, 1] pixel units.
    #[arg(long, allow_hyphen_values = true)]
    eps: f32,
    /// PGD step size (default ε/30, the paper's 0.01 at ε = 0.3).
    #[arg(long, allow_hyphen_values = true)]
    alpha: Option<f32>,
    /// PGD steps.
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// Start PGD from a uniform point of the ε-ball (the default).
    #[arg(long, overrides_with = "no_random_start")]
    random_start: bool,
    /// Start PGD from the clean image.
    #[arg(long)]
    no_random_start: bool,
    /// PGD restarts; the worst case per example is kept.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Loss to ascend.
    #[arg(long, value_enum, default_value = "xent")]
    loss: LossKind,
    /// Seed of the random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the adversarial images (float32, same shape as the inputs).
    #[arg(long)]
    out: PathBuf,
    /// Also write a PNG grid: each clean image above its adversarial one.
    #[arg(long)]
    png: Option<PathBuf>,
    #[command(flatten)]
    compute: super::Compute,
}

/// `saddle attack`.
pub fn run(a: AttackArgs) -> Result<()> {
    if !(a.eps.is_finite() && a.eps >= 0.0) {
        bail!(
            "--eps {}: expected a non-negative number (pixel units, e.g. 0.3 for MNIST)",
            a.eps
        );
    }
    in_pool(a.compute.threads, || {
        crate::commands::with_backend!(a.compute.device, |b| attack_on(&b, &a))
    })
}

fn attack_on<B: Backend>(b: &B, a: &AttackArgs) -> Result<()> {
    let alpha = a.alpha.unwrap_or(a.eps / 30.0);
    let b = b.clone();
    let mut model = load_model(&b, &a.model, a.arch.as_deref())?;
    let x = load_images(&b, &model, &a.inputs)?;
    let n = x.dims()[0];
    let y = load_labels(&b, &a.labels, n, model.num_classes())?;
    let loss = match a.loss {
        LossKind::Xent => Loss::CrossEntropy,
        LossKind::Cw => Loss::Cw { kappa: 50.0 },
    };
    let attack: Box<dyn Attack<B>> = match a.attack {
        AttackKind::Fgsm => Box::new(Fgsm::new(a.eps)?.loss(loss)),
        AttackKind::Pgd => Box::new(
            Pgd::linf(a.eps, alpha, a.steps)?
                .random_start(!a.no_random_start)
                .restarts(a.restarts)
                .loss(loss)
                .seed(a.seed),
        ),
    };
    let r = attack
        .perturb(&mut model, &x, &y)
        .context("attack failed")?;
    let adv = b.to_vec(&r.x_adv)?;
    fsutil::write_atomic(&a.out, &npy::encode_f32(x.dims(), &adv))?;
    let labels = b.to_vec(&y)?;
    let robust = r
        .predictions
        .iter()
        .zip(&labels)
        .filter(|(p, &l)| **p as f32 == l)
        .count();
    eprintln!(
        "{} on {n} images: accuracy under attack {:.2}%; wrote {}",
        attack.name(),
        100.0 * robust as f64 / n.max(1) as f64,
        a.out.display()
    );
    if let Some(png) = &a.png {
        let clean = b.to_vec(&x)?;
        let d = x.dims().to_vec();
        fsutil::write_atomic(png, &grid_png(&clean, &adv, [d[0], d[1], d[2], d[3]])?)?;
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}

/// A PNG of up to 10 columns: each clean image with its adversarial version below it.
fn grid_png(clean: &[f32], adv: &[f32], [n, c, h, w]: [usize; 4]) -> Result<Vec<u8>> {
    let cols = n.clamp(1, 10);
    let rows = n.div_ceil(cols).min(10);
    let (gw, gh) = (cols * (w + 2), rows * (2 * h + 4));
    let mut img = vec![0u8; gw * gh * 3];
    for i in 0..(rows * cols).min(n) {
        let (gx, gy) = ((i % cols) * (w + 2) + 1, (i / cols) * (2 * h + 4) + 1);
        for (k, src) in [clean, adv].iter().enumerate() {
            for yy in 0..h {
                for xx in 0..w {
                    for ch in 0..3 {
                        let cc = if c == 3 { ch } else { 0 };
                        let v = src[((i * c + cc) * h + yy) * w + xx];
                        let p = ((gy + k * (h + 1) + yy) * gw + gx + xx) * 3 + ch;
                        img[p] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    }
                }
            }
        }
    }
    crate::plot::rgb_png(gw as u32, gh as u32, &img)
}
