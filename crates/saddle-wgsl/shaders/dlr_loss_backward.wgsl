// dlr_loss_backward: the gradient of dlr_loss (see dlr_loss.wgsl) with respect to the logits,
// rows scaled by gy [n], with the order π held fixed. With u = z_y − z_o (o the target, or the
// largest other class) and D the denominator, ∂(−u/D) = −∂u/D + u·∂D/D²:
//   −1/D at y, +1/D at o, +u/D² at π1, −u/D² at π3 (untargeted) or −u/(2D²) at π3 and π4.
// One thread per row. An invalid label or target sets bit 5 of `status` and gives a row of NaN.

struct Params {
    n: u32,
    k: u32,
    targeted: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<f32>;
@group(0) @binding(4) var<storage, read> gy: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> status: atomic<u32>;

fn is_class(v: f32) -> bool {
    return v >= 0.0 && v < f32(p.k) && floor(v) == v;
}

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
    var top = array<u32, 4>(0u, 0u, 0u, 0u);
    var cnt = 0u;
    for (var j = 0u; j < p.k; j += 1u) {
        let v = z[row + j];
        var pos = cnt;
        for (var q = 0u; q < cnt; q += 1u) {
            if (v > z[row + top[q]]) {
                pos = q;
                break;
            }
        }
        if (pos < 4u) {
            var q = min(cnt, 3u);
            while (q > pos) {
                top[q] = top[q - 1u];
                q -= 1u;
            }
            top[pos] = j;
            cnt = min(cnt + 1u, 4u);
        }
    }
    var other = top[0];
    var denom = 0.0;
    var w = 1.0;
    if (p.targeted != 0u) {
        other = u32(tf);
        denom = z[row + top[0]] - 0.5 * (z[row + top[2]] + z[row + top[3]]) + 1e-12;
        w = 0.5;
    } else {
        if (top[0] == y) {
            other = top[1];
        }
        denom = z[row + top[0]] - z[row + top[2]] + 1e-12;
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
