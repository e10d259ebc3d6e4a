// prelude_dlr: what dlr_loss.wgsl and dlr_loss_backward.wgsl share (each includes it with the
// line `//! include prelude_dlr.wgsl`, resolved by the kernel loader in src/kernels.rs): the
// parameters, the first three bindings, the label check and the top-4 of a row of logits.

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

fn is_class(v: f32) -> bool {
    return v >= 0.0 && v < f32(p.k) && floor(v) == v;
}

// The terms of the DLR loss of the row of logits starting at z[row], label y, target tf (read
// only when targeted): the classes of the four largest logits (largest first), the class o
// compared with y (the target, or the largest other class) and the denominator D.
struct DlrRow {
    top: array<u32, 4>,
    other: u32,
    denom: f32,
}

fn dlr_row(row: u32, y: u32, tf: f32) -> DlrRow {
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
    return DlrRow(top, other, denom);
}
