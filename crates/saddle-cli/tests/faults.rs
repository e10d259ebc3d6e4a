//! Faults: `saddle train` killed with SIGKILL at seeded random moments and resumed each time ends
//! with the weights of an uninterrupted run, bit for bit, and never leaves a checkpoint that does
//! not load; read-only and full output folders end `train`, `attack` and `eval` with status 2 and
//! one line, leaving what was there byte-identical.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use saddle_models::Model;
use saddle_tensor::cpu::Cpu;
use saddle_train::{TrainConfig, Trainer};

mod common;
use common::{dir, f32_npy, i64_npy, real_data, s};

/// A run of a few seconds on one thread: scale-2 network, PGD-2, a checkpoint every 10 steps.
const CONFIG: &str = "model_scale = 2
max_num_training_steps = 200
training_batch_size = 32
k = 2
a = 0.1
epsilon_ramp_steps = 0
train_limit = 1000
num_checkpoint_steps = 10
num_output_steps = 10
num_eval_examples = 50
eval_batch_size = 50
";

fn train_cmd(cfg: &Path, out: &Path, data: &Path, resume: bool, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_saddle"));
    c.args([
        "train",
        "--config",
        s(cfg),
        "--threads",
        "1",
        "--out",
        s(out),
    ])
    .args(["--data-dir", s(data)])
    .args(extra);
    if resume {
        c.arg("--resume");
    }
    c
}

fn output(mut c: Command) -> (i32, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The step of the checkpoint at `path`, after checking that it loads into a trainer.
fn load_checkpoint(path: &Path, cfg: &TrainConfig) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let model = Model::build(&cfg.arch().unwrap(), Cpu::new(), cfg.random_seed).unwrap();
    let mut t = Trainer::new(model, cfg.clone()).unwrap();
    let saved = t
        .restore(&bytes)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    assert_eq!(saved.max_num_training_steps, cfg.max_num_training_steps);
    t.step()
}

/// The step of the last complete line of `out`'s training log (0 without one).
fn logged_step(out: &Path) -> u64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|j| j["step"].as_u64())
        .unwrap_or(0)
}

