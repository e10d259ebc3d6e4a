//! The computations behind the paper's figures (Madry et al. 2018, Section 3 and Appendix C):
//! the loss landscape of the inner maximisation (PGD from many random starts) and what a
//! model's first layer and softmax layer look like. Drawing is left to the caller (the CLI).

use saddle_attacks::{Attack, Pgd};
use saddle_models::{Classifier, ParamSet};
use saddle_tensor::{Backend, TensorLike};

use crate::error::{Result, TrainError};

/// How many copies of the images one PGD batch holds at most: restarts are run side by side in
/// a batch (each copy draws its own random start), which is much faster than one after another.
const MAX_BATCH: usize = 256;

/// PGD from many random starts on a few images.
#[derive(Clone, Debug, PartialEq)]
pub struct Landscape {
    /// `losses[i][r][t]`: the cross-entropy of image `i` at iterate `t` of restart `r`; `t = 0`
    /// is the random start, `t = steps` the final iterate.
    pub losses: Vec<Vec<Vec<f32>>>,
    /// Per image, the largest final loss over the restarts: the loss at [`Landscape::x_adv`].
    pub worst: Vec<f32>,
    /// Per image, the iterate with the largest final loss (row-major, like the input).
    pub x_adv: Vec<f32>,
}

impl Landscape {
    /// `finals()[i][r]`: the final loss of image `i` after restart `r`.
    pub fn finals(&self) -> Vec<Vec<f32>> {
        self.losses
            .iter()
            .map(|img| img.iter().map(|c| *c.last().expect("a curve")).collect())
            .collect()
    }
}

/// Runs `restarts` PGD attacks (L∞ ball of radius `eps`, step `alpha`, `steps` steps, a random
/// start each, no early stop) on the images `x` (`[n, c, h, w]`, host, in `[0, 1]`) with labels
/// `y` and records the cross-entropy at every iterate.
///
/// # Errors
/// Zero restarts or steps, a bad radius or step size, inputs that do not fit the model.
pub fn landscape<B: Backend>(
    model: &mut dyn Classifier<B>,
    x: &[f32],
    y: &[usize],
    eps: f32,
    alpha: f32,
    steps: usize,
    restarts: usize,
    seed: u64,
) -> Result<Landscape> {
    if restarts == 0 {
        return Err(TrainError::Config("restarts must be at least 1".into()));
    }
    if steps == 0 {
        return Err(TrainError::Config("steps must be at least 1".into()));
    }
    let n = y.len();
    let [c, h, w] = model.input_shape();
    let d = c * h * w;
    if n == 0 || x.len() != n * d {
        return Err(TrainError::Config(format!(
            "landscape needs at least one image of {d} values per label; got {} values for {n} \
             labels",
            x.len()
        )));
    }
    // `k` copies of the batch side by side; `rounds` PGD restarts of that wide batch.
    let k = restarts.min((MAX_BATCH / n).max(1));
    let rounds = restarts.div_ceil(k);
    let b = model.backend().clone();
    let xs: Vec<f32> = (0..k).flat_map(|_| x.iter().copied()).collect();
    let ys: Vec<f32> = (0..k).flat_map(|_| y.iter().map(|&v| v as f32)).collect();
    let xt = b.from_vec(&[k * n, c, h, w], xs)?;
    let yt = b.from_vec(&[k * n], ys)?;
    let pgd = Pgd::linf(eps, alpha, steps)?
        .restarts(rounds)
        .early_stop(false)
        .trace(true)
        .seed(seed);
    let res = pgd.perturb(model, &xt, &yt)?;
    let trace = res.trace.expect("trace asked for");
    let mut losses = vec![Vec::with_capacity(restarts); n];
    for round in &trace.losses {
        for j in 0..k {
            for (i, curves) in losses.iter_mut().enumerate() {
                if curves.len() < restarts {
                    curves.push(round.iter().map(|step| step[j * n + i]).collect());
                }
            }
        }
    }
    // Per image, the copy whose best restart went highest.
    let adv = b.to_vec(&res.x_adv)?;
    let mut worst = Vec::with_capacity(n);
    let mut x_adv = Vec::with_capacity(n * d);
    for i in 0..n {
        let j = (0..k)
            .max_by(|&a, &c| res.loss[a * n + i].total_cmp(&res.loss[c * n + i]))
            .expect("k >= 1");
        worst.push(res.loss[j * n + i]);
        x_adv.extend_from_slice(&adv[(j * n + i) * d..(j * n + i + 1) * d]);
    }
    Ok(Landscape {
        losses,
        worst,
        x_adv,
    })
}

