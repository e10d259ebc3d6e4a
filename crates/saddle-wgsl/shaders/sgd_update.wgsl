// sgd_update: one SGD step with momentum and coupled weight decay in place, as PyTorch:
//   g ← grad + wd·p;  buf ← momentum·buf + g;  p ← p − lr·buf.
// One thread per element; 2-D dispatch.

struct Params {
    n: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let pi = param[i];
    let g = grad[i] + p.weight_decay * pi;
    let b = p.momentum * buf[i] + g;
    buf[i] = b;
    param[i] = pi - p.lr * b;
}
