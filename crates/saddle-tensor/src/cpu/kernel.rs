//! The CPU backend's compute kernels: one register-blocked micro-kernel (AVX-512 or AVX2 + FMA
//! where the CPU has them, portable Rust elsewhere; see [`Isa`]), the matrix product built on it, and direct convolution that
//! feeds the micro-kernel straight from the (padded) image, without an im2col matrix.
//!
//! **The micro-kernel** computes a tile of `MR` rows (six on AVX2: [`tile_rows`]) × `16·NV`
//! columns of `C = A·B`:
//! `tile[r][j] = Σ_p A[r][p] · B[p][j]`. Columns of `B` are loaded as vectors from a panel with
//! row stride `ldb`; elements of `A` are broadcast from anywhere: row `r` of the tile reads
//! `rows[r] + off(p)`, where `off` is affine (`p·cs`, a matrix) or a table (the offsets of a
//! convolution's window in a padded image). So neither operand of a convolution needs an im2col
//! copy: the input image is the `A` operand as it lies, the weights are packed once per call.
//!
//! **Determinism**: each output element is a sum over `p` in increasing order, in blocks of
//! [`KC`] accumulated into the output in order. Which thread computes a tile never changes the
//! result; the thread count only changes who does the work.

use rayon::prelude::*;

use super::pool::Scratch;

/// Rows of a tile (at most: the AVX2 kernel computes [`tile_rows`] of them).
pub const MR: usize = 7;
/// Widest tile: `16·NV_MAX` columns.
pub const NV_MAX: usize = 4;
/// Elements of the reduction processed per pass before accumulating into the output.
pub const KC: usize = 512;
const TILE: usize = MR * 16 * NV_MAX;

/// How row `r`'s element `p` of `A` is found: at `rows[r] + off(p)`.
#[derive(Clone, Copy)]
pub enum Offs<'a> {
    /// `off(p) = p · cs`.
    Affine(usize),
    /// `off(p) = table[p]`.
    Table(&'a [u32]),
}

/// Raw pointer that may cross threads: every use writes disjoint elements or only reads.
#[derive(Clone, Copy)]
pub struct P<T>(pub *mut T);
// SAFETY: the kernels below hand each output element to exactly one task and only read shared
// inputs; the pointer is a plain address.
unsafe impl<T> Send for P<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for P<T> {}

impl<T> P<T> {
    /// The address (a method, so that closures capture the whole `P`, which is `Sync`).
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// The instruction set the CPU kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F: 16-lane micro-kernel with FMA.
    Avx512,
    /// x86-64 with AVX2 and FMA: 8-lane micro-kernel with FMA. Its sums are fused
    /// multiply-adds in the same order as the AVX-512 kernel's, so the two agree bit for bit.
    Avx2,
    /// Plain Rust, vectorised by the compiler for the build target (no FMA on x86-64).
    Portable,
}

impl Isa {
    /// The name `SADDLE_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest set this CPU runs.
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Portable)
    }

    /// The set asked for by `SADDLE_CPU_ISA` (`avx512`, `avx2` or `portable`; the older
    /// `SADDLE_CPU_PORTABLE` means `portable`), or the fastest this CPU runs when neither is
    /// set. An unknown name, or a set this CPU cannot run, is an error that says so.
    pub fn from_env() -> Result<Isa, String> {
        let want = match std::env::var("SADDLE_CPU_ISA") {
            Ok(v) if !v.is_empty() => v,
            _ if std::env::var_os("SADDLE_CPU_PORTABLE").is_some() => "portable".into(),
            _ => return Ok(Isa::detect()),
        };
        let isa = match want.to_ascii_lowercase().as_str() {
            "avx512" => Isa::Avx512,
            "avx2" => Isa::Avx2,
            "portable" => Isa::Portable,
            _ => {
                return Err(format!(
                    "SADDLE_CPU_ISA={want} is not an instruction set saddle knows: use avx512, \
                     avx2 or portable (or unset it to pick the fastest this CPU runs)"
                ))
            }
        };
        if !isa.supported() {
            return Err(format!(
                "SADDLE_CPU_ISA={want}: this CPU cannot run {} kernels (the fastest it runs is \
                 {}); unset SADDLE_CPU_ISA or choose a set the CPU has",
                isa.name(),
                Isa::detect().name()
            ));
        }
        Ok(isa)
    }
}

/// The instruction set in use, fixed at the first call: [`Isa::from_env`], or where that is an
/// error (reported to the user by [`crate::cpu::cpu_isa`], which the CLI calls at startup) the
/// fastest this CPU runs.
pub fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| Isa::from_env().unwrap_or_else(|_| Isa::detect()))
}

/// Whether the AVX-512 kernels run (x86-64 only: elsewhere nothing asks).
#[cfg(target_arch = "x86_64")]
pub fn use_avx512() -> bool {
    isa() == Isa::Avx512
}

/// Reinterprets `f32` scratch as `u32` offsets (both plain 4-byte values).
pub fn as_u32(s: &mut [f32]) -> &mut [u32] {
    // SAFETY: f32 and u32 have the same size and alignment and every bit pattern is valid for
    // both; the borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u32, s.len()) }
}

/// Rows the kernel in use computes per tile: [`MR`], or six on AVX2, whose sixteen registers
/// hold six rows × 16 columns of accumulators with both vectors of `B` (seven rows left room
/// for only one, and the other was loaded again for every row). Callers tile by this; a
/// tile's rows past it are not computed.
pub fn tile_rows() -> usize {
    if isa() == Isa::Avx2 {
        6
    } else {
        MR
    }
}

