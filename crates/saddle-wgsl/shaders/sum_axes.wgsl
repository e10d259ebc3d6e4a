// sum_axes: out[o] = Σ_r x[base(o) + offset(r)], one workgroup per output element.
// For long reductions (a bias gradient over a batch of feature maps, a sum over everything):
// the 256 threads of the workgroup stride over the reduced elements, then combine their
// partial sums in a tree in workgroup memory (a fixed order, so results are deterministic).
//
// `table` holds, `rank_out` entries each, the dims of the kept axes and their strides in x,
// then, `rank_red` entries each, the dims of the reduced axes and their strides in x
// (adjacent axes are merged on the host). Outputs are numbered over a 2-D dispatch.

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

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn table_at(i: u32) -> u32 {
    return p.table[i / 4u][i % 4u];
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = wid.x + wid.y * nwg.x;
    let live = o < p.n_out;
    var acc = 0.0;
    if (live) {
        var base = 0u;
        var rest = o;
        for (var t = 0u; t < p.rank_out; t += 1u) {
            let d = p.rank_out - 1u - t;
            let dim = table_at(d);
            base += (rest % dim) * table_at(p.rank_out + d);
            rest = rest / dim;
        }
        let r0 = 2u * p.rank_out;
        for (var r = lid; r < p.red; r += WG) {
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
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        out[o] = partial[0];
    }
}
