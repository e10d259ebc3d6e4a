//! A naive float64 implementation of every op, the independent reference of the op suite.
//!
//! Everything here is plain nested loops over row-major `Vec<f64>`: no ndarray, no blocking, no
//! parallelism, no fused tricks, so that each function can be checked by reading it. Shapes are
//! worked out again here rather than taken from [`crate::shape`], so that a mistake in the shape
//! helpers cannot hide in a backend and in its reference at once. Only the error type is shared.
//!
//! The op suite ([`crate::testing`]) converts a backend's `f32` inputs to `f64`, runs the op here
//! and compares; the backward ops of a backend are compared with central finite differences of
//! these forward functions, so the reference has no backward functions of its own, except the
//! max-pool gradients ([`max_pool2d_backward`], [`relu_max_pool2d_backward`]) that spell out the
//! tie rule finite differences cannot see.
//!
//! Functions take their inputs by reference and return new tensors; the optimiser updates return
//! the new state instead of writing in place. Hyper-parameters given as `f32` to a backend are
//! given here as the same `f32` values widened to `f64`.
//!
//! ```
//! use saddle_tensor::reference::{self, RefTensor};
//! let x = RefTensor::new(&[1, 1, 2, 2], vec![1.0, 3.0, 2.0, 3.0]).unwrap();
//! let y = reference::max_pool2d(&x, 2).unwrap();
//! assert_eq!(y.shape, vec![1, 1, 1, 1]);
//! assert_eq!(y.data, vec![3.0]);
//! ```

use crate::backend::{AdamParams, SgdParams};
use crate::error::{Result, TensorError};

/// A row-major float64 tensor: the reference's only data type.
#[derive(Clone, Debug, PartialEq)]
pub struct RefTensor {
    /// Dimensions, outermost first; `[]` is a scalar holding one element.
    pub shape: Vec<usize>,
    /// The elements in row-major order; `data.len()` is the product of `shape`.
    pub data: Vec<f64>,
}

impl RefTensor {
    /// A tensor of `shape` holding `data`.
    ///
    /// # Errors
    /// [`TensorError::Shape`] when `data.len()` is not the product of `shape`.
    pub fn new(shape: &[usize], data: Vec<f64>) -> Result<Self> {
        let n = count(shape);
        if data.len() != n {
            return Err(TensorError::shape(
                "reference",
                format!("shape {shape:?} needs {n} elements, got {}", data.len()),
            ));
        }
        Ok(RefTensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// A tensor of `shape` holding `data` widened from `f32`.
    ///
    /// # Errors
    /// [`TensorError::Shape`] when `data.len()` is not the product of `shape`.
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Self> {
        RefTensor::new(shape, data.iter().map(|&v| v as f64).collect())
    }

    /// A tensor of `shape` with every element `value`.
    pub fn full(shape: &[usize], value: f64) -> Self {
        RefTensor {
            shape: shape.to_vec(),
            data: vec![value; count(shape)],
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The element at multi-index `idx` (one entry per axis).
    ///
    /// # Panics
    /// If `idx` has the wrong length or an entry is out of range.
    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[offset(&self.shape, idx)]
    }

    /// A tensor of the same shape with `f` applied to each element.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> RefTensor {
        RefTensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }

    /// The same tensor with every element replaced by its absolute value.
    pub fn abs(&self) -> RefTensor {
        self.map(f64::abs)
    }

    /// The elements rounded to `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

// ---- index arithmetic -------------------------------------------------------------------------

/// Number of elements of `shape` (1 for `[]`).
fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major offset of multi-index `idx` in `shape`.
fn offset(shape: &[usize], idx: &[usize]) -> usize {
    assert_eq!(
        shape.len(),
        idx.len(),
        "index {idx:?} does not fit shape {shape:?}"
    );
    let mut off = 0;
    for (&d, &i) in shape.iter().zip(idx) {
        assert!(i < d, "index {idx:?} out of range for shape {shape:?}");
        off = off * d + i;
    }
    off
}

/// Multi-index of row-major offset `flat` in `shape`.
fn unravel(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = flat % shape[a];
        flat /= shape[a];
    }
    idx
}

fn same_shape(op: &'static str, a: &RefTensor, b: &RefTensor) -> Result<()> {
    if a.shape == b.shape {
        Ok(())
    } else {
        Err(TensorError::shape(
            op,
            format!("{:?} and {:?} must be equal", a.shape, b.shape),
        ))
    }
}

// ---- element-wise with broadcasting ---------------------------------------------------------

/// Applies `f` element-wise under NumPy broadcasting: shapes are aligned on the right, missing
/// leading axes count as 1, and each pair of sizes must be equal or contain a 1.
///
/// # Errors
/// [`TensorError::Shape`] naming `op` when the shapes do not broadcast.
pub fn broadcast_with(
    op: &'static str,
    a: &RefTensor,
    b: &RefTensor,
    f: impl Fn(f64, f64) -> f64,
) -> Result<RefTensor> {
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut p = vec![1; rank - s.len()];
        p.extend_from_slice(s);
        p
    };
    let (pa, pb) = (pad(&a.shape), pad(&b.shape));
    let mut out_shape = Vec::with_capacity(rank);
    for i in 0..rank {
        let d = if pa[i] == pb[i] || pb[i] == 1 {
            pa[i]
        } else if pa[i] == 1 {
            pb[i]
        } else {
            return Err(TensorError::shape(
                op,
                format!("{:?} and {:?} do not broadcast", a.shape, b.shape),
            ));
        };
        out_shape.push(d);
    }
    let mut data = Vec::with_capacity(count(&out_shape));
    for flat in 0..count(&out_shape) {
        let idx = unravel(&out_shape, flat);
        // A size-1 axis of an input is read at index 0 whatever the output index.
        let ia: Vec<usize> = idx
            .iter()
            .zip(&pa)
            .map(|(&i, &d)| if d == 1 { 0 } else { i })
            .collect();
        let ib: Vec<usize> = idx
            .iter()
            .zip(&pb)
            .map(|(&i, &d)| if d == 1 { 0 } else { i })
            .collect();
        data.push(f(a.data[offset(&pa, &ia)], b.data[offset(&pb, &ib)]));
    }
    Ok(RefTensor {
        shape: out_shape,
        data,
    })
}

/// `a + b` with broadcasting.
///
/// # Errors
/// [`TensorError::Shape`] when the shapes do not broadcast.
pub fn add(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    broadcast_with("add", a, b, |x, y| x + y)
}

/// `a − b` with broadcasting.
///
/// # Errors
/// [`TensorError::Shape`] when the shapes do not broadcast.
pub fn sub(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    broadcast_with("sub", a, b, |x, y| x - y)
}

/// `a · b` with broadcasting.
///
/// # Errors
/// [`TensorError::Shape`] when the shapes do not broadcast.
pub fn mul(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    broadcast_with("mul", a, b, |x, y| x * y)
}

/// `a / b` with broadcasting.
///
/// # Errors
/// [`TensorError::Shape`] when the shapes do not broadcast.
pub fn div(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    broadcast_with("div", a, b, |x, y| x / y)
}

/// Element-wise minimum with broadcasting (NaN inputs are not specified).
///
/// # Errors
/// [`TensorError::Shape`] when the shapes do not broadcast.
pub fn minimum(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    broadcast_with("minimum", a, b, |x, y| if y < x { y } else { x })
}

/// Element-wise maximum with broadcasting (NaN inputs are not specified).
///
/// # Errors
/// [`TensorError::Shape`] when the shapes do not broadcast.
pub fn maximum(a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    broadcast_with("maximum", a, b, |x, y| if y > x { y } else { x })
}

// ---- element-wise, unary --------------------------------------------------------------------

/// `s · x + t`.
pub fn affine(x: &RefTensor, s: f64, t: f64) -> RefTensor {
    x.map(|v| s * v + t)
}

/// `sqrt(x)` (NaN below zero).
pub fn sqrt(x: &RefTensor) -> RefTensor {
    x.map(f64::sqrt)
}

/// −1, 0 or +1 by the sign of each element; `sign(0) = 0`, `sign(NaN) = NaN`.
pub fn sign(x: &RefTensor) -> RefTensor {
    x.map(|v| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else if v == 0.0 {
            0.0
        } else {
            f64::NAN
        }
    })
}

