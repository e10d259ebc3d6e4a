// conv2d_backward_input_direct: the input gradient of conv2d, one thread per element of gx,
//   gx[img, ci, iy, ix] = Σ_{ki, kj, m} w[m, ci, ki, kj] · gy[img, m, oy, ox]
// over the taps (ki, kj) whose output position (oy, ox) = ((iy + pad − ki)/stride,
// (ix + pad − kj)/stride) is whole and inside gy. Used when the input has few channels (the
// first layer: one channel for MNIST, three for CIFAR-10), where a 64-row GEMM tile would be
// mostly empty. 2-D dispatch.

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    k: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    stride: u32,
    pad: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gy: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let hw = p.h * p.w;
    if (i >= p.n * p.c * hw) {
        return;
    }
    let img = i / (p.c * hw);
    let ci = (i / hw) % p.c;
    let pix = i % hw;
    let ty0 = i32(pix / p.w) + i32(p.pad);
    let tx0 = i32(pix % p.w) + i32(p.pad);
    let s = i32(p.stride);
    let ohw = p.oh * p.ow;
    let khw = p.kh * p.kw;
    var acc = 0.0;
    for (var ki = 0u; ki < p.kh; ki += 1u) {
        let ty = ty0 - i32(ki);
        if (ty < 0 || ty % s != 0 || u32(ty / s) >= p.oh) {
            continue;
        }
        let oy = u32(ty / s);
        for (var kj = 0u; kj < p.kw; kj += 1u) {
            let tx = tx0 - i32(kj);
            if (tx < 0 || tx % s != 0 || u32(tx / s) >= p.ow) {
                continue;
            }
            let opix = oy * p.ow + u32(tx / s);
            let tap = ci * khw + ki * p.kw + kj;
            for (var m = 0u; m < p.k; m += 1u) {
                acc += wt[m * p.c * khw + tap] * gy[(img * p.k + m) * ohw + opix];
            }
        }
    }
    gx[i] = acc;
}
