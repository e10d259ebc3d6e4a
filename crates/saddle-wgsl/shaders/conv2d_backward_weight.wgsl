// conv2d_backward_weight: gw[m, ci, ki, kj] = Σ_{img, oy, ox} gy[img, m, oy, ox] ·
//         x[img, ci, oy·stride + ki − pad, ox·stride + kj − pad]   (zero outside x)
//
// An implicit GEMM: rows are output channels m (M = k), columns are weight taps
// q = (ci, ki, kj) (N = c·kh·kw), the inner index r = (img, oy, ox) runs over every output
// position (K = n·oh·ow). A[m, r] is read from gy, B[r, q] gathered from x. Tiling as in
// matmul.wgsl (64×64 tiles, steps of 16, four vec4 accumulators per thread, rows past the edge
// skipped); the digits (img, oy, ox) of the inner indices a thread stages are carried forward by
// additions instead of divisions inside the loop. K is long and M·N small, so the host splits K:
// workgroup z covers r in [z·k_chunk, (z+1)·k_chunk) and writes slab z of `out` (slab size
// k·c·kh·kw); the host sums the slabs when there is more than one.

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
    k_chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

//! include prelude_gemm.wgsl

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m_rows = p.k;
    let khw = p.kh * p.kw;
    let n_cols = p.c * khw;
    let ohw = p.oh * p.ow;
    let kdim = p.n * ohw;
    let row0 = wid.y * TM;
    let live_rows = m_rows - row0;
    let col0 = wid.x * TN;
    let k_begin = wid.z * p.k_chunk;
    let k_end = min(kdim, k_begin + p.k_chunk);

    // The column of B this thread stages: weight tap (ci, ki, kj).
    let my_col = col0 + li % TN;
    let col_ok = my_col < n_cols;
    let ci = my_col / khw;
    let q = my_col % khw;
    let ki = i32(q / p.kw) - i32(p.pad);
    let kj = i32(q % p.kw) - i32(p.pad);
    // Inner indices staged next, as digits (img, oy, ox): A at ra (+16 per step), B at rb
    // (+4 per load).
    var ra = k_begin + li % TK;
    var da = digits(ra, p.oh, p.ow);
    let step_a = digits(TK, p.oh, p.ow);
    var rb = k_begin + li / TN;
    var db = digits(rb, p.oh, p.ow);
    let step_b = digits(4u, p.oh, p.ow);

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        // A[m, r] = gy[img, m, oy, ox] with r = da.
        let ga = (da.x * p.k) * ohw + da.y * p.ow + da.z;
        for (var e = 0u; e < 4u; e += 1u) {
            let idx = li + e * 256u;
            let m = row0 + idx / TK;
            var va = 0.0;
            if (m < m_rows && ra < k_end) {
                va = gy[ga + m * ohw];
            }
            tile_a[(idx % TK) * TM + idx / TK] = va;
            // B[r, q] = x[img, ci, oy·s + ki − pad, ox·s + kj − pad] with r = db.
            var vb = 0.0;
            if (col_ok && rb < k_end) {
                let iy = i32(db.y * p.stride) + ki;
                let ix = i32(db.z * p.stride) + kj;
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    vb = x[((db.x * p.c + ci) * p.h + u32(iy)) * p.w + u32(ix)];
                }
            }
            tile_b[idx] = vb;
            rb += 4u;
            db = advance(db, step_b, p.oh, p.ow);
        }
        ra += TK;
        da = advance(da, step_a, p.oh, p.ow);
        workgroupBarrier();
        gemm_accumulate(lid.y, lid.x, live_rows, &acc0, &acc1, &acc2, &acc3);
        workgroupBarrier();
    }
    let slab = wid.z * m_rows * n_cols;
    let r0 = row0 + lid.y;
    let c0 = col0 + lid.x;
    store_row(slab, r0, c0, acc0);
    store_row(slab, r0 + 16u, c0, acc1);
    store_row(slab, r0 + 32u, c0, acc2);
    store_row(slab, r0 + 48u, c0, acc3);
}

// Writes v to row m of the slab at columns col, col + 16, col + 32, col + 48.
fn store_row(slab: u32, m: u32, col: u32, v: vec4<f32>) {
    let n_cols = p.c * p.kh * p.kw;
    if (m >= p.k) {
        return;
    }
    for (var j = 0u; j < 4u; j += 1u) {
        let cj = col + 16u * j;
        if (cj < n_cols) {
            out[slab + m * n_cols + cj] = v[j];
        }
    }
}
