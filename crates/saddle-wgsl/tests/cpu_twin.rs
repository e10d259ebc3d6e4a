//! The wgpu backend against its CPU twin (`saddle_tensor::cpu::Cpu`) on seeded random inputs,
//! at the paths the shared op suite's small sizes may not reach: several GEMM tiles and split-K,
//! the workgroup and the thread reductions, 2-D dispatch beyond 65535 workgroups, in-place
//! optimiser updates on shared buffers, labels checked on the device, device choice.
//!
//! Tolerance, element-wise: `|gpu − cpu| ≤ 1e-4·|cpu| + 1e-5·max(1, max|cpu|)`. Both backends
//! compute in f32 and differ only in summation order and the rounding of `exp`/`log`/`sqrt`;
//! the absolute part, scaled by the tensor's largest element, covers sums that cancel. A wrong
//! index or a missing term is off by the size of a term, thousands of times more.

mod common;

use saddle_tensor::cpu::{Cpu, CpuTensor};
use saddle_tensor::testing::random_vec;
use saddle_tensor::{AdamParams, Backend, Conv2dParams, SgdParams, TensorError, TensorLike};
use saddle_wgsl::{wgpu, DeviceChoice, Wgpu, WgpuTensor};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let allowed = RTOL * w.abs() + ATOL * scale;
        let err = if w.is_nan() && g.is_nan() {
            0.0
        } else {
            (g - w).abs()
        };
        let over = if err.is_nan() {
            f32::INFINITY
        } else {
            err - allowed
        };
        if over > 0.0 && worst.is_none_or(|(_, o)| over > o) {
            worst = Some((i, over));
        }
    }
    if let Some((i, over)) = worst {
        panic!(
            "{what}: element {i} is {} on the GPU and {} on the CPU (over the tolerance by {over:e})",
            got[i], want[i]
        );
    }
}

type GpuBinary = fn(&Wgpu, &WgpuTensor, &WgpuTensor) -> saddle_tensor::Result<WgpuTensor>;
type CpuBinary = fn(&Cpu, &CpuTensor, &CpuTensor) -> saddle_tensor::Result<CpuTensor>;

/// The same seeded tensor on both backends.
struct Pair {
    g: WgpuTensor,
    c: CpuTensor,
}

fn pair(gb: &Wgpu, shape: &[usize], seed: u64) -> Pair {
    let n: usize = shape.iter().product();
    let data = random_vec(n, -1.0, 1.0, seed);
    Pair {
        g: gb.from_vec(shape, data.clone()).unwrap(),
        c: Cpu.from_vec(shape, data).unwrap(),
    }
}

fn same(gb: &Wgpu, what: &str, g: &WgpuTensor, c: &CpuTensor) {
    assert_eq!(g.dims(), c.dims(), "{what}: shapes differ");
    assert_close(what, &gb.to_vec(g).unwrap(), c.as_slice());
}

#[test]
fn matmul_over_several_tiles_with_and_without_split_k() {
    let Some(gb) = common::backend() else { return };
    // (m, k, n): split-K (few tiles, k ≥ 1024), many tiles, a ragged edge, a single element.
    for (i, &(m, k, n)) in [(67, 1100, 45), (130, 70, 200), (16, 3136, 100), (1, 1, 1)]
        .iter()
        .enumerate()
    {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let sa = if ta { [k, m] } else { [m, k] };
            let sb = if tb { [n, k] } else { [k, n] };
            let a = pair(&gb, &sa, 10 + i as u64);
            let b = pair(&gb, &sb, 20 + i as u64);
            let g = gb.matmul(&a.g, &b.g, ta, tb).unwrap();
            let c = Cpu.matmul(&a.c, &b.c, ta, tb).unwrap();
            same(&gb, &format!("matmul {m}×{k}×{n} ta={ta} tb={tb}"), &g, &c);
        }
    }
}