/// One tile: `out[r·64 + j] = Σ_{p<k} A[r][p]·b[p·ldb + j]` for `r < tile_rows()`,
/// `j < 16·nv`.
///
/// # Safety
/// Every `rows[r] + off(p)` for `p < k` and every `b[p·ldb + j]` must be readable.
#[inline]
pub unsafe fn tile(
    nv: usize,
    k: usize,
    rows: &[*const f32; MR],
    offs: Offs<'_>,
    b: *const f32,
    ldb: usize,
    out: &mut [f32; TILE],
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx512() {
        // SAFETY: the CPU has AVX-512F (checked above); the caller vouches for the memory.
        unsafe {
            // Seven rows of four vectors would need 28 accumulators plus the four vectors of B
            // and a broadcast: one register more than AVX-512 has, and the spills cost ~20%.
            // Four vectors are done as two passes of two.
            let halves: &[(usize, usize)] = match nv {
                1 => &[(1, 0)],
                2 => &[(2, 0)],
                3 => &[(3, 0)],
                _ => &[(2, 0), (2, 32)],
            };
            for &(v, c0) in halves {
                let bb = b.wrapping_add(c0);
                match (v, offs) {
                    (1, Offs::Affine(cs)) => {
                        avx512::tile::<1, _>(k, rows, |p| p * cs, bb, ldb, out, c0)
                    }
                    (2, Offs::Affine(cs)) => {
                        avx512::tile::<2, _>(k, rows, |p| p * cs, bb, ldb, out, c0)
                    }
                    (_, Offs::Affine(cs)) => {
                        avx512::tile::<3, _>(k, rows, |p| p * cs, bb, ldb, out, c0)
                    }
                    (1, Offs::Table(t)) => avx512::tile::<1, _>(
                        k,
                        rows,
                        |p| *t.get_unchecked(p) as usize,
                        bb,
                        ldb,
                        out,
                        c0,
                    ),
                    (2, Offs::Table(t)) => avx512::tile::<2, _>(
                        k,
                        rows,
                        |p| *t.get_unchecked(p) as usize,
                        bb,
                        ldb,
                        out,
                        c0,
                    ),
                    (_, Offs::Table(t)) => avx512::tile::<3, _>(
                        k,
                        rows,
                        |p| *t.get_unchecked(p) as usize,
                        bb,
                        ldb,
                        out,
                        c0,
                    ),
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (checked when the set was chosen); vector group v
        // of row p is at b + p·ldb + 16·v, which the caller vouches for.
        unsafe { avx2_passes(nv, k, rows, offs, b, ldb, 16, out) };
        return;
    }
    // SAFETY: forwarded.
    unsafe {
        match offs {
            Offs::Affine(cs) => portable_tile(nv, k, rows, |p| p * cs, b, ldb, out),
            Offs::Table(t) => portable_tile(nv, k, rows, |p| t[p] as usize, b, ldb, out),
        }
    }
}

/// Whether the kernels want `B` in slabs (see [`to_slabs`]): the AVX2 kernel reads one 16-column
/// slab per pass, and a slab read contiguously stays in L1 where a 16-column stripe of a wide
/// row-major panel (rows 256 bytes or more apart, all in a few cache sets) does not.
pub fn wants_slabs() -> bool {
    isa() == Isa::Avx2
}

/// Copies `k` rows of a `16·nv`-column panel (`b[p·ldb + j]`) into `nv` slabs of `k × 16`:
/// `dst[(v·k + p)·16 + j] = b[p·ldb + 16·v + j]`.
///
/// # Safety
/// `b[p·ldb + j]` must be readable for `p < k`, `j < 16·nv`; `dst` holds `k·16·nv` values.
pub unsafe fn to_slabs(b: *const f32, ldb: usize, k: usize, nv: usize, dst: &mut [f32]) {
    assert!(dst.len() >= k * 16 * nv);
    for p in 0..k {
        if ldb > 16 * nv {
            // Rows far apart: ask for a later row's lines ahead of time.
            prefetch_row(b.wrapping_add((p + 16).min(k - 1) * ldb), 16 * nv);
        }
        // SAFETY: the caller vouches for row p's 16·nv values.
        let src = unsafe { std::slice::from_raw_parts(b.add(p * ldb), 16 * nv) };
        for v in 0..nv {
            dst[(v * k + p) * 16..(v * k + p + 1) * 16].copy_from_slice(&src[16 * v..16 * v + 16]);
        }
    }
}

/// [`tile`] on `B` in slabs ([`to_slabs`] with the same `k`): the same sums, in the same order.
///
/// # Safety
/// As [`tile`]; `b` holds `nv` slabs of `k × 16`. Only for [`wants_slabs`] (AVX2).
#[inline]
pub unsafe fn tile_slabs(
    nv: usize,
    k: usize,
    rows: &[*const f32; MR],
    offs: Offs<'_>,
    b: *const f32,
    out: &mut [f32; TILE],
) {
    // SAFETY: forwarded.
    unsafe { tile_slabs_strided(nv, k, rows, offs, b, k * 16, out) }
}

/// [`tile_slabs`] on the first `k` rows of slabs that lie `vstride` values apart (slabs of
/// more rows than this call reduces over: a block of a panel packed whole as slabs).
///
/// # Safety
/// As [`tile_slabs`], with slab `v`'s rows of 16 at `b + v·vstride`.
#[inline]
unsafe fn tile_slabs_strided(
    nv: usize,
    k: usize,
    rows: &[*const f32; MR],
    offs: Offs<'_>,
    b: *const f32,
    vstride: usize,
    out: &mut [f32; TILE],
) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA; slab v (rows of 16 at b + v·vstride) is what the
        // caller vouches for.
        unsafe { avx2_passes(nv, k, rows, offs, b, 16, vstride, out) };
        return;
    }
    let _ = (nv, k, rows, offs, b, vstride, out);
    unreachable!("slabs are only made for the AVX2 kernel");
}

/// The portable micro-kernel (plain Rust; the compiler vectorises the inner loop).
///
/// # Safety
/// As [`tile`].
unsafe fn portable_tile(
    nv: usize,
    k: usize,
    rows: &[*const f32; MR],
    off: impl Fn(usize) -> usize,
    b: *const f32,
    ldb: usize,
    out: &mut [f32; TILE],
) {
    let w = 16 * nv;
    let mut acc = [[0.0f32; 16 * NV_MAX]; MR];
    for p in 0..k {
        let o = off(p);
        // SAFETY: the caller vouches for these reads.
        let brow = unsafe { std::slice::from_raw_parts(b.add(p * ldb), w) };
        for r in 0..MR {
            // SAFETY: as above.
            let a = unsafe { *rows[r].add(o) };
            for (c, &bv) in acc[r][..w].iter_mut().zip(brow) {
                *c += a * bv;
            }
        }
    }
    for r in 0..MR {
        out[r * 64..r * 64 + w].copy_from_slice(&acc[r][..w]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, TILE};
    use std::arch::x86_64::*;

    /// The AVX-512 micro-kernel: `MR × NV` accumulators of 16 lanes, one broadcast of `A` per
    /// row and `NV` loads of `B` per step of the reduction.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; memory as [`super::tile`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const NV: usize, F: Fn(usize) -> usize>(
        k: usize,
        rows: &[*const f32; MR],
        off: F,
        b: *const f32,
        ldb: usize,
        out: &mut [f32; TILE],
        col0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let [r0, r1, r2, r3, r4, r5, r6] = *rows;
        let mut bp = b;
        for p in 0..k {
            let o = off(p);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: the caller vouches for `b[p·ldb .. p·ldb + 16·NV]`.
                *x = unsafe { _mm512_loadu_ps(bp.add(16 * v)) };
            }
            // SAFETY: the caller vouches for `rows[r] + off(p)`.
            let a = unsafe {
                [
                    *r0.add(o),
                    *r1.add(o),
                    *r2.add(o),
                    *r3.add(o),
                    *r4.add(o),
                    *r5.add(o),
                    *r6.add(o),
                ]
            };
            for r in 0..MR {
                let av = _mm512_set1_ps(a[r]);
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
            bp = bp.wrapping_add(ldb);
        }
        for r in 0..MR {
            for v in 0..NV {
                // SAFETY: `out` holds MR rows of 64.
                unsafe {
                    _mm512_storeu_ps(out.as_mut_ptr().add(r * 64 + col0 + 16 * v), acc[r][v])
                };
            }
        }
    }
}

/// The AVX2 kernel over `nv` passes of 16 columns: pass `v` reads row `p` of its 16 columns at
/// `b + v·vstride + p·ldb` and writes tile columns `16·v ..`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; those reads and `rows[r] + off(p)` must be valid.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2_passes(
    nv: usize,
    k: usize,
    rows: &[*const f32; MR],
    offs: Offs<'_>,
    b: *const f32,
    ldb: usize,
    vstride: usize,
    out: &mut [f32; TILE],
) {
    for v in 0..nv {
        let bb = b.wrapping_add(v * vstride);
        // SAFETY: forwarded from the caller.
        unsafe {
            match offs {
                Offs::Affine(cs) => avx2::tile(k, rows, |p| p * cs, bb, ldb, out, 16 * v),
                Offs::Table(t) => avx2::tile(
                    k,
                    rows,
                    |p| *t.get_unchecked(p) as usize,
                    bb,
                    ldb,
                    out,
                    16 * v,
                ),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, TILE};
    use std::arch::x86_64::*;

    /// [`super::store`]'s column-major case with vectors: the tile's rows transposed eight
    /// columns at a time, then per column `t + bias` (plus zero without a bias, as the scalar
    /// loop adds: it turns −0 into +0), `max(·, +0)` for ReLU (which gives +0 for −0 and NaN,
    /// like the scalar test), and a store of the `mr` rows: the same values as the
    /// scalar loop, bit for bit, written to the same elements only.
    ///
    /// # Safety
    /// The CPU must have AVX2; `dst + j·cs + i` writable for `j < nr`, `i < mr ≤ MR`; `bias`
    /// null or readable for `nr` values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn store_cols(
        t: &[f32; TILE],
        dst: *mut f32,
        cs: usize,
        mr: usize,
        nr: usize,
        bias: *const f32,
        relu: bool,
    ) {
        // The first `mr` lanes stored in pieces of 4, 2 and 1: `vmaskmovps`, the masked store
        // AVX2 has, is slow on AMD's cores (Zen 4 spent 18% of a CIFAR-10 training step in
        // this function with it), and `mr` is the same for every column, so the branches
        // below are predicted.
        let (four, two, one) = (mr & 4 != 0, mr & 2 != 0, mr & 1 != 0);
        // SAFETY: the caller vouches for the elements written (lanes < mr of column j).
        unsafe {
            transpose_cols(t, nr, bias, relu, |j, x| {
                let mut p = dst.add(j * cs);
                let mut v = _mm256_castps256_ps128(x);
                if four {
                    _mm_storeu_ps(p, v);
                    p = p.add(4);
                    v = _mm256_extractf128_ps::<1>(x);
                }
                if two {
                    _mm_storel_epi64(p.cast(), _mm_castps_si128(v));
                    p = p.add(2);
                    v = _mm_movehl_ps(v, v);
                }
                if one {
                    _mm_store_ss(p, v);
                }
            })
        }
    }

    /// [`store_cols`] with AVX-512VL's masked store, one instruction a column: the same values
    /// written to the same elements.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512VL; memory as [`store_cols`].
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub unsafe fn store_cols_vl(
        t: &[f32; TILE],
        dst: *mut f32,
        cs: usize,
        mr: usize,
        nr: usize,
        bias: *const f32,
        relu: bool,
    ) {
        debug_assert!(mr <= 8);
        let mask = (((1u16 << mr) - 1) & 0xFF) as __mmask8;
        // SAFETY: the caller vouches for the elements `put` writes (lanes < mr of column j).
        unsafe {
            transpose_cols(t, nr, bias, relu, |j, x| {
                _mm256_mask_storeu_ps(dst.add(j * cs), mask, x)
            })
        }
    }

    /// The body of [`store_cols`] and [`store_cols_vl`]: the tile's rows transposed eight
    /// columns at a time, `+ bias`, ReLU, and `put(j, column j)` (lane i = row i).
    ///
    /// # Safety
    /// AVX2 (inlined into a function that enables it); `bias` null or readable for `nr`
    /// values; `put`'s writes vouched for by the caller.
    #[inline(always)]
    unsafe fn transpose_cols(
        t: &[f32; TILE],
        nr: usize,
        bias: *const f32,
        relu: bool,
        put: impl Fn(usize, __m256),
    ) {
        // SAFETY: AVX2 is enabled by the caller the body is inlined into; the loads stay in
        // the tile and `bias`, which the caller vouches for.
        unsafe {
            let zero = _mm256_setzero_ps();
            for jb in (0..nr).step_by(8) {
                // SAFETY (loads): rows clamped to MR − 1, columns jb..jb+8 ≤ 64 of each row.
                let row = |r: usize| _mm256_loadu_ps(t.as_ptr().add(r.min(MR - 1) * 64 + jb));
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
                let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                let (u0, u1) = (
                    _mm256_shuffle_ps::<0x44>(t0, t2),
                    _mm256_shuffle_ps::<0xEE>(t0, t2),
                );
                let (u2, u3) = (
                    _mm256_shuffle_ps::<0x44>(t1, t3),
                    _mm256_shuffle_ps::<0xEE>(t1, t3),
                );
                let (u4, u5) = (
                    _mm256_shuffle_ps::<0x44>(t4, t6),
                    _mm256_shuffle_ps::<0xEE>(t4, t6),
                );
                let (u6, u7) = (
                    _mm256_shuffle_ps::<0x44>(t5, t7),
                    _mm256_shuffle_ps::<0xEE>(t5, t7),
                );
                // Column jb + c: lane i holds row i.
                let cols = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (c, &v) in cols.iter().enumerate().take(nr - jb) {
                    let j = jb + c;
                    // SAFETY: the caller vouches for bias[j] when the bias is not null.
                    let bj = if bias.is_null() { 0.0 } else { *bias.add(j) };
                    let mut x = _mm256_add_ps(v, _mm256_set1_ps(bj));
                    if relu {
                        // MAXPS returns its second operand when either is NaN or both are zeros.
                        x = _mm256_max_ps(x, zero);
                    }
                    put(j, x);
                }
            }
        }
    }

    /// The AVX2 micro-kernel: 6 rows × 16 columns (two 8-lane vectors), two loads of `B` and
    /// one broadcast of `A` per row per step of the reduction; each element is a chain of
    /// fused multiply-adds over `p` in order, as in the AVX-512 kernel. Rows 6.. of `rows`
    /// and of `out` are left alone.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; memory as [`super::tile`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<F: Fn(usize) -> usize>(
        k: usize,
        rows: &[*const f32; MR],
        off: F,
        b: *const f32,
        ldb: usize,
        out: &mut [f32; TILE],
        col0: usize,
    ) {
        // Twelve accumulators pinned to ymm0–11, B's two vectors in ymm12–13, the broadcasts
        // in ymm14–15: written in assembly because the compiler, given such a loop in
        // intrinsics, spilled accumulators and shuffled registers every step. Six rows, not
        // seven: fourteen accumulators left one register for B, and its second vector was
        // then read from memory by each row's FMA (sixteen loads per fourteen FMAs, which
        // the load ports, not the FMA units, limited; here nine per twelve).
        let z = _mm256_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
        let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
        let [r0, r1, r2, r3, r4, r5, _] = *rows;
        let mut bp = b;
        for p in 0..k {
            let o = off(p);
            // SAFETY: the caller vouches for `b[p·ldb .. p·ldb + 16]` and `rows[r] + off(p)`;
            // the block reads only those and writes only its declared registers.
            unsafe {
                std::arch::asm!(
                    "vmovups ymm12, ymmword ptr [{bp}]",
                    "vmovups ymm13, ymmword ptr [{bp} + 32]",
                    "vbroadcastss ymm14, dword ptr [{r0} + {o}*4]",
                    "vfmadd231ps ymm0, ymm14, ymm12",
                    "vfmadd231ps ymm1, ymm14, ymm13",
                    "vbroadcastss ymm15, dword ptr [{r1} + {o}*4]",
                    "vfmadd231ps ymm2, ymm15, ymm12",
                    "vfmadd231ps ymm3, ymm15, ymm13",
                    "vbroadcastss ymm14, dword ptr [{r2} + {o}*4]",
                    "vfmadd231ps ymm4, ymm14, ymm12",
                    "vfmadd231ps ymm5, ymm14, ymm13",
                    "vbroadcastss ymm15, dword ptr [{r3} + {o}*4]",
                    "vfmadd231ps ymm6, ymm15, ymm12",
                    "vfmadd231ps ymm7, ymm15, ymm13",
                    "vbroadcastss ymm14, dword ptr [{r4} + {o}*4]",
                    "vfmadd231ps ymm8, ymm14, ymm12",
                    "vfmadd231ps ymm9, ymm14, ymm13",
                    "vbroadcastss ymm15, dword ptr [{r5} + {o}*4]",
                    "vfmadd231ps ymm10, ymm15, ymm12",
                    "vfmadd231ps ymm11, ymm15, ymm13",
                    bp = in(reg) bp,
                    o = in(reg) o,
                    r0 = in(reg) r0,
                    r1 = in(reg) r1,
                    r2 = in(reg) r2,
                    r3 = in(reg) r3,
                    r4 = in(reg) r4,
                    r5 = in(reg) r5,
                    inout("ymm0") c00,
                    inout("ymm1") c01,
                    inout("ymm2") c10,
                    inout("ymm3") c11,
                    inout("ymm4") c20,
                    inout("ymm5") c21,
                    inout("ymm6") c30,
                    inout("ymm7") c31,
                    inout("ymm8") c40,
                    inout("ymm9") c41,
                    inout("ymm10") c50,
                    inout("ymm11") c51,
                    out("ymm12") _,
                    out("ymm13") _,
                    out("ymm14") _,
                    out("ymm15") _,
                    options(nostack, readonly, preserves_flags),
                );
            }
            bp = bp.wrapping_add(ldb);
        }
        let acc = [
            [c00, c01],
            [c10, c11],
            [c20, c21],
            [c30, c31],
            [c40, c41],
            [c50, c51],
        ];
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                // SAFETY: `out` holds MR rows of 64.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r * 64 + col0 + 8 * v), *x) };
            }
        }
    }
}

