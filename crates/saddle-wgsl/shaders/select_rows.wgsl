// select_rows: row i of a where mask[i] ≠ 0, else row i of b, for a, b [n, …] (d elements per
// row) and mask [n]. The rows are read and written as u32, so their bits (NaN payloads, signed
// zeros) are copied unchanged. One thread per element; 2-D dispatch.

struct Params {
    total: u32,
    d: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) {
        return;
    }
    out[i] = select(b[i], a[i], mask[i / p.d] != 0.0);
}
