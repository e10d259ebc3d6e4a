//! The `saddle` binary on good and bad input: every bad input exits with status 2 and one line
//! naming the problem, never a panic or a backtrace.

use std::path::{Path, PathBuf};

use saddle_models::{Classifier, MnistNet};
use saddle_tensor::cpu::Cpu;
use saddle_tensor::Backend as _;

mod common;
use common::{dir, f32_npy, i64_npy, read_json, real_data, s, saddle};

/// A tiny model, 4 images and labels in `d`.
fn fixture(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = d.join("m.safetensors");
    std::fs::write(
        &model,
        MnistNet::new(Cpu::new(), 1, 3)
            .unwrap()
            .to_safetensors()
            .unwrap(),
    )
    .unwrap();
    let x = d.join("x.npy");
    f32_npy(
        &x,
        &[4, 1, 28, 28],
        &(0..4 * 784)
            .map(|i| (i % 97) as f32 / 97.0)
            .collect::<Vec<_>>(),
    );
    let y = d.join("y.npy");
    i64_npy(&y, &[0, 1, 2, 3]);
    (model, x, y)
}

/// Runs `args`, expects status 2 and a one-line message containing `want`.
fn fails_with(args: &[&str], want: &str) {
    let (code, _, err) = saddle(args);
    assert_eq!(code, 2, "{args:?} should fail with status 2; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(
        err.contains(want),
        "{args:?}: message should mention '{want}': {err}"
    );
}