/// Where a tile's results go: `c[i·rs + j·cs]` for tile-local row `i < mr`, column `j < nr`,
/// offset by the tile's origin; `bias[j]` is added on the first pass, ReLU applied on the last.
#[derive(Clone, Copy)]
pub struct Out {
    /// Output base (the element of row 0, column 0 of the whole product).
    pub c: P<f32>,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
    /// Add to what is there instead of overwriting it.
    pub accumulate: bool,
    /// Per-column bias added once.
    pub bias: Option<P<f32>>,
    /// Apply max(·, 0) to the final value.
    pub relu: bool,
}

/// Writes one tile's partial sums at rows `i0..i0+mr`, columns `j0..j0+nr`.
///
/// # Safety
/// The addressed output elements must be writable and touched by no other thread.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn store(
    o: &Out,
    t: &[f32; TILE],
    i0: usize,
    mr: usize,
    j0: usize,
    nr: usize,
    first: bool,
    last: bool,
) {
    let add = !first || o.accumulate;
    let relu = last && o.relu;
    let bias = |j: usize| match (first, o.bias) {
        // SAFETY: the bias holds one value per column.
        (true, Some(b)) => unsafe { *b.0.add(j0 + j) },
        _ => 0.0,
    };
    let put = |d: *mut f32, v: f32| {
        // SAFETY: the caller vouches for the output block.
        unsafe {
            let mut x = if add { *d + v } else { v };
            if relu && (x <= 0.0 || x.is_nan()) {
                x = 0.0;
            }
            *d = x;
        }
    };
    if o.rs == 1 && !add {
        // Column-major output written once (a convolution's [channel][pixel] block): each
        // column's rows are contiguous; bias and ReLU in the same pass, no read of the output.
        #[cfg(target_arch = "x86_64")]
        if isa() != Isa::Portable && std::arch::is_x86_feature_detected!("avx2") {
            let b = match o.bias {
                Some(b) => b.0.wrapping_add(j0) as *const f32,
                None => std::ptr::null(),
            };
            let d = o.c.0.wrapping_add(j0 * o.cs + i0);
            if isa() == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vl") {
                // SAFETY: the CPU has AVX-512F and VL; the caller vouches for the output block.
                unsafe { avx2::store_cols_vl(t, d, o.cs, mr, nr, b, relu) };
            } else {
                // SAFETY: the CPU has AVX2; the caller vouches for the output block.
                unsafe { avx2::store_cols(t, d, o.cs, mr, nr, b, relu) };
            }
            return;
        }
        for j in 0..nr {
            let bj = bias(j);
            // SAFETY: the caller vouches for the output block: `mr` elements from `base`.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(o.c.0.add((j0 + j) * o.cs + i0), mr) };
            for (i, d) in dst.iter_mut().enumerate() {
                let x = t[i * 64 + j] + bj;
                *d = if relu && (x <= 0.0 || x.is_nan()) {
                    0.0
                } else {
                    x
                };
            }
        }
    } else if o.cs == 1 {
        // Row-major output: rows outer, so each row's columns are written contiguously.
        for i in 0..mr {
            // SAFETY: the caller vouches for the output block.
            let base = unsafe { o.c.0.add(j0 + (i0 + i) * o.rs) };
            let row = &t[i * 64..i * 64 + nr];
            if !add && !relu && o.bias.is_none() {
                // SAFETY: as above; `nr` contiguous elements.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base, nr) };
                continue;
            }
            for (j, &v) in row.iter().enumerate() {
                put(base.wrapping_add(j), v + bias(j));
            }
        }
    } else {
        for j in 0..nr {
            let bj = bias(j);
            let base = o.c.0.wrapping_add((j0 + j) * o.cs + i0 * o.rs);
            for i in 0..mr {
                put(base.wrapping_add(i * o.rs), t[i * 64 + j] + bj);
            }
        }
    }
}

