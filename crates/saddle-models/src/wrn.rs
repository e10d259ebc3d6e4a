//! The wide residual networks of the paper's CIFAR-10 experiment, composed of [`crate::layers`].
//!
//! Two variants, both `DEPTH = 6n + 4` (n residual units per stage) and widths
//! `16, 16·W, 32·W, 64·W`, named by PyTorch `state_dict` keys `conv1`,
//! `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2[,convShortcut]}`, `bn1`, `fc`:
//!
//! - `wrn-madry-DEPTH-WIDTH`: MadryLab's `cifar10_challenge` model, the paper's network at
//!   `wrn-madry-34-10`. Per-image standardisation inside the model, leaky ReLU 0.1, batch-norm
//!   ε 1e-3; a unit that changes the width adds an average-pooled, zero-channel-padded shortcut;
//!   the first unit activates before the residual branch splits off.
//! - `wrn-DEPTH-WIDTH`: the WideResNet of RobustBench and TRADES (`wrn-28-10`, `wrn-34-10`): ReLU,
//!   batch-norm ε 1e-5, a 1×1 convolution as the shortcut of a unit that changes the width.
//!
//! Inputs are in `[0, 1]`, `[n, 3, 32, 32]`. `tests/golden/make_golden_cifar.py` is the
//! reference; `tests/golden_cifar.rs` holds this file to it.

use std::collections::HashMap;

use saddle_autograd::{Graph, Var};
use saddle_tensor::{rng::Rng, Activation, Backend, Conv2dParams};

use crate::error::{ModelError, Result};
use crate::layers::{
    global_avg_pool, per_image_standardization, AvgPoolPadChannels, BatchNorm2d, Builder, Conv2d,
    Ctx, Init, Linear,
};
use crate::params::ParamSet;
use crate::{Classifier, Forward};

/// Which wide ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrnSpec {
    /// MadryLab's variant (`wrn-madry-D-W`) rather than RobustBench's (`wrn-D-W`).
    pub madry: bool,
    /// Depth `6n + 4`.
    pub depth: usize,
    /// Widening factor.
    pub width: usize,
}

impl WrnSpec {
    /// Checks the depth (`6n + 4`, n ≥ 1) and width (1 to 32).
    ///
    /// # Errors
    /// [`ModelError::Config`] saying what is allowed.
    pub fn validate(&self) -> Result<()> {
        if self.depth < 10 || !(self.depth - 4).is_multiple_of(6) || self.depth > 1000 {
            return Err(ModelError::Config(format!(
                "wide ResNet depth {} must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 34, ...)",
                self.depth
            )));
        }
        if self.width == 0 || self.width > 32 {
            return Err(ModelError::Config(format!(
                "wide ResNet width {} must be between 1 and 32",
                self.width
            )));
        }
        Ok(())
    }

    /// A lower bound on the bytes of a model file of this network: the f32 weights of the
    /// 3×3 convolutions of its residual units (most of its parameters). Lets a loader refuse a
    /// file too short for the network it names before building the network.
    pub fn min_file_bytes(&self) -> u64 {
        let ch = self.channels();
        let mut cin = ch[0] as u64;
        let mut n = 0u64;
        for &cout in &ch[1..] {
            let cout = cout as u64;
            for _ in 0..self.units() {
                n += 9 * cout * cin + 9 * cout * cout;
                cin = cout;
            }
        }
        4 * n
    }

    /// Residual units per stage.
    pub fn units(&self) -> usize {
        (self.depth - 4) / 6
    }

    /// Channels of the stem and the three stages.
    pub fn channels(&self) -> [usize; 4] {
        [16, 16 * self.width, 32 * self.width, 64 * self.width]
    }

    /// Batch-norm ε.
    pub fn bn_eps(&self) -> f32 {
        if self.madry {
            1e-3
        } else {
            1e-5
        }
    }

    /// The registry name (`wrn-madry-34-10`, `wrn-28-10`).
    pub fn name(&self) -> String {
        if self.madry {
            format!("wrn-madry-{}-{}", self.depth, self.width)
        } else {
            format!("wrn-{}-{}", self.depth, self.width)
        }
    }
}

#[derive(Clone, Debug)]
enum Shortcut<T> {
    Identity,
    Conv(Conv2d),
    PoolPad(AvgPoolPadChannels<T>),
}

#[derive(Clone, Debug)]
struct Unit<T> {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    shortcut: Shortcut<T>,
    /// The shortcut branches off after the first activation (MadryLab's
    /// `activate_before_residual` in the first unit; RobustBench's units that change width).
    activate_first: bool,
}

/// A wide residual network for 32×32 RGB images and 10 classes.
#[derive(Clone, Debug)]
pub struct WideResNet<B: Backend> {
    backend: B,
    spec: WrnSpec,
    params: ParamSet<B>,
    training: bool,
    /// Whether the first layer standardises each image (MadryLab's variant only).
    standardize: bool,
    conv1: Conv2d,
    units: Vec<Unit<B::Tensor>>,
    bn: BatchNorm2d,
    fc: Linear,
}

const fn conv_p(stride: usize, padding: usize) -> Conv2dParams {
    Conv2dParams { stride, padding }
}

