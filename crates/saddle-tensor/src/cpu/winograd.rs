//! Winograd convolution F(m×m, 3×3), `m` = 2 or 4, for 3×3, stride-1, padding-1 layers
//! (forward, and the gradient with respect to the input, which is such a convolution of the
//! output gradient with the flipped, transposed weights).
//!
//! Each output channel's image is cut into `m × m` tiles; tile `t` reads the `(m+2)×(m+2)`
//! window `d` of each input channel around it (zeros outside the image). With `V = Bᵀ d B`
//! (per tile and input channel), `U = G g Gᵀ` (per pair of channels, `g` the 3×3 filter) and,
//! for each of the `(m+2)²` positions `ξ` of a window, the product `M[ξ] = V[ξ] · U[ξ]` (tiles
//! × input channels times input channels × output channels), the tile's outputs are
//! `Aᵀ M A`. F(2×2, 3×3) takes 16 products of `c` terms per 4 outputs where the direct
//! convolution takes 36:
//!
//! ```text
//!      ⎡1  0 −1  0⎤       ⎡1   0  0⎤
//! Bᵀ = ⎢0  1  1  0⎥   G = ⎢½   ½  ½⎥   Aᵀ = ⎡1  1  1  0⎤
//!      ⎢0 −1  1  0⎥       ⎢½  −½  ½⎥        ⎣0  1 −1 −1⎦
//!      ⎣0  1  0 −1⎦       ⎣0   0  1⎦
//! ```
//!
//! F(4×4, 3×3) (Lavin & Gray 2016, points 0, ±1, ±2, ∞; its matrices at [`input_block4`],
//! [`G4`] and [`at4`]) takes 36 per 16 outputs, and its transforms move 2.25 values per output
//! where F(2×2) moves 4: the forward, the input gradient and the weight gradient use it
//! wherever [`tile_size`] says it is the faster (every layer but small images with many
//! channels).
//!
//! **Per task** (one image, or a few small ones, in parallel with rayon), per block of whole
//! rows of tiles (sized to stay in the L2 cache, and of 48 tiles or more, the kernel computing
//! tiles six or seven at a time): the input transform straight from the image into `V[ξ]`
//! (`[row of tiles][c][tw + 1]`), the `(m+2)²` products on the micro-kernel of [`super::kernel`]
//! (`V[ξ]` read in place through per-tile row pointers, `U[ξ]` packed once per call as the
//! kernel wants it) into `M[ξ]` (`[k][tile]`), and the output transform, `+ bias`, ReLU, into
//! the output. The transforms are long loops over every channel's tiles, compiled once for each
//! instruction set ([`Simd`]) so that the compiler vectorises them with its registers; all
//! scratch comes from the pool ([`Scratch`]): after the first call nothing is allocated.
//!
//! **Determinism**: the transforms are plain `f32` arithmetic in a fixed order (products
//! by ±1 and ½ are exact, F(4×4)'s by 2, 4, 5, 8 and its `G`'s fractions are rounded once
//! each; Rust never fuses `a·b + c`), written element by element, so they give the same bits
//! however the compiler vectorises them. Each `M` element is the kernel's chain:
//! one fused multiply-add per input channel in order, from +0, on AVX-512 and AVX2 alike (the
//! portable kernel rounds each product first), then `+ 0.0`. Each output is
//! `((Aᵀ M A) + bias)` then ReLU. No result depends on the thread count, and the AVX-512 and
//! AVX2 kernels agree bit for bit (tested against that chain computed in scalar code).
//!
//! **Gradient with respect to the weights** ([`backward_weight`]): the adjoint of the forward
//! map `g ↦ Aᵀ[(G g Gᵀ) ⊙ V]A`, summed over tiles: `gw = Gᵀ (Σ_t V_t ⊙ (A gy_t Aᵀ)) G`. Per
//! `ξ` the sum over the tiles of the whole batch is a product (channels × tiles times tiles ×
//! output channels) on [`kernel::gemm`], `V` from [`input_block`] read through a table of tile
//! offsets, `A gy Aᵀ` from each image's `gy` transposed to `[pixel][channel]` (`gy_t` the
//! tile's `m × m` output gradient). The batch's
//! rows of tiles go in fixed blocks, consecutive blocks in at most 16 tasks; each task's
//! partial sums are added in task order, so the bits depend on the shapes only (not on the
//! thread count, and the same on AVX-512 and AVX2).

use rayon::prelude::*;

use super::conv::Direct;
use super::kernel::{self, BSrc, Isa, Offs, Out, MR, P};
use super::pool::Scratch;

/// Fewest channels summed over (input channels forward, output channels for the input
/// gradient) for which the Winograd path is used, on the AVX-512 kernel: measured on the
/// 3×3 layers of a wide ResNet 16-2 at batch 128 (one thread), a sum over 16 channels ran at
/// 0.85–0.89× the direct convolution's speed, over 32 at 1.0–1.3×.
pub const MIN_SUM_AVX512: usize = 32;
/// The same on the AVX2 and portable kernels (16 channels: 1.14–1.25× on AVX2).
pub const MIN_SUM: usize = 16;
/// Fewest channels produced (output channels forward, input channels for the gradient).
pub const MIN_OUT: usize = 16;
/// Bytes of a block's `V` and `M` together: a block of tiles is transformed, multiplied and
/// transformed back while it is in the L2 cache.
const BLOCK_BYTES: usize = 512 << 10;
/// Fewest tiles in a block (when the images of a task have them).
const MIN_TILES: usize = 48;
/// Most images per task.
const MAX_GROUP: usize = 8;

/// Whether [`forward`] is the faster way to compute the convolution `d` (forward geometry): a
/// 3×3 kernel, stride 1, padding 1, at least [`MIN_SUM_AVX512`] (AVX-512) or [`MIN_SUM`] input
/// channels and [`MIN_OUT`] output channels.
pub fn applies(d: &Direct) -> bool {
    geometry_fits(d) && d.c >= min_sum() && d.k >= MIN_OUT
}

/// Whether [`backward_input`] is the faster way to compute the gradient with respect to the
/// input of the convolution `d` (forward geometry): as [`applies`] with the roles of `c` and
/// `k` exchanged (the gradient sums over the `k` output channels).
pub fn applies_backward_input(d: &Direct) -> bool {
    geometry_fits(d) && d.k >= min_sum() && d.c >= MIN_OUT
}

fn min_sum() -> usize {
    if kernel::isa() == Isa::Avx512 {
        MIN_SUM_AVX512
    } else {
        MIN_SUM
    }
}

/// 3×3, stride 1, padding 1: the output has the input's size.
fn geometry_fits(d: &Direct) -> bool {
    d.kh == 3 && d.kw == 3 && d.stride == 1 && d.pad == 1 && d.oh == d.h && d.ow == d.w
}

/// `out` `[n, k, oh, ow]` = the convolution of `x` `[n, c, h, w]` with `w` `[k, c, 3, 3]`
/// (stride 1, padding 1), `+ bias`, then ReLU if asked. Any `c`, `k` ≥ 1 and any size.
pub fn forward(
    d: &Direct,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    forward_tiled(d, tile_size(d), x, w, bias, relu, None, out);
}

/// `out` = [`forward`]'s convolution (`+ bias`, no ReLU) `+ residual` (`[n, k, h, w]`, added
/// last, element by element, as a separate addition would: the same bits, one pass fewer).
pub fn forward_add(
    d: &Direct,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: &[f32],
    out: &mut [f32],
) {
    assert!(residual.len() >= d.n * d.k * d.h * d.w);
    forward_tiled(d, tile_size(d), x, w, bias, false, Some(residual), out);
}

/// [`forward`] or [`forward_add`] on output tiles of `m × m` (2 or 4).
#[allow(clippy::too_many_arguments)]
fn forward_tiled(
    d: &Direct,
    m: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(
        geometry_fits(d),
        "Winograd convolution needs 3×3, stride 1, padding 1"
    );
    assert!(x.len() >= d.n * d.c * d.h * d.w && w.len() >= d.k * d.c * 9);
    assert!(out.len() >= d.n * d.k * d.h * d.w);
    assert!(bias.is_none_or(|b| b.len() >= d.k));
    let mut u = Scratch::new(planes(m) * d.c * kpad(d.k));
    // Reduction index p = input channel, column j = output channel: g = w[j][p].
    transform_weights(m, d.c, d.k, |p, j| window(&w[(j * d.c + p) * 9..]), &mut u);
    run(m, d.n, d.c, d.k, d.h, d.w, x, &u, bias, relu, residual, out);
}

/// `gx` `[n, c, h, w]` = the gradient with respect to the input of [`forward`]'s convolution
/// (without bias or ReLU: `gy` is the gradient of its output, `[n, k, h, w]`):
/// `gx[ch][i][j] = Σ_{o, a, b} gy[o][i+a−1][j+b−1] · w[o][ch][2−a][2−b]`, a stride-1 padding-1
/// convolution of `gy` with the flipped, transposed weights.
pub fn backward_input(d: &Direct, gy: &[f32], w: &[f32], gx: &mut [f32]) {
    // The gradient is a convolution over the output channels: its tiles are the forward's.
    backward_input_tiled(d, tile_size(d), gy, w, gx);
}

/// [`backward_input`] on tiles of `m × m` (2 or 4).
fn backward_input_tiled(d: &Direct, m: usize, gy: &[f32], w: &[f32], gx: &mut [f32]) {
    assert!(
        geometry_fits(d),
        "Winograd convolution needs 3×3, stride 1, padding 1"
    );
    assert!(gy.len() >= d.n * d.k * d.h * d.w && w.len() >= d.k * d.c * 9);
    assert!(gx.len() >= d.n * d.c * d.h * d.w);
    let mut u = Scratch::new(planes(m) * d.k * kpad(d.c));
    // Reduction index p = output channel o, column j = input channel: g = w[o][j] flipped.
    transform_weights(
        m,
        d.k,
        d.c,
        |p, j| {
            let mut g = window(&w[(p * d.c + j) * 9..]);
            g.reverse();
            g
        },
        &mut u,
    );
    run(m, d.n, d.k, d.c, d.h, d.w, gy, &u, None, false, None, gx);
}

/// The output tile the convolution `d` and its gradients use: F(4×4, 3×3) (36 products per 16
/// outputs against 16 per 4, and as much less transform traffic), except on small images with
/// many channels both ways, where the 36 planes of transformed weights (or of the weight
/// gradient's partial sums) are read for few tiles. Measured (`winograd_speed`, AVX-512 on 2
/// Intel Xeon cores, one thread, CPU ms on tiles of 2 → 4, forward / weight gradient):
/// `c,k,h,w` 32,32,32,32 (batch 128) 19.3 → 15.6 / 28.2 → 22.9; 64,64,16,16 14.9 → 10.6 /
/// 20.9 → 16.7; 128,128,8,8 14.5 → 11.1 / 16.7 → 14.8; 160,160,32,32 (batch 16)
/// 43.1 → 30.0 / 44.1 → 33.7; 320,320,16,16 46.5 → 35.2 / 40.9 → 29.9; but 640,640,8,8
/// 81.0 → 99.1 / 47.2 → 68.3 (the input gradient as the forward).
fn tile_size(d: &Direct) -> usize {
    if let Some(m) = FORCED_TILE.with(|t| t.get()) {
        return m;
    }
    // Fewer than 16 tiles an image, and a plane of transformed weights over 256 KiB.
    if d.h * d.w < 256 && d.c * d.k > 256 * 256 {
        2
    } else {
        4
    }
}