#[test]
fn convolution_and_both_gradients_match_on_mnist_and_odd_shapes() {
    let Some(gb) = common::backend() else { return };
    // (x shape, weight shape, stride, padding)
    let cases: [([usize; 4], [usize; 4], usize, usize); 5] = [
        ([3, 1, 28, 28], [32, 1, 5, 5], 1, 2), // MNIST conv1: direct input gradient
        ([2, 32, 14, 14], [64, 32, 5, 5], 1, 2), // MNIST conv2: GEMM input gradient
        ([3, 2, 28, 28], [5, 2, 3, 3], 1, 1),  // long inner index: split-K weight gradient
        ([2, 9, 11, 13], [5, 9, 3, 3], 2, 1),  // stride 2, GEMM input gradient
        ([1, 3, 10, 7], [4, 3, 4, 2], 3, 0),   // stride 3, no padding, rectangular kernel
    ];
    for (i, (xs, ws, s, pad)) in cases.into_iter().enumerate() {
        let p = Conv2dParams::new(s, pad);
        let x = pair(&gb, &xs, 100 + i as u64);
        let w = pair(&gb, &ws, 200 + i as u64);
        let bias = pair(&gb, &[ws[0]], 300 + i as u64);
        let yg = gb.conv2d(&x.g, &w.g, Some(&bias.g), p).unwrap();
        let yc = Cpu.conv2d(&x.c, &w.c, Some(&bias.c), p).unwrap();
        same(&gb, &format!("conv2d case {i}"), &yg, &yc);
        let gy = pair(&gb, yc.dims(), 400 + i as u64);
        let gxg = gb.conv2d_backward_input(&gy.g, &w.g, &xs, p).unwrap();
        let gxc = Cpu.conv2d_backward_input(&gy.c, &w.c, &xs, p).unwrap();
        same(&gb, &format!("conv2d_backward_input case {i}"), &gxg, &gxc);
        let gwg = gb.conv2d_backward_weight(&x.g, &gy.g, &ws, p).unwrap();
        let gwc = Cpu.conv2d_backward_weight(&x.c, &gy.c, &ws, p).unwrap();
        same(&gb, &format!("conv2d_backward_weight case {i}"), &gwg, &gwc);
    }
}

#[test]
fn long_and_short_reductions_match() {
    let Some(gb) = common::backend() else { return };
    let cases: [(&[usize], &[usize], bool); 6] = [
        (&[3, 32, 28, 28], &[0, 2, 3], false), // a conv bias gradient: a workgroup per output
        (&[50, 1024], &[0], false),            // a linear bias gradient: a thread per output
        (&[5, 6, 7], &[1], true),
        (&[2, 3, 4, 5], &[0, 3], false),
        (&[7, 1000], &[0, 1], false), // everything
        (&[4, 5], &[], false),
    ];
    for (i, (shape, axes, keep)) in cases.into_iter().enumerate() {
        let x = pair(&gb, shape, 500 + i as u64);
        let g = gb.sum_axes(&x.g, axes, keep).unwrap();
        let c = Cpu.sum_axes(&x.c, axes, keep).unwrap();
        same(&gb, &format!("sum_axes {shape:?} over {axes:?}"), &g, &c);
    }
    let none = gb.from_vec(&[0, 3], vec![]).unwrap();
    assert!(gb.to_vec(&none).unwrap().is_empty());
    let empty = gb.zeros(&[4, 0, 3]).unwrap();
    let s = gb.sum_axes(&empty, &[1], false).unwrap();
    assert_eq!(gb.to_vec(&s).unwrap(), vec![0.0; 12]);
}

