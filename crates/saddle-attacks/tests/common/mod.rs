//! A small stand-in classifier for the attack tests: flatten → linear → ReLU → linear, on any
//! image shape, seeded; it counts forward passes made in training mode.

#![allow(dead_code)]

use std::cell::Cell;

use saddle_autograd::{Graph, Var};
use saddle_models::{layers::Ctx, Classifier, Forward, ParamSet};
use saddle_tensor::{cpu::Cpu, rng::Rng, Backend, TensorLike};

/// A two-layer perceptron over images of shape `[c, h, w]`.
#[derive(Debug)]
pub struct Mlp {
    backend: Cpu,
    shape: [usize; 3],
    classes: usize,
    params: ParamSet<Cpu>,
    training: bool,
    /// Forward passes made while in training mode.
    pub training_forwards: Cell<usize>,
    /// Forward passes made in all.
    pub forwards: Cell<usize>,
}

impl Mlp {
    /// Weights uniform in `±scale/√fan_in`, seeded.
    pub fn new(shape: [usize; 3], hidden: usize, classes: usize, scale: f32, seed: u64) -> Self {
        let b = Cpu::new();
        let d: usize = shape.iter().product();
        let mut rng = Rng::new(seed);
        let mut params = ParamSet::new();
        for (name, dims, fan_in) in [
            ("fc1.weight", vec![hidden, d], d),
            ("fc1.bias", vec![hidden], d),
            ("fc2.weight", vec![classes, hidden], hidden),
            ("fc2.bias", vec![classes], hidden),
        ] {
            let bound = scale / (fan_in as f32).sqrt();
            let n: usize = dims.iter().product();
            let data = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
            params.push(name, b.from_vec(&dims, data).unwrap()).unwrap();
        }
        Mlp {
            backend: b,
            shape,
            classes,
            params,
            training: false,
            training_forwards: Cell::new(0),
            forwards: Cell::new(0),
        }
    }

    /// Replaces every weight of the first layer by NaN (its input gradient is then NaN).
    pub fn poison(&mut self) {
        let t = &mut self.params.tensors_mut()[0];
        *t = self.backend.full(t.dims(), f32::NAN).unwrap();
    }
}

impl Classifier<Cpu> for Mlp {
    fn backend(&self) -> &Cpu {
        &self.backend
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn input_shape(&self) -> [usize; 3] {
        self.shape
    }
    fn params(&self) -> &ParamSet<Cpu> {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamSet<Cpu> {
        &mut self.params
    }
    fn is_training(&self) -> bool {
        self.training
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn forward(&self, g: &Graph<Cpu>, x: Var, param_grads: bool) -> saddle_models::Result<Forward> {
        self.check_input(&g.value(x))?;
        self.forwards.set(self.forwards.get() + 1);
        if self.training {
            self.training_forwards.set(self.training_forwards.get() + 1);
        }
        let mut cx = Ctx::new(g, &self.params, param_grads, self.training);
        let p: Vec<Var> = (0..self.params.len()).map(|i| cx.param(i)).collect();
        let h = g.flatten(x)?;
        let h = g.relu(g.linear(h, p[0], Some(p[1]))?)?;
        let logits = g.linear(h, p[2], Some(p[3]))?;
        Ok(cx.finish(logits))
    }
}

/// A batch of `n` images of `shape` in `[0, 1]` (with some exact 0s and 1s) and labels.
pub fn batch(
    b: &Cpu,
    n: usize,
    shape: [usize; 3],
    classes: usize,
    seed: u64,
) -> (saddle_tensor::cpu::CpuTensor, saddle_tensor::cpu::CpuTensor) {
    let mut rng = Rng::new(seed);
    let d: usize = shape.iter().product();
    let x: Vec<f32> = (0..n * d)
        .map(|_| match rng.below(8) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.next_f32(),
        })
        .collect();
    let y: Vec<f32> = (0..n).map(|_| rng.below(classes as u64) as f32).collect();
    (
        b.from_vec(&[n, shape[0], shape[1], shape[2]], x).unwrap(),
        b.from_vec(&[n], y).unwrap(),
    )
}

/// `z = W·x + c` on 4 pixels (`[1, 2, 2]`) and 4 classes, with `w₀ − w₁ = (1, −1, 1, −1)`,
/// `w₂ = 0.1·𝟙`, `w₃ = −0.1·𝟙` and `c = (c₀, 0, −2.8, −2.8)`: a model whose minimal distances to
/// the boundary of class 0 are known in closed form (each test states them for its `c₀`).
#[derive(Debug)]
pub struct Linear4 {
    b: Cpu,
    params: ParamSet<Cpu>,
}

impl Linear4 {
    /// The model with bias `c0` on class 0.
    pub fn new(c0: f32) -> Self {
        let b = Cpu::new();
        let mut params = ParamSet::new();
        let w = vec![
            0.5, -0.5, 0.5, -0.5, //
            -0.5, 0.5, -0.5, 0.5, //
            0.1, 0.1, 0.1, 0.1, //
            -0.1, -0.1, -0.1, -0.1,
        ];
        params.push("w", b.from_vec(&[4, 4], w).unwrap()).unwrap();
        params
            .push("c", b.from_vec(&[4], vec![c0, 0.0, -2.8, -2.8]).unwrap())
            .unwrap();
        Linear4 { b, params }
    }
}

impl Classifier<Cpu> for Linear4 {
    fn backend(&self) -> &Cpu {
        &self.b
    }
    fn num_classes(&self) -> usize {
        4
    }
    fn input_shape(&self) -> [usize; 3] {
        [1, 2, 2]
    }
    fn params(&self) -> &ParamSet<Cpu> {
        &self.params
    }
    fn params_mut(&mut self) -> &mut ParamSet<Cpu> {
        &mut self.params
    }
    fn is_training(&self) -> bool {
        false
    }
    fn set_training(&mut self, _: bool) {}
    fn forward(&self, g: &Graph<Cpu>, x: Var, param_grads: bool) -> saddle_models::Result<Forward> {
        let mut cx = Ctx::new(g, &self.params, param_grads, false);
        let (w, c) = (cx.param(0), cx.param(1));
        let logits = g.linear(g.flatten(x)?, w, Some(c))?;
        Ok(cx.finish(logits))
    }
}
