//! The CIFAR-10 wide ResNets against PyTorch float64 golden values
//! (`tests/golden/make_golden_cifar.py`, whose docstring and `forward` define both networks):
//! `cifar_wrn_madry.safetensors` is `wrn-madry-16-2` on CIFAR-10 test images 0–7,
//! `cifar_wrn.safetensors` is `wrn-16-2` on images 8–15, with running statistics calibrated on
//! 64 training images so that evaluation mode is not the identity.
//!
//! Bars (models-as-modules issue), relative error ‖a − b‖₂/‖b‖₂ per tensor:
//! - evaluation-mode logits ≤ 1e-5 on the CPU: float32 against float64 through 16 layers leaves
//!   a few 1e-7 relative (PyTorch's own float32 is as close); a wrong ε, activation or shortcut
//!   moves them by 1e-3 or more (the mutation test below shows one);
//! - the loss and the input gradient ≤ 1e-3, as for MNIST (a summed gradient of 24,576 values
//!   with ReLU/leaky-ReLU kinks near zero);
//! - training mode: logits, loss and the gradient of every trainable tensor ≤ 1e-3 (tensors of
//!   more than 20,000 values through their norm, their sum — to within 1e-3 of the norm, since
//!   a sum of many signed values may cancel to near zero — and 4,096 stored samples); the
//!   running statistics after that one forward pass ≤ 1e-4 (one momentum step of batch
//!   statistics, float32 rounding of a mean and a variance);
//! - FGSM at ε = 8/255 and one PGD step (α = 2/255) equal PyTorch's within 1e-6 on ≥ 99.5% of
//!   pixels (a pixel whose gradient is within rounding of 0 may take the other sign); PGD-7
//!   reaches PyTorch's summed cross-entropy within 1% (its float32 path drifts by such flips;
//!   the projection binds on a third of the pixels).
//!
//! The same checks run on the wgpu backend (lavapipe in CI) with the MNIST parity bars: 1e-3
//! against PyTorch for the logits as well (tiled and split reductions in another order).

use saddle_attacks::{Attack, Fgsm, Pgd};
use saddle_autograd::Graph;
use saddle_models::{
    loss_and_input_grad, params::safetensors_metadata, Arch, Classifier, Loss, Model,
};
use saddle_tensor::{cpu::Cpu, Backend};
use saddle_tests::{golden::Golden, gpu, rel_err};

const MADRY: &[u8] = include_bytes!("golden/cifar_wrn_madry.safetensors");
const ROBUSTBENCH: &[u8] = include_bytes!("golden/cifar_wrn.safetensors");
const EPS: f32 = 8.0 / 255.0;
const ALPHA: f32 = 2.0 / 255.0;

/// The bars of one backend.
#[derive(Clone, Copy)]
struct Bars {
    eval_logits: f64,
    other: f64,
    state: f64,
}

const CPU_BARS: Bars = Bars {
    eval_logits: 1e-5,
    other: 1e-3,
    state: 1e-4,
};
const GPU_BARS: Bars = Bars {
    eval_logits: 1e-3,
    other: 1e-3,
    state: 1e-4,
};

/// The golden file's network: its `arch` metadata through the registry, its `param.*` tensors.
fn golden_model<B: Backend>(b: &B, bytes: &[u8]) -> Model<B> {
    let arch: Arch = safetensors_metadata(bytes).unwrap()["arch"]
        .parse()
        .unwrap();
    let mut m = Model::build(&arch, b.clone(), 0).unwrap();
    m.params_mut().load_safetensors(b, bytes, "param.").unwrap();
    m
}

fn check(name: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = rel_err(got, want);
    println!("{name}: relative error {e:.3e} (≤ {tol:.0e})");
    assert!(e <= tol, "{name}: relative error {e:.3e} exceeds {tol:.0e}");
}

/// Each image standardised in float64 (TensorFlow's `per_image_standardization`), rounded to
/// float32: what `wrn-madry`'s first layer computes, without its float32 rounding.
fn standardized_in_f64(x: &[f32]) -> Vec<f32> {
    let per = 3 * 32 * 32;
    let mut out = Vec::with_capacity(x.len());
    for img in x.chunks(per) {
        let m = img.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
        let var = img.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / per as f64;
        let sd = var.sqrt().max(1.0 / (per as f64).sqrt());
        out.extend(img.iter().map(|&v| ((v as f64 - m) / sd) as f32));
    }
    out
}

