//! The sanity checks of Carlini et al. (2019), *On Evaluating Adversarial Robustness*, that
//! `saddle eval` runs on every evaluation (on the first images, to stay cheap) and reports as
//! warnings with their evidence.

use anyhow::{Context, Result};
use saddle_attacks::{Attack, Pgd};

use super::suite::Norm;
use saddle_models::{loss_and_input_grad, Classifier, Loss};
use saddle_tensor::{Backend, TensorLike};

/// Images the checks run on (the first of the first batch).
pub const IMAGES: usize = 100;

/// One check: its name, whether it passed, and what was measured.
#[derive(Clone, Debug)]
pub struct Flag {
    pub name: &'static str,
    pub ok: bool,
    pub evidence: String,
}

impl Flag {
    pub fn new(name: &'static str, ok: bool, evidence: String) -> Self {
        Flag { name, ok, evidence }
    }
}

/// Runs the checks on the first [`IMAGES`] images of `x` (labels `labels`): a deterministic
/// model, logits rather than probabilities, non-zero input gradients, ε = 0 giving the clean
/// accuracy, accuracy not rising with ε, and nothing robust at the radius that reaches every
/// image (L∞ ε = 1; L2 ε = √d).
pub fn checks<B: Backend, M: Classifier<B>>(
    model: &mut M,
    x: &B::Tensor,
    y: &B::Tensor,
    labels: &[usize],
    norm: Norm,
    eps: f32,
    alpha: f32,
    seed: u64,
) -> Result<Vec<Flag>> {
    let b = model.backend().clone();
    let n = labels.len().min(IMAGES);
    let per = x.numel() / labels.len().max(1);
    let mut dims = x.dims().to_vec();
    dims[0] = n;
    let x = b.from_vec(&dims, b.to_vec(x)?[..n * per].to_vec())?;
    let y = b.from_vec(&[n], b.to_vec(y)?[..n].to_vec())?;
    let labels = &labels[..n];
    let k = model.num_classes();
    let was_training = model.is_training();
    model.set_training(false);
    let mut flags = Vec::new();

    let z1 = b.to_vec(&model.logits(&x)?)?;
    let z2 = b.to_vec(&model.logits(&x)?)?;
    let diff = z1
        .iter()
        .zip(&z2)
        .map(|(a, c)| (a - c).abs())
        .fold(0.0f32, f32::max);
    flags.push(Flag::new(
        "deterministic model",
        z1 == z2,
        if z1 == z2 {
            format!("two forward passes of the same {n} images give identical logits")
        } else {
            format!(
                "two forward passes of the same {n} images differ by up to {diff:e}: a \
                 randomised model needs attacks that average over its randomness (EOT)"
            )
        },
    ));
    let softmax_like = z1.chunks(k).all(|r| {
        r.iter().all(|v| (0.0..=1.0).contains(v))
            && (r.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-3
    });
    flags.push(Flag::new(
        "outputs are logits",
        !softmax_like,
        if softmax_like {
            "every output row is in [0, 1] and sums to 1: the model ends in a softmax, so \
             cross-entropy attacks see vanishing gradients; evaluate its logits"
                .into()
        } else {
            format!("the outputs of {n} images are not rows of probabilities")
        },
    ));
    let clean: Vec<bool> = saddle_models::argmax_rows(&z1, k)
        .iter()
        .zip(labels)
        .map(|(p, l)| p == l)
        .collect();
    let (_, g, _) = loss_and_input_grad(&*model, &x, &y, Loss::CrossEntropy)?;
    let g = b.to_vec(&g)?;
    let zero = (0..n)
        .filter(|&i| clean[i] && g[i * per..(i + 1) * per].iter().all(|&v| v == 0.0))
        .count();
    flags.push(Flag::new(
        "non-zero input gradients",
        zero == 0,
        format!(
            "{zero} of {} correctly classified images have an input gradient of exactly zero \
             (gradient attacks cannot move them: try the CW or DLR loss, or Square)",
            clean.iter().filter(|&&c| c).count()
        ),
    ));
    model.set_training(was_training);

    let acc = |model: &mut M, e: f32, a: f32, steps: usize| -> Result<usize> {
        let r = match norm {
            Norm::Linf => Pgd::linf(e, a, steps)?.seed(seed).perturb(model, &x, &y),
            Norm::L2 => Pgd::l2(e, a, steps)?.seed(seed).perturb(model, &x, &y),
        }
        .with_context(|| format!("sanity check: PGD-{steps} at ε = {e}"))?;
        Ok((0..n).filter(|&i| r.predictions[i] == labels[i]).count())
    };
    // The radius at which any image of [0, 1]^d is reachable.
    let all = match norm {
        Norm::Linf => 1.0f32,
        Norm::L2 => (per as f32).sqrt(),
    };
    let clean_n = clean.iter().filter(|&&c| c).count();
    let at0 = acc(model, 0.0, alpha, 5)?;
    flags.push(Flag::new(
        "ε = 0 gives the clean accuracy",
        at0 == clean_n,
        format!("PGD-5 at ε = 0 leaves {at0} of {n} images correct; clean: {clean_n}"),
    ));
    let at_eps = acc(model, eps, alpha, 10)?;
    let e2 = (2.0 * eps).min(all);
    let at_2eps = acc(model, e2, 2.0 * alpha, 10)?;
    flags.push(Flag::new(
        "accuracy does not rise with ε",
        at_2eps <= at_eps,
        format!("PGD-10: {at_eps} of {n} correct at ε = {eps}, {at_2eps} at ε = {e2}"),
    ));
    let at1 = acc(model, all, 0.25 * all, 10)?;
    flags.push(Flag::new(
        "nothing is robust at ε = 1",
        at1 == 0,
        format!(
            "PGD-10 at ε = {all} (any image reachable) leaves {at1} of {n} images correct{}",
            if at1 > 0 {
                ": the gradients do not lead the attack (gradient masking?)"
            } else {
                ""
            }
        ),
    ));
    Ok(flags)
}

/// The convergence check: `twice` (the strongest gradient attack with doubled steps) on the
/// first `m` images left `doubled_correct` correct where the attack itself left `correct`. More
/// than one standard error (`√(p(1 − p)·m)` images, `p = correct/m`; at least one image) fewer
/// means the attack had not converged.
pub fn convergence(
    name: &str,
    twice: &str,
    m: usize,
    correct: usize,
    doubled_correct: usize,
) -> Flag {
    let p = correct as f64 / m.max(1) as f64;
    let se = (p * (1.0 - p) * m as f64).sqrt().max(1.0);
    let drop = correct as f64 - doubled_correct as f64;
    let ok = drop <= se + 1e-9; // p(1 − p)·m is inexact in binary (0.9·0.1·100 < 9)
    Flag::new(
        "converged",
        ok,
        format!(
            "{twice} leaves {doubled_correct} of the first {m} images correct, {name} {correct} \
             (one standard error: {se:.1} images){}",
            if ok {
                ""
            } else {
                ": not converged; run the attack longer or with more restarts"
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convergence_flags_a_drop_of_more_than_one_standard_error() {
        // 100 images, 90 correct: one standard error is 3 images.
        assert!(convergence("pgd40", "pgd80x1", 100, 90, 87).ok);
        assert!(!convergence("pgd40", "pgd80x1", 100, 90, 86).ok);
        // No spread at p = 1: any single image more is within the one-image floor, two are not.
        assert!(convergence("pgd40", "pgd80x1", 50, 50, 49).ok);
        assert!(!convergence("pgd40", "pgd80x1", 50, 50, 48).ok);
        // A stronger original (fewer correct) is never flagged.
        assert!(convergence("pgd40", "pgd80x1", 50, 30, 35).ok);
    }
}