thread_local! {
    /// The tile [`with_tile`] asks for on this thread, if any.
    static FORCED_TILE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with [`tile_size`] answering `m` (2 or 4) on this thread, then restores the
/// previous answer (also if `f` panics).
pub fn with_tile<R>(m: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED_TILE.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(FORCED_TILE.with(|t| t.replace(Some(m))));
    f()
}

/// Planes `ξ` of a tile's transform: `(m + 2)²`.
fn planes(m: usize) -> usize {
    (m + 2) * (m + 2)
}

/// The nine weights of one filter, row-major.
fn window(w: &[f32]) -> [f32; 9] {
    let mut g = [0.0; 9];
    g.copy_from_slice(&w[..9]);
    g
}

/// Columns of the transformed weights: `k` rounded up to a whole vector.
fn kpad(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// Index of `U[ξ]`'s element (reduction `p` of `pc`, column `j`) in the transformed weights:
/// `U[ξ]` row-major `[pc, kp]`, or for the AVX2 kernel ([`kernel::wants_slabs`]) as `kp / 16`
/// slabs of `pc × 16`.
fn u_index(slabs: bool, pc: usize, kp: usize, xi: usize, p: usize, j: usize) -> usize {
    if slabs {
        xi * pc * kp + (j / 16) * pc * 16 + p * 16 + j % 16
    } else {
        xi * pc * kp + p * kp + j
    }
}

/// `u` = `U[ξ] = G g Gᵀ` for reduction index `p < pc` and column `j < cols` (zeros in the
/// padding columns up to [`kpad`]), laid out as [`u_index`] says, for tiles of `m × m`.
fn transform_weights(
    m: usize,
    pc: usize,
    cols: usize,
    g: impl Fn(usize, usize) -> [f32; 9],
    u: &mut [f32],
) {
    let (kp, slabs) = (kpad(cols), kernel::wants_slabs());
    for xi in 0..planes(m) {
        for p in 0..pc {
            for j in cols..kp {
                u[u_index(slabs, pc, kp, xi, p, j)] = 0.0;
            }
        }
    }
    if m == 2 {
        for p in 0..pc {
            for j in 0..cols {
                for (xi, &v) in weight_tile(&g(p, j)).iter().enumerate() {
                    u[u_index(slabs, pc, kp, xi, p, j)] = v;
                }
            }
        }
        return;
    }
    // Sixteen filters at a time, vectorised across them.
    let simd = Simd::get();
    for p in 0..pc {
        for j0 in (0..cols).step_by(16) {
            let lanes = (cols - j0).min(16);
            let mut f = [[0.0f32; 16]; 9];
            for l in 0..lanes {
                for (q, v) in g(p, j0 + l).into_iter().enumerate() {
                    f[q][l] = v;
                }
            }
            let mut t = [[0.0f32; 16]; 36];
            simd.weight_tiles4(&f, &mut t);
            for (xi, tx) in t.iter().enumerate() {
                for (l, &v) in tx[..lanes].iter().enumerate() {
                    u[u_index(slabs, pc, kp, xi, p, j0 + l)] = v;
                }
            }
        }
    }
}

/// `G g Gᵀ` of a row-major 3×3 filter, row-major 4×4.
fn weight_tile(g: &[f32; 9]) -> [f32; 16] {
    // t = G g (4×3), then G tᵀ per row of t (u = t Gᵀ).
    let mut t = [[0.0f32; 3]; 4];
    for j in 0..3 {
        let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
        t[0][j] = g0;
        t[1][j] = ((g0 + g1) + g2) * 0.5;
        t[2][j] = ((g0 - g1) + g2) * 0.5;
        t[3][j] = g2;
    }
    let mut u = [0.0f32; 16];
    for i in 0..4 {
        let [g0, g1, g2] = t[i];
        u[4 * i] = g0;
        u[4 * i + 1] = ((g0 + g1) + g2) * 0.5;
        u[4 * i + 2] = ((g0 - g1) + g2) * 0.5;
        u[4 * i + 3] = g2;
    }
    u
}

/// `G` of F(4×4, 3×3) (Lavin & Gray 2016), in `f32`: the interpolation points 0, ±1, ±2, ∞.
pub(super) const G4: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `t[ξ][l]` = `(G g Gᵀ)[ξ]` for F(4×4, 3×3) (row-major 6×6) of the 3×3 filter `l` of
/// sixteen (`g[q][l]` its element `q`, row-major): each element a sum over the three terms in
/// order (`G g`, then `(G g) Gᵀ`), products rounded one by one, filter by filter the same
/// operations.
#[inline(always)]
fn weight_tiles4(g: &[[f32; 16]; 9], t: &mut [[f32; 16]; 36]) {
    let mut gg = [[[0.0f32; 16]; 3]; 6];
    for (gi, row) in G4.iter().zip(gg.iter_mut()) {
        for (j, v) in row.iter_mut().enumerate() {
            for l in 0..16 {
                let mut s = gi[0] * g[j][l];
                s += gi[1] * g[3 + j][l];
                s += gi[2] * g[6 + j][l];
                v[l] = s;
            }
        }
    }
    for (i, row) in gg.iter().enumerate() {
        for (j, gj) in G4.iter().enumerate() {
            for l in 0..16 {
                let mut s = row[0][l] * gj[0];
                s += row[1][l] * gj[1];
                s += row[2][l] * gj[2];
                t[6 * i + j][l] = s;
            }
        }
    }
}

/// Sizes of one task's pass: `group` images of `c` input and `k` output channels, `h × w`
/// pixels, in blocks of whole rows of tiles of `m × m` outputs.
#[derive(Clone, Copy)]
struct Plan {
    /// Outputs per side of a tile (2 or 4), and planes `ξ` (`(m + 2)²`).
    m: usize,
    planes: usize,
    c: usize,
    k: usize,
    h: usize,
    w: usize,
    /// Rows of tiles, and tiles per row.
    th: usize,
    tw: usize,
    /// Images per task.
    group: usize,
    /// Slots of a row of tiles in `V`: `tw + 1` (the last one is not read).
    te: usize,
    /// Rows of tiles per block.
    rows: usize,
    /// Tiles per block: `rows·tw`.
    ldt: usize,
    /// Strides between the planes `V[ξ]` (`[rows, c, te]`) and between the planes `M[ξ]`.
    sv: usize,
    sm: usize,
}

impl Plan {
    fn new(m: usize, c: usize, k: usize, h: usize, w: usize) -> Plan {
        let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
        let te = tw + 1;
        let planes = planes(m);
        let per_row = planes * (c * te + k * tw) * 4;
        // Small images go several to a task, so that a block has MIN_TILES tiles or more (the
        // kernel computes tiles in groups of six or seven): their rows of tiles follow each
        // other in a block as if the images were one.
        let group = MIN_TILES.div_ceil((th * tw).max(1)).clamp(1, MAX_GROUP);
        let th_all = group * th;
        // Blocks within the budget, but of at least MIN_TILES tiles.
        let min_rows = MIN_TILES.div_ceil(tw.max(1));
        let by_budget = (BLOCK_BYTES / per_row).max(min_rows).max(1);
        let blocks = th_all.div_ceil(by_budget).max(1);
        let rows = th_all.div_ceil(blocks).max(1);
        let ldt = rows * tw;
        // The 16 planes are read or written together: start them in different cache sets (a
        // multiple of 4 KiB, plus one line per plane).
        let plane = |len: usize| len.div_ceil(1024) * 1024 + 16;
        Plan {
            m,
            planes,
            c,
            k,
            h,
            w,
            th,
            tw,
            te,
            group,
            rows,
            ldt,
            sv: plane(rows * c * te),
            sm: plane(k * ldt),
        }
    }

    /// Elements of the transforms' temporaries: the `m + 2` rows of `Bᵀ d` (every channel's
    /// `m·te` columns, and two more), or the `m²` outputs of every channel's tiles.
    fn tmp_len(&self) -> usize {
        let m = self.m;
        ((m + 2) * (m * self.c * self.te + 2)).max(m * m * self.k * self.ldt)
    }
}

/// The convolution of `x` `[n, c, h, w]` with the transformed weights `u` (reduction `c`,
/// `k` columns, as [`transform_weights`] lays them out for tiles of `m × m`) into `out`
/// `[n, k, h, w]`.
#[allow(clippy::too_many_arguments)]
fn run(
    m: usize,
    n: usize,
    c: usize,
    k: usize,
    h: usize,
    w: usize,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(c > 0, "Winograd convolution over no channels");
    let (in_sz, out_sz) = (c * h * w, k * h * w);
    if n == 0 || out_sz == 0 {
        return;
    }
    let pl = Plan::new(m, c, k, h, w);
    let out = &mut out[..n * out_sz];
    out.par_chunks_mut(pl.group * out_sz)
        .enumerate()
        .for_each(|(gi, o)| {
            let np = pl.planes;
            let mut buf = Scratch::new(w + np * pl.sv + np * pl.sm + pl.tmp_len());
            let (zero, rest) = buf.split_at_mut(w);
            let (v, rest) = rest.split_at_mut(np * pl.sv);
            let (mt, tmp) = rest.split_at_mut(np * pl.sm);
            zero.fill(0.0);
            let images = o.len() / out_sz;
            let first = gi * pl.group;
            let xg = &x[first * in_sz..(first + images) * in_sz];
            let rg = residual.map(|r| &r[first * out_sz..(first + images) * out_sz]);
            let simd = Simd::get();
            // Rows of tiles of the group's images, one after the other.
            let th_all = images * pl.th;
            for tr0 in (0..th_all).step_by(pl.rows) {
                let tr1 = (tr0 + pl.rows).min(th_all);
                if pl.m == 2 {
                    simd.input_block(&pl, xg, zero, tr0, tr1, v, tmp);
                    products(&pl, v, u, tr1 - tr0, mt);
                    simd.output_block(&pl, mt, tr0, tr1, bias, relu, rg, o, tmp);
                } else {
                    simd.input_block4(&pl, xg, zero, tr0, tr1, v, tmp);
                    products(&pl, v, u, tr1 - tr0, mt);
                    simd.output_block4(&pl, mt, tr0, tr1, bias, relu, rg, o, tmp);
                }
            }
        });
}

/// Which build of the transforms runs: the same code compiled for AVX-512, for AVX2, or for
/// the build target. The same operations, so the same bits (nothing there multiplies, and
/// Rust fuses nothing); the compiler vectorises their long loops with the wider registers.
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Plain,
}

impl Simd {
    /// The build for the instruction set the kernels use.
    fn get() -> Simd {
        match kernel::isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Simd::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Simd::Avx2,
            _ => Simd::Plain,
        }
    }
}

