//! The [`Backend`] trait: the small set of operations the paper's models, attacks and training
//! need. A new device implements this trait and passes the shared op suite
//! (`saddle_tensor::testing`).

use crate::error::{Result, TensorError};
use crate::shape::Conv2dParams;

/// A tensor of some backend: it knows its shape; its data lives wherever the backend keeps it.
pub trait TensorLike: Clone + std::fmt::Debug + Send + Sync {
    /// The dimensions, outermost first (NCHW for images).
    fn dims(&self) -> &[usize];

    /// Number of elements.
    fn numel(&self) -> usize {
        self.dims().iter().product()
    }
}

/// What batch normalisation in training mode returns besides its output.
#[derive(Clone, Debug)]
pub struct BatchNormStats<T> {
    /// Per-channel batch mean, shape `[c]`.
    pub mean: T,
    /// Per-channel biased batch variance (divided by the count), shape `[c]`.
    pub var: T,
}

/// Gradients of batch normalisation in training mode.
#[derive(Clone, Debug)]
pub struct BatchNormGrads<T> {
    /// Gradient with respect to the input, shaped like it.
    pub x: T,
    /// Gradient with respect to the scale, `[c]`.
    pub gamma: T,
    /// Gradient with respect to the shift, `[c]`.
    pub beta: T,
}

/// The activation a fused batch norm applies to its output ([`Backend::batch_norm_act_train`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`, as [`Backend::relu`].
    Relu,
    /// `x` where `x > 0`, else `slope · x`, as [`Backend::leaky_relu`]; `slope` ≥ 0, so that the
    /// output is positive exactly where the input is and the gradient can be taken from the
    /// output.
    LeakyRelu(f32),
}

impl Activation {
    /// `v` where `positive`, else 0 (ReLU) or `slope · v`: the activation of `v` with
    /// `positive = v > 0`, its gradient `g` with `positive = y > 0` (`y` the output).
    #[inline(always)]
    fn pass_or_scale(self, positive: bool, v: f32) -> f32 {
        match self {
            _ if positive => v,
            Activation::Relu => 0.0,
            Activation::LeakyRelu(s) => s * v,
        }
    }

