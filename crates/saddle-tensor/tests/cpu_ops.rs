//! The CPU backend against the shared op suite, small cases worked by hand, and proof that the
//! suite catches wrong gradients: a backend with a deliberately injected bug must fail it.

use saddle_tensor::backend::restart_merge_default;
use saddle_tensor::cpu::Cpu;
use saddle_tensor::testing::{self, Tol};
use saddle_tensor::{
    AdamParams, Backend, BatchNormGrads, BatchNormStats, Conv2dParams, Result, SgdParams,
    TensorLike,
};

// One `#[test]` per op: `op_suite::conv2d`, `op_suite::conv2d_backward_input`, ...
saddle_tensor::op_suite!(Cpu::new(), Tol::CPU);

// ---- hand-worked cases ------------------------------------------------------------------------

fn t(b: &Cpu, shape: &[usize], data: &[f32]) -> <Cpu as Backend>::Tensor {
    b.from_vec(shape, data.to_vec()).unwrap()
}

/// Asserts `got` has `shape` and is within 1e-6 (a few ulp of the values used) of `want`.
fn assert_close(b: &Cpu, got: &<Cpu as Backend>::Tensor, shape: &[usize], want: &[f32]) {
    assert_eq!(got.dims(), shape);
    let g = b.to_vec(got).unwrap();
    assert_eq!(g.len(), want.len());
    for (i, (x, y)) in g.iter().zip(want).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6,
            "element {i}: got {x}, want {y}\n got {g:?}\nwant {want:?}"
        );
    }
}

