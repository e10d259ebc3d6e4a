// cross_entropy: out[i] = logsumexp(z_i) − z_i[y_i] for logits z [n, k] and labels y [n]
// holding class indices as f32. One thread per row (k is small: 10 classes here).
//
// Labels are checked on the device: a label that is not a whole number in 0..k sets bit 0 of
// `status` and gives NaN; the host reports it as an error at its next read-back (labels that
// came from the host are checked there before any kernel runs).

struct Params {
    n: u32,
    k: u32,
    _pad0: u32,
    _pad1: u32,
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
        atomicOr(&status, 1u);
        out[i] = bitcast<f32>(0x7fc00000u);
        return;
    }
    let y = u32(yf);
    let row = i * p.k;
    var m = z[row];
    for (var j = 1u; j < p.k; j += 1u) {
        m = max(m, z[row + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.k; j += 1u) {
        s += exp(z[row + j] - m);
    }
    out[i] = m + log(s) - z[row + y];
}
