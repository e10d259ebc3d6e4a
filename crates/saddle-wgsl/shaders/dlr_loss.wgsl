// dlr_loss: the DLR loss of Croce & Hein (2020) per row of logits z [n, k] with labels y [n]
// (class indices as f32), π the classes by decreasing logit (ties: the lower index first):
//   untargeted (targeted = 0, k ≥ 3): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
//   targeted (targets t [n], k ≥ 4):  −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)
// One thread per row, keeping the row's four largest logits by insertion. An invalid label or
// target sets bit 4 of `status` and gives NaN (see cross_entropy.wgsl).

//! include prelude_dlr.wgsl

@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: atomic<u32>;

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
    let d = dlr_row(row, y, tf);
    out[i] = -(z[row + y] - z[row + d.other]) / d.denom;
}
