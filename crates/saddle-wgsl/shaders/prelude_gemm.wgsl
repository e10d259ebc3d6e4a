// prelude_gemm: the tiled GEMM core shared by matmul.wgsl, conv2d.wgsl,
// conv2d_backward_input.wgsl and conv2d_backward_weight.wgsl (each includes it with the line
// `//! include prelude_gemm.wgsl`, resolved by the kernel loader in src/kernels.rs).
//
// A workgroup of 16×16 threads computes a 64×64 tile of the output; the inner dimension is
// walked in steps of 16, staging a 16×64 slice of each operand in workgroup memory
// (`tile_a[kk·TM + row]`, `tile_b[kk·TN + col]`), from which each thread accumulates a 4×4
// register block (rows ty + 16·i, columns tx + 16·j) in four vec4 accumulators (no dynamically
// indexed arrays, which compilers spill to memory).

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [TK][TM]
var<workgroup> tile_b: array<f32, 1024>; // [TK][TN]

// Accumulates the staged slices into the thread's block: row i of the block in acc_i, column j
// in component j. Rows past the edge of the output (`live_rows`, the output rows left from the
// tile's first row) are skipped with a workgroup-uniform branch, so a skinny product does not
// pay for the empty rows of its tile. Call between the two barriers of each step.
fn gemm_accumulate(
    ty: u32,
    tx: u32,
    live_rows: u32,
    acc0: ptr<function, vec4<f32>>,
    acc1: ptr<function, vec4<f32>>,
    acc2: ptr<function, vec4<f32>>,
    acc3: ptr<function, vec4<f32>>,
) {
    for (var kk = 0u; kk < TK; kk += 1u) {
        let ia = kk * TM + ty;
        let ib = kk * TN + tx;
        let fb = vec4<f32>(tile_b[ib], tile_b[ib + 16u], tile_b[ib + 32u], tile_b[ib + 48u]);
        *acc0 += tile_a[ia] * fb;
        if (live_rows > 16u) {
            *acc1 += tile_a[ia + 16u] * fb;
        }
        if (live_rows > 32u) {
            *acc2 += tile_a[ia + 32u] * fb;
        }
        if (live_rows > 48u) {
            *acc3 += tile_a[ia + 48u] * fb;
        }
    }
}

// Mixed-radix counter (hi, mid, lo) with radices (·, r1, r0), advanced by d (d.y < r1, d.z < r0):
// the implicit GEMMs carry the digits of the inner indices they stage forward by additions
// instead of divisions inside the loop.
fn advance(c: vec3<u32>, d: vec3<u32>, r1: u32, r0: u32) -> vec3<u32> {
    var lo = c.z + d.z;
    var mid = c.y + d.y;
    var hi = c.x + d.x;
    if (lo >= r0) {
        lo -= r0;
        mid += 1u;
    }
    if (mid >= r1) {
        mid -= r1;
        hi += 1u;
    }
    return vec3<u32>(hi, mid, lo);
}

// The digits (hi, mid, lo) of r with radices (·, r1, r0).
fn digits(r: u32, r1: u32, r0: u32) -> vec3<u32> {
    return vec3<u32>(r / (r1 * r0), (r / r0) % r1, r % r0);
}
