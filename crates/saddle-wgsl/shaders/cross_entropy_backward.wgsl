// cross_entropy_backward: out[i, j] = gy[i] · (softmax(z_i)[j] − [j = y_i]) for logits z [n, k],
// labels y [n] (class indices as f32) and per-row output gradients gy [n].
// One thread per row. An invalid label sets bit 1 of `status` and gives a row of NaN (see
// cross_entropy.wgsl).

struct Params {
    n: u32,
    k: u32,
    _pad0: u32,
    _pad1: u32,
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
        atomicOr(&status, 2u);
        for (var j = 0u; j < p.k; j += 1u) {
            out[row + j] = bitcast<f32>(0x7fc00000u);
        }
        return;
    }
    let y = u32(yf);
    var m = z[row];
    for (var j = 1u; j < p.k; j += 1u) {
        m = max(m, z[row + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.k; j += 1u) {
        s += exp(z[row + j] - m);
    }
    let g = gy[i];
    for (var j = 0u; j < p.k; j += 1u) {
        var v = exp(z[row + j] - m) / s * g;
        if (j == y) {
            v -= g;
        }
        out[row + j] = v;
    }
}
