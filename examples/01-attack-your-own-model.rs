//! 01 — Attack your own model: implement `Classifier` for a network written here (not one of
//! saddle's), then evaluate it the AutoAttack way: PGD, APGD-CE and APGD-T, worst case per image.
//! `cargo run -p saddle-examples --example 01-attack-your-own-model`
// saddle-attacks re-exports the model side: one dependency (plus the tensor backend) suffices.
use saddle_attacks::saddle_autograd::{Graph, Var};
use saddle_attacks::saddle_models::{self, layers::Ctx};
use saddle_attacks::{Apgd, ApgdLoss, Attack, Classifier, Forward, ParamSet, Pgd};
use saddle_tensor::rng::{Rng, Uniform};
use saddle_tensor::{cpu::Cpu, ArrayExt, Backend};

/// Your network: 1×8×8 images → linear 64→32 → ReLU → linear 32→4 (weights named as in PyTorch).
#[derive(Debug)]
struct TinyNet(Cpu, ParamSet<Cpu>); // its backend and its weights

#[rustfmt::skip] // one line per accessor
impl Classifier<Cpu> for TinyNet {
    fn backend(&self) -> &Cpu { &self.0 }
    fn num_classes(&self) -> usize { 4 }
    fn input_shape(&self) -> [usize; 3] { [1, 8, 8] }
    fn params(&self) -> &ParamSet<Cpu> { &self.1 }
    fn params_mut(&mut self) -> &mut ParamSet<Cpu> { &mut self.1 }
    fn is_training(&self) -> bool { false } // no batch norm or dropout: one mode
    fn set_training(&mut self, _training: bool) {}
    fn forward(&self, g: &Graph<Cpu>, x: Var, grads: bool) -> saddle_models::Result<Forward> {
        let mut cx = Ctx::new(g, &self.1, grads, false);
        let (w1, w2) = (cx.param(0), cx.param(1));
        let h = g.relu(g.linear(g.flatten(x)?, w1, None)?)?;
        Ok(cx.finish(g.linear(h, w2, None)?))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (b, mut rng, mut params, eps) = (Cpu::new(), Rng::new(1), ParamSet::new(), 0.1);
    for (name, shape) in [("fc1.weight", [32, 64]), ("fc2.weight", [4, 32])] {
        let bound = 3.0 / (shape[1] as f32).sqrt(); // uniform init, as nn.Linear's but wider
        let w = rng.array(&shape, Uniform::new(-bound, bound));
        params.push(name, b.from_array(&w)?)?;
    }
    let mut net = TinyNet(b, params);
    let x = b.from_array(&rng.array(&[64, 1, 8, 8], Uniform::new(0.0, 1.0)))?;
    // Label each image with the network's own clean prediction: clean accuracy is 100%.
    let labels = saddle_attacks::predict(&net, &x)?;
    let y = b.from_vec(&[64], labels.iter().map(|&c| c as f32).collect())?;
    let apgd_t = Apgd::linf(eps, 50)?.loss(ApgdLoss::DlrTargeted);
    let attacks: [(&str, Box<dyn Attack<Cpu>>); 3] = [
        ("PGD-20", Box::new(Pgd::linf(eps, eps / 4.0, 20)?.seed(0))),
        ("APGD-CE", Box::new(Apgd::linf(eps, 50)?)),
        ("APGD-T", Box::new(apgd_t.target_classes(3))),
    ];
    let mut robust = [true; 64]; // per image: unbroken by every attack so far
    for (name, attack) in &attacks {
        let res = attack.perturb(&mut net, &x, &y)?;
        for (r, s) in robust.iter_mut().zip(&res.success) {
            *r &= !s;
        }
        let held = res.success.iter().filter(|s| !**s).count();
        println!("{name:8} robust accuracy at eps {eps}: {held}/64");
    }
    let worst = robust.iter().filter(|r| **r).count();
    println!("worst case over the three attacks, per image: {worst}/64");
    assert!(worst < 64, "an undefended net: some image must break");
    Ok(())
}