/// `Simd::$name`: the function `$name` of this module, run in the build [`Simd`] names.
macro_rules! dispatch {
    ($name:ident, $avx512:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        fn $avx512($($arg: $ty),*) {
            $name($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        fn $avx2($($arg: $ty),*) {
            $name($($arg),*)
        }

        impl Simd {
            #[allow(clippy::too_many_arguments)]
            fn $name(self, $($arg: $ty),*) {
                match self {
                    // SAFETY: the CPU has AVX-512F: `Simd::get` chose this build from the
                    // instruction set in use, which is only chosen where the CPU runs it.
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 => unsafe { $avx512($($arg),*) },
                    // SAFETY: the CPU has AVX2 (as above).
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2 => unsafe { $avx2($($arg),*) },
                    Simd::Plain => $name($($arg),*),
                }
            }
        }
    };
}

dispatch!(input_block, input_block_avx512, input_block_avx2,
    (pl: &Plan, x: &[f32], zero: &[f32], tr0: usize, tr1: usize, v: &mut [f32], tmp: &mut [f32]));
dispatch!(output_block, output_block_avx512, output_block_avx2,
    (pl: &Plan, m: &[f32], tr0: usize, tr1: usize, bias: Option<&[f32]>, relu: bool,
     res: Option<&[f32]>, o: &mut [f32], tmp: &mut [f32]));
dispatch!(weight_tiles4, weight_tiles4_avx512, weight_tiles4_avx2,
    (g: &[[f32; 16]; 9], t: &mut [[f32; 16]; 36]));
dispatch!(input_block4, input_block4_avx512, input_block4_avx2,
    (pl: &Plan, x: &[f32], zero: &[f32], tr0: usize, tr1: usize, v: &mut [f32], tmp: &mut [f32]));
dispatch!(output_block4, output_block4_avx512, output_block4_avx2,
    (pl: &Plan, m: &[f32], tr0: usize, tr1: usize, bias: Option<&[f32]>, relu: bool,
     res: Option<&[f32]>, o: &mut [f32], tmp: &mut [f32]));

/// Runs `$body` over `0..$n` in steps of `$l` = 16, 8, 4 and 1 lanes (`$i` the start of each
/// step): fixed-size steps the compiler turns into vector code however short the run.
macro_rules! lanes {
    ($n:expr, $i:ident, $l:ident, $body:block) => {{
        let n: usize = $n;
        let mut $i = 0usize;
        {
            const $l: usize = 16;
            while $i + $l <= n {
                $body
                $i += $l;
            }
        }
        {
            const $l: usize = 8;
            if $i + $l <= n {
                $body
                $i += $l;
            }
        }
        {
            const $l: usize = 4;
            if $i + $l <= n {
                $body
                $i += $l;
            }
        }
        {
            const $l: usize = 1;
            while $i < n {
                $body
                $i += $l;
            }
        }
    }};
}

/// `x[at .. at + L]` as an array.
#[inline(always)]
fn part<const L: usize>(x: &[f32], at: usize) -> [f32; L] {
    let mut a = [0.0f32; L];
    a.copy_from_slice(&x[at..at + L]);
    a
}

/// `N` consecutive planes of `V` (`stride` apart, from plane 0 of `p`), elements
/// `at .. at + len` of each.
#[inline(always)]
fn consecutive<const N: usize>(
    p: &mut [f32],
    stride: usize,
    at: usize,
    len: usize,
) -> [&mut [f32]; N] {
    let mut rest = p;
    std::array::from_fn(|i| {
        let cur = std::mem::take(&mut rest);
        let (a, r) = if i + 1 < N {
            cur.split_at_mut(stride)
        } else {
            (cur, &mut [][..])
        };
        rest = r;
        &mut a[at..at + len]
    })
}

/// `V[ξ][tr − tr0][ch][tj]` = `(Bᵀ d B)[ξ]` of tile `(tr, tj)`'s window of channel `ch`, for the
/// rows of tiles `tr0 ≤ tr < tr1` of the task's images `x` `[·, c, h, w]` (their rows of tiles
/// one after the other; `zero` is a row of zeros,
/// for rows outside it; `tmp` holds [`Plan::tmp_len`] values).
///
/// Per row of tiles, first `Bᵀ d` down the window's four rows (zeros outside the image), every
/// channel's `wp = 2·te` columns side by side; then `(Bᵀ d) B` along the result, tile
/// `(ch, tj)` reading its columns `2·(ch·te + tj) ..= + 3`, in one long loop over every
/// channel's tiles (the slot `tj = tw` is computed but not read).
#[inline(always)]
fn input_block(
    pl: &Plan,
    x: &[f32],
    zero: &[f32],
    tr0: usize,
    tr1: usize,
    v: &mut [f32],
    tmp: &mut [f32],
) {
    let (h, w) = (pl.h, pl.w);
    let ne = pl.c * pl.te;
    let wp = 2 * pl.te;
    let n = 2 * ne + 2;
    for gtr in tr0..tr1 {
        // Row tr of tiles of image img of the group.
        let (img, tr) = (gtr / pl.th, gtr % pl.th);
        let x = &x[img * pl.c * h * w..(img + 1) * pl.c * h * w];
        {
            let (t0, rest) = tmp.split_at_mut(n);
            let (t1, rest) = rest.split_at_mut(n);
            let (t2, rest) = rest.split_at_mut(n);
            let t3 = &mut rest[..n];
            for ch in 0..pl.c {
                // Image row 2·tr − 1 + i, or zeros.
                let r = |i: usize| {
                    let y = (2 * tr + i).wrapping_sub(1);
                    if y < h {
                        &x[(ch * h + y) * w..(ch * h + y + 1) * w]
                    } else {
                        &zero[..w]
                    }
                };
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                // The two rows the next row of tiles reads first (its rows 2 and 3): a channel's
                // rows lie 4 KiB or more from the next channel's, too many streams for the
                // hardware prefetcher, and their loads otherwise miss (measured: the input
                // transform stalled on them).
                for y in [2 * tr + 3, 2 * tr + 4] {
                    if y < h {
                        kernel::prefetch_row(x[(ch * h + y) * w..].as_ptr(), w);
                    }
                }
                let at = ch * wp;
                let (d0, d1) = (&mut t0[at..at + wp], &mut t1[at..at + wp]);
                let (d2, d3) = (&mut t2[at..at + wp], &mut t3[at..at + wp]);
                // Padded column q + 1 is image column q; the others are zeros (0 ± 0 = +0).
                // One or two padding columns on the right (`wp` is `w + 2` or `w + 3`): stores,
                // not `fill` (a call to memset per row of each channel, measured at 1% of a
                // training iteration).
                for d in [&mut *d0, &mut *d1, &mut *d2, &mut *d3] {
                    d[0] = 0.0;
                    d[w + 1] = 0.0;
                    if let Some(v) = d.get_mut(w + 2) {
                        *v = 0.0;
                    }
                }
                let (d0, d1) = (&mut d0[1..w + 1], &mut d1[1..w + 1]);
                let (d2, d3) = (&mut d2[1..w + 1], &mut d3[1..w + 1]);
                lanes!(w, q, L, {
                    let r = |x: &[f32]| -> [f32; L] { part(x, q) };
                    let (x0, x1, x2, x3) = (r(r0), r(r1), r(r2), r(r3));
                    let mut y = [[0.0f32; L]; 4];
                    for l in 0..L {
                        y[0][l] = x0[l] - x2[l];
                        y[1][l] = x1[l] + x2[l];
                        y[2][l] = x2[l] - x1[l];
                        y[3][l] = x1[l] - x3[l];
                    }
                    d0[q..q + L].copy_from_slice(&y[0]);
                    d1[q..q + L].copy_from_slice(&y[1]);
                    d2[q..q + L].copy_from_slice(&y[2]);
                    d3[q..q + L].copy_from_slice(&y[3]);
                });
            }
            for t in [t0, t1, t2, t3] {
                t[2 * ne] = 0.0;
                t[2 * ne + 1] = 0.0;
            }
        }
        let at = (gtr - tr0) * ne;
        for i in 0..4 {
            let s = &tmp[i * n..(i + 1) * n];
            let [o0, o1, o2, o3] = consecutive::<4>(&mut v[4 * i * pl.sv..], pl.sv, at, ne);
            for e in 0..ne {
                o0[e] = s[2 * e] - s[2 * e + 2];
                o1[e] = s[2 * e + 1] + s[2 * e + 2];
                o2[e] = s[2 * e + 2] - s[2 * e + 1];
                o3[e] = s[2 * e + 1] - s[2 * e + 3];
            }
        }
    }
}

/// `M[ξ]` `[k, tn]` (element (tile, channel) at `channel·tn + tile`, `tn = rows·tw` tiles) =
/// `V[ξ]` (tiles × `c`) · `U[ξ]` `[c, k]` on the micro-kernel, for each `ξ`.
#[inline(never)]
fn products(pl: &Plan, v: &[f32], u: &[f32], rows: usize, m: &mut [f32]) {
    let (c, k, kp) = (pl.c, pl.k, kpad(pl.k));
    let (tw, te) = (pl.tw, pl.te);
    let tn = rows * tw;
    let rt = kernel::tile_rows();
    let slabs = kernel::wants_slabs();
    let mut acc = [0.0f32; MR * 64];
    for xi in 0..pl.planes {
        let vx = &v[xi * pl.sv..xi * pl.sv + rows * c * te];
        let ux = &u[xi * c * kp..(xi + 1) * c * kp];
        let mx = &mut m[xi * pl.sm..xi * pl.sm + k * tn];
        let dst = Out {
            c: P(mx.as_mut_ptr()),
            rs: 1,
            cs: tn,
            accumulate: false,
            bias: None,
            relu: false,
        };
        // Rows of the kernel's tile starting at tile i0 (the last repeated past the end): tile
        // t = (tr, tj) of the block has its channel p at V[ξ][tr][p][tj], + p·te.
        let rows_at = |i0: usize| {
            let mr = rt.min(tn - i0);
            let mut rows = [vx.as_ptr(); MR];
            for (r, row) in rows.iter_mut().enumerate() {
                let t = i0 + r.min(mr - 1);
                *row = vx[(t / tw) * c * te + t % tw..].as_ptr();
            }
            (rows, mr)
        };
        if slabs {
            // One 16-column slab at a time over every tile, as `conv::direct` does.
            for s in 0..kp / 16 {
                let b = ux[s * c * 16..(s + 1) * c * 16].as_ptr();
                for i0 in (0..tn).step_by(rt) {
                    let (rows, mr) = rows_at(i0);
                    // SAFETY: row r's element p is vx[tr·c·te + tj + p·te] with tr < rows,
                    // tj < tw < te and p < c, inside `vx`; the slab holds c rows of 16; the tile written (tiles
                    // i0..i0+mr of channels 16·s..) lies inside `mx`, which this thread alone
                    // holds.
                    unsafe {
                        kernel::tile_slabs(1, c, &rows, Offs::Affine(te), b, &mut acc);
                        kernel::store(&dst, &acc, i0, mr, 16 * s, (k - 16 * s).min(16), true, true);
                    }
                }
            }
        } else {
            for j0 in (0..k).step_by(64) {
                let nr = (k - j0).min(64);
                let nv = nr.div_ceil(16);
                let b = ux[j0..].as_ptr();
                for i0 in (0..tn).step_by(rt) {
                    let (rows, mr) = rows_at(i0);
                    // SAFETY: rows as above; `U[ξ]` has c rows of kp ≥ j0 + 16·nv columns
                    // (row c − 1's last read column is inside `ux`); the tile written lies
                    // inside `mx`, which this thread alone holds.
                    unsafe {
                        kernel::tile(nv, c, &rows, Offs::Affine(te), b, kp, &mut acc);
                        kernel::store(&dst, &acc, i0, mr, j0, nr, true, true);
                    }
                }
            }
        }
    }
}

/// The outputs of the rows of tiles `tr0 ≤ tr < tr1` (of the task's images, one after the
/// other) from `M`: `Aᵀ M A`, `+ bias`, ReLU if
/// asked (`tmp` holds [`Plan::tmp_len`] values).
///
/// In one long loop over every channel's tiles (`M[ξ]` is `[k, tn]`, contiguous): `Aᵀ M`,
/// then `(Aᵀ M) A`, two pixels per tile side by side; then per row of pixels `+ bias` and ReLU
/// on the way to the output.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_block(
    pl: &Plan,
    m: &[f32],
    tr0: usize,
    tr1: usize,
    bias: Option<&[f32]>,
    relu: bool,
    res: Option<&[f32]>,
    o: &mut [f32],
    tmp: &mut [f32],
) {
    let (tw, sm) = (pl.tw, pl.sm);
    let tn = (tr1 - tr0) * tw;
    let ne = pl.k * tn;
    let zs = &mut tmp[..4 * ne];
    // zs[a·2ne + 2e + b] = ((Aᵀ M) A)[a][b] of tile e = (channel, tile), from the rows
    // t_aj of Aᵀ M: t_0j = (m[j] + m[4+j]) + m[8+j], t_1j = (m[4+j] − m[8+j]) − m[12+j].
    {
        let mk = |xi: usize| &m[xi * sm..xi * sm + ne];
        let (m0, m1, m2, m3) = (mk(0), mk(1), mk(2), mk(3));
        let (m4, m5, m6, m7) = (mk(4), mk(5), mk(6), mk(7));
        let (m8, m9, m10, m11) = (mk(8), mk(9), mk(10), mk(11));
        let (m12, m13, m14, m15) = (mk(12), mk(13), mk(14), mk(15));
        let (z0, z1) = zs.split_at_mut(2 * ne);
        let z1 = &mut z1[..2 * ne];
        for e in 0..ne {
            let t00 = (m0[e] + m4[e]) + m8[e];
            let t01 = (m1[e] + m5[e]) + m9[e];
            let t02 = (m2[e] + m6[e]) + m10[e];
            let t03 = (m3[e] + m7[e]) + m11[e];
            let t10 = (m4[e] - m8[e]) - m12[e];
            let t11 = (m5[e] - m9[e]) - m13[e];
            let t12 = (m6[e] - m10[e]) - m14[e];
            let t13 = (m7[e] - m11[e]) - m15[e];
            z0[2 * e] = (t00 + t01) + t02;
            z0[2 * e + 1] = (t01 - t02) - t03;
            z1[2 * e] = (t10 + t11) + t12;
            z1[2 * e + 1] = (t11 - t12) - t13;
        }
    }
    write_outputs(pl, zs, tr0, tr1, bias, relu, res, o);
}

/// [`input_block`] for tiles of 4×4 outputs: `V[ξ][tr − tr0][ch][tj]` = `(Bᵀ d B)[ξ]` of the
/// 6×6 window `d` of tile `(tr, tj)` (image rows `4·tr − 1 ..= 4·tr + 4`, columns likewise),
/// with F(4×4, 3×3)'s
///
/// ```text
///      ⎡4  0 −5  0  1  0⎤
///      ⎢0 −4 −4  1  1  0⎥
/// Bᵀ = ⎢0  4 −4 −1  1  0⎥   each row a sum over its nonzero terms, left to right.
///      ⎢0 −2 −1  2  1  0⎥
///      ⎢0  2 −1 −2  1  0⎥
///      ⎣0  4  0 −5  0  1⎦
/// ```
///
/// As there: first `Bᵀ d` down the window's six rows into `tmp` (every channel's `wp = 4·te`
/// columns side by side), then `(Bᵀ d) B` along them, tile `(ch, tj)` reading columns
/// `4·(ch·te + tj) ..= + 5`.
#[inline(always)]
fn input_block4(
    pl: &Plan,
    x: &[f32],
    zero: &[f32],
    tr0: usize,
    tr1: usize,
    v: &mut [f32],
    tmp: &mut [f32],
) {
    let (h, w) = (pl.h, pl.w);
    let ne = pl.c * pl.te;
    let wp = 4 * pl.te;
    let n = 4 * ne + 2;
    for gtr in tr0..tr1 {
        // Row tr of tiles of image img of the group.
        let (img, tr) = (gtr / pl.th, gtr % pl.th);
        let x = &x[img * pl.c * h * w..(img + 1) * pl.c * h * w];
        {
            let [t0, t1, t2, t3, t4, t5] = consecutive::<6>(tmp, n, 0, n);
            for ch in 0..pl.c {
                // Image row 4·tr − 1 + i, or zeros.
                let r = |i: usize| {
                    let y = (4 * tr + i).wrapping_sub(1);
                    if y < h {
                        &x[(ch * h + y) * w..(ch * h + y + 1) * w]
                    } else {
                        &zero[..w]
                    }
                };
                let (r0, r1, r2, r3, r4, r5) = (r(0), r(1), r(2), r(3), r(4), r(5));
                // The rows only the next row of tiles reads (see `input_block`).
                for y in 4 * tr + 5..4 * tr + 9 {
                    if y < h {
                        kernel::prefetch_row(x[(ch * h + y) * w..].as_ptr(), w);
                    }
                }
                let at = ch * wp;
                let mut d: [&mut [f32]; 6] = [
                    &mut t0[at..at + wp],
                    &mut t1[at..at + wp],
                    &mut t2[at..at + wp],
                    &mut t3[at..at + wp],
                    &mut t4[at..at + wp],
                    &mut t5[at..at + wp],
                ];
                // Padded column q + 1 is image column q; the others (one on the left, 3 to 6
                // on the right) are zeros.
                for row in d.iter_mut() {
                    row[0] = 0.0;
                    for z in row[w + 1..].iter_mut() {
                        *z = 0.0;
                    }
                }
                let [d0, d1, d2, d3, d4, d5] = &mut d;
                let (d0, d1, d2) = (&mut d0[1..w + 1], &mut d1[1..w + 1], &mut d2[1..w + 1]);
                let (d3, d4, d5) = (&mut d3[1..w + 1], &mut d4[1..w + 1], &mut d5[1..w + 1]);
                lanes!(w, q, L, {
                    let r = |x: &[f32]| -> [f32; L] { part(x, q) };
                    let (x0, x1, x2) = (r(r0), r(r1), r(r2));
                    let (x3, x4, x5) = (r(r3), r(r4), r(r5));
                    let mut y = [[0.0f32; L]; 6];
                    for l in 0..L {
                        y[0][l] = (4.0 * x0[l] - 5.0 * x2[l]) + x4[l];
                        y[1][l] = ((-4.0 * x1[l] - 4.0 * x2[l]) + x3[l]) + x4[l];
                        y[2][l] = ((4.0 * x1[l] - 4.0 * x2[l]) - x3[l]) + x4[l];
                        y[3][l] = ((-2.0 * x1[l] - x2[l]) + 2.0 * x3[l]) + x4[l];
                        y[4][l] = ((2.0 * x1[l] - x2[l]) - 2.0 * x3[l]) + x4[l];
                        y[5][l] = (4.0 * x1[l] - 5.0 * x3[l]) + x5[l];
                    }
                    d0[q..q + L].copy_from_slice(&y[0]);
                    d1[q..q + L].copy_from_slice(&y[1]);
                    d2[q..q + L].copy_from_slice(&y[2]);
                    d3[q..q + L].copy_from_slice(&y[3]);
                    d4[q..q + L].copy_from_slice(&y[4]);
                    d5[q..q + L].copy_from_slice(&y[5]);
                });
            }
            for t in [t0, t1, t2, t3, t4, t5] {
                t[4 * ne] = 0.0;
                t[4 * ne + 1] = 0.0;
            }
        }
        let at = (gtr - tr0) * ne;
        for i in 0..6 {
            let s = &tmp[i * n..(i + 1) * n];
            let [o0, o1, o2, o3, o4, o5] = consecutive::<6>(&mut v[6 * i * pl.sv..], pl.sv, at, ne);
            // `L` tiles at a time: their `4·L + 2` columns, split by column within the tile
            // (fixed-size arrays, which the compiler turns into shuffles), then six vector sums.
            lanes!(ne, e0, L, {
                let src: [f32; 4 * L + 2] = part(s, 4 * e0);
                let mut c = [[0.0f32; L]; 6];
                for l in 0..L {
                    for (r, cr) in c.iter_mut().enumerate() {
                        cr[l] = src[4 * l + r];
                    }
                }
                let [s0, s1, s2, s3, s4, s5] = c;
                let mut y = [[0.0f32; L]; 6];
                for l in 0..L {
                    y[0][l] = (4.0 * s0[l] - 5.0 * s2[l]) + s4[l];
                    y[1][l] = ((-4.0 * s1[l] - 4.0 * s2[l]) + s3[l]) + s4[l];
                    y[2][l] = ((4.0 * s1[l] - 4.0 * s2[l]) - s3[l]) + s4[l];
                    y[3][l] = ((-2.0 * s1[l] - s2[l]) + 2.0 * s3[l]) + s4[l];
                    y[4][l] = ((2.0 * s1[l] - s2[l]) - 2.0 * s3[l]) + s4[l];
                    y[5][l] = (4.0 * s1[l] - 5.0 * s3[l]) + s5[l];
                }
                o0[e0..e0 + L].copy_from_slice(&y[0]);
                o1[e0..e0 + L].copy_from_slice(&y[1]);
                o2[e0..e0 + L].copy_from_slice(&y[2]);
                o3[e0..e0 + L].copy_from_slice(&y[3]);
                o4[e0..e0 + L].copy_from_slice(&y[4]);
                o5[e0..e0 + L].copy_from_slice(&y[5]);
            });
        }
    }
}

/// The output rows of the rows of tiles `tr0 ≤ tr < tr1` from `zs` (`zs[a·m·ne + m·e + b]` =
/// output `(a, b)` of tile `e` = (channel, tile), `ne = k·tn`), `+ bias`, then ReLU if asked
/// or the residual: per channel and row of pixels, on the way to the output.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_outputs(
    pl: &Plan,
    zs: &[f32],
    tr0: usize,
    tr1: usize,
    bias: Option<&[f32]>,
    relu: bool,
    res: Option<&[f32]>,
    o: &mut [f32],
) {
    let (m, h, w, tw) = (pl.m, pl.h, pl.w, pl.tw);
    let tn = (tr1 - tr0) * tw;
    let ne = pl.k * tn;
    for ch in 0..pl.k {
        let b = bias.map_or(0.0, |b| b[ch]);
        for gtr in tr0..tr1 {
            // Row tr of tiles of image img of the group.
            let (img, tr) = (gtr / pl.th, gtr % pl.th);
            let pr = ((img * pl.k) + ch) * h * w..((img * pl.k) + ch + 1) * h * w;
            let rp = res.map(|r| &r[pr.clone()]);
            let plane = &mut o[pr];
            for a in 0..m {
                let i = m * tr + a;
                if i >= h {
                    break;
                }
                let at = m * a * ne + m * (ch * tn + (gtr - tr0) * tw);
                let src = &zs[at..at + w];
                let dst = &mut plane[i * w..(i + 1) * w];
                if let Some(rp) = rp {
                    // `+ bias`, then the residual (never with ReLU: see `forward_add`).
                    let rr = &rp[i * w..(i + 1) * w];
                    lanes!(w, q, L, {
                        let mut y: [f32; L] = part(src, q);
                        let r: [f32; L] = part(rr, q);
                        for (v, r) in y.iter_mut().zip(r) {
                            *v = (*v + b) + r;
                        }
                        dst[q..q + L].copy_from_slice(&y);
                    });
                    continue;
                }
                lanes!(w, q, L, {
                    let mut y: [f32; L] = part(src, q);
                    for v in y.iter_mut() {
                        let x = *v + b;
                        *v = if x > 0.0 || !relu { x } else { 0.0 };
                    }
                    dst[q..q + L].copy_from_slice(&y);
                });
            }
        }
    }
}

