//! The middle part of a training step: the reduction of the gradients across workers.
//!
//! A step is three parts: each worker computes the gradient of its share of the global batch,
//! the shares are summed across workers, and every worker applies the same optimiser update.
//! [`GradientReducer`] is the middle part. In one process it does nothing ([`SingleProcess`]);
//! the CLI's MPI build implements it with MPI collectives, and no MPI type appears here.
//!
//! **Fixed order.** Float addition is not associative, so "the sum" of the shares is defined
//! as [`sum_in_order`]: element by element, shard 0 + shard 1, then + shard 2, … — a left fold
//! in shard order, the same on every worker. A reducer must produce exactly these bits (an
//! MPI implementation gathers the shares and folds them itself rather than trusting
//! `MPI_Allreduce`, whose order is the library's choice). That is what makes `S` ranks equal,
//! bit for bit, to one process computing the same `S` shards one after the other
//! (`grad_shards = S`).

use std::fmt::Debug;

/// A reduction that failed: a worker that does not answer, a failed transfer. The message
/// names what happened; the trainer reports it as the error of the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommError(pub String);

impl std::fmt::Display for CommError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommError {}

/// Sums equal-length buffers across the workers of a data-parallel run, in worker order.
///
/// Worker `r` of `size()` calls [`GradientReducer::all_reduce_sum`] with its own share; every
/// worker calls it the same number of times with buffers of the same length. On return each
/// worker's buffer holds [`sum_in_order`] of all the shares (worker 0 first).
pub trait GradientReducer: Debug + Send {
    /// This worker's index, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of workers.
    fn size(&self) -> usize;

    /// Replaces `buf` (this worker's share) by the fixed-order sum of every worker's share.
    ///
    /// # Errors
    /// A worker that does not answer or a failed transfer.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
}

/// One process alone: rank 0 of 1, the reduction leaves the buffer as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl GradientReducer for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
}

/// Adds `share` into `acc` element by element (`acc[i] = acc[i] + share[i]`): one step of the
/// left fold that [`sum_in_order`] defines. Folding shard 0 into a copy of itself is not a
/// step: the fold starts *from* shard 0.
pub fn accumulate(acc: &mut [f32], share: &[f32]) {
    debug_assert_eq!(acc.len(), share.len());
    for (a, &s) in acc.iter_mut().zip(share) {
        *a += s;
    }
}

/// The fixed-order sum of `shares` into `out`: `out[i] = ((s0[i] + s1[i]) + s2[i]) + …`, shard
/// 0 first. Every reducer must give exactly these bits.
pub fn sum_in_order(shares: &[&[f32]], out: &mut [f32]) {
    let Some((first, rest)) = shares.split_first() else {
        out.fill(0.0);
        return;
    };
    out.copy_from_slice(first);
    for s in rest {
        accumulate(out, s);
    }
}

/// The rows of shard `k` of `shards` in a batch of `n` rows: `[k·n/S, (k+1)·n/S)`, so shard
/// sizes differ by at most one and shard 0 starts the batch.
pub fn shard_rows(n: usize, shards: usize, k: usize) -> std::ops::Range<usize> {
    (k * n / shards)..((k + 1) * n / shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        for n in [1usize, 7, 50, 100, 128] {
            for s in 1..=n.min(9) {
                let mut next = 0;
                for k in 0..s {
                    let r = shard_rows(n, s, k);
                    assert_eq!(r.start, next);
                    assert!(r.len() == n / s || r.len() == n / s + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn the_sum_is_a_left_fold_in_shard_order() {
        // 1e8 + 1 − 1e8 depends on the order: the fold must be ((a + b) + c).
        let (a, b, c) = ([1e8f32, -0.0], [1.0f32, -0.0], [-1e8f32, -0.0]);
        let mut out = [7.0f32; 2];
        sum_in_order(&[&a, &b, &c], &mut out);
        assert_eq!(out[0], (1e8f32 + 1.0) - 1e8);
        // One share is returned as it is, signed zeros included.
        sum_in_order(&[&b], &mut out);
        assert_eq!(out.map(f32::to_bits), b.map(f32::to_bits));
        let mut one = [3.0f32];
        SingleProcess.all_reduce_sum(&mut one).unwrap();
        assert_eq!(one, [3.0]);
    }
}
