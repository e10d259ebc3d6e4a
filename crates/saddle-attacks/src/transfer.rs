//! Transfer (black-box) evaluation: adversarial examples crafted on a source model, evaluated on
//! a target model (Papernot et al. 2016; the paper's MNIST and CIFAR-10 "black-box" columns,
//! for example 64.2% CIFAR-10 accuracy under PGD transferred from an independently trained
//! copy).

use saddle_models::Classifier;
use saddle_tensor::Backend;

use crate::attack::{check_batch, predict, Attack, ModeGuard};
use crate::error::Result;

/// Correct predictions of the source and target models, on the clean and on the transferred
/// adversarial batch. Add reports of several batches with [`TransferReport::add`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// Number of examples.
    pub examples: usize,
    /// Source model correct on the clean inputs.
    pub source_natural: usize,
    /// Source model correct on the adversarial inputs (white-box accuracy).
    pub source_adversarial: usize,
    /// Target model correct on the clean inputs.
    pub target_natural: usize,
    /// Target model correct on the adversarial inputs crafted on the source (transfer accuracy).
    pub target_adversarial: usize,
}

impl TransferReport {
    fn rate(&self, count: usize) -> f64 {
        if self.examples == 0 {
            0.0
        } else {
            count as f64 / self.examples as f64
        }
    }

    /// White-box accuracy of the source model under the attack.
    pub fn source_accuracy(&self) -> f64 {
        self.rate(self.source_adversarial)
    }

    /// Accuracy of the target model on the transferred adversarial examples.
    pub fn target_accuracy(&self) -> f64 {
        self.rate(self.target_adversarial)
    }

    /// Clean accuracy of the source model.
    pub fn source_natural_accuracy(&self) -> f64 {
        self.rate(self.source_natural)
    }

    /// Clean accuracy of the target model.
    pub fn target_natural_accuracy(&self) -> f64 {
        self.rate(self.target_natural)
    }

    /// Adds the counts of another batch.
    pub fn add(&mut self, other: &TransferReport) {
        self.examples += other.examples;
        self.source_natural += other.source_natural;
        self.source_adversarial += other.source_adversarial;
        self.target_natural += other.target_natural;
        self.target_adversarial += other.target_adversarial;
    }
}

/// Crafts adversarial examples for `(x, y)` with `attack` on `source` and evaluates them on
/// `target`; both models run in evaluation mode and get their modes back afterwards. Accuracy
/// is against the true labels `y`, also for a targeted attack.
///
/// # Errors
/// As [`Attack::perturb`]; a model error if `target` does not take `source`'s inputs.
pub fn transfer<B: Backend, A: Attack<B> + ?Sized>(
    attack: &A,
    source: &mut dyn Classifier<B>,
    target: &mut dyn Classifier<B>,
    x: &B::Tensor,
    y: &B::Tensor,
) -> Result<TransferReport> {
    let (n, labels) = check_batch("transfer", &*target, x, y, "labels")?;
    let result = attack.perturb(source, x, y)?;
    let source_natural = {
        let source = ModeGuard::eval(source);
        count_correct(&predict(&*source, x)?, &labels)
    };
    let target = ModeGuard::eval(target);
    Ok(TransferReport {
        examples: n,
        source_natural,
        source_adversarial: result.correct(&labels),
        target_natural: count_correct(&predict(&*target, x)?, &labels),
        target_adversarial: count_correct(&predict(&*target, &result.x_adv)?, &labels),
    })
}

fn count_correct(pred: &[usize], labels: &[usize]) -> usize {
    pred.iter().zip(labels).filter(|(p, y)| p == y).count()
}
