//! The [`Attack`] interface, its [`AttackResult`], and what every attack shares: checking its
//! inputs, running the model in evaluation mode, reading predictions.

use std::ops::{Deref, DerefMut};

use saddle_models::Classifier;
pub(crate) use saddle_models::{argmax_rows, argmin_rows};
use saddle_tensor::{Backend, TensorLike};

use crate::error::{AttackError, Result};

/// An adversarial attack: given a model and a batch `x` in `[0, 1]` with labels `y` (`[n]`,
/// class indices as `f32`), finds perturbed inputs that the model gets wrong.
///
/// The model runs in evaluation mode during the attack and is put back in the mode it was in
/// afterwards, also when the attack fails with an error (or panics). That is why it is taken by
/// `&mut`; nothing else about it changes.
pub trait Attack<B: Backend> {
    /// A short name for reports, for example `"pgd"` or `"fgsm"`.
    fn name(&self) -> &'static str;

    /// Attacks the batch `x` with true labels `y`.
    ///
    /// # Errors
    /// [`AttackError`] for invalid parameters, inputs outside `[0, 1]`, labels that do not fit
    /// the batch or the model, a NaN gradient, or a failing model.
    fn perturb(
        &self,
        model: &mut dyn Classifier<B>,
        x: &B::Tensor,
        y: &B::Tensor,
    ) -> Result<AttackResult<B>>;
}

/// What an attack found, per example.
#[derive(Clone, Debug)]
pub struct AttackResult<B: Backend> {
    /// The adversarial batch, shaped like the input, inside the threat model and `[0, 1]`.
    pub x_adv: B::Tensor,
    /// The objective the attack maximised, at `x_adv`: the loss of the true label for an
    /// untargeted attack, the **negated** loss of the target class for a targeted one (so that
    /// higher is always stronger).
    pub loss: Vec<f32>,
    /// Whether the attack succeeded: the model's prediction at `x_adv` differs from the label
    /// (untargeted) or equals the target (targeted).
    pub success: Vec<bool>,
    /// The model's predicted class at `x_adv`.
    pub predictions: Vec<usize>,
    /// The per-step objective, when asked for (`Pgd::trace(true)`).
    pub trace: Option<LossTrace>,
}

impl<B: Backend> AttackResult<B> {
    /// The result of attacking an empty batch `x`: `x` itself and no examples.
    pub(crate) fn empty(x: &B::Tensor) -> Self {
        AttackResult {
            x_adv: x.clone(),
            loss: Vec::new(),
            success: Vec::new(),
            predictions: Vec::new(),
            trace: None,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.success.len()
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.success.is_empty()
    }

    /// Fraction of examples on which the attack succeeded (0 for an empty batch).
    pub fn success_rate(&self) -> f64 {
        if self.success.is_empty() {
            return 0.0;
        }
        self.success.iter().filter(|&&s| s).count() as f64 / self.success.len() as f64
    }

    /// Number of examples whose prediction at `x_adv` equals `labels[i]`: the robust accuracy
    /// numerator against the true labels.
    pub fn correct(&self, labels: &[usize]) -> usize {
        self.predictions
            .iter()
            .zip(labels)
            .filter(|(p, y)| p == y)
            .count()
    }
}

/// Objective values along the attack, for the paper's loss-landscape figures.
#[derive(Clone, Debug, PartialEq)]
pub struct LossTrace {
    /// `losses[r][t][i]`: the objective (as [`AttackResult::loss`]) of example `i` at iterate
    /// `t` of restart `r`; `t = 0` is the starting point (random or clean) and the last entry
    /// is the final iterate. A restart that stopped early (every example succeeded, with early
    /// stopping on) has fewer entries.
    pub losses: Vec<Vec<Vec<f32>>>,
}

/// Puts a model in evaluation mode (or, when asked, training mode) for its lifetime and
/// restores the previous mode on drop (also on an early return with `?` or a panic).
pub(crate) struct ModeGuard<'a, B: Backend> {
    model: &'a mut dyn Classifier<B>,
    was_training: bool,
}

impl<'a, B: Backend> ModeGuard<'a, B> {
    pub(crate) fn eval(model: &'a mut dyn Classifier<B>) -> Self {
        Self::set(model, false)
    }

    /// The model in training mode if `training`, else in evaluation mode.
    pub(crate) fn set(model: &'a mut dyn Classifier<B>, training: bool) -> Self {
        let was_training = model.is_training();
        model.set_training(training);
        ModeGuard {
            model,
            was_training,
        }
    }
}

