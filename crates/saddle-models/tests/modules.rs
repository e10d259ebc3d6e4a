//! The module layer on small cases worked by hand or in float64: batch norm's two modes and its
//! running update, the per-image standardisation's gradient, the pooled-and-padded shortcut,
//! named parameters and state in files, the registry's names.

use saddle_autograd::Graph;
use saddle_models::layers::{
    per_image_standardization, AvgPoolPadChannels, BatchNorm2d, Builder, Ctx,
};
use saddle_models::params::safetensors_metadata;
use saddle_models::{Arch, Classifier, Model, ParamSet, Role};
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend};

fn vals(b: &Cpu, t: &<Cpu as Backend>::Tensor) -> Vec<f32> {
    b.to_vec(t).unwrap()
}

/// One channel, four values 1, 2, 3, 6 (n = 2, 1×2 images): mean 3, biased variance
/// (4 + 1 + 0 + 9)/4 = 3.5, unbiased 14/3. Training mode normalises by the biased one and moves
/// the running statistics (0 and 1) by momentum 0.1: mean 0.3, variance 0.9 + 0.1·14/3.
/// Evaluation mode then normalises by those running statistics. Only training mode has state
/// updates, and they reach the model only through `commit_state`.
#[test]
fn batch_norm_follows_torch_in_both_modes() {
    let b = Cpu::new();
    let (mut params, mut rng) = (ParamSet::new(), Rng::new(0));
    let bn = BatchNorm2d::new(&mut Builder::new(&b, &mut params, &mut rng), "bn", 1, 1e-5).unwrap();
    assert_eq!(
        params.names(),
        [
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked"
        ]
    );
    assert_eq!(
        params.roles(),
        [
            Role::Param,
            Role::Param,
            Role::State,
            Role::State,
            Role::Counter
        ]
    );
    let x = b.from_vec(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 6.0]).unwrap();

    let g = Graph::new(b);
    let mut cx = Ctx::new(&g, &params, true, true);
    let y = bn.forward(&mut cx, g.input(x.clone())).unwrap();
    let f = cx.finish(y);
    let sd = (3.5f64 + 1e-5).sqrt();
    let want: Vec<f64> = [1.0, 2.0, 3.0, 6.0]
        .iter()
        .map(|v| (v - 3.0) / sd)
        .collect();
    for (got, want) in vals(&b, &g.value(y)).iter().zip(&want) {
        assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(f.params.len(), 2, "γ and β are the trainable leaves");
    let new: Vec<(usize, Vec<f32>)> = f
        .state
        .iter()
        .map(|&(i, v)| (i, vals(&b, &g.value(v))))
        .collect();
    assert_eq!(new[0].0, bn.running_mean);
    assert!((new[0].1[0] - 0.3).abs() < 1e-7);
    assert_eq!(new[1].0, bn.running_var);
    assert!((new[1].1[0] as f64 - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6);
    assert_eq!(
        (new[2].0, new[2].1.clone()),
        (bn.num_batches_tracked, vec![1.0])
    );

    // Evaluation mode with the updated statistics: (x − 0.3)/sqrt(1.3666… + 1e-5).
    let mut p2 = params.clone();
    for (i, v) in &new {
        p2.tensors_mut()[*i] = b.from_vec(&[1], v.clone()).unwrap();
    }
    let g = Graph::new(b);
    let mut cx = Ctx::new(&g, &p2, false, false);
    let y = bn.forward(&mut cx, g.input(x)).unwrap();
    let f = cx.finish(y);
    assert!(f.state.is_empty() && f.params.is_empty());
    let rv = 0.9 + 0.1 * 14.0 / 3.0;
    let want: Vec<f64> = [1.0, 2.0, 3.0, 6.0]
        .iter()
        .map(|v| (v - 0.3) / (rv + 1e-5f64).sqrt())
        .collect();
    for (got, want) in vals(&b, &g.value(y)).iter().zip(&want) {
        assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
    }
}

/// A batch of one value per channel cannot give an unbiased variance: an error, as in PyTorch.
#[test]
fn batch_norm_refuses_one_value_per_channel_in_training() {
    let b = Cpu::new();
    let (mut params, mut rng) = (ParamSet::new(), Rng::new(0));
    let bn = BatchNorm2d::new(&mut Builder::new(&b, &mut params, &mut rng), "bn", 3, 1e-5).unwrap();
    let g = Graph::new(b);
    let mut cx = Ctx::new(&g, &params, false, true);
    let x = g.input(b.full(&[1, 3, 1, 1], 0.5).unwrap());
    let e = bn.forward(&mut cx, x).unwrap_err().to_string();
    assert!(e.contains("more than one value per channel"), "{e}");
}

/// The gradient of TensorFlow's per-image standardisation against its float64 closed form:
/// with s = (x − m)/σ, dL/dx = (g − mean(g) − s·mean(g·s))/σ (σ above its floor). float32
/// against float64 on 2×3×4×5 values: within 1e-5 relative.
#[test]
fn per_image_standardization_gradient_matches_its_closed_form() {
    let b = Cpu::new();
    let mut rng = Rng::new(4);
    let n = 60;
    let x: Vec<f32> = (0..2 * n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let gy: Vec<f32> = (0..2 * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let g = Graph::new(b);
    let xv = g.leaf(b.from_vec(&[2, 3, 4, 5], x.clone()).unwrap());
    let s = per_image_standardization(&g, xv).unwrap();
    let grads = g
        .backward_with(s, b.from_vec(&[2, 3, 4, 5], gy.clone()).unwrap())
        .unwrap();
    let got = vals(&b, grads.get(xv).unwrap());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..2 {
        let xi: Vec<f64> = x[i * n..(i + 1) * n].iter().map(|&v| v as f64).collect();
        let gi: Vec<f64> = gy[i * n..(i + 1) * n].iter().map(|&v| v as f64).collect();
        let m = xi.iter().sum::<f64>() / n as f64;
        let sd = (xi.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(
            sd > 1.0 / (n as f64).sqrt(),
            "the floor is not active in this case"
        );
        let si: Vec<f64> = xi.iter().map(|v| (v - m) / sd).collect();
        let mg = gi.iter().sum::<f64>() / n as f64;
        let mgs = gi.iter().zip(&si).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        for j in 0..n {
            let want = (gi[j] - mg - si[j] * mgs) / sd;
            num += (got[i * n + j] as f64 - want).powi(2);
            den += want.powi(2);
        }
    }
    let rel = (num / den).sqrt();
    assert!(rel < 1e-5, "relative error {rel:e}");
}

/// A constant image has σ = 0 below the floor 1/√numel: its standardisation is 0 and its
/// gradient finite.
#[test]
fn per_image_standardization_of_a_constant_image_is_finite() {
    let b = Cpu::new();
    let g = Graph::new(b);
    let xv = g.leaf(b.full(&[1, 3, 2, 2], 0.7).unwrap());
    let s = per_image_standardization(&g, xv).unwrap();
    let total = g.sum_all(g.mul(s, s).unwrap()).unwrap();
    let grads = g.backward(total).unwrap();
    assert!(vals(&b, &g.value(s)).iter().all(|v| v.abs() < 1e-5));
    assert!(vals(&b, grads.get(xv).unwrap())
        .iter()
        .all(|v| v.is_finite()));
}

/// The shortcut of MadryLab's network: 2×2 average pooling with stride 2, then 1 zero channel on
/// each side (2 → 4 channels), against a direct computation.
#[test]
fn avg_pool_pad_channels_matches_a_direct_computation() {
    let b = Cpu::new();
    let mut rng = Rng::new(2);
    let x: Vec<f32> = (0..2 * 2 * 4 * 4).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let layer = AvgPoolPadChannels::new(&b, 2, 4, 2).unwrap();
    let g = Graph::new(b);
    let y = layer
        .forward(&g, g.input(b.from_vec(&[2, 2, 4, 4], x.clone()).unwrap()))
        .unwrap();
    let got = vals(&b, &g.value(y));
    assert_eq!(g.dims(y), [2, 4, 2, 2]);
    for n in 0..2 {
        for o in 0..4 {
            for i in 0..2 {
                for j in 0..2 {
                    let want = if o == 0 || o == 3 {
                        0.0
                    } else {
                        let at = |di: usize, dj: usize| {
                            x[((n * 2 + o - 1) * 4 + 2 * i + di) * 4 + 2 * j + dj]
                        };
                        (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0
                    };
                    let v = got[((n * 4 + o) * 2 + i) * 2 + j];
                    assert!((v - want).abs() < 1e-6, "{v} vs {want}");
                }
            }
        }
    }
    assert!(
        AvgPoolPadChannels::new(&b, 3, 4, 2).is_err(),
        "an odd channel difference"
    );
}

#[test]
fn the_registry_parses_and_names_its_networks() {
    for name in ["mnist", "wrn-madry-34-10", "wrn-28-10", "wrn-16-2"] {
        assert_eq!(name.parse::<Arch>().unwrap().to_string(), name);
    }
    assert_eq!("madry-mnist".parse::<Arch>().unwrap().to_string(), "mnist");
    for bad in [
        "resnet",
        "wrn-35-10",
        "wrn-28-0",
        "wrn-28",
        "wrn-madry-28-x",
        "wrn-+28-10",
        "wrn-4-1",
    ] {
        let e = bad.parse::<Arch>().unwrap_err().to_string();
        assert!(
            e.contains("unknown architecture") || e.contains("depth") || e.contains("width"),
            "{bad}: {e}"
        );
    }
    // The paper's network: widths 16/160/320/640, 5 units per stage, 46.2M parameters.
    let Arch::Wrn(spec) = "wrn-madry-34-10".parse::<Arch>().unwrap() else {
        panic!()
    };
    assert_eq!((spec.units(), spec.channels()), (5, [16, 160, 320, 640]));
}

/// A saddle file names its network; loading checks the name, reads the MNIST scale from the
/// shapes, and rejects a disagreeing `--arch`. Running statistics and counters travel in the
/// file; a negative variance is refused.
#[test]
fn model_files_carry_their_architecture_and_state() {
    let b = Cpu::new();
    let mnist = Model::build(&Arch::Mnist { scale: Some(2) }, b, 1).unwrap();
    let bytes = mnist.to_safetensors().unwrap();
    assert_eq!(safetensors_metadata(&bytes).unwrap()["arch"], "mnist");
    let back = Model::load(b, &bytes, Some("mnist")).unwrap();
    assert_eq!(back.arch(), Arch::Mnist { scale: Some(2) });
    let e = Model::load(b, &bytes, Some("wrn-16-2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrn-16-2") && e.contains("mnist"), "{e}");

    let arch: Arch = "wrn-16-2".parse().unwrap();
    let mut net = Model::build(&arch, b, 3).unwrap();
    assert!(net
        .params()
        .names()
        .iter()
        .any(|n| n == "block1.layer.0.convShortcut.weight"));
    let i = net.params().index_of("bn1.running_var").unwrap();
    net.params_mut().tensors_mut()[i] = b.full(&[128], 2.5).unwrap();
    let bytes = net.to_safetensors().unwrap();
    let back = Model::load(b, &bytes, None).unwrap();
    assert_eq!(vals(&b, &back.params().tensors()[i]), vec![2.5; 128]);
    // Trainable tensors exclude the state: 3 per batch norm are not trainable.
    let bns = net
        .params()
        .names()
        .iter()
        .filter(|n| n.ends_with("running_mean"))
        .count();
    assert_eq!(
        net.params().trainable().count(),
        net.params().len() - 3 * bns
    );

    net.params_mut().tensors_mut()[i] = b.full(&[128], -1.0).unwrap();
    let bad = net.to_safetensors().unwrap();
    let e = Model::load(b, &bad, None).unwrap_err().to_string();
    assert!(
        e.contains("bn1.running_var") && e.contains("negative"),
        "{e}"
    );
}
