//! 03 — Evaluate a PyTorch checkpoint: a `state_dict` saved with
//! `safetensors.torch.save_file(model.state_dict(), F)` has PyTorch's names and no `arch`
//! metadata, so the caller names the architecture (`--arch` on the command line; here `Some`).
//! `cargo run -p saddle-examples --example 03-load-pytorch-state-dict [-- FILE.safetensors]`
//! Without a file, one is written here as PyTorch would (float32, PyTorch names, no metadata).
use saddle_attacks::{Attack, Pgd};
use saddle_models::{Classifier, MnistNet, Model};
use saddle_tensor::{cpu::Cpu, Backend, TensorLike};
use safetensors::{tensor::TensorView, Dtype};

/// What PyTorch's `save_file(Net(s=2).state_dict(), F)` writes for the README's `Net`.
fn pytorch_style_file() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let (b, mut tensors) = (Cpu::new(), Vec::new());
    let net = MnistNet::new(b, 2, 123)?; // stands in for weights trained in PyTorch
    for (name, t) in net.params().names().iter().zip(net.params().tensors()) {
        let bytes: Vec<u8> = b.to_vec(t)?.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, t.dims().to_vec(), bytes));
    }
    let views = tensors
        .iter()
        .map(|(n, s, d)| Ok((n, TensorView::new(Dtype::F32, s.clone(), d)?)));
    let views: Vec<_> = views.collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, None)?) // no metadata: no `arch`
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bytes = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path)?,
        None => pytorch_style_file()?,
    };
    let b = Cpu::new();
    assert!(
        Model::load(b, &bytes, None).is_err(),
        "no `arch` in the file: it must be named"
    );
    let mut net = Model::load(b, &bytes, Some("mnist"))?; // the capacity scale comes from the shapes
    println!("loaded {} ({} tensors)", net.arch(), net.params().len());

    let dir = std::env::var("SADDLE_MNIST")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/mnist").into());
    let test = saddle_data::mnist::load(dir, saddle_data::Split::Test)?.subset_first(200);
    let (xs, ys) = test.batch(&(0..test.len()).collect::<Vec<_>>())?;
    let (x, y) = (
        b.from_vec(&test.batch_shape(test.len()), xs)?,
        b.from_vec(&[ys.len()], ys)?,
    );
    let res = Pgd::linf(0.3, 0.01, 40)?
        .seed(0)
        .perturb(&mut net, &x, &y)?;
    let clean = saddle_train::accuracy(&b.to_vec(&net.logits(&x)?)?, &b.to_vec(&y)?, 10);
    let robust = res.success.iter().filter(|s| !**s).count() as f32 / res.len() as f32;
    println!(
        "{} MNIST test images: natural {:.1}%, PGD-40 (eps 0.3) {:.1}%",
        res.len(),
        100.0 * clean,
        100.0 * robust
    );
    Ok(())
}
