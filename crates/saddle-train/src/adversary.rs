//! The inner maximisation of each training step: the batch's adversarial examples, made by
//! saddle-attacks as the configuration asks.

use saddle_attacks::{Attack, Fgsm, Pgd};
use saddle_models::{Classifier, Loss};
use saddle_tensor::{rng::Rng, Backend};

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
    let err = |e: saddle_attacks::AttackError| TrainError::Attack(e.to_string());
    let loss = attack_loss(cfg.loss_func);
    let seed = rng.next_u64();
    let train_mode = cfg.attack_bn_mode == BnMode::Train;
    let out = match cfg.training {
        TrainingMode::Natural => return Ok(x.clone()),
        _ if eps == 0.0 => return Ok(x.clone()),
        TrainingMode::Fgsm => Fgsm::new(eps)
            .map_err(err)?
            .loss(loss)
            .model_in_training_mode(train_mode)
            .perturb(model, x, y),
        TrainingMode::Pgd => Pgd::linf(eps, cfg.a, cfg.k)
            .map_err(err)?
            .random_start(cfg.random_start)
            .loss(loss)
            .seed(seed)
            .model_in_training_mode(train_mode)
            .perturb(model, x, y),
        TrainingMode::FastFgsm => Pgd::linf(eps, cfg.a, 1)
            .map_err(err)?
            .random_start(true)
            .loss(loss)
            .seed(seed)
            .model_in_training_mode(train_mode)
            .perturb(model, x, y),
    };
    Ok(out.map_err(err)?.x_adv)
}