#[test]
fn conv_3x3_image_2x2_kernel_by_hand() {
    let b = Cpu::new();
    // x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], w = [[1, 0], [0, −1]]:
    // y[i, j] = x[i, j] − x[i+1, j+1] = −4 everywhere.
    let x = t(
        &b,
        &[1, 1, 3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let w = t(&b, &[1, 1, 2, 2], &[1.0, 0.0, 0.0, -1.0]);
    let p = Conv2dParams::new(1, 0);
    let y = b.conv2d(&x, &w, None, p).unwrap();
    assert_close(&b, &y, &[1, 1, 2, 2], &[-4.0, -4.0, -4.0, -4.0]);
    // With gy = 1: ∂L/∂x[p, q] = Σ_{i,j} w[p−i, q−j]; pixel (p, q) gets +1 from each window
    // whose top-left corner it is and −1 from each window whose bottom-right corner it is:
    //   [[1, 1, 0], [1, 1 − 1, −1], [0, −1, −1]].
    // A kernel used without flipping would give the transpose pattern [[−1, −1, 0], ...].
    let gy = t(&b, &[1, 1, 2, 2], &[1.0; 4]);
    let dx = b.conv2d_backward_input(&gy, &w, &[1, 1, 3, 3], p).unwrap();
    assert_close(
        &b,
        &dx,
        &[1, 1, 3, 3],
        &[1.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, -1.0],
    );
    // ∂L/∂w[u, v] = Σ_{i,j} x[i+u, j+v], the sum of the 2×2 block at offset (u, v):
    //   (0,0): 1+2+4+5 = 12, (0,1): 2+3+5+6 = 16, (1,0): 4+5+7+8 = 24, (1,1): 5+6+8+9 = 28.
    let dw = b.conv2d_backward_weight(&x, &gy, &[1, 1, 2, 2], p).unwrap();
    assert_close(&b, &dw, &[1, 1, 2, 2], &[12.0, 16.0, 24.0, 28.0]);
}

#[test]
fn conv_with_padding_and_stride_by_hand() {
    let b = Cpu::new();
    // The same image, a 3×3 kernel of ones, padding 1, stride 2, bias 0.5: windows centred on
    // the four corners, each summing the 2×2 block of the image it overlaps.
    let x = t(
        &b,
        &[1, 1, 3, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    );
    let w = t(&b, &[1, 1, 3, 3], &[1.0; 9]);
    let bias = t(&b, &[1], &[0.5]);
    let p = Conv2dParams::new(2, 1);
    let y = b.conv2d(&x, &w, Some(&bias), p).unwrap();
    assert_close(&b, &y, &[1, 1, 2, 2], &[12.5, 16.5, 24.5, 28.5]);
    // With gy = 1, ∂L/∂x counts the windows covering each pixel: corners 1, edges 2, centre 4.
    let gy = t(&b, &[1, 1, 2, 2], &[1.0; 4]);
    let dx = b.conv2d_backward_input(&gy, &w, &[1, 1, 3, 3], p).unwrap();
    assert_close(
        &b,
        &dx,
        &[1, 1, 3, 3],
        &[1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0],
    );
}

#[test]
fn max_pool_by_hand() {
    let b = Cpu::new();
    // [[1, 3], [2, 3]]: the maximum 3 is tied at (0, 1) and (1, 1); the gradient goes to the
    // first in row-major order, (0, 1).
    let x = t(&b, &[1, 1, 2, 2], &[1.0, 3.0, 2.0, 3.0]);
    assert_close(&b, &b.max_pool2d(&x, 2).unwrap(), &[1, 1, 1, 1], &[3.0]);
    let gy = t(&b, &[1, 1, 1, 1], &[5.0]);
    assert_close(
        &b,
        &b.max_pool2d_backward(&x, &gy, 2).unwrap(),
        &[1, 1, 2, 2],
        &[0.0, 5.0, 0.0, 0.0],
    );
    // 3×3 with window 2: the last row and column are dropped, so their 9s never win and get no
    // gradient; the only window is [[1, 2], [4, 3]], maximum 4 at (1, 0).
    let x = t(
        &b,
        &[1, 1, 3, 3],
        &[1.0, 2.0, 9.0, 4.0, 3.0, 9.0, 9.0, 9.0, 9.0],
    );
    assert_close(&b, &b.max_pool2d(&x, 2).unwrap(), &[1, 1, 1, 1], &[4.0]);
    let gy = t(&b, &[1, 1, 1, 1], &[1.0]);
    let dx = b.max_pool2d_backward(&x, &gy, 2).unwrap();
    assert_close(
        &b,
        &dx,
        &[1, 1, 3, 3],
        &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    );
}

#[test]
fn cross_entropy_of_zero_and_ln3_by_hand() {
    let b = Cpu::new();
    // z = [0, ln 3]: softmax = [1/(1+3), 3/(1+3)] = [1/4, 3/4].
    // Label 0: L = −ln(1/4) = ln 4, ∂L/∂z = p − e_0 = [−3/4, 3/4].
    // Label 1: L = −ln(3/4) = ln(4/3), ∂L/∂z = p − e_1 = [1/4, −1/4], scaled by gy = 2.
    let l3 = 3f32.ln();
    let z = t(&b, &[2, 2], &[0.0, l3, 0.0, l3]);
    let y = t(&b, &[2], &[0.0, 1.0]);
    let loss = b.cross_entropy(&z, &y).unwrap();
    assert_close(&b, &loss, &[2], &[4f32.ln(), (4.0f32 / 3.0).ln()]);
    let gy = t(&b, &[2], &[1.0, 2.0]);
    let dz = b.cross_entropy_backward(&z, &y, &gy).unwrap();
    assert_close(&b, &dz, &[2, 2], &[-0.75, 0.75, 0.5, -0.5]);
    // Huge logits do not overflow: z = [1000, 1000] gives ln 2 and [±1/2]. (Computed as
    // (1000 + ln 2) − 1000, the loss is only good to ulp(1000) = 6.1e-5 in f32.)
    let z = t(&b, &[1, 2], &[1000.0, 1000.0]);
    let y = t(&b, &[1], &[1.0]);
    let loss = b.to_vec(&b.cross_entropy(&z, &y).unwrap()).unwrap();
    assert!((loss[0] - 2f32.ln()).abs() <= 6.2e-5, "{loss:?}");
    let dz = b
        .cross_entropy_backward(&z, &y, &t(&b, &[1], &[1.0]))
        .unwrap();
    assert_close(&b, &dz, &[1, 2], &[0.5, -0.5]);
}

#[test]
fn cw_loss_by_hand() {
    let b = Cpu::new();
    // z = [1, 3, 2], κ = 0. Label 1: margin z_1 − max(z_0, z_2) = 3 − 2 = 1 > 0, L = −1;
    // ∂L/∂z_1 = −1, ∂L/∂z_2 = +1 (the runner-up), 0 elsewhere.
    // Label 0: margin 1 − 3 = −2 < 0, L = −relu(−2) = 0, flat: gradient 0.
    let z = t(&b, &[2, 3], &[1.0, 3.0, 2.0, 1.0, 3.0, 2.0]);
    let y = t(&b, &[2], &[1.0, 0.0]);
    assert_close(&b, &b.cw_loss(&z, &y, 0.0).unwrap(), &[2], &[-1.0, 0.0]);
    let gy = t(&b, &[2], &[1.0, 1.0]);
    let dz = b.cw_loss_backward(&z, &y, 0.0, &gy).unwrap();
    assert_close(&b, &dz, &[2, 3], &[0.0, -1.0, 1.0, 0.0, 0.0, 0.0]);
    // κ = 50 (the MNIST challenge): label 0 is active too, L = −(1 − 3 + 50) = −48.
    assert_close(&b, &b.cw_loss(&z, &y, 50.0).unwrap(), &[2], &[-51.0, -48.0]);
}

#[test]
fn relu_gradient_at_zero_is_zero() {
    let b = Cpu::new();
    // d relu/dx = 1 for x > 0, 0 for x < 0, and 0 at x = 0 by convention (x > 0 strictly).
    let x = t(&b, &[3], &[-1.0, 0.0, 2.0]);
    let gy = t(&b, &[3], &[7.0, 7.0, 7.0]);
    assert_close(
        &b,
        &b.relu_backward(&x, &gy).unwrap(),
        &[3],
        &[0.0, 0.0, 7.0],
    );
    // Leaky with slope 0.1: 0.1 on the non-positive side, x = 0 included.
    assert_close(
        &b,
        &b.leaky_relu_backward(&x, &gy, 0.1).unwrap(),
        &[3],
        &[0.7, 0.7, 7.0],
    );
}

#[test]
fn batch_norm_by_hand() {
    let b = Cpu::new();
    // One channel, x = [1, 3], eps = 0: mean 2, biased var 1, x̂ = [−1, 1].
    // With two samples x̂ is ∓1 whatever x is, so ∂L/∂x = 0; ∂L/∂γ = Σ gy·x̂, ∂L/∂β = Σ gy.
    let x = t(&b, &[2, 1], &[1.0, 3.0]);
    let (one, zero) = (t(&b, &[1], &[1.0]), t(&b, &[1], &[0.0]));
    let (y, stats) = b.batch_norm_train(&x, &one, &zero, 0.0).unwrap();
    assert_close(&b, &y, &[2, 1], &[-1.0, 1.0]);
    assert_close(&b, &stats.mean, &[1], &[2.0]);
    assert_close(&b, &stats.var, &[1], &[1.0]);
    let gy = t(&b, &[2, 1], &[1.0, 0.0]);
    let g = b
        .batch_norm_train_backward(&x, &one, &stats, &gy, 0.0)
        .unwrap();
    assert_close(&b, &g.x, &[2, 1], &[0.0, 0.0]);
    assert_close(&b, &g.gamma, &[1], &[-1.0]);
    assert_close(&b, &g.beta, &[1], &[1.0]);
    // x = [0, 1, 2]: mean 1, var 2/3, σ = √(2/3), x̂ = [−√1.5, 0, √1.5]. With gy = [1, 0, 0]:
    // ∂L/∂x = (γ/σ)(gy − mean(gy) − x̂·mean(gy·x̂)), mean(gy) = 1/3, mean(gy·x̂) = −√1.5/3, so
    // x̂·mean(gy·x̂) = [1/2, 0, −1/2] and ∂L/∂x = √1.5·[1 − 1/3 − 1/2, −1/3, −1/3 + 1/2]
    // = √1.5·[1/6, −1/3, 1/6] (summing to 0: shifting x changes nothing).
    let x = t(&b, &[3, 1], &[0.0, 1.0, 2.0]);
    let (_, stats) = b.batch_norm_train(&x, &one, &zero, 0.0).unwrap();
    let gy = t(&b, &[3, 1], &[1.0, 0.0, 0.0]);
    let g = b
        .batch_norm_train_backward(&x, &one, &stats, &gy, 0.0)
        .unwrap();
    let s = 1.5f32.sqrt();
    assert_close(&b, &g.x, &[3, 1], &[s / 6.0, -s / 3.0, s / 6.0]);
    assert_close(&b, &g.gamma, &[1], &[-s]);
}

#[test]
fn reductions_and_matmul_by_hand() {
    let b = Cpu::new();
    // [[1, 2, 3], [4, 5, 6]]: rows sum to [6, 15], columns to [5, 7, 9], all to 21.
    let x = t(&b, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_close(
        &b,
        &b.sum_axes(&x, &[1], false).unwrap(),
        &[2],
        &[6.0, 15.0],
    );
    assert_close(
        &b,
        &b.sum_axes(&x, &[0], true).unwrap(),
        &[1, 3],
        &[5.0, 7.0, 9.0],
    );
    assert_close(&b, &b.sum_all(&x).unwrap(), &[], &[21.0]);
    assert_close(
        &b,
        &b.mean_axes(&x, &[1], false).unwrap(),
        &[2],
        &[2.0, 5.0],
    );
    // xᵀ·x = [[17, 22, 27], [22, 29, 36], [27, 36, 45]]; x·xᵀ = [[14, 32], [32, 77]].
    let xtx = b.matmul(&x, &x, true, false).unwrap();
    assert_close(
        &b,
        &xtx,
        &[3, 3],
        &[17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0],
    );
    assert_close(
        &b,
        &b.matmul(&x, &x, false, true).unwrap(),
        &[2, 2],
        &[14.0, 32.0, 32.0, 77.0],
    );
}

#[test]
fn attack_steps_by_hand() {
    let b = Cpu::new();
    // x = x0 = [0.5, 0.95, 0.05, 0.5], g = [3, 1, −2, 0], α = 0.1, ε = 0.3:
    // x + α·sign(g) = [0.6, 1.05, −0.05, 0.5], inside the ε-ball, then clipped to [0, 1].
    let x0 = t(&b, &[1, 4], &[0.5, 0.95, 0.05, 0.5]);
    let g = t(&b, &[1, 4], &[3.0, 1.0, -2.0, 0.0]);
    let y = b.pgd_step_linf(&x0, &x0, &g, 0.1, 0.3).unwrap();
    assert_close(&b, &y, &[1, 4], &[0.6, 1.0, 0.0, 0.5]);
    // A step of 0.5 is cut back to the ε = 0.3 ball first: [0.8, 1, 0, 0.5].
    let y = b.pgd_step_linf(&x0, &x0, &g, 0.5, 0.3).unwrap();
    assert_close(&b, &y, &[1, 4], &[0.8, 1.0, 0.0, 0.5]);
    // L2: δ = (0.3, 0.4) has norm 0.5 > ε = 0.25, so it is halved to (0.15, 0.2).
    let x0 = t(&b, &[1, 2], &[0.5, 0.5]);
    let x = t(&b, &[1, 2], &[0.8, 0.9]);
    assert_close(
        &b,
        &b.project_l2(&x, &x0, 0.25).unwrap(),
        &[1, 2],
        &[0.65, 0.7],
    );
    // An L2 step along g = (3, 4) moves by α·(0.6, 0.8); α = 0.25 stays inside ε = 1.
    let g = t(&b, &[1, 2], &[3.0, 4.0]);
    assert_close(
        &b,
        &b.pgd_step_l2(&x0, &x0, &g, 0.25, 1.0).unwrap(),
        &[1, 2],
        &[0.65, 0.7],
    );
}

#[test]
fn per_example_ops_by_hand() {
    let b = Cpu::new();
    // mul_rows: row i times s[i].
    let x = t(&b, &[2, 1, 3], &[1.0, 2.0, 3.0, -1.0, 0.5, 4.0]);
    let s = t(&b, &[2], &[2.0, -0.5]);
    assert_close(
        &b,
        &b.mul_rows(&x, &s).unwrap(),
        &[2, 1, 3],
        &[2.0, 4.0, 6.0, 0.5, -0.25, -2.0],
    );
    // select_rows: row 0 from a (mask 1), row 1 from b (mask 0), row 2 from a (mask −3).
    let a = t(&b, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let c = t(&b, &[3, 2], &[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]);
    let m = t(&b, &[3], &[1.0, 0.0, -3.0]);
    assert_close(
        &b,
        &b.select_rows(&m, &a, &c).unwrap(),
        &[3, 2],
        &[1.0, 2.0, -3.0, -4.0, 5.0, 6.0],
    );
    // DLR, z = [1, 4, 2, 3], y = 1 (correct): −(4 − 3)/(4 − 2) = −0.5; y = 0: −(1 − 4)/2 = 1.5.
    // Targeted at t = 2 with y = 1: −(4 − 2)/(4 − (2 + 1)/2) = −0.8.
    let z = t(&b, &[2, 4], &[1.0, 4.0, 2.0, 3.0, 1.0, 4.0, 2.0, 3.0]);
    let y = t(&b, &[2], &[1.0, 0.0]);
    assert_close(&b, &b.dlr_loss(&z, &y, None).unwrap(), &[2], &[-0.5, 1.5]);
    let tg = t(&b, &[2], &[2.0, 2.0]);
    // Row 1, y = 0, t = 2: −(1 − 2)/2.5 = 0.4.
    assert_close(
        &b,
        &b.dlr_loss(&z, &y, Some(&tg)).unwrap(),
        &[2],
        &[-0.8, 0.4],
    );
    // Gradient of row 0 (y = 1, other = 3, π1 = 1, π3 = 2, u = 1, D = 2), gy = 2:
    // class 1: −1/D + u/D² = −0.25; class 3: +1/D = 0.5; class 2: −u/D² = −0.25; → ×2.
    let gy = t(&b, &[2], &[2.0, 0.0]);
    assert_close(
        &b,
        &b.dlr_loss_backward(&z, &y, None, &gy).unwrap(),
        &[2, 4],
        &[0.0, -0.5, -0.5, 1.0, 0.0, 0.0, 0.0, 0.0],
    );
    // Bad shapes and labels are errors, not panics.
    assert!(b.mul_rows(&x, &t(&b, &[3], &[1.0; 3])).is_err());
    assert!(b.select_rows(&m, &a, &x).is_err());
    assert!(b.dlr_loss(&z, &t(&b, &[2], &[1.0, 4.0]), None).is_err());
    assert!(b
        .dlr_loss(&t(&b, &[2, 2], &[0.0; 4]), &t(&b, &[2], &[0.0; 2]), None)
        .is_err());
}

#[test]
fn optimiser_steps_by_hand() {
    let b = Cpu::new();
    // Adam's first step from m = v = 0: m = 0.1·g, v = 0.001·g², bias correction undoes both
    // factors, so the update is lr·g/(|g| + eps) = lr·sign(g) (to 1e-8).
    let mut p = t(&b, &[2], &[1.0, 1.0]);
    let g = t(&b, &[2], &[0.5, -2.0]);
    let (mut m, mut v) = (b.zeros(&[2]).unwrap(), b.zeros(&[2]).unwrap());
    let h = AdamParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
    };
    b.adam_update(&mut p, &g, &mut m, &mut v, h).unwrap();
    assert_close(&b, &p, &[2], &[0.9, 1.1]);
    assert_close(&b, &m, &[2], &[0.05, -0.2]);
    // SGD, p = 1, g = 0.5, buf = 0.2, lr 0.1, momentum 0.9, wd 0.1:
    // g' = 0.5 + 0.1·1 = 0.6, buf = 0.9·0.2 + 0.6 = 0.78, p = 1 − 0.1·0.78 = 0.922.
    let mut p = t(&b, &[1], &[1.0]);
    let mut buf = t(&b, &[1], &[0.2]);
    let h = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.1,
    };
    b.sgd_update(&mut p, &t(&b, &[1], &[0.5]), &mut buf, h)
        .unwrap();
    assert_close(&b, &p, &[1], &[0.922]);
    assert_close(&b, &buf, &[1], &[0.78]);
}

// ---- the suite catches wrong backward ops -----------------------------------------------------

/// A mistake injected into an otherwise correct backend.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    /// None: every op delegates to the CPU, and the trait's default bodies (mean, L2 steps, ...)
    /// are used where the CPU overrides them.
    None,
    /// `conv2d_backward_input` uses every kernel rotated by 180°, the classic flip mistake of a
    /// transposed convolution.
    ConvInputUnflipped,
    /// `max_pool2d_backward` sends a tied window's gradient to the last maximum.
    MaxPoolLastMax,
    /// `cross_entropy_backward` ignores `gy` (as if it were all ones).
    CrossEntropyIgnoresGy,
    /// `batch_norm_train_backward` returns `Σ gy·x` for gamma instead of `Σ gy·x̂`.
    BatchNormGammaUsesX,
    /// `leaky_relu_backward` treats `x = 0` as positive.
    LeakyKinkOnWrongSide,
    /// `pgd_step_linf` forgets the final clip to `[0, 1]`.
    LinfNoBoxClip,
    /// `adam_update` skips bias correction.
    AdamNoBiasCorrection,
    /// `dlr_loss_backward` ranks tied logits with the higher index first.
    DlrTiesToHigherIndex,
    /// `mul_rows` scales every row by the first example's scalar.
    MulRowsFirstScale,
    /// `restart_merge` lets a tie (same success, same objective) go to the later restart.
    RestartMergeTiesTakeLater,
}

#[derive(Clone, Debug)]
struct Buggy {
    cpu: Cpu,
    bug: Bug,
}

type T = <Cpu as Backend>::Tensor;

impl Buggy {
    fn new(bug: Bug) -> Self {
        Buggy {
            cpu: Cpu::new(),
            bug,
        }
    }
    fn host(&self, x: &T) -> Vec<f32> {
        self.cpu.to_vec(x).unwrap()
    }
}

impl Backend for Buggy {
    type Tensor = T;
    fn name(&self) -> String {
        format!("cpu with bug {:?}", self.bug)
    }
    fn from_vec(&self, shape: &[usize], data: Vec<f32>) -> Result<T> {
        self.cpu.from_vec(shape, data)
    }
    fn to_vec(&self, x: &T) -> Result<Vec<f32>> {
        self.cpu.to_vec(x)
    }
    fn full(&self, shape: &[usize], value: f32) -> Result<T> {
        self.cpu.full(shape, value)
    }
    fn reshape(&self, x: &T, shape: &[usize]) -> Result<T> {
        self.cpu.reshape(x, shape)
    }
    fn add(&self, a: &T, b: &T) -> Result<T> {
        self.cpu.add(a, b)
    }
    fn sub(&self, a: &T, b: &T) -> Result<T> {
        self.cpu.sub(a, b)
    }
    fn mul(&self, a: &T, b: &T) -> Result<T> {
        self.cpu.mul(a, b)
    }
    fn div(&self, a: &T, b: &T) -> Result<T> {
        self.cpu.div(a, b)
    }
    fn minimum(&self, a: &T, b: &T) -> Result<T> {
        self.cpu.minimum(a, b)
    }
    fn maximum(&self, a: &T, b: &T) -> Result<T> {
        self.cpu.maximum(a, b)
    }
    fn affine(&self, x: &T, s: f32, t: f32) -> Result<T> {
        self.cpu.affine(x, s, t)
    }
    fn sqrt(&self, x: &T) -> Result<T> {
        self.cpu.sqrt(x)
    }
    fn sign(&self, x: &T) -> Result<T> {
        self.cpu.sign(x)
    }
    fn clamp(&self, x: &T, lo: f32, hi: f32) -> Result<T> {
        self.cpu.clamp(x, lo, hi)
    }
    fn relu(&self, x: &T) -> Result<T> {
        self.cpu.relu(x)
    }
    fn relu_backward(&self, x: &T, gy: &T) -> Result<T> {
        self.cpu.relu_backward(x, gy)
    }
    fn leaky_relu(&self, x: &T, slope: f32) -> Result<T> {
        self.cpu.leaky_relu(x, slope)
    }
    fn leaky_relu_backward(&self, x: &T, gy: &T, slope: f32) -> Result<T> {
        let good = self.cpu.leaky_relu_backward(x, gy, slope)?;
        if self.bug != Bug::LeakyKinkOnWrongSide {
            return Ok(good);
        }
        let (xs, gs, mut out) = (self.host(x), self.host(gy), self.host(&good));
        for i in 0..out.len() {
            if xs[i] == 0.0 {
                out[i] = gs[i];
            }
        }
        self.cpu.from_vec(x.dims(), out)
    }
    fn sum_axes(&self, x: &T, axes: &[usize], keep_dims: bool) -> Result<T> {
        self.cpu.sum_axes(x, axes, keep_dims)
    }
    fn matmul(&self, a: &T, b: &T, ta: bool, tb: bool) -> Result<T> {
        self.cpu.matmul(a, b, ta, tb)
    }
    fn conv2d(&self, x: &T, w: &T, bias: Option<&T>, p: Conv2dParams) -> Result<T> {
        self.cpu.conv2d(x, w, bias, p)
    }
    fn conv2d_backward_input(
        &self,
        gy: &T,
        w: &T,
        input_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<T> {
        if self.bug != Bug::ConvInputUnflipped || w.dims().len() != 4 {
            return self.cpu.conv2d_backward_input(gy, w, input_shape, p);
        }
        // Flip every kernel spatially: w'[o, c, u, v] = w[o, c, kh−1−u, kw−1−v].
        let d = w.dims().to_vec();
        let (kh, kw) = (d[2], d[3]);
        let src = self.host(w);
        let mut flipped = src.clone();
        for oc in 0..d[0] * d[1] {
            for u in 0..kh {
                for v in 0..kw {
                    flipped[(oc * kh + u) * kw + v] = src[(oc * kh + kh - 1 - u) * kw + kw - 1 - v];
                }
            }
        }
        let wf = self.cpu.from_vec(&d, flipped)?;
        self.cpu.conv2d_backward_input(gy, &wf, input_shape, p)
    }
    fn conv2d_backward_weight(
        &self,
        x: &T,
        gy: &T,
        weight_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<T> {
        self.cpu.conv2d_backward_weight(x, gy, weight_shape, p)
    }
    fn max_pool2d(&self, x: &T, size: usize) -> Result<T> {
        self.cpu.max_pool2d(x, size)
    }
    fn max_pool2d_backward(&self, x: &T, gy: &T, size: usize) -> Result<T> {
        let good = self.cpu.max_pool2d_backward(x, gy, size)?;
        if self.bug != Bug::MaxPoolLastMax {
            return Ok(good);
        }
        // Same windows, but `>=` picks the last maximum.
        let d = x.dims().to_vec();
        let (h, w) = (d[2], d[3]);
        let (oh, ow) = (h / size, w / size);
        let (xs, gs) = (self.host(x), self.host(gy));
        let mut out = vec![0.0; xs.len()];
        for plane in 0..d[0] * d[1] {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = usize::MAX;
                    for u in 0..size {
                        for v in 0..size {
                            let k = plane * h * w + (i * size + u) * w + j * size + v;
                            if best == usize::MAX || xs[k] >= xs[best] {
                                best = k;
                            }
                        }
                    }
                    out[best] += gs[(plane * oh + i) * ow + j];
                }
            }
        }
        self.cpu.from_vec(&d, out)
    }
    fn cross_entropy(&self, logits: &T, labels: &T) -> Result<T> {
        self.cpu.cross_entropy(logits, labels)
    }
    fn cross_entropy_backward(&self, logits: &T, labels: &T, gy: &T) -> Result<T> {
        if self.bug == Bug::CrossEntropyIgnoresGy {
            let ones = self.cpu.full(gy.dims(), 1.0)?;
            return self.cpu.cross_entropy_backward(logits, labels, &ones);
        }
        self.cpu.cross_entropy_backward(logits, labels, gy)
    }
    fn cw_loss(&self, logits: &T, labels: &T, kappa: f32) -> Result<T> {
        self.cpu.cw_loss(logits, labels, kappa)
    }
    fn cw_loss_backward(&self, logits: &T, labels: &T, kappa: f32, gy: &T) -> Result<T> {
        self.cpu.cw_loss_backward(logits, labels, kappa, gy)
    }
    fn dlr_loss_backward(&self, logits: &T, labels: &T, targets: Option<&T>, gy: &T) -> Result<T> {
        if self.bug != Bug::DlrTiesToHigherIndex {
            return self.cpu.dlr_loss_backward(logits, labels, targets, gy);
        }
        // The classes in reverse order: ties now break towards the higher original index.
        let k = logits.dims()[1];
        let flip = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|&c| (k - 1) as f32 - c).collect() };
        let rev = |v: Vec<f32>| -> Vec<f32> {
            v.chunks(k).flat_map(|r| r.iter().rev().copied()).collect()
        };
        let z = self.cpu.from_vec(logits.dims(), rev(self.host(logits)))?;
        let y = self.cpu.from_vec(labels.dims(), flip(self.host(labels)))?;
        let t = match targets {
            Some(t) => Some(self.cpu.from_vec(t.dims(), flip(self.host(t)))?),
            None => None,
        };
        let g = self.cpu.dlr_loss_backward(&z, &y, t.as_ref(), gy)?;
        self.cpu.from_vec(logits.dims(), rev(self.host(&g)))
    }
    fn mul_rows(&self, x: &T, s: &T) -> Result<T> {
        if self.bug != Bug::MulRowsFirstScale {
            return self.cpu.mul_rows(x, s);
        }
        let first = self.host(s)[0];
        let n = s.dims()[0];
        self.cpu.mul_rows(x, &self.cpu.full(&[n], first)?)
    }
    fn restart_merge(
        &self,
        best: Option<&T>,
        logits: &T,
        loss: &T,
        labels: &T,
        targeted: bool,
    ) -> Result<(T, T)> {
        // Without the bug, the trait's default body (on the host), so that the suite checks it.
        let good = restart_merge_default(self, best, logits, loss, labels, targeted)?;
        let (Some(best), Bug::RestartMergeTiesTakeLater) = (best, self.bug) else {
            return Ok(good);
        };
        let (_, cand) = self
            .cpu
            .restart_merge(None, logits, loss, labels, targeted)?;
        let (old, cand) = (self.host(best), self.host(&cand));
        let (mut take, mut out) = (self.host(&good.0), self.host(&good.1));
        let n = take.len();
        for i in 0..n {
            if old[i] == cand[i] && old[2 * n + i] == cand[2 * n + i] {
                take[i] = 1.0;
                for r in 0..3 {
                    out[r * n + i] = cand[r * n + i];
                }
            }
        }
        Ok((
            self.cpu.from_vec(&[n], take)?,
            self.cpu.from_vec(&[3, n], out)?,
        ))
    }
    fn batch_norm_train(
        &self,
        x: &T,
        gamma: &T,
        beta: &T,
        eps: f32,
    ) -> Result<(T, BatchNormStats<T>)> {
        self.cpu.batch_norm_train(x, gamma, beta, eps)
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
        self.cpu.batch_norm_eval(x, gamma, beta, mean, var, eps)
    }
    fn batch_norm_train_backward(
        &self,
        x: &T,
        gamma: &T,
        stats: &BatchNormStats<T>,
        gy: &T,
        eps: f32,
    ) -> Result<BatchNormGrads<T>> {
        let good = self
            .cpu
            .batch_norm_train_backward(x, gamma, stats, gy, eps)?;
        if self.bug != Bug::BatchNormGammaUsesX {
            return Ok(good);
        }
        // Σ gy·x per channel (axis 1), not Σ gy·x̂.
        let d = x.dims().to_vec();
        let inner: usize = d[2..].iter().product();
        let (xs, gs) = (self.host(x), self.host(gy));
        let mut dg = vec![0.0; d[1]];
        for i in 0..xs.len() {
            dg[(i / inner) % d[1]] += gs[i] * xs[i];
        }
        Ok(BatchNormGrads {
            gamma: self.cpu.from_vec(&[d[1]], dg)?,
            ..good
        })
    }
    fn pgd_step_linf(&self, x: &T, x0: &T, g: &T, alpha: f32, eps: f32) -> Result<T> {
        if self.bug != Bug::LinfNoBoxClip {
            return self.cpu.pgd_step_linf(x, x0, g, alpha, eps);
        }
        let moved = self.add(x, &self.affine(&self.sign(g)?, alpha, 0.0)?)?;
        let lo = self.affine(x0, 1.0, -eps)?;
        let hi = self.affine(x0, 1.0, eps)?;
        self.minimum(&self.maximum(&moved, &lo)?, &hi)
    }
    fn adam_update(
        &self,
        param: &mut T,
        grad: &T,
        m: &mut T,
        v: &mut T,
        h: AdamParams,
    ) -> Result<()> {
        if self.bug != Bug::AdamNoBiasCorrection {
            return self.cpu.adam_update(param, grad, m, v, h);
        }
        // At step 10⁶, β^t ≈ 0: no bias correction.
        self.cpu.adam_update(
            param,
            grad,
            m,
            v,
            AdamParams {
                step: 1_000_000,
                ..h
            },
        )
    }
}

