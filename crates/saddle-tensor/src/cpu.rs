//! The CPU backend: `f32` tensors in host memory, computed with ndarray and its GEMM
//! (matrixmultiply), split across threads with rayon.
//!
//! Tensors share their buffer (`Arc`), so cloning one is cheap; in-place updates copy only when
//! the buffer is shared. Work is split into fixed-size chunks whose partial results are combined
//! in a fixed order, so results do not depend on the number of threads.

use std::sync::Arc;

use ndarray::{ArrayViewD, IxDyn, Zip};
use rayon::prelude::*;

use crate::backend::{Backend, BatchNormGrads, BatchNormStats, TensorLike};
use crate::error::{Result, TensorError};
use crate::shape::{
    broadcast_shape, check_logits_labels, checked_numel, pool_out_shape, same_shape, Conv2dParams,
    ConvGeometry,
};
use crate::{AdamParams, SgdParams};

/// A CPU tensor: a shape and a shared, row-major `f32` buffer.
#[derive(Clone, PartialEq)]
pub struct CpuTensor {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: Vec<f32> = self.data.iter().take(8).copied().collect();
        write!(
            f,
            "CpuTensor{:?} {:?}{}",
            self.shape,
            head,
            if self.data.len() > 8 { "…" } else { "" }
        )
    }
}

impl TensorLike for CpuTensor {
    fn dims(&self) -> &[usize] {
        &self.shape
    }
}

impl CpuTensor {
    /// Builds a tensor, checking that `data` has as many elements as `shape`.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let n = checked_numel("from_vec", shape)?;
        if n != data.len() {
            return Err(TensorError::shape(
                "from_vec",
                format!(
                    "shape {shape:?} needs {n} elements but {} were given",
                    data.len()
                ),
            ));
        }
        Ok(CpuTensor {
            shape: shape.to_vec(),
            data: Arc::new(data),
        })
    }

    fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        CpuTensor {
            shape,
            data: Arc::new(data),
        }
    }

    /// The elements in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access to the elements (copies the buffer first if it is shared).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// An ndarray view of the tensor.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        ArrayViewD::from_shape(IxDyn(&self.shape), &self.data).expect("shape matches data")
    }
}

/// The CPU backend. Cheap to copy; threads come from rayon's global pool (set its size with
/// `rayon::ThreadPoolBuilder::new().num_threads(n).build_global()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Cpu {
    /// The CPU backend.
    pub fn new() -> Self {
        Cpu
    }
}

/// Rows of work handed to one rayon task: large enough to amortise scheduling, fixed so that
/// results do not depend on the thread count.
const ROWS_PER_TASK: usize = 4;

/// `c ← alpha·op(a)·op(b) + beta·c` on row-major slices via matrixmultiply, single-threaded.
/// `a` is `m×k` (or `k×m` when `ta`), `b` is `k×n` (or `n×k` when `tb`), `c` is `m×n`.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    beta: f32,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above guarantee every index matrixmultiply touches is in bounds for
    // the given strides; `c` does not alias `a` or `b` (distinct borrows).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `op(a)·op(b)` split across threads by blocks of output rows.
fn par_matmul(m: usize, k: usize, n: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    if n == 0 || m == 0 {
        return c;
    }
    let rows = (m / rayon::current_num_threads().max(1)).clamp(16, 256);
    let rows = rows.min(m);
    c.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(blk, cblk)| {
            let r0 = blk * rows;
            let mr = cblk.len() / n;
            if ta {
                // op(a) rows r0..r0+mr are columns of a (k × m): a strided sub-block.
                let mut asub = vec![0.0f32; k * mr];
                for kk in 0..k {
                    asub[kk * mr..(kk + 1) * mr].copy_from_slice(&a[kk * m + r0..kk * m + r0 + mr]);
                }
                sgemm(mr, k, n, &asub, true, b, tb, cblk, 0.0);
            } else {
                sgemm(mr, k, n, &a[r0 * k..(r0 + mr) * k], false, b, tb, cblk, 0.0);
            }
        });
    c
}

