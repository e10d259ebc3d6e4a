//! `Graph::kl_div` (TRADES' robust loss) against central finite differences of the divergence
//! computed here in float64 from explicit probabilities, through a graph that also scales and
//! sums it, so the rule's wiring (both arguments, the incoming gradient) is what is checked.

use saddle_autograd::Graph;
use saddle_tensor::cpu::Cpu;
use saddle_tensor::rng::Rng;
use saddle_tensor::Backend;

/// `Σ_i w_i · KL(softmax(p_i) ‖ softmax(q_i))` in float64.
fn weighted_kl(p: &[f64], q: &[f64], w: &[f64], k: usize) -> f64 {
    let probs = |z: &[f64]| {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<_>>()
    };
    (0..w.len())
        .map(|i| {
            let (a, b) = (probs(&p[i * k..][..k]), probs(&q[i * k..][..k]));
            w[i] * a.iter().zip(&b).map(|(x, y)| x * (x / y).ln()).sum::<f64>()
        })
        .sum()
}

#[test]
fn kl_div_gradients_match_finite_differences() {
    let b = Cpu::new();
    let mut r = Rng::new(5);
    let (n, k) = (4, 10);
    let p: Vec<f32> = (0..n * k).map(|_| r.uniform(-4.0, 4.0)).collect();
    let q: Vec<f32> = (0..n * k).map(|_| r.uniform(-4.0, 4.0)).collect();
    let w: Vec<f32> = (0..n).map(|_| r.uniform(-2.0, 2.0)).collect();

    let g = Graph::new(b);
    let pv = g.leaf(b.from_vec(&[n, k], p.clone()).unwrap());
    let qv = g.leaf(b.from_vec(&[n, k], q.clone()).unwrap());
    let wv = g.input(b.from_vec(&[n], w.clone()).unwrap());
    let kl = g.kl_div(pv, qv).unwrap();
    let loss = g.sum_all(g.mul(kl, wv).unwrap()).unwrap();
    let mut grads = g.backward(loss).unwrap();
    let gp = b.to_vec(&grads.take(pv).unwrap()).unwrap();
    let gq = b.to_vec(&grads.take(qv).unwrap()).unwrap();

    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let (p64, q64, w64) = (f64s(&p), f64s(&q), f64s(&w));
    // The value itself, in float32 against float64: the logits are O(4), so a few float32
    // roundings of O(4) quantities, times Σ|w| ≤ 8.
    let got = b.to_vec(&g.value(loss)).unwrap()[0] as f64;
    let want = weighted_kl(&p64, &q64, &w64, k);
    assert!((got - want).abs() < 1e-4, "value {got} vs {want}");

    // Central differences with h = 1e-5 in float64 have truncation error O(h²) ≈ 1e-10 and
    // rounding O(1e-16/h) ≈ 1e-11; the float32 gradients carry ~1e-6 relative error on entries of
    // size up to |w|·(1 + |log-ratio|) ≲ 20: the bar is 2e-5 absolute.
    let h = 1e-5;
    for (name, got, which) in [("p", &gp, 0), ("q", &gq, 1)] {
        for j in 0..n * k {
            let (mut a, mut c) = (p64.clone(), q64.clone());
            let v = if which == 0 { &mut a } else { &mut c };
            v[j] += h;
            let up = weighted_kl(&a, &c, &w64, k);
            let v = if which == 0 { &mut a } else { &mut c };
            v[j] -= 2.0 * h;
            let down = weighted_kl(&a, &c, &w64, k);
            let fd = (up - down) / (2.0 * h);
            assert!(
                (f64::from(got[j]) - fd).abs() < 2e-5,
                "∂/∂{name}[{j}]: graph {} vs finite differences {fd}",
                got[j]
            );
        }
    }
}

/// At `q = p` the divergence is zero and so is its gradient with respect to `q` (why TRADES
/// starts its attack from a small random perturbation, not from the clean image).
#[test]
fn kl_div_is_zero_and_flat_at_equal_logits() {
    let b = Cpu::new();
    let z = b
        .from_vec(&[2, 3], vec![1.0, -2.0, 0.5, 3.0, 3.0, -1.0])
        .unwrap();
    let g = Graph::new(b);
    let p = g.input(z.clone());
    let q = g.leaf(z);
    let loss = g.sum_all(g.kl_div(p, q).unwrap()).unwrap();
    assert!(b.to_vec(&g.value(loss)).unwrap()[0].abs() < 1e-7);
    let gq = b
        .to_vec(&g.backward(loss).unwrap().take(q).unwrap())
        .unwrap();
    assert!(gq.iter().all(|v| v.abs() < 1e-7), "{gq:?}");
}