/// Asserts the check fails on the buggy backend and passes on the correct one.
fn assert_caught(bug: Bug, check: fn(&Buggy, Tol) -> testing::CheckResult) {
    let good = check(&Buggy::new(Bug::None), Tol::CPU);
    assert!(good.is_ok(), "the check fails without the bug: {good:?}");
    let err = check(&Buggy::new(bug), Tol::CPU).expect_err("the injected bug was not caught");
    eprintln!("{bug:?} caught: {err}");
}

#[test]
fn catches_an_unflipped_conv_input_gradient() {
    assert_caught(
        Bug::ConvInputUnflipped,
        testing::check_conv2d_backward_input,
    );
    // The forward and the weight gradient are untouched and still pass.
    testing::check_conv2d(&Buggy::new(Bug::ConvInputUnflipped), Tol::CPU).unwrap();
    testing::check_conv2d_backward_weight(&Buggy::new(Bug::ConvInputUnflipped), Tol::CPU).unwrap();
}

#[test]
fn catches_max_pool_gradient_to_the_last_maximum() {
    // Random inputs have no ties, so only the suite's hand-made tie case can see this.
    assert_caught(Bug::MaxPoolLastMax, testing::check_max_pool2d_backward);
}

#[test]
fn catches_dlr_gradient_breaking_ties_the_other_way() {
    // Random inputs have no ties, so only the suite's hand-made tie cases can see this.
    assert_caught(Bug::DlrTiesToHigherIndex, testing::check_dlr_loss_backward);
}

