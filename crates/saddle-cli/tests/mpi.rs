//! `saddle` under `mpirun` on loopback (needs the `mpi` feature and an MPI installation:
//! `cargo test -p saddle-cli --features mpi --test mpi`):
//! - 2 ranks × global batch 100 × 30 steps of PGD training give the weights, checkpoint and
//!   losses of one process with `--grad-shards 2`, bit for bit, and the plain one-shard run up
//!   to float rounding; a run resumes with another number of ranks;
//! - `mpirun -np 2 saddle eval` gives the per-example results, the table and the JSON of one
//!   process;
//! - a rank killed or stopped ends the job with an error within seconds, leaving a checkpoint
//!   that loads.
//!
//! The launcher is `mpirun` (or `$SADDLE_MPIRUN`); with Open MPI the test passes
//! `--oversubscribe` (2 ranks on a machine of fewer cores) and allows running as root.
//!
//! Without the feature, one test remains: a build without MPI refuses to run as one of
//! several ranks.

mod common;

/// `saddle` built without the `mpi` feature and started by a launcher as one of 2 ranks (the
/// launcher's environment variable is all it sees) refuses to run, saying how to build it.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_several_ranks() {
    let d = common::dir("no-mpi");
    for args in [
        vec!["train", "--preset", "mnist-smoke", "--out", common::s(&d)],
        vec!["eval", "--model", common::s(&d.join("none.safetensors"))],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_saddle"))
            .args(&args)
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("one of 2 MPI ranks") && err.contains("--features mpi"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::path::Path;
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use saddle_models::Classifier;

    use super::common::{self, dir, real_data, s};

    const SADDLE: &str = env!("CARGO_BIN_EXE_saddle");

    /// mnist-smoke sized: the scale-4 network, PGD-7 of 0.1 with ε ramped over 100 steps, 2,000
    /// training images, but global batches of 100 and 30 steps.
    const CONFIG: &str = "model_scale = 4
max_num_training_steps = 30
training_batch_size = 100
k = 7
a = 0.1
epsilon_ramp_steps = 100
train_limit = 2000
num_checkpoint_steps = 10
num_output_steps = 10
learning_rate = { kind = \"constant\", value = 1e-3 }
";

    /// `mpirun -np N` before `args`.
    fn mpirun(n: usize, args: &[&str]) -> Command {
        let launcher = std::env::var("SADDLE_MPIRUN").unwrap_or_else(|_| "mpirun".into());
        let open_mpi = Command::new(&launcher)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("Open MPI"))
            .unwrap_or_else(|e| {
                panic!(
                "{launcher} does not run ({e}): install MPI (Debian: openmpi-bin libopenmpi-dev)"
            )
            });
        let mut c = Command::new(&launcher);
        if open_mpi {
            c.arg("--oversubscribe")
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        c.args(["-np", &n.to_string(), SADDLE]).args(args);
        c
    }

    fn alone(args: &[&str]) -> Command {
        let mut c = Command::new(SADDLE);
        c.args(args);
        c
    }

    fn run(mut c: Command) -> Output {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn train_args<'a>(
        cfg: &'a Path,
        out: &'a Path,
        data: &'a Path,
        extra: &[&'a str],
    ) -> Vec<&'a str> {
        let mut v = vec![
            "train",
            "--config",
            s(cfg),
            "--threads",
            "1",
            "--out",
            s(out),
            "--data-dir",
            s(data),
        ];
        v.extend_from_slice(extra);
        v
    }

    /// Every tensor of a safetensors file, by name, as raw bytes.
    fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.data().to_vec()))
            .collect();
        v.sort();
        v
    }

    /// The losses of a metrics.jsonl, as bits.
    fn losses(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["loss"].as_f64().unwrap().to_bits()
            })
            .collect()
    }

    /// The tensors of the model `saddle train` starts from with `cfg` (its seed and network).
    fn initial_weights(cfg: &Path) -> Vec<(String, Vec<u8>)> {
        let c: saddle_train::TrainConfig =
            toml::from_str(&std::fs::read_to_string(cfg).unwrap()).unwrap();
        let m = saddle_models::Model::build(
            &c.arch().unwrap(),
            saddle_tensor::cpu::Cpu::new(),
            c.random_seed,
        )
        .unwrap();
        let p = std::env::temp_dir().join(format!(
            "saddle-mpi-init-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&p, m.to_safetensors().unwrap()).unwrap();
        let t = tensors(&p);
        let _ = std::fs::remove_file(&p);
        t
    }

    /// The loss of the last line of a run's metrics.jsonl.
    fn final_loss(run: &Path) -> f64 {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        v["loss"].as_f64().unwrap()
    }

    fn floats(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    #[test]
    fn two_ranks_train_the_weights_of_one_process_bit_for_bit() {
        let Some(data) = real_data("mnist") else {
            return;
        };
        let d = dir("mpi-train");
        let cfg = d.join("cfg.toml");
        std::fs::write(&cfg, CONFIG).unwrap();
        let (one, two, plain) = (d.join("one"), d.join("two"), d.join("plain"));
        let t = Instant::now();
        run(alone(&train_args(
            &cfg,
            &one,
            &data,
            &["--grad-shards", "2"],
        )));
        let t_one = t.elapsed();
        let t = Instant::now();
        let out = run(mpirun(2, &train_args(&cfg, &two, &data, &[])));
        let t_two = t.elapsed();
        run(alone(&train_args(&cfg, &plain, &data, &[])));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("data-parallel: 2 ranks"), "{err}");
        // One rank printed the summary: rank 0 alone writes and reports.
        assert_eq!(err.matches("trained 30 steps").count(), 1, "{err}");

        for f in ["model.safetensors", "checkpoint.safetensors"] {
            assert!(
                tensors(&one.join(f)) == tensors(&two.join(f)),
                "{f}: 2 ranks differ from one process with --grad-shards 2"
            );
        }
        assert_eq!(
            losses(&one.join("metrics.jsonl")),
            losses(&two.join("metrics.jsonl"))
        );
        assert!(std::fs::read_to_string(two.join("config.toml"))
            .unwrap()
            .contains("grad_shards = 2"));

        // Against the plain one-shard run: the same training up to rounding and shard 1's random
        // starts (shard 0's rows start where the one-shard run's do); Adam's normalised steps make
        // weights with near-zero gradients move differently, so the runs are compared by how far
        // they are apart relative to how far training moved the weights from their initial values.
        let init = initial_weights(&cfg);
        let (a, b) = (
            tensors(&plain.join("model.safetensors")),
            tensors(&two.join("model.safetensors")),
        );
        let (mut apart, mut moved, mut differ, mut total) = (0.0f64, 0.0f64, 0usize, 0usize);
        for (((na, ta), (nb, tb)), (ni, ti)) in a.iter().zip(&b).zip(&init) {
            assert!(na == nb && na == ni);
            for ((x, y), z) in floats(ta).zip(floats(tb)).zip(floats(ti)) {
                apart += f64::from(x - y).powi(2);
                moved += f64::from(x - z).powi(2);
                differ += usize::from(x.to_bits() != y.to_bits());
                total += 1;
            }
        }
        let ratio = (apart / moved).sqrt();
        let (la, lb) = (final_loss(&plain), final_loss(&two));
        println!(
            "one process (1 shard) vs 2 ranks after 30 steps: {differ} of {total} weights differ; \
         |w_1 - w_2| / |w_1 - w_init| = {ratio:.4}; final loss {la} vs {lb}; times: one \
         process with 2 shards {t_one:.1?}, 2 ranks {t_two:.1?}"
        );
        assert!(
            ratio < 0.5,
            "the runs are {ratio} of the training distance apart"
        );
        assert!((la - lb).abs() < 0.1 * la, "final losses {la} and {lb}");

        // Resume with another number of ranks: 20 steps on 2 ranks, the last 10 in one process
        // with the same shard count, end as the uninterrupted 2-rank run.
        let half = d.join("half");
        run(mpirun(
            2,
            &train_args(&cfg, &half, &data, &["--steps", "20"]),
        ));
        let out = run(alone(&train_args(
            &cfg,
            &half,
            &data,
            &["--resume", "--grad-shards", "2"],
        )));
        assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from step 20"));
        assert!(
            tensors(&half.join("model.safetensors")) == tensors(&two.join("model.safetensors"))
        );
        // And a one-shard checkpoint goes on under 2 ranks (as 2 shards from there, with a note).
        let mixed = d.join("mixed");
        run(alone(&train_args(&cfg, &mixed, &data, &["--steps", "20"])));
        let out = run(mpirun(2, &train_args(&cfg, &mixed, &data, &["--resume"])));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("grad_shards = 1, the run goes on with 2"),
            "{err}"
        );
        // A shard count that is not the number of ranks is refused.
        let out = mpirun(
            2,
            &train_args(&cfg, &d.join("bad"), &data, &["--grad-shards", "3"]),
        )
        .output()
        .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("grad_shards = 3 but mpirun started 2")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The JSON of an evaluation without what differs between runs by nature (timings, paths).
    fn comparable(path: &Path) -> serde_json::Value {
        let mut v = common::read_json(path);
        v["per_example"] = serde_json::Value::Null;
        for row in v["attacks"].as_array_mut().unwrap() {
            row["seconds"] = serde_json::Value::Null;
        }
        v
    }

    /// The table without the seconds column.
    fn table(out: &Output) -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| match l.rfind(" (") {
                Some(i) if l.ends_with(" s)") => l[..i].to_string(),
                _ => l.to_string(),
            })
            .collect()
    }

    #[test]
    fn two_ranks_evaluate_as_one_process() {
        let Some(data) = real_data("mnist") else {
            return;
        };
        let d = dir("mpi-eval");
        let cfg = d.join("cfg.toml");
        std::fs::write(&cfg, CONFIG).unwrap();
        let net = d.join("net");
        run(alone(&train_args(&cfg, &net, &data, &["--steps", "20"])));
        let model = net.join("model.safetensors");
        // 5 batches on 2 ranks (3 and 2), then a cascade of 3 batches (2 and 1).
        for (name, limit, attacks, cascade) in [
            ("table", "500", "fgsm,pgd10,cw10,targeted", false),
            ("cascade", "300", "fgsm,pgd10", true),
        ] {
            let eval = |who: &str| {
                let mut v: Vec<String> = [
                    "eval",
                    "--model",
                    s(&model),
                    "--data-dir",
                    s(&data),
                    "--limit",
                    limit,
                    "--batch-size",
                    "100",
                    "--attacks",
                    attacks,
                    "--threads",
                    "1",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect();
                let f = |ext: &str| s(&d.join(format!("{name}-{who}.{ext}"))).to_string();
                v.extend(["--per-example".into(), f("npy"), "--out".into(), f("json")]);
                if cascade {
                    v.push("--cascade".into());
                }
                v
            };
            let (a1, a2) = (eval("one"), eval("two"));
            let one = run(alone(&a1.iter().map(String::as_str).collect::<Vec<_>>()));
            let two = run(mpirun(
                2,
                &a2.iter().map(String::as_str).collect::<Vec<_>>(),
            ));
            let file = |who: &str, ext: &str| d.join(format!("{name}-{who}.{ext}"));
            assert_eq!(
                std::fs::read(file("one", "npy")).unwrap(),
                std::fs::read(file("two", "npy")).unwrap(),
                "{name}: per-example results"
            );
            assert_eq!(
                comparable(&file("one", "json")),
                comparable(&file("two", "json")),
                "{name}"
            );
            assert_eq!(table(&one), table(&two), "{name}");
            assert!(table(&two).iter().any(|l| l.starts_with("worst-case")));
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The `saddle` ranks that `mpirun` (process `launcher`) started.
    fn ranks(launcher: u32) -> Vec<u32> {
        let mut v = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if comm == "saddle" && ppid == Some(launcher) {
                v.push(pid);
            }
        }
        v.sort();
        v
    }

    /// Ends a job that hangs: its ranks, then the launcher.
    fn kill_job(child: &mut std::process::Child, pids: &[u32]) {
        for p in pids {
            let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
        }
        let _ = child.kill();
    }

    /// Starts a long 2-rank run, waits for its first checkpoint, sends `signal` to rank 1, and
    /// returns the job's exit status, its stderr and the seconds it took to end after the signal.
    fn break_a_rank(name: &str, signal: &str, timeout: &str) -> (Option<i32>, String, f64) {
        let data = real_data("mnist").unwrap();
        let d = dir(name);
        let cfg = d.join("cfg.toml");
        std::fs::write(&cfg, CONFIG).unwrap();
        let out = d.join("run");
        let mut c = mpirun(2, &train_args(&cfg, &out, &data, &["--steps", "1000000"]));
        let mut child = c
            .env("SADDLE_MPI_TIMEOUT", timeout)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ckpt = out.join("checkpoint.safetensors");
        let t = Instant::now();
        while !ckpt.exists() {
            // A job that ended before its first checkpoint (e.g. a rank starved of CPU for
            // longer than the timeout on a loaded machine) says why; one that hangs is killed.
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("the job ended ({st}) before its first checkpoint: {err}");
            }
            if t.elapsed() > Duration::from_secs(120) {
                let pids = ranks(child.id());
                kill_job(&mut child, &pids);
                panic!("no checkpoint in 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pids = ranks(child.id());
        assert_eq!(pids.len(), 2, "ranks of mpirun {}: {pids:?}", child.id());
        let hit = Instant::now();
        Command::new("kill")
            .args([signal, &pids[1].to_string()])
            .status()
            .unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if hit.elapsed() > Duration::from_secs(60) {
                kill_job(&mut child, &pids);
                panic!("the job still ran 60 s after {signal} to rank 1");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let secs = hit.elapsed().as_secs_f64();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        // Whatever was written is whole: the checkpoint loads.
        let bytes = std::fs::read(&ckpt).unwrap();
        saddle_models::params::safetensors_metadata(&bytes).expect("the checkpoint loads");
        let _ = std::fs::remove_dir_all(&d);
        (status.code(), err, secs)
    }

    #[test]
    fn a_dead_or_hung_rank_ends_the_job_with_an_error() {
        if real_data("mnist").is_none() {
            return;
        }
        let (code, err, secs) = break_a_rank("mpi-dead", "-KILL", "600");
        println!("killed rank: the job ended in {secs:.1} s");
        assert_ne!(code, Some(0), "{err}");
        assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
        let (code, err, secs) = break_a_rank("mpi-hung", "-STOP", "3");
        println!("stopped rank: the job ended in {secs:.1} s");
        assert_ne!(code, Some(0), "{err}");
        assert!(
            err.contains("rank 0 of 2: no answer from the other ranks for 3 s"),
            "{err}"
        );
    }
}