/// Each element clamped to `[lo, hi]`.
///
/// # Errors
/// [`TensorError::InvalidArgument`] when `lo > hi`.
pub fn clamp(x: &RefTensor, lo: f64, hi: f64) -> Result<RefTensor> {
    if lo > hi {
        return Err(TensorError::invalid("clamp", format!("lo {lo} > hi {hi}")));
    }
    Ok(x.map(|v| {
        if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    }))
}

/// `max(x, 0)`.
pub fn relu(x: &RefTensor) -> RefTensor {
    x.map(|v| if v > 0.0 { v } else { 0.0 })
}

/// `x` where `x > 0`, else `slope · x`.
pub fn leaky_relu(x: &RefTensor, slope: f64) -> RefTensor {
    x.map(|v| if v > 0.0 { v } else { slope * v })
}

// ---- reductions -----------------------------------------------------------------------------

/// Checks that `axes` are in range and distinct.
fn check_axes(op: &'static str, shape: &[usize], axes: &[usize]) -> Result<()> {
    for (i, &a) in axes.iter().enumerate() {
        if a >= shape.len() {
            return Err(TensorError::invalid(
                op,
                format!("axis {a} out of range for {shape:?}"),
            ));
        }
        if axes[..i].contains(&a) {
            return Err(TensorError::invalid(
                op,
                format!("axis {a} repeated in {axes:?}"),
            ));
        }
    }
    Ok(())
}

/// Sum over `axes`; with `keep_dims` the reduced axes stay as size 1, otherwise they are
/// removed (summing every axis gives shape `[]`).
///
/// # Errors
/// [`TensorError::InvalidArgument`] for an axis out of range or given twice.
pub fn sum_axes(x: &RefTensor, axes: &[usize], keep_dims: bool) -> Result<RefTensor> {
    check_axes("sum_axes", &x.shape, axes)?;
    // Accumulate into the keep-dims shape, then drop the reduced axes if asked.
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(a, &d)| if axes.contains(&a) { 1 } else { d })
        .collect();
    let mut acc = vec![0.0; count(&kept)];
    for flat in 0..x.numel() {
        let mut idx = unravel(&x.shape, flat);
        for &a in axes {
            idx[a] = 0;
        }
        acc[offset(&kept, &idx)] += x.data[flat];
    }
    let shape = if keep_dims {
        kept
    } else {
        x.shape
            .iter()
            .enumerate()
            .filter(|(a, _)| !axes.contains(a))
            .map(|(_, &d)| d)
            .collect()
    };
    Ok(RefTensor { shape, data: acc })
}

/// Mean over `axes` (the sum divided by the number of elements summed).
///
/// # Errors
/// As [`sum_axes`].
pub fn mean_axes(x: &RefTensor, axes: &[usize], keep_dims: bool) -> Result<RefTensor> {
    check_axes("mean_axes", &x.shape, axes)?;
    let n: usize = axes.iter().map(|&a| x.shape[a]).product();
    Ok(affine(&sum_axes(x, axes, keep_dims)?, 1.0 / n as f64, 0.0))
}

/// Sum of all elements, shape `[]`.
pub fn sum_all(x: &RefTensor) -> RefTensor {
    RefTensor {
        shape: vec![],
        data: vec![x.data.iter().sum()],
    }
}

/// Sums `x` down to `shape`, undoing a broadcast: every element of `x` is added into the element
/// of the result it was broadcast from.
///
/// # Errors
/// [`TensorError::Shape`] when `x` could not have been broadcast from `shape`.
pub fn sum_to_shape(x: &RefTensor, shape: &[usize]) -> Result<RefTensor> {
    let bad = || {
        TensorError::shape(
            "sum_to_shape",
            format!("cannot sum {:?} to {shape:?}", x.shape),
        )
    };
    if shape.len() > x.shape.len() {
        return Err(bad());
    }
    let lead = x.shape.len() - shape.len();
    for (i, &s) in shape.iter().enumerate() {
        if s != 1 && s != x.shape[lead + i] {
            return Err(bad());
        }
    }
    let mut acc = vec![0.0; count(shape)];
    for flat in 0..x.numel() {
        let idx = unravel(&x.shape, flat);
        let target: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &s)| if s == 1 { 0 } else { idx[lead + i] })
            .collect();
        acc[offset(shape, &target)] += x.data[flat];
    }
    Ok(RefTensor {
        shape: shape.to_vec(),
        data: acc,
    })
}