/// Gathers the patches of one image `[c, h, w]` into `cols` `[c·kh·kw, oh·ow]` (zero padding).
fn im2col(x: &[f32], g: &ConvGeometry, cols: &mut [f32]) {
    let (oh, ow) = (g.oh, g.ow);
    let pad = g.padding as isize;
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                for oi in 0..oh {
                    let ii = (oi * g.stride) as isize + ki as isize - pad;
                    let drow = &mut dst[oi * ow..(oi + 1) * ow];
                    if ii < 0 || ii >= g.h as isize {
                        drow.fill(0.0);
                        continue;
                    }
                    let src = &x[(c * g.h + ii as usize) * g.w..(c * g.h + ii as usize + 1) * g.w];
                    for oj in 0..ow {
                        let jj = (oj * g.stride) as isize + kj as isize - pad;
                        drow[oj] = if jj < 0 || jj >= g.w as isize {
                            0.0
                        } else {
                            src[jj as usize]
                        };
                    }
                }
            }
        }
    }
}

/// Scatters-adds `cols` `[c·kh·kw, oh·ow]` back into one image gradient `[c, h, w]`.
fn col2im(cols: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    let (oh, ow) = (g.oh, g.ow);
    let pad = g.padding as isize;
    x.fill(0.0);
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * oh * ow..(row + 1) * oh * ow];
                for oi in 0..oh {
                    let ii = (oi * g.stride) as isize + ki as isize - pad;
                    if ii < 0 || ii >= g.h as isize {
                        continue;
                    }
                    let base = (c * g.h + ii as usize) * g.w;
                    for oj in 0..ow {
                        let jj = (oj * g.stride) as isize + kj as isize - pad;
                        if jj >= 0 && jj < g.w as isize {
                            x[base + jj as usize] += src[oi * ow + oj];
                        }
                    }
                }
            }
        }
    }
}

fn labels_to_indices(op: &'static str, labels: &CpuTensor, classes: usize) -> Result<Vec<usize>> {
    labels
        .as_slice()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as usize) < classes {
                Ok(v as usize)
            } else {
                Err(TensorError::invalid(
                    op,
                    format!("label {v} at position {i} is not a class index in 0..{classes}"),
                ))
            }
        })
        .collect()
}

