// pgd_step_l2: one fused L2 PGD step per example (rows of d elements),
//   moved = x + g · (α / ‖g‖₂)                       (no move where ‖g‖₂ = 0)
//   δ = moved − x0;  δ ← δ · (ε / ‖δ‖₂ · (1 − 1e-6))  where ‖δ‖₂ > ε
//   out = clip_[0,1](x0 + δ)
// as the trait's default: norms are taken as m · sqrt(Σ (v/m)²) with m = max |v|, so that
// gradients as large as 1e30 or as small as 1e-30 (whose f32 squares overflow or underflow)
// still take a full step, and the shrink factor is a hair below ε/‖δ‖ so that rounding cannot
// leave ‖δ‖ above ε. With use_g = 0 the step is skipped (project_l2).
//
// One workgroup per example: five passes over its row (max |g|, Σ (g/m)², max |δ|, Σ (δ/m)²,
// the output), each reduction a tree in workgroup memory; `moved` is recomputed rather than
// stored. 2-D dispatch over examples.

struct Params {
    n_ex: u32,
    d: u32,
    use_g: u32,
    _pad: u32,
    alpha: f32,
    eps: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> x0: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const F32_MAX: f32 = 3.4028235e38;
var<workgroup> partial: array<f32, 256>;

// Sum (op 0) or maximum (op 1) of v over the workgroup, in a fixed order.
fn tree(lid: u32, v: f32, op: u32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let o = partial[lid + s];
            if (op == 0u) {
                partial[lid] += o;
            } else {
                partial[lid] = max(partial[lid], o);
            }
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// The norm m·sqrt(s) of a row with largest magnitude m and Σ (v/m)² = s; m itself when m is 0,
// infinite or NaN.
fn robust_norm(m: f32, s: f32) -> f32 {
    return select(m, m * sqrt(s), m > 0.0 && m <= F32_MAX);
}

fn inv_or_zero(m: f32) -> f32 {
    return select(0.0, 1.0 / m, m > 0.0 && m <= F32_MAX);
}

fn moved_at(i: u32, gscale: f32) -> f32 {
    var v = x[i];
    if (p.use_g != 0u) {
        v = v + g[i] * gscale;
    }
    return v;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = wid.x + wid.y * nwg.x;
    let live = e < p.n_ex;
    let row = e * p.d;
    var gscale = 0.0;
    if (p.use_g != 0u) {
        var mx = 0.0;
        if (live) {
            for (var j = lid; j < p.d; j += WG) {
                mx = max(mx, abs(g[row + j]));
            }
        }
        let gm = tree(lid, mx, 1u);
        let inv = inv_or_zero(gm);
        var acc = 0.0;
        if (live) {
            for (var j = lid; j < p.d; j += WG) {
                let t = g[row + j] * inv;
                acc += t * t;
            }
        }
        let gnorm = robust_norm(gm, tree(lid, acc, 0u));
        if (gnorm > 0.0) {
            gscale = p.alpha / gnorm;
        }
    }
    var mx = 0.0;
    if (live) {
        for (var j = lid; j < p.d; j += WG) {
            mx = max(mx, abs(moved_at(row + j, gscale) - x0[row + j]));
        }
    }
    let dm = tree(lid, mx, 1u);
    let inv = inv_or_zero(dm);
    var acc = 0.0;
    if (live) {
        for (var j = lid; j < p.d; j += WG) {
            let t = (moved_at(row + j, gscale) - x0[row + j]) * inv;
            acc += t * t;
        }
    }
    let dnorm = robust_norm(dm, tree(lid, acc, 0u));
    var dscale = 1.0;
    if (dnorm > p.eps) {
        dscale = p.eps / dnorm * (1.0 - 1e-6);
    }
    if (live) {
        for (var j = lid; j < p.d; j += WG) {
            let o = x0[row + j];
            var v = o + (moved_at(row + j, gscale) - o) * dscale;
            v = select(0.0, v, v > 0.0);
            v = select(1.0, v, v < 1.0);
            out[row + j] = v;
        }
    }
}