/// Per-example L2 norm over all axes but the first, shape `[n]`.
///
/// # Errors
/// [`TensorError::Shape`] for a scalar.
pub fn l2_norms(x: &RefTensor) -> Result<RefTensor> {
    let n = *x
        .shape
        .first()
        .ok_or_else(|| TensorError::shape("l2_norms", "scalar input"))?;
    let per = x.numel().checked_div(n).unwrap_or(0);
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = 0.0;
        for j in 0..per {
            s += x.data[i * per + j] * x.data[i * per + j];
        }
        data.push(s.sqrt());
    }
    Ok(RefTensor {
        shape: vec![n],
        data,
    })
}

// ---- linear algebra -------------------------------------------------------------------------

/// `op(a) · op(b)` for 2-D `a` and `b`, where `op` transposes when asked: with `trans_a` the
/// left factor is `aᵀ`, with `trans_b` the right factor is `bᵀ`.
///
/// # Errors
/// [`TensorError::Shape`] when an input is not 2-D or the inner sizes differ.
pub fn matmul(a: &RefTensor, b: &RefTensor, trans_a: bool, trans_b: bool) -> Result<RefTensor> {
    if a.shape.len() != 2 || b.shape.len() != 2 {
        return Err(TensorError::shape(
            "matmul",
            format!("{:?} and {:?} must both be 2-D", a.shape, b.shape),
        ));
    }
    let (m, ka) = if trans_a {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let (kb, n) = if trans_b {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    if ka != kb {
        return Err(TensorError::shape(
            "matmul",
            format!(
                "{:?}{} times {:?}{}: inner sizes {ka} and {kb} differ",
                a.shape,
                if trans_a { "ᵀ" } else { "" },
                b.shape,
                if trans_b { "ᵀ" } else { "" }
            ),
        ));
    }
    // Element (i, p) of op(a) and (p, j) of op(b).
    let opa = |i: usize, p: usize| {
        if trans_a {
            a.at(&[p, i])
        } else {
            a.at(&[i, p])
        }
    };
    let opb = |p: usize, j: usize| {
        if trans_b {
            b.at(&[j, p])
        } else {
            b.at(&[p, j])
        }
    };
    let mut data = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..ka {
                s += opa(i, p) * opb(p, j);
            }
            data.push(s);
        }
    }
    Ok(RefTensor {
        shape: vec![m, n],
        data,
    })
}

/// Output size of one spatial axis of a convolution, or `None` when the kernel does not fit.
fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = size + 2 * padding;
    if kernel == 0 || kernel > padded {
        None
    } else {
        Some((padded - kernel) / stride + 1)
    }
}

/// 2-D cross-correlation (PyTorch's `conv2d`) of `x` `[n, c, h, w]` with `w` `[k, c, kh, kw]`,
/// zero padding `padding` on every side, step `stride`, plus `bias` `[k]` when given:
///
/// `y[b, o, i, j] = bias[o] + Σ_{ch, u, v} x[b, ch, i·stride + u − padding, j·stride + v − padding]
/// · w[o, ch, u, v]`, with `x` read as 0 outside the image. Output `[n, k, oh, ow]`,
/// `oh = (h + 2·padding − kh) / stride + 1` (floor).
///
/// # Errors
/// [`TensorError::Shape`] for shapes that do not fit together, [`TensorError::InvalidArgument`]
/// for a zero stride.
pub fn conv2d(
    x: &RefTensor,
    w: &RefTensor,
    bias: Option<&RefTensor>,
    stride: usize,
    padding: usize,
) -> Result<RefTensor> {
    let op = "conv2d";
    if x.shape.len() != 4 || w.shape.len() != 4 {
        return Err(TensorError::shape(
            op,
            format!("{:?} and {:?} must be 4-D", x.shape, w.shape),
        ));
    }
    if stride == 0 {
        return Err(TensorError::invalid(op, "stride must be at least 1"));
    }
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (k, kh, kw) = (w.shape[0], w.shape[2], w.shape[3]);
    if w.shape[1] != c {
        return Err(TensorError::shape(
            op,
            format!("channels of {:?} and {:?}", x.shape, w.shape),
        ));
    }
    let (Some(oh), Some(ow)) = (
        conv_out(h, kh, stride, padding),
        conv_out(wd, kw, stride, padding),
    ) else {
        return Err(TensorError::shape(
            op,
            format!("kernel {:?} does not fit {:?}", w.shape, x.shape),
        ));
    };
    if let Some(bias) = bias {
        if bias.shape != [k] {
            return Err(TensorError::shape(
                op,
                format!("bias {:?} must be [{k}]", bias.shape),
            ));
        }
    }
    let mut y = RefTensor::full(&[n, k, oh, ow], 0.0);
    for b in 0..n {
        for o in 0..k {
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = bias.map_or(0.0, |bias| bias.data[o]);
                    for ch in 0..c {
                        for u in 0..kh {
                            for v in 0..kw {
                                // Position in the unpadded input; skip the zero padding.
                                let r = (i * stride + u) as isize - padding as isize;
                                let q = (j * stride + v) as isize - padding as isize;
                                if r < 0 || q < 0 || r >= h as isize || q >= wd as isize {
                                    continue;
                                }
                                s += x.at(&[b, ch, r as usize, q as usize]) * w.at(&[o, ch, u, v]);
                            }
                        }
                    }
                    y.data[offset(&[n, k, oh, ow], &[b, o, i, j])] = s;
                }
            }
        }
    }
    Ok(y)
}

