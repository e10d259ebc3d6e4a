//! `saddle landscape`, `saddle inspect`, `saddle capacity` and `saddle transfer` end to end on
//! tiny models and budgets: the files they write, the consistency of their JSON, reuse of
//! trained models, and one-line errors for wrong inputs.

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
fn inspect_and_landscape_take_a_state_dict_with_arch() {
    // A CIFAR-10 wide ResNet saved as PyTorch would: weights and no saddle metadata.
    let d = dir("inspect-arch");
    let arch: saddle_models::Arch = "wrn-10-1".parse().unwrap();
    let b = Cpu::new();
    let net = saddle_models::Model::build(&arch, b, 7).unwrap();
    let host = net.params().to_host(&b, "").unwrap();
    let p = d.join("state_dict.safetensors");
    let bytes = saddle_models::params::serialize_safetensors(&host, Default::default()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    let out = d.join("out");
    fails_with(&["inspect", "--model", s(&p), "--out", s(&out)], "--arch");
    let (code, stdout, err) = saddle(&[
        "inspect",
        "--model",
        s(&p),
        "--arch",
        "wrn-10-1",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("16 of 16 first-layer filters (conv1.weight, 3x3x3)"),
        "{stdout}"
    );
    assert!(is_png(&out.join("inspect.png")));
    fails_with(
        &[
            "inspect",
            "--model",
            s(&p),
            "--arch",
            "wrn-16-2",
            "--out",
            s(&out),
        ],
        "wrn-16-2",
    );
    let Some(root) = real_data("cifar10") else {
        return;
    };
    let (code, stdout, err) = saddle(&[
        "landscape",
        "--model",
        s(&p),
        "--arch",
        "wrn-10-1",
        "--data",
        "cifar10",
        "--data-dir",
        s(&root),
        "--images",
        "1",
        "--restarts",
        "3",
        "--steps",
        "2",
        "--threads",
        "1",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("max/median"), "{stdout}");
    let j = read_json(&out.join("landscape.json"));
    assert_eq!(
        j["eps"].as_f64().map(|e| (e * 255.0).round()),
        Some(8.0),
        "{j}"
    );
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

fn rows(j: &serde_json::Value) -> &Vec<serde_json::Value> {
    j["rows"].as_array().unwrap()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// `k / n` for a whole `k`: an accuracy over `n` images.
fn is_fraction_of(v: f64, n: f64) -> bool {
    (0.0..=1.0).contains(&v) && ((v * n).round() - v * n).abs() < 1e-9
}

#[test]
fn capacity_trains_each_model_once_and_draws_figure_4() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("capacity");
    let out = d.join("out");
    let args = |steps: &str| {
        vec![
            "capacity".to_string(),
            "--scales".into(),
            "1,2".into(),
            "--training".into(),
            "natural,pgd".into(),
            "--steps".into(),
            steps.into(),
            "--limit".into(),
            "50".into(),
            "--threads".into(),
            "1".into(),
            "--data-dir".into(),
            s(&root).into(),
            "--out".into(),
            s(&out).into(),
        ]
    };
    let run = |steps: &str| {
        let a = args(steps);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        saddle(&a)
    };
    let (code, stdout, err) = run("20");
    assert_eq!(code, 0, "{err}");
    assert!(is_png(&out.join("capacity.png")));
    assert!(is_svg(&out.join("capacity.svg")));
    let j = read_json(&out.join("capacity.json"));
    let keys: Vec<&str> = rows(&j)
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["natural-s1", "natural-s2", "pgd-s1", "pgd-s2"]);
    let models: Vec<PathBuf> = keys
        .iter()
        .map(|k| out.join("models").join(k).join("model.safetensors"))
        .collect();
    for (r, m) in rows(&j).iter().zip(&models) {
        assert!(m.is_file(), "{}", m.display());
        assert_eq!(r["steps"], 20);
        assert_eq!(r["examples"], 50);
        assert_eq!(r["reused"], false);
        for k in ["natural_accuracy", "fgsm_accuracy", "pgd_accuracy"] {
            assert!(is_fraction_of(f(&r[k]), 50.0), "{k}: {}", r[k]);
        }
        for k in [
            "adversarial_loss",
            "train_loss",
            "pgd_train_loss",
            "train_seconds",
        ] {
            assert!(f(&r[k]).is_finite() && f(&r[k]) >= 0.0, "{k}: {}", r[k]);
        }
        // An attack can turn a wrong image right (its random start, or a step across two
        // boundaries) but rarely: 5 images of 50 is a generous allowance.
        assert!(
            f(&r["pgd_accuracy"]) <= f(&r["natural_accuracy"]) + 0.1,
            "{r}"
        );
    }
    let wider = &rows(&j)[1];
    assert!(wider["parameters"].as_u64() > rows(&j)[0]["parameters"].as_u64());
    assert_eq!(
        rows(&j)[0]["adversarial_loss"],
        rows(&j)[0]["pgd_train_loss"]
    );
    assert_eq!(rows(&j)[2]["adversarial_loss"], rows(&j)[2]["train_loss"]);
    assert!(stdout.contains("training") && stdout.contains("pgd") && stdout.contains("natural"));
    assert_eq!(stdout.lines().count(), 5, "a header and 4 rows: {stdout}");

    // Again: every model is reused (files untouched), the numbers are the same.
    let before: Vec<_> = models.iter().map(|m| mtime(m)).collect();
    let (code, _, err) = run("20");
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("reusing").count(), 4, "{err}");
    let again = read_json(&out.join("capacity.json"));
    for (m, t) in models.iter().zip(&before) {
        assert_eq!(mtime(m), *t, "{} was written again", m.display());
    }
    for (a, b) in rows(&j).iter().zip(rows(&again)) {
        assert_eq!(b["reused"], true);
        for k in [
            "natural_accuracy",
            "fgsm_accuracy",
            "pgd_accuracy",
            "adversarial_loss",
        ] {
            assert_eq!(a[k], b[k], "{k}");
        }
        assert_eq!(a["train_seconds"], b["train_seconds"]);
    }

    // With --copies: the originals are reused, an independent copy of each is trained (the
    // next seed), and each copy's examples are carried over to its original.
    let mut a = args("20");
    a.push("--copies".into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, stdout, err) = saddle(&a);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("reusing").count(), 4, "{err}");
    assert_eq!(stdout.lines().count(), 9, "a header and 8 rows: {stdout}");
    assert!(is_png(&out.join("capacity-transfer.png")));
    assert!(is_svg(&out.join("capacity-transfer.svg")));
    let j = read_json(&out.join("capacity.json"));
    let copies = j["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 4);
    let seed = rows(&j)[0]["seed"].as_u64().unwrap();
    for (c, k) in copies.iter().zip(keys.iter()) {
        assert_eq!(c["key"], *k);
        let copy = format!("{k}-seed{}", seed + 1);
        assert_eq!(c["copy"], copy.as_str());
        assert!(out
            .join("models")
            .join(&copy)
            .join("model.safetensors")
            .is_file());
        let row = rows(&j).iter().find(|r| r["key"] == *k).unwrap();
        // The target's clean accuracy is the one of its own row; the copy's white-box numbers
        // those of the copy's row (same images, same attack seeds).
        let copy_row = rows(&j).iter().find(|r| r["key"] == copy.as_str()).unwrap();
        assert_eq!(c["natural_accuracy"], row["natural_accuracy"]);
        assert_eq!(c["copy_fgsm_accuracy"], copy_row["fgsm_accuracy"]);
        assert_eq!(c["copy_pgd_accuracy"], copy_row["pgd_accuracy"]);
        for k in ["fgsm_accuracy", "pgd_accuracy"] {
            assert!(is_fraction_of(f(&c[k]), 50.0), "{k}: {}", c[k]);
        }
        let cos = f(&c["gradient_cosine"]);
        // Independent models: related but far from identical gradients.
        assert!((-1.0..0.999).contains(&cos), "{c}");
        assert!(c["cosine_images"].as_u64().unwrap() <= 50);
    }

    // Models trained for another step count are not silently reused.
    let (code, _, err) = run("21");
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("another configuration"), "{err}");
}

#[test]
fn transfer_writes_the_matrix_and_gradient_cosines() {
    let Some(root) = real_data("mnist") else {
        return;
    };
    let d = dir("transfer");
    let a = mnist_model(&d, "a.safetensors", 1);
    let a2 = mnist_model(&d, "a2.safetensors", 2);
    let nat = mnist_model(&d, "nat.safetensors", 3);
    let b = mnist_model(&d, "b.safetensors", 4);
    let sources = format!("{},{},{}", s(&a), s(&a2), s(&nat));
    for attack in ["pgd", "fgsm"] {
        let out = d.join(format!("out-{attack}"));
        let (code, stdout, err) = saddle(&[
            "transfer",
            "--sources",
            &sources,
            "--target",
            s(&b),
            "--attack",
            attack,
            "--steps",
            "3",
            "--limit",
            "20",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--data-dir",
            s(&root),
            "--out",
            s(&out),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(is_png(&out.join("transfer.png")));
        assert!(is_svg(&out.join("transfer.svg")));
        assert!(stdout.contains("b (target)"), "{stdout}");
        let j = read_json(&out.join("transfer.json"));
        assert_eq!(j["examples"], 20);
        assert_eq!(j["attack"]["name"], attack);
        assert_eq!(j["target"], 3);
        let models = j["models"].as_array().unwrap();
        let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "a2", "nat", "b"]);
        let acc = j["accuracy"].as_array().unwrap();
        assert_eq!(acc.len(), 4);
        for (i, m) in models.iter().enumerate() {
            let row = acc[i].as_array().unwrap();
            assert_eq!(row.len(), 4);
            assert!(row.iter().all(|v| is_fraction_of(f(v), 20.0)));
            assert_eq!(m["white_box_accuracy"], row[i]);
            assert_eq!(m["target_accuracy"], row[3]);
            assert!(is_fraction_of(f(&m["natural_accuracy"]), 20.0));
            let c = f(&m["gradient_cosine"]);
            assert!((-1.0..=1.0).contains(&c), "{c}");
            assert_eq!(
                m["gradient_cosine_images"], 20,
                "no zero gradient at random init"
            );
            if i < 3 {
                // Independently initialised networks: far from the same gradients.
                assert!(c < 0.99, "{c}");
            }
        }
        // The target with itself: the same gradient (f64 cosine; 1e-9 is far above its
        // rounding, ~1e-15, and far below the others' distance from 1).
        let c = f(&models[3]["gradient_cosine"]);
        assert!((c - 1.0).abs() < 1e-9, "{c}");
        assert_eq!(models[3]["role"], "target");
    }
    // A target listed among the sources is attacked once.
    let out = d.join("out-same");
    let (code, _, err) = saddle(&[
        "transfer",
        "--sources",
        &format!("{},{}", s(&a), s(&b)),
        "--target",
        s(&b),
        "--limit",
        "5",
        "--steps",
        "2",
        "--threads",
        "1",
        "--data-dir",
        s(&root),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let j = read_json(&out.join("transfer.json"));
    assert_eq!(j["models"].as_array().unwrap().len(), 2);
    assert_eq!(j["target"], 1);
}

#[test]
fn capacity_and_transfer_wrong_inputs_are_one_line_errors() {
    let d = dir("errors-ct");
    let m = mnist_model(&d, "m.safetensors", 1);
    let wrn = cifar_model(&d);
    let missing = d.join("missing.safetensors");
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = d.join("out");
    let cap = |extra: &[&str], want: &str| {
        let mut v = vec!["capacity", "--out", s(&out), "--data-dir", s(&empty)];
        v.extend_from_slice(extra);
        fails_with(&v, want);
    };
    cap(&["--scales", "0"], "--scales");
    cap(&["--scales", "1,0"], "--scales");
    cap(&["--scales", ""], "--scales");
    cap(&["--scales", "1,two"], "--scales");
    cap(&["--scales", "2,2"], "twice");
    cap(
        &["--training", "natural,adam"],
        "unknown training mode 'adam'",
    );
    cap(&["--training", ""], "--training");
    cap(&["--steps", "0"], "--steps");
    cap(&["--limit", "0"], "--limit");
    cap(&["--data", "cifar10"], "--data");
    // No data set in the folder.
    cap(&["--scales", "1", "--training", "natural"], "mnist");
    let tr = |extra: &[&str], want: &str| {
        let mut v = vec!["transfer", "--out", s(&out), "--data-dir", s(&empty)];
        v.extend_from_slice(extra);
        fails_with(&v, want);
    };
    tr(
        &["--sources", s(&missing), "--target", s(&m)],
        "missing.safetensors",
    );
    tr(
        &["--sources", s(&m), "--target", s(&missing)],
        "missing.safetensors",
    );
    tr(
        &["--sources", s(&m), "--target", s(&wrn)],
        "different input shapes",
    );
    tr(
        &["--sources", s(&m), "--target", s(&m), "--limit", "0"],
        "--limit",
    );
    tr(
        &["--sources", s(&m), "--target", s(&m), "--attack", "cw"],
        "cw",
    );
    tr(
        &["--sources", s(&m), "--target", s(&m), "--eps", "2"],
        "--eps",
    );
    tr(&["--target", s(&m)], "required arguments");
    tr(&["--sources", s(&m)], "required arguments");
    assert!(!out.exists(), "nothing is written on an error");
}
