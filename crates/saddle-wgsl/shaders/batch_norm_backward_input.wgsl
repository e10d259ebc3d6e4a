// batch_norm_backward_input: the input gradient of batch norm in training mode,
//   gx = gamma · inv / cnt · (cnt · gy − gbeta − x̂ · ggamma),  x̂ = (x − mean) · inv,
//   inv = 1 / sqrt(var + eps), cnt = n·s,
// with gbeta and ggamma from batch_norm_backward_reduce. One thread per element; 2-D dispatch.

struct Params {
    total: u32,
    c: u32,
    s: u32,
    eps: f32,
    cnt: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> var_in: array<f32>;
@group(0) @binding(6) var<storage, read> ggamma: array<f32>;
@group(0) @binding(7) var<storage, read> gbeta: array<f32>;
@group(0) @binding(8) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.s) % p.c;
    let inv = 1.0 / sqrt(var_in[ch] + p.eps);
    let k = gamma[ch] * inv / p.cnt;
    let xhat = (x[i] - mean[ch]) * inv;
    gx[i] = k * (p.cnt * gy[i] - gbeta[ch] - xhat * ggamma[ch]);
}
