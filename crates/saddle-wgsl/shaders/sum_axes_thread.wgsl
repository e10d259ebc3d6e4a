// sum_axes_thread: out[o] = Σ_r x[base(o) + offset(r)], one thread per output element, summing
// in order. For short reductions over many outputs (a linear layer's bias gradient, the partial
// products of a split-K GEMM), where a workgroup per output would leave most threads idle;
// neighbouring threads read neighbouring addresses when the kept axes are innermost.
//
// `table` is laid out as in sum_axes.wgsl. One thread per output; 2-D dispatch.

struct Params {
    n_out: u32,
    red: u32,
    rank_out: u32,
    rank_red: u32,
    table: array<vec4<u32>, 8>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn table_at(i: u32) -> u32 {
    return p.table[i / 4u][i % 4u];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 256u;
    if (o >= p.n_out) {
        return;
    }
    var base = 0u;
    var rest = o;
    for (var t = 0u; t < p.rank_out; t += 1u) {
        let d = p.rank_out - 1u - t;
        let dim = table_at(d);
        base += (rest % dim) * table_at(p.rank_out + d);
        rest = rest / dim;
    }
    let r0 = 2u * p.rank_out;
    var acc = 0.0;
    for (var r = 0u; r < p.red; r += 1u) {
        var off = base;
        var rr = r;
        for (var t = 0u; t < p.rank_red; t += 1u) {
            let d = p.rank_red - 1u - t;
            let dim = table_at(r0 + d);
            off += (rr % dim) * table_at(r0 + p.rank_red + d);
            rr = rr / dim;
        }
        acc += x[off];
    }
    out[o] = acc;
}
