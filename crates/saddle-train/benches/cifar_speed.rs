//! Speed of the CIFAR-10 wide ResNets on the CPU backend, the rows that `cargo xtask bench`
//! compares with PyTorch (`benches/peer/pytorch_cifar.py` prints the same rows):
//!
//! - `cifar_pgd_step_quick_b128`: one L∞ PGD step (forward, gradient of the summed
//!   cross-entropy with respect to the input, sign step of α = 2/255 and projection onto the
//!   ε = 8/255 ball and [0, 1]) on the network of preset `cifar-quick`, batch norm in
//!   evaluation mode, batch 128 (images × steps per second).
//! - `cifar_train_iter_quick_b128`: one iteration of the `cifar-quick` recipe, batch 128: the
//!   shipped [`Trainer::train_step`] with the preset's configuration (its attack, its batch-norm
//!   mode during the attack, its optimiser), without the clean-accuracy measurement (examples
//!   per second).
//! - `cifar_pgd_step_paper_b128`, `cifar_train_iter_paper_b128`: the same for preset
//!   `cifar-paper` (`wrn-madry-34-10`, PGD-7). These take tens of seconds (a PGD step) to
//!   minutes (an iteration) here, so each is timed once after one warm-up;
//!   `SADDLE_BENCH_CIFAR_PAPER=0` leaves them out.
//!
//! GFLOP/s counts the multiply-adds ×2 of the network's convolutions and linear layer
//! ([`forward_flop`], from the layer shapes): a PGD step is 2 forward passes' worth (the
//! forward, and the backward to the input only), a training iteration `(attack steps × 2 + 3)`
//! (the attack, then forward and backward to the activations and the parameters), as in
//! `mnist_speed`.
//!
//! Run: `cargo bench -p saddle-train --bench cifar_speed` (2 threads unless `SADDLE_THREADS`
//! says otherwise; `SADDLE_BENCH_SECS` sets the time per quick row, 3 s by default;
//! `SADDLE_BENCH_ROWS` a comma-separated subset, `none` for only the header). Machine-readable
//! lines: `row=NAME rate=R unit=U ms=M gflops=G`, and one `preset=NAME key=value ...` line per
//! preset (its architecture and recipe, which `cargo xtask bench` hands to the PyTorch side).

#[path = "../../saddle-models/benches/support/timing.rs"]
mod timing;
use timing::{time, time_once};

use saddle_models::{loss_and_input_grad, Arch, Classifier, Loss, Model};
use saddle_tensor::cpu::{Cpu, CpuTensor};
use saddle_tensor::{rng::Rng, Backend};
use saddle_train::{OptimizerKind, TrainConfig, Trainer, TrainingMode};

const BATCH: usize = 128;
const EPS: f32 = 8.0 / 255.0;
const ALPHA: f32 = 2.0 / 255.0;

/// Forward multiply-adds ×2 per 32×32 image of `arch`'s convolutions and linear layer, from
/// the layer shapes (batch norm, activations, pooling and the additions are not counted).
fn forward_flop(arch: &Arch) -> f64 {
    let Arch::Wrn(spec) = arch else {
        panic!("{arch} is not a CIFAR-10 network");
    };
    let ch = spec.channels();
    let conv = |hw: usize, cout: usize, cin: usize, k: usize| (hw * hw * cout * cin * k * k) as f64;
    // The stem: 3×3, 3 → 16 channels at 32×32.
    let mut macs = conv(32, ch[0], 3, 3);
    let mut cin = ch[0];
    let mut hw = 32;
    for (stage, &cout) in ch.iter().enumerate().skip(1) {
        for i in 0..spec.units() {
            if stage > 1 && i == 0 {
                hw /= 2;
            }
            macs += conv(hw, cout, cin, 3) + conv(hw, cout, cout, 3);
            // RobustBench's 1×1 shortcut where the width changes (MadryLab's pools and pads).
            if !spec.madry && cin != cout {
                macs += conv(hw, cout, cin, 1);
            }
            cin = cout;
        }
    }
    macs += (cin * 10) as f64;
    2.0 * macs
}

/// One PGD step on the CPU backend: forward, input gradient, sign step and projection.
fn pgd_step(net: &Model<Cpu>, x: &CpuTensor, x0: &CpuTensor, y: &CpuTensor) -> CpuTensor {
    let b = net.backend();
    let (_, g, _) = loss_and_input_grad(net, x, y, Loss::CrossEntropy).unwrap();
    b.pgd_step_linf(x, x0, &g, ALPHA, EPS).unwrap()
}

fn row(name: &str, rate: f64, unit: &str, secs: f64, gflop: f64) {
    println!(
        "row={name} rate={rate:.2} unit={unit} ms={:.1} gflops={gflop:.1}",
        secs * 1e3
    );
}

/// The attack steps of one training iteration of `cfg` (fast FGSM and FGSM take one).
fn attack_steps(cfg: &TrainConfig) -> usize {
    match cfg.training {
        TrainingMode::Natural => 0,
        TrainingMode::Fgsm | TrainingMode::FastFgsm | TrainingMode::NFgsm => 1,
        TrainingMode::Pgd | TrainingMode::Trades => cfg.k,
    }
}

