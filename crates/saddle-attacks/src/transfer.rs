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

/// Every model attacked and every model evaluated on every attack's examples: `correct[i][j]`
/// counts the examples crafted on model `i` that model `j` still classifies correctly. The
/// diagonal is each model's white-box accuracy, the rest are transfer (black-box) accuracies.
/// Add matrices of several batches with [`TransferMatrix::add`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferMatrix {
    /// Number of examples.
    pub examples: usize,
    /// Per model, correct predictions on the clean inputs.
    pub natural: Vec<usize>,
    /// `correct[i][j]`: model `j` correct on the examples crafted on model `i`.
    pub correct: Vec<Vec<usize>>,
}

impl TransferMatrix {
    /// A matrix of `models` models and no examples.
    pub fn new(models: usize) -> Self {
        TransferMatrix {
            examples: 0,
            natural: vec![0; models],
            correct: vec![vec![0; models]; models],
        }
    }

    fn rate(&self, count: usize) -> f64 {
        if self.examples == 0 {
            0.0
        } else {
            count as f64 / self.examples as f64
        }
    }

    /// Accuracy of model `target` on the examples crafted on model `source`.
    pub fn accuracy(&self, source: usize, target: usize) -> f64 {
        self.rate(self.correct[source][target])
    }

    /// White-box accuracy of model `i` (the diagonal).
    pub fn white_box(&self, i: usize) -> f64 {
        self.accuracy(i, i)
    }

    /// Clean accuracy of model `i`.
    pub fn natural_accuracy(&self, i: usize) -> f64 {
        self.rate(self.natural[i])
    }

    /// The report of one pair, as [`transfer`] gives it.
    pub fn report(&self, source: usize, target: usize) -> TransferReport {
        TransferReport {
            examples: self.examples,
            source_natural: self.natural[source],
            source_adversarial: self.correct[source][source],
            target_natural: self.natural[target],
            target_adversarial: self.correct[source][target],
        }
    }

    /// Adds the counts of another batch (a matrix of as many models).
    ///
    /// # Panics
    /// If the matrices have different numbers of models.
    pub fn add(&mut self, other: &TransferMatrix) {
        assert_eq!(
            self.natural.len(),
            other.natural.len(),
            "matrices of other sizes"
        );
        self.examples += other.examples;
        for (a, b) in self.natural.iter_mut().zip(&other.natural) {
            *a += b;
        }
        for (r, s) in self.correct.iter_mut().zip(&other.correct) {
            for (a, b) in r.iter_mut().zip(s) {
                *a += b;
            }
        }
    }
}