impl<B: Backend> WideResNet<B> {
    /// A network with the initialisation of both reference codes: convolutions
    /// `N(0, 2/(k·k·c_out))`, batch norm γ = 1, β = 0, the classifier's weight
    /// `U(±1/√fan_in)` and bias 0; seeded.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an invalid depth or width.
    pub fn new(backend: B, spec: WrnSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let ch = spec.channels();
        let eps = spec.bn_eps();
        let mut rng = Rng::new(seed);
        let mut params = ParamSet::new();
        let he = |k: usize, cout: usize| Init::Normal((2.0 / (k * k * cout) as f32).sqrt());
        let mut b = Builder::new(&backend, &mut params, &mut rng);
        let conv1 = Conv2d::new(
            &mut b,
            "conv1",
            [ch[0], 3, 3],
            conv_p(1, 1),
            he(3, ch[0]),
            None,
        )?;
        let mut units = Vec::new();
        let mut cin = ch[0];
        for stage in 1..=3 {
            let cout = ch[stage];
            for i in 0..spec.units() {
                let pre = format!("block{stage}.layer.{i}");
                let stride = if stage > 1 && i == 0 { 2 } else { 1 };
                let bn1 = BatchNorm2d::new(&mut b, &format!("{pre}.bn1"), cin, eps)?;
                let conv1 = Conv2d::new(
                    &mut b,
                    &format!("{pre}.conv1"),
                    [cout, cin, 3],
                    conv_p(stride, 1),
                    he(3, cout),
                    None,
                )?;
                let bn2 = BatchNorm2d::new(&mut b, &format!("{pre}.bn2"), cout, eps)?;
                let conv2 = Conv2d::new(
                    &mut b,
                    &format!("{pre}.conv2"),
                    [cout, cout, 3],
                    conv_p(1, 1),
                    he(3, cout),
                    None,
                )?;
                let (shortcut, activate_first) = if spec.madry {
                    let s = if cin == cout && stride == 1 {
                        Shortcut::Identity
                    } else {
                        Shortcut::PoolPad(AvgPoolPadChannels::new(&backend, cin, cout, stride)?)
                    };
                    (s, stage == 1 && i == 0)
                } else if cin != cout {
                    let c = Conv2d::new(
                        &mut b,
                        &format!("{pre}.convShortcut"),
                        [cout, cin, 1],
                        conv_p(stride, 0),
                        he(1, cout),
                        None,
                    )?;
                    (Shortcut::Conv(c), true)
                } else {
                    (Shortcut::Identity, false)
                };
                units.push(Unit {
                    bn1,
                    conv1,
                    bn2,
                    conv2,
                    shortcut,
                    activate_first,
                });
                cin = cout;
            }
        }
        let bn = BatchNorm2d::new(&mut b, "bn1", cin, eps)?;
        let bound = 1.0 / (cin as f32).sqrt();
        let fc = Linear::new(
            &mut b,
            "fc",
            cin,
            10,
            Init::Uniform(bound),
            Some(Init::Zeros),
        )?;
        Ok(WideResNet {
            backend,
            spec,
            params,
            training: false,
            standardize: spec.madry,
            conv1,
            units,
            bn,
            fc,
        })
    }

    /// Which network this is.
    pub fn spec(&self) -> WrnSpec {
        self.spec
    }

    /// Sets every batch norm's ε (the registry's networks use [`WrnSpec::bn_eps`]; another value
    /// serves a model trained elsewhere with another, or a test that a wrong one is caught).
    ///
    /// # Panics
    /// Never; an ε that is not positive and finite is ignored.
    pub fn set_bn_eps(&mut self, eps: f32) {
        if !(eps > 0.0 && eps.is_finite()) {
            return;
        }
        for u in &mut self.units {
            u.bn1.eps = eps;
            u.bn2.eps = eps;
        }
        self.bn.eps = eps;
    }

    /// Switches `wrn-madry`'s first layer, the per-image standardisation, on (the default) or
    /// off: off, the network takes images standardised elsewhere (the golden test feeds images
    /// standardised in float64, to check the rest of the network to float32 precision). No
    /// effect on `wrn`, which has no such layer.
    pub fn set_input_standardization(&mut self, on: bool) {
        self.standardize = on && self.spec.madry;
    }

    /// The activation after each batch norm: leaky ReLU of slope 0.1 (MadryLab's) or ReLU.
    fn act(&self) -> Activation {
        if self.spec.madry {
            Activation::LeakyRelu(0.1)
        } else {
            Activation::Relu
        }
    }
}

impl<B: Backend> Classifier<B> for WideResNet<B> {
    module_accessors!();
    fn num_classes(&self) -> usize {
        10
    }
    fn input_shape(&self) -> [usize; 3] {
        [3, 32, 32]
    }
    fn metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("arch".to_string(), self.spec.name()),
            ("format".to_string(), "pt".to_string()),
        ])
    }

    fn forward(&self, g: &Graph<B>, x: Var, param_grads: bool) -> Result<Forward> {
        self.check_input(&g.value(x))?;
        let mut cx = Ctx::new(g, &self.params, param_grads, self.training);
        let mut h = x;
        if self.spec.madry && self.standardize {
            h = per_image_standardization(g, h)?;
        }
        h = self.conv1.forward(&mut cx, h)?;
        for u in &self.units {
            let short;
            if u.activate_first {
                h = u.bn1.forward_act(&mut cx, h, self.act())?;
                short = h;
            } else {
                short = h;
                h = u.bn1.forward_act(&mut cx, h, self.act())?;
            }
            h = u.conv1.forward(&mut cx, h)?;
            h = u.bn2.forward_act(&mut cx, h, self.act())?;
            // conv2(h) + shortcut, the sum in the convolution's output pass.
            h = u.conv2.forward_add(&mut cx, h, |cx| {
                Ok(match &u.shortcut {
                    Shortcut::Identity => short,
                    Shortcut::Conv(c) => c.forward(cx, short)?,
                    Shortcut::PoolPad(p) => p.forward(g, short)?,
                })
            })?;
        }
        h = self.bn.forward_act(&mut cx, h, self.act())?;
        let h = global_avg_pool(g, h)?;
        let logits = self.fc.forward(&mut cx, h)?;
        Ok(cx.finish(logits))
    }
}
