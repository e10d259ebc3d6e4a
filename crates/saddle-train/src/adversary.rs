//! The inner maximisation of each training step: the batch's adversarial examples, made by
//! saddle-attacks as the configuration asks.

use saddle_attacks::{Attack, Fgsm, Pgd};
use saddle_autograd::Graph;
use saddle_models::{loss_and_input_grad, Classifier, Loss};
use saddle_tensor::rng::{Normal, Rng, Uniform};
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
        TrainingMode::NFgsm => {
            let mut noise = Rng::new(seed);
            return n_fgsm_batch(model, cfg, eps, x, y, &mut noise, train_mode);
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

/// N-FGSM's example (de Jorge et al. 2022): `x' = clip₀₁(x + η)` with `η ~ U[−kε, kε]` (`k =
/// n_fgsm_noise`, 2 in the paper), then `clip₀₁(x' + a·sign(∇ₓ' L(x', y)))` without projection
/// onto the ε-ball (the step below projects onto the (k + 1)ε ball, which a start within kε
/// and one step of `a ≤ ε` never leave; a larger `a` is cut there). The model runs in
/// batch-norm training mode if `train_mode`; the caller sets the mode it needs afterwards.
fn n_fgsm_batch<B: Backend, M: Classifier<B>>(
    model: &mut M,
    cfg: &TrainConfig,
    eps: f32,
    x: &B::Tensor,
    y: &B::Tensor,
    rng: &mut Rng,
    train_mode: bool,
) -> Result<B::Tensor> {
    let be = model.backend().clone();
    let r = cfg.n_fgsm_noise * eps;
    let (noise, _) = rng
        .array(x.dims(), Uniform::new(-r, r))
        .into_raw_vec_and_offset();
    let noise = be.from_vec(x.dims(), noise)?;
    let start = be.clamp(&be.add(x, &noise)?, 0.0, 1.0)?;
    model.set_training(train_mode);
    let (_, g, _) = loss_and_input_grad(&*model, &start, y, attack_loss(cfg.loss_func))?;
    Ok(be.pgd_step_linf(&start, x, &g, cfg.a, r + eps)?)
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
        // One step's work is one submission on a device backend, as in the PGD loop.
        be.step_end()?;
    }
    Ok(xa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_models::MnistNet;
    use saddle_tensor::cpu::Cpu;

    /// N-FGSM's examples: in `[0, 1]`, within 3ε of `x` and (the point of the method) often
    /// further than ε, a start of the same seed moved by exactly ±a wherever the box does not
    /// cut, and the same examples from the same seed.
    #[test]
    fn n_fgsm_leaves_the_eps_ball_by_design_and_stays_within_three_eps() {
        n_fgsm_examples(2.0);
    }

    /// With `n_fgsm_noise = 1` the start is drawn from the ε-ball and the examples stay within
    /// 2ε (and still leave the ε-ball where the step and the noise agree in sign).
    #[test]
    fn n_fgsm_noise_sets_the_start_radius() {
        n_fgsm_examples(1.0);
    }

    fn n_fgsm_examples(noise_mult: f32) {
        let b = Cpu::new();
        let mut model = MnistNet::new(b, 1, 3).unwrap();
        let n = 4;
        let mut r = Rng::new(5);
        let xs: Vec<f32> = (0..n * 784).map(|_| r.next_f32()).collect();
        let x = b.from_vec(&[n, 1, 28, 28], xs.clone()).unwrap();
        let y = b
            .from_vec(&[n], (0..n).map(|i| (i % 10) as f32).collect())
            .unwrap();
        let eps = 0.1;
        let cfg = TrainConfig {
            training: TrainingMode::NFgsm,
            epsilon: eps,
            a: eps,
            n_fgsm_noise: noise_mult,
            ..TrainConfig::default()
        };
        let run = |model: &mut MnistNet<Cpu>| {
            let adv = adversarial_batch(model, &cfg, eps, &x, &y, &mut Rng::new(11)).unwrap();
            b.to_vec(&adv).unwrap()
        };
        let adv = run(&mut model);
        assert_eq!(adv, run(&mut model), "same seed, same examples");
        // The start the attack drew: the same generator, seeded as adversarial_batch seeds it.
        let seed = Rng::new(11).next_u64();
        let r = noise_mult * eps;
        let noise = Rng::new(seed).array(&[n, 1, 28, 28], Uniform::new(-r, r));
        let (mut outside, mut free, mut beyond_r) = (0, 0, 0);
        for ((&a, &x0), &z) in adv.iter().zip(&xs).zip(noise.iter()) {
            assert!((0.0..=1.0).contains(&a), "{a}");
            // (k + 1)ε plus a few float roundings of values in [0, 1].
            assert!((a - x0).abs() <= r + eps + 1e-6, "{a} {x0}");
            outside += usize::from((a - x0).abs() > eps + 1e-6);
            beyond_r += usize::from((a - x0).abs() > r + 1e-6);
            let start = (x0 + z).clamp(0.0, 1.0);
            if a > 0.0 && a < 1.0 {
                free += 1;
                let step = (a - start).abs();
                assert!((step - eps).abs() < 1e-6 || step < 1e-6, "{a} {start}");
            }
        }
        // |η ± ε| > ε exactly when η lies on the step's side of 0: half of the coordinates
        // before the box cuts some; a projected attack would leave none.
        assert!(outside > adv.len() / 3, "{outside} of {}", adv.len());
        assert!(free > adv.len() / 2, "{free}");
        // The step takes examples past the noise's radius where it has the noise's sign and
        // the noise is beyond r − a: a quarter with k = 2, a half with k = 1, before the box
        // cuts some. (A larger radius than asked fails the bound above; a smaller one, the
        // exact ±a step from the start drawn with the radius asked.)
        assert!(beyond_r > adv.len() / 10, "{beyond_r} of {}", adv.len());
    }
}