#[test]
fn broadcasting_element_wise_ops_match() {
    let Some(gb) = common::backend() else { return };
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[4, 1, 5], &[3, 1]),
        (&[2, 3, 4, 5], &[3, 1, 5]),
        (&[50, 1024], &[1024]),
        (&[], &[7, 2]),
        (&[6, 1], &[1, 9]),
    ];
    for (i, (sa, sb)) in shapes.into_iter().enumerate() {
        let a = pair(&gb, sa, 600 + i as u64);
        let b = pair(&gb, sb, 700 + i as u64);
        let ops: [(&str, GpuBinary, CpuBinary); 6] = [
            ("add", Wgpu::add, Cpu::add),
            ("sub", Wgpu::sub, Cpu::sub),
            ("mul", Wgpu::mul, Cpu::mul),
            ("div", Wgpu::div, Cpu::div),
            ("minimum", Wgpu::minimum, Cpu::minimum),
            ("maximum", Wgpu::maximum, Cpu::maximum),
        ];
        for (name, fg, fc) in ops {
            let g = fg(&gb, &a.g, &b.g).unwrap();
            let c = fc(&Cpu, &a.c, &b.c).unwrap();
            same(&gb, &format!("{name} {sa:?} {sb:?}"), &g, &c);
        }
    }
}

#[test]
fn pooling_losses_and_batch_norm_match() {
    let Some(gb) = common::backend() else { return };
    for (i, (shape, size)) in [([2, 3, 7, 9], 2), ([1, 2, 9, 9], 3), ([3, 32, 28, 28], 2)]
        .into_iter()
        .enumerate()
    {
        let x = pair(&gb, &shape, 800 + i as u64);
        let yg = gb.max_pool2d(&x.g, size).unwrap();
        let yc = Cpu.max_pool2d(&x.c, size).unwrap();
        same(&gb, &format!("max_pool2d {shape:?}/{size}"), &yg, &yc);
        let gy = pair(&gb, yc.dims(), 900 + i as u64);
        let gg = gb.max_pool2d_backward(&x.g, &gy.g, size).unwrap();
        let gc = Cpu.max_pool2d_backward(&x.c, &gy.c, size).unwrap();
        same(
            &gb,
            &format!("max_pool2d_backward {shape:?}/{size}"),
            &gg,
            &gc,
        );
    }

    let z = pair(&gb, &[37, 10], 1000);
    let labels: Vec<f32> = (0..37).map(|i| ((i * 7) % 10) as f32).collect();
    let yg = gb.from_vec(&[37], labels.clone()).unwrap();
    let yc = Cpu.from_vec(&[37], labels).unwrap();
    let w = pair(&gb, &[37], 1001);
    same(
        &gb,
        "cross_entropy",
        &gb.cross_entropy(&z.g, &yg).unwrap(),
        &Cpu.cross_entropy(&z.c, &yc).unwrap(),
    );
    same(
        &gb,
        "cross_entropy_backward",
        &gb.cross_entropy_backward(&z.g, &yg, &w.g).unwrap(),
        &Cpu.cross_entropy_backward(&z.c, &yc, &w.c).unwrap(),
    );
    // κ = 0.5 so that some margins are active and some are not.
    same(
        &gb,
        "cw_loss",
        &gb.cw_loss(&z.g, &yg, 0.5).unwrap(),
        &Cpu.cw_loss(&z.c, &yc, 0.5).unwrap(),
    );
    same(
        &gb,
        "cw_loss_backward",
        &gb.cw_loss_backward(&z.g, &yg, 0.5, &w.g).unwrap(),
        &Cpu.cw_loss_backward(&z.c, &yc, 0.5, &w.c).unwrap(),
    );

    for (i, shape) in [vec![5, 7, 3, 3], vec![9, 6], vec![4, 3, 17, 19]]
        .into_iter()
        .enumerate()
    {
        let c = shape[1];
        let x = pair(&gb, &shape, 1100 + i as u64);
        let gamma = pair(&gb, &[c], 1200 + i as u64);
        let beta = pair(&gb, &[c], 1300 + i as u64);
        let (yg, sg) = gb.batch_norm_train(&x.g, &gamma.g, &beta.g, 1e-5).unwrap();
        let (yc, sc) = Cpu.batch_norm_train(&x.c, &gamma.c, &beta.c, 1e-5).unwrap();
        same(&gb, "batch_norm_train y", &yg, &yc);
        same(&gb, "batch_norm_train mean", &sg.mean, &sc.mean);
        same(&gb, "batch_norm_train var", &sg.var, &sc.var);
        let gy = pair(&gb, &shape, 1400 + i as u64);
        let bg = gb
            .batch_norm_train_backward(&x.g, &gamma.g, &sg, &gy.g, 1e-5)
            .unwrap();
        let bc = Cpu
            .batch_norm_train_backward(&x.c, &gamma.c, &sc, &gy.c, 1e-5)
            .unwrap();
        same(&gb, "batch_norm_train_backward x", &bg.x, &bc.x);
        same(&gb, "batch_norm_train_backward gamma", &bg.gamma, &bc.gamma);
        same(&gb, "batch_norm_train_backward beta", &bg.beta, &bc.beta);
        let eg = gb
            .batch_norm_eval(&x.g, &gamma.g, &beta.g, &sg.mean, &sg.var, 1e-5)
            .unwrap();
        let ec = Cpu
            .batch_norm_eval(&x.c, &gamma.c, &beta.c, &sc.mean, &sc.var, 1e-5)
            .unwrap();
        same(&gb, "batch_norm_eval", &eg, &ec);
    }
}

