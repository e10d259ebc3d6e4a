// matmul: C = op(A) · op(B) for row-major 2-D tensors, op transposing when asked;
// op(A) is m×k, op(B) is k×n, C is m×n.
//
// Tiling (see the crate docs): a workgroup of 16×16 threads computes a 64×64 tile of C. For each
// step of 16 along k it stages a 16×64 slice of op(A) and a 16×64 slice of op(B) in workgroup
// memory (8 KiB; each thread loads 4 elements of each, zero outside the matrices), then every
// thread accumulates a 4×4 block of outputs, rows ty + 16·i and columns tx + 16·j, in four
// vec4 registers (no dynamically indexed arrays, which compilers spill to memory). Row blocks
// entirely past the bottom edge of C are skipped with a workgroup-uniform branch, so a skinny
// product (a batch of 16) does not pay for the empty rows of its tile. The loads are laid out so
// that neighbouring threads read neighbouring addresses of A and B whichever operand is
// transposed.
//
// Split-K: workgroup z handles k in [z·k_chunk, min(k, (z+1)·k_chunk)) and writes its partial
// product to the slab z of `c` (slab size m·n); the host sums the slabs (sum_axes_thread) when
// there is more than one. With one split, `c` is the result.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    k_chunk: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

//! include prelude_gemm.wgsl

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wid.y * TM;
    let live_rows = p.m - row0;
    let col0 = wid.x * TN;
    let k_begin = wid.z * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    // Row i of the thread's 4×4 block in acc_i, column j in component j (registers).
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        for (var e = 0u; e < 4u; e += 1u) {
            let idx = li + e * 256u;
            // Element (ka, ma) of the A slice: k fastest when A is row-major along k.
            var ka = idx / TM;
            var ma = idx % TM;
            if (p.trans_a == 0u) {
                ka = idx % TK;
                ma = idx / TK;
            }
            let ga = row0 + ma;
            let gka = k0 + ka;
            var va = 0.0;
            if (ga < p.m && gka < k_end) {
                if (p.trans_a == 0u) {
                    va = a[ga * p.k + gka];
                } else {
                    va = a[gka * p.m + ga];
                }
            }
            tile_a[ka * TM + ma] = va;
            // Element (kb, nb) of the B slice: n fastest unless B is transposed.
            var kb = idx / TN;
            var nb = idx % TN;
            if (p.trans_b != 0u) {
                kb = idx % TK;
                nb = idx / TK;
            }
            let gb = col0 + nb;
            let gkb = k0 + kb;
            var vb = 0.0;
            if (gb < p.n && gkb < k_end) {
                if (p.trans_b == 0u) {
                    vb = b[gkb * p.n + gb];
                } else {
                    vb = b[gb * p.k + gkb];
                }
            }
            tile_b[kb * TN + nb] = vb;
        }
        workgroupBarrier();
        gemm_accumulate(lid.y, lid.x, live_rows, &acc0, &acc1, &acc2, &acc3);
        workgroupBarrier();
    }
    let slab = wid.z * p.m * p.n;
    let r0 = row0 + lid.y;
    let c0 = col0 + lid.x;
    store_row(slab, r0, c0, acc0);
    store_row(slab, r0 + 16u, c0, acc1);
    store_row(slab, r0 + 32u, c0, acc2);
    store_row(slab, r0 + 48u, c0, acc3);
}

// Writes the thread's outputs of row r, columns c, c + 16, c + 32, c + 48, inside C.
fn store_row(slab: u32, r: u32, col: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    let base = slab + r * p.n;
    if (col < p.n) {
        c[base + col] = v.x;
    }
    if (col + 16u < p.n) {
        c[base + col + 16u] = v.y;
    }
    if (col + 32u < p.n) {
        c[base + col + 32u] = v.z;
    }
    if (col + 48u < p.n) {
        c[base + col + 48u] = v.w;
    }
}
