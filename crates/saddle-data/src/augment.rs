//! CIFAR-10 training augmentation: zero padding with a random crop, and a random horizontal
//! flip (as in Madry et al. 2018 and the usual CIFAR recipe).

use crate::error::{DataError, Result};
use crate::rng::Rng;

/// Random crop after zero padding, and random horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before cropping back to the original size.
    pub pad: usize,
    /// Flip each image left–right with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// The paper's CIFAR-10 augmentation: 4-pixel padding, 32×32 crop, random flip.
    pub const CIFAR10: Augment = Augment { pad: 4, flip: true };

    /// Augments every image of an NCHW batch in place. For each image, in order, the crop
    /// offsets `dy`, `dx` (uniform in `0..=2·pad`) and then the flip bit are drawn from `rng`,
    /// so a batch augments identically for the same generator state.
    pub fn apply(&self, batch: &mut [f32], shape: [usize; 4], rng: &mut Rng) -> Result<()> {
        let [n, c, h, w] = shape;
        let d = c * h * w;
        if n.checked_mul(d) != Some(batch.len()) {
            return Err(DataError::InvalidArgument(format!(
                "augment: batch of {} values does not have shape {shape:?}",
                batch.len()
            )));
        }
        let mut scratch = vec![0f32; d];
        for img in batch.chunks_exact_mut(d.max(1)).take(n) {
            let dy = rng.index(2 * self.pad + 1);
            let dx = rng.index(2 * self.pad + 1);
            let flip = self.flip && rng.next_bool();
            crop_flip(img, [c, h, w], self.pad, dy, dx, flip, &mut scratch)?;
            img.copy_from_slice(&scratch);
        }
        Ok(())
    }
}

impl Default for Augment {
    fn default() -> Self {
        Augment::CIFAR10
    }
}

/// Writes into `dst` the `h × w` crop at offset `(dy, dx)` of `src` zero-padded by `pad` on
/// every side, flipped left–right when `flip` is set. Offsets run over `0..=2·pad`; offset
/// `(pad, pad)` without flip is the identity.
pub fn crop_flip(
    src: &[f32],
    chw: [usize; 3],
    pad: usize,
    dy: usize,
    dx: usize,
    flip: bool,
    dst: &mut [f32],
) -> Result<()> {
    let [c, h, w] = chw;
    let d = c * h * w;
    if src.len() != d || dst.len() != d {
        return Err(DataError::InvalidArgument(format!(
            "crop_flip: source {} and destination {} values for an image of shape {chw:?}",
            src.len(),
            dst.len()
        )));
    }
    if dy > 2 * pad || dx > 2 * pad {
        return Err(DataError::InvalidArgument(format!(
            "crop_flip: offset ({dy}, {dx}) outside 0..={} for padding {pad}",
            2 * pad
        )));
    }
    for ch in 0..c {
        let plane = ch * h * w;
        for y in 0..h {
            // Source row in unpadded coordinates: y + dy - pad.
            let sy = (y + dy).checked_sub(pad).filter(|&sy| sy < h);
            for x in 0..w {
                let cx = if flip { w - 1 - x } else { x };
                let sx = (cx + dx).checked_sub(pad).filter(|&sx| sx < w);
                dst[plane + y * w + x] = match (sy, sx) {
                    (Some(sy), Some(sx)) => src[plane + sy * w + sx],
                    _ => 0.0,
                };
            }
        }
    }
    Ok(())
}