/// Every tensor of two safetensors files, bit for bit (the header's key order may differ).
fn same_tensors(a: &Path, b: &Path) {
    let (a_bytes, b_bytes) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let a_st = safetensors::SafeTensors::deserialize(&a_bytes).unwrap();
    let b_st = safetensors::SafeTensors::deserialize(&b_bytes).unwrap();
    let mut names = a_st.names();
    names.sort();
    let mut b_names = b_st.names();
    b_names.sort();
    assert_eq!(names, b_names, "{} and {}", a.display(), b.display());
    for n in names {
        let (x, y) = (a_st.tensor(n).unwrap(), b_st.tensor(n).unwrap());
        assert_eq!(x.shape(), y.shape(), "{n}");
        assert_eq!(x.dtype(), y.dtype(), "{n}");
        assert!(
            x.data() == y.data(),
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// xorshift64*: the kill moments, reproducible from `SADDLE_FAULT_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn training_killed_with_sigkill_and_resumed_ends_bit_identical() {
    let Some(data) = real_data("mnist") else {
        return;
    };
    let d = dir("kill");
    let cfg_path = d.join("c.toml");
    std::fs::write(&cfg_path, CONFIG).unwrap();
    let cfg: TrainConfig = toml::from_str(CONFIG).unwrap();
    let total = cfg.max_num_training_steps;

    let base = d.join("base");
    let t0 = Instant::now();
    let mut uninterrupted = train_cmd(&cfg_path, &base, &data, false, &[]);
    // stderr is a pipe here, as in a log: plain progress lines (every update with 0 s).
    uninterrupted.env("SADDLE_PROGRESS_SECS", "0");
    let (code, err) = output(uninterrupted);
    assert_eq!(code, 0, "{err}");
    let full = t0.elapsed();
    assert!(
        err.lines()
            .any(|l| l.starts_with("training: ") && l.contains(&format!("/{total} ("))),
        "no progress line in a piped stderr: {err}"
    );

    let seed = std::env::var("SADDLE_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15u64);
    eprintln!(
        "uninterrupted run: {:.1} s; kill moments from SADDLE_FAULT_SEED={seed}",
        full.as_secs_f64()
    );
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let run = d.join("run");
    let ckpt = run.join("checkpoint.safetensors");
    let mut last_step = 0;
    let mut mid_training_kills = 0;
    for round in 0..5 {
        let resume = ckpt.exists();
        let mut child = train_cmd(&cfg_path, &run, &data, resume, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill lands when the run's log has reached a seeded step 15 to 54 steps past the
        // last checkpoint, plus a seeded 0 to 39 ms: moments tied to the run's progress, not to
        // the clock, so that they fall inside training however loaded the machine is (a share of
        // the uninterrupted run's time did not on a machine whose load changed).
        let target = (last_step + 15 + rng.next() % 40).min(total - 5);
        let extra = Duration::from_millis(rng.next() % 40);
        let give_up = Instant::now() + full * 20;
        let mut finished = None;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                finished = Some(st);
                break;
            }
            if logged_step(&run) >= target {
                std::thread::sleep(extra);
                break;
            }
            assert!(
                Instant::now() < give_up,
                "round {round}: step {target} not logged after 20 times an uninterrupted run"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(st) = finished {
            assert!(st.success(), "round {round}: the run failed: {st}");
            break;
        }
        // SIGKILL, to this child only.
        child.kill().unwrap();
        child.wait().unwrap();
        if ckpt.exists() {
            let step = load_checkpoint(&ckpt, &cfg);
            assert!(
                step >= last_step && (step.is_multiple_of(10) || step == total),
                "round {round}: checkpoint at step {step} after {last_step}"
            );
            eprintln!(
                "round {round}: killed {} ms after the log passed step {target}; checkpoint at step \
                 {step}",
                extra.as_millis()
            );
            if step < total {
                mid_training_kills += 1;
            }
            last_step = step;
        } else {
            eprintln!("round {round}: killed before the first checkpoint");
        }
    }
    assert!(
        mid_training_kills >= 2,
        "only {mid_training_kills} kills landed during training; the test checks too little"
    );
    // What a kill can leave besides the checkpoint, made certain here: a temporary file of a
    // write that never finished, a log line past the checkpoint, and a line cut in the middle.
    let stale = run.join(".checkpoint.safetensors.tmp-4000000");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    if ckpt.exists() {
        let at = load_checkpoint(&ckpt, &cfg);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(run.join("metrics.jsonl"))
            .unwrap();
        use std::io::Write;
        write!(
            log,
            "{{\"step\":{},\"loss\":9.0}}\n{{\"step\":{},\"lo",
            at + 1,
            at + 2
        )
        .unwrap();
    }
    let (code, err) = output(train_cmd(&cfg_path, &run, &data, ckpt.exists(), &[]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(load_checkpoint(&ckpt, &cfg), total);
    assert!(!stale.exists(), "the stale temporary file is still there");
    // The resumed log is the uninterrupted run's, step for step (times aside).
    let steps = |d: &Path| -> Vec<(u64, String)> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect(l);
                (v["step"].as_u64().unwrap(), v["loss"].to_string())
            })
            .collect()
    };
    assert_eq!(steps(&run), steps(&base));
    // Its `elapsed_sec` counts the training time of all parts: it never goes back at a resume.
    let times: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["elapsed_sec"].as_f64())
        .map(|t| t.expect("every line has elapsed_sec"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "elapsed_sec goes back: {times:?}"
    );
    // The same weights are the same file, byte for byte (safetensors metadata sorted).
    assert_eq!(
        std::fs::read(base.join("model.safetensors")).unwrap(),
        std::fs::read(run.join("model.safetensors")).unwrap()
    );
    same_tensors(
        &base.join("model.safetensors"),
        &run.join("model.safetensors"),
    );
    same_tensors(&base.join("checkpoint.safetensors"), &ckpt);

    // Killed after the last checkpoint but before model.safetensors: the rerun writes it.
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let (code, err) = output(train_cmd(&cfg_path, &run, &data, true, &[]));
    assert_eq!(code, 0, "{err}");
    same_tensors(
        &base.join("model.safetensors"),
        &run.join("model.safetensors"),
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Every file in `d` with its bytes.
fn snapshot(d: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = if e.file_type().unwrap().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (name, bytes)
        })
        .collect();
    v.sort();
    v
}

/// Status 2 and one line (besides `resuming from step ...`) mentioning `want`, no panic.
fn one_line_failure(what: &str, (code, err): (i32, String), want: &str) {
    assert_eq!(code, 2, "{what} should fail with status 2; stderr: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{what}: {err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("resuming from step"))
        .collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got: {err}");
    assert!(err.contains(want), "{what}: should mention '{want}': {err}");
    eprintln!("{what}: {}", lines[0]);
}

/// `common::saddle` without stdout: (exit status, stderr).
fn saddle(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::saddle(args);
    (code, err)
}

/// A folder made read-only for this process, restored on drop.
struct ReadOnly {
    d: PathBuf,
    immutable: bool,
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.d).status();
        }
        let _ = std::fs::set_permissions(&self.d, std::fs::Permissions::from_mode(0o755));
    }
}

fn writable(d: &Path) -> bool {
    let probe = d.join(".probe");
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Mode 0o555; where that does not stop writes (root), also the immutable attribute
/// (`chattr +i`). `None` when nothing stops them.
fn make_read_only(d: &Path) -> Option<ReadOnly> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut g = ReadOnly {
        d: d.to_path_buf(),
        immutable: false,
    };
    if writable(d) {
        g.immutable = Command::new("chattr")
            .arg("+i")
            .arg(d)
            .status()
            .is_ok_and(|s| s.success());
    }
    (!writable(d)).then_some(g)
}

/// A model trained by `CONFIG` with a few steps, 4 images and labels, in `d`.
fn inputs(d: &Path, data: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = d.join("run");
    let (code, err) = output(train_cmd(&cfg, &run, data, false, &["--steps", "10"]));
    assert_eq!(code, 0, "{err}");
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
    (cfg, run, x, y)
}

fn attack_args<'a>(model: &'a Path, x: &'a Path, y: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
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
        "--threads",
        "1",
        "--out",
        s(out),
    ]
}

