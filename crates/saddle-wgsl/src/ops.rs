//! `Backend` for [`Wgpu`]: shape checks on the host (the same as the CPU backend's), then one or
//! two kernel dispatches per op.

use std::sync::Arc;

use saddle_tensor::backend::{check_dlr, check_restart_merge};
use saddle_tensor::shape::{
    bn_layout, broadcast_shape, check_labels, check_logits_labels, checked_numel, pool_out_shape,
    same_shape, ConvGeometry,
};
use saddle_tensor::{
    AdamParams, Backend, BatchNormGrads, BatchNormStats, Conv2dParams, Result, SgdParams,
    TensorError, TensorLike,
};

use crate::context::{groups_1d, Bind, Params, WG};
use crate::kernels::Kernel;
use crate::tensor::{WgpuTensor, HOST_LABEL_COPY_MAX};
use crate::Wgpu;

type T = WgpuTensor;

/// Output tile of the GEMM kernels (rows and columns).
const TILE: usize = 64;
/// Split-K aims for at least this many workgroups…
const SPLIT_TARGET_GROUPS: usize = 64;
/// …with at least this much of the inner dimension per split.
const SPLIT_MIN_CHUNK: usize = 512;
/// Below this many input channels the convolution's input gradient uses the direct kernel.
const DIRECT_BACKWARD_INPUT_MAX_CHANNELS: usize = 8;
/// Entries of a kernel's shape table (`array<vec4<u32>, 8>`).
const TABLE_WORDS: usize = 32;

/// Op codes of `binary.wgsl`.
#[derive(Clone, Copy)]
enum BinOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Min = 4,
    Max = 5,
}

/// Op codes of `unary.wgsl`.
#[derive(Clone, Copy)]
enum UnOp {
    Affine = 0,
    Sqrt = 1,
    Sign = 2,
    Clamp = 3,
    Relu = 4,
    LeakyRelu = 5,
}

/// Bits of the device status word set by the loss kernels on an invalid label.
const STATUS_OPS: [&str; 6] = [
    "cross_entropy",
    "cross_entropy_backward",
    "cw_loss",
    "cw_loss_backward",
    "dlr_loss",
    "dlr_loss_backward",
];