/// Hints the cache to load the `w` floats at `p` (no effect off x86-64).
#[inline(always)]
pub(super) fn prefetch_row(p: *const f32, w: usize) {
    #[cfg(target_arch = "x86_64")]
    for l in (0..w).step_by(16) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, w);
}

/// How `B` (the vector operand, `k × n`) is laid out.
#[derive(Clone, Copy)]
pub enum BSrc {
    /// `B[p][j] = ptr[p·ld + j]`.
    Rows(P<f32>, usize),
    /// `B[p][j] = ptr[j·ld + p]` (a transposed matrix: packed before use).
    Cols(P<f32>, usize),
}

/// A column panel of the product: columns `j0 .. j0 + nr`, computed with `nv` vectors; `packed`
/// gives its offset in the packing buffer if it is packed.
#[derive(Clone, Copy)]
struct Panel {
    j0: usize,
    nr: usize,
    nv: usize,
    packed: Option<usize>,
}

fn panels(n: usize, k: usize, b: BSrc, plan: &mut [Panel; 64]) -> (usize, usize) {
    let mut np = 0;
    let mut pack_len = 0;
    let mut j0 = 0;
    while j0 < n {
        let nr = (n - j0).min(16 * NV_MAX);
        let nv = nr.div_ceil(16);
        let pack = matches!(b, BSrc::Cols(..)) || !nr.is_multiple_of(16);
        plan[np] = Panel {
            j0,
            nr,
            nv,
            packed: pack.then_some(pack_len),
        };
        if pack {
            pack_len += k * 16 * nv;
        }
        np += 1;
        j0 += nr;
    }
    (np, pack_len)
}

