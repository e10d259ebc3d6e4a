//! The crate layering of DESIGN.md, enforced: each saddle crate may depend (normal, build or
//! dev dependencies: a test, example or bench of a crate uses only what is below it) only on
//! the saddle crates below it. Reads `cargo metadata`.

use std::collections::BTreeMap;
use std::process::Command;

fn allowed(krate: &str) -> Option<&'static [&'static str]> {
    Some(match krate {
        "saddle-tensor" => &[],
        "saddle-wgsl" => &["saddle-tensor"],
        "saddle-autograd" => &["saddle-tensor", "saddle-wgsl"],
        "saddle-data" => &["saddle-tensor"],
        "saddle-models" => &["saddle-autograd", "saddle-tensor", "saddle-wgsl"],
        "saddle-attacks" => &[
            "saddle-models",
            "saddle-autograd",
            "saddle-tensor",
            "saddle-wgsl",
        ],
        "saddle-train" => &[
            "saddle-attacks",
            "saddle-data",
            "saddle-models",
            "saddle-autograd",
            "saddle-tensor",
            "saddle-wgsl",
        ],
        "saddle-cli" | "xtask" | "saddle-tests" => return None, // may use anything
        _ => &[],
    })
}

/// `(crate, dependency)` edges between workspace packages, from `cargo metadata`.
fn edges() -> Vec<(String, String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<String> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut e = Vec::new();
    for p in v["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            let dn = d["name"].as_str().unwrap();
            let kind = d["kind"].as_str().unwrap_or("normal").to_string();
            if members.iter().any(|m| m == dn) {
                e.push((name.to_string(), dn.to_string(), kind));
            }
        }
    }
    e
}

fn violations(edges: &[(String, String, String)]) -> Vec<String> {
    edges
        .iter()
        .filter_map(|(from, to, kind)| match allowed(from) {
            Some(ok) if !ok.contains(&to.as_str()) => Some(format!(
                "{from} -> {to} ({kind} dependency) breaks the layering"
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn every_crate_depends_only_on_crates_below_it() {
    let e = edges();
    let mut by_crate: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b, _) in &e {
        by_crate.entry(a).or_default().push(b);
    }
    println!("workspace edges: {by_crate:?}");
    assert!(
        by_crate.contains_key("saddle-models"),
        "cargo metadata should list saddle-models' edges"
    );
    let bad = violations(&e);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn an_upward_edge_is_reported_by_name() {
    let e = vec![(
        "saddle-tensor".to_string(),
        "saddle-models".to_string(),
        "normal".to_string(),
    )];
    assert_eq!(
        violations(&e),
        vec!["saddle-tensor -> saddle-models (normal dependency) breaks the layering"]
    );
    let dev = vec![(
        "saddle-wgsl".to_string(),
        "saddle-models".to_string(),
        "dev".to_string(),
    )];
    assert_eq!(
        violations(&dev),
        vec!["saddle-wgsl -> saddle-models (dev dependency) breaks the layering"]
    );
    let down = vec![(
        "saddle-models".to_string(),
        "saddle-wgsl".to_string(),
        "dev".to_string(),
    )];
    assert!(violations(&down).is_empty());
}