#[test]
fn predict_and_attack_work_on_good_input() {
    let d = dir("good");
    let (m, x, y) = fixture(&d);
    let logits = d.join("logits.npy");
    let (code, _, err) = saddle(&[
        "predict",
        "--model",
        s(&m),
        "--inputs",
        s(&x),
        "--out",
        s(&logits),
    ]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&logits).unwrap();
    assert!(
        bytes.starts_with(b"\x93NUMPY")
            && String::from_utf8_lossy(&bytes[..128]).contains("(4, 10)")
    );
    let adv = d.join("adv.npy");
    let png = d.join("grid.png");
    let args = [
        "attack",
        "--model",
        s(&m),
        "--inputs",
        s(&x),
        "--labels",
        s(&y),
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--steps",
        "5",
        "--out",
        s(&adv),
        "--png",
        s(&png),
    ];
    let (code, _, err) = saddle(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("accuracy under attack"), "{err}");
    let a = std::fs::read(&adv).unwrap();
    // Header (64-byte aligned) + 4·784 float32 values, each within 0.3 of the input and in [0,1].
    let vals: Vec<f32> = a[a.len() - 4 * 784 * 4..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (i, v) in vals.iter().enumerate() {
        let x0 = (i % 97) as f32 / 97.0;
        assert!(
            (0.0..=1.0).contains(v) && (v - x0).abs() <= 0.3 + 1e-6,
            "pixel {i}: {v} vs {x0}"
        );
    }
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn every_bad_input_is_one_line_and_status_2() {
    let d = dir("bad");
    let (m, x, y) = fixture(&d);
    let out = d.join("o.npy");
    let missing = d.join("nope.safetensors");
    fails_with(
        &[
            "predict",
            "--model",
            s(&missing),
            "--inputs",
            s(&x),
            "--out",
            s(&out),
        ],
        "cannot read model",
    );
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file at all").unwrap();
    fails_with(
        &[
            "predict",
            "--model",
            s(&junk),
            "--inputs",
            s(&x),
            "--out",
            s(&out),
        ],
        "safetensors",
    );
    let wrong_shape = d.join("w.npy");
    f32_npy(&wrong_shape, &[2, 28, 28], &vec![0.5; 2 * 784]);
    fails_with(
        &[
            "predict",
            "--model",
            s(&m),
            "--inputs",
            s(&wrong_shape),
            "--out",
            s(&out),
        ],
        "shape",
    );
    let out_of_range = d.join("r.npy");
    f32_npy(&out_of_range, &[1, 1, 28, 28], &vec![255.0; 784]);
    fails_with(
        &[
            "predict",
            "--model",
            s(&m),
            "--inputs",
            s(&out_of_range),
            "--out",
            s(&out),
        ],
        "[0, 1]",
    );
    let corrupt = d.join("c.npy");
    std::fs::write(&corrupt, b"\x93NUMPY\x01\x00\xff\xff{'descr'").unwrap();
    fails_with(
        &[
            "predict",
            "--model",
            s(&m),
            "--inputs",
            s(&corrupt),
            "--out",
            s(&out),
        ],
        "npy",
    );
    let labels_bad = d.join("lb.npy");
    i64_npy(&labels_bad, &[0, 1, 2, 10]);
    let base = |lab: &Path, eps: &str| -> Vec<String> {
        [
            "attack",
            "--model",
            s(&m),
            "--inputs",
            s(&x),
            "--labels",
            s(lab),
            "--attack",
            "pgd",
            "--eps",
            eps,
            "--out",
            s(&out),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect()
    };
    let run = |v: Vec<String>, want: &str| {
        fails_with(&v.iter().map(String::as_str).collect::<Vec<_>>(), want)
    };
    run(base(&labels_bad, "0.3"), "label 10");
    let labels_short = d.join("ls.npy");
    i64_npy(&labels_short, &[0, 1]);
    run(base(&labels_short, "0.3"), "[4]");
    run(base(&y, "-0.1"), "--eps");
    run(base(&y, "NaN"), "--eps");
    let mut zero_alpha = base(&y, "0.3");
    zero_alpha.extend(["--alpha".into(), "0".into()]);
    run(zero_alpha, "step");
    let mut zero_steps = base(&y, "0.3");
    zero_steps.extend(["--steps".into(), "0".into()]);
    run(zero_steps, "step");
    fails_with(
        &["eval", "--model", s(&m), "--attacks", "pgd4O"],
        "unknown attack",
    );
    fails_with(&["train", "--preset", "no-such-preset"], "unknown preset");
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, "epsilonn = 0.3\n").unwrap();
    fails_with(&["train", "--config", s(&cfg)], "epsilonn");
    std::fs::write(&cfg, "epsilon = 3.0\n").unwrap();
    fails_with(&["train", "--config", s(&cfg)], "epsilon");
    fails_with(
        &["train", "--preset", "mnist-smoke", "--threads", "0"],
        "--threads",
    );
}

#[test]
fn missing_datasets_say_how_to_get_them() {
    let d = dir("nodata");
    fails_with(
        &[
            "train",
            "--preset",
            "mnist-smoke",
            "--data-dir",
            s(&d),
            "--out",
            s(&d.join("run")),
        ],
        "cargo xtask download",
    );
    // CIFAR-10, for evaluation (a wide ResNet) and for training from a config.
    let wrn = d.join("wrn.safetensors");
    let arch: saddle_models::Arch = "wrn-10-1".parse().unwrap();
    let net = saddle_models::Model::build(&arch, Cpu::new(), 1).unwrap();
    std::fs::write(&wrn, net.to_safetensors().unwrap()).unwrap();
    let eval = [
        "eval",
        "--model",
        s(&wrn),
        "--data",
        "cifar10",
        "--data-dir",
        s(&d),
        "--eps",
        "0.03",
    ];
    fails_with(&eval, "cargo xtask download cifar10");
    let cfg = d.join("cifar.toml");
    std::fs::write(&cfg, "dataset = \"cifar10\"\narch = \"wrn-10-1\"\n").unwrap();
    let out = d.join("r");
    let train = [
        "train",
        "--config",
        s(&cfg),
        "--data-dir",
        s(&d),
        "--out",
        s(&out),
    ];
    fails_with(&train, "cargo xtask download cifar10");
}

#[test]
fn predict_on_the_wgpu_backend_matches_the_cpu() {
    if std::env::var("SADDLE_SKIP_GPU_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (SADDLE_SKIP_GPU_TESTS=1): needs a wgpu adapter");
        return;
    }
    let d = dir("gpu");
    let (m, x, _) = fixture(&d);
    let read = |p: &Path| -> Vec<f32> {
        let b = std::fs::read(p).unwrap();
        b[b.len() - 40 * 4..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (cpu_out, gpu_out) = (d.join("cpu.npy"), d.join("gpu.npy"));
    let (code, _, err) = saddle(&[
        "predict",
        "--model",
        s(&m),
        "--inputs",
        s(&x),
        "--out",
        s(&cpu_out),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = saddle(&[
        "predict",
        "--device",
        "any",
        "--model",
        s(&m),
        "--inputs",
        s(&x),
        "--out",
        s(&gpu_out),
    ]);
    assert_eq!(code, 0, "no wgpu adapter? install mesa-vulkan-drivers libvulkan1, or set SADDLE_SKIP_GPU_TESTS=1: {err}");
    // Logits of a 4-image batch: the op suite's GPU tolerance (1e-4 relative, 1e-5 absolute).
    for (c, g) in read(&cpu_out).iter().zip(read(&gpu_out)) {
        assert!((c - g).abs() <= 1e-5 + 1e-4 * c.abs(), "cpu {c} vs gpu {g}");
    }
}

/// The `wrn-madry-16-2` golden file of `tests/golden/` (PyTorch, float64): parameters as
/// `param.NAME`, 8 CIFAR-10 test images, reference logits and attacks.
const CIFAR_GOLDEN: &[u8] = include_bytes!("../../../tests/golden/cifar_wrn_madry.safetensors");

fn golden_f32(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn npy_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A file as PyTorch's `save_file(model.state_dict())` writes it — no metadata, an int64 scalar
/// `num_batches_tracked` per batch norm — runs through `saddle predict` and `saddle attack` with
/// `--arch`, giving PyTorch's logits (relative error ≤ 1e-5, the golden bar) and its one-step
/// PGD images (≥ 99.5% of pixels within 1e-6); without `--arch`, or with the wrong one, it is
/// a one-line error.
#[test]
fn a_pytorch_state_dict_of_the_wide_resnet_runs_with_arch() {
    use safetensors::tensor::{Dtype, TensorView};
    let d = dir("wrn");
    let st = safetensors::SafeTensors::deserialize(CIFAR_GOLDEN).unwrap();
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, v) in st.tensors() {
        if let Some(n) = name.strip_prefix("param.") {
            if let Some(bn) = n.strip_suffix(".running_mean") {
                let count = 1i64.to_le_bytes().to_vec();
                entries.push((
                    format!("{bn}.num_batches_tracked"),
                    Dtype::I64,
                    vec![],
                    count,
                ));
            }
            entries.push((
                n.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            ));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(n, t, s, b)| (n.clone(), TensorView::new(*t, s.clone(), b).unwrap()))
        .collect();
    let model = d.join("state_dict.safetensors");
    std::fs::write(&model, safetensors::serialize(views, None).unwrap()).unwrap();
    let x = d.join("x.npy");
    f32_npy(&x, &[8, 3, 32, 32], &golden_f32(&st, "input.x"));
    let labels: Vec<i64> = st
        .tensor("input.y")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let y = d.join("y.npy");
    i64_npy(&y, &labels);

    let logits = d.join("logits.npy");
    let predict = |arch: Option<&'static str>| {
        let mut a = vec!["predict", "--model", s(&model), "--inputs", s(&x)];
        a.extend(["--out", s(&logits)]);
        a.extend(arch.map(|arch| ["--arch", arch]).into_iter().flatten());
        a
    };
    let (code, _, err) = saddle(&predict(Some("wrn-madry-16-2")));
    assert_eq!(code, 0, "{err}");
    let (got, want) = (npy_f32(&logits), golden_f32(&st, "out.eval.logits"));
    let num: f64 = got
        .iter()
        .zip(&want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    assert!(
        got.len() == 80 && rel <= 1e-5,
        "logits relative error {rel:e}"
    );

    fails_with(&predict(None), "--arch");
    fails_with(
        &predict(Some("wrn-16-2")),
        "block1.layer.0.convShortcut.weight",
    );
    fails_with(&predict(Some("resnet-50")), "unknown architecture");

    let adv = d.join("adv.npy");
    let eps = format!("{}", 8.0f32 / 255.0);
    let alpha = format!("{}", 2.0f32 / 255.0);
    let (code, _, err) = saddle(&[
        "attack",
        "--model",
        s(&model),
        "--arch",
        "wrn-madry-16-2",
        "--inputs",
        s(&x),
        "--labels",
        s(&y),
        "--attack",
        "pgd",
        "--eps",
        &eps,
        "--alpha",
        &alpha,
        "--steps",
        "1",
        "--no-random-start",
        "--out",
        s(&adv),
    ]);
    assert_eq!(code, 0, "{err}");
    let (got, want) = (npy_f32(&adv), golden_f32(&st, "out.pgd_eps8_alpha2_steps1"));
    let close = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| (*a - *b).abs() <= 1e-6)
        .count();
    assert!(
        got.len() == want.len() && close as f64 >= 0.995 * want.len() as f64,
        "{close} of {} pixels agree with PyTorch's PGD step",
        want.len()
    );
}

/// An untrained `wrn-10-1` (the smallest CIFAR-10 network) in `d`.
fn tiny_cifar_model(d: &Path) -> PathBuf {
    let wrn = d.join("wrn.safetensors");
    let arch: saddle_models::Arch = "wrn-10-1".parse().unwrap();
    let net = saddle_models::Model::build(&arch, Cpu::new(), 7).unwrap();
    std::fs::write(&wrn, net.to_safetensors().unwrap()).unwrap();
    wrn
}

fn close(v: &serde_json::Value, want: f32) -> bool {
    v.as_f64()
        .is_some_and(|v| (v - f64::from(want)).abs() < 1e-7)
}

/// Each attack row of an evaluation JSON as (name, steps, restarts, loss, random start).
fn attack_rows(j: &serde_json::Value) -> Vec<(String, u64, u64, String, bool)> {
    j["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["steps"].as_u64().unwrap(),
                a["restarts"].as_u64().unwrap(),
                a["loss"].as_str().unwrap().to_string(),
                a["random_start"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The worst case per image is at most the natural accuracy and every attack's accuracy.
fn worst_case_is_below_every_row(j: &serde_json::Value) {
    let worst = j["worst_case_accuracy"].as_f64().unwrap();
    assert!(worst <= j["natural_accuracy"].as_f64().unwrap(), "{j}");
    for a in j["attacks"].as_array().unwrap() {
        assert!(worst <= a["accuracy"].as_f64().unwrap(), "{j}");
    }
}

/// `saddle eval --data cifar10` with no `--eps`, `--alpha` or `--attacks` is the paper's Table 2
/// setting: ε = 8/255, steps of 2/255, FGSM, PGD-7, PGD-20 and CW-30 (κ = 0) from random starts,
/// every hyperparameter in the JSON, and the worst case per image over the four.
#[test]
fn eval_on_cifar10_defaults_to_the_papers_table_2_attacks() {
    let Some(root) = real_data("cifar10") else {
        return;
    };
    let d = dir("cifar-eval");
    let wrn = tiny_cifar_model(&d);
    let out = d.join("eval.json");
    let (code, stdout, err) = saddle(&[
        "eval",
        "--model",
        s(&wrn),
        "--data",
        "cifar10",
        "--data-dir",
        s(&root),
        "--limit",
        "20",
        "--batch-size",
        "10",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let j = read_json(&out);
    assert_eq!(j["data"], "cifar10");
    assert_eq!(j["examples"], 20);
    assert!(close(&j["epsilon"], 8.0 / 255.0), "{j}");
    assert!(close(&j["alpha"], 2.0 / 255.0), "{j}");
    let rows = attack_rows(&j);
    let want = [
        ("fgsm", 1, 1, "xent", false),
        ("pgd7", 7, 1, "xent", true),
        ("pgd20", 20, 1, "xent", true),
        ("cw30", 30, 1, "cw", true),
    ];
    assert_eq!(rows.len(), want.len(), "{j}");
    for (got, want) in rows.iter().zip(want) {
        assert_eq!(
            (got.0.as_str(), got.1, got.2, got.3.as_str(), got.4),
            want,
            "{j}"
        );
    }
    for a in j["attacks"].as_array().unwrap() {
        assert!(close(&a["epsilon"], 8.0 / 255.0), "{a}");
        let step = if a["name"] == "fgsm" {
            8.0 / 255.0
        } else {
            2.0 / 255.0
        };
        assert!(close(&a["alpha"], step), "{a}");
        assert_eq!(a["seed"], 0, "{a}");
        assert!(a["seconds"].as_f64().is_some(), "{a}");
    }
    assert_eq!(j["attacks"][3]["kappa"], 0.0);
    assert_eq!(
        j["worst_case_over"],
        serde_json::json!(["fgsm", "pgd7", "pgd20", "cw30"])
    );
    worst_case_is_below_every_row(&j);
    for name in ["natural", "fgsm", "pgd7", "pgd20", "cw30", "worst-case"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "no {name} row: {stdout}"
        );
    }
}

/// Explicit `--eps`, `--alpha` and `--attacks` win over the data set's defaults; `paper` in the
/// list is the data set's default list, and `cwKxR` is PGD-K on the CW loss with R restarts.
#[test]
fn eval_flags_win_over_the_data_sets_defaults() {
    let Some(root) = real_data("cifar10") else {
        return;
    };
    let d = dir("cifar-flags");
    let wrn = tiny_cifar_model(&d);
    let out = d.join("eval.json");
    let base = [
        "eval",
        "--model",
        s(&wrn),
        "--data",
        "cifar10",
        "--data-dir",
        s(&root),
        "--limit",
        "4",
        "--out",
        s(&out),
    ];
    let mut args = base.to_vec();
    args.extend(["--eps", "0.02", "--attacks", "paper,cw3x2", "--seed", "5"]);
    let (code, _, err) = saddle(&args);
    assert_eq!(code, 0, "{err}");
    let j = read_json(&out);
    // α follows an explicit ε as ε/4 (the paper's 2/255 at 8/255).
    assert!(
        close(&j["epsilon"], 0.02) && close(&j["alpha"], 0.005),
        "{j}"
    );
    let names: Vec<String> = attack_rows(&j).into_iter().map(|r| r.0).collect();
    assert_eq!(names, ["fgsm", "pgd7", "pgd20", "cw30", "cw3x2"], "{j}");
    let cw = &j["attacks"][4];
    assert_eq!(
        (&cw["steps"], &cw["restarts"], &cw["loss"], &cw["seed"]),
        (
            &serde_json::json!(3),
            &serde_json::json!(2),
            &serde_json::json!("cw"),
            &serde_json::json!(5)
        ),
        "{cw}"
    );
    worst_case_is_below_every_row(&j);

    let mut args = base.to_vec();
    args.extend(["--alpha", "0.001", "--attacks", "pgd2"]);
    let (code, _, err) = saddle(&args);
    assert_eq!(code, 0, "{err}");
    let j = read_json(&out);
    assert!(
        close(&j["epsilon"], 8.0 / 255.0) && close(&j["alpha"], 0.001),
        "{j}"
    );
    assert!(close(&j["attacks"][0]["alpha"], 0.001), "{j}");
    assert_eq!(
        attack_rows(&j),
        [("pgd2".into(), 2, 1, "xent".into(), true)]
    );
}

/// MNIST keeps Table 1's defaults: ε = 0.3, step 0.01, and its six attacks.
#[test]
fn eval_on_mnist_keeps_the_papers_table_1_defaults() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("mnist-eval");
    let (m, _, _) = fixture(&d);
    let out = d.join("eval.json");
    let (code, _, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "4",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let j = read_json(&out);
    assert!(
        close(&j["epsilon"], 0.3) && close(&j["alpha"], 0.3 / 30.0),
        "{j}"
    );
    let rows = attack_rows(&j);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["fgsm", "pgd40", "pgd100", "cw", "cw+", "targeted"]);
    let cw: Vec<(u64, &str)> = rows[3..5].iter().map(|r| (r.1, r.3.as_str())).collect();
    assert_eq!(cw, [(40, "cw"), (40, "cw")]);
    assert_eq!(
        (&j["attacks"][3]["kappa"], &j["attacks"][4]["kappa"]),
        (&serde_json::json!(0.0), &serde_json::json!(50.0))
    );
    assert_eq!(j["attacks"][5]["targeting"], "least-likely");
    worst_case_is_below_every_row(&j);
}

/// `--attacks apgd-ce,apgd-dlr,apgd-t,square200` runs AutoAttack's gradient stages with its
/// settings and the gradient-free Square attack, each listed with every hyperparameter in the
/// JSON.
#[test]
fn eval_runs_apgd_with_autoattacks_settings() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("mnist-apgd");
    let (m, _, _) = fixture(&d);
    let out = d.join("eval.json");
    let (code, stdout, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "6",
        "--attacks",
        "apgd-ce,apgd-dlr,apgd-t,square200",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("APGD-T (targeted DLR), 100 steps, 9 targets"),
        "{stdout}"
    );
    let j = read_json(&out);
    let rows = attack_rows(&j);
    let got: Vec<(&str, u64, &str)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1, r.3.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("apgd-ce", 100, "xent"),
            ("apgd-dlr", 100, "dlr"),
            ("apgd-t", 100, "dlr-targeted"),
            ("square200", 200, "margin")
        ]
    );
    assert_eq!(j["attacks"][3]["queries"], 200);
    let t = &j["attacks"][2];
    assert_eq!(t["target_classes"], 9, "{t}");
    assert_eq!(
        t["checkpoints"],
        serde_json::json!([22, 41, 57, 70, 80, 87, 93, 99]),
        "{t}"
    );
    assert!(
        close(&t["initial_step"], 0.6) && close(&t["momentum"], 0.75),
        "{t}"
    );
    worst_case_is_below_every_row(&j);
}

/// The rows of a boolean `.npy` file written by `--per-example`: (shape, entries).
fn bool_npy(p: &Path) -> (Vec<usize>, Vec<bool>) {
    let bytes = std::fs::read(p).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '|b1'"), "{header}");
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let body = &bytes[10 + hlen..];
    assert!(body.iter().all(|&v| v <= 1), "booleans are 0 or 1");
    (shape, body.iter().map(|&v| v == 1).collect())
}

/// `--cascade` runs each attack only on the images the earlier ones left correct (AutoAttack's
/// way), so each column of `--per-example` implies the one before it; the rows agree with the
/// JSON's accuracies; and the sanity checks are in the JSON, passing on a working model.
#[test]
fn eval_cascades_and_writes_per_example_results_and_sanity_checks() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("mnist-cascade");
    let (m, _, _) = fixture(&d);
    let (out, pe) = (d.join("eval.json"), d.join("per.npy"));
    let (code, _, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "30",
        "--eps",
        "0.1",
        "--attacks",
        "fgsm,pgd5,apgd-ce",
        "--cascade",
        "--per-example",
        s(&pe),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let j = read_json(&out);
    assert_eq!(j["cascade"], true);
    let (shape, v) = bool_npy(&pe);
    assert_eq!(shape, [30, 5], "clean, 3 attacks, worst case");
    let col = |c: usize| (0..30).map(|i| v[i * 5 + c]).collect::<Vec<bool>>();
    let frac = |c: usize| col(c).iter().filter(|&&b| b).count() as f64 / 30.0;
    assert!((frac(0) - j["natural_accuracy"].as_f64().unwrap()).abs() < 1e-9);
    for c in 1..4 {
        let acc = j["attacks"][c - 1]["accuracy"].as_f64().unwrap();
        assert!(
            (frac(c) - acc).abs() < 1e-9,
            "column {c}: {} vs {acc}",
            frac(c)
        );
        for i in 0..30 {
            assert!(
                !v[i * 5 + c] || v[i * 5 + c - 1],
                "image {i}: stage {c} after a break"
            );
        }
    }
    assert_eq!(
        col(4),
        col(3),
        "in a cascade the last stage is the worst case"
    );
    let checks: Vec<(&str, bool)> = j["sanity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["check"].as_str().unwrap(), f["ok"].as_bool().unwrap()))
        .collect();
    for want in [
        "deterministic model",
        "outputs are logits",
        "ε = 0 gives the clean accuracy",
    ] {
        assert!(checks.contains(&(want, true)), "{want}: {checks:?}");
    }
    // Deterministic, logits, gradients, ε = 0, rising ε, ε = 1, and convergence (pgd10x1, the
    // first gradient stage with a step count, on the images FGSM left correct).
    assert_eq!(checks.len(), 7, "{checks:?}");
    assert!(checks.iter().any(|c| c.0 == "converged"), "{checks:?}");
    let conv = j["sanity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "converged")
        .unwrap();
    assert!(
        conv["evidence"]
            .as_str()
            .unwrap()
            .starts_with("pgd10x1 leaves"),
        "{conv}"
    );
}

/// `--norm l2`: every attack in the L2 ball (PGD, the fast gradient method, HopSkipJump), the
/// radius and norm in the JSON, and HopSkipJump refused under L∞.
#[test]
fn eval_in_the_l2_ball_with_a_decision_based_attack() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("mnist-l2");
    let (m, _, _) = fixture(&d);
    let out = d.join("eval.json");
    let (code, stdout, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "12",
        "--norm",
        "l2",
        "--eps",
        "1.5",
        "--attacks",
        "fgsm,pgd20,hsj400",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("L2 ε = 1.5"), "{stdout}");
    assert!(
        stdout.contains("HopSkipJump (decision-based), 400 queries, L2"),
        "{stdout}"
    );
    let j = read_json(&out);
    assert_eq!(j["norm"], "l2");
    assert!(close(&j["epsilon"], 1.5), "{j}");
    assert!(close(&j["alpha"], 0.15), "L2 default step ε/10: {j}");
    let rows = attack_rows(&j);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["fgsm", "pgd20", "hsj400"]);
    for a in j["attacks"].as_array().unwrap() {
        assert_eq!(a["norm"], "l2", "{a}");
        assert!(a["accuracy"].as_f64().unwrap() <= j["natural_accuracy"].as_f64().unwrap());
    }
    assert_eq!(j["attacks"][2]["queries"], 400);
    // HopSkipJump is gradient-free: the sanity checks compare it with the gradient attacks.
    let checks: Vec<&str> = j["sanity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert!(
        checks.contains(&"gradient-free attack finds no more"),
        "{checks:?}"
    );
    let (code, _, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "2",
        "--attacks",
        "hsj",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--norm l2"), "{err}");
    let (code, _, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "2",
        "--norm",
        "l2",
        "--eps",
        "-1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("L2 radius"), "{err}");
}

/// `--attacks autoattack` is AutoAttack's standard version: APGD-CE, APGD-T, FAB-T and Square
/// as a cascade, so the accuracy never rises from one stage to the next and the last stage is
/// the worst case.
#[test]
fn eval_autoattack_is_the_standard_cascade() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("mnist-autoattack");
    let (m, _, _) = fixture(&d);
    let out = d.join("eval.json");
    let (code, stdout, err) = saddle(&[
        "eval",
        "--model",
        s(&m),
        "--data-dir",
        s(&root),
        "--limit",
        "40",
        "--eps",
        "0.05",
        "--attacks",
        "autoattack",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("FAB-T, 100 steps, 9 targets"), "{stdout}");
    let j = read_json(&out);
    assert_eq!(j["cascade"], true);
    let rows = attack_rows(&j);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["apgd-ce", "apgd-t", "fab-t", "square"]);
    let mut last = j["natural_accuracy"].as_f64().unwrap();
    assert!(last > 0.0, "some image to attack: {j}");
    for a in j["attacks"].as_array().unwrap() {
        let acc = a["accuracy"].as_f64().unwrap();
        assert!(acc <= last, "{j}");
        last = acc;
    }
    assert_eq!(j["worst_case_accuracy"].as_f64(), Some(last), "{j}");
    assert_eq!(j["attacks"][3]["queries"], 5000);
}

/// A network whose weights are all zero outputs the same logits for every image: its input
/// gradients are zero and no attack can move it, which the sanity checks must flag.
#[test]
fn sanity_checks_flag_a_model_whose_gradients_vanish() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("mnist-flat");
    let model = d.join("flat.safetensors");
    let mut net = MnistNet::new(Cpu::new(), 1, 3).unwrap();
    for t in net.params_mut().tensors_mut() {
        *t = Cpu::new()
            .zeros(saddle_tensor::TensorLike::dims(t))
            .unwrap();
    }
    std::fs::write(&model, net.to_safetensors().unwrap()).unwrap();
    let out = d.join("eval.json");
    let (code, stdout, err) = saddle(&[
        "eval",
        "--model",
        s(&model),
        "--data-dir",
        s(&root),
        "--limit",
        "20",
        "--attacks",
        "pgd5",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    // Every image is predicted class 0 (the first of equal logits): the test set's first 20
    // images hold three 0s.
    let j = read_json(&out);
    assert!(close(&j["natural_accuracy"], 0.15), "{j}");
    assert!(
        stdout.contains("WARNING (non-zero input gradients): 3 of 3 correctly classified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("WARNING (nothing is robust at ε = 1)"),
        "{stdout}"
    );
}

/// Bad `saddle eval` flags are one line each, before any data is read.
#[test]
fn eval_rejects_bad_radii_steps_and_attack_names() {
    let d = dir("eval-bad");
    let (m, _, _) = fixture(&d);
    let eval = |extra: &[&str], want: &str| {
        let mut a = vec!["eval", "--model", s(&m), "--data-dir", s(&d)];
        a.extend(extra);
        fails_with(&a, want);
    };
    for data in ["mnist", "cifar10"] {
        eval(
            &["--data", data, "--eps", "NaN"],
            "--eps NaN: expected a number in [0, 1]",
        );
        eval(
            &["--data", data, "--eps", "-0.1"],
            "--eps -0.1: expected a number in [0, 1]",
        );
        eval(&["--data", data, "--eps", "1.5"], "[0, 1]");
        eval(&["--data", data, "--alpha", "-1"], "--alpha");
        eval(&["--data", data, "--alpha", "NaN"], "--alpha");
        eval(
            &["--data", data, "--attacks", "cw3O"],
            "unknown attack 'cw3O'",
        );
        eval(
            &["--data", data, "--attacks", "pgd7,deepfool"],
            "known: fgsm, pgdK",
        );
    }
    eval(&["--data", "imagenet"], "--data imagenet");
}

/// `--split train --offset N` evaluates the held-out tail of the training set that recipes are
/// chosen on: the JSON says which images, the count stops at the split's end, the natural
/// accuracy is the model's on exactly those images (computed here directly), and an offset
/// past the end is a one-line error.
#[test]
fn eval_on_the_held_out_tail_of_the_training_set() {
    use saddle_tensor::Backend;
    let Some(root) = real_data("cifar10") else {
        return;
    };
    let d = dir("cifar-holdout");
    let wrn = tiny_cifar_model(&d);
    let out = d.join("eval.json");
    let args = |offset: &str| {
        vec![
            "eval".to_string(),
            "--model".into(),
            s(&wrn).into(),
            "--data".into(),
            "cifar10".into(),
            "--data-dir".into(),
            s(&root).into(),
            "--split".into(),
            "train".into(),
            "--offset".into(),
            offset.into(),
            "--limit".into(),
            "40".into(),
            "--attacks".into(),
            "fgsm".into(),
            "--out".into(),
            s(&out).into(),
        ]
    };
    let a: Vec<String> = args("49970");
    let (code, stdout, err) = saddle(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("(train images 49970–49999)"),
        "the table names the images it ran on:\n{stdout}"
    );
    let j = read_json(&out);
    assert_eq!(
        (j["split"].as_str(), j["offset"].as_u64()),
        (Some("train"), Some(49970))
    );
    assert_eq!(
        j["examples"], 30,
        "40 asked from 49,970: 30 images are left"
    );

    let train =
        saddle_data::cifar10::load(root.join("cifar10"), saddle_data::Split::Train).unwrap();
    let idx: Vec<usize> = (49970..50000).collect();
    let (xs, ys) = train.batch(&idx).unwrap();
    let b = Cpu::new();
    let x = b.from_vec(&train.batch_shape(idx.len()), xs).unwrap();
    let bytes = std::fs::read(&wrn).unwrap();
    let net = saddle_models::Model::load(b, &bytes, None).unwrap();
    let z = b.to_vec(&net.logits(&x).unwrap()).unwrap();
    let hits = saddle_models::argmax_rows(&z, 10)
        .iter()
        .zip(&ys)
        .filter(|(p, y)| **p as f32 == **y)
        .count();
    assert!(
        (j["natural_accuracy"].as_f64().unwrap() - hits as f64 / 30.0).abs() < 1e-9,
        "{j}"
    );

    let a = args("50000");
    let (code, _, err) = saddle(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2);
    assert!(
        err.contains("--offset 50000") && err.lines().count() == 1,
        "{err}"
    );
}

/// `--robust-check N`: the check images are held out after `train_limit`, every check is a line
/// of metrics.jsonl, and `--steps --stretch-schedule` writes the stretched schedule.
#[test]
fn train_with_a_robust_check_and_a_stretched_schedule() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("robust-check");
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        "model_scale = 1\nmax_num_training_steps = 40\ntraining_batch_size = 20\n\
         train_limit = 1000\nk = 2\na = 0.15\nnum_output_steps = 5\n\
         [learning_rate]\nkind = \"one_cycle\"\nmax = 0.003\ntotal = 40\nwarmup = 0.5\ndiv = 10.0\n\
         [robust_check]\nexamples = 30\nk = 3\n",
    )
    .unwrap();
    let out = d.join("run");
    let (code, _, err) = saddle(&[
        "train",
        "--config",
        s(&cfg),
        "--data-dir",
        s(&root),
        "--out",
        s(&out),
        "--steps",
        "20",
        "--stretch-schedule",
        "--robust-check",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("PGD-3") && err.contains("training images 1000..1030 (held out"),
        "{err}"
    );
    assert!(err.contains("check at step 20"), "{err}");
    let written = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(written.contains("total = 20"), "{written}");
    assert!(written.contains("[robust_check]") && written.contains("every = 10"));
    let checks: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|j: &serde_json::Value| j.get("check_pgd_accuracy").is_some())
        .collect();
    let steps: Vec<u64> = checks.iter().map(|j| j["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [10, 20]);
    for j in &checks {
        assert_eq!(j["check_examples"], 30);
        let (n, p) = (
            j["check_natural_accuracy"].as_f64().unwrap(),
            j["check_pgd_accuracy"].as_f64().unwrap(),
        );
        // Accuracies of 30 images: multiples of 1/30.
        for v in [n, p] {
            assert!((v * 30.0 - (v * 30.0).round()).abs() < 1e-4, "{j}");
        }
    }
    fails_with(
        &["train", "--preset", "mnist-smoke", "--stretch-schedule"],
        "--steps",
    );
}
