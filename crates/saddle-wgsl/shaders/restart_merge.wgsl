// restart_merge: one restart of a multi-restart attack merged into the best so far, per example
// (Backend::restart_merge). best [3, n] holds per example the objective (row 0), the predicted
// class (row 1, as f32) and success (row 2, 1 or 0); the candidate gives logits z [n, k ≥ 1], its
// loss [n] and labels [n]. The candidate's objective is −loss if targeted (a flip of the sign
// bit), else loss; its prediction the first index of the row's largest logit (a NaN loses to any
// number; a row of NaN gives 0); success (prediction == label) == targeted. It is taken when
// there is no best yet (bit 0 of flags clear), when it succeeds and the best does not, or when
// both agree on success and its objective is strictly higher. Writes take [n] (1 or 0) and the
// new best [3, n]; values are moved as u32, so their bits are unchanged. One thread per example.

struct Params {
    n: u32,
    k: u32,
    // bit 0: `best` holds a best so far (else it is any buffer, not read); bit 1: targeted.
    flags: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> best: array<u32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> loss: array<u32>;
@group(0) @binding(4) var<storage, read> labels: array<f32>;
@group(0) @binding(5) var<storage, read_write> take: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

// NaN by its bits, which no compiler folds away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let targeted = (p.flags & 2u) != 0u;
    let row = i * p.k;
    var arg = 0u;
    var m = z[row];
    for (var j = 1u; j < p.k; j += 1u) {
        let v = z[row + j];
        if (v > m || (is_nan(m) && !is_nan(v))) {
            arg = j;
            m = v;
        }
    }
    let pred = f32(arg);
    let success = (pred == labels[i]) == targeted;
    let obj_bits = select(loss[i], loss[i] ^ 0x80000000u, targeted);
    let objective = bitcast<f32>(obj_bits);
    var taken = true;
    if ((p.flags & 1u) != 0u) {
        let best_success = bitcast<f32>(best[2u * p.n + i]) != 0.0;
        let best_objective = bitcast<f32>(best[i]);
        taken = (success && !best_success)
            || (success == best_success && objective > best_objective);
    }
    take[i] = select(0.0, 1.0, taken);
    if (taken) {
        out[i] = obj_bits;
        out[p.n + i] = bitcast<u32>(pred);
        out[2u * p.n + i] = bitcast<u32>(select(0.0, 1.0, success));
    } else {
        out[i] = best[i];
        out[p.n + i] = best[p.n + i];
        out[2u * p.n + i] = best[2u * p.n + i];
    }
}
