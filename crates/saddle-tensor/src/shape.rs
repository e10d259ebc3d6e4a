//! Shape arithmetic shared by every backend: broadcasting, convolution and pooling sizes.
//!
//! Backends call these checks before touching data, so a shape mismatch is the same typed error
//! on every backend.

use crate::error::{Result, TensorError};

/// Number of elements of a shape (1 for a scalar of shape `[]`).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Number of elements, or an error if the product overflows `usize`.
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            TensorError::invalid(
                op,
                format!("shape {shape:?} has more elements than fit in memory"),
            )
        })
}

/// NumPy broadcasting of two shapes: align on the right; each pair of sizes must be equal or
/// contain a 1.
///
/// # Errors
/// [`TensorError::Shape`] naming `op` when the shapes do not broadcast.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(TensorError::shape(
                op,
                format!("{a:?} and {b:?} do not broadcast"),
            ));
        };
    }
    Ok(out)
}

/// Stride and zero padding of a 2-D convolution (the same on both spatial axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between windows, at least 1.
    pub stride: usize,
    /// Zeros added on each side of both spatial axes.
    pub padding: usize,
}

impl Conv2dParams {
    /// `stride` and `padding` as given.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams { stride, padding }
    }
}

/// The sizes of a convolution, checked: input `[n, c, h, w]`, weight `[k, c, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub k: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
}

impl ConvGeometry {
    /// Checks an input shape and a weight shape against each other and computes the output size.
    ///
    /// # Errors
    /// [`TensorError::Shape`] if either shape is not 4-D, the channels differ, or the kernel is
    /// larger than the padded input; [`TensorError::InvalidArgument`] for a zero stride.
    pub fn new(op: &'static str, x: &[usize], w: &[usize], p: Conv2dParams) -> Result<Self> {
        if x.len() != 4 || w.len() != 4 {
            return Err(TensorError::shape(
                op,
                format!("input {x:?} must be [n, c, h, w] and weight {w:?} must be [k, c, kh, kw]"),
            ));
        }
        if p.stride == 0 {
            return Err(TensorError::invalid(op, "stride must be at least 1"));
        }
        if x[1] != w[1] {
            return Err(TensorError::shape(
                op,
                format!(
                    "input {x:?} has {} channels but weight {w:?} expects {}",
                    x[1], w[1]
                ),
            ));
        }
        let (hp, wp) = (x[2] + 2 * p.padding, x[3] + 2 * p.padding);
        if w[2] == 0 || w[3] == 0 || w[2] > hp || w[3] > wp {
            return Err(TensorError::shape(
                op,
                format!(
                    "kernel {w:?} does not fit input {x:?} with padding {}",
                    p.padding
                ),
            ));
        }
        Ok(ConvGeometry {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            k: w[0],
            kh: w[2],
            kw: w[3],
            oh: (hp - w[2]) / p.stride + 1,
            ow: (wp - w[3]) / p.stride + 1,
            stride: p.stride,
            padding: p.padding,
        })
    }

    /// Output shape `[n, k, oh, ow]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.k, self.oh, self.ow]
    }

    /// Input shape `[n, c, h, w]`.
    pub fn in_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// Weight shape `[k, c, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.k, self.c, self.kh, self.kw]
    }

    /// Multiply-adds of the forward convolution.
    pub fn macs(&self) -> usize {
        self.n * self.k * self.oh * self.ow * self.c * self.kh * self.kw
    }
}

/// Output shape of a max-pool with square window `size` and stride `size` over `[n, c, h, w]`
/// (a trailing partial window is dropped, as in PyTorch).
///
/// # Errors
/// [`TensorError::Shape`] if `x` is not 4-D or smaller than the window;
/// [`TensorError::InvalidArgument`] for a zero window.
pub fn pool_out_shape(op: &'static str, x: &[usize], size: usize) -> Result<[usize; 4]> {
    if size == 0 {
        return Err(TensorError::invalid(op, "pool size must be at least 1"));
    }
    if x.len() != 4 || x[2] < size || x[3] < size {
        return Err(TensorError::shape(
            op,
            format!("input {x:?} must be [n, c, h, w] with h and w at least {size}"),
        ));
    }
    Ok([x[0], x[1], x[2] / size, x[3] / size])
}

/// Checks that `a` and `b` have exactly the same shape.
pub fn same_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(TensorError::shape(
            op,
            format!("{a:?} and {b:?} must be equal"),
        ))
    }
}

/// Checks logits `[n, classes]` against labels `[n]` and returns `(n, classes)`.
pub fn check_logits_labels(
    op: &'static str,
    logits: &[usize],
    labels: &[usize],
) -> Result<(usize, usize)> {
    if logits.len() != 2 || labels.len() != 1 || logits[0] != labels[0] || logits[1] == 0 {
        return Err(TensorError::shape(
            op,
            format!("logits {logits:?} must be [n, classes] and labels {labels:?} must be [n]"),
        ));
    }
    Ok((logits[0], logits[1]))
}

