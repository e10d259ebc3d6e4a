// batch_norm_backward_reduce: per channel, gbeta = Σ gy and ggamma = Σ gy · x̂ with
// x̂ = (x − mean) / sqrt(var + eps), over the n·s elements of the channel of x [n, c, s].
// One workgroup per channel with a tree reduction in workgroup memory (as batch_norm_stats).

struct Params {
    n: u32,
    c: u32,
    s: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> var_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> ggamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> gbeta: array<f32>;

const WG: u32 = 256u;
var<workgroup> part_g: array<f32, 256>;
var<workgroup> part_gx: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ch = wid.x + wid.y * nwg.x;
    let live = ch < p.c;
    let count = p.n * p.s;
    var sg = 0.0;
    var sgx = 0.0;
    if (live) {
        let mu = mean[ch];
        let inv = 1.0 / sqrt(var_in[ch] + p.eps);
        for (var r = lid; r < count; r += WG) {
            let idx = ((r / p.s) * p.c + ch) * p.s + r % p.s;
            let g = gy[idx];
            sg += g;
            sgx += g * ((x[idx] - mu) * inv);
        }
    }
    part_g[lid] = sg;
    part_gx[lid] = sgx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            part_g[lid] += part_g[lid + s];
            part_gx[lid] += part_gx[lid + s];
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        gbeta[ch] = part_g[0];
        ggamma[ch] = part_gx[0];
    }
}
