//! Batcher determinism, subsets and the CIFAR-10 augmentation.

use saddle_data::{crop_flip, Augment, Batcher, Dataset, Rng};

#[test]
fn batcher_is_deterministic_and_covers_each_epoch() {
    let mut a = Batcher::new(103, 10, false, 42).unwrap();
    let mut b = Batcher::new(103, 10, false, 42).unwrap();
    assert_eq!(a.batches_per_epoch(), 11);
    let mut seen = vec![0; 103];
    for i in 0..11 {
        let x = a.next_batch().to_vec();
        assert_eq!(x, b.next_batch());
        assert_eq!(x.len(), if i == 10 { 3 } else { 10 });
        for j in x {
            seen[j] += 1;
        }
    }
    assert!(
        seen.iter().all(|&s| s == 1),
        "each example exactly once per epoch"
    );
    assert_eq!(a.epoch(), 0);
    let e1 = a.next_batch().to_vec();
    assert_eq!(a.epoch(), 1);
    assert_ne!(a.permutation(0), a.permutation(1), "epochs are reshuffled");
    assert_eq!(e1, a.epoch_batches(1)[0]);
    let other_seed = Batcher::new(103, 10, false, 43).unwrap();
    assert_ne!(other_seed.permutation(0), a.permutation(0));
}

#[test]
fn batcher_drop_last_and_seek() {
    let mut a = Batcher::new(25, 10, true, 1).unwrap();
    assert_eq!(a.batches_per_epoch(), 2);
    let stream: Vec<Vec<usize>> = (0..7).map(|_| a.next_batch().to_vec()).collect();
    assert!(stream.iter().all(|b| b.len() == 10));
    assert_eq!(a.step(), 7);
    let mut b = Batcher::new(25, 10, true, 1).unwrap();
    b.seek(5);
    assert_eq!(b.next_batch(), &stream[5][..]);
    assert_eq!(b.next_batch(), &stream[6][..]);
    assert!(Batcher::new(5, 10, true, 0).is_err());
    assert!(Batcher::new(0, 10, false, 0).is_err());
    assert!(Batcher::new(5, 0, false, 0).is_err());
}

#[test]
fn batcher_stream_is_pinned() {
    // Changing these numbers changes every seeded training run: do it only on purpose.
    let mut b = Batcher::new(10, 4, false, 0).unwrap();
    let got: Vec<Vec<usize>> = (0..3).map(|_| b.next_batch().to_vec()).collect();
    assert_eq!(got, PINNED);
}
// Re-pinned when the data pipeline moved to saddle-tensor's shared generator (xoshiro256++).
const PINNED: [&[usize]; 3] = [&[3, 0, 9, 4], &[5, 8, 6, 1], &[7, 2]];

fn image(c: usize, h: usize, w: usize) -> Vec<f32> {
    (0..c * h * w).map(|i| i as f32 + 1.0).collect()
}

#[test]
fn crop_at_pad_offset_without_flip_is_identity() {
    let src = image(3, 32, 32);
    let mut dst = vec![0.0; src.len()];
    crop_flip(&src, [3, 32, 32], 4, 4, 4, false, &mut dst).unwrap();
    assert_eq!(dst, src);
}

#[test]
fn flip_twice_is_identity() {
    let src = image(3, 32, 32);
    let mut once = vec![0.0; src.len()];
    let mut twice = vec![0.0; src.len()];
    crop_flip(&src, [3, 32, 32], 4, 4, 4, true, &mut once).unwrap();
    assert_ne!(once, src);
    assert_eq!(once[0], src[31], "row 0 reversed");
    crop_flip(&once, [3, 32, 32], 4, 4, 4, true, &mut twice).unwrap();
    assert_eq!(twice, src);
}

#[test]
fn crop_shifts_and_zero_pads() {
    let (c, h, w) = (2, 5, 6);
    let src = image(c, h, w);
    let mut dst = vec![0.0; src.len()];
    // offset (0, 8) with pad 4: out(y, x) = src(y - 4, x + 4)
    crop_flip(&src, [c, h, w], 4, 0, 8, false, &mut dst).unwrap();
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let want = if y >= 4 && x + 4 < w {
                    src[ch * h * w + (y - 4) * w + x + 4]
                } else {
                    0.0
                };
                assert_eq!(dst[ch * h * w + y * w + x], want, "({ch},{y},{x})");
            }
        }
    }
    assert!(crop_flip(&src, [c, h, w], 4, 9, 0, false, &mut dst).is_err());
    assert!(crop_flip(&src[1..], [c, h, w], 4, 0, 0, false, &mut dst).is_err());
}

#[test]
fn augment_is_seeded_and_keeps_shape_and_values() {
    let n = 16;
    let batch: Vec<f32> = (0..n).flat_map(|_| image(3, 32, 32)).collect();
    let shape = [n, 3, 32, 32];
    let mut a = batch.clone();
    let mut b = batch.clone();
    Augment::CIFAR10
        .apply(&mut a, shape, &mut Rng::seed_from_u64(9))
        .unwrap();
    Augment::CIFAR10
        .apply(&mut b, shape, &mut Rng::seed_from_u64(9))
        .unwrap();
    assert_eq!(a, b, "same seed, same augmentation");
    let mut c = batch.clone();
    Augment::CIFAR10
        .apply(&mut c, shape, &mut Rng::seed_from_u64(10))
        .unwrap();
    assert_ne!(a, c);
    assert_eq!(a.len(), batch.len());
    // Every output value is zero padding or a value of the same channel of the source.
    for img in a.chunks(3 * 1024) {
        for ch in 0..3 {
            for &v in &img[ch * 1024..(ch + 1) * 1024] {
                assert!(
                    v == 0.0 || ((ch * 1024) as f32 + 1.0..=((ch + 1) * 1024) as f32).contains(&v)
                );
            }
        }
    }
    // At most 4 rows and 4 columns of padding.
    for img in a.chunks(3 * 1024) {
        assert!(img.iter().filter(|&&v| v == 0.0).count() <= 3 * (32 * 32 - 28 * 28));
    }
    assert!(Augment::CIFAR10
        .apply(&mut a[1..], shape, &mut Rng::seed_from_u64(0))
        .is_err());
    // pad 0 without flip changes nothing
    let mut d = batch.clone();
    Augment {
        pad: 0,
        flip: false,
    }
    .apply(&mut d, shape, &mut Rng::seed_from_u64(0))
    .unwrap();
    assert_eq!(d, batch);
}

#[test]
fn subset_sample_is_reproducible_and_distinct() {
    let n = 50;
    let images: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let d = Dataset::new("toy", images, labels, [n, 1, 1, 1], 10).unwrap();
    let s = d.subset_sample(20, 5);
    assert_eq!(s, d.subset_sample(20, 5));
    assert_ne!(s.images, d.subset_sample(20, 6).images);
    let mut v = s.images.clone();
    v.dedup();
    assert_eq!(v.len(), 20, "no repeats, sorted");
    assert_eq!(d.subset_sample(500, 1).len(), n);
}