#[test]
fn fused_pgd_steps_and_projections_match() {
    let Some(gb) = common::backend() else { return };
    let shape = [6, 1, 28, 28];
    let n: usize = shape.iter().product();
    let x0d: Vec<f32> = random_vec(n, 0.0, 1.0, 1500);
    let x0g = gb.from_vec(&shape, x0d.clone()).unwrap();
    let x0c = Cpu.from_vec(&shape, x0d).unwrap();
    let x = pair(&gb, &shape, 1501);
    let g = pair(&gb, &shape, 1502);
    for (alpha, eps) in [(0.01, 0.3), (0.5, 0.1), (2.0, 3.0)] {
        let ctx = format!("α {alpha} ε {eps}");
        same(
            &gb,
            &format!("pgd_step_linf {ctx}"),
            &gb.pgd_step_linf(&x.g, &x0g, &g.g, alpha, eps).unwrap(),
            &Cpu.pgd_step_linf(&x.c, &x0c, &g.c, alpha, eps).unwrap(),
        );
        same(
            &gb,
            &format!("project_linf {ctx}"),
            &gb.project_linf(&x.g, &x0g, eps).unwrap(),
            &Cpu.project_linf(&x.c, &x0c, eps).unwrap(),
        );
        same(
            &gb,
            &format!("pgd_step_l2 {ctx}"),
            &gb.pgd_step_l2(&x.g, &x0g, &g.g, alpha, eps).unwrap(),
            &Cpu.pgd_step_l2(&x.c, &x0c, &g.c, alpha, eps).unwrap(),
        );
        same(
            &gb,
            &format!("project_l2 {ctx}"),
            &gb.project_l2(&x.g, &x0g, eps).unwrap(),
            &Cpu.project_l2(&x.c, &x0c, eps).unwrap(),
        );
    }
    // Gradients whose f32 squares overflow (1e30) or underflow (1e-30), and a zero gradient,
    // one per example: the step is still a full step of α (none for the zero gradient).
    let scales = [1e30f32, 1e-30, 0.0, 1.0, 3e-20, 7e25];
    let gd: Vec<f32> = random_vec(n, -1.0, 1.0, 1503)
        .chunks(784)
        .zip(scales)
        .flat_map(|(row, s)| row.iter().map(move |v| v * s))
        .collect();
    let gg = gb.from_vec(&shape, gd.clone()).unwrap();
    let gc = Cpu.from_vec(&shape, gd).unwrap();
    same(
        &gb,
        "pgd_step_l2 with huge and tiny gradients",
        &gb.pgd_step_l2(&x.g, &x0g, &gg, 0.5, 2.0).unwrap(),
        &Cpu.pgd_step_l2(&x.c, &x0c, &gc, 0.5, 2.0).unwrap(),
    );
}