fn u(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Drops size-1 axes and merges neighbours that index memory contiguously, for every stride
/// list at once: axis j (outer) and i (inner) merge when `stride_j = stride_i · dim_i` in all.
fn collapse(dims: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut od: Vec<usize> = Vec::new();
    let mut os: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for i in 0..dims.len() {
        if dims[i] == 1 {
            continue;
        }
        let merge = !od.is_empty()
            && strides
                .iter()
                .zip(&os)
                .all(|(s, o)| *o.last().unwrap() == s[i] * dims[i]);
        if merge {
            *od.last_mut().unwrap() *= dims[i];
            for (s, o) in strides.iter().zip(os.iter_mut()) {
                *o.last_mut().unwrap() = s[i];
            }
        } else {
            od.push(dims[i]);
            for (s, o) in strides.iter().zip(os.iter_mut()) {
                o.push(s[i]);
            }
        }
    }
    (od, os)
}

/// Checks labels uploaded from the host (the CPU backend's rule and message).
fn check_host_labels(op: &'static str, labels: &T, classes: usize) -> Result<()> {
    if let Some(host) = &labels.host_labels {
        check_labels(op, host, classes)?;
    }
    Ok(())
}

/// Number of K splits for a GEMM with `tiles` output tiles and inner size `k`, and the chunk.
fn split_k(tiles: usize, k: usize) -> (usize, usize) {
    let mut splits = 1;
    if tiles < SPLIT_TARGET_GROUPS && k >= 2 * SPLIT_MIN_CHUNK {
        splits = (SPLIT_TARGET_GROUPS / tiles.max(1))
            .min(k / SPLIT_MIN_CHUNK)
            .max(1);
    }
    let chunk = k.div_ceil(splits).div_ceil(16) * 16;
    let chunk = chunk.max(16);
    (k.div_ceil(chunk).max(1), chunk)
}

impl Wgpu {
    fn max_groups(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Workgroups for one thread per item (256 per group).
    fn g1(&self, items: usize) -> [u32; 3] {
        groups_1d(items as u64, WG, self.max_groups())
    }

    /// Workgroups for one workgroup per item.
    fn gw(&self, items: usize) -> [u32; 3] {
        groups_1d(items as u64, 1, self.max_groups())
    }

    /// A new tensor of `shape` (contents undefined until a kernel writes it).
    fn out(&self, op: &'static str, shape: &[usize]) -> Result<T> {
        let n = checked_numel(op, shape)?;
        if n > u32::MAX as usize {
            return Err(TensorError::invalid(
                op,
                format!("shape {shape:?} has more than 2^32 elements, beyond 32-bit indexing"),
            ));
        }
        let buf = self.ctx.alloc(op, n as u64 * 4)?;
        Ok(WgpuTensor::new(shape.to_vec(), buf))
    }

    fn unary(&self, x: &T, code: UnOp, s: f32, t: f32) -> Result<T> {
        let out = self.out("unary", &x.shape)?;
        let n = x.numel();
        let params = Params::new().u(u(n)).u(code as u32).f(s).f(t);
        self.ctx.dispatch(
            Kernel::Unary,
            &params,
            &[x.bind(), out.bind()],
            false,
            self.g1(n),
        )?;
        Ok(out)
    }

    fn binary(&self, op: &'static str, code: BinOp, a: &T, b: &T) -> Result<T> {
        let shape = broadcast_shape(op, &a.shape, &b.shape)?;
        let out = self.out(op, &shape)?;
        let n = out.numel();
        let mut table = Vec::new();
        let mut rank = 0usize;
        if a.shape != b.shape {
            let align = |s: &[usize]| -> Vec<usize> {
                let st = strides(s);
                let lead = shape.len() - s.len();
                (0..shape.len())
                    .map(|i| {
                        if i < lead || s[i - lead] == 1 {
                            0
                        } else {
                            st[i - lead]
                        }
                    })
                    .collect()
            };
            let (dims, st) = collapse(&shape, &[align(&a.shape), align(&b.shape)]);
            rank = dims.len();
            if 3 * rank > TABLE_WORDS {
                return Err(TensorError::invalid(
                    op,
                    format!(
                        "broadcasting {:?} with {:?} needs too many axes",
                        a.shape, b.shape
                    ),
                ));
            }
            table.extend(dims.iter().map(|&d| u(d)));
            table.extend(st[0].iter().map(|&d| u(d)));
            table.extend(st[1].iter().map(|&d| u(d)));
        }
        let params = Params::new()
            .u(u(n))
            .u(code as u32)
            .u(u(rank))
            .u(0)
            .table(&table);
        self.ctx.dispatch(
            Kernel::Binary,
            &params,
            &[a.bind(), b.bind(), out.bind()],
            false,
            self.g1(n),
        )?;
        Ok(out)
    }

    /// `out[o] = Σ_r x[…]` over the axes `red` (dims and strides in x), keeping `kept`.
    fn reduce(
        &self,
        op: &'static str,
        x: Bind<'_>,
        kept: (&[usize], &[usize]),
        red: (&[usize], &[usize]),
        out: Bind<'_>,
    ) -> Result<()> {
        let (kd, ks) = collapse(kept.0, &[kept.1.to_vec()]);
        let (rd, rs) = collapse(red.0, &[red.1.to_vec()]);
        if 2 * (kd.len() + rd.len()) > TABLE_WORDS {
            return Err(TensorError::invalid(op, "too many axes to reduce"));
        }
        let n_out: usize = kd.iter().product();
        let count: usize = rd.iter().product();
        let mut table: Vec<u32> = kd.iter().map(|&d| u(d)).collect();
        table.extend(ks[0].iter().map(|&d| u(d)));
        table.extend(rd.iter().map(|&d| u(d)));
        table.extend(rs[0].iter().map(|&d| u(d)));
        let params = Params::new()
            .u(u(n_out))
            .u(u(count))
            .u(u(kd.len()))
            .u(u(rd.len()))
            .table(&table);
        // Short reductions or many outputs: a thread per output; long ones: a workgroup.
        let (kernel, groups) = if count <= 256 || n_out >= 8192 {
            (Kernel::SumAxesThread, self.g1(n_out))
        } else {
            (Kernel::SumAxes, self.gw(n_out))
        };
        self.ctx.dispatch(kernel, &params, &[x, out], false, groups)
    }

    /// Sums the `splits` slabs of `m·n` partial products in `scratch` into `out`.
    fn sum_splits(&self, op: &'static str, scratch: &T, splits: usize, out: &T) -> Result<()> {
        let mn = out.numel();
        self.reduce(
            op,
            scratch.bind(),
            (&[mn], &[1]),
            (&[splits], &[mn]),
            out.bind(),
        )
    }

    /// Gives `t` a buffer of its own (copying a shared one), so that it can be written in place
    /// without changing other tensors.
    fn make_unique(&self, op: &'static str, t: &mut T) -> Result<()> {
        if Arc::strong_count(&t.buf) > 1 {
            let fresh = self.ctx.alloc(op, t.bytes())?;
            self.ctx.copy(t.buf.raw(), fresh.raw(), t.bytes())?;
            t.buf = Arc::new(fresh);
        }
        t.host_labels = None;
        Ok(())
    }

    fn loss_forward(
        &self,
        op: &'static str,
        kernel: Kernel,
        logits: &T,
        labels: &T,
        kappa: Option<f32>,
    ) -> Result<T> {
        let (n, k) = check_logits_labels(op, &logits.shape, &labels.shape)?;
        if kappa.is_some() && k < 2 {
            return Err(TensorError::shape(op, "needs at least two classes"));
        }
        check_host_labels(op, labels, k)?;
        let out = self.out(op, &[n])?;
        let params = Params::new().u(u(n)).u(u(k)).f(kappa.unwrap_or(0.0)).u(0);
        self.ctx.dispatch(
            kernel,
            &params,
            &[logits.bind(), labels.bind(), out.bind()],
            true,
            self.g1(n),
        )?;
        Ok(out)
    }

    fn loss_backward(
        &self,
        op: &'static str,
        kernel: Kernel,
        logits: &T,
        labels: &T,
        gy: &T,
        kappa: Option<f32>,
    ) -> Result<T> {
        let (n, k) = check_logits_labels(op, &logits.shape, &labels.shape)?;
        if kappa.is_some() && k < 2 {
            return Err(TensorError::shape(op, "needs at least two classes"));
        }
        same_shape(op, &gy.shape, &[n])?;
        check_host_labels(op, labels, k)?;
        let out = self.out(op, &[n, k])?;
        let params = Params::new().u(u(n)).u(u(k)).f(kappa.unwrap_or(0.0)).u(0);
        self.ctx.dispatch(
            kernel,
            &params,
            &[logits.bind(), labels.bind(), gy.bind(), out.bind()],
            true,
            self.g1(n),
        )?;
        Ok(out)
    }

    /// The DLR loss (`gy` `None`) or its gradient: shapes and host labels checked, one kernel.
    fn dlr(
        &self,
        op: &'static str,
        logits: &T,
        labels: &T,
        targets: Option<&T>,
        gy: Option<&T>,
    ) -> Result<T> {
        let (n, k) = check_dlr(
            op,
            &logits.shape,
            &labels.shape,
            targets.map(|t| &t.shape[..]),
        )?;
        if let Some(gy) = gy {
            same_shape(op, &gy.shape, &[n])?;
        }
        check_host_labels(op, labels, k)?;
        if let Some(t) = targets {
            check_host_labels(op, t, k)?;
        }
        let (kernel, shape) = match gy {
            None => (Kernel::DlrLoss, vec![n]),
            Some(_) => (Kernel::DlrLossBackward, vec![n, k]),
        };
        let out = self.out(op, &shape)?;
        if n == 0 {
            return Ok(out);
        }
        let params = Params::new()
            .u(u(n))
            .u(u(k))
            .u(u32::from(targets.is_some()))
            .u(0);
        let mut binds = vec![
            logits.bind(),
            labels.bind(),
            targets.unwrap_or(labels).bind(),
        ];
        if let Some(gy) = gy {
            binds.push(gy.bind());
        }
        binds.push(out.bind());
        self.ctx
            .dispatch(kernel, &params, &binds, true, self.g1(n))?;
        Ok(out)
    }

    /// `(n, d)` of a batch `x` `[n, …]` with one value per example in `s` `[n]`.
    fn rows(op: &'static str, x: &[usize], s: &[usize]) -> Result<(usize, usize)> {
        match x.first() {
            Some(&n) if s == [n] => Ok((n, x.iter().skip(1).product())),
            _ => Err(TensorError::shape(
                op,
                format!("{x:?} must be [n, …] with one value per example in {s:?} ([n])"),
            )),
        }
    }

    fn conv_params(g: &ConvGeometry, last: usize) -> Params {
        Params::new()
            .u(u(g.n))
            .u(u(g.c))
            .u(u(g.h))
            .u(u(g.w))
            .u(u(g.k))
            .u(u(g.kh))
            .u(u(g.kw))
            .u(u(g.oh))
            .u(u(g.ow))
            .u(u(g.stride))
            .u(u(g.padding))
            .u(u(last))
    }

    /// GEMM workgroups: columns along x, rows along y, splits along z.
    fn gemm_groups(
        &self,
        op: &'static str,
        rows: usize,
        cols: usize,
        splits: usize,
    ) -> Result<[u32; 3]> {
        let g = [cols.div_ceil(TILE), rows.div_ceil(TILE), splits];
        let max = self.max_groups() as usize;
        if g.iter().any(|&v| v > max) {
            return Err(TensorError::invalid(
                op,
                format!(
                    "a {rows}×{cols} product needs {g:?} workgroups, beyond the device's {max}"
                ),
            ));
        }
        Ok([u(g[0]), u(g[1]), u(g[2])])
    }

    fn l2_step(
        &self,
        op: &'static str,
        x: &T,
        x0: &T,
        g: Option<&T>,
        alpha: f32,
        eps: f32,
    ) -> Result<T> {
        same_shape(op, &x.shape, &x0.shape)?;
        if let Some(g) = g {
            same_shape(op, &x.shape, &g.shape)?;
        }
        let n = *x
            .shape
            .first()
            .ok_or_else(|| TensorError::shape(op, "scalar input"))?;
        let out = self.out(op, &x.shape)?;
        if n == 0 {
            return Ok(out);
        }
        let d = x.numel() / n;
        let params = Params::new()
            .u(u(n))
            .u(u(d))
            .u(u32::from(g.is_some()))
            .u(0)
            .f(alpha)
            .f(eps)
            .u(0)
            .u(0);
        let gb = g.unwrap_or(x).bind();
        self.ctx.dispatch(
            Kernel::PgdStepL2,
            &params,
            &[x.bind(), x0.bind(), gb, out.bind()],
            false,
            self.gw(n),
        )?;
        Ok(out)
    }

    fn linf_step(
        &self,
        op: &'static str,
        x: &T,
        x0: &T,
        g: Option<&T>,
        alpha: f32,
        eps: f32,
    ) -> Result<T> {
        same_shape(op, &x.shape, &x0.shape)?;
        if let Some(g) = g {
            same_shape(op, &x.shape, &g.shape)?;
        }
        let out = self.out(op, &x.shape)?;
        let n = x.numel();
        let params = Params::new()
            .u(u(n))
            .u(u32::from(g.is_some()))
            .f(alpha)
            .f(eps);
        let gb = g.unwrap_or(x).bind();
        self.ctx.dispatch(
            Kernel::PgdStepLinf,
            &params,
            &[x.bind(), x0.bind(), gb, out.bind()],
            false,
            self.g1(n),
        )?;
        Ok(out)
    }
}

impl Backend for Wgpu {
    type Tensor = WgpuTensor;

    fn name(&self) -> String {
        self.ctx.backend_name()
    }

    fn from_vec(&self, shape: &[usize], data: Vec<f32>) -> Result<T> {
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
        let mut t = self.out("from_vec", shape)?;
        self.ctx.upload(t.buf.raw(), &data);
        if shape.len() == 1 && n <= HOST_LABEL_COPY_MAX {
            t.host_labels = Some(data.into());
        }
        self.ctx.check("from_vec")?;
        Ok(t)
    }

    fn to_vec(&self, x: &T) -> Result<Vec<f32>> {
        let (data, status) = self.ctx.read_back(x.buf.raw(), x.numel())?;
        if status != 0 {
            let ops: Vec<&str> = STATUS_OPS
                .iter()
                .enumerate()
                .filter(|(i, _)| status & (1 << i) != 0)
                .map(|(_, s)| *s)
                .collect();
            return Err(TensorError::invalid(
                STATUS_OPS[(status.trailing_zeros() as usize).min(STATUS_OPS.len() - 1)],
                format!(
                    "a label computed on the device was not a class index: found by {} on this \
                     device since the last read-back, and reported here; those rows are NaN",
                    ops.join(", ")
                ),
            ));
        }
        Ok(data)
    }

    fn full(&self, shape: &[usize], value: f32) -> Result<T> {
        let t = self.out("full", shape)?;
        let n = t.numel();
        if value.to_bits() == 0 {
            self.ctx.clear(t.buf.raw(), t.bytes())?;
        } else {
            let params = Params::new().u(u(n)).f(value);
            self.ctx
                .dispatch(Kernel::Fill, &params, &[t.bind()], false, self.g1(n))?;
        }
        Ok(t)
    }

    fn reshape(&self, x: &T, shape: &[usize]) -> Result<T> {
        if checked_numel("reshape", shape)? != x.numel() {
            return Err(TensorError::shape(
                "reshape",
                format!("cannot reshape {:?} to {shape:?}", x.shape),
            ));
        }
        let host_labels = if shape.len() == 1 {
            x.host_labels.clone()
        } else {
            None
        };
        Ok(WgpuTensor {
            shape: shape.to_vec(),
            buf: x.buf.clone(),
            host_labels,
        })
    }

    /// Submits the pending encoder: one iteration, one submission (see `context.rs`).
    fn step_end(&self) -> Result<()> {
        self.ctx.flush()?;
        self.ctx.check("step_end")
    }

    fn add(&self, a: &T, b: &T) -> Result<T> {
        self.binary("add", BinOp::Add, a, b)
    }
    fn sub(&self, a: &T, b: &T) -> Result<T> {
        self.binary("sub", BinOp::Sub, a, b)
    }
    fn mul(&self, a: &T, b: &T) -> Result<T> {
        self.binary("mul", BinOp::Mul, a, b)
    }
    fn div(&self, a: &T, b: &T) -> Result<T> {
        self.binary("div", BinOp::Div, a, b)
    }
    fn minimum(&self, a: &T, b: &T) -> Result<T> {
        self.binary("minimum", BinOp::Min, a, b)
    }
    fn maximum(&self, a: &T, b: &T) -> Result<T> {
        self.binary("maximum", BinOp::Max, a, b)
    }

    fn affine(&self, x: &T, s: f32, t: f32) -> Result<T> {
        self.unary(x, UnOp::Affine, s, t)
    }
    fn sqrt(&self, x: &T) -> Result<T> {
        self.unary(x, UnOp::Sqrt, 0.0, 0.0)
    }
    fn sign(&self, x: &T) -> Result<T> {
        self.unary(x, UnOp::Sign, 0.0, 0.0)
    }
    fn clamp(&self, x: &T, lo: f32, hi: f32) -> Result<T> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(TensorError::invalid(
                "clamp",
                format!("bounds [{lo}, {hi}] are not a range"),
            ));
        }
        self.unary(x, UnOp::Clamp, lo, hi)
    }
    fn relu(&self, x: &T) -> Result<T> {
        self.unary(x, UnOp::Relu, 0.0, 0.0)
    }
    fn relu_backward(&self, x: &T, gy: &T) -> Result<T> {
        same_shape("relu_backward", &x.shape, &gy.shape)?;
        let out = self.out("relu_backward", &x.shape)?;
        let n = x.numel();
        let params = Params::new().u(u(n)).u(0).f(0.0).u(0);
        self.ctx.dispatch(
            Kernel::ActivationBackward,
            &params,
            &[x.bind(), gy.bind(), out.bind()],
            false,
            self.g1(n),
        )?;
        Ok(out)
    }
    fn leaky_relu(&self, x: &T, slope: f32) -> Result<T> {
        self.unary(x, UnOp::LeakyRelu, slope, 0.0)
    }
    fn leaky_relu_backward(&self, x: &T, gy: &T, slope: f32) -> Result<T> {
        same_shape("leaky_relu_backward", &x.shape, &gy.shape)?;
        let out = self.out("leaky_relu_backward", &x.shape)?;
        let n = x.numel();
        let params = Params::new().u(u(n)).u(1).f(slope).u(0);
        self.ctx.dispatch(
            Kernel::ActivationBackward,
            &params,
            &[x.bind(), gy.bind(), out.bind()],
            false,
            self.g1(n),
        )?;
        Ok(out)
    }

    fn sum_axes(&self, x: &T, axes: &[usize], keep_dims: bool) -> Result<T> {
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
        let st = strides(&x.shape);
        let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
        let mut shape = Vec::with_capacity(nd);
        for i in 0..nd {
            if sorted.contains(&i) {
                rd.push(x.shape[i]);
                rs.push(st[i]);
                if keep_dims {
                    shape.push(1);
                }
            } else {
                kd.push(x.shape[i]);
                ks.push(st[i]);
                shape.push(x.shape[i]);
            }
        }
        let count: usize = rd.iter().product();
        if count == 1 {
            // Nothing to add up: the same values under the new shape.
            return self.reshape(x, &shape);
        }
        let out = self.out("sum_axes", &shape)?;
        if count == 0 {
            self.ctx.clear(out.buf.raw(), out.bytes())?;
            return Ok(out);
        }
        if out.numel() > 0 {
            self.reduce("sum_axes", x.bind(), (&kd, &ks), (&rd, &rs), out.bind())?;
        }
        Ok(out)
    }

    fn matmul(&self, a: &T, b: &T, ta: bool, tb: bool) -> Result<T> {
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
        let out = self.out("matmul", &[m, n])?;
        if out.numel() == 0 {
            return Ok(out);
        }
        if k == 0 {
            self.ctx.clear(out.buf.raw(), out.bytes())?;
            return Ok(out);
        }
        let tiles = m.div_ceil(TILE) * n.div_ceil(TILE);
        let (splits, chunk) = split_k(tiles, k);
        let groups = self.gemm_groups("matmul", m, n, splits)?;
        let params = Params::new()
            .u(u(m))
            .u(u(n))
            .u(u(k))
            .u(u32::from(ta))
            .u(u32::from(tb))
            .u(u(chunk))
            .u(0)
            .u(0);
        if splits == 1 {
            self.ctx.dispatch(
                Kernel::Matmul,
                &params,
                &[a.bind(), b.bind(), out.bind()],
                false,
                groups,
            )?;
        } else {
            let scratch = self.out("matmul", &[splits, m * n])?;
            self.ctx.dispatch(
                Kernel::Matmul,
                &params,
                &[a.bind(), b.bind(), scratch.bind()],
                false,
                groups,
            )?;
            self.sum_splits("matmul", &scratch, splits, &out)?;
        }
        Ok(out)
    }

    fn conv2d(&self, x: &T, w: &T, bias: Option<&T>, p: Conv2dParams) -> Result<T> {
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
        let out = self.out("conv2d", &g.out_shape())?;
        if out.numel() == 0 {
            return Ok(out);
        }
        let groups = self.gemm_groups("conv2d", g.k, g.n * g.oh * g.ow, 1)?;
        let params = Self::conv_params(&g, usize::from(bias.is_some()));
        let bias_bind = bias.unwrap_or(w).bind();
        self.ctx.dispatch(
            Kernel::Conv2d,
            &params,
            &[x.bind(), w.bind(), bias_bind, out.bind()],
            false,
            groups,
        )?;
        Ok(out)
    }

    fn conv2d_backward_input(
        &self,
        gy: &T,
        w: &T,
        input_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<T> {
        let op = "conv2d_backward_input";
        let g = ConvGeometry::new(op, input_shape, &w.shape, p)?;
        same_shape(op, &gy.shape, &g.out_shape())?;
        let out = self.out(op, input_shape)?;
        if out.numel() == 0 {
            return Ok(out);
        }
        let params = Self::conv_params(&g, 0);
        let binds = [gy.bind(), w.bind(), out.bind()];
        if g.c < DIRECT_BACKWARD_INPUT_MAX_CHANNELS {
            let groups = self.g1(out.numel());
            self.ctx.dispatch(
                Kernel::Conv2dBackwardInputDirect,
                &params,
                &binds,
                false,
                groups,
            )?;
        } else {
            let groups = self.gemm_groups(op, g.c, g.n * g.h * g.w, 1)?;
            self.ctx
                .dispatch(Kernel::Conv2dBackwardInput, &params, &binds, false, groups)?;
        }
        Ok(out)
    }

    fn conv2d_backward_weight(
        &self,
        x: &T,
        gy: &T,
        weight_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<T> {
        let op = "conv2d_backward_weight";
        let g = ConvGeometry::new(op, &x.shape, weight_shape, p)?;
        same_shape(op, &gy.shape, &g.out_shape())?;
        let out = self.out(op, weight_shape)?;
        if out.numel() == 0 {
            return Ok(out);
        }
        let (rows, cols, kdim) = (g.k, g.c * g.kh * g.kw, g.n * g.oh * g.ow);
        if kdim == 0 {
            self.ctx.clear(out.buf.raw(), out.bytes())?;
            return Ok(out);
        }
        let tiles = rows.div_ceil(TILE) * cols.div_ceil(TILE);
        let (splits, chunk) = split_k(tiles, kdim);
        let groups = self.gemm_groups(op, rows, cols, splits)?;
        let params = Self::conv_params(&g, chunk);
        if splits == 1 {
            self.ctx.dispatch(
                Kernel::Conv2dBackwardWeight,
                &params,
                &[x.bind(), gy.bind(), out.bind()],
                false,
                groups,
            )?;
        } else {
            let scratch = self.out(op, &[splits, rows * cols])?;
            self.ctx.dispatch(
                Kernel::Conv2dBackwardWeight,
                &params,
                &[x.bind(), gy.bind(), scratch.bind()],
                false,
                groups,
            )?;
            self.sum_splits(op, &scratch, splits, &out)?;
        }
        Ok(out)
    }

    fn max_pool2d(&self, x: &T, size: usize) -> Result<T> {
        let os = pool_out_shape("max_pool2d", &x.shape, size)?;
        let out = self.out("max_pool2d", &os)?;
        let total = out.numel();
        let params = Params::new()
            .u(u(total))
            .u(u(x.shape[2]))
            .u(u(x.shape[3]))
            .u(u(os[2]))
            .u(u(os[3]))
            .u(u(size))
            .u(0)
            .u(0);
        self.ctx.dispatch(
            Kernel::MaxPool2d,
            &params,
            &[x.bind(), out.bind()],
            false,
            self.g1(total),
        )?;
        Ok(out)
    }

    fn max_pool2d_backward(&self, x: &T, gy: &T, size: usize) -> Result<T> {
        let op = "max_pool2d_backward";
        let os = pool_out_shape(op, &x.shape, size)?;
        same_shape(op, &gy.shape, &os)?;
        let out = self.out(op, &x.shape)?;
        let (h, w) = (x.shape[2], x.shape[3]);
        if h % size != 0 || w % size != 0 {
            // Rows and columns outside every window get no gradient.
            self.ctx.clear(out.buf.raw(), out.bytes())?;
        }
        let total = gy.numel();
        let params = Params::new()
            .u(u(total))
            .u(u(h))
            .u(u(w))
            .u(u(os[2]))
            .u(u(os[3]))
            .u(u(size))
            .u(0)
            .u(0);
        self.ctx.dispatch(
            Kernel::MaxPool2dBackward,
            &params,
            &[x.bind(), gy.bind(), out.bind()],
            false,
            self.g1(total),
        )?;
        Ok(out)
    }

    fn cross_entropy(&self, logits: &T, labels: &T) -> Result<T> {
        self.loss_forward("cross_entropy", Kernel::CrossEntropy, logits, labels, None)
    }

    fn cross_entropy_backward(&self, logits: &T, labels: &T, gy: &T) -> Result<T> {
        let k = Kernel::CrossEntropyBackward;
        self.loss_backward("cross_entropy_backward", k, logits, labels, gy, None)
    }

    fn cw_loss(&self, logits: &T, labels: &T, kappa: f32) -> Result<T> {
        self.loss_forward("cw_loss", Kernel::CwLoss, logits, labels, Some(kappa))
    }

    fn cw_loss_backward(&self, logits: &T, labels: &T, kappa: f32, gy: &T) -> Result<T> {
        let k = Kernel::CwLossBackward;
        self.loss_backward("cw_loss_backward", k, logits, labels, gy, Some(kappa))
    }

    fn dlr_loss(&self, logits: &T, labels: &T, targets: Option<&T>) -> Result<T> {
        self.dlr("dlr_loss", logits, labels, targets, None)
    }

    fn dlr_loss_backward(&self, logits: &T, labels: &T, targets: Option<&T>, gy: &T) -> Result<T> {
        self.dlr("dlr_loss_backward", logits, labels, targets, Some(gy))
    }

    fn mul_rows(&self, x: &T, s: &T) -> Result<T> {
        let op = "mul_rows";
        let (_, d) = Self::rows(op, &x.shape, &s.shape)?;
        let out = self.out(op, &x.shape)?;
        let total = x.numel();
        if total == 0 {
            return Ok(out);
        }
        let params = Params::new().u(u(total)).u(u(d)).u(0).u(0);
        self.ctx.dispatch(
            Kernel::MulRows,
            &params,
            &[x.bind(), s.bind(), out.bind()],
            false,
            self.g1(total),
        )?;
        Ok(out)
    }

    fn select_rows(&self, mask: &T, a: &T, b: &T) -> Result<T> {
        let op = "select_rows";
        same_shape(op, &a.shape, &b.shape)?;
        let (_, d) = Self::rows(op, &a.shape, &mask.shape)?;
        let out = self.out(op, &a.shape)?;
        let total = a.numel();
        if total == 0 {
            return Ok(out);
        }
        let params = Params::new().u(u(total)).u(u(d)).u(0).u(0);
        self.ctx.dispatch(
            Kernel::SelectRows,
            &params,
            &[mask.bind(), a.bind(), b.bind(), out.bind()],
            false,
            self.g1(total),
        )?;
        Ok(out)
    }

    fn restart_merge(
        &self,
        best: Option<&T>,
        logits: &T,
        loss: &T,
        labels: &T,
        targeted: bool,
    ) -> Result<(T, T)> {
        let op = "restart_merge";
        let (n, k) = check_restart_merge(
            op,
            best.map(|t| t.shape.as_slice()),
            &logits.shape,
            &loss.shape,
            &labels.shape,
        )?;
        let take = self.out(op, &[n])?;
        let merged = self.out(op, &[3, n])?;
        if n == 0 {
            return Ok((take, merged));
        }
        let flags = u32::from(best.is_some()) | (u32::from(targeted) << 1);
        let params = Params::new().u(u(n)).u(u(k)).u(flags).u(0);
        // Without a best so far, the kernel reads nothing from its `best` binding: the loss
        // stands in (read-only, as that binding is).
        let best = best.unwrap_or(loss);
        self.ctx.dispatch(
            Kernel::RestartMerge,
            &params,
            &[
                best.bind(),
                logits.bind(),
                loss.bind(),
                labels.bind(),
                take.bind(),
                merged.bind(),
            ],
            false,
            self.g1(n),
        )?;
        Ok((take, merged))
    }

    fn batch_norm_train(
        &self,
        x: &T,
        gamma: &T,
        beta: &T,
        eps: f32,
    ) -> Result<(T, BatchNormStats<T>)> {
        let op = "batch_norm_train";
        let (n, c, s) = bn_layout(op, &x.shape, &gamma.shape, &beta.shape)?;
        let mean = self.out(op, &[c])?;
        let var = self.out(op, &[c])?;
        let params = Params::new().u(u(n)).u(u(c)).u(u(s)).u(0);
        self.ctx.dispatch(
            Kernel::BatchNormStats,
            &params,
            &[x.bind(), mean.bind(), var.bind()],
            false,
            self.gw(c),
        )?;
        let y = self.batch_norm_eval(x, gamma, beta, &mean, &var, eps)?;
        Ok((y, BatchNormStats { mean, var }))
    }

    fn batch_norm_eval(
        &self,
        x: &T,
        gamma: &T,
        beta: &T,
        mean: &T,
        var: &T,
        eps: f32,
    ) -> Result<T> {
        let op = "batch_norm_eval";
        let (_, c, s) = bn_layout(op, &x.shape, &gamma.shape, &beta.shape)?;
        if mean.shape != [c] || var.shape != [c] {
            return Err(TensorError::shape(
                op,
                format!(
                    "mean {:?} and var {:?} must be [{c}]",
                    mean.shape, var.shape
                ),
            ));
        }
        let y = self.out(op, &x.shape)?;
        let total = x.numel();
        let params = Params::new().u(u(total)).u(u(c)).u(u(s)).f(eps);
        self.ctx.dispatch(
            Kernel::BatchNormApply,
            &params,
            &[
                x.bind(),
                gamma.bind(),
                beta.bind(),
                mean.bind(),
                var.bind(),
                y.bind(),
            ],
            false,
            self.g1(total),
        )?;
        Ok(y)
    }

    fn batch_norm_train_backward(
        &self,
        x: &T,
        gamma: &T,
        stats: &BatchNormStats<T>,
        gy: &T,
        eps: f32,
    ) -> Result<BatchNormGrads<T>> {
        let op = "batch_norm_train_backward";
        let (n, c, s) = bn_layout(op, &x.shape, &gamma.shape, &gamma.shape)?;
        same_shape(op, &gy.shape, &x.shape)?;
        if stats.mean.shape != [c] || stats.var.shape != [c] {
            return Err(TensorError::shape(op, "statistics must be [c]"));
        }
        let gg = self.out(op, &[c])?;
        let gb = self.out(op, &[c])?;
        let params = Params::new().u(u(n)).u(u(c)).u(u(s)).f(eps);
        self.ctx.dispatch(
            Kernel::BatchNormBackwardReduce,
            &params,
            &[
                x.bind(),
                gy.bind(),
                stats.mean.bind(),
                stats.var.bind(),
                gg.bind(),
                gb.bind(),
            ],
            false,
            self.gw(c),
        )?;
        let gx = self.out(op, &x.shape)?;
        let total = x.numel();
        let params = Params::new()
            .u(u(total))
            .u(u(c))
            .u(u(s))
            .f(eps)
            .f((n * s) as f32)
            .u(0)
            .u(0)
            .u(0);
        self.ctx.dispatch(
            Kernel::BatchNormBackwardInput,
            &params,
            &[
                x.bind(),
                gy.bind(),
                gamma.bind(),
                stats.mean.bind(),
                stats.var.bind(),
                gg.bind(),
                gb.bind(),
                gx.bind(),
            ],
            false,
            self.g1(total),
        )?;
        Ok(BatchNormGrads {
            x: gx,
            gamma: gg,
            beta: gb,
        })
    }

    fn pgd_step_linf(&self, x: &T, x0: &T, g: &T, alpha: f32, eps: f32) -> Result<T> {
        self.linf_step("pgd_step_linf", x, x0, Some(g), alpha, eps)
    }

    fn project_linf(&self, x: &T, x0: &T, eps: f32) -> Result<T> {
        self.linf_step("project_linf", x, x0, None, 0.0, eps)
    }

    fn pgd_step_l2(&self, x: &T, x0: &T, g: &T, alpha: f32, eps: f32) -> Result<T> {
        self.l2_step("pgd_step_l2", x, x0, Some(g), alpha, eps)
    }

    fn project_l2(&self, x: &T, x0: &T, eps: f32) -> Result<T> {
        self.l2_step("project_l2", x, x0, None, 0.0, eps)
    }

    fn adam_update(
        &self,
        param: &mut T,
        grad: &T,
        m: &mut T,
        v: &mut T,
        h: AdamParams,
    ) -> Result<()> {
        let op = "adam_update";
        same_shape(op, &param.shape, &grad.shape)?;
        same_shape(op, &param.shape, &m.shape)?;
        same_shape(op, &param.shape, &v.shape)?;
        self.make_unique(op, param)?;
        self.make_unique(op, m)?;
        self.make_unique(op, v)?;
        let t = h.step.max(1) as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        let n = param.numel();
        let params = Params::new()
            .u(u(n))
            .f(h.lr)
            .f(h.beta1)
            .f(h.beta2)
            .f(h.eps)
            .f(bc1)
            .f(bc2)
            .u(0);
        self.ctx.dispatch(
            Kernel::AdamUpdate,
            &params,
            &[param.bind(), grad.bind(), m.bind(), v.bind()],
            false,
            self.g1(n),
        )
    }

    fn sgd_update(
        &self,
        param: &mut T,
        grad: &T,
        momentum_buf: &mut T,
        h: SgdParams,
    ) -> Result<()> {
        let op = "sgd_update";
        same_shape(op, &param.shape, &grad.shape)?;
        same_shape(op, &param.shape, &momentum_buf.shape)?;
        self.make_unique(op, param)?;
        self.make_unique(op, momentum_buf)?;
        let n = param.numel();
        let params = Params::new()
            .u(u(n))
            .f(h.lr)
            .f(h.momentum)
            .f(h.weight_decay);
        self.ctx.dispatch(
            Kernel::SgdUpdate,
            &params,
            &[param.bind(), grad.bind(), momentum_buf.bind()],
            false,
            self.g1(n),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_contiguous_axes_and_drops_ones() {
        // [2, 3, 4] + [4]: a contiguous, b broadcast on the two outer axes.
        let (d, s) = collapse(&[2, 3, 4], &[vec![12, 4, 1], vec![0, 0, 1]]);
        assert_eq!(d, vec![6, 4]);
        assert_eq!(s, vec![vec![4, 1], vec![0, 1]]);
        let (d, s) = collapse(&[1, 5, 1], &[vec![5, 1, 1]]);
        assert_eq!((d, s), (vec![5], vec![vec![1]]));
        let (d, _) = collapse(&[1, 1], &[vec![1, 1]]);
        assert!(d.is_empty());
    }

    #[test]
    fn split_k_covers_the_inner_dimension() {
        for &(tiles, k) in &[
            (1, 39_200),
            (13, 9_800),
            (16, 3_136),
            (784, 50),
            (1, 17),
            (64, 10_000),
        ] {
            let (s, chunk) = split_k(tiles, k);
            assert!(s >= 1 && chunk % 16 == 0 && s * chunk >= k && (s - 1) * chunk < k);
        }
        assert_eq!(split_k(784, 50).0, 1);
        assert!(split_k(1, 39_200).0 > 1);
    }
}
