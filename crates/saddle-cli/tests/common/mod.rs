//! What the `saddle` binary's test files share: scratch folders, `.npy` writers, running the
//! binary, and finding the real data sets.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch folder for one test, unique to this test process.
pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("saddle-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `.npy` file (format 1.0) with the given dtype, shape and raw little-endian body.
pub fn npy(path: &Path, descr: &str, shape: &[usize], body: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(body);
    std::fs::write(path, out).unwrap();
}

pub fn f32_npy(path: &Path, shape: &[usize], v: &[f32]) {
    let body: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy(path, "<f4", shape, &body);
}

pub fn f64_npy(path: &Path, shape: &[usize], v: &[f64]) {
    let body: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy(path, "<f8", shape, &body);
}

pub fn i64_npy(path: &Path, v: &[i64]) {
    let body: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy(path, "<i8", &[v.len()], &body);
}

/// Runs the `saddle` binary: (exit status, stdout, stderr).
pub fn saddle(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_saddle"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The datasets root (`$SADDLE_DATASETS`, else `<workspace>/datasets`) when `name` is in it;
/// otherwise a failure saying how to get it, unless `SADDLE_SKIP_REAL_DATA=1` skips explicitly.
pub fn real_data(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("SADDLE_DATASETS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets"));
    if std::env::var("SADDLE_SKIP_REAL_DATA").as_deref() == Ok("1") {
        eprintln!("SKIPPED (SADDLE_SKIP_REAL_DATA=1): needs {name}");
        return None;
    }
    assert!(
        root.join(name).is_dir(),
        "{} is missing: run `cargo xtask download {name}` (or set SADDLE_SKIP_REAL_DATA=1 to \
         skip the real-data tests explicitly)",
        root.join(name).display()
    );
    Some(root)
}