/// The serde name of a configuration value (`fast_fgsm`, `train`).
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The preset's recipe as `key=value` words, for the PyTorch side: the attack as `k` signed
/// steps of size `a` from a uniform random start in the ε-ball or not (what each
/// [`TrainingMode`] means, spelt out; N-FGSM's noise radius in multiples of ε), the batch-norm
/// mode of the attack, SGD's momentum and
/// weight decay (on convolution and linear weights only) and the learning rate at step 0.
fn recipe(name: &str, cfg: &TrainConfig) -> String {
    let (a, random_start) = match cfg.training {
        TrainingMode::Fgsm => (cfg.epsilon, false),
        TrainingMode::FastFgsm => (cfg.a, true),
        TrainingMode::Pgd => (cfg.a, cfg.random_start),
        // N-FGSM: the PyTorch side writes out its start by name, of radius `n_fgsm_noise`·ε.
        TrainingMode::NFgsm => (cfg.a, true),
        // Natural and TRADES: the PyTorch side refuses them by name.
        _ => (cfg.a, cfg.random_start),
    };
    let (optimizer, momentum, wd) = match cfg.optimizer {
        OptimizerKind::Sgd {
            momentum,
            weight_decay,
        } => ("sgd", momentum, weight_decay),
        // Not written out on the PyTorch side, which refuses it by name.
        OptimizerKind::Adam { .. } => ("adam", 0.0, 0.0),
    };
    format!(
        "preset={name} arch={} training={} epsilon={} k={} a={} random_start={} n_fgsm_noise={} \
         attack_bn_mode={} optimizer={optimizer} momentum={momentum} weight_decay={wd} lr={} batch={}",
        cfg.arch,
        serde_name(&cfg.training),
        cfg.epsilon,
        attack_steps(cfg),
        a,
        random_start,
        cfg.n_fgsm_noise,
        serde_name(&cfg.attack_bn_mode),
        cfg.learning_rate.at(0),
        cfg.training_batch_size,
    )
}

fn main() {
    timing::in_pool(run);
}

fn run(threads: usize) {
    let env = |k: &str| std::env::var(k).ok();
    let (secs, want) = timing::settings();
    let paper_on = env("SADDLE_BENCH_CIFAR_PAPER").as_deref() != Some("0");
    let isa = match saddle_tensor::cpu::cpu_isa() {
        Ok(i) => i.name(),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let presets: Vec<(&str, &str, TrainConfig)> = ["quick", "paper"]
        .into_iter()
        .map(|short| {
            let name = if short == "quick" {
                "cifar-quick"
            } else {
                "cifar-paper"
            };
            let cfg = TrainConfig::preset(name).expect("a built-in preset");
            (short, name, cfg)
        })
        .collect();
    println!(
        "# saddle CIFAR-10 networks, CPU backend, {threads} threads, isa={isa}, batch {BATCH}: \
         cifar-quick = {}, cifar-paper = {}",
        presets[0].2.arch, presets[1].2.arch
    );
    for (_, name, cfg) in &presets {
        println!("{}", recipe(name, cfg));
        let arch = cfg.arch().expect("the preset's architecture");
        println!(
            "# {arch}: {:.4} GFLOP per image forward (convolutions and linear layer)",
            forward_flop(&arch) / 1e9
        );
    }

    let b = Cpu::new();
    let mut rng = Rng::new(2);
    let x = b
        .from_vec(
            &[BATCH, 3, 32, 32],
            (0..BATCH * 3 * 1024).map(|_| rng.next_f32()).collect(),
        )
        .unwrap();
    let y = b
        .from_vec(&[BATCH], (0..BATCH).map(|i| (i % 10) as f32).collect())
        .unwrap();
    for (short, name, cfg) in presets {
        let paper = short == "paper";
        let step_row = format!("cifar_pgd_step_{short}_b{BATCH}");
        let train_row = format!("cifar_train_iter_{short}_b{BATCH}");
        if paper && !paper_on && (want(&step_row) || want(&train_row)) {
            println!(
                "# {step_row}, {train_row} left out: SADDLE_BENCH_CIFAR_PAPER=0 (the paper's \
                 network takes tens of seconds per PGD step and minutes per training iteration \
                 here)"
            );
            continue;
        }
        let arch = cfg.arch().expect("the preset's architecture");
        let fwd = forward_flop(&arch);
        if want(&step_row) {
            let net = Model::build(&arch, b, 1).unwrap();
            let mut xa = x.clone();
            let step = || xa = pgd_step(&net, &xa, &x, &y);
            let t = if paper {
                time_once(step)
            } else {
                time(secs, step)
            };
            let ips = BATCH as f64 / t;
            row(&step_row, ips, "images*steps/s", t, ips * 2.0 * fwd / 1e9);
        }
        if want(&train_row) {
            let flop_iter = BATCH as f64 * (attack_steps(&cfg) as f64 * 2.0 + 3.0) * fwd;
            let net = Model::build(&arch, b, 1).unwrap();
            let mut tr =
                Trainer::new(net, cfg.clone()).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            let iter = || {
                tr.train_step(&x, &y, false).unwrap();
            };
            let t = if paper {
                time_once(iter)
            } else {
                time(secs, iter)
            };
            row(
                &train_row,
                BATCH as f64 / t,
                "examples/s",
                t,
                flop_iter / t / 1e9,
            );
        }
    }
}
