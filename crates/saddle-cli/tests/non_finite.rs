//! NaN and infinity in the inputs of `saddle predict`, `saddle attack` and `saddle eval`: pixels
//! and labels in a `.npy` file, and weights in a model file. Each ends in a one-line error
//! naming what is not finite (status 2), never in a number computed from it.

use std::path::Path;

use saddle_models::{Classifier, MnistNet};
use saddle_tensor::cpu::Cpu;
use saddle_tensor::{Backend as _, TensorLike as _};

mod common;
use common::{dir, f32_npy, f64_npy, s, saddle};

/// Four valid MNIST-shaped images.
fn images() -> Vec<f32> {
    (0..4 * 784).map(|i| (i % 97) as f32 / 97.0).collect()
}

/// A scale-1 MNIST model file whose tensor `poisoned` (if any) is filled with `value`.
fn model_file(path: &Path, poisoned: Option<(&str, f32)>) {
    let b = Cpu::new();
    let mut net = MnistNet::new(b, 1, 3).unwrap();
    if let Some((name, value)) = poisoned {
        let i = net.params().index_of(name).unwrap();
        let t = &mut net.params_mut().tensors_mut()[i];
        *t = b.full(t.dims(), value).unwrap();
    }
    std::fs::write(path, net.to_safetensors().unwrap()).unwrap();
}

/// Runs `args`, expects status 2 and exactly one line on stderr that contains every one of
/// `want`.
fn fails_with(args: &[&str], want: &[&str]) {
    let (code, _, err) = saddle(args);
    assert_eq!(code, 2, "{args:?} should fail with status 2; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{args:?}: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    for w in want {
        assert!(
            err.contains(w),
            "{args:?}: the message should mention '{w}': {err}"
        );
    }
}

/// `saddle predict` of `x` with `model`, into `out`.
fn predict_args<'a>(model: &'a Path, x: &'a Path, out: &'a Path) -> [&'a str; 7] {
    [
        "predict",
        "--model",
        s(model),
        "--inputs",
        s(x),
        "--out",
        s(out),
    ]
}

/// `saddle attack` (PGD-2 at ε = 0.3) of `x` labelled `y` with `model`, into `out`.
fn attack_args<'a>(model: &'a Path, x: &'a Path, y: &'a Path, out: &'a Path) -> [&'a str; 15] {
    [
        "attack",
        "--model",
        s(model),
        "--inputs",
        s(x),
        "--labels",
        s(y),
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--steps",
        "2",
        "--out",
        s(out),
    ]
}

#[test]
fn nan_and_infinite_pixels_are_refused_by_predict_and_attack() {
    let d = dir("pixels");
    let model = d.join("m.safetensors");
    model_file(&model, None);
    let y = d.join("y.npy");
    f32_npy(&y, &[4], &[0.0, 1.0, 2.0, 3.0]);
    let out = d.join("out.npy");
    for (name, value) in [
        ("nan", f32::NAN),
        ("inf", f32::INFINITY),
        ("neg-inf", f32::NEG_INFINITY),
    ] {
        let x = d.join(format!("x-{name}.npy"));
        let mut v = images();
        v[1234] = value;
        f32_npy(&x, &[4, 1, 28, 28], &v);
        let shown = format!("element 1234 is {value}");
        let predict = predict_args(&model, &x, &out);
        fails_with(&predict, &["pixel values must be in [0, 1]", &shown]);
        let attack = attack_args(&model, &x, &y, &out);
        fails_with(&attack, &["pixel values must be in [0, 1]", &shown]);
        assert!(!out.exists(), "{name}: an output was written");
    }
    // A float64 file whose value is finite in f64 but not in f32 (1e300 → inf) is refused
    // too, as are NaN payloads stored in float64.
    for value in [1e300f64, f64::NAN] {
        let x = d.join("x-f64.npy");
        let mut v: Vec<f64> = images().iter().map(|&p| p as f64).collect();
        v[7] = value;
        f64_npy(&x, &[4, 1, 28, 28], &v);
        let predict = predict_args(&model, &x, &out);
        fails_with(&predict, &["pixel values must be in [0, 1]", "element 7"]);
    }
    // The same files with the value replaced by a valid pixel work: the refusal is the value's.
    let x = d.join("x-ok.npy");
    f32_npy(&x, &[4, 1, 28, 28], &images());
    let (code, _, err) = saddle(&predict_args(&model, &x, &out));
    assert_eq!(code, 0, "{err}");
    assert!(out.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn nan_and_infinite_labels_are_refused_by_attack() {
    let d = dir("labels");
    let model = d.join("m.safetensors");
    model_file(&model, None);
    let x = d.join("x.npy");
    f32_npy(&x, &[4, 1, 28, 28], &images());
    let out = d.join("out.npy");
    for value in [f32::NAN, f32::INFINITY, -0.5] {
        let y = d.join("y.npy");
        f32_npy(&y, &[4], &[0.0, 1.0, value, 3.0]);
        fails_with(
            &attack_args(&model, &x, &y, &out),
            &[
                "is not a class in 0..10",
                &format!("label {value} at position 2"),
            ],
        );
    }
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_model_file_with_non_finite_weights_is_refused_by_every_command() {
    let d = dir("weights");
    let x = d.join("x.npy");
    f32_npy(&x, &[4, 1, 28, 28], &images());
    let y = d.join("y.npy");
    f32_npy(&y, &[4], &[0.0, 1.0, 2.0, 3.0]);
    let out = d.join("out.npy");
    let eval_out = d.join("eval.json");
    for (tensor, value) in [
        ("conv1.weight", f32::NAN),
        ("fc1.bias", f32::INFINITY),
        ("fc2.weight", f32::NEG_INFINITY),
    ] {
        let model = d.join("m.safetensors");
        model_file(&model, Some((tensor, value)));
        let want = [
            format!("tensor {tensor} holds a non-finite value ({value})"),
            "m.safetensors".to_string(),
        ];
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        fails_with(&predict_args(&model, &x, &out), &want);
        fails_with(&attack_args(&model, &x, &y, &out), &want);
        // eval loads the model before any data: the same error whether or not MNIST is here.
        fails_with(
            &[
                "eval",
                "--model",
                s(&model),
                "--data",
                "mnist",
                "--data-dir",
                s(&d),
                "--out",
                s(&eval_out),
            ],
            &want,
        );
        assert!(!out.exists() && !eval_out.exists());
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Finite weights that overflow float32 on an input (3e38 in the last layer) make infinite
/// logits: `predict` says so on one line and writes nothing, instead of writing infinities.
#[test]
fn logits_that_overflow_are_refused_by_predict() {
    let d = dir("overflow");
    let model = d.join("m.safetensors");
    model_file(&model, Some(("fc2.weight", 3e38)));
    let x = d.join("x.npy");
    f32_npy(&x, &[4, 1, 28, 28], &images());
    let out = d.join("out.npy");
    fails_with(
        &predict_args(&model, &x, &out),
        &["overflow float32", "nothing was written"],
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&d);
}
