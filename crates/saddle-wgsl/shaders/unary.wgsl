// unary: out[i] = f(x[i]) for the element-wise ops of one input.
//   op 0 affine      s·x + t
//   op 1 sqrt        sqrt(x)
//   op 2 sign        −1, 0 or +1 (0 keeps its sign bit, NaN stays NaN)
//   op 3 clamp       x clamped to [s, t] (NaN becomes s, as Rust's f32::max then f32::min)
//   op 4 relu        x where x > 0, else 0
//   op 5 leaky_relu  x where x > 0, else s·x
// One thread per element; 2-D dispatch.

struct Params {
    n: u32,
    op: u32,
    s: f32,
    t: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    var r: f32;
    switch p.op {
        case 0u: {
            r = p.s * v + p.t;
        }
        case 1u: {
            r = sqrt(v);
        }
        case 2u: {
            // ±0 and NaN pass through unchanged (no arithmetic a compiler could fold).
            r = select(select(v, -1.0, v < 0.0), 1.0, v > 0.0);
        }
        case 3u: {
            let m = select(p.s, v, v > p.s);
            r = select(p.t, m, m < p.t);
        }
        case 4u: {
            r = select(0.0, v, v > 0.0);
        }
        default: {
            r = select(p.s * v, v, v > 0.0);
        }
    }
    out[i] = r;
}