/// Max-pool of `x` `[n, c, h, w]` with a `size`×`size` window and stride `size`; a trailing
/// partial window is dropped. Output `[n, c, h / size, w / size]`.
///
/// # Errors
/// [`TensorError::Shape`] if `x` is not 4-D or smaller than the window,
/// [`TensorError::InvalidArgument`] for a zero window.
pub fn max_pool2d(x: &RefTensor, size: usize) -> Result<RefTensor> {
    let op = "max_pool2d";
    if size == 0 {
        return Err(TensorError::invalid(op, "pool size must be at least 1"));
    }
    if x.shape.len() != 4 || x.shape[2] < size || x.shape[3] < size {
        return Err(TensorError::shape(
            op,
            format!("{:?} with window {size}", x.shape),
        ));
    }
    let (n, c, oh, ow) = (x.shape[0], x.shape[1], x.shape[2] / size, x.shape[3] / size);
    let mut y = RefTensor::full(&[n, c, oh, ow], 0.0);
    for b in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut m = f64::NEG_INFINITY;
                    for u in 0..size {
                        for v in 0..size {
                            let e = x.at(&[b, ch, i * size + u, j * size + v]);
                            if e > m {
                                m = e;
                            }
                        }
                    }
                    y.data[offset(&[n, c, oh, ow], &[b, ch, i, j])] = m;
                }
            }
        }
    }
    Ok(y)
}

/// `relu(conv2d(x, w, bias))`: the fused convolution + ReLU, composed from [`conv2d`] and
/// [`relu`].
///
/// # Errors
/// Those of [`conv2d`].
pub fn conv2d_relu(
    x: &RefTensor,
    w: &RefTensor,
    bias: Option<&RefTensor>,
    stride: usize,
    padding: usize,
) -> Result<RefTensor> {
    Ok(relu(&conv2d(x, w, bias, stride, padding)?))
}

/// The gradient of [`max_pool2d`] with the backends' documented tie rule: each window's `gy`
/// goes to the **first** position, in row-major order within the window, holding the window's
/// maximum; every other input (and the rows and columns no window reaches) gets 0.
///
/// This and [`relu_max_pool2d_backward`] are the only backward functions here: finite
/// differences cannot see which of several tied maxima takes the gradient, so the tie rule is
/// written out once, plainly, and the op suite checks it against finite differences wherever
/// there are no ties.
///
/// # Errors
/// Those of [`max_pool2d`], and [`TensorError::Shape`] if `gy` is not shaped like its output.
pub fn max_pool2d_backward(x: &RefTensor, gy: &RefTensor, size: usize) -> Result<RefTensor> {
    pool_backward("max_pool2d_backward", x, gy, size, false)
}

/// The gradient of `max_pool2d(relu(z))` with respect to `z`, given `y = relu(z)`: as
/// [`max_pool2d_backward`] of `y`, then ReLU's gradient (0 where `y ≤ 0`, that is `z ≤ 0`). So a
/// window's `gy` goes to its first maximum of `y` only if that maximum is positive.
///
/// # Errors
/// As [`max_pool2d_backward`].
pub fn relu_max_pool2d_backward(y: &RefTensor, gy: &RefTensor, size: usize) -> Result<RefTensor> {
    pool_backward("relu_max_pool2d_backward", y, gy, size, true)
}

fn pool_backward(
    op: &'static str,
    x: &RefTensor,
    gy: &RefTensor,
    size: usize,
    relu_mask: bool,
) -> Result<RefTensor> {
    let out = max_pool2d(x, size).map_err(|e| match e {
        TensorError::Shape { detail, .. } => TensorError::Shape { op, detail },
        TensorError::InvalidArgument { detail, .. } => TensorError::InvalidArgument { op, detail },
        other => other,
    })?;
    if gy.shape != out.shape {
        return Err(TensorError::shape(
            op,
            format!("gy {:?} for a pooled output {:?}", gy.shape, out.shape),
        ));
    }
    let (n, c, oh, ow) = (out.shape[0], out.shape[1], out.shape[2], out.shape[3]);
    let mut gx = RefTensor::full(&x.shape, 0.0);
    for b in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    // The first strict maximum in row-major order within the window.
                    let mut best: Option<(usize, f64)> = None;
                    for u in 0..size {
                        for v in 0..size {
                            let at = offset(&x.shape, &[b, ch, i * size + u, j * size + v]);
                            if best.is_none_or(|(_, m)| x.data[at] > m) {
                                best = Some((at, x.data[at]));
                            }
                        }
                    }
                    let (at, m) = best.expect("windows are not empty");
                    if !relu_mask || m > 0.0 {
                        gx.data[at] = gy.at(&[b, ch, i, j]);
                    }
                }
            }
        }
    }
    Ok(gx)
}

// ---- losses ---------------------------------------------------------------------------------

/// Checks logits `[n, k]` against labels `[n]` holding integer classes in `0..k`, and returns
/// `(n, k, labels as indices)`.
fn logits_labels(
    op: &'static str,
    logits: &RefTensor,
    labels: &RefTensor,
) -> Result<(usize, usize, Vec<usize>)> {
    if logits.shape.len() != 2 || labels.shape.len() != 1 || logits.shape[0] != labels.shape[0] {
        return Err(TensorError::shape(
            op,
            format!(
                "logits {:?} must be [n, k] and labels {:?} [n]",
                logits.shape, labels.shape
            ),
        ));
    }
    let (n, k) = (logits.shape[0], logits.shape[1]);
    let mut ys = Vec::with_capacity(n);
    for &l in &labels.data {
        if !(l >= 0.0 && l < k as f64 && l.fract() == 0.0) {
            return Err(TensorError::invalid(
                op,
                format!("label {l} is not a class in 0..{k}"),
            ));
        }
        ys.push(l as usize);
    }
    Ok((n, k, ys))
}

/// Per-example cross-entropy `log Σ_j exp(z_j) − z_y` of logits `[n, k]` against labels `[n]`,
/// shape `[n]` (computed as `m + log Σ_j exp(z_j − m)` with `m = max_j z_j`, so that large logits
/// do not overflow).
///
/// # Errors
/// [`TensorError::Shape`] for mismatched shapes, [`TensorError::InvalidArgument`] for a label
/// that is not an integer in `0..k`.
pub fn cross_entropy(logits: &RefTensor, labels: &RefTensor) -> Result<RefTensor> {
    let (n, k, ys) = logits_labels("cross_entropy", logits, labels)?;
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let row = &logits.data[i * k..(i + 1) * k];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|&z| (z - m).exp()).sum();
        data.push(m + s.ln() - row[ys[i]]);
    }
    Ok(RefTensor {
        shape: vec![n],
        data,
    })
}