/// `Aᵀ m` for F(4×4, 3×3)'s
///
/// ```text
///      ⎡1  1  1  1  1  0⎤
/// Aᵀ = ⎢0  1 −1  2 −2  0⎥   each row a sum over its nonzero terms, left to right (every
///      ⎢0  1  1  4  4  0⎥   product is exact).
///      ⎣0  1 −1  8 −8  1⎦
/// ```
#[inline(always)]
fn at4(m: [f32; 6]) -> [f32; 4] {
    [
        (((m[0] + m[1]) + m[2]) + m[3]) + m[4],
        ((m[1] - m[2]) + 2.0 * m[3]) - 2.0 * m[4],
        ((m[1] + m[2]) + 4.0 * m[3]) + 4.0 * m[4],
        (((m[1] - m[2]) + 8.0 * m[3]) - 8.0 * m[4]) + m[5],
    ]
}

/// [`output_block`] for tiles of 4×4 outputs: `Aᵀ M A` (see [`at4`]), `+ bias`, ReLU if asked,
/// or `+ bias + residual`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_block4(
    pl: &Plan,
    m: &[f32],
    tr0: usize,
    tr1: usize,
    bias: Option<&[f32]>,
    relu: bool,
    res: Option<&[f32]>,
    o: &mut [f32],
    tmp: &mut [f32],
) {
    let (tw, sm) = (pl.tw, pl.sm);
    let tn = (tr1 - tr0) * tw;
    let ne = pl.k * tn;
    // zs[a·4ne + 4e + b] = ((Aᵀ M) A)[a][b] of tile e = (channel, tile).
    {
        let zs = &mut tmp[..16 * ne];
        let mut z = consecutive::<4>(zs, 4 * ne, 0, 4 * ne);
        lanes!(ne, e0, L, {
            // t[a][q] = (Aᵀ M)[a][q] of `L` tiles, column q from the planes 6p + q.
            let mut t = [[[0.0f32; L]; 6]; 4];
            for q in 0..6 {
                let mut c = [[0.0f32; L]; 6];
                for (p, cp) in c.iter_mut().enumerate() {
                    let xi = 6 * p + q;
                    *cp = part(&m[xi * sm..xi * sm + ne], e0);
                }
                for l in 0..L {
                    let y = at4([c[0][l], c[1][l], c[2][l], c[3][l], c[4][l], c[5][l]]);
                    for a in 0..4 {
                        t[a][q][l] = y[a];
                    }
                }
            }
            // ((Aᵀ M) A)[a][b] along each row a, stored tile by tile (four outputs each).
            for (ta, za) in t.iter().zip(z.iter_mut()) {
                let mut y = [0.0f32; 4 * L];
                for l in 0..L {
                    let r = at4([ta[0][l], ta[1][l], ta[2][l], ta[3][l], ta[4][l], ta[5][l]]);
                    y[4 * l..4 * l + 4].copy_from_slice(&r);
                }
                za[4 * e0..4 * e0 + 4 * L].copy_from_slice(&y);
            }
        });
    }
    let zs = &tmp[..16 * ne];
    write_outputs(pl, zs, tr0, tr1, bias, relu, res, o);
}

/// Fewest input channels for which [`backward_weight`] is used (see [`applies_backward_weight`]):
/// measured at batch 128, one thread, 32×32 images and 16 output channels, 3 input channels
/// ran at 0.63× (AVX-512) / 0.74× (AVX2) the direct weight gradient's speed, 8 at 0.92×,
/// 16 at 1.35× / 1.72×.
pub const MIN_BW_C: usize = 16;
/// Fewest output channels for which [`backward_weight`] is used (16 input channels, 8 output
/// channels, 32×32: 1.30× / 1.28×; 8 and 8: 1.0×).
pub const MIN_BW_K: usize = 8;
/// Bytes of a block's `V` and `Gy` together for the weight gradient. Only one `ξ`'s planes
/// are in use at a time; larger blocks mean fewer passes of the products' accumulation into
/// the partial sums (768 KiB blocks of 128 tiles or more were ~10% slower on the wide ResNet
/// 16-2 shapes, 4 MiB no faster).
const BW_BLOCK_BYTES: usize = 2048 << 10;
/// Fewest tiles in a block of the weight gradient (the products reduce over a block's tiles).
const BW_MIN_TILES: usize = 512;
/// Most tasks (partial sums) of the weight gradient.
const BW_MAX_TASKS: usize = 16;
/// Most bytes of the weight gradient's partial sums together (`(m+2)²·c·kp` floats per task,
/// 16 or 36 planes): at 640 channels in and out (F(2×2)) a task's sums are 26 MB; 16 tasks (a batch of 512 at 8×8 has the
/// blocks for them) would hold 420 MB, four 105 MB.
const BW_PARTS_BYTES: usize = 128 << 20;

/// Whether [`backward_weight`] is the faster way to compute the gradient with respect to the
/// weights of the convolution `d` (forward geometry): 3×3, stride 1, padding 1, at least
/// [`MIN_BW_C`] input and [`MIN_BW_K`] output channels.
pub fn applies_backward_weight(d: &Direct) -> bool {
    geometry_fits(d) && d.c >= MIN_BW_C && d.k >= MIN_BW_K
}

/// Sizes of the weight gradient's pass over the batch: its `n·th` rows of tiles (those of
/// every image, one after the other) in blocks of `rows`, `bpt` consecutive blocks per task.
/// All of it depends on the shapes only, never on the thread count.
#[derive(Clone, Copy)]
struct WPlan {
    c: usize,
    k: usize,
    /// `k` rounded up to a whole vector.
    kp: usize,
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    /// Rows of tiles of the batch, and per block.
    th_all: usize,
    rows: usize,
    /// Strides between the planes `Gy[ξ]` (`[rows·tw, kp]`).
    sg: usize,
    /// [`input_block`]'s plan for a block: `V[ξ]` `[rows, c, tw + 1]`, `sv` apart.
    fp: Plan,
    /// Blocks, blocks per task, tasks.
    nb: usize,
    bpt: usize,
    tasks: usize,
}

impl WPlan {
    /// The plan for tiles of `m × m` (2 or 4).
    fn new(d: &Direct, m: usize) -> WPlan {
        let (c, k, h, w) = (d.c, d.k, d.h, d.w);
        let kp = kpad(k);
        let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
        let th_all = d.n * th;
        let np = planes(m);
        let per_row = np * tw * (c + kp) * 4;
        let min_rows = BW_MIN_TILES.div_ceil(tw);
        let by_budget = (BW_BLOCK_BYTES / per_row).max(min_rows).max(1);
        let nb = th_all.div_ceil(by_budget).max(1);
        let rows = th_all.div_ceil(nb).max(1);
        let nb = th_all.div_ceil(rows);
        let max_tasks = (BW_PARTS_BYTES / (np * c * kp * 4)).clamp(1, BW_MAX_TASKS);
        let bpt = nb.div_ceil(max_tasks);
        let tasks = nb.div_ceil(bpt);
        let plane = |len: usize| len.div_ceil(1024) * 1024 + 16;
        let te = tw + 1;
        WPlan {
            c,
            k,
            kp,
            h,
            w,
            th,
            tw,
            th_all,
            rows,
            sg: plane(rows * tw * kp),
            fp: Plan {
                m,
                planes: np,
                c,
                k,
                h,
                w,
                th,
                tw,
                group: 1,
                te,
                rows,
                ldt: rows * tw,
                sv: plane(rows * c * te),
                sm: 0,
            },
            nb,
            bpt,
            tasks,
        }
    }

    /// Elements of [`input_block`]'s (or [`input_block4`]'s) temporaries.
    fn tmp_len(&self) -> usize {
        let m = self.fp.m;
        (m + 2) * (m * self.c * self.fp.te + 2)
    }
}

/// `gw` `[k, c, 3, 3]` (overwritten) = the gradient with respect to the weights of
/// [`forward`]'s convolution of `x` `[n, c, h, w]` (`gy` `[n, k, h, w]` the gradient of its
/// output): `gw[o][ch][a][b] = Σ_{img, i, j} gy[img][o][i][j] · x[img][ch][i+a−1][j+b−1]`.
///
/// Forward, a tile's outputs are `Aᵀ [U ⊙ V] A` with `U = G g Gᵀ`, linear in `g`; the gradient
/// is the adjoint, summed over tiles: `gw[o][ch] = Gᵀ (Σ_t V_t ⊙ (A gy_t Aᵀ)) G`, `V_t` the
/// transformed window of channel `ch` of tile `t` and `gy_t` the 2×2 output gradient of channel
/// `o` (zeros outside the image). Per `ξ` the sum is a product `Mw[ξ]` `[c, k]` = `V[ξ]`
/// (channels × tiles) · `Gy[ξ]` (tiles × output channels), over every tile of the batch.
///
/// **Order of the sums** (fixed by the shapes alone: the same bits for any thread count, and on
/// AVX-512 and AVX2 alike): the rows of tiles of the batch (image after image) go in blocks of
/// [`WPlan`]`::rows`, consecutive blocks in tasks (run in parallel). A task's `Mw` is, block by
/// block in order, the kernel's fused multiply-add chain over the block's tiles in chunks of
/// [`kernel::KC`] from +0, each chunk `+ 0.0` then added to what is there; the tasks' `Mw`
/// are added in task order, then `Gᵀ Mw G` (plain `f32`, in a fixed order).
///
/// **Scratch** (all from the pool): the tasks' partial sums (at most 16 × `(m+2)²·c·kp`), and per
/// running task one block's `V` and `Gy` (about [`BW_BLOCK_BYTES`]) and one image's transposed
/// `gy` (`h·w·kp`): about 3 MB per thread at `c = k = 32`, 32×32, any batch.
pub fn backward_weight(d: &Direct, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    backward_weight_tiled(d, tile_size(d), x, gy, gw);
}

