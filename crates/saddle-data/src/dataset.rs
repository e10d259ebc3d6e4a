//! The in-memory [`Dataset`] and the train/test [`Split`].

use crate::error::{DataError, Result};
use crate::rng::Rng;

/// Which part of a data set to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set (MNIST: 60,000 images; CIFAR-10: 50,000).
    Train,
    /// The test set (10,000 images for all three data sets).
    Test,
}

/// Images as `f32` in `[0, 1]`, NCHW, with one class index per image.
///
/// The fields are public for convenient read access; [`Dataset::new`] checks that they agree
/// (`images.len() == n·c·h·w`, `labels.len() == n`, every label `< classes`), and the methods
/// assume they still do.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `n × c × h × w` pixel values in `[0, 1]`, image after image, channel planes row-major.
    pub images: Vec<f32>,
    /// One class index per image, each `< classes`.
    pub labels: Vec<u8>,
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
    /// Number of classes (10 for all three data sets).
    pub classes: usize,
    /// A name for messages, e.g. `"mnist/train"`.
    pub name: String,
}

impl Dataset {
    /// Builds a data set after checking that images, labels and shape agree.
    pub fn new(
        name: impl Into<String>,
        images: Vec<f32>,
        labels: Vec<u8>,
        shape: [usize; 4],
        classes: usize,
    ) -> Result<Self> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(images.len()) {
            return Err(DataError::InvalidArgument(format!(
                "{} pixel values do not fill shape {shape:?}",
                images.len()
            )));
        }
        if labels.len() != shape[0] {
            return Err(DataError::InvalidArgument(format!(
                "{} labels for {} images",
                labels.len(),
                shape[0]
            )));
        }
        if let Some(i) = labels.iter().position(|&l| usize::from(l) >= classes) {
            return Err(DataError::InvalidArgument(format!(
                "label {} at index {i} is not below {classes}",
                labels[i]
            )));
        }
        Ok(Dataset {
            images,
            labels,
            shape,
            classes,
            name: name.into(),
        })
    }

    /// Builds a data set from bytes (`0..=255` mapped to `[0, 1]` by `/255`).
    pub(crate) fn from_u8(
        name: String,
        pixels: &[u8],
        labels: Vec<u8>,
        shape: [usize; 4],
        classes: usize,
    ) -> Result<Self> {
        let images = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        Dataset::new(name, images, labels, shape, classes)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// `[c, h, w]` of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.shape[1], self.shape[2], self.shape[3]]
    }

    /// Number of values in one image (`c·h·w`).
    pub fn image_len(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }

    /// The pixels of image `i` (CHW).
    ///
    /// # Panics
    /// If `i >= self.len()`, like slice indexing. Use [`Dataset::get`] for a checked access.
    pub fn image(&self, i: usize) -> &[f32] {
        let d = self.image_len();
        &self.images[i * d..(i + 1) * d]
    }

    /// Image `i` and its label, or `None` when `i` is out of range.
    pub fn get(&self, i: usize) -> Option<(&[f32], u8)> {
        let d = self.image_len();
        let label = *self.labels.get(i)?;
        Some((self.images.get(i * d..(i + 1) * d)?, label))
    }

    /// A new data set holding the images at `indices`, in that order (repeats allowed).
    pub fn select(&self, indices: &[usize]) -> Result<Dataset> {
        let (images, labels) = self.gather(indices)?;
        let [_, c, h, w] = self.shape;
        Ok(Dataset {
            images,
            labels,
            shape: [indices.len(), c, h, w],
            classes: self.classes,
            name: self.name.clone(),
        })
    }

    /// The first `min(n, len)` images.
    pub fn subset_first(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let [_, c, h, w] = self.shape;
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            shape: [n, c, h, w],
            classes: self.classes,
            name: format!("{}[..{n}]", self.name),
        }
    }

    /// `min(n, len)` distinct images drawn uniformly without replacement, reproducibly for
    /// `seed`, kept in their original order.
    pub fn subset_sample(&self, n: usize, seed: u64) -> Dataset {
        let n = n.min(self.len());
        let mut idx: Vec<usize> = (0..self.len()).collect();
        let mut rng = Rng::seed_from_u64(seed);
        // Partial Fisher–Yates: the first n entries become a uniform sample.
        for i in 0..n {
            let j = i + rng.index(self.len() - i);
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx.sort_unstable();
        let mut out = self
            .select(&idx)
            .unwrap_or_else(|_| unreachable!("indices are in range"));
        out.name = format!("{}[sample {n}, seed {seed}]", self.name);
        out
    }

    /// The images at `indices` as one NCHW buffer, and their labels as `f32` class indices
    /// (the form the losses take).
    pub fn batch(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (images, labels) = self.gather(indices)?;
        Ok((images, labels.into_iter().map(f32::from).collect()))
    }

    /// `[indices.len(), c, h, w]`: the shape of what [`Dataset::batch`] returns.
    pub fn batch_shape(&self, batch_len: usize) -> [usize; 4] {
        [batch_len, self.shape[1], self.shape[2], self.shape[3]]
    }

    fn gather(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<u8>)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::InvalidArgument(format!(
                "index {bad} out of range for {} ({} images)",
                self.name,
                self.len()
            )));
        }
        let d = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            images.extend_from_slice(&self.images[i * d..(i + 1) * d]);
        }
        Ok((images, indices.iter().map(|&i| self.labels[i]).collect()))
    }

    /// How many images each class has.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// Per-channel mean and (population) standard deviation of the pixel values, in f64.
    pub fn channel_mean_std(&self) -> Vec<(f64, f64)> {
        let [n, c, h, w] = self.shape;
        let plane = h * w;
        (0..c)
            .map(|ch| {
                let (mut s, mut s2) = (0f64, 0f64);
                for i in 0..n {
                    let start = (i * c + ch) * plane;
                    for &v in &self.images[start..start + plane] {
                        let v = f64::from(v);
                        s += v;
                        s2 += v * v;
                    }
                }
                let count = (n * plane).max(1) as f64;
                let mean = s / count;
                (mean, (s2 / count - mean * mean).max(0.0).sqrt())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let images = (0..n * 2).map(|v| v as f32 / 100.0).collect();
        let labels = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::new("toy", images, labels, [n, 1, 1, 2], 3).unwrap()
    }

    #[test]
    fn subsets_and_batches() {
        let d = toy(10);
        assert_eq!(d.len(), 10);
        assert_eq!(d.image(3), &[0.06, 0.07]);
        assert_eq!(d.get(10), None);
        let f = d.subset_first(4);
        assert_eq!(f.len(), 4);
        assert_eq!(f.labels, vec![0, 1, 2, 0]);
        assert_eq!(d.subset_first(99).len(), 10);
        let s1 = d.subset_sample(5, 42);
        let s2 = d.subset_sample(5, 42);
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 5);
        let (x, y) = d.batch(&[2, 0]).unwrap();
        assert_eq!(x, vec![0.04, 0.05, 0.0, 0.01]);
        assert_eq!(y, vec![2.0, 0.0]);
        assert!(d.batch(&[10]).is_err());
        assert_eq!(d.label_counts(), vec![4, 3, 3]);
    }

    #[test]
    fn new_checks_consistency() {
        assert!(Dataset::new("x", vec![0.0; 3], vec![0], [1, 1, 2, 2], 10).is_err());
        assert!(Dataset::new("x", vec![0.0; 4], vec![0, 0], [1, 1, 2, 2], 10).is_err());
        assert!(Dataset::new("x", vec![0.0; 4], vec![10], [1, 1, 2, 2], 10).is_err());
        assert!(Dataset::new("x", vec![], vec![], [usize::MAX, 2, 2, 2], 10).is_err());
    }
}
