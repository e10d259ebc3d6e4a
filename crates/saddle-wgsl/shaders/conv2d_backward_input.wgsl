// conv2d_backward_input: gx[img, ci, iy, ix] = Σ_{m, ki, kj} w[m, ci, ki, kj] · gy[img, m, oy, ox]
// over the (oy, ox) with oy·stride + ki − pad = iy and ox·stride + kj − pad = ix.
//
// An implicit GEMM: rows are input channels ci (M = c), columns are input pixels
// (img, iy, ix) (N = n·h·w), the inner index r = (m, ki, kj) (K = k·kh·kw). A[ci, r] is gathered
// from the weight, B[r, col] from gy (zero where no output position maps onto the pixel).
// Tiling as in matmul.wgsl (64×64 tiles, steps of 16, a 4×4 block of vec4 accumulators per thread).
// Each thread's staged column of B is fixed, so its pixel coordinates are computed once; the inner
// indices it stages advance by constant steps, so their digits (m, ki, kj) are carried forward by
// additions instead of divisions inside the loop. For few input channels the host uses
// conv2d_backward_input_direct.wgsl instead, which wastes no tile rows.

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

//! include prelude_gemm.wgsl

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m_rows = p.c;
    let hw = p.h * p.w;
    let n_cols = p.n * hw;
    let khw = p.kh * p.kw;
    let kdim = p.k * khw;
    let ohw = p.oh * p.ow;
    let row0 = wid.y * TM;
    let live_rows = m_rows - row0;
    let col0 = wid.x * TN;

    // The column of B this thread stages: input pixel (img, iy, ix).
    let my_col = col0 + li % TN;
    let col_ok = my_col < n_cols;
    let img = my_col / hw;
    let pix = my_col % hw;
    let ty0 = i32(pix / p.w) + i32(p.pad);
    let tx0 = i32(pix % p.w) + i32(p.pad);
    let s = i32(p.stride);
    let gy_img = img * p.k * ohw;
    // Inner indices staged next: A at ra = k0 + li mod 16 (+16 per step), B at rb (+4 per load).
    var ra = li % TK;
    var da = digits(ra, p.kh, p.kw);
    let step_a = digits(TK, p.kh, p.kw);
    var rb = li / TN;
    var db = digits(rb, p.kh, p.kw);
    let step_b = digits(4u, p.kh, p.kw);

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < kdim; k0 += TK) {
        // A[ci, r] = w[m, ci, ki, kj] with r = (m, ki, kj) = da.
        let wa = (da.x * p.c) * khw + da.y * p.kw + da.z;
        for (var e = 0u; e < 4u; e += 1u) {
            let idx = li + e * 256u;
            let ci = row0 + idx / TK;
            var va = 0.0;
            if (ci < m_rows && ra < kdim) {
                va = wt[wa + ci * khw];
            }
            tile_a[(idx % TK) * TM + idx / TK] = va;
            // B[r, col] = gy[img, m, oy, ox] where the tap (ki, kj) of (oy, ox) hits this pixel.
            var vb = 0.0;
            if (col_ok && rb < kdim) {
                let ty = ty0 - i32(db.y);
                let tx = tx0 - i32(db.z);
                if (ty >= 0 && tx >= 0 && ty % s == 0 && tx % s == 0) {
                    let oy = u32(ty / s);
                    let ox = u32(tx / s);
                    if (oy < p.oh && ox < p.ow) {
                        vb = gy[gy_img + db.x * ohw + oy * p.ow + ox];
                    }
                }
            }
            tile_b[idx] = vb;
            rb += 4u;
            db = advance(db, step_b, p.kh, p.kw);
        }
        ra += TK;
        da = advance(da, step_a, p.kh, p.kw);
        workgroupBarrier();
        gemm_accumulate(lid.y, lid.x, live_rows, &acc0, &acc1, &acc2, &acc3);
        workgroupBarrier();
    }
    let r0 = row0 + lid.y;
    let c0 = col0 + lid.x;
    store_row(r0, c0, acc0);
    store_row(r0 + 16u, c0, acc1);
    store_row(r0 + 32u, c0, acc2);
    store_row(r0 + 48u, c0, acc3);
}

// Writes v to input channel ci at columns (pixels) col, col + 16, col + 32, col + 48.
fn store_row(ci: u32, col: u32, v: vec4<f32>) {
    if (ci >= p.c) {
        return;
    }
    let hw = p.h * p.w;
    let n_cols = p.n * hw;
    for (var j = 0u; j < 4u; j += 1u) {
        let cj = col + 16u * j;
        if (cj < n_cols) {
            gx[((cj / hw) * p.c + ci) * hw + cj % hw] = v[j];
        }
    }
}