/// [`backward_weight`] on tiles of `m × m` (2 or 4): for F(4×4, 3×3), `gy_t` is the tile's 4×4
/// output gradient, `A gy Aᵀ` is 6×6 (see [`weight_grad_block4`]) and the last step
/// `Gᵀ Mw G` with [`G4`] ([`weight_grad_tile4`]).
fn backward_weight_tiled(d: &Direct, m: usize, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    assert!(
        geometry_fits(d),
        "Winograd convolution needs 3×3, stride 1, padding 1"
    );
    let (n, c, k, h, w) = (d.n, d.c, d.k, d.h, d.w);
    assert!(x.len() >= n * c * h * w && gy.len() >= n * k * h * w);
    assert!(gw.len() >= k * c * 9);
    let gw = &mut gw[..k * c * 9];
    if n * h * w == 0 || c == 0 || k == 0 {
        gw.fill(0.0);
        return;
    }
    let pl = WPlan::new(d, m);
    let np = pl.fp.planes;
    let msz = np * c * pl.kp;
    let sv = pl.fp.sv;
    let mut parts = Scratch::new(pl.tasks * msz);
    // Offsets of a block's tiles in V[ξ]: tile t = (r, tj) at r·c·te + tj (channel ch + ch·te).
    let mut offs_s = Scratch::new(pl.rows * pl.tw);
    let offs = kernel::as_u32(&mut offs_s);
    for (t, o) in offs.iter_mut().enumerate() {
        *o = ((t / pl.tw) * c * pl.fp.te + t % pl.tw) as u32;
    }
    let offs = &*offs;
    parts
        .par_chunks_mut(msz)
        .enumerate()
        .for_each(|(task, part)| {
            let mut buf = Scratch::new(w + np * sv + np * pl.sg + h * w * pl.kp + pl.tmp_len());
            let (zero, rest) = buf.split_at_mut(w);
            let (v, rest) = rest.split_at_mut(np * sv);
            let (g, rest) = rest.split_at_mut(np * pl.sg);
            let (gyt, tmp) = rest.split_at_mut(h * w * pl.kp);
            zero.fill(0.0);
            let mut cur = usize::MAX;
            let simd = Simd::get();
            let b0 = task * pl.bpt;
            for b in b0..(b0 + pl.bpt).min(pl.nb) {
                let tr0 = b * pl.rows;
                let tr1 = (tr0 + pl.rows).min(pl.th_all);
                if m == 2 {
                    simd.input_block(&pl.fp, x, zero, tr0, tr1, v, tmp);
                    simd.weight_grad_block(&pl, gy, tr0, tr1, g, gyt, &mut cur);
                } else {
                    simd.input_block4(&pl.fp, x, zero, tr0, tr1, v, tmp);
                    simd.weight_grad_block4(&pl, gy, tr0, tr1, g, gyt, &mut cur);
                }
                weight_products(&pl, v, g, offs, (tr1 - tr0) * pl.tw, b > b0, part);
            }
        });
    // Σ over tasks in order (into the first), then Gᵀ M G per pair of channels.
    let (first, rest) = parts.split_at_mut(msz);
    for p in rest.chunks_exact(msz) {
        for (a, &b) in first.iter_mut().zip(p) {
            *a += b;
        }
    }
    let kp = pl.kp;
    for ch in 0..c {
        for o in 0..k {
            let at = |xi: usize| first[xi * c * kp + ch * kp + o];
            let r = if m == 2 {
                weight_grad_tile(&std::array::from_fn(at))
            } else {
                weight_grad_tile4(&std::array::from_fn(at))
            };
            gw[(o * c + ch) * 9..(o * c + ch + 1) * 9].copy_from_slice(&r);
        }
    }
}

/// `Gᵀ m G` of a row-major 6×6 tile with [`G4`], row-major 3×3: `t = Gᵀ m`, then `t G`, each
/// element a sum over the six terms in order, products rounded one by one.
fn weight_grad_tile4(m: &[f32; 36]) -> [f32; 9] {
    let mut t = [[0.0f32; 6]; 3];
    for (a, ta) in t.iter_mut().enumerate() {
        for (j, v) in ta.iter_mut().enumerate() {
            let mut s = G4[0][a] * m[j];
            for i in 1..6 {
                s += G4[i][a] * m[6 * i + j];
            }
            *v = s;
        }
    }
    let mut g = [0.0f32; 9];
    for a in 0..3 {
        for b in 0..3 {
            let mut s = t[a][0] * G4[0][b];
            for j in 1..6 {
                s += t[a][j] * G4[j][b];
            }
            g[3 * a + b] = s;
        }
    }
    g
}

/// `Gᵀ m G` of a row-major 4×4 tile, row-major 3×3.
fn weight_grad_tile(m: &[f32; 16]) -> [f32; 9] {
    // Gᵀ applied to a 4-vector: (m₀ + (m₁+m₂)·½, (m₁−m₂)·½, (m₁+m₂)·½ + m₃).
    let gt = |m0: f32, m1: f32, m2: f32, m3: f32| {
        let s = (m1 + m2) * 0.5;
        [m0 + s, (m1 - m2) * 0.5, s + m3]
    };
    // t = Gᵀ m (3×4), column by column; then t G, row by row.
    let mut t = [[0.0f32; 4]; 3];
    for j in 0..4 {
        let r = gt(m[j], m[4 + j], m[8 + j], m[12 + j]);
        for a in 0..3 {
            t[a][j] = r[a];
        }
    }
    let mut g = [0.0f32; 9];
    for a in 0..3 {
        let r = gt(t[a][0], t[a][1], t[a][2], t[a][3]);
        g[3 * a..3 * a + 3].copy_from_slice(&r);
    }
    g
}

dispatch!(weight_grad_block, weight_grad_block_avx512, weight_grad_block_avx2,
    (pl: &WPlan, gy: &[f32], tr0: usize, tr1: usize, g: &mut [f32], gyt: &mut [f32],
     cur: &mut usize));
dispatch!(weight_grad_block4, weight_grad_block4_avx512, weight_grad_block4_avx2,
    (pl: &WPlan, gy: &[f32], tr0: usize, tr1: usize, g: &mut [f32], gyt: &mut [f32],
     cur: &mut usize));

/// `Gy[ξ][t][o]` (`ξ·sg + t·kp + o`, zeros for `o ≥ k`) = `(A gy_t Aᵀ)[ξ]` of tile `t`'s 2×2
/// output gradient of channel `o` (zeros outside the image), for the batch's rows of tiles
/// `tr0 ≤ tr < tr1` (`gy` `[n, k, h, w]`). Each image's `gy` is first transposed to
/// `gyt` `[h·w, kp]` (`cur` says which image `gyt` holds), channel after channel (reading
/// `gy` in order); then the transform, sixteen channels at a time. With `A gy` = rows
/// `(p, q)`: `(g₀₀, g₀₁)`, `(g₀₀ + g₁₀, g₀₁ + g₁₁)`, `(g₀₀ − g₁₀, g₀₁ − g₁₁)`, `(−g₁₀, −g₁₁)`,
/// and each row times `Aᵀ`: `(p, p + q, p − q, −q)`.
#[inline(always)]
fn weight_grad_block(
    pl: &WPlan,
    gy: &[f32],
    tr0: usize,
    tr1: usize,
    g: &mut [f32],
    gyt: &mut [f32],
    cur: &mut usize,
) {
    let (kp, h, w) = (pl.kp, pl.h, pl.w);
    per_tile(pl, gy, tr0, tr1, gyt, cur, |tr, tj, t, o0, gyt| {
        let ld = |a: usize, b: usize| -> [f32; 16] {
            let (i, col) = (2 * tr + a, 2 * tj + b);
            if i < h && col < w {
                part(gyt, (i * w + col) * kp + o0)
            } else {
                [0.0; 16]
            }
        };
        let (g00, g01, g10, g11) = (ld(0, 0), ld(0, 1), ld(1, 0), ld(1, 1));
        let mut y = [[0.0f32; 16]; 16];
        for l in 0..16 {
            let p = [g00[l], g00[l] + g10[l], g00[l] - g10[l], -g10[l]];
            let q = [g01[l], g01[l] + g11[l], g01[l] - g11[l], -g11[l]];
            for r in 0..4 {
                y[4 * r][l] = p[r];
                y[4 * r + 1][l] = p[r] + q[r];
                y[4 * r + 2][l] = p[r] - q[r];
                y[4 * r + 3][l] = -q[r];
            }
        }
        for (xi, yx) in y.iter().enumerate() {
            let at = xi * pl.sg + t * kp + o0;
            g[at..at + 16].copy_from_slice(yx);
        }
    });
}

/// `gyt` `[h·w, kp]` = image `img`'s `gy` transposed (zeros for channels `k..kp`), unless
/// `cur` says it holds it already.
#[inline(always)]
fn transpose_image(pl: &WPlan, gy: &[f32], img: usize, gyt: &mut [f32], cur: &mut usize) {
    if *cur == img {
        return;
    }
    *cur = img;
    let (k, kp, hw) = (pl.k, pl.kp, pl.h * pl.w);
    for o in 0..k {
        let plane = &gy[(img * k + o) * hw..(img * k + o + 1) * hw];
        for (p, &v) in plane.iter().enumerate() {
            gyt[p * kp + o] = v;
        }
    }
    if k < kp {
        for p in 0..hw {
            gyt[p * kp + k..(p + 1) * kp].fill(0.0);
        }
    }
}

/// Runs `f(tr, tj, t, o0, gyt)` for each tile `t` of the rows of tiles `tr0 ≤ tr < tr1` (of
/// the batch's images, one after the other; `tr` its row in its image, `tj` its column) and
/// each block of sixteen channels from `o0`, `gyt` the tile's image's `gy` transposed by
/// [`transpose_image`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn per_tile(
    pl: &WPlan,
    gy: &[f32],
    tr0: usize,
    tr1: usize,
    gyt: &mut [f32],
    cur: &mut usize,
    mut f: impl FnMut(usize, usize, usize, usize, &[f32]),
) {
    for gtr in tr0..tr1 {
        let (img, tr) = (gtr / pl.th, gtr % pl.th);
        transpose_image(pl, gy, img, gyt, cur);
        let lt = (gtr - tr0) * pl.tw;
        for tj in 0..pl.tw {
            for o0 in (0..pl.kp).step_by(16) {
                f(tr, tj, lt + tj, o0, gyt);
            }
        }
    }
}

/// `A y` for F(4×4, 3×3)'s `A` (`Aᵀ` at [`at4`]): `(y₀, ((y₀ + y₁) + y₂) + y₃,
/// ((y₀ − y₁) + y₂) − y₃, ((y₀ + 2y₁) + 4y₂) + 8y₃, ((y₀ − 2y₁) + 4y₂) − 8y₃, y₃)`
/// (every product exact).
#[inline(always)]
fn a4(y: [f32; 4]) -> [f32; 6] {
    [
        y[0],
        ((y[0] + y[1]) + y[2]) + y[3],
        ((y[0] - y[1]) + y[2]) - y[3],
        ((y[0] + 2.0 * y[1]) + 4.0 * y[2]) + 8.0 * y[3],
        ((y[0] - 2.0 * y[1]) + 4.0 * y[2]) - 8.0 * y[3],
        y[3],
    ]
}

/// [`weight_grad_block`] for tiles of 4×4: `Gy[ξ][t][o]` = `(A gy_t Aᵀ)[ξ]` of tile `t`'s
/// 4×4 output gradient (zeros outside the image), [`a4`] down each column, then along each
/// row, sixteen channels at a time.
#[inline(always)]
fn weight_grad_block4(
    pl: &WPlan,
    gy: &[f32],
    tr0: usize,
    tr1: usize,
    g: &mut [f32],
    gyt: &mut [f32],
    cur: &mut usize,
) {
    let (kp, h, w) = (pl.kp, pl.h, pl.w);
    per_tile(pl, gy, tr0, tr1, gyt, cur, |tr, tj, t, o0, gyt| {
        let mut gv = [[[0.0f32; 16]; 4]; 4];
        for (a, row) in gv.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                let (i, col) = (4 * tr + a, 4 * tj + b);
                if i < h && col < w {
                    *v = part(gyt, (i * w + col) * kp + o0);
                }
            }
        }
        let mut y = [[0.0f32; 16]; 36];
        for l in 0..16 {
            // x[p][b] = (A gy)[p][b], column by column; then row p times Aᵀ.
            let mut x = [[0.0f32; 4]; 6];
            for b in 0..4 {
                let col = a4([gv[0][b][l], gv[1][b][l], gv[2][b][l], gv[3][b][l]]);
                for p in 0..6 {
                    x[p][b] = col[p];
                }
            }
            for (p, xp) in x.iter().enumerate() {
                let r = a4(*xp);
                for q in 0..6 {
                    y[6 * p + q][l] = r[q];
                }
            }
        }
        for (xi, yx) in y.iter().enumerate() {
            let at = xi * pl.sg + t * kp + o0;
            g[at..at + 16].copy_from_slice(yx);
        }
    });
}

