// binary: out = a ∘ b with NumPy broadcasting.
//   op 0 add, 1 sub, 2 mul, 3 div, 4 minimum, 5 maximum
// With rank 0 both inputs have the output's shape and are read at the same index. Otherwise
// `table` holds the (collapsed) output dims, then a's strides, then b's strides (stride 0 on a
// broadcast axis), `rank` entries each; each thread turns its output index into two offsets.
// One thread per output element; 2-D dispatch.

struct Params {
    n: u32,
    op: u32,
    rank: u32,
    _pad: u32,
    table: array<vec4<u32>, 8>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn table_at(i: u32) -> u32 {
    return p.table[i / 4u][i % 4u];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    var ia = i;
    var ib = i;
    if (p.rank > 0u) {
        ia = 0u;
        ib = 0u;
        var rest = i;
        for (var t = 0u; t < p.rank; t += 1u) {
            let d = p.rank - 1u - t;
            let dim = table_at(d);
            let coord = rest % dim;
            rest = rest / dim;
            ia += coord * table_at(p.rank + d);
            ib += coord * table_at(2u * p.rank + d);
        }
    }
    let u = a[ia];
    let v = b[ib];
    var r: f32;
    switch p.op {
        case 0u: {
            r = u + v;
        }
        case 1u: {
            r = u - v;
        }
        case 2u: {
            r = u * v;
        }
        case 3u: {
            r = u / v;
        }
        case 4u: {
            r = min(u, v);
        }
        default: {
            r = max(u, v);
        }
    }
    out[i] = r;
}
