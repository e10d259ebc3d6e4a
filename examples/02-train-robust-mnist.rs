//! 02 — Train a robust MNIST model from Rust with the library API (no CLI): PGD adversarial
//! training (Madry et al. 2018), kept tiny so that it runs in seconds, then PGD evaluation.
//! Needs MNIST (`cargo xtask download mnist`); another folder: `SADDLE_MNIST=DIR`.
//! `cargo run -p saddle-examples --example 02-train-robust-mnist`
use saddle_attacks::{Attack, Pgd};
use saddle_data::{mnist, Split};
use saddle_models::{Classifier, MnistNet};
use saddle_tensor::{cpu::Cpu, Backend};
use saddle_train::{accuracy, Event, Schedule, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("SADDLE_MNIST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/mnist").into());
    let train = mnist::load(&dir, Split::Train)?.subset_first(7_500);
    let test = mnist::load(&dir, Split::Test)?.subset_first(500);
    // The paper's recipe is TrainConfig::mnist_paper() (100,000 steps of PGD-40 at scale 16).
    let config = TrainConfig {
        model_scale: 2,
        max_num_training_steps: 150,
        num_checkpoint_steps: 0,
        epsilon: 0.1,
        k: 5,
        a: 0.03,
        learning_rate: Schedule::Constant { value: 2e-3 },
        ..TrainConfig::mnist_paper()
    };
    let b = Cpu::new();
    let net = MnistNet::new(b, config.model_scale, config.random_seed)?;
    let mut trainer = Trainer::new(net, config)?;
    trainer.run(&train, |event| {
        match event {
            Event::Step(m) if m.step % 50 == 0 => println!("step {}: loss {:.3}", m.step, m.loss),
            _ => {}
        }
        Ok(())
    })?;
    let mut net = trainer.into_model();

    let (xs, ys) = test.batch(&(0..500).collect::<Vec<_>>())?;
    let (x, y) = (
        b.from_vec(&test.batch_shape(500), xs)?,
        b.from_vec(&[500], ys)?,
    );
    let natural = accuracy(&b.to_vec(&net.logits(&x)?)?, &b.to_vec(&y)?, 10);
    let res = Pgd::linf(0.1, 0.01, 20)?
        .seed(1)
        .perturb(&mut net, &x, &y)?;
    let robust = res.success.iter().filter(|s| !**s).count() as f32 / 500.0;
    println!("500 test images: natural {natural:.3}, PGD-20 at eps 0.1 {robust:.3}");
    assert!(natural > 0.5, "a trained model beats chance by far");
    let file = net.to_safetensors()?; // loads in PyTorch with load_state_dict
    println!("model file: {} bytes", file.len());
    Ok(())
}