/// Per-example `KL(P_i ‖ Q_i)` with `P`, `Q` the softmax of the rows of `p`, `q` `[n, k]`,
/// computed as `Σ_j P_ij · ln(P_ij / Q_ij)` from explicit probabilities (a different route from
/// the backends' log-softmax form), shape `[n]`.
///
/// # Errors
/// [`TensorError::Shape`] unless both are `[n, k]` of one shape.
pub fn kl_div(p: &RefTensor, q: &RefTensor) -> Result<RefTensor> {
    if p.shape.len() != 2 || p.shape != q.shape || p.shape[1] == 0 {
        return Err(TensorError::shape(
            "kl_div",
            format!("logits {:?} and {:?} must both be [n, k]", p.shape, q.shape),
        ));
    }
    let (n, k) = (p.shape[0], p.shape[1]);
    let probs = |row: &[f64]| -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|&z| (z - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    };
    let data = (0..n)
        .map(|i| {
            let (pp, qq) = (
                probs(&p.data[i * k..(i + 1) * k]),
                probs(&q.data[i * k..(i + 1) * k]),
            );
            pp.iter()
                .zip(&qq)
                .map(|(&a, &b)| if a == 0.0 { 0.0 } else { a * (a / b).ln() })
                .sum()
        })
        .collect();
    Ok(RefTensor {
        shape: vec![n],
        data,
    })
}

/// Per-example CW margin loss of MadryLab's `mnist_challenge`, `−relu(z_y − max_{j≠y} z_j + κ)`,
/// shape `[n]`.
///
/// # Errors
/// As [`cross_entropy`]; also [`TensorError::InvalidArgument`] for fewer than two classes.
pub fn cw_loss(logits: &RefTensor, labels: &RefTensor, kappa: f64) -> Result<RefTensor> {
    let (n, k, ys) = logits_labels("cw_loss", logits, labels)?;
    if k < 2 {
        return Err(TensorError::invalid(
            "cw_loss",
            "needs at least two classes",
        ));
    }
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let row = &logits.data[i * k..(i + 1) * k];
        let mut other = f64::NEG_INFINITY;
        for (j, &z) in row.iter().enumerate() {
            if j != ys[i] && z > other {
                other = z;
            }
        }
        let margin = row[ys[i]] - other + kappa;
        data.push(-(if margin > 0.0 { margin } else { 0.0 }));
    }
    Ok(RefTensor {
        shape: vec![n],
        data,
    })
}

/// Per-example DLR loss (Croce & Hein 2020) of logits `[n, k]` against labels `[n]`, shape
/// `[n]`: untargeted `−(z_y − max_{i≠y} z_i)/(z_π1 − z_π3 + 10⁻¹²)`, or towards `targets` `[n]`
/// `−(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²)`, where `π_r` is the class of rank `r`:
/// the class `c` with exactly `r − 1` classes `j` such that `z_j > z_c`, or `z_j = z_c` and
/// `j < c` (ties: the lower index ranks first).
///
/// # Errors
/// As [`cross_entropy`] (also for the targets); [`TensorError::Shape`] for fewer than 3 classes
/// (4 with targets) or targets that are not `[n]`.
pub fn dlr_loss(
    logits: &RefTensor,
    labels: &RefTensor,
    targets: Option<&RefTensor>,
) -> Result<RefTensor> {
    let op = "dlr_loss";
    let (n, k, ys) = logits_labels(op, logits, labels)?;
    let ts = match targets {
        Some(t) => Some(logits_labels(op, logits, t)?.2),
        None => None,
    };
    let need = if ts.is_some() { 4 } else { 3 };
    if k < need {
        return Err(TensorError::shape(
            op,
            format!("{k} classes; needs at least {need}"),
        ));
    }
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let z = &logits.data[i * k..(i + 1) * k];
        // by_rank[r] = the class of rank r + 1.
        let mut by_rank = vec![0usize; k];
        for c in 0..k {
            let rank = (0..k)
                .filter(|&j| z[j] > z[c] || (z[j] == z[c] && j < c))
                .count();
            by_rank[rank] = c;
        }
        let y = ys[i];
        let (num, den) = match &ts {
            None => {
                let other = (0..k)
                    .filter(|&j| j != y)
                    .map(|j| z[j])
                    .fold(f64::NEG_INFINITY, f64::max);
                (z[y] - other, z[by_rank[0]] - z[by_rank[2]] + 1e-12)
            }
            Some(t) => (
                z[y] - z[t[i]],
                z[by_rank[0]] - (z[by_rank[2]] + z[by_rank[3]]) / 2.0 + 1e-12,
            ),
        };
        data.push(-num / den);
    }
    Ok(RefTensor {
        shape: vec![n],
        data,
    })
}

// ---- per-example ops ------------------------------------------------------------------------

/// Checks a batch `[n, …]` against one value per example `[n]`; returns `(n, elements per row)`.
fn rows(op: &'static str, x: &RefTensor, s: &RefTensor) -> Result<(usize, usize)> {
    match x.shape.first() {
        Some(&n) if s.shape == [n] => Ok((n, x.numel().checked_div(n).unwrap_or(0))),
        _ => Err(TensorError::shape(
            op,
            format!("{:?} must be [n, …] and {:?} [n]", x.shape, s.shape),
        )),
    }
}

/// Each row `i` of `x` (`[n, …]`) times `s[i]` (`s` of shape `[n]`).
///
/// # Errors
/// [`TensorError::Shape`] when `s` is not `[n]` or `x` is a scalar.
pub fn mul_rows(x: &RefTensor, s: &RefTensor) -> Result<RefTensor> {
    let (_, d) = rows("mul_rows", x, s)?;
    let data = (0..x.numel()).map(|f| x.data[f] * s.data[f / d]).collect();
    Ok(RefTensor {
        shape: x.shape.clone(),
        data,
    })
}

/// Row `i` of `a` where `mask[i] ≠ 0`, else row `i` of `b`.
///
/// # Errors
/// [`TensorError::Shape`] when `a` and `b` differ in shape or `mask` is not `[n]`.
pub fn select_rows(mask: &RefTensor, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
    same_shape("select_rows", a, b)?;
    let (_, d) = rows("select_rows", a, mask)?;
    let data = (0..a.numel())
        .map(|f| {
            if mask.data[f / d] != 0.0 {
                a.data[f]
            } else {
                b.data[f]
            }
        })
        .collect();
    Ok(RefTensor {
        shape: a.shape.clone(),
        data,
    })
}