/// The golden network and the batch its gradients are checked on. `wrn-madry`'s gradients sit
/// where one float32 rounding decides the side of a leaky ReLU: the per-image standardisation
/// in float32 (within 2 ulps of float64: 8.9e-7 at most on these images) flips one unit of the
/// last activation against PyTorch's float64 and moves every parameter gradient by ~5e-3 — as
/// much as moving the input by 1e-6 does (measured: 7.8e-3 on conv1's gradient). So for
/// `wrn-madry` the network after its first layer is checked at the bars on images standardised
/// in float64 (then every gradient agrees within 2e-6), the first layer separately (its values
/// against float64 here, its gradient chained below and by finite differences in
/// saddle-models), and the whole network end to end at the bars its float32 rounding allows.
fn prepared<B: Backend>(b: &B, bytes: &[u8]) -> (Model<B>, B::Tensor, B::Tensor, bool) {
    let gold = Golden::from_bytes(bytes);
    let (x, y) = gold.inputs(b);
    let mut net = golden_model(b, bytes);
    let split = match &mut net {
        Model::Wrn(w) if w.spec().madry => {
            w.set_input_standardization(false);
            true
        }
        _ => false,
    };
    let x = if split {
        let xs = standardized_in_f64(&b.to_vec(&x).unwrap());
        b.from_vec(&[xs.len() / 3072, 3, 32, 32], xs).unwrap()
    } else {
        x
    };
    (net, x, y, split)
}

/// Relative error allowed end to end in `wrn-madry`'s input gradient, where one leaky ReLU
/// decided by float32 rounding moves it by 2.1e-3 (see [`prepared`]).
const MADRY_END_TO_END_GRAD: f64 = 1e-2;

/// How many of the golden batch's 8 images may have `wrn-madry`'s input gradient decided by a
/// float32 rounding even on images standardised in float64: inside the network, too, some units
/// sit within rounding of a leaky ReLU's kink, and which images that touches depends on the
/// order of the sums. Measured per image: on the FMA kernels (AVX2, AVX-512) images 3 and 6 are
/// off by 4.4e-3 and 6.7e-3, on the portable kernels images 3 and 4 by 9.2e-4 and 1.0e-3, every
/// other image within 1.4e-6. A flipped unit moves only its own image (evaluation mode); a
/// wrong backward rule moves every image, which this check still catches.
const MADRY_FLIPPED_IMAGES: usize = 2;

/// The same for `wrn` (ReLU): its golden batch's image 6 has a unit within float32 rounding of
/// a ReLU's kink, so the order of the sums decides its input gradient. Measured with the direct
/// convolutions (AVX-512), moving every input pixel by a random amount of at most 1e-6 moved
/// image 6's input gradient by 2.3e-2 (three seeds out of three; images 0, 2, 4, 5 and 7 by
/// 2e-4 to 2e-2 for some seeds; every other image by < 1e-6). The AVX2 kernels' Winograd
/// convolutions over 16 channels sum in another order and land on the other side for image 6.
const WRN_FLIPPED_IMAGES: usize = 1;
/// How far one such flip moves an image's input gradient at most (measured: 2.3e-2).
const WRN_FLIP_GRAD: f64 = 5e-2;