/// Packs panel `pl` of `B` (all `k` rows) into `dst` with row stride `16·nv`, zero-padded; for
/// the AVX2 kernel ([`wants_slabs`]) as `nv` slabs of `k × 16` instead.
fn pack_panel(b: BSrc, pl: Panel, k: usize, dst: &mut [f32]) {
    let w = 16 * pl.nv;
    if wants_slabs() {
        // As slabs of k × 16 (`dst[(v·k + p)·16 + j]`), which the AVX2 kernel reads directly.
        let mut row = [0.0f32; 16 * NV_MAX];
        for p in 0..k {
            for (j, x) in row[..pl.nr].iter_mut().enumerate() {
                // SAFETY: B has k rows and columns j0..j0+nr.
                *x = unsafe {
                    match b {
                        BSrc::Rows(ptr, ld) => *ptr.0.add(p * ld + pl.j0 + j),
                        BSrc::Cols(ptr, ld) => *ptr.0.add((pl.j0 + j) * ld + p),
                    }
                };
            }
            for v in 0..pl.nv {
                dst[(v * k + p) * 16..(v * k + p + 1) * 16]
                    .copy_from_slice(&row[16 * v..16 * v + 16]);
            }
        }
        return;
    }
    match b {
        BSrc::Rows(ptr, ld) => {
            for p in 0..k {
                let d = &mut dst[p * w..(p + 1) * w];
                // SAFETY: row p of B holds columns j0..j0+nr.
                let s = unsafe { std::slice::from_raw_parts(ptr.0.add(p * ld + pl.j0), pl.nr) };
                d[..pl.nr].copy_from_slice(s);
                d[pl.nr..].fill(0.0);
            }
        }
        BSrc::Cols(ptr, ld) => {
            for p0 in (0..k).step_by(64) {
                let p1 = (p0 + 64).min(k);
                for j in 0..w {
                    if j < pl.nr {
                        // SAFETY: column j0+j of B is a row of the stored matrix with k entries.
                        let s = unsafe {
                            std::slice::from_raw_parts(ptr.0.add((pl.j0 + j) * ld + p0), p1 - p0)
                        };
                        for (q, &v) in s.iter().enumerate() {
                            dst[(p0 + q) * w + j] = v;
                        }
                    } else {
                        for p in p0..p1 {
                            dst[p * w + j] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// The vector operand's panel `pl` as (pointer, row stride).
fn panel_ptr(b: BSrc, pl: Panel, packed: &[f32]) -> (*const f32, usize) {
    match (pl.packed, b) {
        (Some(o), _) => (packed[o..].as_ptr(), 16 * pl.nv),
        // SAFETY: not dereferenced here.
        (None, BSrc::Rows(ptr, ld)) => (ptr.0.wrapping_add(pl.j0) as *const f32, ld),
        (None, BSrc::Cols(..)) => unreachable!("transposed panels are always packed"),
    }
}

/// `C (m×n) = A (m×k) · B (k×n)` (plus what `out` asks for). Row `i` of `A` starts at
/// `a + arows(i)` and its element `p` is at `+ offs(p)`.
///
/// # Safety
/// All addressed elements of `A`, `B` and `C` must be valid; `C` must not overlap `A` or `B`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    arows: Offs<'_>,
    offs: Offs<'_>,
    b: BSrc,
    out: Out,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // Nothing to sum: the product is zero.
        let z = [0.0f32; TILE];
        for i0 in (0..m).step_by(MR) {
            for j0 in (0..n).step_by(64) {
                // SAFETY: forwarded.
                unsafe { store(&out, &z, i0, MR.min(m - i0), j0, 64.min(n - j0), true, true) };
            }
        }
        return;
    }
    // Panels of at most 64 columns; n ≤ 64·64 is all the product needs here, larger n is split.
    if n > 64 * 64 {
        let half = (n / 2).div_ceil(64) * 64;
        let (b1, b2) = match b {
            BSrc::Rows(p, ld) => (b, BSrc::Rows(P(p.0.wrapping_add(half)), ld)),
            BSrc::Cols(p, ld) => (b, BSrc::Cols(P(p.0.wrapping_add(half * ld)), ld)),
        };
        let mut o2 = out;
        o2.c = P(out.c.0.wrapping_add(half * out.cs));
        o2.bias = out.bias.map(|bb| P(bb.0.wrapping_add(half)));
        // SAFETY: the two halves write disjoint columns.
        unsafe {
            gemm(m, half, k, a, arows, offs, b1, out, parallel);
            gemm(m, n - half, k, a, arows, offs, b2, o2, parallel);
        }
        return;
    }
    let mut plan = [Panel {
        j0: 0,
        nr: 0,
        nv: 0,
        packed: None,
    }; 64];
    let (np, pack_len) = panels(n, k, b, &mut plan);
    let plan = &plan[..np];
    let mut packed_s = (pack_len > 0).then(|| Scratch::new(pack_len));
    if let Some(packed) = packed_s.as_mut() {
        let dst = P(packed.as_mut_ptr());
        let work = |pl: &Panel| {
            if let Some(o) = pl.packed {
                // SAFETY: each panel owns its own range of the packing buffer.
                let d = unsafe { std::slice::from_raw_parts_mut(dst.get().add(o), k * 16 * pl.nv) };
                pack_panel(b, *pl, k, d);
            }
        };
        if parallel && pack_len > 1 << 15 {
            plan.par_iter().for_each(work);
        } else {
            plan.iter().for_each(work);
        }
    }
    let packed: &[f32] = packed_s.as_deref().unwrap_or(&[]);
    // Rows of A a multiple of 4 KiB apart all fall into the same L1 cache sets: copy them to
    // rows 64 bytes further apart (once per call; A is the small operand here).
    let a_copy = match (arows, offs) {
        (Offs::Affine(rs), Offs::Affine(1)) if rs % 1024 == 0 && rs >= k && m * k <= 1 << 20 => {
            let ld = rs + 16;
            let mut buf = Scratch::new(m * ld);
            for i in 0..m {
                // SAFETY: row i of A has k readable elements.
                let src = unsafe { std::slice::from_raw_parts(a.add(i * rs), k) };
                buf[i * ld..i * ld + k].copy_from_slice(src);
            }
            Some((buf, ld))
        }
        _ => None,
    };
    let (a, arows) = match &a_copy {
        Some((buf, ld)) => (buf.as_ptr(), Offs::Affine(*ld)),
        None => (a, arows),
    };
    let rt = tile_rows();
    let mt = m.div_ceil(rt);
    // Tasks: panels × chunks of row tiles, aiming at 16 or more tasks.
    let chunks = if parallel {
        16usize.div_ceil(np).min(mt)
    } else {
        1
    };
    let per = mt.div_ceil(chunks);
    let a = P(a as *mut f32);
    let task = |t: usize| {
        let (a, b, out) = (a, b, out);
        let a = a.0 as *const f32;
        let pl = plan[t % np];
        let c = t / np;
        // The last chunks may start past the end (chunks · per can exceed mt): they are empty.
        let (tile0, tile1) = ((c * per).min(mt), ((c + 1) * per).min(mt));
        let (bp, ldb) = panel_ptr(b, pl, packed);
        let w = 16 * pl.nv;
        // A packed panel is already in slabs for the AVX2 kernel (see `pack_panel`).
        let packed_slabs = wants_slabs() && pl.packed.is_some();
        // A strided panel read by several tiles is copied to a contiguous block first (one
        // pass over B instead of one per tile, and no stride across pages in the kernel).
        let slabs = wants_slabs() && !packed_slabs && tile1 - tile0 >= 2;
        let mut local = (!packed_slabs && (ldb != w || slabs) && tile1 - tile0 >= 2)
            .then(|| Scratch::new(KC.min(k) * w));
        let mut acc = [0.0f32; TILE];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let (bblk, ldb_blk) = match local.as_mut() {
                Some(buf) if slabs => {
                    // SAFETY: the panel has `w` valid columns in each of its rows.
                    unsafe { to_slabs(bp.wrapping_add(k0 * ldb), ldb, kc, pl.nv, buf) };
                    (buf.as_ptr(), 16)
                }
                Some(buf) => {
                    for p in 0..kc {
                        // The rows are far apart: ask for a later row's lines ahead of time.
                        prefetch_row(bp.wrapping_add((k0 + p + 16).min(k - 1) * ldb), w);
                        // SAFETY: a full unpacked panel has `w` valid columns in every row.
                        let src = unsafe { std::slice::from_raw_parts(bp.add((k0 + p) * ldb), w) };
                        buf[p * w..(p + 1) * w].copy_from_slice(src);
                    }
                    (buf.as_ptr(), w)
                }
                None if packed_slabs => (bp.wrapping_add(k0 * 16), 16),
                None => (bp.wrapping_add(k0 * ldb), ldb),
            };
            let offs_k = match offs {
                Offs::Affine(cs) => (Offs::Affine(cs), k0 * cs),
                Offs::Table(tb) => (Offs::Table(&tb[k0..]), 0),
            };
            for ti in tile0..tile1 {
                let i0 = ti * rt;
                let mr = rt.min(m - i0);
                let mut rows = [a; MR];
                for (r, row) in rows.iter_mut().enumerate() {
                    let i = i0 + r.min(mr - 1);
                    let ro = match arows {
                        Offs::Affine(rs) => i * rs,
                        Offs::Table(t) => t[i] as usize,
                    };
                    *row = a.wrapping_add(ro + offs_k.1);
                }
                // SAFETY: rows and panel are in bounds by the caller's contract.
                unsafe {
                    if packed_slabs {
                        tile_slabs_strided(pl.nv, kc, &rows, offs_k.0, bblk, k * 16, &mut acc);
                    } else if slabs {
                        tile_slabs(pl.nv, kc, &rows, offs_k.0, bblk, &mut acc);
                    } else {
                        tile(pl.nv, kc, &rows, offs_k.0, bblk, ldb_blk, &mut acc);
                    }
                    store(&out, &acc, i0, mr, pl.j0, pl.nr, k0 == 0, k0 + kc == k);
                }
            }
            k0 += kc;
        }
    };
    let ntasks = np * chunks;
    if parallel && ntasks > 1 {
        (0..ntasks).into_par_iter().for_each(task);
    } else {
        (0..ntasks).for_each(task);
    }
}

/// `C = op(A)·op(B)` for row-major matrices (`C` is `m × n`, overwritten), split across threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    parallel: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let cp = P(c.as_mut_ptr());
    let ap = a.as_ptr();
    let bp = P(b.as_ptr() as *mut f32);
    // op(A)[i][p] = a[i·ars + p·acs]; op(B)[p][j] = b[p·brs + j·bcs].
    let (ars, acs) = if ta { (1, m) } else { (k, 1) };
    let (brs, bcs) = if tb { (1, k) } else { (n, 1) };
    // The kernel vectorises along the columns of what it computes and broadcasts the other
    // operand from anywhere. Compute C directly when op(B) has contiguous rows; compute Cᵀ =
    // op(B)ᵀ·op(A)ᵀ when op(A) has contiguous columns; otherwise pack the smaller one.
    let direct = if bcs == 1 {
        true
    } else if ars == 1 {
        false
    } else {
        n * k <= m * k
    };
    // SAFETY: every index below is within the asserted lengths.
    unsafe {
        if direct {
            let bs = if bcs == 1 {
                BSrc::Rows(bp, brs)
            } else {
                BSrc::Cols(bp, bcs)
            };
            let out = Out {
                c: cp,
                rs: n,
                cs: 1,
                accumulate: false,
                bias: None,
                relu: false,
            };
            gemm(
                m,
                n,
                k,
                ap,
                Offs::Affine(ars),
                Offs::Affine(acs),
                bs,
                out,
                parallel,
            );
        } else {
            // Cᵀ[j][i] = Σ_p op(B)[p][j]·op(A)[i][p]: A' = op(B)ᵀ (rows j at b + j·bcs, element
            // p at + p·brs); B' = op(A)ᵀ with B'[p][i] = a[p·acs + i·ars].
            let bs = if ars == 1 {
                BSrc::Rows(P(ap as *mut f32), acs)
            } else {
                BSrc::Cols(P(ap as *mut f32), ars)
            };
            let out = Out {
                c: cp,
                rs: 1,
                cs: n,
                accumulate: false,
                bias: None,
                relu: false,
            };
            gemm(
                n,
                m,
                k,
                bp.0,
                Offs::Affine(bcs),
                Offs::Affine(brs),
                bs,
                out,
                parallel,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! Results do not depend on the number of threads: the same products and convolutions
    //! computed in a 1-thread and a 3-thread pool agree bit for bit.
    use crate::cpu::Cpu;
    use crate::rng::Rng;
    use crate::{Backend, Conv2dParams};

    /// Each element of a product is, bit for bit, the chain the module documents: per block of
    /// `KC` a sum over `p` in order — one rounding per step with a fused multiply-add on the
    /// AVX-512 and AVX2 kernels, two (product, then sum) on the portable one — and the blocks
    /// added in order. Checked against that chain computed here in scalar code, on the
    /// instruction set this process uses (CI runs it under each `SADDLE_CPU_ISA`).
    #[test]
    fn products_are_the_documented_chain_of_sums() {
        use super::{isa, Isa, KC};
        let fused = isa() != Isa::Portable;
        let b = Cpu::new();
        let mut r = Rng::new(11);
        // k spans one block, a partial second one and three; n and m leave partial tiles.
        for &(m, k, n) in &[
            (9, 37, 23),
            (15, KC + 100, 70),
            (8, 3 * KC, 130),
            (50, 800, 64),
        ] {
            let av: Vec<f32> = (0..m * k).map(|_| r.uniform(-1.0, 1.0)).collect();
            let bv: Vec<f32> = (0..k * n).map(|_| r.uniform(-1.0, 1.0)).collect();
            // Each operand stored as is or transposed: the four ways through `matmul` (products
            // computed directly or as Cᵀ, panels read in place or packed).
            let at = b.from_vec(&[m, k], av.clone()).unwrap();
            let bt = b.from_vec(&[k, n], bv.clone()).unwrap();
            let tr = |v: &[f32], rows: usize, cols: usize| {
                let t: Vec<f32> = (0..rows * cols)
                    .map(|q| v[(q % rows) * cols + q / rows])
                    .collect();
                b.from_vec(&[cols, rows], t).unwrap()
            };
            let (att, btt) = (tr(&av, m, k), tr(&bv, k, n));
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a_op = if ta { &att } else { &at };
                let b_op = if tb { &btt } else { &bt };
                let c = b.matmul(a_op, b_op, ta, tb).unwrap();
                check(m, k, n, &av, &bv, c.as_slice(), fused, (ta, tb));
            }
        }
    }

    /// `c` against the documented chain for `a` `[m, k]` times `b` `[k, n]`.
    #[allow(clippy::too_many_arguments)]
    fn check(
        m: usize,
        k: usize,
        n: usize,
        av: &[f32],
        bv: &[f32],
        c: &[f32],
        fused: bool,
        how: (bool, bool),
    ) {
        use super::{isa, KC};
        for i in 0..m {
            for j in 0..n {
                let mut total = 0.0f32;
                for k0 in (0..k).step_by(KC) {
                    let mut s = 0.0f32;
                    for p in k0..(k0 + KC).min(k) {
                        let (x, y) = (av[i * k + p], bv[p * n + j]);
                        s = if fused { x.mul_add(y, s) } else { s + x * y };
                    }
                    total = if k0 == 0 { s } else { total + s };
                }
                let got = c[i * n + j];
                assert_eq!(
                    got.to_bits(),
                    total.to_bits(),
                    "{isa:?} kernel, {m}×{k}·{k}×{n} (transposed: {how:?}), element \
                         ({i}, {j}): {got} vs {total}",
                    isa = isa()
                );
            }
        }
    }

    /// A tile written to a column-major output (a convolution's `[channel][pixel]` block):
    /// every way `store` has (the scalar loop, AVX2's masked store, AVX-512VL's) writes the
    /// documented values, `t + bias` (+0 added without a bias, turning −0 into +0) and ReLU's
    /// +0 for negatives, zeros and NaN, bit for bit, to rows `< mr` and columns `< nr` only.
    /// The tile holds NaN, ±0, ±∞ and ordinary values; the vector ways this CPU lacks are
    /// named in the output (the dispatching `store`, which picks the fastest, always runs).
    #[test]
    fn column_stores_write_the_documented_values_to_their_block_only() {
        use super::{store, Out, MR, P, TILE};
        let specials = [
            f32::NAN,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1.5,
            2.25,
        ];
        let mut r = Rng::new(5);
        let t: Vec<f32> = (0..TILE)
            .map(|i| match i % 11 {
                0..=6 => specials[i % 11],
                _ => r.uniform(-2.0, 2.0),
            })
            .collect();
        let t: &[f32; TILE] = t.as_slice().try_into().unwrap();
        let bias: Vec<f32> = (0..64).map(|j| (j as f32 - 20.0) / 8.0).collect();
        let (cs, sentinel) = (11usize, f32::from_bits(0x7fc0_1234));
        type Way = fn(&[f32; TILE], *mut f32, usize, usize, usize, *const f32, bool);
        let mut ways: Vec<(&str, Way)> = vec![(
            "store",
            |t: &[f32; TILE], d: *mut f32, cs, mr, nr, b: *const f32, relu| {
                let o = Out {
                    c: P(d),
                    rs: 1,
                    cs,
                    accumulate: false,
                    bias: (!b.is_null()).then_some(P(b as *mut f32)),
                    relu,
                };
                // SAFETY: `d` holds nr columns of cs ≥ mr values (below).
                unsafe { store(&o, t, 0, mr, 0, nr, true, true) }
            },
        )];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2; memory as for "store".
                ways.push(("avx2", |t, d, cs, mr, nr, b, relu| unsafe {
                    super::avx2::store_cols(t, d, cs, mr, nr, b, relu)
                }));
            } else {
                eprintln!("this CPU lacks AVX2: its column store not run");
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has AVX-512F and VL; memory as for "store".
                ways.push(("avx512vl", |t, d, cs, mr, nr, b, relu| unsafe {
                    super::avx2::store_cols_vl(t, d, cs, mr, nr, b, relu)
                }));
            } else {
                eprintln!("this CPU lacks AVX-512VL: its column store not run");
            }
        }
        for (name, way) in ways {
            for mr in 1..=MR {
                for nr in [1, 7, 8, 9, 16, 31, 64] {
                    for (with_bias, relu) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        // One column more than written and cs > mr rows each: the sentinels
                        // around the block must survive.
                        let mut out = vec![sentinel; (nr + 1) * cs];
                        let b = if with_bias {
                            bias.as_ptr()
                        } else {
                            std::ptr::null()
                        };
                        way(t, out.as_mut_ptr(), cs, mr, nr, b, relu);
                        for j in 0..=nr {
                            for i in 0..cs {
                                let got = out[j * cs + i];
                                let want = if j < nr && i < mr {
                                    let x = t[i * 64 + j] + if with_bias { bias[j] } else { 0.0 };
                                    if relu && (x <= 0.0 || x.is_nan()) {
                                        0.0
                                    } else {
                                        x
                                    }
                                } else {
                                    sentinel
                                };
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{name}: mr {mr}, nr {nr}, bias {with_bias}, relu {relu}, \
                                     row {i}, column {j}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let b = Cpu::new();
        let mut r = Rng::new(3);
        let mut rnd = |s: &[usize]| {
            let n: usize = s.iter().product();
            b.from_vec(s, (0..n).map(|_| r.uniform(-1.0, 1.0)).collect())
                .unwrap()
        };
        let x = rnd(&[5, 16, 12, 12]);
        let w = rnd(&[40, 16, 5, 5]);
        let gy = rnd(&[5, 40, 12, 12]);
        let a = rnd(&[50, 700]);
        let m = rnd(&[300, 700]);
        let g = rnd(&[50, 300]);
        let p = Conv2dParams::new(1, 2);
        let run = || {
            vec![
                b.conv2d_relu(&x, &w, None, p).unwrap(),
                b.conv2d_backward_input(&gy, &w, &[5, 16, 12, 12], p)
                    .unwrap(),
                b.conv2d_backward_weight(&x, &gy, &[40, 16, 5, 5], p)
                    .unwrap(),
                b.matmul(&a, &m, false, true).unwrap(),
                b.matmul(&g, &a, true, false).unwrap(),
                b.matmul(&g, &m, false, false).unwrap(),
                b.sum_axes(&x, &[0, 2, 3], false).unwrap(),
            ]
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        let three = pool(3).install(run);
        for (i, (u, v)) in one.iter().zip(&three).enumerate() {
            assert!(
                u.as_slice()
                    .iter()
                    .zip(v.as_slice())
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "result {i} differs between 1 and 3 threads"
            );
        }
    }
}