/// One restart merged into the best so far, per example (`Backend::restart_merge`): `best`
/// `[3, n]` (rows: objective, predicted class, success as 1 or 0; `None` before the first
/// restart), the candidate's `logits` `[n, k]`, `loss` `[n]` and `labels` `[n]`. The candidate's
/// objective is `−loss` if `targeted`, else `loss`; its prediction the first index of the row's
/// maximum, NaN below every number (all NaN: 0); success `(prediction = label) = targeted`. It
/// is taken where there is no best yet, where it succeeds and the best does not, or where both
/// agree on success and its objective is strictly higher. Returns `(take` `[n]` of 1 and 0, the
/// new best `[3, n])`.
///
/// # Errors
/// [`TensorError::Shape`] unless `logits` is `[n, k ≥ 1]`, `loss` and `labels` `[n]` and `best`
/// `[3, n]`.
pub fn restart_merge(
    best: Option<&RefTensor>,
    logits: &RefTensor,
    loss: &RefTensor,
    labels: &RefTensor,
    targeted: bool,
) -> Result<(RefTensor, RefTensor)> {
    let op = "restart_merge";
    let bad = |what: String| Err(TensorError::shape(op, what));
    if logits.shape.len() != 2 || logits.shape[1] == 0 {
        return bad(format!("logits {:?} must be [n, k ≥ 1]", logits.shape));
    }
    let (n, k) = (logits.shape[0], logits.shape[1]);
    if loss.shape != [n] || labels.shape != [n] {
        return bad(format!(
            "loss {:?} and labels {:?} must be [{n}]",
            loss.shape, labels.shape
        ));
    }
    if let Some(b) = best {
        if b.shape != [3, n] {
            return bad(format!("best {:?} must be [3, {n}]", b.shape));
        }
    }
    let mut take = RefTensor::full(&[n], 0.0);
    let mut out = RefTensor::full(&[3, n], 0.0);
    for i in 0..n {
        let row = &logits.data[i * k..(i + 1) * k];
        let mut arg = None::<usize>;
        for (j, &v) in row.iter().enumerate() {
            let better = match arg {
                None => !v.is_nan(),
                Some(a) => v > row[a],
            };
            if better {
                arg = Some(j);
            }
        }
        let pred = arg.unwrap_or(0) as f64;
        let objective = if targeted {
            -loss.data[i]
        } else {
            loss.data[i]
        };
        let success = (pred == labels.data[i]) == targeted;
        let cand = [objective, pred, if success { 1.0 } else { 0.0 }];
        let chosen = match best {
            None => Some(cand),
            Some(b) => {
                let (o, s) = (b.data[i], b.data[2 * n + i] != 0.0);
                let wins = if success != s { success } else { objective > o };
                wins.then_some(cand)
            }
        };
        take.data[i] = if chosen.is_some() { 1.0 } else { 0.0 };
        for r in 0..3 {
            out.data[r * n + i] = match (chosen, best) {
                (Some(c), _) => c[r],
                (None, Some(b)) => b.data[r * n + i],
                (None, None) => unreachable!("no best: the candidate is taken"),
            };
        }
    }
    Ok((take, out))
}

// ---- batch normalisation --------------------------------------------------------------------

/// Checks `x` (`[n, c]` or `[n, c, h, w]`) against per-channel vectors and returns `c`.
fn bn_channels(op: &'static str, x: &RefTensor, per_channel: &[&RefTensor]) -> Result<usize> {
    if x.shape.len() != 2 && x.shape.len() != 4 {
        return Err(TensorError::shape(
            op,
            format!("{:?} must be [n, c] or [n, c, h, w]", x.shape),
        ));
    }
    let c = x.shape[1];
    for t in per_channel {
        if t.shape != [c] {
            return Err(TensorError::shape(
                op,
                format!("{:?} must be [{c}] for {:?}", t.shape, x.shape),
            ));
        }
    }
    Ok(c)
}

/// Batch normalisation with batch statistics over every axis but 1 (channels):
/// `y = (x − mean_c) / sqrt(var_c + eps) · gamma_c + beta_c`, with `var` the biased variance
/// (divided by the count). Returns `(y, mean, var)`, the statistics of shape `[c]`.
///
/// # Errors
/// [`TensorError::Shape`] when `x` is neither 2-D nor 4-D or `gamma`, `beta` are not `[c]`.
pub fn batch_norm_train(
    x: &RefTensor,
    gamma: &RefTensor,
    beta: &RefTensor,
    eps: f64,
) -> Result<(RefTensor, RefTensor, RefTensor)> {
    let c = bn_channels("batch_norm_train", x, &[gamma, beta])?;
    let mut sum = vec![0.0; c];
    let mut cnt = vec![0usize; c];
    for flat in 0..x.numel() {
        let ch = unravel(&x.shape, flat)[1];
        sum[ch] += x.data[flat];
        cnt[ch] += 1;
    }
    let mean: Vec<f64> = (0..c).map(|ch| sum[ch] / cnt[ch] as f64).collect();
    let mut sq = vec![0.0; c];
    for flat in 0..x.numel() {
        let ch = unravel(&x.shape, flat)[1];
        sq[ch] += (x.data[flat] - mean[ch]) * (x.data[flat] - mean[ch]);
    }
    let var: Vec<f64> = (0..c).map(|ch| sq[ch] / cnt[ch] as f64).collect();
    let mean = RefTensor {
        shape: vec![c],
        data: mean,
    };
    let var = RefTensor {
        shape: vec![c],
        data: var,
    };
    let y = batch_norm_eval(x, gamma, beta, &mean, &var, eps)?;
    Ok((y, mean, var))
}

/// Batch normalisation with given statistics `mean`, `var` (`[c]`):
/// `y = (x − mean_c) / sqrt(var_c + eps) · gamma_c + beta_c`.
///
/// # Errors
/// As [`batch_norm_train`].
pub fn batch_norm_eval(
    x: &RefTensor,
    gamma: &RefTensor,
    beta: &RefTensor,
    mean: &RefTensor,
    var: &RefTensor,
    eps: f64,
) -> Result<RefTensor> {
    bn_channels("batch_norm_eval", x, &[gamma, beta, mean, var])?;
    let mut y = x.clone();
    for flat in 0..x.numel() {
        let ch = unravel(&x.shape, flat)[1];
        y.data[flat] = (x.data[flat] - mean.data[ch]) / (var.data[ch] + eps).sqrt()
            * gamma.data[ch]
            + beta.data[ch];
    }
    Ok(y)
}