#[test]
fn catches_mul_rows_with_one_scale_for_all_rows() {
    assert_caught(Bug::MulRowsFirstScale, testing::check_mul_rows);
}

#[test]
fn catches_restart_merge_ties_going_to_the_later_restart() {
    // The random cases tie often (losses from a few values) and the hand-made case has a tie.
    assert_caught(Bug::RestartMergeTiesTakeLater, testing::check_restart_merge);
}

#[test]
fn catches_cross_entropy_gradient_ignoring_gy() {
    assert_caught(
        Bug::CrossEntropyIgnoresGy,
        testing::check_cross_entropy_backward,
    );
}

#[test]
fn catches_batch_norm_gamma_gradient_using_x() {
    assert_caught(
        Bug::BatchNormGammaUsesX,
        testing::check_batch_norm_train_backward,
    );
}

#[test]
fn catches_leaky_relu_gradient_with_the_kink_on_the_wrong_side() {
    assert_caught(
        Bug::LeakyKinkOnWrongSide,
        testing::check_leaky_relu_backward,
    );
}

#[test]
fn catches_linf_step_without_box_clip() {
    assert_caught(Bug::LinfNoBoxClip, testing::check_pgd_step_linf);
}

#[test]
fn catches_adam_without_bias_correction() {
    assert_caught(Bug::AdamNoBiasCorrection, testing::check_adam_update);
}

