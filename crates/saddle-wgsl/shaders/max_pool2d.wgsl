// max_pool2d: y[plane, oi, oj] = max over the size×size window at (oi·size, oj·size) of x,
// for planes = n·c of h×w; a trailing partial window is dropped. A NaN in the window gives NaN.
// One thread per output element; 2-D dispatch.

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
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

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
    var m = x[base];
    for (var di = 0u; di < p.size; di += 1u) {
        for (var dj = 0u; dj < p.size; dj += 1u) {
            let v = x[base + di * p.w + dj];
            if (v > m || v != v) {
                m = v;
            }
        }
    }
    y[i] = m;
}
