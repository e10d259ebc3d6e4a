//! The PGD loop stays on the device: on the wgpu backend (lavapipe in CI) a PGD-k attack moves
//! the same data between host and device whatever k is, and reads back the same whatever its
//! number of restarts. Per attack: the check of the inputs reads the images and labels back (2),
//! each restart uploads its random start (1 per restart), the restarts are merged on the device
//! and the best one's losses, predictions and success read back once at the end (1), and the
//! NaN check, done on the device at every step, is read back once (1). Kernel parameters are
//! cached on the device: the first attack writes each distinct block once, a repeated attack
//! writes none.
//!
//! With no adapter the test fails, unless `SADDLE_SKIP_GPU_TESTS=1`: then it prints that it was
//! skipped.

#[path = "../../saddle-wgsl/tests/common/mod.rs"]
mod gpu;

use saddle_attacks::{Attack, AttackError, Pgd};
use saddle_autograd::{Graph, Var};
use saddle_models::{layers::Ctx, Classifier, Forward, ParamSet};
use saddle_tensor::{rng::Rng, Backend};
use saddle_wgsl::{DeviceChoice, TransferCounts, Wgpu};

const SHAPE: [usize; 3] = [1, 4, 4];
const CLASSES: usize = 4;
const N: usize = 6;

/// flatten → linear → ReLU → linear on any backend, seeded.
struct Mlp<B: Backend> {
    backend: B,
    params: ParamSet<B>,
    training: bool,
}

impl<B: Backend> Mlp<B> {
    fn new(b: &B, hidden: usize, seed: u64) -> Self {
        let d: usize = SHAPE.iter().product();
        let mut rng = Rng::new(seed);
        let mut params = ParamSet::new();
        for (name, dims, fan_in) in [
            ("fc1.weight", vec![hidden, d], d),
            ("fc1.bias", vec![hidden], d),
            ("fc2.weight", vec![CLASSES, hidden], hidden),
            ("fc2.bias", vec![CLASSES], hidden),
        ] {
            let bound = 3.0 / (fan_in as f32).sqrt();
            let n: usize = dims.iter().product();
            let data = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
            params.push(name, b.from_vec(&dims, data).unwrap()).unwrap();
        }
        Mlp {
            backend: b.clone(),
            params,
            training: false,
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
        let h = g.flatten(x)?;
        let h = g.relu(g.linear(h, p[0], Some(p[1]))?)?;
        let logits = g.linear(h, p[2], Some(p[3]))?;
        Ok(cx.finish(logits))
    }
}

/// A model and a batch on `b`, then the transfers of one attack (the setup not counted).
fn attack_transfers(b: &Wgpu, pgd: &Pgd) -> TransferCounts {
    let mut net = Mlp::new(b, 16, 7);
    let mut rng = Rng::new(8);
    let d: usize = SHAPE.iter().product();
    let x: Vec<f32> = (0..N * d).map(|_| rng.next_f32()).collect();
    let y: Vec<f32> = (0..N).map(|_| rng.below(CLASSES as u64) as f32).collect();
    let x = b.from_vec(&[N, SHAPE[0], SHAPE[1], SHAPE[2]], x).unwrap();
    let y = b.from_vec(&[N], y).unwrap();
    let before = b.transfer_counts();
    let res = pgd.perturb(&mut net, &x, &y).unwrap();
    let after = b.transfer_counts();
    assert_eq!(res.len(), N);
    after.since(&before)
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
        assert_eq!(cold[0], cold[1], "{restarts} restart(s), cold device");
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
            warm.iter().all(|w| *w == warm[0]),
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

/// The restarts are merged on the device ([`saddle_tensor::Backend::restart_merge`]) and the
/// best one read back once, at the end: on a warm device an attack of 1, 2 or 5 restarts reads
/// back the same (the inputs checked: 2; the best restart's objective, prediction and success:
/// 1; the NaN check: 1), and without a random start it transfers exactly the same. A random
/// start is drawn on the host and uploaded, one per restart (the only transfer that grows).
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
            assert!(counts.iter().all(|c| *c == counts[0]), "{counts:?}");
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
