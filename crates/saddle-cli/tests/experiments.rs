//! `saddle landscape` and `saddle inspect` end to end on tiny models: the files they write,
//! the consistency of their JSON, and one-line errors for wrong inputs.

use std::path::{Path, PathBuf};

use saddle_models::{Classifier, MnistNet};
use saddle_tensor::cpu::Cpu;

mod common;
use common::{dir, read_json, real_data, s, saddle};

/// Runs `args`, expects status 2 and one line containing `want`.
fn fails_with(args: &[&str], want: &str) {
    let (code, _, err) = saddle(args);
    assert_eq!(code, 2, "{args:?} should fail with status 2; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(
        err.contains(want),
        "{args:?}: should mention '{want}': {err}"
    );
}

fn mnist_model(d: &Path, name: &str, seed: u64) -> PathBuf {
    let p = d.join(name);
    let net = MnistNet::new(Cpu::new(), 1, seed).unwrap();
    std::fs::write(&p, net.to_safetensors().unwrap()).unwrap();
    p
}

fn cifar_model(d: &Path) -> PathBuf {
    let p = d.join("wrn.safetensors");
    let arch: saddle_models::Arch = "wrn-10-1".parse().unwrap();
    let net = saddle_models::Model::build(&arch, Cpu::new(), 7).unwrap();
    std::fs::write(&p, net.to_safetensors().unwrap()).unwrap();
    p
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap()
}

fn is_png(p: &Path) -> bool {
    std::fs::read(p).unwrap().starts_with(b"\x89PNG\r\n\x1a\n")
}

fn is_svg(p: &Path) -> bool {
    std::fs::read_to_string(p).unwrap().contains("<svg")
}

#[test]
fn landscape_writes_curves_histograms_and_consistent_json() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("landscape");
    let nat = mnist_model(&d, "nat.safetensors", 1);
    let adv = mnist_model(&d, "adv.safetensors", 2);
    let out = d.join("out");
    let (code, stdout, err) = saddle(&[
        "landscape",
        "--model",
        s(&nat),
        "--model",
        s(&adv),
        "--data",
        "mnist",
        "--images",
        "2",
        "--restarts",
        "3",
        "--steps",
        "4",
        "--threads",
        "1",
        "--data-dir",
        s(&root),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    for f in ["landscape", "landscape-hist"] {
        assert!(is_png(&out.join(format!("{f}.png"))), "{f}.png");
        assert!(is_svg(&out.join(format!("{f}.svg"))), "{f}.svg");
    }
    assert!(stdout.contains("max/median"), "{stdout}");
    let j = read_json(&out.join("landscape.json"));
    assert_eq!(j["restarts"], 3);
    assert_eq!(j["steps"], 4);
    assert!((f(&j["eps"]) - 0.3).abs() < 1e-6);
    assert_eq!(j["labels"].as_array().unwrap().len(), 2);
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        let losses = m["losses"].as_array().unwrap();
        assert_eq!(losses.len(), 2, "one entry per image");
        for (i, img) in losses.iter().enumerate() {
            let img = img.as_array().unwrap();
            assert_eq!(img.len(), 3, "one curve per restart");
            let finals: Vec<f64> = img
                .iter()
                .map(|c| {
                    let c = c.as_array().unwrap();
                    assert_eq!(c.len(), 5, "the start and 4 steps");
                    assert!(c.iter().all(|v| f(v).is_finite() && f(v) >= 0.0));
                    f(c.last().unwrap())
                })
                .collect();
            let mut sorted = finals.clone();
            sorted.sort_by(f64::total_cmp);
            let sp = &m["spread"][i];
            assert_eq!(f(&sp["min"]), sorted[0]);
            assert_eq!(f(&sp["median"]), sorted[1]);
            assert_eq!(f(&sp["max"]), sorted[2]);
            assert!((f(&sp["max_over_median"]) - sorted[2] / sorted[1]).abs() < 1e-5);
            assert_eq!(f(&m["worst"][i]), sorted[2]);
        }
    }
}

#[test]
fn inspect_writes_filters_and_biases() {
    let d = dir("inspect");
    let a = mnist_model(&d, "a.safetensors", 1);
    let b = mnist_model(&d, "b.safetensors", 2);
    let out = d.join("out");
    let (code, stdout, err) = saddle(&[
        "inspect",
        "--model",
        s(&a),
        "--model",
        s(&b),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(is_png(&out.join("inspect.png")));
    assert!(is_svg(&out.join("inspect.svg")));
    assert!(stdout.contains("2 of 2 first-layer filters"), "{stdout}");
    let j = read_json(&out.join("inspect.json"));
    let net = MnistNet::new(Cpu::new(), 1, 1).unwrap();
    let want = Cpu::new();
    let bias = saddle_tensor::Backend::to_vec(&want, net.params().get("fc2.bias").unwrap());
    let m0 = &j["models"][0];
    assert_eq!(m0["filters"]["parameter"], "conv1.weight");
    assert_eq!(m0["filters"]["shape"], serde_json::json!([2, 1, 5, 5]));
    assert_eq!(m0["filters"]["weights"].as_array().unwrap().len(), 50);
    assert_eq!(m0["filters"]["nonzero"], 2);
    let got: Vec<f32> = m0["softmax_bias"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| f(v) as f32)
        .collect();
    assert_eq!(got, bias.unwrap());
    assert_eq!(j["models"].as_array().unwrap().len(), 2);
}

#[test]
fn wrong_inputs_are_one_line_errors() {
    let d = dir("errors");
    let m = mnist_model(&d, "m.safetensors", 1);
    let wrn = cifar_model(&d);
    let missing = d.join("missing.safetensors");
    let out = d.join("out");
    let land = |extra: &[&str]| {
        let mut v = vec!["landscape", "--out", s(&out)];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, want: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&a, want);
    };
    run(land(&["--model", s(&m), "--restarts", "0"]), "--restarts");
    run(land(&["--model", s(&m), "--steps", "0"]), "--steps");
    run(land(&["--model", s(&m), "--images", "0"]), "--images");
    run(land(&["--model", s(&missing)]), "missing.safetensors");
    run(
        land(&["--model", s(&m), "--model", s(&wrn)]),
        "different input shapes",
    );
    run(land(&["--model", s(&m), "--eps", "2"]), "--eps");
    run(land(&[]), "required arguments");
    fails_with(
        &["inspect", "--model", s(&missing), "--out", s(&out)],
        "missing.safetensors",
    );
    fails_with(
        &[
            "inspect",
            "--model",
            s(&m),
            "--model",
            s(&wrn),
            "--out",
            s(&out),
        ],
        "different input shapes",
    );
    assert!(!out.exists(), "nothing is written on an error");
}
