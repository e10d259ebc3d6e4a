// cw_loss_backward: the gradient of cw_loss with respect to the logits, rows scaled by gy [n]:
// where the margin z_y − max_{j≠y} z_j + κ is positive, −gy_i at the label and +gy_i at the
// first largest other logit; zero elsewhere. One thread per row. An invalid label sets bit 3
// of `status` and gives a row of NaN (see cross_entropy.wgsl).

struct Params {
    n: u32,
    k: u32,
    kappa: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> gy: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let row = i * p.k;
    let yf = labels[i];
    if (!(yf >= 0.0 && yf < f32(p.k) && floor(yf) == yf)) {
        atomicOr(&status, 8u);
        for (var j = 0u; j < p.k; j += 1u) {
            out[row + j] = bitcast<f32>(0x7fc00000u);
        }
        return;
    }
    let y = u32(yf);
    var found = false;
    var best = 0u;
    var wrong = 0.0;
    for (var j = 0u; j < p.k; j += 1u) {
        let v = z[row + j];
        if (j != y && (!found || v > wrong)) {
            wrong = v;
            best = j;
            found = true;
        }
    }
    let margin_on = z[row + y] - wrong + p.kappa > 0.0;
    let g = gy[i];
    for (var j = 0u; j < p.k; j += 1u) {
        var v = 0.0;
        if (margin_on && j == y) {
            v = -g;
        } else if (margin_on && j == best) {
            v = g;
        }
        out[row + j] = v;
    }
}