/// Min, median, max of `v` (not empty, finite) and the ratio max / median.
pub fn spread(v: &[f32]) -> (f32, f32, f32, f32) {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let m = s.len();
    let median = if m % 2 == 1 {
        s[m / 2]
    } else {
        0.5 * (s[m / 2 - 1] + s[m / 2])
    };
    (s[0], median, s[m - 1], s[m - 1] / median)
}

/// The first layer's filters: `count` filters of `channels × height × width` weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Filters {
    /// The parameter they come from (for example `conv1.weight`).
    pub name: String,
    /// Number of filters (output channels).
    pub count: usize,
    /// Input channels.
    pub channels: usize,
    /// Kernel height.
    pub height: usize,
    /// Kernel width.
    pub width: usize,
    /// The weights, `[count, channels, height, width]` row-major.
    pub weights: Vec<f32>,
}

/// A filter counts as zero when its largest absolute weight is below this fraction of the
/// largest absolute weight of the layer.
///
/// Relative, because a ReLU network's scale can move between layers; 1 %, because a filter that
/// small changes its feature map by less than 1 % of the strongest filter's on any input in
/// `[0, 1]`, far below what the next layer's (initially comparable) weights can tell apart,
/// while untrained filters (all drawn from one distribution) are all far above it.
pub const ZERO_FILTER_FRACTION: f32 = 0.01;

impl Filters {
    /// Per filter, its largest absolute weight.
    pub fn max_abs(&self) -> Vec<f32> {
        let per = self.channels * self.height * self.width;
        self.weights
            .chunks(per)
            .map(|f| f.iter().fold(0.0f32, |a, v| a.max(v.abs())))
            .collect()
    }

    /// How many filters are not zero: largest absolute weight at least
    /// [`ZERO_FILTER_FRACTION`] of the layer's largest.
    pub fn nonzero(&self) -> usize {
        let m = self.max_abs();
        let top = m.iter().fold(0.0f32, |a, &v| a.max(v));
        if top == 0.0 {
            return 0;
        }
        m.iter()
            .filter(|&&v| v >= ZERO_FILTER_FRACTION * top)
            .count()
    }

    /// The filters as one grayscale image: a grid of `cols` columns with one tile per filter
    /// (the channels' mean for filters of several input channels), tiles separated by `gap`
    /// pixels, values scaled to `[-1, 1]` by the layer's largest absolute weight (gaps are 0).
    pub fn grid(&self, cols: usize, gap: usize) -> Grid {
        let cols = cols.clamp(1, self.count.max(1));
        let rows = self.count.div_ceil(cols);
        let (th, tw) = (self.height, self.width);
        let width = cols * tw + (cols + 1) * gap;
        let height = rows * th + (rows + 1) * gap;
        let top = self.max_abs().iter().fold(0.0f32, |a, &v| a.max(v));
        let scale = if top > 0.0 { 1.0 / top } else { 0.0 };
        let mut pixels = vec![0.0f32; width * height];
        let per = self.channels * th * tw;
        let mut tiles = Vec::with_capacity(self.count);
        for f in 0..self.count {
            let (r, c) = (f / cols, f % cols);
            let (y0, x0) = (gap + r * (th + gap), gap + c * (tw + gap));
            tiles.push((x0, y0));
            let w = &self.weights[f * per..(f + 1) * per];
            for y in 0..th {
                for x in 0..tw {
                    let v: f32 = (0..self.channels)
                        .map(|ch| w[ch * th * tw + y * tw + x])
                        .sum::<f32>()
                        / self.channels as f32;
                    pixels[(y0 + y) * width + x0 + x] = v * scale;
                }
            }
        }
        Grid {
            width,
            height,
            tile_width: tw,
            tile_height: th,
            tiles,
            pixels,
        }
    }
}

