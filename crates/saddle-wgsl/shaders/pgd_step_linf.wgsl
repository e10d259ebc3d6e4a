// pgd_step_linf: one fused L∞ PGD step,
//   out = clip_[0,1]( clip_[x0−ε, x0+ε]( x + α·sign(g) ) ),
// sign(0) = 0. With use_g = 0 the step is skipped and the kernel is the projection onto the
// ε-ball and [0, 1] alone (project_linf). One thread per element; 2-D dispatch.

struct Params {
    n: u32,
    use_g: u32,
    alpha: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> x0: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    var v = x[i];
    if (p.use_g != 0u) {
        let gv = g[i];
        v += select(select(0.0, -p.alpha, gv < 0.0), p.alpha, gv > 0.0);
    }
    let o = x0[i];
    // max then min as Rust's f32::max / f32::min: a NaN operand yields the other one.
    let lo = o - p.eps;
    let hi = o + p.eps;
    v = select(lo, v, v > lo);
    v = select(hi, v, v < hi);
    v = select(0.0, v, v > 0.0);
    v = select(1.0, v, v < 1.0);
    out[i] = v;
}
