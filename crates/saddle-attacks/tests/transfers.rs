//! The PGD loop stays on the device: on the wgpu backend (lavapipe in CI) a PGD-k attack moves
//! the same data between host and device whatever k is, and reads back the same whatever its
//! number of restarts. Per attack: the check of the inputs reads the images and labels back (2),
//! each restart uploads its random start (1 per restart), the restarts are merged on the device
//! and the best one's losses, predictions and success read back once at the end (1), and the
//! NaN check, done on the device at every step, is read back once (1). Kernel parameters are
//! cached on the device: the first attack writes each distinct block once, a repeated attack
//! writes none. The ops of one PGD step are one submission to the device's queue
//! ([`saddle_tensor::Backend::step_end`]): a PGD-k attack of r restarts makes r·k submissions
//! plus the four of its read-backs.
//!
//! With no adapter the test fails, unless `SADDLE_SKIP_GPU_TESTS=1`: then it prints that it was
//! skipped.

#[path = "../../saddle-wgsl/tests/common/mod.rs"]
mod gpu;

use saddle_attacks::{Attack, AttackError, AttackResult, Pgd};
use saddle_autograd::{Graph, Var};
use saddle_models::{layers::Ctx, Classifier, Forward, ParamSet};
use saddle_tensor::{rng::Rng, Backend};
use saddle_wgsl::{DeviceChoice, TransferCounts, Wgpu};

const SHAPE: [usize; 3] = [1, 4, 4];
const CLASSES: usize = 4;
const N: usize = 6;

/// flatten → (linear → ReLU) × layers → linear on any backend, seeded.
struct Mlp<B: Backend> {
    backend: B,
    params: ParamSet<B>,
    training: bool,
    /// Marks a step end ([`Backend::step_end`]) after every layer of the forward pass, cutting
    /// each PGD step into several submissions.
    cut: bool,
}

impl<B: Backend> Mlp<B> {
    /// One hidden layer of `hidden` units.
    fn new(b: &B, hidden: usize, seed: u64) -> Self {
        Self::deep(b, hidden, 1, seed)
    }

    /// `layers` hidden layers of `hidden` units.
    fn deep(b: &B, hidden: usize, layers: usize, seed: u64) -> Self {
        let d: usize = SHAPE.iter().product();
        let mut rng = Rng::new(seed);
        let mut params = ParamSet::new();
        for l in 0..=layers {
            let fan_in = if l == 0 { d } else { hidden };
            let out = if l == layers { CLASSES } else { hidden };
            let bound = 3.0 / (fan_in as f32).sqrt();
            for (name, dims) in [
                (format!("fc{}.weight", l + 1), vec![out, fan_in]),
                (format!("fc{}.bias", l + 1), vec![out]),
            ] {
                let n: usize = dims.iter().product();
                let data = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
                params
                    .push(&name, b.from_vec(&dims, data).unwrap())
                    .unwrap();
            }
        }
        Mlp {
            backend: b.clone(),
            params,
            training: false,
            cut: false,
        }
    }
}

