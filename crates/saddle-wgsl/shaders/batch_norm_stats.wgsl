// batch_norm_stats: per-channel batch mean and biased variance of x [n, c, s] (s = h·w, or 1
// for [n, c]) over the n·s elements of each channel, in two passes (mean, then the mean
// squared deviation, which avoids the cancellation of E[x²] − E[x]²).
// One workgroup per channel: 256 threads stride over the channel's elements and combine their
// partial sums in a tree in workgroup memory. 2-D dispatch over channels.

struct Params {
    n: u32,
    c: u32,
    s: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> var_out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn tree_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let ch = wid.x + wid.y * nwg.x;
    let live = ch < p.c;
    let count = p.n * p.s;
    var acc = 0.0;
    if (live) {
        for (var r = lid; r < count; r += WG) {
            acc += x[((r / p.s) * p.c + ch) * p.s + r % p.s];
        }
    }
    let mu = tree_sum(lid, acc) / f32(count);
    var acc2 = 0.0;
    if (live) {
        for (var r = lid; r < count; r += WG) {
            let d = x[((r / p.s) * p.c + ch) * p.s + r % p.s] - mu;
            acc2 += d * d;
        }
    }
    let v = tree_sum(lid, acc2) / f32(count);
    if (live && lid == 0u) {
        mean[ch] = mu;
        var_out[ch] = v;
    }
}