#[test]
fn optimiser_updates_write_in_place_without_touching_clones() {
    let Some(gb) = common::backend() else { return };
    let shape = [37, 11];
    let mut pg = pair(&gb, &shape, 1600);
    let zeros_g = gb.zeros(&shape).unwrap();
    let zeros_c = Cpu.zeros(&shape).unwrap();
    // m and v start as clones of one zero tensor; the parameter has an outside clone.
    let (mut mg, mut vg) = (zeros_g.clone(), zeros_g.clone());
    let (mut mc, mut vc) = (zeros_c.clone(), zeros_c.clone());
    let before = gb.to_vec(&pg.g).unwrap();
    let outside = pg.g.clone();
    for step in 1..=3u64 {
        let grad = pair(&gb, &shape, 1700 + step);
        let h = AdamParams {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
        };
        gb.adam_update(&mut pg.g, &grad.g, &mut mg, &mut vg, h)
            .unwrap();
        Cpu.adam_update(&mut pg.c, &grad.c, &mut mc, &mut vc, h)
            .unwrap();
    }
    same(&gb, "adam param", &pg.g, &pg.c);
    same(&gb, "adam m", &mg, &mc);
    same(&gb, "adam v", &vg, &vc);
    assert_eq!(
        gb.to_vec(&outside).unwrap(),
        before,
        "a clone of the parameter changed"
    );
    assert_eq!(
        gb.to_vec(&zeros_g).unwrap(),
        vec![0.0; 37 * 11],
        "the shared zeros changed"
    );

    let mut bg = gb.zeros(&shape).unwrap();
    let mut bc = Cpu.zeros(&shape).unwrap();
    for step in 0..3u64 {
        let grad = pair(&gb, &shape, 1800 + step);
        let h = SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 2e-4,
        };
        gb.sgd_update(&mut pg.g, &grad.g, &mut bg, h).unwrap();
        Cpu.sgd_update(&mut pg.c, &grad.c, &mut bc, h).unwrap();
    }
    same(&gb, "sgd param", &pg.g, &pg.c);
    same(&gb, "sgd momentum", &bg, &bc);
    // The parameter passed as its own gradient (a shared buffer bound twice) is copied first.
    let mut p = gb.from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap();
    let grad = p.clone();
    let mut buf = gb.zeros(&[3]).unwrap();
    let h = SgdParams {
        lr: 0.5,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    gb.sgd_update(&mut p, &grad, &mut buf, h).unwrap();
    assert_eq!(gb.to_vec(&p).unwrap(), vec![0.5, 1.0, 1.5]);
    assert_eq!(gb.to_vec(&grad).unwrap(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn element_wise_ops_fold_beyond_65535_workgroups() {
    let Some(gb) = common::backend() else { return };
    // More than 65535 · 256 elements needs a second dispatch dimension.
    let n = 65_535 * 256 + 777;
    let x = gb.full(&[n], 2.0).unwrap();
    let y = gb.affine(&x, 3.0, 1.0).unwrap();
    let v = gb.to_vec(&y).unwrap();
    assert_eq!(v.len(), n);
    let bad = v.iter().position(|&e| e != 7.0);
    assert!(bad.is_none(), "element {bad:?} was not written");
}

#[test]
fn per_example_ops_and_the_dlr_loss_match() {
    let Some(gb) = common::backend() else { return };
    let shape = [37, 1, 28, 28];
    let x = pair(&gb, &shape, 1500);
    let s = pair(&gb, &[37], 1501);
    same(
        &gb,
        "mul_rows",
        &gb.mul_rows(&x.g, &s.g).unwrap(),
        &Cpu.mul_rows(&x.c, &s.c).unwrap(),
    );
    // select_rows copies bits: equal exactly.
    let a = pair(&gb, &shape, 1502);
    let mask: Vec<f32> = (0..37).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
    let (mg, mc) = (
        gb.from_vec(&[37], mask.clone()).unwrap(),
        Cpu.from_vec(&[37], mask).unwrap(),
    );
    let got = gb
        .to_vec(&gb.select_rows(&mg, &a.g, &x.g).unwrap())
        .unwrap();
    let want = Cpu.select_rows(&mc, &a.c, &x.c).unwrap();
    assert!(got == want.as_slice(), "select_rows differs");

    // Logits of ten distinct levels 0.5 apart (plus noise below 0.01), so that the DLR
    // denominators are at least 0.5 and the order is the same on both backends.
    let noise = random_vec(370, 0.0, 0.01, 1503);
    let z: Vec<f32> = (0..370)
        .map(|f| ((f % 10 * 3 + f / 10) % 10) as f32 * 0.5 - 2.0 + noise[f])
        .collect();
    let zg = gb.from_vec(&[37, 10], z.clone()).unwrap();
    let zc = Cpu.from_vec(&[37, 10], z).unwrap();
    let labels: Vec<f32> = (0..37).map(|i| ((i * 7) % 10) as f32).collect();
    let targets: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| ((l as usize + 1 + i % 9) % 10) as f32)
        .collect();
    let (yg, yc) = (
        gb.from_vec(&[37], labels.clone()).unwrap(),
        Cpu.from_vec(&[37], labels).unwrap(),
    );
    let (tg, tc) = (
        gb.from_vec(&[37], targets.clone()).unwrap(),
        Cpu.from_vec(&[37], targets).unwrap(),
    );
    let w = pair(&gb, &[37], 1504);
    for (what, t) in [("untargeted", None), ("targeted", Some((&tg, &tc)))] {
        same(
            &gb,
            &format!("dlr_loss {what}"),
            &gb.dlr_loss(&zg, &yg, t.map(|t| t.0)).unwrap(),
            &Cpu.dlr_loss(&zc, &yc, t.map(|t| t.1)).unwrap(),
        );
        same(
            &gb,
            &format!("dlr_loss_backward {what}"),
            &gb.dlr_loss_backward(&zg, &yg, t.map(|t| t.0), &w.g)
                .unwrap(),
            &Cpu.dlr_loss_backward(&zc, &yc, t.map(|t| t.1), &w.c)
                .unwrap(),
        );
    }
}

#[test]
fn invalid_labels_are_errors_on_the_host_and_on_the_device() {
    if common::backend().is_none() {
        return;
    }
    // A device of its own: the status word a kernel sets is reported by the next read-back on
    // the same device, whichever thread (test) makes it.
    let gb = Wgpu::new(DeviceChoice::Any).unwrap();
    let z = gb.full(&[3, 4], 0.5).unwrap();
    // Uploaded labels are checked before any kernel runs, with the CPU backend's message.
    let bad = gb.from_vec(&[3], vec![0.0, 4.0, 1.0]).unwrap();
    let e = gb.cross_entropy(&z, &bad).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::InvalidArgument {
                op: "cross_entropy",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("label 4 at position 1"), "{e}");
    let e = gb
        .cw_loss(&z, &gb.from_vec(&[3], vec![0.0, 1.5, 1.0]).unwrap(), 1.0)
        .unwrap_err();
    assert!(
        matches!(e, TensorError::InvalidArgument { op: "cw_loss", .. }),
        "{e}"
    );
    // Labels computed on the device are checked by the kernel and reported at the next read.
    let good = gb.from_vec(&[3], vec![0.0, 1.0, 2.0]).unwrap();
    let shifted = gb.affine(&good, 1.0, 0.5).unwrap();
    let loss = gb.cross_entropy(&z, &shifted).unwrap();
    let e = gb.to_vec(&loss).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::InvalidArgument {
                op: "cross_entropy",
                ..
            }
        ),
        "{e}"
    );
    // The report clears the flag: valid work reads back normally afterwards.
    let ok = gb.cross_entropy(&z, &good).unwrap();
    let v = gb.to_vec(&ok).unwrap();
    assert!((v[0] - 4f32.ln()).abs() < 1e-6, "{v:?}");
    // The same for the DLR loss's targets, and for its gradient.
    let loss = gb.dlr_loss(&z, &good, Some(&shifted)).unwrap();
    let e = gb.to_vec(&loss).unwrap_err();
    assert!(
        matches!(e, TensorError::InvalidArgument { op: "dlr_loss", .. }),
        "{e}"
    );
    let ones = gb.full(&[3], 1.0).unwrap();
    let grad = gb.dlr_loss_backward(&z, &shifted, None, &ones).unwrap();
    let e = gb.to_vec(&grad).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::InvalidArgument {
                op: "dlr_loss_backward",
                ..
            }
        ),
        "{e}"
    );
    assert!(gb.to_vec(&gb.dlr_loss(&z, &good, None).unwrap()).is_ok());
}