fn eval_args<'a>(model: &'a Path, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "eval",
        "--model",
        s(model),
        "--data-dir",
        s(data),
        "--limit",
        "4",
        "--attacks",
        "fgsm",
        "--threads",
        "1",
        "--out",
        s(out),
    ]
}

/// `train`, `attack --out` and `eval --out` into a read-only folder: status 2, one line, and
/// the checkpoint, model and reports already there unchanged.
#[test]
fn a_read_only_output_folder_is_one_line_and_keeps_what_was_there() {
    let Some(data) = real_data("mnist") else {
        return;
    };
    let d = dir("read-only");
    let (cfg, run, x, y) = inputs(&d, &data);
    let model = d.join("model.safetensors");
    std::fs::copy(run.join("model.safetensors"), &model).unwrap();
    std::fs::write(run.join("x.npy"), b"an earlier attack").unwrap();
    std::fs::write(run.join("e.json"), b"{\"an earlier\": \"report\"}").unwrap();
    let before = snapshot(&run);
    let (ro, target) = match make_read_only(&run) {
        Some(g) => {
            let how = if g.immutable {
                "chattr +i"
            } else {
                "mode 0o555"
            };
            eprintln!("read-only by {how}");
            (Some(g), run.clone())
        }
        None => {
            // Nothing makes a folder read-only here: write below a regular file instead.
            eprintln!(
                "neither mode 0o555 nor chattr +i stops writes here; testing an output folder \
                 below a regular file (ENOTDIR) instead"
            );
            (None, run.join("x.npy").join("sub"))
        }
    };
    one_line_failure(
        "train",
        output(train_cmd(&cfg, &target, &data, false, &[])),
        s(&target),
    );
    one_line_failure(
        "train --resume",
        output(train_cmd(&cfg, &target, &data, true, &["--steps", "20"])),
        s(&target),
    );
    let out = target.join("x.npy");
    one_line_failure(
        "attack",
        saddle(&attack_args(&model, &x, &y, &out)),
        s(&target),
    );
    let out = target.join("e.json");
    one_line_failure("eval", saddle(&eval_args(&model, &data, &out)), s(&target));
    drop(ro);
    assert!(before == snapshot(&run), "the read-only folder changed");
    let _ = std::fs::remove_dir_all(&d);
}

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `d` with `d/filler` until a write fails.
fn fill(d: &Path) -> std::fs::File {
    use std::io::Write;
    let mut f = std::fs::File::create(d.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    f
}

/// A full disk (a 2 MB tmpfs, which needs root): `attack`, `eval` and `train` end with status 2
/// and one line; the checkpoint, model and reports already there stay byte-identical and no
/// temporary file is left behind.
#[test]
fn a_full_disk_is_one_line_and_keeps_what_was_there() {
    let Some(data) = real_data("mnist") else {
        return;
    };
    let d = dir("full-disk");
    let (cfg, run, x, y) = inputs(&d, &data);
    let model = d.join("model.safetensors");
    std::fs::copy(run.join("model.safetensors"), &model).unwrap();
    let full = d.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&full)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED the full-disk case: `mount -t tmpfs` is not permitted here (it needs root); \
             the read-only case still runs"
        );
        let _ = std::fs::remove_dir_all(&d);
        return;
    }
    let _guard = Tmpfs(full.clone());
    for f in std::fs::read_dir(&run).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), full.join(f.file_name())).unwrap();
    }
    std::fs::write(full.join("x.npy"), b"an earlier attack").unwrap();
    std::fs::write(full.join("e.json"), b"{\"an earlier\": \"report\"}").unwrap();
    let kept = [
        "checkpoint.safetensors",
        "model.safetensors",
        "x.npy",
        "e.json",
    ];
    let before: Vec<Vec<u8>> = kept
        .iter()
        .map(|k| std::fs::read(full.join(k)).unwrap())
        .collect();
    let filler = fill(&full);

    let out = full.join("x.npy");
    one_line_failure(
        "attack",
        saddle(&attack_args(&model, &x, &y, &out)),
        "x.npy",
    );
    let out = full.join("e.json");
    one_line_failure("eval", saddle(&eval_args(&model, &data, &out)), "e.json");
    // Room for config.toml and a metrics line, not for the checkpoint at step 20.
    let len = filler.metadata().unwrap().len();
    filler.set_len(len.saturating_sub(64 * 1024)).unwrap();
    one_line_failure(
        "train --resume",
        output(train_cmd(&cfg, &full, &data, true, &["--steps", "30"])),
        "checkpoint.safetensors",
    );
    drop(filler);
    for (k, b) in kept.iter().zip(&before) {
        assert!(&std::fs::read(full.join(k)).unwrap() == b, "{k} changed");
    }
    let cfg = TrainConfig {
        max_num_training_steps: 10,
        ..toml::from_str(CONFIG).unwrap()
    };
    assert_eq!(
        load_checkpoint(&full.join("checkpoint.safetensors"), &cfg),
        10
    );
    let left: Vec<String> = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    drop(_guard);
    let _ = std::fs::remove_dir_all(&d);
}

/// The evaluation JSON names the model file as given on the command line (a relative path stays
/// relative), so a report committed beside it names no machine's folders.
#[test]
fn the_eval_json_names_the_model_as_given() {
    let Some(data) = real_data("mnist") else {
        return;
    };
    let d = dir("eval-model-path");
    let (_, run, _, _) = inputs(&d, &data);
    let data = std::fs::canonicalize(&data).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_saddle"));
    c.current_dir(&d).args(eval_args(
        Path::new("run/model.safetensors"),
        &data,
        Path::new("e.json"),
    ));
    let (code, err) = output(c);
    assert_eq!(code, 0, "{err}");
    assert!(run.join("model.safetensors").exists());
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("e.json")).unwrap()).unwrap();
    assert_eq!(j["model"], "run/model.safetensors", "{j}");
    let _ = std::fs::remove_dir_all(&d);
}
