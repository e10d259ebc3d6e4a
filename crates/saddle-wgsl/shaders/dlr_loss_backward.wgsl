// dlr_loss_backward: the gradient of dlr_loss (see dlr_loss.wgsl) with respect to the logits,
// rows scaled by gy [n], with the order π held fixed. With u = z_y − z_o (o the target, or the
// largest other class) and D the denominator, ∂(−u/D) = −∂u/D + u·∂D/D²:
//   −1/D at y, +1/D at o, +u/D² at π1, −u/D² at π3 (untargeted) or −u/(2D²) at π3 and π4.
// One thread per row. An invalid label or target sets bit 5 of `status` and gives a row of NaN.

//! include prelude_dlr.wgsl

@group(0) @binding(4) var<storage, read> gy: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> status: atomic<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let row = i * p.k;
    let yf = labels[i];
    var tf = 0.0;
    if (p.targeted != 0u) {
        tf = targets[i];
    }
    if (!is_class(yf) || !is_class(tf)) {
        atomicOr(&status, 32u);
        for (var j = 0u; j < p.k; j += 1u) {
            out[row + j] = bitcast<f32>(0x7fc00000u);
        }
        return;
    }
    let y = u32(yf);
    let d = dlr_row(row, y, tf);
    let top = d.top;
    let other = d.other;
    let denom = d.denom;
    var w = 1.0;
    if (p.targeted != 0u) {
        w = 0.5;
    }
    let u = z[row + y] - z[row + other];
    let inv = 1.0 / denom;
    let uq = u / (denom * denom);
    let g = gy[i];
    for (var j = 0u; j < p.k; j += 1u) {
        var v = 0.0;
        if (j == y) {
            v -= inv;
        }
        if (j == other) {
            v += inv;
        }
        if (j == top[0]) {
            v += uq;
        }
        if (j == top[2]) {
            v -= w * uq;
        }
        if (p.targeted != 0u && j == top[3]) {
            v -= w * uq;
        }
        out[row + j] = g * v;
    }
}
