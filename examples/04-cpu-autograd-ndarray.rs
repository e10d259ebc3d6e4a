//! 04 — The CPU backend and autograd alone, on `ndarray` arrays: fit a softmax regression by
//! gradient descent, then take the gradient of the loss with respect to the input (what an
//! attack uses). No model zoo, no attacks crate.
//! `cargo run -p saddle-examples --example 04-cpu-autograd-ndarray`
use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn};
use saddle_autograd::Graph;
use saddle_tensor::rng::{Normal, Rng};
use saddle_tensor::{cpu::Cpu, ArrayExt, Backend};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = Cpu::new();
    let mut rng = Rng::new(0);
    // 3 classes in 2-D: blobs around (2,0), (-1,2), (-1,-2); the data are plain ndarray arrays.
    let centres = ndarray::array![[2.0f32, 0.0], [-1.0, 2.0], [-1.0, -2.0]];
    let labels = Array1::from_iter((0..300).map(|i| (i % 3) as f32));
    let mut x: Array2<f32> = rng
        .array(&[300, 2], Normal::new(0.7))
        .into_dimensionality()?;
    for (mut row, &c) in x.axis_iter_mut(Axis(0)).zip(&labels) {
        row += &centres.row(c as usize);
    }
    let (xt, yt) = (b.from_array(&x)?, b.from_array(&labels)?);
    let mut w = ArrayD::<f32>::zeros(IxDyn(&[3, 2])); // PyTorch's linear layout [out, in]
    let mut bias = ArrayD::<f32>::zeros(IxDyn(&[3]));
    for step in 0..=100 {
        let g = Graph::new(b);
        let (wv, bv) = (g.leaf(b.from_array(&w)?), g.leaf(b.from_array(&bias)?));
        let logits = g.linear(g.input(xt.clone()), wv, Some(bv))?;
        let loss = g.mean_all(g.cross_entropy(logits, &yt)?)?;
        let mut grads = g.backward(loss)?;
        let gw = b.to_array(&grads.take(wv).ok_or("no gradient for w")?)?;
        let gb = b.to_array(&grads.take(bv).ok_or("no gradient for b")?)?;
        w.scaled_add(-0.5, &gw);
        bias.scaled_add(-0.5, &gb);
        if step % 25 == 0 {
            println!("step {step:3}: loss {:.4}", b.to_vec(&g.value(loss))?[0]);
        }
    }
    let g = Graph::new(b);
    let xv = g.leaf(xt.clone());
    let logits = g.linear(
        xv,
        g.input(b.from_array(&w)?),
        Some(g.input(b.from_array(&bias)?)),
    )?;
    let z = b.to_array(&g.value(logits))?;
    let correct = (z.outer_iter().zip(&labels))
        .filter(|(r, &l)| r.iter().all(|&v| v <= r[l as usize]))
        .count();
    println!("training accuracy {:.1}%", correct as f32 / 3.0);
    assert!(correct > 270, "three well-separated blobs are learnt");
    let total = g.sum_all(g.cross_entropy(logits, &yt)?)?;
    let gx = b.to_array(&g.backward(total)?.take(xv).ok_or("no input gradient")?)?;
    println!(
        "input gradient {:?}, first row {}",
        gx.shape(),
        gx.index_axis(Axis(0), 0)
    );
    Ok(())
}
