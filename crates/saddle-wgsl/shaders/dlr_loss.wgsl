// dlr_loss: the DLR loss of Croce & Hein (2020) per row of logits z [n, k] with labels y [n]
// (class indices as f32), π the classes by decreasing logit (ties: the lower index first):
//   untargeted (targeted = 0, k ≥ 3): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
//   targeted (targets t [n], k ≥ 4):  −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)
// One thread per row, keeping the row's four largest logits by insertion. An invalid label or
// target sets bit 4 of `status` and gives NaN (see cross_entropy.wgsl).

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
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: atomic<u32>;

fn is_class(v: f32) -> bool {
    return v >= 0.0 && v < f32(p.k) && floor(v) == v;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let yf = labels[i];
    var tf = 0.0;
    if (p.targeted != 0u) {
        tf = targets[i];
    }
    if (!is_class(yf) || !is_class(tf)) {
        atomicOr(&status, 16u);
        out[i] = bitcast<f32>(0x7fc00000u);
        return;
    }
    let y = u32(yf);
    let row = i * p.k;
    // top[0..4]: the classes of the four largest logits, largest first; a later class enters
    // only above a strictly smaller logit, so ties keep the lower index first.
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
    if (p.targeted != 0u) {
        other = u32(tf);
        denom = z[row + top[0]] - 0.5 * (z[row + top[2]] + z[row + top[3]]) + 1e-12;
    } else {
        if (top[0] == y) {
            other = top[1];
        }
        denom = z[row + top[0]] - z[row + top[2]] + 1e-12;
    }
    out[i] = -(z[row + y] - z[row + other]) / denom;
}