/// `got` against `want` image by image (3×32×32 values each): every image within `bar`, except
/// at most `flips_allowed` images within `flip_bar`.
fn check_per_image(
    name: &str,
    got: &[f32],
    want: &[f32],
    bar: f64,
    flips_allowed: usize,
    flip_bar: f64,
) {
    assert_eq!(got.len(), want.len(), "{name}: lengths differ");
    let errs: Vec<f64> = got
        .chunks(3072)
        .zip(want.chunks(3072))
        .map(|(a, w)| rel_err(a, w))
        .collect();
    println!(
        "{name}: relative error {:.3e} overall; per image [{}]",
        rel_err(got, want),
        errs.iter()
            .map(|e| format!("{e:.1e}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let off: Vec<usize> = (0..errs.len()).filter(|&i| errs[i] > bar).collect();
    assert!(
        off.len() <= flips_allowed,
        "{name}: images {off:?} exceed {bar:.0e} (at most {flips_allowed} may, for a unit at a kink)"
    );
    for &i in &off {
        assert!(
            errs[i] <= flip_bar,
            "{name}: image {i}'s relative error {:.3e} exceeds {flip_bar:.0e}, more than a unit at a kink moves it",
            errs[i]
        );
    }
}

fn eval_mode<B: Backend>(b: &B, bytes: &[u8], bars: Bars) {
    let gold = Golden::from_bytes(bytes);
    let (net, x_in, y, split) = prepared(b, bytes);
    assert!(!net.is_training());
    let g = Graph::new(b.clone());
    let xv = g.leaf(x_in);
    let f = net.forward(&g, xv, false).unwrap();
    assert!(f.state.is_empty(), "evaluation mode updates no state");
    let per = g.cross_entropy(f.logits, &y).unwrap();
    let total = g.sum_all(per).unwrap();
    let grads = g.backward(total).unwrap();
    let logits = b.to_vec(&g.value(f.logits)).unwrap();
    check(
        "eval logits",
        &logits,
        &gold.get("out.eval.logits").data,
        bars.eval_logits,
    );
    let n = gold.get("input.y").data.len() as f32;
    let mean = b.to_vec(&g.value(total)).unwrap()[0] / n;
    check(
        "eval mean loss",
        &[mean],
        &gold.get("out.eval.loss_mean_xent").data,
        bars.other,
    );
    let mut gx = grads.get(xv).unwrap().clone();
    let (x, _) = gold.inputs(b);
    if split {
        // Through saddle's standardisation layer to the raw pixels.
        let g2 = Graph::new(b.clone());
        let raw = g2.leaf(x.clone());
        let s = saddle_models::layers::per_image_standardization(&g2, raw).unwrap();
        gx = g2.backward_with(s, gx).unwrap().get(raw).unwrap().clone();
    }
    let want_gx = &gold.get("out.eval.grad_x_sum_xent").data;
    let (flips_allowed, flip_bar) = if split {
        (MADRY_FLIPPED_IMAGES, MADRY_END_TO_END_GRAD)
    } else {
        (WRN_FLIPPED_IMAGES, WRN_FLIP_GRAD)
    };
    check_per_image(
        "eval input gradient",
        &b.to_vec(&gx).unwrap(),
        want_gx,
        bars.other,
        flips_allowed,
        flip_bar,
    );
    if split {
        // The whole network, its own standardisation included.
        let whole = golden_model(b, bytes);
        let (_, gx_whole, z) = loss_and_input_grad(&whole, &x, &y, Loss::CrossEntropy).unwrap();
        let z = b.to_vec(&z).unwrap();
        check(
            "end to end: eval logits",
            &z,
            &gold.get("out.eval.logits").data,
            bars.eval_logits,
        );
        let e = b.to_vec(&gx_whole).unwrap();
        check(
            "end to end: eval input gradient",
            &e,
            want_gx,
            MADRY_END_TO_END_GRAD,
        );
    }
}

/// The worst relative error of `grads` against the golden gradients, and where: a full tensor
/// by its relative error; a large one (stored as samples) by its norm's relative error, its
/// sum's difference as a fraction of its norm (a sum of many signed values may cancel to near
/// zero), and its samples' relative error.
fn worst_grad_error(gold: &Golden, grads: &[(String, Vec<f32>)]) -> (f64, String) {
    let mut worst = (0.0f64, String::new());
    let mut note = |e: f64, what: String| {
        if e > worst.0 || worst.1.is_empty() {
            worst = (e, what);
        }
    };
    for (name, gv) in grads {
        let key = format!("out.train.grad.{name}");
        if gold.has(&key) {
            note(rel_err(gv, &gold.get(&key).data), key);
            continue;
        }
        let norm: f64 = gv.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let sum: f64 = gv.iter().map(|&v| v as f64).sum();
        let want_norm = gold.get(&format!("{key}.norm")).data[0] as f64;
        let want_sum = gold.get(&format!("{key}.sum")).data[0] as f64;
        note((norm - want_norm).abs() / want_norm, format!("{key}.norm"));
        note(
            (sum - want_sum).abs() / want_norm,
            format!("{key}.sum (of the norm)"),
        );
        let idx = &gold.get(&format!("{key}.sample_index")).ints;
        let samples: Vec<f32> = idx.iter().map(|&k| gv[k as usize]).collect();
        note(
            rel_err(&samples, &gold.get(&format!("{key}.sample_value")).data),
            format!("{key} samples"),
        );
    }
    worst
}

/// Training mode: logits, loss, the running statistics, and that every trainable tensor (and
/// only those) gets a gradient, which are returned by name. With `split`, `wrn-madry` takes
/// images standardised in float64 (see [`prepared`]).
fn train_mode<B: Backend>(b: &B, bytes: &[u8], bars: Bars, split: bool) -> Vec<(String, Vec<f32>)> {
    let gold = Golden::from_bytes(bytes);
    let (mut net, x, y, _) = if split {
        prepared(b, bytes)
    } else {
        let (x, y) = gold.inputs(b);
        (golden_model(b, bytes), x, y, false)
    };
    net.set_training(true);
    let g = Graph::new(b.clone());
    let xv = g.input(x);
    let f = net.forward(&g, xv, true).unwrap();
    let loss = g.mean_all(g.cross_entropy(f.logits, &y).unwrap()).unwrap();
    let grads = g.backward(loss).unwrap();
    check(
        "train logits",
        &b.to_vec(&g.value(f.logits)).unwrap(),
        &gold.get("out.train.logits").data,
        bars.other,
    );
    check(
        "train loss",
        &b.to_vec(&g.value(loss)).unwrap(),
        &gold.get("out.train.loss_mean_xent").data,
        bars.other,
    );

    // Every trainable tensor has a gradient, and only those.
    let names = net.params().names().to_vec();
    let trainable: Vec<usize> = net.params().trainable().collect();
    let got: Vec<usize> = f.params.iter().map(|&(i, _)| i).collect();
    assert_eq!(
        got, trainable,
        "the forward pass's parameter leaves are the trainable tensors"
    );
    let mut all = Vec::new();
    for &(i, v) in &f.params {
        let name = &names[i];
        let gv = b
            .to_vec(
                grads
                    .get(v)
                    .unwrap_or_else(|| panic!("{name} got no gradient")),
            )
            .unwrap();
        all.push((name.clone(), gv));
    }

    // The running statistics move as in torch.nn.BatchNorm2d; the counters count one batch.
    net.commit_state(&g, &f).unwrap();
    let mut checked = 0;
    for (i, name) in names.iter().enumerate() {
        let t = b.to_vec(&net.params().tensors()[i]).unwrap();
        if name.ends_with("num_batches_tracked") {
            assert_eq!(t, [1.0], "{name}");
        } else if name.ends_with("running_mean") || name.ends_with("running_var") {
            check(
                name,
                &t,
                &gold.get(&format!("out.train.state.{name}")).data,
                bars.state,
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        2 * (names.len() - trainable.len()) / 3,
        "every running statistic checked"
    );
    all
}

fn agreement(name: &str, got: &[f32], want: &[f32]) {
    let close = got
        .iter()
        .zip(want)
        .filter(|(a, b)| (*a - *b).abs() <= 1e-6)
        .count();
    let frac = close as f64 / got.len() as f64;
    println!(
        "{name}: {:.4}% of {} pixels within 1e-6 of PyTorch",
        100.0 * frac,
        got.len()
    );
    assert!(
        frac >= 0.995,
        "{name}: only {:.4}% of pixels agree",
        100.0 * frac
    );
}

fn attacks<B: Backend>(b: &B, bytes: &[u8]) {
    let gold = Golden::from_bytes(bytes);
    let mut net = golden_model(b, bytes);
    let (x, y) = gold.inputs(b);
    let fgsm = Fgsm::new(EPS).unwrap().perturb(&mut net, &x, &y).unwrap();
    agreement(
        "fgsm ε=8/255",
        &b.to_vec(&fgsm.x_adv).unwrap(),
        &gold.get("out.fgsm_eps8").data,
    );
    let one = Pgd::linf(EPS, ALPHA, 1).unwrap().random_start(false);
    let r = one.perturb(&mut net, &x, &y).unwrap();
    agreement(
        "pgd 1 step",
        &b.to_vec(&r.x_adv).unwrap(),
        &gold.get("out.pgd_eps8_alpha2_steps1").data,
    );

    let seven = Pgd::linf(EPS, ALPHA, 7).unwrap().random_start(false);
    let r = seven.perturb(&mut net, &x, &y).unwrap();
    let xa = b.to_vec(&r.x_adv).unwrap();
    let x0 = b.to_vec(&x).unwrap();
    let on_ball = xa
        .iter()
        .zip(&x0)
        .filter(|(a, o)| ((*a - *o).abs() - EPS).abs() < 1e-6)
        .count();
    let ce = b
        .to_vec(&b.cross_entropy(&net.logits(&r.x_adv).unwrap(), &y).unwrap())
        .unwrap();
    let ours: f64 = ce.iter().map(|&v| v as f64).sum();
    let want = gold.get("out.pgd_eps8_alpha2_steps7.loss_sum_xent").data[0] as f64;
    let rel = (ours - want).abs() / want.abs();
    println!(
        "pgd-7: summed cross-entropy {ours:.5} vs PyTorch {want:.5} ({rel:.2e}); {:.1}% of pixels on the ε-ball",
        100.0 * on_ball as f64 / xa.len() as f64
    );
    assert!(
        rel <= 0.01,
        "PGD-7's summed cross-entropy {ours} is not within 1% of {want}"
    );
    assert!(
        !net.is_training(),
        "the attacks leave the model in evaluation mode"
    );
}

/// Runs `f` with the CPU backend's Winograd convolutions on 2×2 tiles (F(2×2, 3×3)).
///
/// The golden batches have units within float32 rounding of a (leaky) ReLU's kink (see
/// [`prepared`] and the flip constants above), whose side decides gradients by up to 3e-2. The
/// F(4×4, 3×3) convolutions the backend picks for these layers round differently by about
/// 1e-6, enough to flip more of them (measured: `wrn`'s training-mode gradients 1.1e-2 off on
/// AVX2, 6.1e-3 on the portable kernels; `wrn-madry`'s evaluation input gradient 1.7e-2 off
/// on one image on AVX2), so the gradient comparisons, which check the layers, the backward
/// rules and the batch-norm state at PyTorch's bars, run on F(2×2), the nearer to exact. The
/// F(4×4) convolutions are held to a float64 rounding bound, forward and both gradients, by
/// the Winograd module's own tests, and end to end here by [`shipped_tiles_give_pytorchs_logits`].
fn on_2x2_tiles<R>(f: impl FnOnce() -> R) -> R {
    saddle_tensor::cpu::with_winograd_tile(2, f).expect("2 is a Winograd tile")
}

#[test]
fn wrn_madry_eval_mode_matches_pytorch() {
    on_2x2_tiles(|| eval_mode(&Cpu::new(), MADRY, CPU_BARS));
}

#[test]
fn wrn_eval_mode_matches_pytorch() {
    on_2x2_tiles(|| eval_mode(&Cpu::new(), ROBUSTBENCH, CPU_BARS));
}

/// The logits and loss, in evaluation and in training mode, on the Winograd tiles the backend
/// picks (F(4×4, 3×3) on these layers), against PyTorch at the CPU's bars: logits are not
/// decided by a unit at a kink the way gradients are.
fn logits_on_shipped_tiles<B: Backend>(b: &B, bytes: &[u8], bars: Bars) {
    let gold = Golden::from_bytes(bytes);
    let (x, y) = gold.inputs(b);
    let mut net = golden_model(b, bytes);
    for training in [false, true] {
        net.set_training(training);
        let g = Graph::new(b.clone());
        let f = net.forward(&g, g.input(x.clone()), training).unwrap();
        let loss = g.mean_all(g.cross_entropy(f.logits, &y).unwrap()).unwrap();
        let (mode, bar) = if training {
            ("train", bars.other)
        } else {
            ("eval", bars.eval_logits)
        };
        check(
            &format!("{mode} logits (shipped tiles)"),
            &b.to_vec(&g.value(f.logits)).unwrap(),
            &gold.get(&format!("out.{mode}.logits")).data,
            bar,
        );
        check(
            &format!("{mode} loss (shipped tiles)"),
            &b.to_vec(&g.value(loss)).unwrap(),
            &gold.get(&format!("out.{mode}.loss_mean_xent")).data,
            bars.other,
        );
    }
}

#[test]
fn shipped_tiles_give_pytorchs_logits() {
    logits_on_shipped_tiles(&Cpu::new(), MADRY, CPU_BARS);
    logits_on_shipped_tiles(&Cpu::new(), ROBUSTBENCH, CPU_BARS);
}

/// Every parameter gradient of training mode against PyTorch's.
///
/// `wrn-madry`'s golden batch has a unit of its last leaky ReLU within float32 rounding of 0:
/// two inputs that differ by 9e-7 (the images standardised in float32 by the model, and in
/// float64 by the test) land on its two sides, and the side moves every gradient by ~8e-3
/// (moving the input by 1e-6 does as much). So both are computed: one must match PyTorch's
/// float64 gradients at the bar (1e-3; it does to ~2e-6), and the other must differ only by
/// such a flip (≤ 3e-2, the measured 2.2e-2 of a sum's norm with margin). Which one lands on
/// PyTorch's side depends on the backend's rounding (the CPU, on F(2×2) tiles: the
/// float64-standardised one; lavapipe: the other). `wrn` has no such unit: its one pass is
/// held to the bar.
fn train_gradients<B: Backend>(b: &B, bytes: &[u8], bars: Bars) {
    let gold = Golden::from_bytes(bytes);
    let madry = safetensors_metadata(bytes).unwrap()["arch"].starts_with("wrn-madry");
    let runs: &[bool] = if madry { &[true, false] } else { &[false] };
    let errs: Vec<(f64, String)> = runs
        .iter()
        .map(|&split| {
            let (e, at) = worst_grad_error(&gold, &train_mode(b, bytes, bars, split));
            let how = if split {
                "images standardised in float64"
            } else {
                "end to end"
            };
            println!("training-mode gradients, {how}: worst relative error {e:.3e} at {at}");
            (e, at)
        })
        .collect();
    let best = errs.iter().map(|e| e.0).fold(f64::INFINITY, f64::min);
    let worst = errs.iter().map(|e| e.0).fold(0.0, f64::max);
    assert!(
        best <= bars.other,
        "no pass matches PyTorch's gradients: {errs:?}"
    );
    assert!(
        worst <= MADRY_KINK_FLIP,
        "a pass is off by more than a kink's flip: {errs:?}"
    );
}

/// How far a `wrn-madry` gradient moves when its near-zero leaky-ReLU unit flips side.
const MADRY_KINK_FLIP: f64 = 3e-2;

#[test]
fn wrn_madry_train_mode_matches_pytorch() {
    on_2x2_tiles(|| train_gradients(&Cpu::new(), MADRY, CPU_BARS));
}

#[test]
fn wrn_train_mode_matches_pytorch() {
    on_2x2_tiles(|| train_gradients(&Cpu::new(), ROBUSTBENCH, CPU_BARS));
}

#[test]
fn wrn_madry_attacks_match_pytorch() {
    attacks(&Cpu::new(), MADRY);
}

#[test]
fn wrn_attacks_match_pytorch() {
    attacks(&Cpu::new(), ROBUSTBENCH);
}

#[test]
fn gpu_wrn_madry_matches_pytorch() {
    let Some(gb) = gpu() else { return };
    let t = std::time::Instant::now();
    eval_mode(&gb, MADRY, GPU_BARS);
    train_gradients(&gb, MADRY, GPU_BARS);
    attacks(&gb, MADRY);
    println!("on {}: {:.1} s", gb.adapter(), t.elapsed().as_secs_f64());
}

#[test]
fn gpu_wrn_matches_pytorch() {
    let Some(gb) = gpu() else { return };
    eval_mode(&gb, ROBUSTBENCH, GPU_BARS);
    train_gradients(&gb, ROBUSTBENCH, GPU_BARS);
    attacks(&gb, ROBUSTBENCH);
}

/// saddle's standardisation layer against float64: within 4 ulps of values up to ~4 (measured: 2).
#[test]
fn per_image_standardization_matches_float64() {
    let b = Cpu::new();
    let gold = Golden::from_bytes(MADRY);
    let (x, _) = gold.inputs(&b);
    let want = standardized_in_f64(&b.to_vec(&x).unwrap());
    let g = Graph::new(b);
    let s = saddle_models::layers::per_image_standardization(&g, g.input(x)).unwrap();
    let got = b.to_vec(&g.value(s)).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, w)| (a - w).abs())
        .fold(0.0f32, f32::max);
    println!("per-image standardisation: max |float32 − float64| = {worst:.2e}");
    assert!(
        worst <= 2e-6,
        "standardisation off by {worst:e} (4 ulps of 4 is 1.9e-6)"
    );
    check("per-image standardisation", &got, &want, 1e-6);
}

/// The bars catch a mistake: `wrn-madry` with PyTorch's default batch-norm ε (1e-5) instead of
/// TensorFlow's 1e-3 — a change a reader could easily make — misses the evaluation-logit bar.
#[test]
fn a_wrong_batch_norm_epsilon_is_caught() {
    let b = Cpu::new();
    let gold = Golden::from_bytes(MADRY);
    let Model::Wrn(mut net) = golden_model(&b, MADRY) else {
        panic!("the golden file holds a wide ResNet")
    };
    net.set_bn_eps(1e-5);
    let (x, _) = gold.inputs(&b);
    let logits = b.to_vec(&net.logits(&x).unwrap()).unwrap();
    let e = rel_err(&logits, &gold.get("out.eval.logits").data);
    println!("wrn-madry with batch-norm ε 1e-5: eval logits relative error {e:.3e}");
    assert!(
        e > 10.0 * CPU_BARS.eval_logits,
        "the mutation went unnoticed ({e:.3e})"
    );
}

/// A `state_dict` saved by PyTorch (`save_file(model.state_dict())`: no metadata, int64 scalar
/// `num_batches_tracked`) loads with the architecture named, and gives the golden logits; without
/// the name, or with a tensor of another shape, it is an error that says so.
#[test]
fn a_pytorch_state_dict_loads_with_the_architecture_named() {
    use safetensors::tensor::{Dtype, TensorView};
    let b = Cpu::new();
    let gold = Golden::from_bytes(MADRY);
    let st = safetensors::SafeTensors::deserialize(MADRY).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| {
            let name = n.strip_prefix("param.")?.to_string();
            Some((name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        })
        .collect();
    let bns: Vec<String> = tensors
        .iter()
        .filter_map(|(n, ..)| n.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    for bn in bns {
        tensors.push((
            format!("{bn}.num_batches_tracked"),
            Dtype::I64,
            vec![],
            7i64.to_le_bytes().to_vec(),
        ));
    }
    let write = |ts: &[(String, Dtype, Vec<usize>, Vec<u8>)]| {
        let views: Vec<(String, TensorView<'_>)> = ts
            .iter()
            .map(|(n, d, s, bytes)| (n.clone(), TensorView::new(*d, s.clone(), bytes).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let file = write(&tensors);

    let e = Model::load(b, &file, None).unwrap_err().to_string();
    assert!(e.contains("--arch") && e.contains("wrn-madry"), "{e}");
    let net = Model::load(b, &file, Some("wrn-madry-16-2")).unwrap();
    let (x, _) = gold.inputs(&b);
    let logits = b.to_vec(&net.logits(&x).unwrap()).unwrap();
    check(
        "state_dict logits",
        &logits,
        &gold.get("out.eval.logits").data,
        CPU_BARS.eval_logits,
    );
    let i = net.params().index_of("bn1.num_batches_tracked").unwrap();
    assert_eq!(b.to_vec(&net.params().tensors()[i]).unwrap(), [7.0]);
    // Saved back, the counters are int64 scalars again, and the file names its architecture.
    let again = net.to_safetensors().unwrap();
    let st2 = safetensors::SafeTensors::deserialize(&again).unwrap();
    let c = st2.tensor("bn1.num_batches_tracked").unwrap();
    assert_eq!((c.dtype(), c.shape()), (Dtype::I64, &[][..]));
    assert_eq!(
        safetensors_metadata(&again).unwrap()["arch"],
        "wrn-madry-16-2"
    );

    // A wider network of the same name pattern cannot fit: the file is too small to hold its
    // weights, which is said before the network is built (no allocation the file cannot
    // justify).
    let e = Model::load(b, &file, Some("wrn-madry-16-4"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wrn-madry-16-4") && e.contains("more than the whole file"),
        "{e}"
    );
    let e = Model::load(b, &again, Some("wrn-16-2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wrn-16-2") && e.contains("wrn-madry-16-2"),
        "{e}"
    );
}