/// A grid of filter tiles.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width of one tile.
    pub tile_width: usize,
    /// Height of one tile.
    pub tile_height: usize,
    /// The top-left corner `(x, y)` of each tile, one per filter.
    pub tiles: Vec<(usize, usize)>,
    /// `height × width` values in `[-1, 1]`, row-major.
    pub pixels: Vec<f32>,
}

/// The first convolution's weights: the first four-dimensional parameter.
///
/// # Errors
/// A model without one.
pub fn first_layer_filters<B: Backend>(b: &B, params: &ParamSet<B>) -> Result<Filters> {
    let (name, t) = params
        .iter()
        .find(|(_, t)| t.dims().len() == 4)
        .ok_or_else(|| TrainError::Config("the model has no convolution".into()))?;
    let d = t.dims();
    Ok(Filters {
        name: name.to_string(),
        count: d[0],
        channels: d[1],
        height: d[2],
        width: d[3],
        weights: b.to_vec(t)?,
    })
}

/// The softmax layer's biases: the bias of the last two-dimensional (linear) weight with
/// `classes` rows. Returns its name and values.
///
/// # Errors
/// A model without such a layer or bias.
pub fn softmax_biases<B: Backend>(
    b: &B,
    params: &ParamSet<B>,
    classes: usize,
) -> Result<(String, Vec<f32>)> {
    let (wname, _) = params
        .iter()
        .filter(|(_, t)| t.dims().len() == 2 && t.dims()[0] == classes)
        .last()
        .ok_or_else(|| TrainError::Config("the model has no linear layer to the classes".into()))?;
    let bname = match wname.strip_suffix("weight") {
        Some(p) => format!("{p}bias"),
        None => String::new(),
    };
    let t = params
        .get(&bname)
        .filter(|t| t.dims() == [classes])
        .ok_or_else(|| TrainError::Config(format!("the layer {wname} has no bias")))?;
    Ok((bname, b.to_vec(t)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use saddle_models::MnistNet;
    use saddle_tensor::cpu::Cpu;

    fn images(n: usize) -> (Vec<f32>, Vec<usize>) {
        let x = (0..n * 784)
            .map(|i| ((i * 31) % 101) as f32 / 101.0)
            .collect();
        (x, (0..n).map(|i| (i * 3) % 10).collect())
    }

    fn ce(net: &MnistNet<Cpu>, x: &[f32], y: &[usize]) -> Vec<f32> {
        let b = Cpu::new();
        let n = y.len();
        let xt = b.from_vec(&[n, 1, 28, 28], x.to_vec()).unwrap();
        let yt = b
            .from_vec(&[n], y.iter().map(|&v| v as f32).collect())
            .unwrap();
        let z = net.logits(&xt).unwrap();
        b.to_vec(&b.cross_entropy(&z, &yt).unwrap()).unwrap()
    }

    #[test]
    fn curves_have_one_point_per_iterate_and_end_at_the_returned_example() {
        let mut net = MnistNet::new(Cpu::new(), 1, 5).unwrap();
        let (x, y) = images(3);
        // 7 restarts of 3 images run side by side in one batch of 21.
        let l = landscape(&mut net, &x, &y, 0.3, 0.05, 4, 7, 1).unwrap();
        assert_eq!(l.losses.len(), 3);
        for img in &l.losses {
            assert_eq!(img.len(), 7);
            assert!(img.iter().all(|c| c.len() == 5));
        }
        let finals = l.finals();
        let at_adv = ce(&net, &l.x_adv, &y);
        for i in 0..3 {
            let top = finals[i].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            assert!((top - l.worst[i]).abs() < 1e-5, "{top} vs {}", l.worst[i]);
            assert!((at_adv[i] - l.worst[i]).abs() < 1e-4 * (1.0 + at_adv[i].abs()));
            // Random starts differ.
            assert!(l.losses[i][0][0] != l.losses[i][1][0]);
            // The adversarial example stays in the ball.
            let d = x[i * 784..(i + 1) * 784]
                .iter()
                .zip(&l.x_adv[i * 784..(i + 1) * 784])
                .fold(0.0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(d <= 0.3 + 1e-6);
        }
    }

    #[test]
    fn without_a_ball_every_curve_is_the_clean_loss() {
        let mut net = MnistNet::new(Cpu::new(), 1, 2).unwrap();
        let (x, y) = images(2);
        let clean = ce(&net, &x, &y);
        let l = landscape(&mut net, &x, &y, 0.0, 0.01, 3, 2, 0).unwrap();
        for i in 0..2 {
            for c in &l.losses[i] {
                for &v in c {
                    assert!((v - clean[i]).abs() < 1e-5, "{v} vs {}", clean[i]);
                }
            }
        }
    }

    #[test]
    fn restarts_beyond_one_batch_run_in_rounds() {
        let mut net = MnistNet::new(Cpu::new(), 1, 3).unwrap();
        let (x, y) = images(1);
        let l = landscape(&mut net, &x, &y, 0.1, 0.05, 1, MAX_BATCH + 3, 4).unwrap();
        assert_eq!(l.losses[0].len(), MAX_BATCH + 3);
        let top = l.finals()[0]
            .iter()
            .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        assert_eq!(top, l.worst[0]);
    }

    #[test]
    fn zero_restarts_or_steps_are_errors() {
        let mut net = MnistNet::new(Cpu::new(), 1, 3).unwrap();
        let (x, y) = images(1);
        assert!(landscape(&mut net, &x, &y, 0.3, 0.01, 2, 0, 0).is_err());
        assert!(landscape(&mut net, &x, &y, 0.3, 0.01, 0, 2, 0).is_err());
        assert!(landscape(&mut net, &x[..10], &y, 0.3, 0.01, 2, 2, 0).is_err());
    }

    #[test]
    fn spread_of_final_losses() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0, 1.5));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0, 1.6));
    }

    #[test]
    fn the_filter_grid_has_one_tile_per_filter() {
        let b = Cpu::new();
        let net = MnistNet::new(b, 3, 1).unwrap();
        let f = first_layer_filters(&b, net.params()).unwrap();
        assert_eq!(f.name, "conv1.weight");
        assert_eq!((f.count, f.channels, f.height, f.width), (6, 1, 5, 5));
        let g = f.grid(4, 1);
        assert_eq!(g.tiles.len(), 6);
        assert_eq!((g.width, g.height), (4 * 5 + 5, 2 * 5 + 3));
        // Tile 5 (row 1, column 1) holds filter 5, scaled by the layer's largest weight.
        let top = f.max_abs().iter().fold(0.0f32, |a, &v| a.max(v));
        let (x0, y0) = g.tiles[5];
        assert_eq!((x0, y0), (7, 7));
        assert_eq!(g.pixels[y0 * g.width + x0], f.weights[5 * 25] / top);
        assert!(g.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(f.nonzero(), 6);
    }

    #[test]
    fn small_filters_count_as_zero() {
        let mut weights = vec![0.0f32; 3 * 4];
        weights[0] = 1.0; // filter 0: max 1
        weights[4] = -0.5; // filter 1: max 0.5
        weights[8] = 0.009; // filter 2: below 1 % of 1
        let f = Filters {
            name: "w".into(),
            count: 3,
            channels: 1,
            height: 2,
            width: 2,
            weights,
        };
        assert_eq!(f.nonzero(), 2);
    }

    #[test]
    fn softmax_biases_are_the_last_linear_layers() {
        let b = Cpu::new();
        let net = MnistNet::new(b, 1, 1).unwrap();
        let (name, v) = softmax_biases(&b, net.params(), 10).unwrap();
        assert_eq!(name, "fc2.bias");
        assert_eq!(v, b.to_vec(net.params().get("fc2.bias").unwrap()).unwrap());
        assert!(softmax_biases(&b, net.params(), 7).is_err());
    }
}