// ---- adversarial steps ----------------------------------------------------------------------

/// Projection onto the L∞ ball of radius `eps` around `x0`, then onto `[0, 1]`:
/// `clamp(min(max(x, x0 − eps), x0 + eps), 0, 1)`.
///
/// # Errors
/// [`TensorError::Shape`] when `x` and `x0` differ in shape.
pub fn project_linf(x: &RefTensor, x0: &RefTensor, eps: f64) -> Result<RefTensor> {
    same_shape("project_linf", x, x0)?;
    let mut y = x.clone();
    for i in 0..x.numel() {
        let (lo, hi) = (x0.data[i] - eps, x0.data[i] + eps);
        let mut v = x.data[i];
        if v < lo {
            v = lo;
        }
        if v > hi {
            v = hi;
        }
        y.data[i] = v.clamp(0.0, 1.0);
    }
    Ok(y)
}

/// One L∞ PGD step, `project_linf(x + alpha · sign(g), x0, eps)`.
///
/// # Errors
/// [`TensorError::Shape`] when `x`, `x0`, `g` differ in shape.
pub fn pgd_step_linf(
    x: &RefTensor,
    x0: &RefTensor,
    g: &RefTensor,
    alpha: f64,
    eps: f64,
) -> Result<RefTensor> {
    same_shape("pgd_step_linf", x, g)?;
    let s = sign(g);
    let mut moved = x.clone();
    for i in 0..x.numel() {
        moved.data[i] = x.data[i] + alpha * s.data[i];
    }
    project_linf(&moved, x0, eps)
}

/// Projection onto the L2 ball of radius `eps` around `x0`, per example (first axis): the
/// difference `δ = x − x0` is rescaled to norm `eps` when its norm exceeds `eps`; then onto
/// `[0, 1]`.
///
/// # Errors
/// [`TensorError::Shape`] when `x` and `x0` differ in shape or are scalars.
pub fn project_l2(x: &RefTensor, x0: &RefTensor, eps: f64) -> Result<RefTensor> {
    same_shape("project_l2", x, x0)?;
    let delta = sub(x, x0)?;
    let norms = l2_norms(&delta)?;
    let n = x.shape[0];
    let per = x.numel().checked_div(n).unwrap_or(0);
    let mut y = x.clone();
    for b in 0..n {
        let scale = if norms.data[b] > eps {
            eps / norms.data[b]
        } else {
            1.0
        };
        for j in b * per..(b + 1) * per {
            y.data[j] = (x0.data[j] + delta.data[j] * scale).clamp(0.0, 1.0);
        }
    }
    Ok(y)
}

/// One L2 PGD step: per example, `x + alpha · g / ‖g‖₂` (no move where `‖g‖₂ = 0`), then
/// [`project_l2`].
///
/// # Errors
/// [`TensorError::Shape`] when `x`, `x0`, `g` differ in shape or are scalars.
pub fn pgd_step_l2(
    x: &RefTensor,
    x0: &RefTensor,
    g: &RefTensor,
    alpha: f64,
    eps: f64,
) -> Result<RefTensor> {
    same_shape("pgd_step_l2", x, g)?;
    let norms = l2_norms(g)?;
    let n = x.shape[0];
    let per = x.numel().checked_div(n).unwrap_or(0);
    let mut moved = x.clone();
    for b in 0..n {
        let scale = if norms.data[b] > 0.0 {
            alpha / norms.data[b]
        } else {
            0.0
        };
        for j in b * per..(b + 1) * per {
            moved.data[j] = x.data[j] + g.data[j] * scale;
        }
    }
    project_l2(&moved, x0, eps)
}

// ---- optimisers -----------------------------------------------------------------------------

/// One Adam step as in PyTorch, returning `(param, m, v)` after it:
/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, `m̂ = m/(1−β1^t)`, `v̂ = v/(1−β2^t)`,
/// `param ← param − lr·m̂/(sqrt(v̂) + eps)`, with `t = max(step, 1)`.
///
/// # Errors
/// [`TensorError::Shape`] when the four tensors differ in shape.
pub fn adam_update(
    param: &RefTensor,
    grad: &RefTensor,
    m: &RefTensor,
    v: &RefTensor,
    h: AdamParams,
) -> Result<(RefTensor, RefTensor, RefTensor)> {
    for t in [grad, m, v] {
        same_shape("adam_update", param, t)?;
    }
    let (lr, b1, b2, eps) = (h.lr as f64, h.beta1 as f64, h.beta2 as f64, h.eps as f64);
    let t = h.step.max(1) as i32;
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let (mut p2, mut m2, mut v2) = (param.clone(), m.clone(), v.clone());
    for i in 0..param.numel() {
        let g = grad.data[i];
        m2.data[i] = b1 * m.data[i] + (1.0 - b1) * g;
        v2.data[i] = b2 * v.data[i] + (1.0 - b2) * g * g;
        let mhat = m2.data[i] / bc1;
        let vhat = v2.data[i] / bc2;
        p2.data[i] = param.data[i] - lr * mhat / (vhat.sqrt() + eps);
    }
    Ok((p2, m2, v2))
}

