//! Seeded, reproducible mini-batches.

use crate::error::{DataError, Result};
use crate::rng::Rng;

/// Yields batches of indices into a data set of `n` examples, epoch after epoch.
///
/// Each epoch is a fresh permutation that depends only on `(seed, epoch)`, so the stream is
/// the same on every run and any position can be recreated with [`Batcher::seek`] (e.g. when
/// resuming from a checkpoint). Batches have `batch_size` indices; the last one of an epoch is
/// smaller unless `drop_last` is set, in which case it is skipped.
///
/// ```
/// use saddle_data::Batcher;
/// let mut b = Batcher::new(10, 4, false, 7).unwrap();
/// assert_eq!(b.batches_per_epoch(), 3);
/// let first: Vec<usize> = b.next_batch().to_vec();
/// assert_eq!(first.len(), 4);
/// assert_eq!(Batcher::new(10, 4, false, 7).unwrap().next_batch(), &first[..]);
/// ```
#[derive(Debug, Clone)]
pub struct Batcher {
    n: usize,
    batch_size: usize,
    drop_last: bool,
    seed: u64,
    epoch: u64,
    batch_in_epoch: usize,
    perm: Vec<usize>,
}

impl Batcher {
    /// A batcher over `n` examples. Errors when no batch could ever be produced (`n == 0`,
    /// `batch_size == 0`, or `drop_last` with `n < batch_size`).
    pub fn new(n: usize, batch_size: usize, drop_last: bool, seed: u64) -> Result<Self> {
        if n == 0 || batch_size == 0 {
            return Err(DataError::InvalidArgument(format!(
                "a batcher needs examples and a positive batch size (n = {n}, batch size = \
                 {batch_size})"
            )));
        }
        if drop_last && n < batch_size {
            return Err(DataError::InvalidArgument(format!(
                "batch size {batch_size} with drop_last leaves no batch of {n} examples"
            )));
        }
        let mut b = Batcher {
            n,
            batch_size,
            drop_last,
            seed,
            epoch: 0,
            batch_in_epoch: 0,
            perm: vec![],
        };
        b.perm = b.permutation(0);
        Ok(b)
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// The epoch the next batch belongs to (starting at 0).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of batches handed out so far (the global step).
    pub fn step(&self) -> u64 {
        self.epoch * self.batches_per_epoch() as u64 + self.batch_in_epoch as u64
    }

    /// The order of the examples in `epoch` (a permutation of `0..n`).
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut p: Vec<usize> = (0..self.n).collect();
        Rng::from_seed_stream(self.seed, epoch).shuffle(&mut p);
        p
    }

    /// All batches of `epoch`, as [`Batcher::next_batch`] would hand them out.
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let p = self.permutation(epoch);
        p.chunks(self.batch_size)
            .take(self.batches_per_epoch())
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The next batch; moves to a newly shuffled epoch when the current one is done.
    pub fn next_batch(&mut self) -> &[usize] {
        if self.batch_in_epoch == self.batches_per_epoch() {
            self.epoch += 1;
            self.batch_in_epoch = 0;
            self.perm = self.permutation(self.epoch);
        }
        let start = self.batch_in_epoch * self.batch_size;
        let end = (start + self.batch_size).min(self.n);
        self.batch_in_epoch += 1;
        &self.perm[start..end]
    }

    /// Positions the batcher so that the next batch is global batch number `step`.
    pub fn seek(&mut self, step: u64) {
        let per = self.batches_per_epoch() as u64;
        let epoch = step / per;
        if epoch != self.epoch || self.perm.is_empty() {
            self.perm = self.permutation(epoch);
        }
        self.epoch = epoch;
        self.batch_in_epoch = (step % per) as usize;
    }
}
