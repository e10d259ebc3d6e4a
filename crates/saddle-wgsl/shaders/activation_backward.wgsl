// activation_backward: the gradient of ReLU (op 0) and leaky ReLU (op 1),
//   out[i] = gy[i] where x[i] > 0, else 0 (ReLU) or slope·gy[i] (leaky ReLU).
// One thread per element; 2-D dispatch.

struct Params {
    n: u32,
    op: u32,
    slope: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let g = gy[i];
    var neg = 0.0;
    if (p.op == 1u) {
        neg = p.slope * g;
    }
    out[i] = select(neg, g, x[i] > 0.0);
}
