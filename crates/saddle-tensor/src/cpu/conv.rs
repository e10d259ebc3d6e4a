//! Convolution on the micro-kernel of [`super::kernel`]: direct (no im2col) for the forward
//! pass, the gradient with respect to the input (a stride-1 convolution of the padded output
//! gradient with the flipped, transposed weights) and the gradient with respect to the weights
//! (one product over the whole batch). Everything is NCHW, weights `[k, c, kh, kw]`.

use rayon::prelude::*;

use super::kernel::{self, as_u32, BSrc, Offs, Out, MR, P};
use super::pool::Scratch;
use crate::shape::ConvGeometry;

/// Geometry of one direct convolution pass (input channels `c`, output channels `k`).
#[derive(Clone, Copy, Debug)]
pub struct Direct {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Direct {
    fn hp(&self) -> usize {
        self.h + 2 * self.pad
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }
    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Elements of one padded image.
    fn padded(&self) -> usize {
        self.c * self.hp() * self.wp()
    }
}

/// Whether the offsets of a padded batch of `n` images fit the kernels' 32-bit tables.
pub fn fits(d: &Direct, n: usize) -> bool {
    (n as u128) * (d.padded() as u128) < (u32::MAX as u128)
}

/// Copies image `x` `[c, h, w]` into `dst` `[c, hp, wp]` with a zero border of `pad`.
fn pad_image(d: &Direct, x: &[f32], dst: &mut [f32]) {
    let (hp, wp, p) = (d.hp(), d.wp(), d.pad);
    if p == 0 {
        dst[..x.len()].copy_from_slice(x);
        return;
    }
    for c in 0..d.c {
        let plane = &mut dst[c * hp * wp..(c + 1) * hp * wp];
        plane[..p * wp].fill(0.0);
        plane[(p + d.h) * wp..].fill(0.0);
        for i in 0..d.h {
            let row = &mut plane[(p + i) * wp..(p + i + 1) * wp];
            row[..p].fill(0.0);
            row[p..p + d.w].copy_from_slice(&x[(c * d.h + i) * d.w..(c * d.h + i + 1) * d.w]);
            row[p + d.w..].fill(0.0);
        }
    }
}

/// Offsets in a padded image of the window elements `p = (c, ki, kj)`.
fn window_table(d: &Direct, t: &mut [u32]) {
    let (hp, wp) = (d.hp(), d.wp());
    let mut p = 0;
    for c in 0..d.c {
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                t[p] = (c * hp * wp + ki * wp + kj) as u32;
                p += 1;
            }
        }
    }
}

