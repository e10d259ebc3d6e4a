//! Every file in this crate's `shaders/` folder (the workspace's top-level `shaders/` links to it)
//! parses and validates with naga (the WGSL front end wgpu itself uses), with no GPU: a machine
//! without an adapter still catches a broken shader. Each kernel file, with the preludes it
//! includes (`//! include prelude_*.wgsl`), holds exactly one compute kernel, `main`, and is the
//! source of exactly one kernel of the crate (no orphans, no kernel without its file); each
//! prelude is listed in `saddle_wgsl::PRELUDES`, validates on its own and is included somewhere.

use std::path::PathBuf;

use naga::valid::{Capabilities, ValidationFlags, Validator};

fn shader_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("shaders")
}

fn is_prelude(name: &str) -> bool {
    name.starts_with("prelude_")
}

/// The kernel files (not the preludes), sorted, with their text.
fn shader_files() -> Vec<(String, String)> {
    all_wgsl_files()
        .into_iter()
        .filter(|(n, _)| !is_prelude(n))
        .collect()
}

fn all_wgsl_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(shader_dir())
        .expect("the shaders/ folder exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(&p).expect("readable shader");
            (name, src)
        })
        .collect();
    files.sort();
    files
}

/// Parses and validates one WGSL source; the error names the file and shows naga's report.
fn validate(name: &str, src: &str) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| {
        format!(
            "{name}: parse error\n{}",
            e.emit_to_string_with_path(src, name)
        )
    })?;
    Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .map_err(|e| {
            format!(
                "{name}: validation error\n{}",
                e.emit_to_string_with_path(src, name)
            )
        })?;
    Ok(module)
}

#[test]
fn every_shader_parses_and_validates_with_naga() {
    let files = shader_files();
    assert!(
        files.len() >= 20,
        "expected the kernels in {:?}, found {}",
        shader_dir(),
        files.len()
    );
    let mut failures = Vec::new();
    for (name, src) in &files {
        // As the device gets it: the preludes included.
        let src = match saddle_wgsl::resolve_includes(name, src) {
            Ok(s) => s.into_owned(),
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        match validate(name, &src) {
            Ok(module) => {
                let eps: Vec<_> = module
                    .entry_points
                    .iter()
                    .map(|e| (e.name.clone(), e.stage))
                    .collect();
                if eps.len() != 1 || eps[0].0 != "main" || eps[0].1 != naga::ShaderStage::Compute {
                    failures.push(format!(
                        "{name}: expected one compute entry point `main`, found {eps:?}"
                    ));
                }
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} shader(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_prelude_is_listed_validates_alone_and_is_included() {
    let on_disk: Vec<(String, String)> = all_wgsl_files()
        .into_iter()
        .filter(|(n, _)| is_prelude(n))
        .collect();
    let mut listed: Vec<&str> = saddle_wgsl::PRELUDES.iter().map(|&(n, _)| n).collect();
    listed.sort_unstable();
    let names: Vec<&str> = on_disk.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names, listed,
        "shaders/prelude_*.wgsl and saddle_wgsl::PRELUDES"
    );
    for (name, src) in &on_disk {
        let embedded = saddle_wgsl::PRELUDES
            .iter()
            .find(|&&(n, _)| n == name)
            .unwrap()
            .1;
        assert_eq!(embedded, src, "{name} is embedded from its file");
        let module = validate(name, src).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            module.entry_points.is_empty(),
            "{name}: a prelude declares no entry point"
        );
        let directive = format!("{}{name}", saddle_wgsl::INCLUDE_DIRECTIVE);
        assert!(
            saddle_wgsl::Kernel::ALL
                .iter()
                .any(|k| k.source().lines().any(|l| l.trim() == directive)),
            "{name} is included by no kernel"
        );
    }
}

#[test]
fn includes_are_resolved_and_unknown_ones_are_errors() {
    // The shared GEMM core reaches all four GEMM kernels, once each.
    for k in [
        saddle_wgsl::Kernel::Matmul,
        saddle_wgsl::Kernel::Conv2d,
        saddle_wgsl::Kernel::Conv2dBackwardInput,
        saddle_wgsl::Kernel::Conv2dBackwardWeight,
    ] {
        let src = k.wgsl().unwrap();
        assert_eq!(src.matches("fn gemm_accumulate(").count(), 1, "{k:?}");
        assert!(
            !src.lines()
                .any(|l| l.trim().starts_with(saddle_wgsl::INCLUDE_DIRECTIVE)),
            "{k:?}"
        );
    }
    // A kernel without includes is passed through unchanged.
    let plain = saddle_wgsl::Kernel::Fill;
    assert_eq!(plain.wgsl().unwrap(), plain.source());

    let bad = "// a kernel\n//! include prelude_nope.wgsl\nfn main() {}\n";
    let err = saddle_wgsl::resolve_includes("bad.wgsl", bad)
        .unwrap_err()
        .to_string();
    for part in [
        "bad.wgsl",
        "line 2",
        "unknown include `prelude_nope.wgsl`",
        "prelude_gemm.wgsl",
    ] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    let nested = "//! include prelude_dlr.wgsl\n";
    let err = saddle_wgsl::resolve_includes("prelude_gemm.wgsl", nested)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prelude_gemm.wgsl, line 1"), "{err}");
}

#[test]
fn a_broken_shader_is_caught() {
    // The check can fail: a type error (f32 stored into a u32 array) is rejected.
    let bad = "@group(0) @binding(0) var<storage, read_write> o: array<u32>;\n\
               @compute @workgroup_size(1) fn main() { o[0] = 1.5; }";
    assert!(validate("bad.wgsl", bad).is_err());
    let unparsable = "@compute fn main( {";
    assert!(validate("unparsable.wgsl", unparsable).is_err());
}

#[test]
fn every_kernel_has_its_file_and_every_file_its_kernel() {
    let files: Vec<String> = shader_files().into_iter().map(|(n, _)| n).collect();
    let mut kernels: Vec<String> = saddle_wgsl::Kernel::ALL
        .iter()
        .map(|k| k.file_name().to_string())
        .collect();
    kernels.sort();
    assert_eq!(
        files, kernels,
        "shaders/ and saddle_wgsl::Kernel::ALL must list the same kernels"
    );
    for k in saddle_wgsl::Kernel::ALL {
        let on_disk = std::fs::read_to_string(shader_dir().join(k.file_name())).unwrap();
        assert_eq!(
            k.source(),
            on_disk,
            "{} is embedded from its file",
            k.file_name()
        );
    }
}

/// The workspace's top-level `shaders/` (the layout's one place for kernels) is this crate's
/// folder, not a copy that could drift: the crate keeps the files so that it packages alone.
#[test]
fn the_workspace_shaders_folder_is_this_crates() {
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shaders");
    if !PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../Cargo.toml")
        .exists()
    {
        return; // built from a package, outside the workspace
    }
    assert_eq!(
        top.canonicalize()
            .expect("the workspace has a top-level shaders/"),
        shader_dir().canonicalize().unwrap(),
        "top-level shaders/ must be a link to crates/saddle-wgsl/shaders \
         (fix: rm -r shaders && ln -s crates/saddle-wgsl/shaders shaders)"
    );
}