impl<B: Backend> Classifier<B> for Mlp<B> {
    fn backend(&self) -> &B {
        &self.backend
    }
    fn num_classes(&self) -> usize {
        CLASSES
    }
    fn input_shape(&self) -> [usize; 3] {
        SHAPE
    }
    fn params(&self) -> &ParamSet<B> {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamSet<B> {
        &mut self.params
    }
    fn is_training(&self) -> bool {
        self.training
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn forward(&self, g: &Graph<B>, x: Var, param_grads: bool) -> saddle_models::Result<Forward> {
        let mut cx = Ctx::new(g, &self.params, param_grads, self.training);
        let p: Vec<Var> = (0..self.params.len()).map(|i| cx.param(i)).collect();
        let mut h = g.flatten(x)?;
        let last = p.len() / 2 - 1;
        for l in 0..last {
            h = g.relu(g.linear(h, p[2 * l], Some(p[2 * l + 1]))?)?;
            if self.cut {
                self.backend.step_end()?;
            }
        }
        let logits = g.linear(h, p[2 * last], Some(p[2 * last + 1]))?;
        Ok(cx.finish(logits))
    }
}

/// A model and a batch on `b`, then the transfers of one attack (the setup not counted).
fn attack_transfers(b: &Wgpu, pgd: &Pgd) -> TransferCounts {
    attack(b, &mut Mlp::new(b, 16, 7), pgd).0
}

/// A batch on `b`, then the transfers of one attack on `net` (the setup not counted) and its
/// result.
fn attack(b: &Wgpu, net: &mut Mlp<Wgpu>, pgd: &Pgd) -> (TransferCounts, AttackResult<Wgpu>) {
    let mut rng = Rng::new(8);
    let d: usize = SHAPE.iter().product();
    let x: Vec<f32> = (0..N * d).map(|_| rng.next_f32()).collect();
    let y: Vec<f32> = (0..N).map(|_| rng.below(CLASSES as u64) as f32).collect();
    let x = b.from_vec(&[N, SHAPE[0], SHAPE[1], SHAPE[2]], x).unwrap();
    let y = b.from_vec(&[N], y).unwrap();
    let before = b.transfer_counts();
    let res = pgd.perturb(net, &x, &y).unwrap();
    let after = b.transfer_counts();
    assert_eq!(res.len(), N);
    (after.since(&before), res)
}

/// The bits of an attack's result: the adversarial images, then the objectives, predictions and
/// success.
fn result_bits(b: &Wgpu, res: &AttackResult<Wgpu>) -> Vec<u32> {
    let mut bits: Vec<u32> = b
        .to_vec(&res.x_adv)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect();
    bits.extend(res.loss.iter().map(|v| v.to_bits()));
    bits.extend(res.predictions.iter().map(|&p| p as u32));
    bits.extend(res.success.iter().map(|&s| s as u32));
    bits
}

/// The transfers without the submissions: what must not depend on the number of steps.
fn transfers_only(c: TransferCounts) -> TransferCounts {
    TransferCounts {
        submissions: 0,
        ..c
    }
}

fn pgd(steps: usize, restarts: usize) -> Pgd {
    Pgd::linf(0.3, 0.05, steps).unwrap().restarts(restarts)
}

#[test]
fn a_pgd_attack_transfers_the_same_whatever_its_number_of_steps() {
    let Some(shared) = gpu::backend() else { return };
    for restarts in [1, 2] {
        // On fresh devices (no kernel parameters cached yet) …
        let cold: Vec<TransferCounts> = [5, 20]
            .iter()
            .map(|&steps| {
                let b = Wgpu::new(DeviceChoice::Any).unwrap();
                attack_transfers(&b, &pgd(steps, restarts))
            })
            .collect();
        println!("restarts {restarts}, cold device: PGD-5 {:?}", cold[0]);
        println!("restarts {restarts}, cold device: PGD-20 {:?}", cold[1]);
        assert_eq!(
            transfers_only(cold[0]),
            transfers_only(cold[1]),
            "{restarts} restart(s), cold device"
        );
        // … and on a device that has run the attack before (every parameter block cached: the
        // first step adds no gradient sums yet, so two steps warm every block up).
        attack_transfers(&shared, &pgd(2, restarts));
        let warm: Vec<TransferCounts> = [5, 20, 40]
            .iter()
            .map(|&steps| attack_transfers(&shared, &pgd(steps, restarts)))
            .collect();
        println!(
            "restarts {restarts}, warm device: PGD-5/20/40 {:?}",
            warm[0]
        );
        assert!(
            warm.iter()
                .all(|w| transfers_only(*w) == transfers_only(warm[0])),
            "{restarts} restart(s), warm device: {warm:?}"
        );
        let r = restarts as u64;
        for c in [&cold[0], &warm[0]] {
            assert_eq!(c.readbacks, 2 + 1 + 1, "read-backs: {c:?}");
            assert_eq!(c.uploads, r, "uploads: {c:?}");
        }
        assert_eq!(
            warm[0].param_uploads, 0,
            "parameters rewritten: {:?}",
            warm[0]
        );
    }
}

/// Submissions of a PGD attack besides one per step: one per read-back (the inputs checked: 2;
/// the best restart: 1; the NaN check: 1), each of which also submits whatever the attack
/// recorded since the last step (the random start, the last iterate's loss, the merges).
const READBACK_SUBMISSIONS: u64 = 4;

/// The ops of one PGD step are one submission ([`Backend::step_end`] after every step), however
/// many ops the step records: on a model of 8 hidden layers, whose step records 52 commands
/// (more than the 48 after which the device used to submit, cutting steps), an attack of k
/// steps and r restarts makes exactly r·k submissions plus [`READBACK_SUBMISSIONS`], whatever k
/// is. Where the submissions fall changes no bit of the result: the same attack with every
/// layer of every forward pass cut into a submission of its own (the model marks a step end
/// after each) returns the same bits.
#[test]
fn a_pgd_step_is_one_submission_and_cutting_it_changes_no_result() {
    let Some(_) = gpu::backend() else { return };
    // A device of its own: the counts are per device, and the other tests run beside this one.
    let b = Wgpu::new(DeviceChoice::Any).unwrap();
    let mut net = Mlp::deep(&b, 16, 8, 7);
    for restarts in [1u64, 2] {
        // Measured first (all printed), then checked.
        let mut runs = Vec::new();
        for steps in [5u64, 40] {
            let attack_k = pgd(steps as usize, restarts as usize);
            net.cut = false;
            let (c, res) = attack(&b, &mut net, &attack_k);
            net.cut = true;
            let (c_cut, res_cut) = attack(&b, &mut net, &attack_k);
            let bits = result_bits(&b, &res);
            let hash = bits.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| {
                (h ^ v as u64).wrapping_mul(0x100_0000_01b3)
            });
            println!(
                "{restarts} restart(s), PGD-{steps}: {} submissions ({} cut after every layer), \
                 result hash {hash:016x}",
                c.submissions, c_cut.submissions
            );
            runs.push((steps, c, c_cut, bits == result_bits(&b, &res_cut)));
        }
        let (s5, s40) = (runs[0].1.submissions as i64, runs[1].1.submissions as i64);
        let r = restarts as i64;
        assert_eq!(
            s40 - s5,
            35 * r,
            "{restarts} restart(s): PGD-5 made {s5} submissions and PGD-40 {s40}; 35 more steps \
             of each restart must add exactly {} (one submission per step)",
            35 * r
        );
        assert_eq!(
            s5 - 5 * r,
            READBACK_SUBMISSIONS as i64,
            "{restarts} restart(s): PGD-5 made {s5} submissions; expected one per step ({}) \
             plus {READBACK_SUBMISSIONS} for the read-backs",
            5 * r
        );
        for (steps, c, c_cut, same) in runs {
            assert!(
                c_cut.submissions > c.submissions,
                "{restarts} restart(s), PGD-{steps}: cutting every layer should add \
                 submissions: {c_cut:?} vs {c:?}"
            );
            assert!(
                same,
                "{restarts} restart(s), PGD-{steps}: the result changed when the steps were cut \
                 into more submissions"
            );
        }
    }
}

/// The restarts are merged on the device ([`saddle_tensor::Backend::restart_merge`]) and the
/// best one read back once, at the end: on a warm device an attack of 1, 2 or 5 restarts reads
/// back the same (the inputs checked: 2; the best restart's objective, prediction and success:
/// 1; the NaN check: 1), and without a random start it transfers exactly the same. A random
/// start is drawn on the host and uploaded, one per restart (the only transfer that grows).
/// Submissions grow with the restarts, one per step of each ([`READBACK_SUBMISSIONS`] besides).
#[test]
fn a_pgd_attack_transfers_the_same_whatever_its_number_of_restarts() {
    let Some(_) = gpu::backend() else { return };
    // A device of its own: the counts are per device, and the other tests run beside this one.
    let b = Wgpu::new(DeviceChoice::Any).unwrap();
    let d: usize = SHAPE.iter().product();
    // Measured first (all printed), then checked.
    let all: Vec<(bool, Vec<TransferCounts>)> = [false, true]
        .iter()
        .map(|&random_start| {
            let counts = [1usize, 2, 5]
                .iter()
                .map(|&restarts| {
                    let attack = pgd(3, restarts).random_start(random_start);
                    // Warm-up: every kernel-parameter block of this attack cached.
                    attack_transfers(&b, &attack);
                    let c = attack_transfers(&b, &attack);
                    println!("random start {random_start}, {restarts} restart(s): {c:?}");
                    c
                })
                .collect();
            (random_start, counts)
        })
        .collect();
    for (random_start, counts) in &all {
        for (c, r) in counts.iter().zip([1u64, 2, 5]) {
            assert_eq!(c.readbacks, 4, "{r} restart(s), read-backs: {c:?}");
            assert_eq!(
                c.submissions,
                3 * r + READBACK_SUBMISSIONS,
                "{r} restart(s) of 3 steps, submissions: {c:?}"
            );
            assert_eq!(
                c.readback_bytes, counts[0].readback_bytes,
                "{r} restart(s): {counts:?}"
            );
            assert_eq!(c.param_uploads, 0, "{r} restart(s): {c:?}");
            let starts = if *random_start { r } else { 0 };
            assert_eq!(c.uploads, starts, "{r} restart(s), uploads: {c:?}");
            assert_eq!(
                c.upload_bytes,
                starts * (N * d * 4) as u64,
                "{r} restart(s), uploads: {c:?}"
            );
        }
        if !random_start {
            assert!(
                counts
                    .iter()
                    .all(|c| transfers_only(*c) == transfers_only(counts[0])),
                "{counts:?}"
            );
        }
    }
}

/// The NaN check on the device still names the restart and step of the first NaN gradient (the
/// attack runs again checking every step once the device reports a non-finite sum).
#[test]
fn a_nan_gradient_found_on_the_device_is_reported_with_its_step() {
    let Some(b) = gpu::backend() else { return };
    let mut net = Mlp::new(&b, 16, 7);
    let w = &mut net.params.tensors_mut()[2];
    *w = b.full(&[CLASSES, 16], f32::NAN).unwrap();
    let x = b.full(&[N, SHAPE[0], SHAPE[1], SHAPE[2]], 0.5).unwrap();
    let y = b.from_vec(&[N], vec![0.0; N]).unwrap();
    let err = pgd(20, 2).perturb(&mut net, &x, &y).unwrap_err();
    assert!(
        matches!(
            err,
            AttackError::NanGradient {
                attack: "pgd",
                restart: 0,
                step: 0,
                ..
            }
        ),
        "{err}"
    );
}