#[test]
fn threads_can_share_the_backend() {
    let Some(gb) = common::backend() else { return };
    let handles: Vec<_> = (0..3u64)
        .map(|t| {
            let gb = gb.clone();
            std::thread::spawn(move || {
                let a = pair(&gb, &[33, 40], 1900 + t);
                let b = pair(&gb, &[40, 29], 1950 + t);
                for _ in 0..5 {
                    let g = gb.matmul(&a.g, &b.g, false, false).unwrap();
                    let c = Cpu.matmul(&a.c, &b.c, false, false).unwrap();
                    same(&gb, "matmul on a thread", &g, &c);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn device_choice_follows_the_adapter_type() {
    let Some(gb) = common::backend() else { return };
    assert_eq!("GPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu);
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    assert_eq!("any".parse::<DeviceChoice>().unwrap(), DeviceChoice::Any);
    assert!("cuda".parse::<DeviceChoice>().is_err());
    let a = gb.adapter();
    assert!(!a.name.is_empty() && gb.name().contains(&a.name));
    assert!(
        matches!(a.backend.as_str(), "Vulkan" | "Metal" | "Dx12"),
        "{a}"
    );
    if a.is_software {
        let e = Wgpu::new(DeviceChoice::Gpu).unwrap_err();
        assert!(e.to_string().contains("software"), "{e}");
        assert!(
            Wgpu::auto().unwrap().is_none(),
            "auto must not pick a software adapter"
        );
    } else {
        assert!(Wgpu::auto().unwrap().is_some());
    }
}

#[test]
fn no_adapter_is_an_error_saying_what_to_install() {
    // No backend of ours at all (OpenGL is never used): the error says what to install.
    let e = Wgpu::with_backends(DeviceChoice::Any, wgpu::Backends::GL).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TensorError::Backend { .. }), "{msg}");
    assert!(
        msg.contains("no adapter") && msg.contains("mesa-vulkan-drivers"),
        "{msg}"
    );
}

/// `ndarray` at the boundary works for this backend as for the CPU: any array or view goes up
/// in its logical order and comes back as an owned array of the tensor's shape.
#[test]
fn ndarray_arrays_round_trip_through_the_device() {
    use ndarray::{s, Array, ArrayD, IxDyn};
    use saddle_tensor::ArrayExt;
    let Some(gb) = common::backend() else { return };
    let cb = Cpu::new();
    let a = Array::from_shape_vec((3, 4, 5), random_vec(60, -1.0, 1.0, 17)).unwrap();
    // A strided, permuted view: not contiguous in memory.
    let v = a.slice(s![.., 1.., ..;2]).permuted_axes([2, 0, 1]);
    assert!(v.as_slice().is_none());
    let g = gb.from_array(&v).unwrap();
    assert_eq!(g.dims(), &[3, 3, 3]);
    let back: ArrayD<f32> = gb.to_array(&g).unwrap();
    assert_eq!(back, v.to_owned().into_dyn());
    let relu = gb.to_array(&gb.relu(&g).unwrap()).unwrap();
    let want = cb
        .to_array(&cb.relu(&cb.from_array(&v).unwrap()).unwrap())
        .unwrap();
    assert_eq!(relu, want);
    let empty = gb
        .from_array(&ArrayD::<f32>::zeros(IxDyn(&[0, 4])))
        .unwrap();
    assert_eq!(gb.to_array(&empty).unwrap().shape(), &[0, 4]);
}