    /// The activation of one value (the same arithmetic as the backends' element-wise ops).
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        self.pass_or_scale(v > 0.0, v)
    }

    /// The gradient with respect to the input given the activation's output `y` and the
    /// gradient `g` of the output: `g` where `y > 0`, else 0 (ReLU) or `slope · g`.
    #[inline(always)]
    pub fn grad_from_output(self, y: f32, g: f32) -> f32 {
        self.pass_or_scale(y > 0.0, g)
    }

    /// An error unless a leaky ReLU's slope is finite and not negative.
    pub fn check(self, op: &'static str) -> Result<()> {
        match self {
            Activation::LeakyRelu(s) if !(s >= 0.0 && s.is_finite()) => {
                Err(TensorError::InvalidArgument {
                    op,
                    detail: format!(
                        "a fused leaky ReLU needs a finite slope >= 0 (its gradient is read from \
                         the output), got {s}"
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Hyper-parameters of one Adam update (Kingma & Ba 2015), as in PyTorch and TensorFlow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay, 0.9 by default.
    pub beta1: f32,
    /// Second-moment decay, 0.999 by default.
    pub beta2: f32,
    /// Added to the root of the second moment, 1e-8 by default.
    pub eps: f32,
    /// The 1-based step number, for bias correction.
    pub step: u64,
}

/// Hyper-parameters of one SGD update with momentum and (coupled, L2) weight decay, as in
/// PyTorch: `g ← g + wd·p; buf ← momentum·buf + g; p ← p − lr·buf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    /// Learning rate.
    pub lr: f32,
    /// Momentum, 0 for plain SGD.
    pub momentum: f32,
    /// Weight decay added to the gradient.
    pub weight_decay: f32,
}

/// The operations of a compute device, over `f32` tensors.
///
/// Conventions: images are NCHW; convolution weights are `[out, in, kh, kw]`; a linear layer is
/// `matmul(x, w, false, true)` with `w` of shape `[out, in]` (PyTorch's layout). Class labels are
/// tensors of shape `[n]` holding class indices as `f32` (exact below 2²⁴), so that they can live
/// on the device with everything else.
///
/// Every method checks its shapes and returns [`TensorError`] naming the operation and the shapes
/// instead of panicking. Methods with a default body are composites of the required ones; a
/// backend overrides them to fuse work (the PGD step, optimiser updates).
pub trait Backend: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The backend's tensor type.
    type Tensor: TensorLike;

    /// A short name for messages, for example `"cpu"` or `"wgpu (Vulkan, llvmpipe)"`.
    fn name(&self) -> String;

    // ---- data movement --------------------------------------------------------------------

    /// A tensor of `shape` holding `data` in row-major order.
    #[allow(clippy::wrong_self_convention)] // a constructor on the backend, like `Vec::from`
    fn from_vec(&self, shape: &[usize], data: Vec<f32>) -> Result<Self::Tensor>;

    /// The tensor's elements in row-major order, copied to the host.
    fn to_vec(&self, x: &Self::Tensor) -> Result<Vec<f32>>;

    /// Copies the elements into `out` (cleared first), reusing its capacity: a loop that reads
    /// a value back every step allocates nothing once `out` is large enough.
    fn to_vec_into(&self, x: &Self::Tensor, out: &mut Vec<f32>) -> Result<()> {
        let v = self.to_vec(x)?;
        out.clear();
        out.extend_from_slice(&v);
        Ok(())
    }

    /// A tensor of `shape` filled with `value`.
    fn full(&self, shape: &[usize], value: f32) -> Result<Self::Tensor>;

    /// A tensor of zeros.
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor> {
        self.full(shape, 0.0)
    }

    /// The same elements under another shape with as many elements.
    fn reshape(&self, x: &Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;

    /// Marks the end of one iteration of an iterative algorithm (a PGD step, a training step).
    /// A backend that batches device work may submit the work recorded since the previous
    /// mark here, so that one iteration is one submission; results are unaffected, and nothing
    /// waits for the device. The default does nothing (the CPU backend runs every op at once).
    ///
    /// # Errors
    /// [`TensorError::Backend`] if the device reports an error while submitting.
    fn step_end(&self) -> Result<()> {
        Ok(())
    }

    // ---- element-wise, with NumPy broadcasting -------------------------------------------

    /// `a + b`.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a − b`.
    fn sub(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a · b`.
    fn mul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `a / b`.
    fn div(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Element-wise minimum.
    fn minimum(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// Element-wise maximum.
    fn maximum(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// `s · x + t` for scalars `s` and `t`.
    fn affine(&self, x: &Self::Tensor, s: f32, t: f32) -> Result<Self::Tensor>;
    /// `sqrt(x)`.
    fn sqrt(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// −1, 0 or +1 by the sign of each element (sign(0) = 0, sign(NaN) = NaN).
    fn sign(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Each element clamped to `[lo, hi]`.
    fn clamp(&self, x: &Self::Tensor, lo: f32, hi: f32) -> Result<Self::Tensor>;

    /// `max(x, 0)`.
    fn relu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Gradient of ReLU: `gy` where `x > 0`, else 0.
    fn relu_backward(&self, x: &Self::Tensor, gy: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x` where `x > 0`, else `slope · x`.
    fn leaky_relu(&self, x: &Self::Tensor, slope: f32) -> Result<Self::Tensor>;
    /// Gradient of leaky ReLU: `gy` where `x > 0`, else `slope · gy`.
    fn leaky_relu_backward(
        &self,
        x: &Self::Tensor,
        gy: &Self::Tensor,
        slope: f32,
    ) -> Result<Self::Tensor>;

    // ---- reductions ----------------------------------------------------------------------

    /// Sum over `axes` (each at most once); with `keep_dims` the reduced axes stay as size 1.
    fn sum_axes(&self, x: &Self::Tensor, axes: &[usize], keep_dims: bool) -> Result<Self::Tensor>;

    /// Mean over `axes`.
    fn mean_axes(&self, x: &Self::Tensor, axes: &[usize], keep_dims: bool) -> Result<Self::Tensor> {
        let dims = x.dims();
        let mut count = 1usize;
        for &a in axes {
            count *= *dims.get(a).ok_or_else(|| {
                TensorError::invalid("mean_axes", format!("axis {a} out of range for {dims:?}"))
            })?;
        }
        let s = self.sum_axes(x, axes, keep_dims)?;
        self.affine(&s, 1.0 / count.max(1) as f32, 0.0)
    }

    /// Sum of all elements reduced to a tensor of shape `[]`.
    fn sum_all(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let axes: Vec<usize> = (0..x.dims().len()).collect();
        self.sum_axes(x, &axes, false)
    }

    /// Sums `x` down to `shape`, undoing a broadcast (the gradient of a broadcasting op).
    fn sum_to_shape(&self, x: &Self::Tensor, shape: &[usize]) -> Result<Self::Tensor> {
        sum_to_shape_default(self, x, shape)
    }

    // ---- linear algebra ------------------------------------------------------------------

    /// Matrix product of 2-D tensors, `op(a) · op(b)` where `op` transposes when asked.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Self::Tensor>;

    /// 2-D convolution (cross-correlation, as in PyTorch) of `x` `[n, c, h, w]` with `w`
    /// `[k, c, kh, kw]`, plus `bias` `[k]` if given.
    fn conv2d(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        p: Conv2dParams,
    ) -> Result<Self::Tensor>;

    /// Gradient of [`Backend::conv2d`] with respect to its input, of shape `input_shape`.
    fn conv2d_backward_input(
        &self,
        gy: &Self::Tensor,
        w: &Self::Tensor,
        input_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Self::Tensor>;

    /// Gradient of [`Backend::conv2d`] with respect to its weight, of shape `weight_shape`.
    fn conv2d_backward_weight(
        &self,
        x: &Self::Tensor,
        gy: &Self::Tensor,
        weight_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Self::Tensor>;

    /// Max-pool with a square window of `size` and stride `size` (the paper uses 2).
    fn max_pool2d(&self, x: &Self::Tensor, size: usize) -> Result<Self::Tensor>;

    /// Gradient of [`Backend::max_pool2d`]: each window's gradient goes to the first position
    /// (in row-major order) holding the window's maximum.
    fn max_pool2d_backward(
        &self,
        x: &Self::Tensor,
        gy: &Self::Tensor,
        size: usize,
    ) -> Result<Self::Tensor>;

    /// `relu(conv2d(x, w, bias))` in one pass (a backend fuses the ReLU into the convolution's
    /// output; the default composes the two ops).
    fn conv2d_relu(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        p: Conv2dParams,
    ) -> Result<Self::Tensor> {
        let y = self.conv2d(x, w, bias, p)?;
        self.relu(&y)
    }

    /// `conv2d(x, w, bias) + residual` (`residual` shaped like the convolution's output): a
    /// residual connection's sum made in the convolution's output pass by a backend that fuses
    /// it, with the bits of the two ops in sequence; the default composes them.
    fn conv2d_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        p: Conv2dParams,
        residual: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let y = self.conv2d(x, w, bias, p)?;
        check_residual(y.dims(), residual.dims())?;
        self.add(&y, residual)
    }

    /// Gradient of `max_pool2d(relu(z))` with respect to `z`, given `y = relu(z)`: each
    /// window's gradient goes to its first maximum of `y` if that maximum is positive (ReLU's
    /// gradient is 0 where `z ≤ 0`, that is where `y = 0`).
    fn relu_max_pool2d_backward(
        &self,
        y: &Self::Tensor,
        gy: &Self::Tensor,
        size: usize,
    ) -> Result<Self::Tensor> {
        let g = self.max_pool2d_backward(y, gy, size)?;
        self.relu_backward(y, &g)
    }

    // ---- losses --------------------------------------------------------------------------

    /// Per-example cross-entropy of log-softmax(`logits` `[n, k]`) against `labels` `[n]`:
    /// shape `[n]`. A label outside `0..k` is an error.
    fn cross_entropy(&self, logits: &Self::Tensor, labels: &Self::Tensor) -> Result<Self::Tensor>;

    /// Gradient of the per-example cross-entropy with respect to the logits, each row scaled by
    /// `gy` `[n]`: `gy_i · (softmax(z_i) − onehot(y_i))`.
    fn cross_entropy_backward(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        gy: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// Per-example CW margin loss of MadryLab's `mnist_challenge`:
    /// `−relu(z_y − max_{j≠y} z_j + κ)`, shape `[n]`.
    fn cw_loss(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        kappa: f32,
    ) -> Result<Self::Tensor>;

    /// Gradient of [`Backend::cw_loss`] with respect to the logits, rows scaled by `gy` `[n]`.
    /// Where the margin is active, −1 at the label and +1 at the first largest other logit.
    fn cw_loss_backward(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        kappa: f32,
        gy: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// Per-example Kullback–Leibler divergence `KL(softmax(p_i) ‖ softmax(q_i))` of two logit
    /// matrices `p`, `q` `[n, k]`: shape `[n]` (TRADES' robust loss, with `p` the clean
    /// logits). Both rows are normalised by their maximum first, so large logits do not
    /// overflow.
    ///
    /// The default computes on the host in `f64` (the tensors are `n × classes`, small);
    /// a backend may override it with a kernel.
    fn kl_div(&self, p: &Self::Tensor, q: &Self::Tensor) -> Result<Self::Tensor> {
        let (n, k) = crate::shape::check_logit_pair("kl_div", p.dims(), q.dims())?;
        let (pv, qv) = (self.to_vec(p)?, self.to_vec(q)?);
        let out = (0..n)
            .map(|i| {
                let r = i * k..(i + 1) * k;
                crate::shape::kl_row(&pv[r.clone()], &qv[r]).0 as f32
            })
            .collect();
        self.from_vec(&[n], out)
    }

    /// Gradients of the per-example KL divergence, each row scaled by `gy` `[n]`:
    /// `(∂/∂p, ∂/∂q)` = `gy_i · P_ij·((log P_ij − log Q_ij) − KL_i)` and `gy_i · (Q_ij − P_ij)`,
    /// with `P`, `Q` the softmax of `p`, `q`. Default on the host, as [`Backend::kl_div`].
    fn kl_div_backward(
        &self,
        p: &Self::Tensor,
        q: &Self::Tensor,
        gy: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let op = "kl_div_backward";
        let (n, k) = crate::shape::check_logit_pair(op, p.dims(), q.dims())?;
        if gy.dims() != [n] {
            return Err(TensorError::shape(
                op,
                format!("gy {:?} must be [{n}]", gy.dims()),
            ));
        }
        let (pv, qv, g) = (self.to_vec(p)?, self.to_vec(q)?, self.to_vec(gy)?);
        let (mut gp, mut gq) = (vec![0.0f32; n * k], vec![0.0f32; n * k]);
        for i in 0..n {
            let r = i * k..(i + 1) * k;
            let (kl, lp, lq) = crate::shape::kl_row(&pv[r.clone()], &qv[r.clone()]);
            let gi = f64::from(g[i]);
            for j in 0..k {
                let (pj, qj) = (lp[j].exp(), lq[j].exp());
                gp[i * k + j] = (gi * pj * ((lp[j] - lq[j]) - kl)) as f32;
                gq[i * k + j] = (gi * (qj - pj)) as f32;
            }
        }
        Ok((self.from_vec(&[n, k], gp)?, self.from_vec(&[n, k], gq)?))
    }

    /// Per-example DLR loss of Croce & Hein (ICML 2020), the objective of APGD-DLR and APGD-T,
    /// for `logits` `[n, k]` and `labels` `[n]`, shape `[n]`. With `π` the classes by
    /// decreasing logit (ties: the lower index first), untargeted (`targets` is `None`, `k ≥ 3`):
    /// `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 10⁻¹²)`; targeted (`targets` `[n]` of class
    /// indices, `k ≥ 4`): `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²)`.
    ///
    /// The default computes each row on the host in `f64` ([`dlr_row`]) and rounds to `f32`;
    /// a backend may override it with a kernel.
    fn dlr_loss(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        targets: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let op = "dlr_loss";
        let (n, k) = check_dlr(op, logits.dims(), labels.dims(), targets.map(|t| t.dims()))?;
        let (z, y) = (self.to_vec(logits)?, self.to_vec(labels)?);
        let t = targets.map(|t| self.to_vec(t)).transpose()?;
        let out = dlr_rows(op, &z, &y, t.as_deref(), k, None)?.0;
        self.from_vec(&[n], out)
    }

    /// Gradient of [`Backend::dlr_loss`] with respect to the logits, each row scaled by `gy`
    /// `[n]`: `gy_i · ∂/∂z` of the row's loss, with `π` (the sort) held fixed. Default on the
    /// host in `f64`, as [`Backend::dlr_loss`].
    fn dlr_loss_backward(
        &self,
        logits: &Self::Tensor,
        labels: &Self::Tensor,
        targets: Option<&Self::Tensor>,
        gy: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let op = "dlr_loss_backward";
        let (n, k) = check_dlr(op, logits.dims(), labels.dims(), targets.map(|t| t.dims()))?;
        if gy.dims() != [n] {
            return Err(TensorError::shape(
                op,
                format!("gy {:?} must be [{n}]", gy.dims()),
            ));
        }
        let (z, y, g) = (self.to_vec(logits)?, self.to_vec(labels)?, self.to_vec(gy)?);
        let t = targets.map(|t| self.to_vec(t)).transpose()?;
        let out = dlr_rows(op, &z, &y, t.as_deref(), k, Some(&g))?.1;
        self.from_vec(&[n, k], out)
    }

    // ---- per-example ops -----------------------------------------------------------------

    /// Each example's row of `x` (`[n, …]`) times its own scalar `s[i]` (`s` of shape `[n]`):
    /// per-example step sizes. The default broadcasts [`Backend::mul`] (one `f32` product per
    /// element, as a kernel gives).
    fn mul_rows(&self, x: &Self::Tensor, s: &Self::Tensor) -> Result<Self::Tensor> {
        let n = check_rows("mul_rows", x.dims(), s.dims())?;
        let mut b = vec![1usize; x.dims().len()];
        b[0] = n;
        self.mul(x, &self.reshape(s, &b)?)
    }

    /// Per-example select: row `i` of `a` where `mask[i] ≠ 0` (NaN counts as non-zero), else
    /// row `i` of `b`; `a` and `b` of the same shape `[n, …]`, `mask` `[n]`. The result holds
    /// the selected rows' bits unchanged. The default selects on the host.
    fn select_rows(
        &self,
        mask: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let op = "select_rows";
        if a.dims() != b.dims() {
            return Err(TensorError::shape(
                op,
                format!("a {:?} and b {:?} must be equal", a.dims(), b.dims()),
            ));
        }
        let n = check_rows(op, a.dims(), mask.dims())?;
        let d = a.numel().checked_div(n).unwrap_or(0);
        let m = self.to_vec(mask)?;
        let av = self.to_vec(a)?;
        let mut out = self.to_vec(b)?;
        for (i, &mi) in m.iter().enumerate() {
            if mi != 0.0 {
                out[i * d..(i + 1) * d].copy_from_slice(&av[i * d..(i + 1) * d]);
            }
        }
        self.from_vec(a.dims(), out)
    }

    /// One restart of a multi-restart attack merged, per example, into the strongest restart so
    /// far, on the device: what lets PGD keep its best candidate there and read it back once
    /// per attack instead of once per restart.
    ///
    /// `best` (`[3, n]`, `None` before the first restart) holds per example, in its rows, the
    /// objective (0), the predicted class (1, an index as `f32`) and success (2, 1 or 0) of the
    /// strongest restart so far. The candidate restart gives its `logits` `[n, k]` and its
    /// per-example `loss` `[n]` against `labels` `[n]` (class indices as `f32`, compared as
    /// values, not checked). Per example `i`, the candidate's
    /// - objective is `sign · loss[i]` with `sign = −1` if `targeted`, else `+1` (one exact
    ///   `f32` product);
    /// - prediction `p` is the index of the first largest logit of row `i` (a NaN loses to any
    ///   number; a row of NaN gives 0), as `saddle_models::argmax_rows`;
    /// - success is `(p == labels[i]) == targeted`;
    ///
    /// and it is taken when `best` is `None`, or when it succeeds where the best did not, or
    /// both (or neither) succeed and its objective is strictly higher (ties, and NaN, keep the
    /// earlier restart). Returns `take` (`[n]`, 1 where taken, else 0: a mask for
    /// [`Backend::select_rows`]) and the new best (`[3, n]`: the candidate's column where taken,
    /// else the best's, bits unchanged). Every step is exact, so backends agree bit for bit.
    ///
    /// The default ([`restart_merge_default`]) computes on the host; a backend overrides it so
    /// that nothing leaves the device.
    fn restart_merge(
        &self,
        best: Option<&Self::Tensor>,
        logits: &Self::Tensor,
        loss: &Self::Tensor,
        labels: &Self::Tensor,
        targeted: bool,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        restart_merge_default(self, best, logits, loss, labels, targeted)
    }

    // ---- batch normalisation -------------------------------------------------------------

    /// Batch normalisation with batch statistics over all axes but 1 (channels) of `x`
    /// (`[n, c]` or `[n, c, h, w]`): `(x − mean)/sqrt(var + eps)·gamma + beta`.
    fn batch_norm_train(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<(Self::Tensor, BatchNormStats<Self::Tensor>)>;

    /// Batch normalisation with given (running) statistics.
    fn batch_norm_eval(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        mean: &Self::Tensor,
        var: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;

    /// Gradients of [`Backend::batch_norm_train`] given the statistics it returned.
    fn batch_norm_train_backward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &BatchNormStats<Self::Tensor>,
        gy: &Self::Tensor,
        eps: f32,
    ) -> Result<BatchNormGrads<Self::Tensor>>;

    // ---- fused steps (defaults are composites) -------------------------------------------

    /// `act(batch_norm_train(x))`: batch norm with batch statistics, then the activation, in
    /// one pass over the output (the statistics are those of `batch_norm_train`).
    fn batch_norm_act_train(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<(Self::Tensor, BatchNormStats<Self::Tensor>)> {
        act.check("batch_norm_act_train")?;
        let (y, stats) = self.batch_norm_train(x, gamma, beta, eps)?;
        Ok((activate(self, &y, act)?, stats))
    }

    /// `act(batch_norm_eval(x))` in one pass.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_eval(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        mean: &Self::Tensor,
        var: &Self::Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<Self::Tensor> {
        act.check("batch_norm_act_eval")?;
        let y = self.batch_norm_eval(x, gamma, beta, mean, var, eps)?;
        activate(self, &y, act)
    }

    /// Gradients of [`Backend::batch_norm_act_train`] given its output `y`, its statistics
    /// and the gradient `gy` of `y`: the activation's gradient (read from `y`) then
    /// [`Backend::batch_norm_train_backward`]'s.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_act_train_backward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &BatchNormStats<Self::Tensor>,
        y: &Self::Tensor,
        gy: &Self::Tensor,
        eps: f32,
        act: Activation,
    ) -> Result<BatchNormGrads<Self::Tensor>> {
        act.check("batch_norm_act_train_backward")?;
        let gz = activation_grad_from_output(self, y, gy, act)?;
        self.batch_norm_train_backward(x, gamma, stats, &gz, eps)
    }

    /// One L∞ PGD step: `clip_[0,1]( clip_[x0−ε, x0+ε]( x + α·sign(g) ) )`.
    fn pgd_step_linf(
        &self,
        x: &Self::Tensor,
        x0: &Self::Tensor,
        g: &Self::Tensor,
        alpha: f32,
        eps: f32,
    ) -> Result<Self::Tensor> {
        let s = self.sign(g)?;
        let moved = self.add(x, &self.affine(&s, alpha, 0.0)?)?;
        self.project_linf(&moved, x0, eps)
    }

    /// Projection onto the L∞ ball of radius `eps` around `x0`, then onto `[0, 1]`.
    fn project_linf(&self, x: &Self::Tensor, x0: &Self::Tensor, eps: f32) -> Result<Self::Tensor> {
        let lo = self.affine(x0, 1.0, -eps)?;
        let hi = self.affine(x0, 1.0, eps)?;
        let y = self.minimum(&self.maximum(x, &lo)?, &hi)?;
        self.clamp(&y, 0.0, 1.0)
    }

    /// Per-example L2 norms over all axes but the first: shape `[n]`.
    fn l2_norms(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        if x.dims().is_empty() {
            return Err(TensorError::shape("l2_norms", "a scalar has no batch axis"));
        }
        let axes: Vec<usize> = (1..x.dims().len()).collect();
        let sq = self.mul(x, x)?;
        self.sqrt(&self.sum_axes(&sq, &axes, false)?)
    }

    /// One L2 PGD step: `x + α·g/‖g‖₂` per example (no move where `‖g‖ = 0`), then
    /// [`Backend::project_l2`].
    ///
    /// The default computes the norms on the host in f64, so that gradients as large as 1e30 or
    /// as small as 1e-30 (whose f32 squares overflow or underflow) still take a full step.
    fn pgd_step_l2(
        &self,
        x: &Self::Tensor,
        x0: &Self::Tensor,
        g: &Self::Tensor,
        alpha: f32,
        eps: f32,
    ) -> Result<Self::Tensor> {
        let norms = host_l2_norms("pgd_step_l2", g.dims(), &self.to_vec(g)?)?;
        let scale: Vec<f32> = norms
            .iter()
            .map(|&v| {
                if v > 0.0 {
                    (alpha as f64 / v) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let moved = self.add(
            x,
            &self.mul(g, &self.from_vec(&batch_shape(g.dims()), scale)?)?,
        )?;
        self.project_l2(&moved, x0, eps)
    }

    /// Projection onto the L2 ball of radius `eps` around `x0` (per example: δ rescaled to norm
    /// `eps` when longer), then onto `[0, 1]`. Norms as in [`Backend::pgd_step_l2`].
    fn project_l2(&self, x: &Self::Tensor, x0: &Self::Tensor, eps: f32) -> Result<Self::Tensor> {
        let delta = self.sub(x, x0)?;
        let norms = host_l2_norms("project_l2", delta.dims(), &self.to_vec(&delta)?)?;
        // Shrink by a hair more than eps/‖δ‖ so that rounding cannot leave ‖δ‖ above eps.
        let scale: Vec<f32> = norms
            .iter()
            .map(|&v| {
                if v > eps as f64 {
                    (eps as f64 / v * (1.0 - 1e-6)) as f32
                } else {
                    1.0
                }
            })
            .collect();
        let y = self.add(
            x0,
            &self.mul(&delta, &self.from_vec(&batch_shape(delta.dims()), scale)?)?,
        )?;
        self.clamp(&y, 0.0, 1.0)
    }

    /// One Adam update of `param` in place, with moments `m` and `v` updated in place.
    fn adam_update(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        h: AdamParams,
    ) -> Result<()> {
        for (what, t) in [("grad", grad.dims()), ("m", m.dims()), ("v", v.dims())] {
            if t != param.dims() {
                return Err(TensorError::shape(
                    "adam_update",
                    format!("{what} {t:?} must match the parameter {:?}", param.dims()),
                ));
            }
        }
        *m = self.add(
            &self.affine(m, h.beta1, 0.0)?,
            &self.affine(grad, 1.0 - h.beta1, 0.0)?,
        )?;
        let g2 = self.mul(grad, grad)?;
        *v = self.add(
            &self.affine(v, h.beta2, 0.0)?,
            &self.affine(&g2, 1.0 - h.beta2, 0.0)?,
        )?;
        let t = h.step.max(1) as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        let mhat = self.affine(m, 1.0 / bc1, 0.0)?;
        let denom = self.affine(&self.sqrt(&self.affine(v, 1.0 / bc2, 0.0)?)?, 1.0, h.eps)?;
        let upd = self.div(&mhat, &denom)?;
        *param = self.sub(param, &self.affine(&upd, h.lr, 0.0)?)?;
        Ok(())
    }

    /// One SGD update with momentum and weight decay of `param` in place.
    fn sgd_update(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        momentum_buf: &mut Self::Tensor,
        h: SgdParams,
    ) -> Result<()> {
        for (what, t) in [
            ("grad", grad.dims()),
            ("momentum buffer", momentum_buf.dims()),
        ] {
            if t != param.dims() {
                return Err(TensorError::shape(
                    "sgd_update",
                    format!("{what} {t:?} must match the parameter {:?}", param.dims()),
                ));
            }
        }
        let g = self.add(grad, &self.affine(param, h.weight_decay, 0.0)?)?;
        *momentum_buf = self.add(&self.affine(momentum_buf, h.momentum, 0.0)?, &g)?;
        *param = self.sub(param, &self.affine(momentum_buf, h.lr, 0.0)?)?;
        Ok(())
    }
}

/// `[n, 1, 1, ...]` for a batch of shape `dims`.
fn batch_shape(dims: &[usize]) -> Vec<usize> {
    let mut b = vec![1usize; dims.len()];
    if let Some(first) = dims.first() {
        b[0] = *first;
    }
    b
}

/// Per-example L2 norms in f64 of a row-major batch, scaled by the largest magnitude first so
/// that neither huge nor tiny values overflow or underflow.
fn host_l2_norms(op: &'static str, dims: &[usize], v: &[f32]) -> Result<Vec<f64>> {
    let n = *dims
        .first()
        .ok_or_else(|| TensorError::shape(op, "a scalar has no batch axis"))?;
    let per = v.len().checked_div(n).unwrap_or(0);
    Ok((0..n)
        .map(|i| {
            let row = &v[i * per..(i + 1) * per];
            let m = row.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
            if m == 0.0 || !m.is_finite() {
                return m;
            }
            m * row
                .iter()
                .map(|&x| (x as f64 / m).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect())
}

/// The composite [`Backend::sum_to_shape`]: which axes a broadcast added or stretched, summed
/// with [`Backend::sum_axes`]. Backends that override the method fall back to this.
pub fn sum_to_shape_default<B: Backend>(
    b: &B,
    x: &B::Tensor,
    shape: &[usize],
) -> Result<B::Tensor> {
    let dims = x.dims().to_vec();
    if dims == shape {
        return Ok(x.clone());
    }
    if shape.len() > dims.len() {
        return Err(TensorError::shape(
            "sum_to_shape",
            format!("cannot sum {dims:?} to {shape:?}"),
        ));
    }
    let lead = dims.len() - shape.len();
    let mut axes: Vec<usize> = (0..lead).collect();
    for (i, &s) in shape.iter().enumerate() {
        if s == 1 && dims[lead + i] != 1 {
            axes.push(lead + i);
        } else if s != dims[lead + i] {
            return Err(TensorError::shape(
                "sum_to_shape",
                format!("cannot sum {dims:?} to {shape:?}"),
            ));
        }
    }
    let s = b.sum_axes(x, &axes, true)?;
    b.reshape(&s, shape)
}

/// The default [`Backend::restart_merge`]: reads the inputs back and merges each example on the
/// host ([`restart_merge_row`]). Backends that override the method may fall back to this.
///
/// # Errors
/// As [`check_restart_merge`], and the backend's transfers.
pub fn restart_merge_default<B: Backend>(
    b: &B,
    best: Option<&B::Tensor>,
    logits: &B::Tensor,
    loss: &B::Tensor,
    labels: &B::Tensor,
    targeted: bool,
) -> Result<(B::Tensor, B::Tensor)> {
    let op = "restart_merge";
    let (n, k) = check_restart_merge(
        op,
        best.map(|t| t.dims()),
        logits.dims(),
        loss.dims(),
        labels.dims(),
    )?;
    let (z, l, y) = (b.to_vec(logits)?, b.to_vec(loss)?, b.to_vec(labels)?);
    let old = best.map(|t| b.to_vec(t)).transpose()?;
    let mut take = vec![0.0f32; n];
    let mut out = vec![0.0f32; 3 * n];
    for i in 0..n {
        let cur = old.as_ref().map(|o| [o[i], o[n + i], o[2 * n + i]]);
        let (t, row) = restart_merge_row(cur, &z[i * k..(i + 1) * k], l[i], y[i], targeted);
        take[i] = if t { 1.0 } else { 0.0 };
        for (r, v) in row.into_iter().enumerate() {
            out[r * n + i] = v;
        }
    }
    Ok((b.from_vec(&[n], take)?, b.from_vec(&[3, n], out)?))
}

/// Checks the inputs of [`Backend::restart_merge`]: logits `[n, k]` with `k ≥ 1`, `loss` and
/// `labels` `[n]`, `best` `[3, n]`. Returns `(n, k)`.
///
/// # Errors
/// [`TensorError::Shape`] naming `op` for any other shapes.
pub fn check_restart_merge(
    op: &'static str,
    best: Option<&[usize]>,
    logits: &[usize],
    loss: &[usize],
    labels: &[usize],
) -> Result<(usize, usize)> {
    let (n, k) = crate::shape::check_logits_labels(op, logits, labels)?;
    if loss != [n] {
        return Err(TensorError::shape(
            op,
            format!("loss {loss:?} must be [{n}] for logits {logits:?}"),
        ));
    }
    if let Some(b) = best {
        if b != [3, n] {
            return Err(TensorError::shape(
                op,
                format!("best {b:?} must be [3, {n}] (objective, prediction, success)"),
            ));
        }
    }
    Ok((n, k))
}

/// One example of [`Backend::restart_merge`]: from the best so far `cur` (objective,
/// prediction, success; `None` before the first restart) and the candidate's logits row `z`,
/// loss and label, whether the candidate is taken and the new `[objective, prediction,
/// success]`.
pub fn restart_merge_row(
    cur: Option<[f32; 3]>,
    z: &[f32],
    loss: f32,
    label: f32,
    targeted: bool,
) -> (bool, [f32; 3]) {
    let sign = if targeted { -1.0f32 } else { 1.0 };
    let objective = sign * loss;
    // First largest; a NaN loses to any number (saddle_models::argmax_rows).
    let mut p = 0usize;
    for (j, &v) in z.iter().enumerate().skip(1) {
        if v > z[p] || z[p].is_nan() && !v.is_nan() {
            p = j;
        }
    }
    let pred = p as f32;
    let success = (pred == label) == targeted;
    let cand = [objective, pred, if success { 1.0 } else { 0.0 }];
    let take = match cur {
        None => true,
        Some([o, _, s]) => {
            let s = s != 0.0;
            (success && !s) || (success == s && objective > o)
        }
    };
    (take, if take { cand } else { cur.unwrap_or(cand) })
}

/// Checks a batch `x` `[n, …]` against one scalar per example `s` `[n]`; returns `n`.
fn check_rows(op: &'static str, x: &[usize], s: &[usize]) -> Result<usize> {
    match x.first() {
        Some(&n) if s == [n] => Ok(n),
        _ => Err(TensorError::shape(
            op,
            format!("{x:?} must be [n, …] with one value per example in {s:?} ([n])"),
        )),
    }
}

/// Checks the inputs of the DLR loss: logits `[n, k]`, labels `[n]`, targets `[n]`, and at least
/// 3 classes (4 with targets). Returns `(n, k)`.
pub fn check_dlr(
    op: &'static str,
    logits: &[usize],
    labels: &[usize],
    targets: Option<&[usize]>,
) -> Result<(usize, usize)> {
    let (n, k) = crate::shape::check_logits_labels(op, logits, labels)?;
    let need = if targets.is_some() { 4 } else { 3 };
    if k < need {
        return Err(TensorError::shape(
            op,
            format!(
                "logits {logits:?}: the {}DLR loss needs at least {need} classes",
                if targets.is_some() { "targeted " } else { "" }
            ),
        ));
    }
    if let Some(t) = targets {
        if t != [n] {
            return Err(TensorError::shape(
                op,
                format!("targets {t:?} must be [{n}] for logits {logits:?}"),
            ));
        }
    }
    Ok((n, k))
}

/// The DLR loss of every row of `z` (`k` values each) and its gradient with respect to the
/// logits, rows scaled by `gy` (1 where `None`), computed by [`dlr_row`] in `f64` and rounded
/// to `f32`: what the CPU backend and the trait's defaults return. Checks the labels and the
/// targets (class indices in `0..k`).
///
/// # Errors
/// [`TensorError::InvalidArgument`] naming `op` for a label or target that is not a class.
pub fn dlr_rows(
    op: &'static str,
    z: &[f32],
    labels: &[f32],
    targets: Option<&[f32]>,
    k: usize,
    gy: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    crate::shape::check_labels(op, labels, k)?;
    if let Some(t) = targets {
        crate::shape::check_labels(op, t, k)?;
    }
    let mut loss = Vec::with_capacity(labels.len());
    let mut dz = Vec::with_capacity(z.len());
    let mut row = Vec::with_capacity(k);
    for (i, zr) in z.chunks(k.max(1)).take(labels.len()).enumerate() {
        row.clear();
        row.extend(zr.iter().map(|&v| f64::from(v)));
        let (l, g) = dlr_row(&row, labels[i] as usize, targets.map(|t| t[i] as usize));
        loss.push(l as f32);
        let s = gy.map_or(1.0, |g| f64::from(g[i]));
        dz.extend(g.into_iter().map(|v| (s * v) as f32));
    }
    Ok((loss, dz))
}

/// One row of the DLR loss in `f64`, and its gradient with respect to the logits `z`: untargeted
/// `−(z_y − max_{i≠y} z_i)/(z_π1 − z_π3 + 10⁻¹²)`, or with a target `t`
/// `−(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²)`, `π` the classes by decreasing logit (ties:
/// the lower index first; NaN ordered as [`f64::total_cmp`] orders it). The caller ensures
/// `y`, `t` < `z.len()` and at least 3 classes (4 with a target).
pub fn dlr_row(z: &[f64], y: usize, target: Option<usize>) -> (f64, Vec<f64>) {
    let mut pi: Vec<usize> = (0..z.len()).collect();
    pi.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    let (other, denom, tail): (usize, f64, Vec<(usize, f64)>) = match target {
        None => {
            let other = if pi[0] == y { pi[1] } else { pi[0] };
            (other, z[pi[0]] - z[pi[2]] + 1e-12, vec![(pi[2], 1.0)])
        }
        Some(t) => (
            t,
            z[pi[0]] - 0.5 * (z[pi[2]] + z[pi[3]]) + 1e-12,
            vec![(pi[2], 0.5), (pi[3], 0.5)],
        ),
    };
    let u = z[y] - z[other];
    // ∂/∂z of −u/D: −(∂u)/D + u·(∂D)/D².
    let mut g = vec![0.0f64; z.len()];
    g[y] -= 1.0 / denom;
    g[other] += 1.0 / denom;
    g[pi[0]] += u / (denom * denom);
    for (c, w) in tail {
        g[c] -= w * u / (denom * denom);
    }
    (-u / denom, g)
}

/// `act(x)` through the backend's element-wise activations.
pub fn activate<B: Backend>(be: &B, x: &B::Tensor, act: Activation) -> Result<B::Tensor> {
    match act {
        Activation::Relu => be.relu(x),
        Activation::LeakyRelu(s) => be.leaky_relu(x, s),
    }
}

/// The gradient with respect to an activation's input from its output `y` and the gradient `gy`
/// of the output (as [`Activation::grad_from_output`]): the backends' ReLU and leaky-ReLU
/// gradients applied to `y`, which is positive exactly where the input is.
pub fn activation_grad_from_output<B: Backend>(
    be: &B,
    y: &B::Tensor,
    gy: &B::Tensor,
    act: Activation,
) -> Result<B::Tensor> {
    match act {
        Activation::Relu => be.relu_backward(y, gy),
        Activation::LeakyRelu(s) => be.leaky_relu_backward(y, gy, s),
    }
}

/// An error unless the residual of [`Backend::conv2d_add`] has the convolution's output shape.
pub fn check_residual(out: &[usize], residual: &[usize]) -> Result<()> {
    if out == residual {
        return Ok(());
    }
    Err(TensorError::shape(
        "conv2d_add",
        format!("residual {residual:?} must have the convolution's output shape {out:?}"),
    ))
}