/// Width of the packed weight matrix: `k` rounded up to a whole vector.
fn kpad(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// Direct convolution: `out` `[n, k, oh, ow]` from `x` `[n, c, h, w]` and the weights packed as
/// `wt` `[ckk, kpad(k)]` (element `(p, o)` = weight of output channel `o` at window element `p`),
/// plus `bias`, then ReLU if asked.
pub fn direct(
    d: &Direct,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (ckk, kp) = (d.ckk(), kpad(d.k));
    let ohw = d.oh * d.ow;
    let in_sz = d.c * d.h * d.w;
    let mut tab_s = Scratch::new(ckk);
    let tab = as_u32(&mut tab_s);
    window_table(d, tab);
    let tab: &[u32] = tab;
    let wp = d.wp();
    let bias = bias.map(|b| P(b.as_ptr() as *mut f32));
    // The AVX2 kernel reads the weights as 16-column slabs (see `kernel::wants_slabs`).
    let slabs = kernel::wants_slabs().then(|| {
        let mut s = Scratch::new(ckk * kp);
        // SAFETY: `wt` holds ckk rows of kp columns.
        unsafe { kernel::to_slabs(wt.as_ptr(), kp, ckk, kp / 16, &mut s) };
        s
    });
    let slabs = slabs.as_deref();
    out.par_chunks_mut(d.k * ohw)
        .enumerate()
        .for_each(|(img, o)| {
            let mut xpad = Scratch::new(d.padded());
            pad_image(d, &x[img * in_sz..(img + 1) * in_sz], &mut xpad);
            let dst = Out {
                c: P(o.as_mut_ptr()),
                rs: 1,
                cs: ohw,
                accumulate: false,
                bias,
                relu,
            };
            let mut acc = [0.0f32; MR * 64];
            let rt = kernel::tile_rows();
            for j0 in (0..d.k).step_by(64) {
                let nr = (d.k - j0).min(64);
                let nv = nr.div_ceil(16);
                let bp = wt[j0..].as_ptr();
                // Tiles of `rt` consecutive output pixels in row-major order: a tile may span
                // two output rows (each of its rows has its own pointer, and its pixels are
                // contiguous in the output), so no tile is short unless the image's last is.
                let rows_at = |pix: usize| {
                    let mr = rt.min(ohw - pix);
                    let mut rows = [xpad.as_ptr(); MR];
                    for (r, row) in rows.iter_mut().enumerate() {
                        let q = pix + r.min(mr - 1);
                        let (oi, oj) = (q / d.ow, q % d.ow);
                        *row = xpad[(oi * d.stride) * wp + oj * d.stride..].as_ptr();
                    }
                    (rows, mr)
                };
                match slabs {
                    // One slab (16 columns) at a time over every tile: the slab is read from
                    // the cache by the next tile instead of being pushed out by the panel's
                    // other slabs.
                    Some(sl) => {
                        for v in 0..nv {
                            let (c0, b) = (j0 + 16 * v, sl[(j0 + 16 * v) * ckk..].as_ptr());
                            for pix in (0..ohw).step_by(rt) {
                                let (rows, mr) = rows_at(pix);
                                // SAFETY: window offsets stay inside the padded image for every
                                // valid output pixel; slab c0/16 has ckk rows of 16.
                                unsafe {
                                    kernel::tile_slabs(
                                        1,
                                        ckk,
                                        &rows,
                                        Offs::Table(tab),
                                        b,
                                        &mut acc,
                                    );
                                    kernel::store(
                                        &dst,
                                        &acc,
                                        pix,
                                        mr,
                                        c0,
                                        (d.k - c0).min(16),
                                        true,
                                        true,
                                    );
                                }
                            }
                        }
                    }
                    None => {
                        for pix in (0..ohw).step_by(rt) {
                            let (rows, mr) = rows_at(pix);
                            // SAFETY: window offsets stay inside the padded image for every valid
                            // output pixel; the weight panel has ckk rows of kp ≥ j0 + 16·nv.
                            unsafe {
                                kernel::tile(nv, ckk, &rows, Offs::Table(tab), bp, kp, &mut acc);
                                kernel::store(&dst, &acc, pix, mr, j0, nr, true, true);
                            }
                        }
                    }
                }
            }
        });
}

/// Packs `w` `[k, c, kh, kw]` for [`direct`]: `wt[p][o] = w[o][p]`, zero-padded columns.
pub fn pack_forward(k: usize, ckk: usize, w: &[f32], wt: &mut [f32]) {
    let kp = kpad(k);
    for p in 0..ckk {
        let row = &mut wt[p * kp..(p + 1) * kp];
        for o in 0..k {
            row[o] = w[o * ckk + p];
        }
        row[k..].fill(0.0);
    }
}

/// Packs `w` `[k, c, kh, kw]` as the weights of the transposed convolution (output channels `c`,
/// input channels `k`, flipped window): `wt[(o, ki, kj)][ch] = w[o][ch][kh−1−ki][kw−1−kj]`.
pub fn pack_backward_input(g: &ConvGeometry, w: &[f32], wt: &mut [f32]) {
    let cp = kpad(g.c);
    let (kh, kw) = (g.kh, g.kw);
    for o in 0..g.k {
        for ki in 0..kh {
            for kj in 0..kw {
                let p = (o * kh + ki) * kw + kj;
                let row = &mut wt[p * cp..(p + 1) * cp];
                for ch in 0..g.c {
                    row[ch] = w[((o * g.c + ch) * kh + kh - 1 - ki) * kw + kw - 1 - kj];
                }
                row[g.c..].fill(0.0);
            }
        }
    }
}

/// Size of the packed weights for [`direct`] with `k` output channels.
pub fn packed_len(k: usize, ckk: usize) -> usize {
    ckk * kpad(k)
}

/// The forward pass's [`Direct`].
pub fn forward_geometry(g: &ConvGeometry) -> Direct {
    Direct {
        n: g.n,
        c: g.c,
        h: g.h,
        w: g.w,
        k: g.k,
        kh: g.kh,
        kw: g.kw,
        pad: g.padding,
        stride: g.stride,
        oh: g.oh,
        ow: g.ow,
    }
}

/// The gradient with respect to the input as a direct convolution, when it is one: stride 1,
/// padding at most `kh − 1` (and `kw − 1`), and enough input channels to fill a vector.
pub fn backward_input_geometry(g: &ConvGeometry) -> Option<Direct> {
    if g.stride != 1 || g.padding + 1 > g.kh || g.kh != g.kw || g.c < 16 {
        return None;
    }
    let q = g.kh - 1 - g.padding;
    Some(Direct {
        n: g.n,
        c: g.k,
        h: g.oh,
        w: g.ow,
        k: g.c,
        kh: g.kh,
        kw: g.kw,
        pad: q,
        stride: 1,
        oh: g.h,
        ow: g.w,
    })
}

/// `gw` `[k, c·kh·kw]` = Σ over images and output pixels of `gy[o][pix] · patch[pix][p]`,
/// computed as `gwᵀ = patches · gyᵀ` with the patches read straight from the padded batch.
pub fn backward_weight(d: &Direct, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    let (ckk, ohw) = (d.ckk(), d.oh * d.ow);
    let (kp, q) = (kpad(d.k), d.n * ohw);
    let in_sz = d.c * d.h * d.w;
    let psz = d.padded();
    let mut xpad = Scratch::new(d.n * psz);
    xpad.par_chunks_mut(psz)
        .enumerate()
        .for_each(|(i, dst)| pad_image(d, &x[i * in_sz..(i + 1) * in_sz], dst));
    // gyᵀ [n·ohw, kp]: row (img, pix) holds the output gradient of every channel.
    let mut gyt = Scratch::new(q * kp);
    gyt.par_chunks_mut(ohw * kp)
        .enumerate()
        .for_each(|(i, dst)| {
            let src = &gy[i * d.k * ohw..(i + 1) * d.k * ohw];
            for pix in 0..ohw {
                let row = &mut dst[pix * kp..(pix + 1) * kp];
                for o in 0..d.k {
                    row[o] = src[o * ohw + pix];
                }
                row[d.k..].fill(0.0);
            }
        });
    let mut rt = Scratch::new(ckk);
    let rows = as_u32(&mut rt);
    window_table(d, rows);
    let mut qt = Scratch::new(q);
    let qoff = as_u32(&mut qt);
    let wp = d.wp();
    for img in 0..d.n {
        for oi in 0..d.oh {
            for oj in 0..d.ow {
                qoff[(img * d.oh + oi) * d.ow + oj] =
                    (img * psz + oi * d.stride * wp + oj * d.stride) as u32;
            }
        }
    }
    let out = Out {
        c: P(gw.as_mut_ptr()),
        rs: 1,
        cs: ckk,
        accumulate: false,
        bias: None,
        relu: false,
    };
    // SAFETY: row offsets + pixel offsets address the padded batch; gyᵀ has q rows of kp.
    unsafe {
        kernel::gemm(
            ckk,
            d.k,
            q,
            xpad.as_ptr(),
            Offs::Table(rows),
            Offs::Table(qoff),
            BSrc::Rows(P(gyt.as_mut_ptr()), kp),
            out,
            true,
        );
    }
}

/// Scatters-adds `cols` `[c·kh·kw, oh·ow]` into one image gradient `[c, h, w]` (overwritten).
pub fn col2im(cols: &[f32], g: &ConvGeometry, x: &mut [f32]) {
    let (oh, ow) = (g.oh, g.ow);
    let pad = g.padding as isize;
    x.fill(0.0);
    for c in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * oh * ow..(row + 1) * oh * ow];
                // Output columns whose input column is inside the image.
                let lo = ((pad - kj as isize).max(0) as usize).div_ceil(g.stride);
                let hi_in = g.w as isize + pad - kj as isize; // oj·s < hi_in
                let hi = if hi_in <= 0 {
                    0
                } else {
                    ((hi_in as usize).div_ceil(g.stride)).min(ow)
                };
                for oi in 0..oh {
                    let ii = (oi * g.stride) as isize + ki as isize - pad;
                    if ii < 0 || ii >= g.h as isize || lo >= hi {
                        continue;
                    }
                    let base = (c * g.h + ii as usize) * g.w;
                    let s = &src[oi * ow..(oi + 1) * ow];
                    if g.stride == 1 {
                        let j0 = (lo as isize + kj as isize - pad) as usize;
                        let d = &mut x[base + j0..base + j0 + (hi - lo)];
                        for (a, &b) in d.iter_mut().zip(&s[lo..hi]) {
                            *a += b;
                        }
                    } else {
                        for oj in lo..hi {
                            let jj = (oj * g.stride) as isize + kj as isize - pad;
                            x[base + jj as usize] += s[oj];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fast paths the shared op suite's small cases do not reach (direct gradient with
    //! respect to the input needs 16 or more input channels; panels of more than 64 filters)
    //! against naive float64 loops.
    use crate::cpu::Cpu;
    use crate::rng::Rng;
    use crate::{Backend, Conv2dParams};

    struct Case {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        kk: usize,
        s: usize,
        p: usize,
    }

    fn naive(cs: &Case, x: &[f32], wt: &[f32], gy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let oh = (cs.h + 2 * cs.p - cs.kk) / cs.s + 1;
        let ow = (cs.w + 2 * cs.p - cs.kk) / cs.s + 1;
        let mut y = vec![0.0f64; cs.n * cs.k * oh * ow];
        let mut gx = vec![0.0f64; x.len()];
        let mut gw = vec![0.0f64; wt.len()];
        for i in 0..cs.n {
            for o in 0..cs.k {
                for oi in 0..oh {
                    for oj in 0..ow {
                        let yi = ((i * cs.k + o) * oh + oi) * ow + oj;
                        for c in 0..cs.c {
                            for a in 0..cs.kk {
                                for b in 0..cs.kk {
                                    let ii = (oi * cs.s + a) as isize - cs.p as isize;
                                    let jj = (oj * cs.s + b) as isize - cs.p as isize;
                                    if ii < 0
                                        || jj < 0
                                        || ii >= cs.h as isize
                                        || jj >= cs.w as isize
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((i * cs.c + c) * cs.h + ii as usize) * cs.w + jj as usize;
                                    let wi = ((o * cs.c + c) * cs.kk + a) * cs.kk + b;
                                    y[yi] += x[xi] as f64 * wt[wi] as f64;
                                    gx[xi] += gy[yi] as f64 * wt[wi] as f64;
                                    gw[wi] += gy[yi] as f64 * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, gx, gw)
    }

    fn close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale + 1e-6,
                "{what}: element {i}: got {g}, want {w}"
            );
        }
    }

    #[test]
    fn fast_convolution_paths_match_naive_loops() {
        let b = Cpu::new();
        let mut r = Rng::new(5);
        let cases = [
            Case {
                n: 2,
                c: 32,
                h: 14,
                w: 14,
                k: 64,
                kk: 5,
                s: 1,
                p: 2,
            },
            Case {
                n: 3,
                c: 17,
                h: 9,
                w: 11,
                k: 20,
                kk: 3,
                s: 1,
                p: 1,
            },
            Case {
                n: 1,
                c: 16,
                h: 6,
                w: 6,
                k: 5,
                kk: 3,
                s: 1,
                p: 0,
            },
            Case {
                n: 2,
                c: 3,
                h: 9,
                w: 9,
                k: 70,
                kk: 3,
                s: 2,
                p: 1,
            },
            Case {
                n: 2,
                c: 1,
                h: 28,
                w: 28,
                k: 32,
                kk: 5,
                s: 1,
                p: 2,
            },
        ];
        for cs in &cases {
            let oh = (cs.h + 2 * cs.p - cs.kk) / cs.s + 1;
            let ow = (cs.w + 2 * cs.p - cs.kk) / cs.s + 1;
            let mut rnd = |n: usize| (0..n).map(|_| r.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
            let xs = [cs.n, cs.c, cs.h, cs.w];
            let ws = [cs.k, cs.c, cs.kk, cs.kk];
            let x = rnd(xs.iter().product());
            let w = rnd(ws.iter().product());
            let gy = rnd(cs.n * cs.k * oh * ow);
            let bias = rnd(cs.k);
            let (y, gx, gw) = naive(cs, &x, &w, &gy);
            let p = Conv2dParams::new(cs.s, cs.p);
            let xt = b.from_vec(&xs, x.clone()).unwrap();
            let wt = b.from_vec(&ws, w.clone()).unwrap();
            let bt = b.from_vec(&[cs.k], bias.clone()).unwrap();
            let gyt = b.from_vec(&[cs.n, cs.k, oh, ow], gy.clone()).unwrap();
            let got = b.conv2d(&xt, &wt, None, p).unwrap();
            close("conv2d", got.as_slice(), &y);
            let ohw = oh * ow;
            let yr: Vec<f64> = y
                .iter()
                .enumerate()
                .map(|(i, &v)| (v + bias[(i / ohw) % cs.k] as f64).max(0.0))
                .collect();
            let got = b.conv2d_relu(&xt, &wt, Some(&bt), p).unwrap();
            close("conv2d_relu", got.as_slice(), &yr);
            let got = b.conv2d_backward_input(&gyt, &wt, &xs, p).unwrap();
            close("conv2d_backward_input", got.as_slice(), &gx);
            let got = b.conv2d_backward_weight(&xt, &gyt, &ws, p).unwrap();
            close("conv2d_backward_weight", got.as_slice(), &gw);
        }
    }

    /// The direct convolution (forward, and the gradient with respect to the input when it is
    /// one) computes each output as the documented chain, bit for bit: on the AVX-512 and AVX2
    /// kernels one fused multiply-add per window element `(c, ki, kj)` in order, the padding's
    /// zeros included, from +0; then `+ bias` and ReLU. Checked on the instruction set this
    /// process uses (CI runs it under each `SADDLE_CPU_ISA`); the portable kernel rounds each
    /// product and is left to the test above. Shapes leave partial tiles and partial slabs.
    #[test]
    fn direct_convolution_is_the_documented_chain() {
        use crate::cpu::kernel::{isa, Isa};
        if isa() == Isa::Portable {
            return;
        }
        let b = Cpu::new();
        let mut r = Rng::new(13);
        // (n, c, h, w, k, kk, pad): the second and third run the gradient directly (c ≥ 16).
        for &(n, c, h, w, k, kk, pad) in &[
            (2, 3, 9, 11, 20, 3, 1),
            (2, 17, 7, 9, 18, 5, 2),
            (1, 16, 6, 13, 33, 3, 0),
        ] {
            let (hp, wp) = (h + 2 * pad, w + 2 * pad);
            let (oh, ow) = (hp - kk + 1, wp - kk + 1);
            let mut rnd = |len: usize| (0..len).map(|_| r.uniform(-1.0, 1.0)).collect::<Vec<f32>>();
            let x = rnd(n * c * h * w);
            let wt = rnd(k * c * kk * kk);
            let bias = rnd(k);
            let gy = rnd(n * k * oh * ow);
            let p = Conv2dParams::new(1, pad);
            let xs = [n, c, h, w];
            let ws = [k, c, kk, kk];
            let xt = b.from_vec(&xs, x.clone()).unwrap();
            let wtt = b.from_vec(&ws, wt.clone()).unwrap();
            let bt = b.from_vec(&[k], bias.clone()).unwrap();
            let gyt = b.from_vec(&[n, k, oh, ow], gy.clone()).unwrap();
            let y = b.conv2d_relu(&xt, &wtt, Some(&bt), p).unwrap();
            let at = |v: &[f32],
                      ch: usize,
                      chans: usize,
                      hh: usize,
                      ww: usize,
                      i: isize,
                      j: isize,
                      img: usize| {
                if i < 0 || j < 0 || i >= hh as isize || j >= ww as isize {
                    0.0
                } else {
                    v[((img * chans + ch) * hh + i as usize) * ww + j as usize]
                }
            };
            for img in 0..n {
                for o in 0..k {
                    for oi in 0..oh {
                        for oj in 0..ow {
                            let mut s = 0.0f32;
                            for ch in 0..c {
                                for a in 0..kk {
                                    for bb in 0..kk {
                                        let xv = at(
                                            &x,
                                            ch,
                                            c,
                                            h,
                                            w,
                                            (oi + a) as isize - pad as isize,
                                            (oj + bb) as isize - pad as isize,
                                            img,
                                        );
                                        s = xv.mul_add(wt[((o * c + ch) * kk + a) * kk + bb], s);
                                    }
                                }
                            }
                            let v = s + bias[o];
                            let want = if v <= 0.0 || v.is_nan() { 0.0 } else { v };
                            let got = y.as_slice()[((img * k + o) * oh + oi) * ow + oj];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "conv2d_relu {n}x{c}x{h}x{w} k{k}: ({img}, {o}, {oi}, {oj})"
                            );
                        }
                    }
                }
            }
            if c < 16 {
                continue;
            }
            // The gradient: a stride-1 convolution of gy padded by q = kk − 1 − pad with the
            // flipped weights, summed over (o, ki, kj) in order.
            let gx = b.conv2d_backward_input(&gyt, &wtt, &xs, p).unwrap();
            let q = (kk - 1 - pad) as isize;
            for img in 0..n {
                for ch in 0..c {
                    for i in 0..h {
                        for j in 0..w {
                            let mut s = 0.0f32;
                            for o in 0..k {
                                for a in 0..kk {
                                    for bb in 0..kk {
                                        let gv = at(
                                            &gy,
                                            o,
                                            k,
                                            oh,
                                            ow,
                                            (i + a) as isize - q,
                                            (j + bb) as isize - q,
                                            img,
                                        );
                                        let wv =
                                            wt[((o * c + ch) * kk + kk - 1 - a) * kk + kk - 1 - bb];
                                        s = gv.mul_add(wv, s);
                                    }
                                }
                            }
                            let got = gx.as_slice()[((img * c + ch) * h + i) * w + j];
                            assert_eq!(got.to_bits(), s.to_bits(), "conv2d_backward_input {n}x{c}x{h}x{w} k{k}: ({img}, {ch}, {i}, {j})");
                        }
                    }
                }
            }
        }
    }
}