/// Per-channel reduction layout of `[n, c, ...]`: (n, c, spatial size).
fn bn_layout(
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

impl Cpu {
    fn binary(
        &self,
        op: &'static str,
        a: &CpuTensor,
        b: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) -> Result<CpuTensor> {
        if a.shape == b.shape {
            let data: Vec<f32> = a
                .data
                .iter()
                .zip(b.data.iter())
                .map(|(&x, &y)| f(x, y))
                .collect();
            return Ok(CpuTensor::from_parts(a.shape.clone(), data));
        }
        let out = broadcast_shape(op, &a.shape, &b.shape)?;
        checked_numel(op, &out)?;
        let av = a.view();
        let bv = b.view();
        let ab = av
            .broadcast(IxDyn(&out))
            .ok_or_else(|| TensorError::shape(op, "broadcast"))?;
        let bb = bv
            .broadcast(IxDyn(&out))
            .ok_or_else(|| TensorError::shape(op, "broadcast"))?;
        let r = Zip::from(&ab).and(&bb).map_collect(|&x, &y| f(x, y));
        let data = r.as_standard_layout().iter().copied().collect();
        Ok(CpuTensor::from_parts(out, data))
    }

    fn unary(&self, x: &CpuTensor, f: impl Fn(f32) -> f32 + Sync) -> CpuTensor {
        let data = if x.data.len() > 1 << 16 {
            x.data.par_iter().map(|&v| f(v)).collect()
        } else {
            x.data.iter().map(|&v| f(v)).collect()
        };
        CpuTensor::from_parts(x.shape.clone(), data)
    }

    fn zip_same(
        &self,
        op: &'static str,
        x: &CpuTensor,
        gy: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) -> Result<CpuTensor> {
        same_shape(op, &x.shape, &gy.shape)?;
        let data = x
            .data
            .iter()
            .zip(gy.data.iter())
            .map(|(&a, &b)| f(a, b))
            .collect();
        Ok(CpuTensor::from_parts(x.shape.clone(), data))
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn from_vec(&self, shape: &[usize], data: Vec<f32>) -> Result<CpuTensor> {
        CpuTensor::new(shape, data)
    }

    fn to_vec(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.as_ref().clone())
    }

    fn full(&self, shape: &[usize], value: f32) -> Result<CpuTensor> {
        let n = checked_numel("full", shape)?;
        Ok(CpuTensor::from_parts(shape.to_vec(), vec![value; n]))
    }

    fn reshape(&self, x: &CpuTensor, shape: &[usize]) -> Result<CpuTensor> {
        if checked_numel("reshape", shape)? != x.data.len() {
            return Err(TensorError::shape(
                "reshape",
                format!("cannot reshape {:?} to {shape:?}", x.shape),
            ));
        }
        Ok(CpuTensor {
            shape: shape.to_vec(),
            data: x.data.clone(),
        })
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("add", a, b, |x, y| x + y)
    }
    fn sub(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("sub", a, b, |x, y| x - y)
    }
    fn mul(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("mul", a, b, |x, y| x * y)
    }
    fn div(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("div", a, b, |x, y| x / y)
    }
    fn minimum(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("minimum", a, b, f32::min)
    }
    fn maximum(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("maximum", a, b, f32::max)
    }

    fn affine(&self, x: &CpuTensor, s: f32, t: f32) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| s * v + t))
    }
    fn sqrt(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.unary(x, f32::sqrt))
    }
    fn sign(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v * 0.0 // 0 stays 0 (keeping its sign bit), NaN stays NaN
            }
        }))
    }
    fn clamp(&self, x: &CpuTensor, lo: f32, hi: f32) -> Result<CpuTensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(TensorError::invalid(
                "clamp",
                format!("bounds [{lo}, {hi}] are not a range"),
            ));
        }
        Ok(self.unary(x, |v| v.max(lo).min(hi)))
    }
    fn relu(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| if v > 0.0 { v } else { 0.0 }))
    }
    fn relu_backward(&self, x: &CpuTensor, gy: &CpuTensor) -> Result<CpuTensor> {
        self.zip_same("relu_backward", x, gy, |v, g| if v > 0.0 { g } else { 0.0 })
    }
    fn leaky_relu(&self, x: &CpuTensor, slope: f32) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| if v > 0.0 { v } else { slope * v }))
    }
    fn leaky_relu_backward(&self, x: &CpuTensor, gy: &CpuTensor, slope: f32) -> Result<CpuTensor> {
        self.zip_same("leaky_relu_backward", x, gy, |v, g| {
            if v > 0.0 {
                g
            } else {
                slope * g
            }
        })
    }

    fn sum_axes(&self, x: &CpuTensor, axes: &[usize], keep_dims: bool) -> Result<CpuTensor> {
        let nd = x.shape.len();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0] == w[1] {
                return Err(TensorError::invalid(
                    "sum_axes",
                    format!("axis {} given twice", w[0]),
                ));
            }
        }
        if let Some(&a) = sorted.last() {
            if a >= nd {
                return Err(TensorError::invalid(
                    "sum_axes",
                    format!("axis {a} out of range for shape {:?}", x.shape),
                ));
            }
        }
        // Reduce as [outer, mid, inner] repeatedly, highest axis first; accumulate in f64-free
        // pairwise order via ndarray's sum_axis (which sums in order along the axis).
        let mut cur = x.view().to_owned();
        for &a in sorted.iter().rev() {
            cur = cur.sum_axis(ndarray::Axis(a));
            if keep_dims {
                cur = cur.insert_axis(ndarray::Axis(a));
            }
        }
        let shape = cur.shape().to_vec();
        let data = cur.as_standard_layout().iter().copied().collect();
        Ok(CpuTensor::from_parts(shape, data))
    }

    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(TensorError::shape(
                "matmul",
                format!("operands {:?} and {:?} must be 2-D", a.shape, b.shape),
            ));
        }
        let (m, k) = if ta {
            (a.shape[1], a.shape[0])
        } else {
            (a.shape[0], a.shape[1])
        };
        let (k2, n) = if tb {
            (b.shape[1], b.shape[0])
        } else {
            (b.shape[0], b.shape[1])
        };
        if k != k2 {
            return Err(TensorError::shape(
                "matmul",
                format!(
                    "inner sizes differ: {:?}{} · {:?}{}",
                    a.shape,
                    if ta { "ᵀ" } else { "" },
                    b.shape,
                    if tb { "ᵀ" } else { "" }
                ),
            ));
        }
        checked_numel("matmul", &[m, n])?;
        let c = par_matmul(m, k, n, &a.data, ta, &b.data, tb);
        Ok(CpuTensor::from_parts(vec![m, n], c))
    }

    fn conv2d(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new("conv2d", &x.shape, &w.shape, p)?;
        if let Some(b) = bias {
            if b.shape != [g.k] {
                return Err(TensorError::shape(
                    "conv2d",
                    format!(
                        "bias {:?} must be [{}] for weight {:?}",
                        b.shape, g.k, w.shape
                    ),
                ));
            }
        }
        checked_numel("conv2d", &g.out_shape())?;
        let (ckk, ohw) = (g.c * g.kh * g.kw, g.oh * g.ow);
        let in_sz = g.c * g.h * g.w;
        let out_sz = g.k * ohw;
        let mut out = vec![0.0f32; g.n * out_sz];
        if out.is_empty() {
            return Ok(CpuTensor::from_parts(g.out_shape().to_vec(), out));
        }
        let wd = &w.data;
        out.par_chunks_mut(out_sz).enumerate().for_each_init(
            || vec![0.0f32; ckk * ohw],
            |cols, (i, o)| {
                im2col(&x.data[i * in_sz..(i + 1) * in_sz], &g, cols);
                if let Some(b) = bias {
                    for (kk, row) in o.chunks_mut(ohw).enumerate() {
                        row.fill(b.data[kk]);
                    }
                }
                sgemm(
                    g.k,
                    ckk,
                    ohw,
                    wd,
                    false,
                    cols,
                    false,
                    o,
                    if bias.is_some() { 1.0 } else { 0.0 },
                );
            },
        );
        Ok(CpuTensor::from_parts(g.out_shape().to_vec(), out))
    }

    fn conv2d_backward_input(
        &self,
        gy: &CpuTensor,
        w: &CpuTensor,
        input_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new("conv2d_backward_input", input_shape, &w.shape, p)?;
        same_shape("conv2d_backward_input", &gy.shape, &g.out_shape())?;
        let (ckk, ohw) = (g.c * g.kh * g.kw, g.oh * g.ow);
        let in_sz = g.c * g.h * g.w;
        let out_sz = g.k * ohw;
        let mut gx = vec![0.0f32; g.n * in_sz];
        if gx.is_empty() {
            return Ok(CpuTensor::from_parts(input_shape.to_vec(), gx));
        }
        let wd = &w.data;
        gx.par_chunks_mut(in_sz).enumerate().for_each_init(
            || vec![0.0f32; ckk * ohw],
            |cols, (i, gxi)| {
                // cols = Wᵀ [ckk, k] · gy_i [k, ohw]
                sgemm(
                    ckk,
                    g.k,
                    ohw,
                    wd,
                    true,
                    &gy.data[i * out_sz..(i + 1) * out_sz],
                    false,
                    cols,
                    0.0,
                );
                col2im(cols, &g, gxi);
            },
        );
        Ok(CpuTensor::from_parts(input_shape.to_vec(), gx))
    }

    fn conv2d_backward_weight(
        &self,
        x: &CpuTensor,
        gy: &CpuTensor,
        weight_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new("conv2d_backward_weight", &x.shape, weight_shape, p)?;
        same_shape("conv2d_backward_weight", &gy.shape, &g.out_shape())?;
        let (ckk, ohw) = (g.c * g.kh * g.kw, g.oh * g.ow);
        let in_sz = g.c * g.h * g.w;
        let out_sz = g.k * ohw;
        let wsz = g.k * ckk;
        // Partial sums over fixed chunks of images, combined in order: thread-count independent.
        let chunks: Vec<usize> = (0..g.n).step_by(ROWS_PER_TASK).collect();
        let partials: Vec<Vec<f32>> = chunks
            .par_iter()
            .map(|&i0| {
                let mut acc = vec![0.0f32; wsz];
                let mut cols = vec![0.0f32; ckk * ohw];
                for i in i0..(i0 + ROWS_PER_TASK).min(g.n) {
                    im2col(&x.data[i * in_sz..(i + 1) * in_sz], &g, &mut cols);
                    // acc += gy_i [k, ohw] · colsᵀ [ohw, ckk]
                    sgemm(
                        g.k,
                        ohw,
                        ckk,
                        &gy.data[i * out_sz..(i + 1) * out_sz],
                        false,
                        &cols,
                        true,
                        &mut acc,
                        1.0,
                    );
                }
                acc
            })
            .collect();
        let mut gw = vec![0.0f32; wsz];
        for part in &partials {
            for (a, b) in gw.iter_mut().zip(part) {
                *a += b;
            }
        }
        Ok(CpuTensor::from_parts(weight_shape.to_vec(), gw))
    }

    fn max_pool2d(&self, x: &CpuTensor, size: usize) -> Result<CpuTensor> {
        let os = pool_out_shape("max_pool2d", &x.shape, size)?;
        let (h, w) = (x.shape[2], x.shape[3]);
        let (oh, ow) = (os[2], os[3]);
        let mut out = vec![0.0f32; os.iter().product()];
        if out.is_empty() {
            return Ok(CpuTensor::from_parts(os.to_vec(), out));
        }
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, o)| {
                let src = &x.data[plane * h * w..(plane + 1) * h * w];
                for oi in 0..oh {
                    for oj in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        let mut first = true;
                        for di in 0..size {
                            let row = &src[(oi * size + di) * w + oj * size..][..size];
                            for &v in row {
                                if first || v > m || v.is_nan() {
                                    m = v;
                                    first = false;
                                }
                            }
                        }
                        o[oi * ow + oj] = m;
                    }
                }
            });
        Ok(CpuTensor::from_parts(os.to_vec(), out))
    }

    fn max_pool2d_backward(&self, x: &CpuTensor, gy: &CpuTensor, size: usize) -> Result<CpuTensor> {
        let os = pool_out_shape("max_pool2d_backward", &x.shape, size)?;
        same_shape("max_pool2d_backward", &gy.shape, &os)?;
        let (h, w) = (x.shape[2], x.shape[3]);
        let (oh, ow) = (os[2], os[3]);
        let mut gx = vec![0.0f32; x.data.len()];
        if gx.is_empty() {
            return Ok(CpuTensor::from_parts(x.shape.clone(), gx));
        }
        gx.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, gxp)| {
                let src = &x.data[plane * h * w..(plane + 1) * h * w];
                let g = &gy.data[plane * oh * ow..(plane + 1) * oh * ow];
                for oi in 0..oh {
                    for oj in 0..ow {
                        let mut best = (oi * size) * w + oj * size;
                        let mut m = src[best];
                        for di in 0..size {
                            for dj in 0..size {
                                let idx = (oi * size + di) * w + oj * size + dj;
                                if src[idx] > m {
                                    m = src[idx];
                                    best = idx;
                                }
                            }
                        }
                        gxp[best] += g[oi * ow + oj];
                    }
                }
            });
        Ok(CpuTensor::from_parts(x.shape.clone(), gx))
    }

    fn cross_entropy(&self, logits: &CpuTensor, labels: &CpuTensor) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cross_entropy", &logits.shape, &labels.shape)?;
        let y = labels_to_indices("cross_entropy", labels, k)?;
        let out = (0..n)
            .map(|i| {
                let z = &logits.data[i * k..(i + 1) * k];
                let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // (m − z_y) + ln Σ exp(z − m): exact when the label holds the maximum.
                (m - z[y[i]]) + z.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
            })
            .collect();
        Ok(CpuTensor::from_parts(vec![n], out))
    }

    fn cross_entropy_backward(
        &self,
        logits: &CpuTensor,
        labels: &CpuTensor,
        gy: &CpuTensor,
    ) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cross_entropy_backward", &logits.shape, &labels.shape)?;
        same_shape("cross_entropy_backward", &gy.shape, &[n])?;
        let y = labels_to_indices("cross_entropy_backward", labels, k)?;
        let mut out = vec![0.0f32; n * k];
        for i in 0..n {
            let z = &logits.data[i * k..(i + 1) * k];
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = z.iter().map(|&v| (v - m).exp()).sum();
            let o = &mut out[i * k..(i + 1) * k];
            for j in 0..k {
                o[j] = (z[j] - m).exp() / s * gy.data[i];
            }
            o[y[i]] -= gy.data[i];
        }
        Ok(CpuTensor::from_parts(vec![n, k], out))
    }

    fn cw_loss(&self, logits: &CpuTensor, labels: &CpuTensor, kappa: f32) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cw_loss", &logits.shape, &labels.shape)?;
        if k < 2 {
            return Err(TensorError::shape("cw_loss", "needs at least two classes"));
        }
        let y = labels_to_indices("cw_loss", labels, k)?;
        let out = (0..n)
            .map(|i| {
                let z = &logits.data[i * k..(i + 1) * k];
                let (_, wrong) = max_other(z, y[i]);
                -(z[y[i]] - wrong + kappa).max(0.0)
            })
            .collect();
        Ok(CpuTensor::from_parts(vec![n], out))
    }

    fn cw_loss_backward(
        &self,
        logits: &CpuTensor,
        labels: &CpuTensor,
        kappa: f32,
        gy: &CpuTensor,
    ) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cw_loss_backward", &logits.shape, &labels.shape)?;
        if k < 2 {
            return Err(TensorError::shape(
                "cw_loss_backward",
                "needs at least two classes",
            ));
        }
        same_shape("cw_loss_backward", &gy.shape, &[n])?;
        let y = labels_to_indices("cw_loss_backward", labels, k)?;
        let mut out = vec![0.0f32; n * k];
        for i in 0..n {
            let z = &logits.data[i * k..(i + 1) * k];
            let (j, wrong) = max_other(z, y[i]);
            if z[y[i]] - wrong + kappa > 0.0 {
                out[i * k + y[i]] = -gy.data[i];
                out[i * k + j] = gy.data[i];
            }
        }
        Ok(CpuTensor::from_parts(vec![n, k], out))
    }

    fn batch_norm_train(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        eps: f32,
    ) -> Result<(CpuTensor, BatchNormStats<CpuTensor>)> {
        let (n, c, s) = bn_layout("batch_norm_train", &x.shape, &gamma.shape, &beta.shape)?;
        let cnt = (n * s) as f64;
        let mut mean = vec![0.0f32; c];
        let mut var = vec![0.0f32; c];
        for ch in 0..c {
            let mut acc = 0.0f64;
            for i in 0..n {
                acc += x.data[(i * c + ch) * s..(i * c + ch + 1) * s]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            let mu = acc / cnt;
            let mut acc2 = 0.0f64;
            for i in 0..n {
                acc2 += x.data[(i * c + ch) * s..(i * c + ch + 1) * s]
                    .iter()
                    .map(|&v| (v as f64 - mu).powi(2))
                    .sum::<f64>();
            }
            mean[ch] = mu as f32;
            var[ch] = (acc2 / cnt) as f32;
        }
        let mut y = vec![0.0f32; x.data.len()];
        for i in 0..n {
            for ch in 0..c {
                let inv = 1.0 / (var[ch] + eps).sqrt();
                let (gm, bt, mu) = (gamma.data[ch], beta.data[ch], mean[ch]);
                let o = (i * c + ch) * s;
                for t in 0..s {
                    y[o + t] = (x.data[o + t] - mu) * inv * gm + bt;
                }
            }
        }
        Ok((
            CpuTensor::from_parts(x.shape.clone(), y),
            BatchNormStats {
                mean: CpuTensor::from_parts(vec![c], mean),
                var: CpuTensor::from_parts(vec![c], var),
            },
        ))
    }

    fn batch_norm_eval(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        mean: &CpuTensor,
        var: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor> {
        let (n, c, s) = bn_layout("batch_norm_eval", &x.shape, &gamma.shape, &beta.shape)?;
        if mean.shape != [c] || var.shape != [c] {
            return Err(TensorError::shape(
                "batch_norm_eval",
                format!(
                    "mean {:?} and var {:?} must be [{c}]",
                    mean.shape, var.shape
                ),
            ));
        }
        let mut y = vec![0.0f32; x.data.len()];
        for i in 0..n {
            for ch in 0..c {
                let inv = 1.0 / (var.data[ch] + eps).sqrt();
                let o = (i * c + ch) * s;
                for t in 0..s {
                    y[o + t] =
                        (x.data[o + t] - mean.data[ch]) * inv * gamma.data[ch] + beta.data[ch];
                }
            }
        }
        Ok(CpuTensor::from_parts(x.shape.clone(), y))
    }

    fn batch_norm_train_backward(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        stats: &BatchNormStats<CpuTensor>,
        gy: &CpuTensor,
        eps: f32,
    ) -> Result<BatchNormGrads<CpuTensor>> {
        let (n, c, s) = bn_layout(
            "batch_norm_train_backward",
            &x.shape,
            &gamma.shape,
            &gamma.shape,
        )?;
        same_shape("batch_norm_train_backward", &gy.shape, &x.shape)?;
        if stats.mean.shape != [c] || stats.var.shape != [c] {
            return Err(TensorError::shape(
                "batch_norm_train_backward",
                "statistics must be [c]",
            ));
        }
        let cnt = (n * s) as f32;
        let mut gx = vec![0.0f32; x.data.len()];
        let mut gg = vec![0.0f32; c];
        let mut gb = vec![0.0f32; c];
        for ch in 0..c {
            let inv = 1.0 / (stats.var.data[ch] + eps).sqrt();
            let mu = stats.mean.data[ch];
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            for i in 0..n {
                let o = (i * c + ch) * s;
                for t in 0..s {
                    let g = gy.data[o + t] as f64;
                    sg += g;
                    sgx += g * ((x.data[o + t] - mu) * inv) as f64;
                }
            }
            gb[ch] = sg as f32;
            gg[ch] = sgx as f32;
            let k = gamma.data[ch] * inv / cnt;
            for i in 0..n {
                let o = (i * c + ch) * s;
                for t in 0..s {
                    let xhat = (x.data[o + t] - mu) * inv;
                    gx[o + t] = k * (cnt * gy.data[o + t] - gb[ch] - xhat * gg[ch]);
                }
            }
        }
        Ok(BatchNormGrads {
            x: CpuTensor::from_parts(x.shape.clone(), gx),
            gamma: CpuTensor::from_parts(vec![c], gg),
            beta: CpuTensor::from_parts(vec![c], gb),
        })
    }

    fn pgd_step_linf(
        &self,
        x: &CpuTensor,
        x0: &CpuTensor,
        g: &CpuTensor,
        alpha: f32,
        eps: f32,
    ) -> Result<CpuTensor> {
        same_shape("pgd_step_linf", &x.shape, &x0.shape)?;
        same_shape("pgd_step_linf", &x.shape, &g.shape)?;
        let data = x
            .data
            .iter()
            .zip(x0.data.iter())
            .zip(g.data.iter())
            .map(|((&xv, &x0v), &gv)| {
                let s = if gv > 0.0 {
                    alpha
                } else if gv < 0.0 {
                    -alpha
                } else {
                    0.0
                };
                (xv + s).max(x0v - eps).min(x0v + eps).clamp(0.0, 1.0)
            })
            .collect();
        Ok(CpuTensor::from_parts(x.shape.clone(), data))
    }

    fn project_linf(&self, x: &CpuTensor, x0: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        same_shape("project_linf", &x.shape, &x0.shape)?;
        let data = x
            .data
            .iter()
            .zip(x0.data.iter())
            .map(|(&xv, &x0v)| xv.max(x0v - eps).min(x0v + eps).clamp(0.0, 1.0))
            .collect();
        Ok(CpuTensor::from_parts(x.shape.clone(), data))
    }

    fn adam_update(
        &self,
        param: &mut CpuTensor,
        grad: &CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        h: AdamParams,
    ) -> Result<()> {
        same_shape("adam_update", &param.shape, &grad.shape)?;
        same_shape("adam_update", &param.shape, &m.shape)?;
        same_shape("adam_update", &param.shape, &v.shape)?;
        let t = h.step.max(1) as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        let p = param.as_mut_slice();
        let ms = m.as_mut_slice();
        let vs = v.as_mut_slice();
        p.par_chunks_mut(1 << 14)
            .zip(ms.par_chunks_mut(1 << 14))
            .zip(vs.par_chunks_mut(1 << 14))
            .zip(grad.data.par_chunks(1 << 14))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
                    v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
                    let denom = (v[i] / bc2).sqrt() + h.eps;
                    p[i] -= h.lr * (m[i] / bc1) / denom;
                }
            });
        Ok(())
    }

    fn sgd_update(
        &self,
        param: &mut CpuTensor,
        grad: &CpuTensor,
        momentum_buf: &mut CpuTensor,
        h: SgdParams,
    ) -> Result<()> {
        same_shape("sgd_update", &param.shape, &grad.shape)?;
        same_shape("sgd_update", &param.shape, &momentum_buf.shape)?;
        let p = param.as_mut_slice();
        let b = momentum_buf.as_mut_slice();
        for i in 0..p.len() {
            let g = grad.data[i] + h.weight_decay * p[i];
            b[i] = h.momentum * b[i] + g;
            p[i] -= h.lr * b[i];
        }
        Ok(())
    }
}

/// Index and value of the largest logit other than `y` (first one on ties).
fn max_other(z: &[f32], y: usize) -> (usize, f32) {
    let mut best = (usize::MAX, f32::NEG_INFINITY);
    for (j, &v) in z.iter().enumerate() {
        if j != y && (best.0 == usize::MAX || v > best.1) {
            best = (j, v);
        }
    }
    best
}
