//! The inner maximisation of each training step: the batch's adversarial examples, made by
//! saddle-attacks as the configuration asks.

use saddle_attacks::{Attack, Fgsm, Pgd};
use saddle_autograd::Graph;
use saddle_models::{Classifier, Loss};
use saddle_tensor::rng::{Normal, Rng};
use saddle_tensor::{ArrayExt, Backend, TensorLike};

use crate::config::{BnMode, LossFunc, TrainConfig, TrainingMode};
use crate::error::{Result, TrainError};

/// The loss of the training attack.
pub fn attack_loss(f: LossFunc) -> Loss {
    match f {
        LossFunc::Xent => Loss::CrossEntropy,
        LossFunc::Cw => Loss::Cw { kappa: 50.0 },
    }
}

/// The batch the model is trained on at this step: `x` itself for natural training, else its
/// adversarial examples at radius `eps` (the model runs in evaluation mode during the attack,
/// or in training mode with `attack_bn_mode = "train"`; its mode is restored after).
pub fn adversarial_batch<B: Backend, M: Classifier<B>>(
    model: &mut M,
    cfg: &TrainConfig,
    eps: f32,
    x: &B::Tensor,
    y: &B::Tensor,
    rng: &mut Rng,
) -> Result<B::Tensor> {
    let loss = attack_loss(cfg.loss_func);
    let seed = rng.next_u64();
    let train_mode = cfg.attack_bn_mode == BnMode::Train;
    let out = match cfg.training {
        TrainingMode::Natural => return Ok(x.clone()),
        _ if eps == 0.0 => return Ok(x.clone()),
        TrainingMode::Fgsm => Fgsm::new(eps)?
            .loss(loss)
            .model_in_training_mode(train_mode)
            .perturb(model, x, y),
        TrainingMode::Pgd => Pgd::linf(eps, cfg.a, cfg.k)?
            .random_start(cfg.random_start)
            .loss(loss)
            .seed(seed)
            .model_in_training_mode(train_mode)
            .perturb(model, x, y),
        TrainingMode::Trades => {
            let mut noise = Rng::new(seed);
            return trades_batch(model, cfg, eps, x, &mut noise, train_mode);
        }
        TrainingMode::FastFgsm => Pgd::linf(eps, cfg.a, 1)?
            .random_start(true)
            .loss(loss)
            .seed(seed)
            .model_in_training_mode(train_mode)
            .perturb(model, x, y),
    };
    Ok(out?.x_adv)
}

/// TRADES' inner maximisation (Zhang et al. 2019, Algorithm 1): from `x + 0.001·N(0, I)`
/// (clipped to `[0, 1]`), `k` steps `x' ← Π(x' + a·sign(∇ₓ' Σ_i KL(f(x_i) ‖ f(x'_i))))` onto the
/// ε-ball around `x` and `[0, 1]`, the clean logits `f(x)` computed once and held fixed. The
/// model runs in batch-norm training mode if `train_mode`, evaluation mode otherwise (TRADES'
/// code: evaluation); the caller sets the mode it needs afterwards.
fn trades_batch<B: Backend, M: Classifier<B>>(
    model: &mut M,
    cfg: &TrainConfig,
    eps: f32,
    x: &B::Tensor,
    rng: &mut Rng,
    train_mode: bool,
) -> Result<B::Tensor> {
    let be = model.backend().clone();
    model.set_training(train_mode);
    let clean = model.logits(x)?;
    // The random start, drawn as one host array from the step's generator (the same values as
    // `0.001 * rng.normal()` element by element).
    let mut start = be.to_array(x)?;
    start.zip_mut_with(&rng.array(x.dims(), Normal::new(0.001)), |v, &n| {
        *v = (*v + n).clamp(0.0, 1.0)
    });
    let mut xa = be.from_array(&start)?;
    for _ in 0..cfg.k {
        let g = Graph::new(be.clone());
        let xv = g.leaf(xa.clone());
        let f = model.forward(&g, xv, false)?;
        let p = g.input(clean.clone());
        let kl = g.kl_div(p, f.logits)?;
        let total = g.sum_all(kl)?;
        let gx = g
            .backward(total)?
            .take(xv)
            .ok_or_else(|| TrainError::Attack("TRADES: no gradient reached the input".into()))?;
        xa = be.pgd_step_linf(&xa, x, &gx, cfg.a, eps)?;
    }
    Ok(xa)
}
