//! What the integration tests of saddle-train share.

use saddle_data::Dataset;
use saddle_tensor::rng::Rng;

/// A synthetic 10-class problem on 28×28 images: class c is a bright 6×6 square at one of ten
/// fixed places, on uniform noise of amplitude 0.3. Easy to learn, impossible to guess.
pub fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut r = Rng::new(seed);
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 10) as u8;
        let (r0, c0) = (2 + (c as usize / 5) * 14, 1 + (c as usize % 5) * 5);
        for y in 0..28 {
            for x in 0..28 {
                let on = (r0..r0 + 6).contains(&y) && (c0..c0 + 5).contains(&x);
                images.push(if on {
                    0.7 + 0.3 * r.next_f32()
                } else {
                    0.3 * r.next_f32()
                });
            }
        }
        labels.push(c);
    }
    Dataset::new("synthetic", images, labels, [n, 1, 28, 28], 10).unwrap()
}