/// One SGD step with momentum and coupled weight decay as in PyTorch, returning
/// `(param, momentum_buf)` after it: `g ← g + wd·p`, `buf ← momentum·buf + g`,
/// `p ← p − lr·buf`.
///
/// # Errors
/// [`TensorError::Shape`] when the three tensors differ in shape.
pub fn sgd_update(
    param: &RefTensor,
    grad: &RefTensor,
    buf: &RefTensor,
    h: SgdParams,
) -> Result<(RefTensor, RefTensor)> {
    same_shape("sgd_update", param, grad)?;
    same_shape("sgd_update", param, buf)?;
    let (lr, mom, wd) = (h.lr as f64, h.momentum as f64, h.weight_decay as f64);
    let (mut p2, mut b2) = (param.clone(), buf.clone());
    for i in 0..param.numel() {
        let g = grad.data[i] + wd * param.data[i];
        b2.data[i] = mom * buf.data[i] + g;
        p2.data[i] = param.data[i] - lr * b2.data[i];
    }
    Ok((p2, b2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f64]) -> RefTensor {
        RefTensor::new(shape, data.to_vec()).unwrap()
    }

    #[test]
    fn broadcasting_aligns_on_the_right() {
        // [2, 1] + [3]: y[i, j] = a[i] + b[j].
        let y = add(&t(&[2, 1], &[10.0, 20.0]), &t(&[3], &[1.0, 2.0, 3.0])).unwrap();
        assert_eq!(y.shape, vec![2, 3]);
        assert_eq!(y.data, vec![11.0, 12.0, 13.0, 21.0, 22.0, 23.0]);
        let e = add(&t(&[2, 3], &[0.0; 6]), &t(&[2], &[0.0; 2])).unwrap_err();
        assert!(matches!(e, TensorError::Shape { op: "add", .. }));
    }

    #[test]
    fn sum_axes_keeps_or_drops() {
        // [[1, 2, 3], [4, 5, 6]]: rows sum to [6, 15], columns to [5, 7, 9].
        let x = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(sum_axes(&x, &[1], false).unwrap(), t(&[2], &[6.0, 15.0]));
        assert_eq!(
            sum_axes(&x, &[0], true).unwrap(),
            t(&[1, 3], &[5.0, 7.0, 9.0])
        );
        assert_eq!(sum_axes(&x, &[0, 1], false).unwrap(), t(&[], &[21.0]));
        assert!(sum_axes(&x, &[2], false).is_err());
        assert!(sum_axes(&x, &[1, 1], false).is_err());
        assert_eq!(sum_to_shape(&x, &[3]).unwrap(), t(&[3], &[5.0, 7.0, 9.0]));
        assert_eq!(sum_to_shape(&x, &[2, 1]).unwrap(), t(&[2, 1], &[6.0, 15.0]));
    }

    #[test]
    fn matmul_transposes() {
        // a = [[1, 2], [3, 4]], b = [[5, 6], [7, 8]]: a·b = [[19, 22], [43, 50]],
        // aᵀ·b = [[26, 30], [38, 44]], a·bᵀ = [[17, 23], [39, 53]].
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
        assert_eq!(
            matmul(&a, &b, false, false).unwrap().data,
            vec![19.0, 22.0, 43.0, 50.0]
        );
        assert_eq!(
            matmul(&a, &b, true, false).unwrap().data,
            vec![26.0, 30.0, 38.0, 44.0]
        );
        assert_eq!(
            matmul(&a, &b, false, true).unwrap().data,
            vec![17.0, 23.0, 39.0, 53.0]
        );
        let c = t(&[2, 3], &[1.0; 6]);
        assert_eq!(matmul(&c, &c, true, false).unwrap().shape, vec![3, 3]);
        assert!(matmul(&c, &c, false, false).is_err());
    }

    #[test]
    fn conv2d_with_padding_and_stride() {
        // x = 1..9 in a 3×3 image, a 3×3 kernel of ones, padding 1, stride 2: the four outputs
        // sit at the corners and sum the 2×2 block of the image inside each window.
        let x = t(
            &[1, 1, 3, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        );
        let w = t(&[1, 1, 3, 3], &[1.0; 9]);
        let y = conv2d(&x, &w, Some(&t(&[1], &[0.5])), 2, 1).unwrap();
        assert_eq!(y.shape, vec![1, 1, 2, 2]);
        assert_eq!(y.data, vec![12.5, 16.5, 24.5, 28.5]);
    }

    #[test]
    fn losses_on_known_logits() {
        // Logits [0, ln 3]: softmax [1/4, 3/4]; CE for label 0 is ln 4, for label 1 ln(4/3).
        let z = t(&[2, 2], &[0.0, 3f64.ln(), 0.0, 3f64.ln()]);
        let ce = cross_entropy(&z, &t(&[2], &[0.0, 1.0])).unwrap();
        assert!((ce.data[0] - 4f64.ln()).abs() < 1e-15);
        assert!((ce.data[1] - (4.0f64 / 3.0).ln()).abs() < 1e-15);
        assert!(cross_entropy(&z, &t(&[2], &[0.0, 2.0])).is_err());
        assert!(cross_entropy(&z, &t(&[2], &[0.5, 1.0])).is_err());
        // CW, κ = 0: logits [1, 3, 2], label 1: margin 3 − 2 = 1, loss −1; label 0: margin
        // 1 − 3 < 0, loss 0.
        let z = t(&[2, 3], &[1.0, 3.0, 2.0, 1.0, 3.0, 2.0]);
        let cw = cw_loss(&z, &t(&[2], &[1.0, 0.0]), 0.0).unwrap();
        assert_eq!(cw.data, vec![-1.0, 0.0]);
    }

    #[test]
    fn batch_norm_of_two_samples() {
        // x = [1, 3] in one channel: mean 2, biased var 1, normalised [−1, 1].
        let x = t(&[2, 1], &[1.0, 3.0]);
        let (y, m, v) = batch_norm_train(&x, &t(&[1], &[2.0]), &t(&[1], &[0.5]), 0.0).unwrap();
        assert_eq!((m.data[0], v.data[0]), (2.0, 1.0));
        assert_eq!(y.data, vec![-1.5, 2.5]);
    }

    #[test]
    fn projections_stay_in_the_ball_and_the_box() {
        let x0 = t(&[1, 3], &[0.5, 0.9, 0.1]);
        let g = t(&[1, 3], &[1.0, 1.0, -1.0]);
        // Step 0.25 with ε = 0.2: moves clipped to ±0.2, then to [0, 1].
        let y = pgd_step_linf(&x0, &x0, &g, 0.25, 0.2).unwrap();
        assert_eq!(y.data, vec![0.7, 1.0, 0.0]);
        // L2: δ = (0.3, 0.4, 0) has norm 0.5, rescaled to 0.25 → (0.15, 0.2, 0).
        let x = t(&[1, 3], &[0.8, 1.3, 0.1]);
        let y = project_l2(&x, &x0, 0.25).unwrap();
        for (a, b) in y.data.iter().zip([0.65, 1.0, 0.1]) {
            assert!((a - b).abs() < 1e-12);
        }
    }
}