impl<'a, B: Backend> Deref for ModeGuard<'a, B> {
    type Target = dyn Classifier<B> + 'a;
    fn deref(&self) -> &Self::Target {
        &*self.model
    }
}

impl<B: Backend> DerefMut for ModeGuard<'_, B> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.model
    }
}

impl<B: Backend> Drop for ModeGuard<'_, B> {
    fn drop(&mut self) {
        self.model.set_training(self.was_training);
    }
}

/// The model's predicted class for each image of `x`, in whatever mode the model is in.
///
/// # Errors
/// A model error (shapes).
pub fn predict<B: Backend>(model: &dyn Classifier<B>, x: &B::Tensor) -> Result<Vec<usize>> {
    let b = model.backend();
    let logits = model.logits(x)?;
    Ok(argmax_rows(&b.to_vec(&logits)?, model.num_classes()))
}

/// The logits of `x` read back (`[n, k]` row-major), every one finite, else
/// [`AttackError::NonFinite`] naming `attack`.
pub(crate) fn finite_logits<B: Backend>(
    attack: &'static str,
    m: &dyn Classifier<B>,
    x: &B::Tensor,
) -> Result<Vec<f32>> {
    let z = m.backend().to_vec(&m.logits(x)?)?;
    if let Some(index) = z.iter().position(|v| !v.is_finite()) {
        return Err(AttackError::NonFinite {
            attack,
            what: "the model's logits",
            index,
            value: z[index],
        });
    }
    Ok(z)
}

/// Per row of `logits` (`[n, k]`), the margin `z_y − max_{j≠y} z_j` of its label: negative
/// exactly when the row is misclassified (up to ties).
pub(crate) fn label_margins(logits: &[f32], k: usize, labels: &[usize]) -> Vec<f32> {
    logits
        .chunks(k)
        .zip(labels)
        .map(|(row, &y)| {
            let other = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != y)
                .fold(f32::NEG_INFINITY, |a, (_, &v)| a.max(v));
            row[y] - other
        })
        .collect()
}

/// The classes of one row of logits by decreasing value (ties: the lower index first): entry
/// `r` is the class ranked `r + 1`-th, the targets of APGD-T and FAB-T.
pub(crate) fn ranked(row: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
}

/// The rows `idx` of the row-major host batch `x` (`d` values per row), concatenated: the
/// sub-batch of the examples a later run of an attack still works on.
pub(crate) fn gather_rows(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Checks a batch for `attack`: `x` is a batch of the model's inputs with every pixel finite and
/// in `[0, 1]`, and `y` (`what` = `"labels"` or `"targets"`) is `[n]` of class indices. Returns
/// the batch size and the class indices.
pub(crate) fn check_batch<B: Backend>(
    attack: &'static str,
    model: &dyn Classifier<B>,
    x: &B::Tensor,
    y: &B::Tensor,
    what: &'static str,
) -> Result<(usize, Vec<usize>)> {
    let n = x.dims().first().copied().unwrap_or(0);
    if x.dims().is_empty() || y.dims() != [n] {
        return Err(AttackError::BatchMismatch {
            attack,
            what,
            x_dims: x.dims().to_vec(),
            y_dims: y.dims().to_vec(),
            n,
        });
    }
    model.check_input(x)?;
    let b = model.backend();
    let xs = b.to_vec(x)?;
    let per = xs.len() / n.max(1);
    if let Some(k) = xs.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(AttackError::InputOutOfRange {
            attack,
            index: k,
            example: k / per.max(1),
            value: xs[k],
        });
    }
    let labels = class_indices(
        attack,
        &b.to_vec(y)?,
        model.num_classes(),
        &what[..what.len() - 1],
    )?;
    Ok((n, labels))
}

/// `values` as class indices in `0..classes`.
pub(crate) fn class_indices(
    attack: &'static str,
    values: &[f32],
    classes: usize,
    what: &'static str,
) -> Result<Vec<usize>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes {
                Ok(v as usize)
            } else {
                Err(AttackError::InvalidLabel {
                    attack,
                    what,
                    index: i,
                    value: v,
                    classes,
                })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_and_argmin_take_the_first_extreme() {
        assert_eq!(argmax_rows(&[1.0, 3.0, 3.0, 0.0, 0.0, -1.0], 3), vec![1, 0]);
        assert_eq!(argmin_rows(&[1.0, 3.0, 1.0, 0.0, 0.0, -1.0], 3), vec![0, 2]);
        assert_eq!(argmax_rows(&[f32::NAN, 2.0, 1.0], 3), vec![1]);
    }
}
