// cw_loss: out[i] = −max(z_i[y_i] − max_{j≠y_i} z_i[j] + κ, 0), the CW margin loss of MadryLab's
// mnist_challenge, for logits z [n, k ≥ 2] and labels y [n] (class indices as f32).
// One thread per row. An invalid label sets bit 2 of `status` and gives NaN (see
// cross_entropy.wgsl).

struct Params {
    n: u32,
    k: u32,
    kappa: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> status: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let yf = labels[i];
    if (!(yf >= 0.0 && yf < f32(p.k) && floor(yf) == yf)) {
        atomicOr(&status, 4u);
        out[i] = bitcast<f32>(0x7fc00000u);
        return;
    }
    let y = u32(yf);
    let row = i * p.k;
    var found = false;
    var wrong = 0.0;
    for (var j = 0u; j < p.k; j += 1u) {
        let v = z[row + j];
        if (j != y && (!found || v > wrong)) {
            wrong = v;
            found = true;
        }
    }
    out[i] = -max(z[row + y] - wrong + p.kappa, 0.0);
}