#[test]
fn check_all_names_every_failing_op() {
    let err = testing::check_all(&Buggy::new(Bug::MaxPoolLastMax), Tol::CPU).unwrap_err();
    assert!(err.starts_with("2 of "), "{err}");
    assert!(err.contains("- max_pool2d_backward:"), "{err}");
    // The default relu_max_pool2d_backward composes the buggy max_pool2d_backward.
    assert!(err.contains("- relu_max_pool2d_backward:"), "{err}");
}

#[test]
fn trait_default_bodies_pass_the_suite() {
    // `Buggy` with no bug uses the trait's default bodies for mean_axes, sum_all, sum_to_shape,
    // l2_norms, project_linf, pgd_step_l2, project_l2, sgd_update and restart_merge.
    testing::check_all(&Buggy::new(Bug::None), Tol::CPU).unwrap();
}

#[test]
fn random_tensor_is_seeded() {
    let b = Cpu::new();
    let x = testing::random_tensor(&b, &[3, 7], -1.0, 2.0, 42).unwrap();
    let y = testing::random_tensor(&b, &[3, 7], -1.0, 2.0, 42).unwrap();
    let (xv, yv) = (b.to_vec(&x).unwrap(), b.to_vec(&y).unwrap());
    assert_eq!(xv, yv);
    assert!(xv.iter().all(|v| (-1.0..=2.0).contains(v)));
    assert!(testing::random_tensor(&b, &[usize::MAX, 2], 0.0, 1.0, 0).is_err());
}
