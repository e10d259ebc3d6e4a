// batch_norm_apply: y = (x − mean[ch]) · inv · gamma[ch] + beta[ch] with
// inv = 1 / sqrt(var[ch] + eps), for x [n, c, s]; the forward pass of batch norm in training
// mode (with the batch statistics) and in evaluation mode (with running statistics).
// One thread per element; 2-D dispatch.

struct Params {
    total: u32,
    c: u32,
    s: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> var_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.s) % p.c;
    let inv = 1.0 / sqrt(var_in[ch] + p.eps);
    y[i] = (x[i] - mean[ch]) * inv * gamma[ch] + beta[ch];
}
