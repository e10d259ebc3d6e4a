// max_pool2d_backward: each window's gradient gy[plane, oi, oj] goes to the first position (in
// row-major order) holding the window's maximum; the other positions of the window get 0.
// Windows do not overlap (stride = size), so one thread per window writes its whole window
// without races; rows and columns outside every window are zeroed by the host beforehand.
// 2-D dispatch.

struct Params {
    total: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    size: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) {
        return;
    }
    let ohw = p.oh * p.ow;
    let plane = i / ohw;
    let oi = (i % ohw) / p.ow;
    let oj = i % p.ow;
    let base = plane * p.h * p.w + (oi * p.size) * p.w + oj * p.size;
    var best = base;
    var m = x[base];
    for (var di = 0u; di < p.size; di += 1u) {
        for (var dj = 0u; dj < p.size; dj += 1u) {
            let idx = base + di * p.w + dj;
            let v = x[idx];
            if (v > m) {
                m = v;
                best = idx;
            }
        }
    }
    let g = gy[i];
    for (var di = 0u; di < p.size; di += 1u) {
        for (var dj = 0u; dj < p.size; dj += 1u) {
            let idx = base + di * p.w + dj;
            gx[idx] = select(0.0, g, idx == best);
        }
    }
}