/// Per-channel layout `(n, c, spatial size)` of a batch-norm input `[n, c]` or `[n, c, h, w]`
/// with scale `gamma` and shift `beta` of shape `[c]`.
///
/// # Errors
/// [`TensorError::Shape`] naming `op` for any other layout, mismatched parameters, or a batch
/// with no element per channel.
pub fn bn_layout(
    op: &'static str,
    x: &[usize],
    gamma: &[usize],
    beta: &[usize],
) -> Result<(usize, usize, usize)> {
    if x.len() != 2 && x.len() != 4 {
        return Err(TensorError::shape(
            op,
            format!("input {x:?} must be [n, c] or [n, c, h, w]"),
        ));
    }
    let c = x[1];
    if gamma != [c] || beta != [c] {
        return Err(TensorError::shape(
            op,
            format!("gamma {gamma:?} and beta {beta:?} must be [{c}] for input {x:?}"),
        ));
    }
    let s = if x.len() == 4 { x[2] * x[3] } else { 1 };
    if x[0] * s == 0 {
        return Err(TensorError::shape(
            op,
            format!("input {x:?} has no elements per channel"),
        ));
    }
    Ok((x[0], c, s))
}

/// Checks that labels stored as `f32` are integers in `0..classes` (allocation-free: the loss
/// ops call it on every step).
///
/// # Errors
/// [`TensorError::InvalidArgument`] naming `op` and the first bad label and its position.
pub fn check_labels(op: &'static str, labels: &[f32], classes: usize) -> Result<()> {
    for (i, &v) in labels.iter().enumerate() {
        if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes) {
            return Err(TensorError::invalid(
                op,
                format!("label {v} at position {i} is not a class index in 0..{classes}"),
            ));
        }
    }
    Ok(())
}

/// Checks two logit matrices of the same shape `[n, k]` with `k ≥ 1`; returns `(n, k)`.
pub fn check_logit_pair(op: &'static str, p: &[usize], q: &[usize]) -> Result<(usize, usize)> {
    if p.len() != 2 || p != q || p[1] == 0 {
        return Err(TensorError::shape(
            op,
            format!("logits {p:?} and {q:?} must both be [n, k] with k ≥ 1"),
        ));
    }
    Ok((p[0], p[1]))
}

/// One row's `KL(softmax(p) ‖ softmax(q))` in `f64`, with the two log-softmax rows.
pub fn kl_row(p: &[f32], q: &[f32]) -> (f64, Vec<f64>, Vec<f64>) {
    let log_softmax = |z: &[f32]| -> Vec<f64> {
        let m = z
            .iter()
            .map(|&v| f64::from(v))
            .fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = z.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        let l = m + s.ln();
        z.iter().map(|&v| f64::from(v) - l).collect()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    let kl = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
    (kl, lp, lq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape("t", &[2, 3], &[3]).unwrap(), vec![2, 3]);
        assert_eq!(
            broadcast_shape("t", &[2, 1, 4], &[3, 1]).unwrap(),
            vec![2, 3, 4]
        );
        assert_eq!(broadcast_shape("t", &[], &[5]).unwrap(), vec![5]);
        let err = broadcast_shape("add", &[2, 3], &[4]).unwrap_err();
        assert!(err.to_string().contains("add") && err.to_string().contains("[2, 3]"));
    }

    #[test]
    fn conv_geometry_matches_the_mnist_network() {
        let g = ConvGeometry::new(
            "c",
            &[50, 1, 28, 28],
            &[32, 1, 5, 5],
            Conv2dParams::new(1, 2),
        )
        .unwrap();
        assert_eq!(g.out_shape(), [50, 32, 28, 28]);
        let g = ConvGeometry::new(
            "c",
            &[1, 3, 32, 32],
            &[16, 3, 3, 3],
            Conv2dParams::new(2, 1),
        )
        .unwrap();
        assert_eq!(g.out_shape(), [1, 16, 16, 16]);
        assert!(
            ConvGeometry::new("c", &[1, 2, 8, 8], &[4, 3, 3, 3], Conv2dParams::new(1, 0)).is_err()
        );
        assert!(
            ConvGeometry::new("c", &[1, 3, 2, 2], &[4, 3, 5, 5], Conv2dParams::new(1, 0)).is_err()
        );
        assert!(
            ConvGeometry::new("c", &[1, 3, 8, 8], &[4, 3, 3, 3], Conv2dParams::new(0, 0)).is_err()
        );
    }

    #[test]
    fn overflowing_shapes_are_errors() {
        assert!(checked_numel("t", &[1 << 40, 1 << 40]).is_err());
        assert_eq!(checked_numel("t", &[2, 3]).unwrap(), 6);
    }
}
