//! The crate layering of DESIGN.md, enforced: each saddle crate may depend (normal, build or
//! dev dependencies: a test, example or bench of a crate uses only what is below it) only on
//! the saddle crates below it. Reads `cargo metadata`. Also the part of the documentation that
//! can drift mechanically: every workspace package has a README and a line in ARCHITECTURE.md's
//! code map.

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
        "saddle-cli" | "xtask" | "saddle-tests" | "saddle-examples" => return None, // anything
        _ => &[],
    })
}

/// `cargo metadata --no-deps` of the workspace.
fn metadata() -> serde_json::Value {
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
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(crate, dependency)` edges between workspace packages, from `cargo metadata`.
fn edges() -> Vec<(String, String, String)> {
    let v = metadata();
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
            // A crate's dev-dependency on itself turns on a feature for its own tests
            // (saddle-tensor's `testing`); it is no edge between layers.
            _ if from == to => None,
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
    let own = vec![(
        "saddle-tensor".to_string(),
        "saddle-tensor".to_string(),
        "dev".to_string(),
    )];
    assert!(violations(&own).is_empty());
}

/// Each workspace package: its name and its folder relative to the workspace root.
fn packages() -> Vec<(String, String)> {
    let v = metadata();
    let root = v["workspace_root"].as_str().unwrap().to_string();
    v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = p["manifest_path"].as_str().unwrap();
            let dir = std::path::Path::new(manifest).parent().unwrap();
            let rel = dir
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (p["name"].as_str().unwrap().to_string(), rel)
        })
        .collect()
}

/// The first word of each line of ARCHITECTURE.md's code map (the code block under
/// `## Code map`).
fn code_map(architecture: &str) -> Vec<String> {
    let after = architecture
        .split_once("## Code map")
        .map(|(_, a)| a)
        .unwrap_or("");
    let block = after.split("```").nth(1).unwrap_or("");
    block
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// What a package is called in the code map: its name for a crate under `crates/` or at the
/// top (`xtask`), its folder with a slash for a folder of programs (`tests/`, `examples/`).
fn missing_from_docs(
    packages: &[(String, String)],
    map: &[String],
    has_readme: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, dir) in packages {
        if !has_readme(dir) {
            out.push(format!(
                "{name}: no README.md in {dir}/ (write one: what it is, the one thing to \
                 know, a minimal example, its place in the layers)"
            ));
        }
        let folder = format!("{dir}/");
        if !map.iter().any(|w| w == name || *w == folder) {
            out.push(format!(
                "{name}: not in ARCHITECTURE.md's code map (add a line `{name}  what it \
                 holds` to the block under `## Code map`)"
            ));
        }
    }
    out
}

#[test]
fn every_package_has_a_readme_and_a_line_in_the_code_map() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let map = code_map(&arch);
    let pkgs = packages();
    assert!(
        pkgs.len() >= 10,
        "cargo metadata lists the workspace: {pkgs:?}"
    );
    let missing = missing_from_docs(&pkgs, &map, |dir| {
        root.join(dir).join("README.md").is_file()
    });
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn a_package_missing_from_the_docs_is_named() {
    let arch = "# A\n## Code map\n```\nsaddle-tensor  shapes\ntests/  end to end\n```\n";
    let map = code_map(arch);
    assert_eq!(map, ["saddle-tensor", "tests/"]);
    let pkgs = [
        (
            "saddle-tensor".to_string(),
            "crates/saddle-tensor".to_string(),
        ),
        ("saddle-tests".to_string(), "tests".to_string()),
        ("saddle-new".to_string(), "crates/saddle-new".to_string()),
    ];
    let missing = missing_from_docs(&pkgs, &map, |dir| dir != "tests");
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(missing[0].starts_with("saddle-tests: no README.md in tests/"));
    assert!(missing[1].starts_with("saddle-new: not in ARCHITECTURE.md's code map"));
}
