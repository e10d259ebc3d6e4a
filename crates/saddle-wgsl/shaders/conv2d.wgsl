// conv2d: y[img, m, oy, ox] = bias[m] + Σ_{ci, ki, kj} w[m, ci, ki, kj] ·
//         x[img, ci, oy·stride + ki − pad, ox·stride + kj − pad]   (zero outside x)
//
// An implicit GEMM (no im2col buffer): rows are output channels m (M = k), columns are output
// pixels (img, oy, ox) (N = n·oh·ow), the inner index r = (ci, ki, kj) (K = c·kh·kw). A is the
// weight read as a row-major k×(c·kh·kw) matrix; B is gathered from x on the fly while staging
// it in workgroup memory, with zeros for the padding.
//
// Tiling as in matmul.wgsl (the shared core is in prelude_gemm.wgsl): 16×16 threads, a 64×64
// output tile, steps of 16 along K, a 4×4 register block per thread (four vec4 accumulators;
// rows past the edge skipped). Each thread always stages the same column of B (its index mod
// 64), so the pixel coordinates of that column are computed once; the inner index it stages
// advances by 4 from one load to the next, so its digits (ci, ki, kj) are carried forward by
// additions instead of divisions inside the loop.

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
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

//! include prelude_gemm.wgsl

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m_rows = p.k;
    let ohw = p.oh * p.ow;
    let n_cols = p.n * ohw;
    let khw = p.kh * p.kw;
    let kdim = p.c * khw;
    let row0 = wid.y * TM;
    let live_rows = m_rows - row0;
    let col0 = wid.x * TN;

    // The column of B this thread stages: output pixel (img, oy, ox).
    let my_col = col0 + li % TN;
    let col_ok = my_col < n_cols;
    let img = my_col / ohw;
    let pix = my_col % ohw;
    let iy0 = i32((pix / p.ow) * p.stride) - i32(p.pad);
    let ix0 = i32((pix % p.ow) * p.stride) - i32(p.pad);
    let x_img = img * p.c * p.h * p.w;
    // The inner index of B this thread stages next, as digits (ci, ki, kj); +4 per load.
    var rb = li / TN;
    var db = digits(rb, p.kh, p.kw);
    let step = digits(4u, p.kh, p.kw);

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < kdim; k0 += TK) {
        for (var e = 0u; e < 4u; e += 1u) {
            let idx = li + e * 256u;
            // A: the weight, r fastest (contiguous).
            let ka = idx % TK;
            let ma = idx / TK;
            let gr = row0 + ma;
            let gka = k0 + ka;
            var va = 0.0;
            if (gr < m_rows && gka < kdim) {
                va = wt[gr * kdim + gka];
            }
            tile_a[ka * TM + ma] = va;
            // B: the input patch element (ci, ki, kj) of this thread's pixel.
            var vb = 0.0;
            if (col_ok && rb < kdim) {
                let iy = iy0 + i32(db.y);
                let ix = ix0 + i32(db.z);
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    vb = x[x_img + (db.x * p.h + u32(iy)) * p.w + u32(ix)];
                }
            }
            tile_b[(idx / TN) * TN + li % TN] = vb;
            rb += 4u;
            db = advance(db, step, p.kh, p.kw);
        }
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

// Writes bias[m] + v to the outputs of channel m at columns col, col + 16, col + 32, col + 48.
fn store_row(m: u32, col: u32, v: vec4<f32>) {
    if (m >= p.k) {
        return;
    }
    var bm = 0.0;
    if (p.has_bias != 0u) {
        bm = bias[m];
    }
    let ohw = p.oh * p.ow;
    let n_cols = p.n * ohw;
    for (var j = 0u; j < 4u; j += 1u) {
        let cj = col + 16u * j;
        if (cj < n_cols) {
            y[((cj / ohw) * p.k + m) * ohw + cj % ohw] = v[j] + bm;
        }
    }
}