/// `part[ξ]` `[c, kp]` (+)= `V[ξ]` (`c` × `tn` tiles, as [`input_block`] lays them out, read
/// through the table `offs`) · `Gy[ξ]` (`tn` × `kp`) for each `ξ`, on [`kernel::gemm`] (one
/// thread): overwritten unless `accumulate`.
fn weight_products(
    pl: &WPlan,
    v: &[f32],
    g: &[f32],
    offs: &[u32],
    tn: usize,
    accumulate: bool,
    part: &mut [f32],
) {
    let (c, kp, sv) = (pl.c, pl.kp, pl.fp.sv);
    for xi in 0..pl.fp.planes {
        let vx = &v[xi * sv..xi * sv + pl.rows * c * pl.fp.te];
        let gx = &g[xi * pl.sg..xi * pl.sg + tn * kp];
        let mx = &mut part[xi * c * kp..(xi + 1) * c * kp];
        let out = Out {
            c: P(mx.as_mut_ptr()),
            rs: kp,
            cs: 1,
            accumulate,
            bias: None,
            relu: false,
        };
        // SAFETY: A's element (ch, t) is vx[ch·te + offs[t]] = V[ξ][t / tw][ch][t % tw], inside
        // `vx` for t < tn ≤ rows·tw; B has tn rows of kp columns in `gx`; C is `mx`, c rows of
        // kp, held by this task alone and apart from A and B.
        unsafe {
            kernel::gemm(
                c,
                kp,
                tn,
                vx.as_ptr(),
                Offs::Affine(pl.fp.te),
                Offs::Table(offs),
                BSrc::Rows(P(gx.as_ptr() as *mut f32), kp),
                out,
                false,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against float64 loops within a rounding-error bound, against the documented chain bit
    //! for bit, and a timing table (ignored by default).
    use super::super::conv::{self, Direct};
    use super::super::kernel::{isa, Isa};
    use super::{
        backward_input, backward_input_tiled, backward_weight, backward_weight_tiled, forward,
        forward_tiled, WPlan, BW_MAX_TASKS, BW_PARTS_BYTES, G4,
    };
    use crate::rng::Rng;

    fn geometry(n: usize, c: usize, h: usize, w: usize, k: usize) -> Direct {
        Direct {
            n,
            c,
            h,
            w,
            k,
            kh: 3,
            kw: 3,
            pad: 1,
            stride: 1,
            oh: h,
            ow: w,
        }
    }

    /// A weight accessor: the 3×3 filter (row-major) for reduction index `p` and column `j`.
    type Filter<'a> = &'a dyn Fn(usize, usize) -> [f32; 9];

    /// The forward filters of `w` `[k, c, 3, 3]`: reduction over input channels.
    fn fwd_filter(w: &[f32], c: usize) -> impl Fn(usize, usize) -> [f32; 9] + '_ {
        move |p, j| std::array::from_fn(|q| w[(j * c + p) * 9 + q])
    }

    /// The gradient's filters: reduction over output channels, flipped.
    fn bwd_filter(w: &[f32], c: usize) -> impl Fn(usize, usize) -> [f32; 9] + '_ {
        move |p, j| std::array::from_fn(|q| w[(p * c + j) * 9 + 8 - q])
    }

    /// Pixel `(i, j)` of channel `ch` of image `img` of `x` `[·, chans, h, w]`, zero outside.
    #[allow(clippy::too_many_arguments)]
    fn pixel(
        x: &[f32],
        img: usize,
        ch: usize,
        chans: usize,
        h: usize,
        w: usize,
        i: isize,
        j: isize,
    ) -> f32 {
        if i < 0 || j < 0 || i >= h as isize || j >= w as isize {
            0.0
        } else {
            x[((img * chans + ch) * h + i as usize) * w + j as usize]
        }
    }

    /// The `N × N` window of tile `(ti, tj)` of tiles of `N − 2` outputs a side.
    #[allow(clippy::too_many_arguments)]
    fn window<const N: usize>(
        x: &[f32],
        img: usize,
        ch: usize,
        chans: usize,
        h: usize,
        w: usize,
        ti: usize,
        tj: usize,
    ) -> [[f32; N]; N] {
        std::array::from_fn(|a| {
            std::array::from_fn(|b| {
                pixel(
                    x,
                    img,
                    ch,
                    chans,
                    h,
                    w,
                    ((N - 2) * ti + a) as isize - 1,
                    ((N - 2) * tj + b) as isize - 1,
                )
            })
        })
    }

    const BT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

    fn g_matrix(half: f32) -> [[f32; 3]; 4] {
        [
            [1.0, 0.0, 0.0],
            [half, half, half],
            [half, -half, half],
            [0.0, 0.0, 1.0],
        ]
    }

    /// F(4×4, 3×3)'s `Bᵀ` and `Aᵀ` (Lavin & Gray 2016; `G` is the module's [`G4`]).
    const BT4: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const AT4: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    /// The matrices of F(M×M, 3×3) (`N = M + 2`).
    struct Wino<const N: usize, const M: usize> {
        bt: [[f32; N]; N],
        g: [[f32; 3]; N],
        at: [[f32; N]; M],
    }

    /// F(2×2, 3×3), with `G`'s ½ replaced by `half`.
    fn f2(half: f32) -> Wino<4, 2> {
        Wino {
            bt: BT,
            g: g_matrix(half),
            at: AT,
        }
    }

    /// F(4×4, 3×3), with `G`'s rows 1 to 4 (the fractions) scaled by `scale`.
    fn f4(scale: f32) -> Wino<6, 4> {
        let mut g = G4;
        for row in &mut g[1..5] {
            for v in row.iter_mut() {
                *v *= scale;
            }
        }
        Wino {
            bt: BT4,
            g,
            at: AT4,
        }
    }

    /// `a · b` (`a` is `r × q`, `b` is `q × s`), each element summed over `q` in order in `f32`.
    fn mm<const R: usize, const Q: usize, const S: usize>(
        a: &[[f32; Q]; R],
        b: &[[f32; S]; Q],
    ) -> [[f32; S]; R] {
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let mut s = a[i][0] * b[0][j];
                for q in 1..Q {
                    s += a[i][q] * b[q][j];
                }
                s
            })
        })
    }

    fn tr<const R: usize, const S: usize>(a: &[[f32; S]; R]) -> [[f32; R]; S] {
        std::array::from_fn(|i| std::array::from_fn(|j| a[j][i]))
    }

    /// The documented chain in scalar code, from the matrices of `wm`: `V = Bᵀ d B`,
    /// `U = G g Gᵀ`, `M[ξ]` = one multiply-add per reduction index in order from +0 (fused
    /// unless `fused` is false) then `+ 0.0`, `y = (Aᵀ M A) + bias`, ReLU.
    #[allow(clippy::too_many_arguments)]
    fn chain<const N: usize, const M: usize>(
        d: &Direct,
        x: &[f32],
        pc: usize,
        cols: usize,
        g: Filter<'_>,
        bias: Option<&[f32]>,
        relu: bool,
        wm: &Wino<N, M>,
        fused: bool,
    ) -> Vec<f32> {
        let (h, w) = (d.h, d.w);
        let u: Vec<[[f32; N]; N]> = (0..pc * cols)
            .map(|q| {
                let f = g(q / cols, q % cols);
                let f: [[f32; 3]; 3] =
                    std::array::from_fn(|a| std::array::from_fn(|b| f[3 * a + b]));
                mm(&mm(&wm.g, &f), &tr(&wm.g))
            })
            .collect();
        let mut y = vec![0.0f32; d.n * cols * h * w];
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        for img in 0..d.n {
            for ti in 0..th {
                for tj in 0..tw {
                    let v: Vec<[[f32; N]; N]> = (0..pc)
                        .map(|p| {
                            let dd = window::<N>(x, img, p, pc, h, w, ti, tj);
                            mm(&mm(&wm.bt, &dd), &tr(&wm.bt))
                        })
                        .collect();
                    for j in 0..cols {
                        let m: [[f32; N]; N] = std::array::from_fn(|a| {
                            std::array::from_fn(|b| {
                                let mut s = 0.0f32;
                                for p in 0..pc {
                                    let (vv, uu) = (v[p][a][b], u[p * cols + j][a][b]);
                                    s = if fused {
                                        vv.mul_add(uu, s)
                                    } else {
                                        s + vv * uu
                                    };
                                }
                                s + 0.0
                            })
                        });
                        let out = mm(&mm(&wm.at, &m), &tr(&wm.at));
                        for a in 0..M {
                            for b in 0..M {
                                let (i, jj) = (M * ti + a, M * tj + b);
                                if i < h && jj < w {
                                    let z = out[a][b] + bias.map_or(0.0, |bs| bs[j]);
                                    y[((img * cols + j) * h + i) * w + jj] =
                                        if relu && (z <= 0.0 || z.is_nan()) {
                                            0.0
                                        } else {
                                            z
                                        };
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    /// `|a| · |b|` in float64 (`a` is `r × q`, `b` is `q × s`).
    fn mm_abs<const R: usize, const Q: usize, const S: usize>(
        a: &[[f32; Q]; R],
        b: &[[f64; S]; Q],
    ) -> [[f64; S]; R] {
        std::array::from_fn(|i| {
            std::array::from_fn(|j| (0..Q).map(|q| a[i][q].abs() as f64 * b[q][j]).sum())
        })
    }

    fn tr64<const R: usize, const S: usize>(a: &[[f64; S]; R]) -> [[f64; R]; S] {
        std::array::from_fn(|i| std::array::from_fn(|j| a[j][i]))
    }

    /// For each output, the sum of the absolute values of every term of the Winograd
    /// expansion with the matrices of `wm`:
    /// `S = Σ_ξ |Aᵀ|⊗|Aᵀ| [ξ] · Σ_p (|Bᵀ| |d_p| |B|)[ξ] · (|G| |g_p| |Gᵀ|)[ξ]`, in float64.
    fn abs_terms<const N: usize, const M: usize>(
        d: &Direct,
        x: &[f32],
        pc: usize,
        cols: usize,
        g: Filter<'_>,
        wm: &Wino<N, M>,
    ) -> Vec<f64> {
        let (h, w) = (d.h, d.w);
        // |P| |Q| |Pᵀ|, Q given as absolute values.
        let sandwich = |p: &[[f32; N]; N], q: &[[f64; N]; N]| -> [[f64; N]; N] {
            tr64(&mm_abs(p, &tr64(&mm_abs(p, q))))
        };
        let u: Vec<[[f64; N]; N]> = (0..pc * cols)
            .map(|q| {
                let f = g(q / cols, q % cols);
                let f: [[f64; 3]; 3] =
                    std::array::from_fn(|a| std::array::from_fn(|b| f[3 * a + b].abs() as f64));
                // |G| |f| |Gᵀ| = (|G| (|G| |f|)ᵀ)ᵀ.
                tr64(&mm_abs(&wm.g, &tr64(&mm_abs(&wm.g, &f))))
            })
            .collect();
        let mut s = vec![0.0f64; d.n * cols * h * w];
        for img in 0..d.n {
            for ti in 0..h.div_ceil(M) {
                for tj in 0..w.div_ceil(M) {
                    let v: Vec<[[f64; N]; N]> = (0..pc)
                        .map(|p| {
                            let dd = window::<N>(x, img, p, pc, h, w, ti, tj);
                            let dd = std::array::from_fn(|a| {
                                std::array::from_fn(|b| dd[a][b].abs() as f64)
                            });
                            sandwich(&wm.bt, &dd)
                        })
                        .collect();
                    for j in 0..cols {
                        let mut m = [[0.0f64; N]; N];
                        for p in 0..pc {
                            for a in 0..N {
                                for bb in 0..N {
                                    m[a][bb] += v[p][a][bb] * u[p * cols + j][a][bb];
                                }
                            }
                        }
                        // |Aᵀ| m |A|.
                        let out = tr64(&mm_abs(&wm.at, &tr64(&mm_abs(&wm.at, &m))));
                        for a in 0..M {
                            for bb in 0..M {
                                let (i, jj) = (M * ti + a, M * tj + bb);
                                if i < h && jj < w {
                                    s[((img * cols + j) * h + i) * w + jj] = out[a][bb];
                                }
                            }
                        }
                    }
                }
            }
        }
        s
    }

    /// The bound on `|computed − exact|` for an output over `pc` reduction terms whose
    /// expansion's absolute terms sum to `s` (plus `|bias|`).
    ///
    /// Every rounding is relative (`|δ| ≤ u = 2⁻²⁴`, no underflow with these values) and
    /// products by ±1 and ½ are exact, so each term of the expansion picks up one factor
    /// `(1 + δ)` per rounding on its path: 2 in `Bᵀ d B` (two levels of two-term sums), 4 in
    /// `G g Gᵀ` (`(g₀ ± g₁) + g₂`, twice), `pc` in the multiply-add chain (`pc + 1` on the
    /// portable kernel, which rounds the product), 4 in `Aᵀ M A`, 1 for the bias. With
    /// `γₙ = n·u / (1 − n·u)` (Higham, Lemma 3.3) the error is at most `γ_{pc+12} · (S + |b|)`;
    /// ReLU is 1-Lipschitz. The float64 reference adds at most `9·pc·2⁻⁵³·S`, covered by
    /// counting one rounding more. Typical errors are far below (they grow like `√pc`, not
    /// `pc`), but a transform off by a relative 2⁻¹⁰ (0.1%) already breaks it:
    /// see [`a_broken_transform_fails_the_bound`].
    ///
    /// For F(4×4, 3×3) (`m = 4`) the count is: 3 per level of `Bᵀ d B` (rows of three or four
    /// terms; products by 2 and 4 are exact, by 5 rounded once), so 6; 4 per level of
    /// `G g Gᵀ` (the constant ⅙, 1/12 or 1/24 itself rounded to `f32`, the product, two sums),
    /// so 8; `pc` (`pc + 1`) in the chain; 4 per level of `Aᵀ M A` (five-term rows, products by
    /// powers of two exact), so 8; 1 for the bias, 1 for the reference and 1 for `S` being
    /// computed from the rounded `G`: `γ_{pc+26}`.
    fn bound(m: usize, pc: usize, s: f64, b: f64) -> f64 {
        let extra = if m == 2 { 13 } else { 26 };
        let n = (pc + extra) as f64 * 2f64.powi(-24);
        n / (1.0 - n) * (s + b.abs())
    }

    /// `got` against `want` within [`bound`] for tiles of `m`; the first element outside it,
    /// if any.
    fn outside(
        m: usize,
        got: &[f32],
        want: &[f64],
        s: &[f64],
        pc: usize,
        bias: impl Fn(usize) -> f64,
    ) -> Option<String> {
        assert_eq!(got.len(), want.len());
        (0..got.len()).find_map(|i| {
            let (g, w) = (got[i] as f64, want[i]);
            let tol = bound(m, pc, s[i], bias(i));
            ((g - w).abs() > tol || g.is_nan())
                .then(|| format!("element {i}: got {g}, want {w}, bound {tol:e}"))
        })
    }

    /// Forward (`y`, before bias) and input gradient (`gx`) in float64, from the definitions:
    /// `y[o][pix] = Σ x[c][win] w[o][c][·]`, `gx[x] += gy[y] · w` over the same pairs.
    fn naive(d: &Direct, x: &[f32], w: &[f32], gy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (n, c, h, ww, k) = (d.n, d.c, d.h, d.w, d.k);
        let mut y = vec![0.0f64; n * k * h * ww];
        let mut gx = vec![0.0f64; n * c * h * ww];
        for img in 0..n {
            for o in 0..k {
                for i in 0..h {
                    for j in 0..ww {
                        let yi = ((img * k + o) * h + i) * ww + j;
                        for ch in 0..c {
                            for a in 0..3 {
                                for b in 0..3 {
                                    let (ii, jj) = ((i + a) as isize - 1, (j + b) as isize - 1);
                                    if ii < 0 || jj < 0 || ii >= h as isize || jj >= ww as isize {
                                        continue;
                                    }
                                    let xi = ((img * c + ch) * h + ii as usize) * ww + jj as usize;
                                    let wv = w[((o * c + ch) * 3 + a) * 3 + b] as f64;
                                    y[yi] += x[xi] as f64 * wv;
                                    gx[xi] += gy[yi] as f64 * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, gx)
    }

    struct Data {
        x: Vec<f32>,
        w: Vec<f32>,
        bias: Vec<f32>,
        gy: Vec<f32>,
    }

    fn data(d: &Direct, seed: u64) -> Data {
        let mut r = Rng::new(seed);
        let mut rnd = |len: usize| (0..len).map(|_| r.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
        Data {
            x: rnd(d.n * d.c * d.h * d.w),
            w: rnd(d.k * d.c * 9),
            bias: rnd(d.k),
            gy: rnd(d.n * d.k * d.h * d.w),
        }
    }

    /// `(n, c, h, w, k)` of the accuracy tests: partial tiles (odd sizes, 1×1, 2×3), channel
    /// counts off the vector width, several panels of output channels, several blocks of tiles.
    const SHAPES: [(usize, usize, usize, usize, usize); 9] = [
        (2, 16, 8, 8, 16),
        (3, 17, 7, 9, 20),
        (1, 32, 32, 32, 32),
        (2, 64, 16, 16, 64),
        (1, 16, 1, 1, 16),
        (1, 16, 2, 3, 33),
        (2, 128, 8, 8, 128),
        (1, 3, 5, 4, 70),
        (10, 16, 6, 5, 20),
    ];

    /// Forward with bias and ReLU, and the input gradient, on tiles of 2×2 and of 4×4,
    /// against float64 loops within the rounding-error bound of [`bound`], on shapes with
    /// partial tiles (odd sizes, 1×1, 2×3), channel counts off the vector width, several
    /// panels of output channels, and several blocks of tiles.
    #[test]
    fn winograd_matches_float64_within_the_rounding_bound() {
        for (seed, &(n, c, h, w, k)) in SHAPES.iter().enumerate() {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 100 + seed as u64);
            let (y, gx) = naive(&d, &dt.x, &dt.w, &dt.gy);
            let hw = h * w;
            let want: Vec<f64> = y
                .iter()
                .enumerate()
                .map(|(i, &v)| (v + dt.bias[(i / hw) % k] as f64).max(0.0))
                .collect();
            for m in [2, 4] {
                let mut got = vec![f32::NAN; n * k * hw];
                forward_tiled(&d, m, &dt.x, &dt.w, Some(&dt.bias), true, None, &mut got);
                let fg = fwd_filter(&dt.w, c);
                let s = if m == 2 {
                    abs_terms(&d, &dt.x, c, k, &fg, &f2(0.5))
                } else {
                    abs_terms(&d, &dt.x, c, k, &fg, &f4(1.0))
                };
                if let Some(e) = outside(m, &got, &want, &s, c, |i| dt.bias[(i / hw) % k] as f64) {
                    panic!("forward, tiles of {m}, {n}×{c}×{h}×{w} → {k}: {e}");
                }
                let mut got = vec![f32::NAN; n * c * hw];
                backward_input_tiled(&d, m, &dt.gy, &dt.w, &mut got);
                let bg = bwd_filter(&dt.w, c);
                let s = if m == 2 {
                    abs_terms(&d, &dt.gy, k, c, &bg, &f2(0.5))
                } else {
                    abs_terms(&d, &dt.gy, k, c, &bg, &f4(1.0))
                };
                if let Some(e) = outside(m, &got, &gx, &s, k, |_| 0.0) {
                    panic!("backward_input, tiles of {m}, {n}×{c}×{h}×{w} → {k}: {e}");
                }
            }
        }
    }

    /// The bound is tight enough to catch a wrong transform: the chain computed with `G`'s ½
    /// (F(2×2, 3×3)) off by a relative 2⁻¹⁰ (0.1%), or the fractions of F(4×4, 3×3)'s `G`
    /// off by 2⁻⁸ (0.4%: its sums of absolute terms are larger against the result, so its
    /// bound is looser; 2⁻¹⁰ passes it on 128 channels), falls outside it on every shape.
    #[test]
    fn a_broken_transform_fails_the_bound() {
        for (seed, &(n, c, h, w, k)) in [(2, 16, 8, 8, 16), (1, 17, 7, 9, 20), (1, 128, 4, 4, 32)]
            .iter()
            .enumerate()
        {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 200 + seed as u64);
            let (y, _) = naive(&d, &dt.x, &dt.w, &dt.gy);
            let g = fwd_filter(&dt.w, c);
            for m in [2, 4] {
                let off = 1.0 + 2f32.powi(if m == 2 { -10 } else { -8 });
                let (s, good, bad) = if m == 2 {
                    let s = abs_terms(&d, &dt.x, c, k, &g, &f2(0.5));
                    let good = chain(&d, &dt.x, c, k, &g, None, false, &f2(0.5), true);
                    let bad = chain(&d, &dt.x, c, k, &g, None, false, &f2(0.5 * off), true);
                    (s, good, bad)
                } else {
                    let s = abs_terms(&d, &dt.x, c, k, &g, &f4(1.0));
                    let good = chain(&d, &dt.x, c, k, &g, None, false, &f4(1.0), true);
                    let bad = chain(&d, &dt.x, c, k, &g, None, false, &f4(off), true);
                    (s, good, bad)
                };
                assert_eq!(
                    outside(m, &good, &y, &s, c, |_| 0.0),
                    None,
                    "the right transform passes (tiles of {m})"
                );
                assert!(
                    outside(m, &bad, &y, &s, c, |_| 0.0).is_some(),
                    "a transform off by {off} must fail (tiles of {m}, {n}×{c}×{h}×{w} → {k})"
                );
            }
        }
    }

    /// Forward (with bias and ReLU) and input gradient, on tiles of 2×2 and of 4×4, are, bit
    /// for bit, the chain the module documents, on the instruction set this process uses (run
    /// it under each `SADDLE_CPU_ISA`: the AVX-512 and AVX2 kernels compute the same chain of
    /// fused multiply-adds, so they agree bit for bit; the portable kernel rounds each
    /// product), in a 1-thread and a 3-thread pool. Shapes leave partial tiles, partial
    /// vectors of channels, partial slabs and panels, and several blocks of tiles. The public
    /// entry points use the tile [`super::tile_size`] chooses.
    #[test]
    fn winograd_is_the_documented_chain_bit_for_bit() {
        let fused = isa() != Isa::Portable;
        let pool = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        };
        for (seed, &(n, c, h, w, k)) in [
            (2, 17, 7, 9, 20),
            (1, 16, 2, 3, 33),
            (3, 32, 8, 8, 70),
            (1, 64, 16, 16, 64),
            (10, 16, 6, 5, 20),
            (9, 32, 4, 4, 32),
        ]
        .iter()
        .enumerate()
        {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 300 + seed as u64);
            for m in [2, 4] {
                let (fg, bg) = (fwd_filter(&dt.w, c), bwd_filter(&dt.w, c));
                let bias = Some(&dt.bias[..]);
                let (want_y, want_gx) = if m == 2 {
                    (
                        chain(&d, &dt.x, c, k, &fg, bias, true, &f2(0.5), fused),
                        chain(&d, &dt.gy, k, c, &bg, None, false, &f2(0.5), fused),
                    )
                } else {
                    (
                        chain(&d, &dt.x, c, k, &fg, bias, true, &f4(1.0), fused),
                        chain(&d, &dt.gy, k, c, &bg, None, false, &f4(1.0), fused),
                    )
                };
                for threads in [1, 3] {
                    let public = m == super::tile_size(&d);
                    let (y, gx) = pool(threads).install(|| {
                        let mut y = vec![f32::NAN; n * k * h * w];
                        let mut gx = vec![f32::NAN; n * c * h * w];
                        if public {
                            forward(&d, &dt.x, &dt.w, bias, true, &mut y);
                            backward_input(&d, &dt.gy, &dt.w, &mut gx);
                        } else {
                            forward_tiled(&d, m, &dt.x, &dt.w, bias, true, None, &mut y);
                            backward_input_tiled(&d, m, &dt.gy, &dt.w, &mut gx);
                        }
                        (y, gx)
                    });
                    for (what, got, want) in
                        [("forward", &y, &want_y), ("backward_input", &gx, &want_gx)]
                    {
                        if let Some(i) =
                            (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits())
                        {
                            panic!(
                                "{what}, tiles of {m}, {n}×{c}×{h}×{w} → {k} on {:?}, {threads} \
                                 threads: element {i}: {} vs {}",
                                isa(),
                                got[i],
                                want[i]
                            );
                        }
                    }
                }
            }
        }
    }

    /// The weight gradient `[k, c, 3, 3]` in float64, from the definition:
    /// `gw[o][ch][a][b] = Σ gy[img][o][i][j] · x[img][ch][i+a−1][j+b−1]`.
    fn naive_weight(d: &Direct, x: &[f32], gy: &[f32]) -> Vec<f64> {
        let (n, c, h, w, k) = (d.n, d.c, d.h, d.w, d.k);
        let mut gw = vec![0.0f64; k * c * 9];
        for img in 0..n {
            for o in 0..k {
                for ch in 0..c {
                    for a in 0..3 {
                        for b in 0..3 {
                            let mut s = 0.0f64;
                            for i in 0..h {
                                for j in 0..w {
                                    let xv = pixel(
                                        x,
                                        img,
                                        ch,
                                        c,
                                        h,
                                        w,
                                        (i + a) as isize - 1,
                                        (j + b) as isize - 1,
                                    );
                                    s += gy[((img * k + o) * h + i) * w + j] as f64 * xv as f64;
                                }
                            }
                            gw[(o * c + ch) * 9 + 3 * a + b] += s;
                        }
                    }
                }
            }
        }
        gw
    }

    /// The `M × M` output gradient of tile `(ti, tj)` of channel `o`, zeros outside the image.
    #[allow(clippy::too_many_arguments)]
    fn gy_tile<const M: usize>(
        gy: &[f32],
        img: usize,
        o: usize,
        k: usize,
        h: usize,
        w: usize,
        ti: usize,
        tj: usize,
    ) -> [[f32; M]; M] {
        std::array::from_fn(|a| {
            std::array::from_fn(|b| {
                pixel(
                    gy,
                    img,
                    o,
                    k,
                    h,
                    w,
                    (M * ti + a) as isize,
                    (M * tj + b) as isize,
                )
            })
        })
    }

    /// For each weight, the sum of the absolute values of every term of the Winograd
    /// expansion of [`backward_weight`] with the matrices of `wm`: `S = Σ_t Σ_ξ (|Gᵀ| ⊗
    /// |Gᵀ|)[ξ] · (|Bᵀ| |d_t| |B|)[ξ] · (|A| |gy_t| |Aᵀ|)[ξ]`, in float64.
    fn abs_terms_weight<const N: usize, const M: usize>(
        d: &Direct,
        x: &[f32],
        gy: &[f32],
        wm: &Wino<N, M>,
    ) -> Vec<f64> {
        let (n, c, h, w, k) = (d.n, d.c, d.h, d.w, d.k);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let f = |v: f32| v.abs() as f64;
        let mut m = vec![[[0.0f64; N]; N]; k * c];
        for img in 0..n {
            for ti in 0..th {
                for tj in 0..tw {
                    let vs: Vec<[[f64; N]; N]> = (0..c)
                        .map(|ch| {
                            let dd = window::<N>(x, img, ch, c, h, w, ti, tj);
                            std::array::from_fn(|i| {
                                std::array::from_fn(|j| {
                                    let mut s = 0.0;
                                    for p in 0..N {
                                        for q in 0..N {
                                            s += f(wm.bt[i][p]) * f(dd[p][q]) * f(wm.bt[j][q]);
                                        }
                                    }
                                    s
                                })
                            })
                        })
                        .collect();
                    for o in 0..k {
                        let g = gy_tile::<M>(gy, img, o, k, h, w, ti, tj);
                        let y: [[f64; N]; N] = std::array::from_fn(|i| {
                            std::array::from_fn(|j| {
                                let mut s = 0.0;
                                for r in 0..M {
                                    for q in 0..M {
                                        s += f(wm.at[r][i]) * f(g[r][q]) * f(wm.at[q][j]);
                                    }
                                }
                                s
                            })
                        });
                        for ch in 0..c {
                            let mm = &mut m[o * c + ch];
                            for i in 0..N {
                                for j in 0..N {
                                    mm[i][j] += vs[ch][i][j] * y[i][j];
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut s = vec![0.0f64; k * c * 9];
        for (q, mm) in m.iter().enumerate() {
            for a in 0..3 {
                for b in 0..3 {
                    let mut t = 0.0;
                    for i in 0..N {
                        for j in 0..N {
                            t += f(wm.g[i][a]) * mm[i][j] * f(wm.g[j][b]);
                        }
                    }
                    s[q * 9 + 3 * a + b] = t;
                }
            }
        }
        s
    }

    /// The bound on `|computed − exact|` for a weight over `tiles` tiles of the batch whose
    /// expansion's absolute terms sum to `s`.
    ///
    /// As [`bound`]: each term picks up one factor `(1 + δ)` per rounding on its path: 2 in
    /// `Bᵀ d B`, 2 in `A gy Aᵀ` (`g₀₀ ± g₁₀`, then `p ± q`; negation is exact), 4 in `Gᵀ M G`
    /// (`(m₁ ± m₂)` then `+ m₀` or `+ m₃`, on each side; ×½ is exact), 1 for the product on the
    /// portable kernel, and in the sum over tiles at most `tiles`: whatever the blocks, chunks
    /// and tasks, the sum of `tiles` products (per `ξ`) is a tree of fused multiply-adds and
    /// additions with `tiles` leaves (the first multiply-add of a chain rounds its product),
    /// so no leaf is deeper than `tiles` (the `+ 0.0`s are exact). The float64 reference adds
    /// at most `n·h·w·2⁻⁵³ · Σ|x·gy| ≤ 2⁻²⁴·S` (every pair's product is a sum of expansion
    /// terms, so `Σ|x·gy| ≤ S`): one rounding more. So `γ_{tiles+10} · S`. Typical errors grow
    /// like `√tiles` and are far below; a final transform off by a relative 2⁻¹⁰ breaks it:
    /// see [`a_broken_weight_transform_fails_the_bound`].
    ///
    /// For F(4×4, 3×3) (`m = 4`): 6 in `Bᵀ d B` (see [`bound`]), 6 in `A gy Aᵀ` (rows of up to
    /// four terms, products by powers of two exact), 12 in `Gᵀ M G` (per side: the rounded
    /// constant, the product, four sums over its five nonzero terms), 1 for the portable
    /// kernel, 1 for the reference, 1 for `S` computed from the rounded `G`: `γ_{tiles+27}·S`.
    fn bound_weight(m: usize, tiles: usize, s: f64) -> f64 {
        let extra = if m == 2 { 10 } else { 27 };
        let n = (tiles + extra) as f64 * 2f64.powi(-24);
        n / (1.0 - n) * s
    }

    fn outside_weight(
        m: usize,
        got: &[f32],
        want: &[f64],
        s: &[f64],
        tiles: usize,
    ) -> Option<String> {
        assert_eq!(got.len(), want.len());
        (0..got.len()).find_map(|i| {
            let (g, w) = (got[i] as f64, want[i]);
            let tol = bound_weight(m, tiles, s[i]);
            ((g - w).abs() > tol || g.is_nan())
                .then(|| format!("element {i}: got {g}, want {w}, bound {tol:e}"))
        })
    }

    /// Tiles of `m × m` of the batch.
    fn tiles(d: &Direct, m: usize) -> usize {
        d.n * d.h.div_ceil(m) * d.w.div_ceil(m)
    }

    /// The weight gradient on tiles of 2×2 and of 4×4 against float64 loops within
    /// [`bound_weight`], on the shapes of [`winograd_matches_float64_within_the_rounding_bound`]
    /// (partial tiles, odd sizes, 1×1, channel counts off the vector width, several images
    /// and blocks).
    #[test]
    fn winograd_weight_gradient_matches_float64_within_the_rounding_bound() {
        let shapes = SHAPES.iter().chain(&[(6, 5, 32, 32, 3)]);
        for (seed, &(n, c, h, w, k)) in shapes.enumerate() {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 400 + seed as u64);
            let want = naive_weight(&d, &dt.x, &dt.gy);
            for m in [2, 4] {
                let s = if m == 2 {
                    abs_terms_weight(&d, &dt.x, &dt.gy, &f2(0.5))
                } else {
                    abs_terms_weight(&d, &dt.x, &dt.gy, &f4(1.0))
                };
                let mut got = vec![f32::NAN; k * c * 9];
                backward_weight_tiled(&d, m, &dt.x, &dt.gy, &mut got);
                if let Some(e) = outside_weight(m, &got, &want, &s, tiles(&d, m)) {
                    panic!("backward_weight, tiles of {m}, {n}×{c}×{h}×{w} → {k}: {e}");
                }
            }
        }
    }

    /// The documented sums in scalar code, without blocks (one chain of `f32` multiply-adds
    /// over the tiles), with the matrices of `wm`.
    fn weight_chain<const N: usize, const M: usize>(
        d: &Direct,
        x: &[f32],
        gy: &[f32],
        wm: &Wino<N, M>,
    ) -> Vec<f32> {
        let (n, c, h, w, k) = (d.n, d.c, d.h, d.w, d.k);
        let mut m = vec![[[0.0f32; N]; N]; k * c];
        for img in 0..n {
            for ti in 0..h.div_ceil(M) {
                for tj in 0..w.div_ceil(M) {
                    let vs: Vec<[[f32; N]; N]> = (0..c)
                        .map(|ch| {
                            let dd = window::<N>(x, img, ch, c, h, w, ti, tj);
                            mm(&mm(&wm.bt, &dd), &tr(&wm.bt))
                        })
                        .collect();
                    for o in 0..k {
                        let g = gy_tile::<M>(gy, img, o, k, h, w, ti, tj);
                        let y = mm(&mm(&tr(&wm.at), &g), &wm.at);
                        for ch in 0..c {
                            for i in 0..N {
                                for j in 0..N {
                                    let e = &mut m[o * c + ch][i][j];
                                    *e = vs[ch][i][j].mul_add(y[i][j], *e);
                                }
                            }
                        }
                    }
                }
            }
        }
        m.iter()
            .flat_map(|mt| {
                let r = mm(&mm(&tr(&wm.g), mt), &wm.g);
                (0..9).map(move |q| r[q / 3][q % 3])
            })
            .collect()
    }

    /// The bound is tight enough to catch a wrong transform: the sums with `Gᵀ`'s ½ off by a
    /// relative 2⁻¹⁰ (F(2×2, 3×3)), or F(4×4, 3×3)'s fractions off by 2⁻⁸ (see
    /// [`a_broken_transform_fails_the_bound`]), fall outside it, the right ones inside.
    #[test]
    fn a_broken_weight_transform_fails_the_bound() {
        for (seed, &(n, c, h, w, k)) in [(2, 16, 8, 8, 16), (1, 17, 7, 9, 20), (3, 32, 4, 4, 16)]
            .iter()
            .enumerate()
        {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 500 + seed as u64);
            let want = naive_weight(&d, &dt.x, &dt.gy);
            for m in [2, 4] {
                let off = 1.0 + 2f32.powi(if m == 2 { -10 } else { -8 });
                let (s, good, bad) = if m == 2 {
                    (
                        abs_terms_weight(&d, &dt.x, &dt.gy, &f2(0.5)),
                        weight_chain(&d, &dt.x, &dt.gy, &f2(0.5)),
                        weight_chain(&d, &dt.x, &dt.gy, &f2(0.5 * off)),
                    )
                } else {
                    (
                        abs_terms_weight(&d, &dt.x, &dt.gy, &f4(1.0)),
                        weight_chain(&d, &dt.x, &dt.gy, &f4(1.0)),
                        weight_chain(&d, &dt.x, &dt.gy, &f4(off)),
                    )
                };
                assert_eq!(
                    outside_weight(m, &good, &want, &s, tiles(&d, m)),
                    None,
                    "the right transform passes (tiles of {m})"
                );
                assert!(
                    outside_weight(m, &bad, &want, &s, tiles(&d, m)).is_some(),
                    "a transform off by {off} must fail (tiles of {m}, {n}×{c}×{h}×{w} → {k})"
                );
            }
        }
    }

    /// The weight gradient's partial sums stay within [`BW_PARTS_BYTES`] on the paper
    /// network's widest layers at a large batch (640 channels at 8×8, batch 512: 16 tasks would
    /// hold 420 MB), and smaller layers keep their tasks (their parallelism and their bits).
    #[test]
    fn weight_gradient_partial_sums_are_bounded() {
        let parts = |n, c, k, h, m| {
            let pl = WPlan::new(&geometry(n, c, h, h, k), m);
            // The tasks without the bound: the blocks in at most BW_MAX_TASKS runs.
            let free = pl.nb.div_ceil(pl.nb.div_ceil(BW_MAX_TASKS));
            (pl.tasks, free, pl.tasks * pl.fp.planes * c * pl.kp * 4)
        };
        for m in [2, 4] {
            let (tasks, free, bytes) = parts(512, 640, 640, 8, m);
            assert!(
                bytes <= BW_PARTS_BYTES,
                "tiles of {m}: {tasks} tasks, {bytes} bytes"
            );
            assert!(
                (2..free).contains(&tasks),
                "tiles of {m}: {tasks} of {free}"
            );
        }
        for (c, k, h) in [(160, 160, 32), (16, 32, 32), (64, 64, 8)] {
            let (tasks, free, bytes) = parts(128, c, k, h, 2);
            assert_eq!(tasks, free, "{c}→{k} at {h}×{h}: {bytes} bytes");
        }
    }

    /// The weight gradient's bits do not depend on the thread count (1- and 3-thread pools), on
    /// shapes with one block, several tasks, several blocks per task (80 images of 32×32: 20
    /// blocks of 1024 tiles, two chunks of `KC` each, in 10 tasks); and a checksum of
    /// them to compare across `SADDLE_CPU_ISA=avx512` and `avx2` (printed with
    /// `--nocapture`: the two must print the same).
    #[test]
    fn winograd_weight_gradient_is_independent_of_the_thread_count() {
        let pool = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        };
        let mut sum = 0u64;
        for (seed, &(n, c, h, w, k)) in [
            (2, 17, 7, 9, 20),
            (10, 16, 6, 5, 20),
            (8, 32, 32, 32, 32),
            (80, 16, 32, 32, 16),
            (1, 16, 2, 3, 33),
        ]
        .iter()
        .enumerate()
        {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 600 + seed as u64);
            for m in [2, 4] {
                let run = |t| {
                    pool(t).install(|| {
                        let mut gw = vec![f32::NAN; k * c * 9];
                        if m == super::tile_size(&d) {
                            backward_weight(&d, &dt.x, &dt.gy, &mut gw);
                        } else {
                            backward_weight_tiled(&d, m, &dt.x, &dt.gy, &mut gw);
                        }
                        gw
                    })
                };
                let (a, b) = (run(1), run(3));
                if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
                    panic!(
                        "tiles of {m}, {n}×{c}×{h}×{w} → {k}: element {i}: {} (1 thread) vs {} (3)",
                        a[i], b[i]
                    );
                }
                for v in a {
                    sum = sum
                        .wrapping_mul(0x100000001b3)
                        .wrapping_add(v.to_bits() as u64);
                }
            }
        }
        println!("weight gradient checksum on {:?}: {sum:016x}", isa());
    }

    use crate::cpu::cpu_clock::thread as thread_time;

    /// Median CPU time of `reps` calls of `f` (after one untimed call), in milliseconds.
    fn time(reps: usize, mut f: impl FnMut()) -> f64 {
        f();
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = thread_time();
                f();
                (thread_time() - t0) * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[reps / 2]
    }

    /// Direct against Winograd convolution (forward, gradient with respect to the input, and
    /// with respect to the weights) on the 3×3 layers of a wide ResNet 16-2 at batch 128, CPU time of one thread, with the
    /// packing or weight transform each call does. `cargo test --release -p saddle-tensor
    /// winograd_speed -- --ignored --nocapture`, under each `SADDLE_CPU_ISA`; `WINOGRAD_SHAPES`
    /// (`c,k,h,w;…`) and `WINOGRAD_BATCH` change the shapes, `WINOGRAD_SKIP_DIRECT` times only
    /// the Winograd path, `WINOGRAD_ONLY_WEIGHT` only the weight gradient, `WINOGRAD_TILE`
    /// (2 or 4) times the Winograd paths on that tile instead of the chosen one.
    #[test]
    #[ignore = "a timing report (CPU time, direct against Winograd), not a check: run by hand \
                with --release -- --ignored --nocapture; correctness is the other tests' work, \
                speed is cargo xtask bench's"]
    fn winograd_speed() {
        use crate::shape::ConvGeometry;
        use crate::Conv2dParams;
        let n: usize = std::env::var("WINOGRAD_BATCH")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(128);
        let shapes: Vec<[usize; 4]> = match std::env::var("WINOGRAD_SHAPES") {
            Ok(s) => s
                .split(';')
                .map(|t| {
                    let v: Vec<usize> = t.split(',').map(|x| x.trim().parse().unwrap()).collect();
                    [v[0], v[1], v[2], v[3]]
                })
                .collect(),
            Err(_) => vec![
                [16, 32, 32, 32],
                [32, 32, 32, 32],
                [64, 64, 16, 16],
                [128, 128, 8, 8],
            ],
        };
        let reps = 9;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        println!(
            "{:?}, batch {n}, 1 thread, ms of CPU time per call (median of {reps})",
            isa()
        );
        println!(
            "{:>18} {:>10} {:>10} {:>6} {:>10} {:>10} {:>6} {:>10} {:>10} {:>6}",
            "c,k,h,w",
            "fwd direct",
            "fwd wino",
            "ratio",
            "bwd direct",
            "bwd wino",
            "ratio",
            "wgt direct",
            "wgt wino",
            "ratio"
        );
        for &[c, k, h, w] in &shapes {
            let d = geometry(n, c, h, w, k);
            let dt = data(&d, 1);
            let g = ConvGeometry::new(
                "conv2d",
                &[n, c, h, w],
                &[k, c, 3, 3],
                Conv2dParams::new(1, 1),
            )
            .unwrap();
            let mut y = vec![0.0f32; n * k * h * w];
            let mut gx = vec![0.0f32; n * c * h * w];
            let mut gw = vec![0.0f32; k * c * 9];
            let row = pool.install(|| {
                let skip = std::env::var_os("WINOGRAD_SKIP_DIRECT").is_some();
                let only_weight = std::env::var_os("WINOGRAD_ONLY_WEIGHT").is_some();
                let skip_conv = skip || only_weight;
                let fd = if skip_conv {
                    f64::NAN
                } else {
                    time(reps, || {
                        let mut wt = super::Scratch::new(conv::packed_len(k, 9 * c));
                        conv::pack_forward(k, 9 * c, &dt.w, &mut wt);
                        conv::direct(&d, &dt.x, &wt, Some(&dt.bias), true, &mut y);
                    })
                };
                let m = std::env::var("WINOGRAD_TILE")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(super::tile_size(&d));
                let fw = if only_weight {
                    f64::NAN
                } else {
                    time(reps, || {
                        forward_tiled(&d, m, &dt.x, &dt.w, Some(&dt.bias), true, None, &mut y)
                    })
                };
                let bd = match conv::backward_input_geometry(&g).filter(|_| !skip_conv) {
                    Some(bdg) => time(reps, || {
                        let mut wt = super::Scratch::new(conv::packed_len(c, 9 * k));
                        conv::pack_backward_input(&g, &dt.w, &mut wt);
                        conv::direct(&bdg, &dt.gy, &wt, None, false, &mut gx);
                    }),
                    None => f64::NAN,
                };
                let bw = if only_weight {
                    f64::NAN
                } else {
                    time(reps, || backward_input_tiled(&d, m, &dt.gy, &dt.w, &mut gx))
                };
                let wd = if skip {
                    f64::NAN
                } else {
                    time(reps, || conv::backward_weight(&d, &dt.x, &dt.gy, &mut gw))
                };
                let ww = time(reps, || {
                    backward_weight_tiled(&d, m, &dt.x, &dt.gy, &mut gw)
                });
                (fd, fw, bd, bw, wd, ww)
            });
            let (fd, fw, bd, bw, wd, ww) = row;
            println!(
                "{:>18} {fd:>10.1} {fw:>10.1} {:>6.2} {bd:>10.1} {bw:>10.1} {:>6.2} {wd:>10.1} {ww:>10.1} {:>6.2}",
                format!("{c},{k},{h},{w}"),
                fd / fw,
                bd / bw,
                wd / ww
            );
        }
    }
}