/// Crafts adversarial examples for `(x, y)` with `attack` on each of `models` and evaluates
/// every model on every set (in evaluation mode; modes are restored): the transfer matrix,
/// whose diagonal is the white-box accuracy. Each model is attacked once, so the matrix costs
/// as many attacks as there are models. Accuracy is against the true labels `y`.
///
/// # Errors
/// No models; models of different input shapes or class counts
/// ([`saddle_models::ModelError::Config`], naming both); as [`Attack::perturb`].
pub fn transfer_matrix<B: Backend, M: Classifier<B>, A: Attack<B> + ?Sized>(
    attack: &A,
    models: &mut [M],
    x: &B::Tensor,
    y: &B::Tensor,
) -> Result<TransferMatrix> {
    let Some(first) = models.first() else {
        return Err(saddle_models::ModelError::Config(
            "a transfer matrix needs at least one model".into(),
        )
        .into());
    };
    let (shape, classes) = (first.input_shape(), first.num_classes());
    for (i, m) in models.iter().enumerate().skip(1) {
        if m.input_shape() != shape || m.num_classes() != classes {
            return Err(saddle_models::ModelError::Config(format!(
                "transfer: model {i} maps {:?} images to {} classes, model 0 {shape:?} images \
                 to {classes} classes",
                m.input_shape(),
                m.num_classes()
            ))
            .into());
        }
    }
    let (n, labels) = check_batch("transfer", first, x, y, "labels")?;
    let k = models.len();
    let mut out = TransferMatrix::new(k);
    out.examples = n;
    for (i, m) in models.iter_mut().enumerate() {
        let m = ModeGuard::eval(m);
        out.natural[i] = count_correct(&predict(&*m, x)?, &labels);
    }
    for i in 0..k {
        let x_adv = attack.perturb(&mut models[i], x, y)?.x_adv;
        for (j, m) in models.iter_mut().enumerate() {
            let m = ModeGuard::eval(m);
            out.correct[i][j] = count_correct(&predict(&*m, &x_adv)?, &labels);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fgsm, Pgd};
    use saddle_models::MnistNet;
    use saddle_tensor::cpu::Cpu;

    /// Three tiny networks, the first two identical, and images labelled by the first
    /// network's own predictions, so that its clean accuracy is 100% and an attack has
    /// something to take away.
    fn setup() -> (
        Vec<MnistNet<Cpu>>,
        <Cpu as Backend>::Tensor,
        <Cpu as Backend>::Tensor,
    ) {
        let b = Cpu::new();
        let models: Vec<_> = [10, 10, 11]
            .into_iter()
            .map(|s| MnistNet::new(b, 1, s).unwrap())
            .collect();
        let n = 12;
        let xs: Vec<f32> = (0..n * 784)
            .map(|i| ((i * 37) % 97) as f32 / 97.0)
            .collect();
        let x = b.from_vec(&[n, 1, 28, 28], xs).unwrap();
        let pred = predict(&models[0], &x).unwrap();
        let y = b
            .from_vec(&[n], pred.iter().map(|&p| p as f32).collect())
            .unwrap();
        (models, x, y)
    }

    #[test]
    fn the_diagonal_is_the_white_box_accuracy_and_the_rest_is_transfer() {
        let (mut models, x, y) = setup();
        let labels: Vec<usize> = Cpu::new()
            .to_vec(&y)
            .unwrap()
            .iter()
            .map(|&v| v as usize)
            .collect();
        let pgd = Pgd::linf(0.15, 0.04, 5).unwrap().seed(7);
        let m = transfer_matrix(&pgd, &mut models, &x, &y).unwrap();
        assert_eq!(m.examples, 12);
        assert_eq!(m.natural[0], 12);
        for i in 0..3 {
            // The attack on its own, the same seed: the same examples.
            let white = pgd
                .perturb(&mut models[i], &x, &y)
                .unwrap()
                .correct(&labels);
            assert_eq!(m.correct[i][i], white, "model {i}");
            for j in 0..3 {
                if i == j {
                    continue;
                }
                let (src, dst) = if i < j {
                    let (a, b) = models.split_at_mut(j);
                    (&mut a[i], &mut b[0])
                } else {
                    let (a, b) = models.split_at_mut(i);
                    (&mut b[0], &mut a[j])
                };
                let r = transfer(&pgd, src, dst, &x, &y).unwrap();
                assert_eq!(m.report(i, j), r, "{i} -> {j}");
            }
        }
        // The attack took some but not all of model 0's images (it was right on every one), so
        // the equalities above compare counts that could differ.
        assert!(0 < m.correct[0][0] && m.correct[0][0] < 12, "{m:?}");
        // Examples transferred to an identical copy are the white-box examples.
        assert_eq!(m.correct[0][1], m.correct[0][0]);
        assert_eq!(m.correct[1][0], m.correct[1][1]);
    }

    #[test]
    fn matrices_add_and_mismatched_models_are_errors() {
        let (mut models, x, y) = setup();
        let f = Fgsm::new(0.1).unwrap();
        let one = transfer_matrix(&f, &mut models, &x, &y).unwrap();
        let mut two = one.clone();
        two.add(&one);
        assert_eq!(two.examples, 24);
        assert_eq!(two.correct[1][2], 2 * one.correct[1][2]);
        assert_eq!(two.accuracy(1, 2), one.accuracy(1, 2));
        assert!(transfer_matrix(&f, &mut Vec::<MnistNet<Cpu>>::new(), &x, &y).is_err());
        let b = Cpu::new();
        let arch: saddle_models::Arch = "wrn-10-1".parse().unwrap();
        let mut mixed = vec![
            saddle_models::Model::build(&"mnist".parse().unwrap(), b, 1).unwrap(),
            saddle_models::Model::build(&arch, b, 1).unwrap(),
        ];
        let e = transfer_matrix(&f, &mut mixed, &x, &y).unwrap_err();
        assert!(e.to_string().contains("classes"), "{e}");
    }
}
