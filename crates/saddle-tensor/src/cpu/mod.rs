//! The CPU backend: `f32` tensors in host memory, computed by the kernels of this module
//! (a register-blocked AVX-512 micro-kernel with a portable fallback, direct convolution without
//! im2col) and split across threads with rayon.
//!
//! Tensors share their buffer (`Arc`), so cloning one is cheap; in-place updates copy only when
//! the buffer is shared. Buffers are recycled through a bounded pool ([`pool`]): a loop that
//! repeats the same shapes (a PGD attack, a training run) allocates nothing after its first
//! iteration. Work is split into fixed-size chunks whose partial results are combined in a fixed
//! order, so results do not depend on the number of threads.
//!
//! The kernels' instruction set is chosen at run time: AVX-512F where the CPU has it, else AVX2
//! with FMA, else portable Rust. `SADDLE_CPU_ISA=avx512|avx2|portable` forces one (for tests and
//! benchmarks); [`cpu_isa`] reports which is used, or why the one asked for cannot be. The
//! AVX-512 and AVX2 kernels compute every sum as the same chain of fused multiply-adds, so their
//! results agree bit for bit; the portable kernels round each product (no FMA on baseline
//! x86-64) and differ in the last bits.

mod conv;
/// The benches' CPU-time clocks, for the timing tests (thread CPU time holds on a shared
/// machine).
#[cfg(test)]
#[path = "../../benches/support/cpu_clock.rs"]
mod cpu_clock;
mod kernel;
pub mod pool;
mod winograd;

pub use kernel::Isa;

use std::mem::ManuallyDrop;
use std::sync::Arc;

use ndarray::{ArrayViewD, IxDyn, Zip};
use rayon::prelude::*;

use crate::backend::{
    check_dlr, check_residual, check_restart_merge, dlr_rows, restart_merge_row, Activation,
    Backend, BatchNormGrads, BatchNormStats, TensorLike,
};
use crate::error::{Result, TensorError};
use crate::shape::{
    bn_layout, broadcast_shape, check_labels, check_logits_labels, checked_numel, pool_out_shape,
    same_shape, Conv2dParams, ConvGeometry,
};
use crate::{AdamParams, SgdParams};

const INLINE_DIMS: usize = 6;

/// A shape stored inline up to rank 6 (so that making a tensor allocates nothing for it).
#[derive(Clone, PartialEq, Eq)]
enum Dims {
    Inline(u8, [usize; INLINE_DIMS]),
    Heap(Box<[usize]>),
}

impl Dims {
    fn new(s: &[usize]) -> Self {
        if s.len() <= INLINE_DIMS {
            let mut d = [0; INLINE_DIMS];
            d[..s.len()].copy_from_slice(s);
            Dims::Inline(s.len() as u8, d)
        } else {
            Dims::Heap(s.into())
        }
    }

    fn as_slice(&self) -> &[usize] {
        match self {
            Dims::Inline(n, d) => &d[..*n as usize],
            Dims::Heap(d) => d,
        }
    }
}

/// A CPU tensor: a shape and a shared, row-major `f32` buffer (returned to the buffer pool when
/// its last handle is dropped).
pub struct CpuTensor {
    shape: Dims,
    data: ManuallyDrop<Arc<Vec<f32>>>,
}

impl Clone for CpuTensor {
    fn clone(&self) -> Self {
        CpuTensor {
            shape: self.shape.clone(),
            data: ManuallyDrop::new(Arc::clone(&self.data)),
        }
    }
}

impl Drop for CpuTensor {
    fn drop(&mut self) {
        // SAFETY: `data` is never used again after this.
        let a = unsafe { ManuallyDrop::take(&mut self.data) };
        pool::give(a);
    }
}

impl PartialEq for CpuTensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data.as_slice() == other.data.as_slice()
    }
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: Vec<f32> = self.data.iter().take(8).copied().collect();
        write!(
            f,
            "CpuTensor{:?} {:?}{}",
            self.dims(),
            head,
            if self.data.len() > 8 { "…" } else { "" }
        )
    }
}

impl TensorLike for CpuTensor {
    fn dims(&self) -> &[usize] {
        self.shape.as_slice()
    }
}

impl CpuTensor {
    /// Builds a tensor, checking that `data` has as many elements as `shape`.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let n = checked_numel("from_vec", shape)?;
        if n != data.len() {
            return Err(TensorError::shape(
                "from_vec",
                format!(
                    "shape {shape:?} needs {n} elements but {} were given",
                    data.len()
                ),
            ));
        }
        Ok(Self::wrap(shape, Arc::new(data)))
    }

    fn wrap(shape: &[usize], data: Arc<Vec<f32>>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        CpuTensor {
            shape: Dims::new(shape),
            data: ManuallyDrop::new(data),
        }
    }

    fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self::wrap(&shape, Arc::new(data))
    }

    /// A tensor of `shape` whose elements `fill` writes (all of them) into a pooled buffer.
    fn build(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> Self {
        let n = shape.iter().product();
        let mut a = pool::take(n);
        fill(Arc::get_mut(&mut a).expect("pooled buffers are unique"));
        Self::wrap(shape, a)
    }

    /// A tensor of `shape` with zeros, then `fill` adds into it.
    fn build_zeroed(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> Self {
        let n = shape.iter().product();
        let mut a = pool::take_zeroed(n);
        fill(Arc::get_mut(&mut a).expect("pooled buffers are unique"));
        Self::wrap(shape, a)
    }

    /// The elements in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access to the elements (copies the buffer first if it is shared).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        if Arc::get_mut(&mut self.data).is_none() {
            let mut fresh = pool::take(self.data.len());
            Arc::get_mut(&mut fresh)
                .expect("pooled buffers are unique")
                .copy_from_slice(&self.data);
            let old = std::mem::replace(&mut *self.data, fresh);
            pool::give(old);
        }
        Arc::get_mut(&mut self.data)
            .expect("unique after copy")
            .as_mut_slice()
    }

    /// An ndarray view of the tensor.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        ArrayViewD::from_shape(IxDyn(self.dims()), &self.data).expect("shape matches data")
    }
}

/// The CPU backend. Cheap to copy; threads come from rayon's global pool (set its size with
/// `rayon::ThreadPoolBuilder::new().num_threads(n).build_global()`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Cpu {
    /// The CPU backend.
    pub fn new() -> Self {
        Cpu
    }
}

/// The instruction set the CPU kernels use: the one `SADDLE_CPU_ISA` asks for, or the fastest
/// this CPU runs. An unknown name or a set this CPU lacks is an error (the kernels then use the
/// fastest set; call this at startup to refuse instead, as the `saddle` CLI does).
pub fn cpu_isa() -> Result<Isa> {
    match Isa::from_env() {
        Ok(_) => Ok(kernel::isa()),
        Err(detail) => Err(TensorError::InvalidArgument {
            op: "cpu backend",
            detail,
        }),
    }
}

/// Runs `f` with this thread's Winograd convolutions on output tiles of `m × m`, `m` = 2
/// (F(2×2, 3×3)) or 4 (F(4×4, 3×3)), instead of the tile the backend picks per layer (F(4×4)
/// on every layer but small images with many channels). The two differ only in rounding (each
/// within the bound its tests derive against float64); F(2×2) is the closer to an exact
/// convolution, so a comparison with a float64 reference at a tight bar can ask for it. The
/// choice holds for the convolutions this thread starts inside `f` (nested calls restore the
/// outer choice); an `m` other than 2 or 4 is an error.
pub fn with_winograd_tile<R>(m: usize, f: impl FnOnce() -> R) -> Result<R> {
    if m != 2 && m != 4 {
        return Err(TensorError::invalid(
            "with_winograd_tile",
            format!(
                "Winograd tiles are 2 (F(2×2, 3×3)) or 4 (F(4×4, 3×3)) outputs a side, not {m}"
            ),
        ));
    }
    Ok(winograd::with_tile(m, f))
}

/// Element-wise work is split into chunks of this many elements (fixed, so results never
/// depend on the thread count; element-wise results do not anyway).
const CHUNK: usize = 1 << 14;
/// Below this many elements element-wise work stays on the calling thread.
const PAR_MIN: usize = 1 << 16;

/// Runs `f(chunk_index, chunk)` over fixed chunks of `out`, in parallel when it is large.
fn chunked(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    per_row(out, CHUNK, f)
}

/// If `small` broadcasts against `big` by repeating along leading axes only (its shape, leading
/// ones dropped, is a suffix of `big`'s), the period of the repetition.
fn suffix_period(big: &[usize], small: &[usize]) -> Option<usize> {
    if small.len() > big.len() {
        return None;
    }
    let lead = small.iter().take_while(|&&d| d == 1).count();
    let core = &small[lead..];
    (big[big.len() - core.len()..] == *core).then(|| core.iter().product())
}

/// If `small` broadcasts against `big` along leading and trailing axes only (aligned to the
/// right, its axes other than ones form one block equal to `big`'s axes there, as a per-channel
/// `[1, c, 1, 1]` or a `[n, c, 1, 1]` against `[n, c, h, w]`), `(mid, inner)`: element `i` of
/// `big` pairs with element `(i / inner) % mid` of `small`.
fn block_period(big: &[usize], small: &[usize]) -> Option<(usize, usize)> {
    if small.len() > big.len() {
        return None;
    }
    let off = big.len() - small.len();
    let lo = small.iter().position(|&d| d != 1)?;
    let hi = small.iter().rposition(|&d| d != 1)?;
    if big[off + lo..=off + hi] != small[lo..=hi] {
        return None;
    }
    let mid = small[lo..=hi].iter().product();
    let inner = big[off + hi + 1..].iter().product();
    Some((mid, inner))
}

/// `out[i] = f(big[i], small[(i / inner) % mid])`, a row of `inner` elements at a time, rows
/// spread over threads in fixed groups when the output is large.
fn rows_broadcast(
    big: &[f32],
    small: &[f32],
    mid: usize,
    inner: usize,
    out: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) {
    let per = CHUNK.div_ceil(inner).max(1);
    per_row(
        out,
        per * inner,
        #[inline(always)]
        |t, o| {
            let r0 = t * per;
            for (k, row) in o.chunks_mut(inner).enumerate() {
                let v = small[(r0 + k) % mid];
                let src = &big[(r0 + k) * inner..];
                for (d, &u) in row.iter_mut().zip(src) {
                    *d = f(u, v);
                }
            }
        },
    )
}

/// Runs `f` compiled for the instruction set the kernels use: `f` is inlined into a function
/// built with AVX-512 (or AVX2) enabled, so that the compiler vectorises its loops with those
/// registers rather than the build target's (SSE2 on x86-64). The same operations in the same
/// order, so the same bits: Rust neither fuses nor reorders floating-point arithmetic, only the
/// instructions chosen differ (tested: `vectorised_builds_agree`).
#[inline(always)]
fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match kernel::isa() {
        // SAFETY: `isa()` is AVX-512 only where this CPU runs AVX-512F.
        Isa::Avx512 => return unsafe { with_avx512(f) },
        // SAFETY: `isa()` is AVX2 only where this CPU runs AVX2.
        Isa::Avx2 => return unsafe { with_avx2(f) },
        Isa::Portable => {}
    }
    f()
}

/// `f()`, built with AVX-512F enabled (see [`vectorised`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()`, built with AVX2 enabled (see [`vectorised`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f(row_index, row)` over the rows of `row` elements of `out`, in parallel when `out` is
/// large, each row's work [`vectorised`]. Each row is written by one task, so results do not
/// depend on the number of threads.
fn per_row(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let row = row.max(1);
    let go = |(i, r): (usize, &mut [f32])| {
        vectorised(
            #[inline(always)]
            || f(i, r),
        )
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(row).enumerate().for_each(go);
    } else {
        out.chunks_mut(row).enumerate().for_each(go);
    }
}

/// Two `[c]` tensors from `f(channel)`, as [`per_channel_into`] without an output.
fn per_channel_pair(
    c: usize,
    parallel: bool,
    f: impl Fn(usize) -> (f32, f32) + Sync + Send,
) -> (CpuTensor, CpuTensor) {
    per_channel_into(
        &mut [],
        0,
        c,
        0,
        parallel,
        #[inline(always)]
        |ch, _| f(ch),
    )
}

/// One channel's planes of an `[n, c, s]` output, for the one task that computes the channel.
struct ChannelOut<'a> {
    base: *mut f32,
    n: usize,
    c: usize,
    s: usize,
    ch: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl ChannelOut<'_> {
    /// Image `i`'s plane of the channel, `out[i, ch, ..]`.
    #[inline(always)]
    fn plane(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.n, "plane {i} of {} images", self.n);
        // SAFETY: `base` is the start of an `[n, c, s]` slice borrowed mutably for the
        // lifetime of `self` (`per_channel_into`); the plane lies inside it (`i < n`,
        // `ch < c`); planes of different channels are disjoint, each channel has one
        // `ChannelOut`, and `&mut self` hands out one plane at a time.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add((i * self.c + self.ch) * self.s), self.s)
        }
    }
}

/// The start of an output whose channels' planes tasks write apart (see [`ChannelOut`]).
struct Planes(*mut f32);

// SAFETY: `Planes` is only read to make each channel's `ChannelOut`, whose planes are disjoint.
unsafe impl Sync for Planes {}

impl Planes {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Two `[c]` tensors from `f(channel, planes)` ([`vectorised`]), a channel per task (on
/// threads when `parallel`), so that each value is computed in one order whatever the number
/// of threads; `f` also writes the channel's planes of `out` (`[n, c, s]`), while the
/// channel's inputs are still in the cache from its sums.
fn per_channel_into(
    out: &mut [f32],
    n: usize,
    c: usize,
    s: usize,
    parallel: bool,
    f: impl Fn(usize, &mut ChannelOut) -> (f32, f32) + Sync + Send,
) -> (CpuTensor, CpuTensor) {
    assert_eq!(out.len(), n * c * s, "an [n, c, s] output");
    let base = Planes(out.as_mut_ptr());
    let mut st = pool::Scratch::new(2 * c);
    let go = |(ch, o): (usize, &mut [f32])| {
        let mut planes = ChannelOut {
            base: base.get(),
            n,
            c,
            s,
            ch,
            _out: std::marker::PhantomData,
        };
        let (a, b) = vectorised(
            #[inline(always)]
            || f(ch, &mut planes),
        );
        o[0] = a;
        o[1] = b;
    };
    if parallel {
        st.par_chunks_mut(2).enumerate().for_each(go);
    } else {
        st.chunks_mut(2).enumerate().for_each(go);
    }
    let pick = |k: usize| {
        CpuTensor::build(&[c], |m| {
            m.iter_mut()
                .enumerate()
                .for_each(|(ch, v)| *v = st[2 * ch + k])
        })
    };
    (pick(0), pick(1))
}

/// Asks the cache for `x`, the next image's plane of a channel that a per-channel loop reads
/// next: each plane starts a new page, where the hardware prefetcher stops (measured: the
/// batch-norm sums stalled on their first lines).
#[inline(always)]
fn prefetch_plane(x: &[f32]) {
    kernel::prefetch_row(x.as_ptr(), x.len());
}

/// Σ `x` in `f64`, over 8 interleaved lanes (so that it vectorises) combined in a fixed order.
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v as f64;
        }
    }
    let mut s: f64 = lanes.iter().sum();
    for &v in it.remainder() {
        s += v as f64;
    }
    s
}

/// Σ `(x − mu)²` in `f64`, lanes as [`sum_f64`].
#[inline(always)]
fn sq_dev_f64(x: &[f32], mu: f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, &v) in lanes.iter_mut().zip(c) {
            let d = v as f64 - mu;
            *l += d * d;
        }
    }
    let mut s: f64 = lanes.iter().sum();
    for &v in it.remainder() {
        let d = v as f64 - mu;
        s += d * d;
    }
    s
}

/// One channel's constants in the batch norm's input gradient
/// `k · (cnt · g − gb − x̂ · gg)`, `x̂ = (x − mu) · inv`.
#[derive(Clone, Copy)]
struct GradLine {
    mu: f32,
    inv: f32,
    k: f32,
    cnt: f32,
    gb: f32,
    gg: f32,
}

impl GradLine {
    /// `dst = k · (cnt · gz(y, gy) − gb − x̂ · gg)` over a plane, `gz` as in [`bn_grad_sums`]
    /// (written out with AVX2 instructions where the CPU has them: the same operations, so
    /// the same bits; the compiler's build of the generic loop was part scalar).
    #[inline(always)]
    fn apply(
        self,
        dst: &mut [f32],
        x: &[f32],
        gy: &[f32],
        y: &[f32],
        act: Option<Activation>,
        gz: impl Fn(f32, f32) -> f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        if matches!(kernel::isa(), Isa::Avx512 | Isa::Avx2) {
            // SAFETY: both sets include AVX2 (`isa()` names only a set this CPU runs).
            return unsafe { self.apply_avx2(dst, x, gy, y, act) };
        }
        let _ = act;
        self.apply_plain(dst, x, gy, y, gz)
    }

    #[inline(always)]
    fn apply_plain(
        self,
        dst: &mut [f32],
        x: &[f32],
        gy: &[f32],
        y: &[f32],
        gz: impl Fn(f32, f32) -> f32,
    ) {
        let GradLine {
            mu,
            inv,
            k,
            cnt,
            gb,
            gg,
        } = self;
        for (((d, &xv), &gv), &yv) in dst.iter_mut().zip(x).zip(gy).zip(y) {
            let xhat = (xv - mu) * inv;
            *d = k * (cnt * gz(yv, gv) - gb - xhat * gg);
        }
    }

    /// [`GradLine::apply_plain`] with AVX2 instructions (8 lanes, the rest by the plain loop).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(
        self,
        dst: &mut [f32],
        x: &[f32],
        gy: &[f32],
        y: &[f32],
        act: Option<Activation>,
    ) {
        use std::arch::x86_64::*;
        let n = dst.len().min(x.len()).min(gy.len()).min(y.len());
        let full = n / 8 * 8;
        let set = |v: f32| _mm256_set1_ps(v);
        let (mu, inv, k, cnt) = (set(self.mu), set(self.inv), set(self.k), set(self.cnt));
        let (gb, gg, zero) = (set(self.gb), set(self.gg), _mm256_setzero_ps());
        let slope = set(match act {
            Some(Activation::LeakyRelu(sl)) => sl,
            _ => 0.0,
        });
        for i in (0..full).step_by(8) {
            // SAFETY: `i + 8 <= full <= n`, within all four slices.
            let (xv, gv, yv) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                    _mm256_loadu_ps(gy.as_ptr().add(i)),
                    _mm256_loadu_ps(y.as_ptr().add(i)),
                )
            };
            let g = act_grad_avx2(act, yv, gv, zero, slope);
            let xhat = _mm256_mul_ps(_mm256_sub_ps(xv, mu), inv);
            let t = _mm256_sub_ps(
                _mm256_sub_ps(_mm256_mul_ps(cnt, g), gb),
                _mm256_mul_ps(xhat, gg),
            );
            // SAFETY: as the loads.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(k, t)) };
        }
        let gz = |y, g| act_grad(act, y, g);
        self.apply_plain(
            &mut dst[full..n],
            &x[full..n],
            &gy[full..n],
            &y[full..n],
            gz,
        );
    }
}

/// The gradient of an activation's input from its output `y` and output gradient `g` (`g`
/// itself without an activation) (the AVX2 loops' remainders).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn act_grad(act: Option<Activation>, y: f32, g: f32) -> f32 {
    act.map_or(g, |a| a.grad_from_output(y, g))
}

/// `Activation::pass_or_scale(y > 0, g)` on 8 lanes: `g` where `y > 0` (ordered: a NaN is
/// not), else 0 (ReLU) or `slope · g`; `g` itself without an activation.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn act_grad_avx2(
    act: Option<Activation>,
    y: std::arch::x86_64::__m256,
    g: std::arch::x86_64::__m256,
    zero: std::arch::x86_64::__m256,
    slope: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(y, zero);
    match act {
        None => g,
        Some(Activation::Relu) => _mm256_and_ps(pos, g),
        Some(Activation::LeakyRelu(_)) => _mm256_blendv_ps(_mm256_mul_ps(slope, g), g, pos),
    }
}

/// Σ `g` and Σ `g · ((x − mu) · inv)` as [`bn_grad_sums_plain`], where `g` is the gradient
/// of the batch norm's output: `gz(y, gy)`, which must be `act.grad_from_output(y, gy)` (`gy`
/// itself when `act` is `None`). On x86-64 CPUs with AVX2 the loop is written out with its
/// instructions ([`bn_grad_sums_avx2`], the same bits): left to the compiler, its `f64` sums
/// came out mostly scalar.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bn_grad_sums(
    x: &[f32],
    gy: &[f32],
    y: &[f32],
    mu: f32,
    inv: f32,
    act: Option<Activation>,
    gz: impl Fn(f32, f32) -> f32,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel::isa(), Isa::Avx512 | Isa::Avx2) {
        // SAFETY: both sets include AVX2 (`isa()` names only a set this CPU runs).
        return unsafe { bn_grad_sums_avx2(x, gy, y, mu, inv, act) };
    }
    let _ = act;
    bn_grad_sums_plain(x, gy, y, mu, inv, gz)
}

/// [`bn_grad_sums_plain`] with AVX2 instructions, for `gz` the gradient of `act` (or none):
/// the same operations on the same lanes (8 `f64` sums in two registers), so the same bits
/// (tested: `explicit_grad_sums_are_the_plain_loops_bits`). `g · x̂` is exact in `f64` (two
/// 24-bit significands), so its product and sum round only once either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bn_grad_sums_avx2(
    x: &[f32],
    gy: &[f32],
    y: &[f32],
    mu: f32,
    inv: f32,
    act: Option<Activation>,
) -> (f64, f64) {
    use std::arch::x86_64::*;
    let n = x.len().min(gy.len()).min(y.len());
    let full = n / 8 * 8;
    let (vmu, vinv, zero) = (_mm256_set1_ps(mu), _mm256_set1_ps(inv), _mm256_setzero_ps());
    let slope = match act {
        Some(Activation::LeakyRelu(sl)) => sl,
        _ => 0.0,
    };
    let vslope = _mm256_set1_ps(slope);
    let (mut a0, mut a1, mut b0, mut b1) = (
        _mm256_setzero_pd(),
        _mm256_setzero_pd(),
        _mm256_setzero_pd(),
        _mm256_setzero_pd(),
    );
    for i in (0..full).step_by(8) {
        // SAFETY: `i + 8 <= full <= n`, within all three slices.
        let (xv, gv, yv) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(gy.as_ptr().add(i)),
                _mm256_loadu_ps(y.as_ptr().add(i)),
            )
        };
        let xh = _mm256_mul_ps(_mm256_sub_ps(xv, vmu), vinv);
        let g = act_grad_avx2(act, yv, gv, zero, vslope);
        let (g0, g1) = (
            _mm256_cvtps_pd(_mm256_castps256_ps128(g)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(g)),
        );
        let (x0, x1) = (
            _mm256_cvtps_pd(_mm256_castps256_ps128(xh)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(xh)),
        );
        a0 = _mm256_add_pd(a0, g0);
        a1 = _mm256_add_pd(a1, g1);
        b0 = _mm256_add_pd(b0, _mm256_mul_pd(g0, x0));
        b1 = _mm256_add_pd(b1, _mm256_mul_pd(g1, x1));
    }
    let (mut la, mut lb) = ([0.0f64; 8], [0.0f64; 8]);
    // SAFETY: each array holds 8 `f64`, two registers of 4.
    unsafe {
        _mm256_storeu_pd(la.as_mut_ptr(), a0);
        _mm256_storeu_pd(la.as_mut_ptr().add(4), a1);
        _mm256_storeu_pd(lb.as_mut_ptr(), b0);
        _mm256_storeu_pd(lb.as_mut_ptr().add(4), b1);
    }
    let (mut sa, mut sb): (f64, f64) = (la.iter().sum(), lb.iter().sum());
    for i in full..n {
        let g = act_grad(act, y[i], gy[i]) as f64;
        sa += g;
        sb += g * ((x[i] - mu) * inv) as f64;
    }
    (sa, sb)
}

/// Σ `g` and Σ `g · ((x − mu) · inv)` (the normalised input rounded to `f32` first) in `f64`,
/// lanes as [`sum_f64`], where `g = gz(y, gy)`: the gradient of the batch norm's output, from
/// the gradient `gy` of a fused activation's output `y` (or `gy` itself, `y` then unused).
#[inline(always)]
fn bn_grad_sums_plain(
    x: &[f32],
    gy: &[f32],
    y: &[f32],
    mu: f32,
    inv: f32,
    gz: impl Fn(f32, f32) -> f32,
) -> (f64, f64) {
    let (mut a, mut b) = ([0.0f64; 8], [0.0f64; 8]);
    let (mut xi, mut gi, mut yi) = (x.chunks_exact(8), gy.chunks_exact(8), y.chunks_exact(8));
    for ((xc, gc), yc) in (&mut xi).zip(&mut gi).zip(&mut yi) {
        // The normalised inputs first, 8 f32 lanes, then the f64 sums.
        let mut xh = [0.0f32; 8];
        for l in 0..8 {
            xh[l] = (xc[l] - mu) * inv;
        }
        for l in 0..8 {
            let g = gz(yc[l], gc[l]) as f64;
            a[l] += g;
            b[l] += g * xh[l] as f64;
        }
    }
    let (mut sa, mut sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    let rest = xi
        .remainder()
        .iter()
        .zip(gi.remainder())
        .zip(yi.remainder());
    for ((&xv, &gv), &yv) in rest {
        let g = gz(yv, gv) as f64;
        sa += g;
        sb += g * ((xv - mu) * inv) as f64;
    }
    (sa, sb)
}

impl Cpu {
    fn binary(
        &self,
        op: &'static str,
        a: &CpuTensor,
        b: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Sync + Send,
    ) -> Result<CpuTensor> {
        let (ad, bd) = (a.dims(), b.dims());
        if ad == bd {
            let (x, y) = (a.as_slice(), b.as_slice());
            return Ok(CpuTensor::build(ad, |o| {
                chunked(
                    o,
                    #[inline(always)]
                    |i, c| {
                        let (xs, ys) = (&x[i * CHUNK..], &y[i * CHUNK..]);
                        for ((d, &u), &v) in c.iter_mut().zip(xs).zip(ys) {
                            *d = f(u, v);
                        }
                    },
                )
            }));
        }
        if let Some(per) = suffix_period(ad, bd).filter(|&p| p > 0) {
            let (x, y) = (a.as_slice(), b.as_slice());
            return Ok(CpuTensor::build(ad, |o| {
                chunked(
                    o,
                    #[inline(always)]
                    |i, c| {
                        let start = i * CHUNK;
                        for (t, (d, &u)) in c.iter_mut().zip(&x[start..]).enumerate() {
                            *d = f(u, y[(start + t) % per]);
                        }
                    },
                )
            }));
        }
        if let Some(per) = suffix_period(bd, ad).filter(|&p| p > 0) {
            let (x, y) = (a.as_slice(), b.as_slice());
            return Ok(CpuTensor::build(bd, |o| {
                chunked(
                    o,
                    #[inline(always)]
                    |i, c| {
                        let start = i * CHUNK;
                        for (t, (d, &v)) in c.iter_mut().zip(&y[start..]).enumerate() {
                            *d = f(x[(start + t) % per], v);
                        }
                    },
                )
            }));
        }
        if let Some((mid, inner)) = block_period(ad, bd).filter(|&(m, i)| m > 0 && i > 0) {
            let (x, y) = (a.as_slice(), b.as_slice());
            return Ok(CpuTensor::build(ad, |o| {
                rows_broadcast(x, y, mid, inner, o, f)
            }));
        }
        if let Some((mid, inner)) = block_period(bd, ad).filter(|&(m, i)| m > 0 && i > 0) {
            let (x, y) = (a.as_slice(), b.as_slice());
            return Ok(CpuTensor::build(bd, |o| {
                rows_broadcast(y, x, mid, inner, o, |v, u| f(u, v))
            }));
        }
        let out = broadcast_shape(op, ad, bd)?;
        checked_numel(op, &out)?;
        let av = a.view();
        let bv = b.view();
        let ab = av
            .broadcast(IxDyn(&out))
            .ok_or_else(|| TensorError::shape(op, "broadcast"))?;
        let bb = bv
            .broadcast(IxDyn(&out))
            .ok_or_else(|| TensorError::shape(op, "broadcast"))?;
        let r = Zip::from(&ab).and(&bb).map_collect(|&x, &y| f(x, y));
        let data = r.as_standard_layout().iter().copied().collect();
        Ok(CpuTensor::from_parts(out, data))
    }

    fn unary(&self, x: &CpuTensor, f: impl Fn(f32) -> f32 + Sync + Send) -> CpuTensor {
        let xs = x.as_slice();
        CpuTensor::build(x.dims(), |o| {
            chunked(
                o,
                #[inline(always)]
                |i, c| {
                    for (d, &v) in c.iter_mut().zip(&xs[i * CHUNK..]) {
                        *d = f(v);
                    }
                },
            )
        })
    }

    fn zip_same(
        &self,
        op: &'static str,
        x: &CpuTensor,
        gy: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Sync + Send,
    ) -> Result<CpuTensor> {
        same_shape(op, x.dims(), gy.dims())?;
        let (a, b) = (x.as_slice(), gy.as_slice());
        Ok(CpuTensor::build(x.dims(), |o| {
            chunked(
                o,
                #[inline(always)]
                |i, c| {
                    for ((d, &u), &v) in c.iter_mut().zip(&a[i * CHUNK..]).zip(&b[i * CHUNK..]) {
                        *d = f(u, v);
                    }
                },
            )
        }))
    }

    /// Sum over the axes of `x` given as `[outer, mid, inner]` with `mid` reduced, or the
    /// general case through ndarray. Fast paths: all axes, leading axes, all axes but one.
    fn sum_fast(&self, x: &CpuTensor, sorted: &[usize], out_shape: &[usize]) -> Option<CpuTensor> {
        let d = x.dims();
        let xs = x.as_slice();
        let nd = d.len();
        if sorted.is_empty() {
            return Some(CpuTensor::build(out_shape, |o| o.copy_from_slice(xs)));
        }
        if sorted.len() == nd {
            // Sum of everything in fixed chunks, combined in order.
            let mut parts = [0.0f64; 64];
            let per = xs.len().div_ceil(64).max(1);
            for (i, c) in xs.chunks(per).enumerate() {
                parts[i] = lane_sum(c);
            }
            let s: f64 = parts.iter().sum();
            return Some(CpuTensor::build(out_shape, |o| o[0] = s as f32));
        }
        // Leading axes 0..p reduced: column sums of a [rows, cols] matrix.
        if sorted.iter().enumerate().all(|(i, &a)| i == a) {
            let cols: usize = d[sorted.len()..].iter().product();
            return Some(CpuTensor::build(out_shape, |o| {
                o.fill(0.0);
                for row in xs.chunks(cols.max(1)) {
                    for (a, &b) in o.iter_mut().zip(row) {
                        *a += b;
                    }
                }
            }));
        }
        // All axes but one (`keep`): per-channel sums of [outer, c, inner], a channel per task.
        if sorted.len() + 1 == nd {
            let keep = (0..nd).find(|a| !sorted.contains(a))?;
            let outer: usize = d[..keep].iter().product();
            let c = d[keep];
            let inner: usize = d[keep + 1..].iter().product();
            let chan = |ch: usize| {
                vectorised(
                    #[inline(always)]
                    || {
                        let mut acc = 0.0f64;
                        for i in 0..outer {
                            acc += lane_sum(&xs[(i * c + ch) * inner..(i * c + ch + 1) * inner]);
                        }
                        acc as f32
                    },
                )
            };
            return Some(CpuTensor::build(out_shape, |o| {
                if xs.len() >= PAR_MIN {
                    o.par_iter_mut()
                        .enumerate()
                        .for_each(|(ch, dst)| *dst = chan(ch));
                } else {
                    o.iter_mut()
                        .enumerate()
                        .for_each(|(ch, dst)| *dst = chan(ch));
                }
            }));
        }
        // Trailing axes p..nd reduced (a global average pool's [n, c, h, w] → [n, c]): the sum
        // of each row of a [rows, inner] matrix.
        if sorted
            .iter()
            .enumerate()
            .all(|(i, &a)| a == nd - sorted.len() + i)
        {
            let inner: usize = d[nd - sorted.len()..].iter().product();
            let rows: usize = d[..nd - sorted.len()].iter().product();
            return Some(CpuTensor::build(out_shape, |o| {
                let per = CHUNK.div_ceil(inner).max(1);
                let go = |(t, dst): (usize, &mut [f32])| {
                    vectorised(
                        #[inline(always)]
                        || {
                            for (k, v) in dst.iter_mut().enumerate() {
                                let r = t * per + k;
                                *v = lane_sum(&xs[r * inner..(r + 1) * inner]) as f32;
                            }
                        },
                    )
                };
                if xs.len() >= PAR_MIN && rows > 1 {
                    o.par_chunks_mut(per).enumerate().for_each(go);
                } else {
                    o.chunks_mut(per).enumerate().for_each(go);
                }
            }));
        }
        None
    }
}

impl Cpu {
    /// `y = act((x − mean) · inv · gamma + beta)` per channel, `inv = 1/√(var + eps)`, an image
    /// per task (no activation when `act` is `None`).
    #[allow(clippy::too_many_arguments)]
    fn bn_apply(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        mean: &[f32],
        var: &[f32],
        eps: f32,
        c: usize,
        s: usize,
        act: Option<Activation>,
    ) -> CpuTensor {
        let p = BnPlanes {
            x: x.as_slice(),
            gamma: gamma.as_slice(),
            beta: beta.as_slice(),
            mean,
            var,
            eps,
            c,
            s,
        };
        // One loop per activation, each vectorised on its own (the variant is fixed in each).
        let d = x.dims();
        match act {
            None => CpuTensor::build(d, |o| p.apply(o, |v| v)),
            Some(Activation::Relu) => {
                CpuTensor::build(d, |o| p.apply(o, |v| Activation::Relu.apply(v)))
            }
            Some(Activation::LeakyRelu(sl)) => {
                CpuTensor::build(d, |o| p.apply(o, |v| Activation::LeakyRelu(sl).apply(v)))
            }
        }
    }
}

/// A batch norm's input and parameters, `[n, c, s]` planes.
struct BnPlanes<'a> {
    x: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    mean: &'a [f32],
    var: &'a [f32],
    eps: f32,
    c: usize,
    s: usize,
}

impl BnPlanes<'_> {
    /// `out = fa((x − mean) · inv · gamma + beta)`, an image per task.
    fn apply(&self, out: &mut [f32], fa: impl Fn(f32) -> f32 + Sync + Send) {
        let (c, s) = (self.c, self.s);
        per_row(
            out,
            c * s,
            #[inline(always)]
            |i, img| {
                for ch in 0..c {
                    let inv = 1.0 / (self.var[ch] + self.eps).sqrt();
                    let (g, b, mu) = (self.gamma[ch], self.beta[ch], self.mean[ch]);
                    let src = &self.x[(i * c + ch) * s..(i * c + ch + 1) * s];
                    for (d, &v) in img[ch * s..(ch + 1) * s].iter_mut().zip(src) {
                        *d = fa((v - mu) * inv * g + b);
                    }
                }
            },
        )
    }
}

impl Cpu {
    /// [`Backend::batch_norm_train`], then `act` if given, in the same pass as the output.
    fn bn_train(
        &self,
        op: &'static str,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        eps: f32,
        act: Option<Activation>,
    ) -> Result<(CpuTensor, BatchNormStats<CpuTensor>)> {
        let (n, c, s) = bn_layout(op, x.dims(), gamma.dims(), beta.dims())?;
        let cnt = (n * s) as f64;
        let xs = x.as_slice();
        let plane = |i: usize, ch: usize| &xs[(i * c + ch) * s..(i * c + ch + 1) * s];
        // Per channel: the mean, then the biased variance about it, both accumulated in f64.
        // (The output is written an image at a time after all of them: written a channel at a
        // time, while its planes are in the cache as the backward pass does, it measured no
        // faster, and slower on 8×8 planes.)
        let (mean, var) = per_channel_pair(
            c,
            xs.len() >= PAR_MIN,
            #[inline(always)]
            |ch| {
                // Plain loops (an iterator's `sum` is a call the vectorised build may not inline).
                let mut mu = 0.0f64;
                for i in 0..n {
                    if i + 1 < n {
                        prefetch_plane(plane(i + 1, ch));
                    }
                    mu += sum_f64(plane(i, ch));
                }
                mu /= cnt;
                let mut v = 0.0f64;
                for i in 0..n {
                    v += sq_dev_f64(plane(i, ch), mu);
                }
                (mu as f32, (v / cnt) as f32)
            },
        );
        let (m, v) = (mean.as_slice(), var.as_slice());
        let y = self.bn_apply(x, gamma, beta, m, v, eps, c, s, act);
        Ok((y, BatchNormStats { mean, var }))
    }

    /// [`Backend::batch_norm_eval`], then `act` if given, in the same pass.
    #[allow(clippy::too_many_arguments)]
    fn bn_eval(
        &self,
        op: &'static str,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        mean: &CpuTensor,
        var: &CpuTensor,
        eps: f32,
        act: Option<Activation>,
    ) -> Result<CpuTensor> {
        let (_, c, s) = bn_layout(op, x.dims(), gamma.dims(), beta.dims())?;
        if mean.dims() != [c] || var.dims() != [c] {
            return Err(TensorError::shape(
                op,
                format!(
                    "mean {:?} and var {:?} must be [{c}]",
                    mean.dims(),
                    var.dims()
                ),
            ));
        }
        let (m, v) = (mean.as_slice(), var.as_slice());
        Ok(self.bn_apply(x, gamma, beta, m, v, eps, c, s, act))
    }

    /// [`Backend::batch_norm_train_backward`]; with `fused = Some((y, act))`, `gy` is the
    /// gradient of the activation's output `y` and the batch norm's output gradient
    /// (`act.grad_from_output(y, gy)`) is formed on the fly, never stored.
    #[allow(clippy::too_many_arguments)]
    fn bn_train_backward(
        &self,
        op: &'static str,
        x: &CpuTensor,
        gamma: &CpuTensor,
        stats: &BatchNormStats<CpuTensor>,
        fused: Option<(&CpuTensor, Activation)>,
        gy: &CpuTensor,
        eps: f32,
    ) -> Result<BatchNormGrads<CpuTensor>> {
        let (_, c, _) = bn_layout(op, x.dims(), gamma.dims(), gamma.dims())?;
        same_shape(op, gy.dims(), x.dims())?;
        if stats.mean.dims() != [c] || stats.var.dims() != [c] {
            return Err(TensorError::shape(op, "statistics must be [c]"));
        }
        Ok(match fused {
            None => self.bn_backward_with(x, gamma, stats, gy, gy, eps, None, |_, g| g),
            Some((y, Activation::Relu)) => self.bn_backward_with(
                x,
                gamma,
                stats,
                y,
                gy,
                eps,
                Some(Activation::Relu),
                |y, g| Activation::Relu.grad_from_output(y, g),
            ),
            Some((y, Activation::LeakyRelu(sl))) => self.bn_backward_with(
                x,
                gamma,
                stats,
                y,
                gy,
                eps,
                Some(Activation::LeakyRelu(sl)),
                move |y, g| Activation::LeakyRelu(sl).grad_from_output(y, g),
            ),
        })
    }

    /// The batch-norm gradients with the output gradient `gz(y, gy)`, `act`'s
    /// gradient (`gy` itself for `None`; shapes checked).
    #[allow(clippy::too_many_arguments)]
    fn bn_backward_with(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        stats: &BatchNormStats<CpuTensor>,
        y: &CpuTensor,
        gy: &CpuTensor,
        eps: f32,
        act: Option<Activation>,
        gz: impl Fn(f32, f32) -> f32 + Sync + Send + Copy,
    ) -> BatchNormGrads<CpuTensor> {
        let d = x.dims();
        let (n, c) = (d[0], d[1]);
        let s: usize = d[2..].iter().product();
        let cnt = (n * s) as f32;
        let (xs, gs, ys) = (x.as_slice(), gy.as_slice(), y.as_slice());
        let (mean, var, gm) = (
            stats.mean.as_slice(),
            stats.var.as_slice(),
            gamma.as_slice(),
        );
        let inv = |ch: usize| 1.0 / (var[ch] + eps).sqrt();
        // Per channel: Σ g (beta's gradient) and Σ g·x̂ (gamma's), in f64, then the channel's
        // input gradient while its planes are still in the cache.
        let mut sums = None;
        let gx = CpuTensor::build(x.dims(), |out| {
            sums = Some(per_channel_into(
                out,
                n,
                c,
                s,
                xs.len() >= PAR_MIN,
                #[inline(always)]
                |ch, planes| {
                    let (mu, iv) = (mean[ch], inv(ch));
                    let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                    for i in 0..n {
                        let o = (i * c + ch) * s;
                        if i + 1 < n {
                            let next = o + c * s..o + c * s + s;
                            prefetch_plane(&xs[next.clone()]);
                            prefetch_plane(&gs[next.clone()]);
                            if !std::ptr::eq(ys, gs) {
                                prefetch_plane(&ys[next]);
                            }
                        }
                        let r = o..o + s;
                        let (a, b) =
                            bn_grad_sums(&xs[r.clone()], &gs[r.clone()], &ys[r], mu, iv, act, gz);
                        sg += a;
                        sgx += b;
                    }
                    let (gb, gg) = (sg as f32, sgx as f32);
                    let k = gm[ch] * iv / cnt;
                    for i in 0..n {
                        let o = (i * c + ch) * s;
                        let (xr, gr, yr) = (&xs[o..o + s], &gs[o..o + s], &ys[o..o + s]);
                        let line = GradLine {
                            mu,
                            inv: iv,
                            k,
                            cnt,
                            gb,
                            gg,
                        };
                        line.apply(planes.plane(i), xr, gr, yr, act, gz);
                    }
                    (gb, gg)
                },
            ));
        });
        let (gb, gg) = sums.expect("the channels ran");
        BatchNormGrads {
            x: gx,
            gamma: gg,
            beta: gb,
        }
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn from_vec(&self, shape: &[usize], data: Vec<f32>) -> Result<CpuTensor> {
        CpuTensor::new(shape, data)
    }

    fn to_vec(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.as_ref().clone())
    }

    fn to_vec_into(&self, x: &CpuTensor, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(x.as_slice());
        Ok(())
    }

    fn full(&self, shape: &[usize], value: f32) -> Result<CpuTensor> {
        checked_numel("full", shape)?;
        Ok(CpuTensor::build(shape, |o| o.fill(value)))
    }

    fn reshape(&self, x: &CpuTensor, shape: &[usize]) -> Result<CpuTensor> {
        if checked_numel("reshape", shape)? != x.data.len() {
            return Err(TensorError::shape(
                "reshape",
                format!("cannot reshape {:?} to {shape:?}", x.dims()),
            ));
        }
        Ok(CpuTensor::wrap(shape, Arc::clone(&x.data)))
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("add", a, b, |x, y| x + y)
    }
    fn sub(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("sub", a, b, |x, y| x - y)
    }
    fn mul(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("mul", a, b, |x, y| x * y)
    }
    fn div(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("div", a, b, |x, y| x / y)
    }
    fn minimum(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("minimum", a, b, f32::min)
    }
    fn maximum(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.binary("maximum", a, b, f32::max)
    }

    fn affine(&self, x: &CpuTensor, s: f32, t: f32) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| s * v + t))
    }
    fn sqrt(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.unary(x, f32::sqrt))
    }
    fn sign(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v * 0.0 // 0 stays 0 (keeping its sign bit), NaN stays NaN
            }
        }))
    }
    fn clamp(&self, x: &CpuTensor, lo: f32, hi: f32) -> Result<CpuTensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(TensorError::invalid(
                "clamp",
                format!("bounds [{lo}, {hi}] are not a range"),
            ));
        }
        Ok(self.unary(x, |v| v.max(lo).min(hi)))
    }
    fn relu(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| if v > 0.0 { v } else { 0.0 }))
    }
    fn relu_backward(&self, x: &CpuTensor, gy: &CpuTensor) -> Result<CpuTensor> {
        self.zip_same("relu_backward", x, gy, |v, g| if v > 0.0 { g } else { 0.0 })
    }
    fn leaky_relu(&self, x: &CpuTensor, slope: f32) -> Result<CpuTensor> {
        Ok(self.unary(x, |v| if v > 0.0 { v } else { slope * v }))
    }
    fn leaky_relu_backward(&self, x: &CpuTensor, gy: &CpuTensor, slope: f32) -> Result<CpuTensor> {
        self.zip_same("leaky_relu_backward", x, gy, |v, g| {
            if v > 0.0 {
                g
            } else {
                slope * g
            }
        })
    }

    fn sum_axes(&self, x: &CpuTensor, axes: &[usize], keep_dims: bool) -> Result<CpuTensor> {
        let dims = x.dims();
        let nd = dims.len();
        let mut sorted_buf = [0usize; INLINE_DIMS];
        let mut sorted_vec = Vec::new();
        let sorted: &mut [usize] = if axes.len() <= INLINE_DIMS {
            sorted_buf[..axes.len()].copy_from_slice(axes);
            &mut sorted_buf[..axes.len()]
        } else {
            sorted_vec.extend_from_slice(axes);
            &mut sorted_vec
        };
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0] == w[1] {
                return Err(TensorError::invalid(
                    "sum_axes",
                    format!("axis {} given twice", w[0]),
                ));
            }
        }
        if let Some(&a) = sorted.last() {
            if a >= nd {
                return Err(TensorError::invalid(
                    "sum_axes",
                    format!("axis {a} out of range for shape {dims:?}"),
                ));
            }
        }
        let mut out_buf = [0usize; INLINE_DIMS];
        let mut on = 0;
        if nd <= INLINE_DIMS {
            for (i, &d) in dims.iter().enumerate() {
                if sorted.contains(&i) {
                    if keep_dims {
                        out_buf[on] = 1;
                        on += 1;
                    }
                } else {
                    out_buf[on] = d;
                    on += 1;
                }
            }
            if x.numel() > 0 {
                if let Some(t) = self.sum_fast(x, sorted, &out_buf[..on]) {
                    return Ok(t);
                }
            }
        }
        // General case: reduce one axis at a time, highest first, with ndarray.
        let mut cur = x.view().to_owned();
        for &a in sorted.iter().rev() {
            cur = cur.sum_axis(ndarray::Axis(a));
            if keep_dims {
                cur = cur.insert_axis(ndarray::Axis(a));
            }
        }
        let shape = cur.shape().to_vec();
        let data = cur.as_standard_layout().iter().copied().collect();
        Ok(CpuTensor::from_parts(shape, data))
    }

    fn sum_to_shape(&self, x: &CpuTensor, shape: &[usize]) -> Result<CpuTensor> {
        let dims = x.dims();
        if dims == shape {
            return Ok(x.clone());
        }
        // The bias of a linear layer: [.., n] summed down to [n] (or [1, n]).
        if let Some(per) = suffix_period(dims, shape).filter(|&p| p > 0) {
            if shape.len() <= dims.len() && x.numel().is_multiple_of(per) {
                let xs = x.as_slice();
                return Ok(CpuTensor::build(shape, |o| {
                    o.fill(0.0);
                    for row in xs.chunks(per) {
                        for (a, &b) in o.iter_mut().zip(row) {
                            *a += b;
                        }
                    }
                }));
            }
        }
        crate::backend::sum_to_shape_default(self, x, shape)
    }

    fn matmul(&self, a: &CpuTensor, b: &CpuTensor, ta: bool, tb: bool) -> Result<CpuTensor> {
        let (ad, bd) = (a.dims(), b.dims());
        if ad.len() != 2 || bd.len() != 2 {
            return Err(TensorError::shape(
                "matmul",
                format!("operands {ad:?} and {bd:?} must be 2-D"),
            ));
        }
        let (m, k) = if ta { (ad[1], ad[0]) } else { (ad[0], ad[1]) };
        let (k2, n) = if tb { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        if k != k2 {
            return Err(TensorError::shape(
                "matmul",
                format!(
                    "inner sizes differ: {ad:?}{} · {bd:?}{}",
                    if ta { "ᵀ" } else { "" },
                    if tb { "ᵀ" } else { "" }
                ),
            ));
        }
        checked_numel("matmul", &[m, n])?;
        Ok(CpuTensor::build(&[m, n], |c| {
            kernel::matmul(m, k, n, a.as_slice(), ta, b.as_slice(), tb, c, true)
        }))
    }

    fn conv2d(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        self.conv2d_fused(x, w, bias, p, false)
    }

    fn conv2d_relu(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        self.conv2d_fused(x, w, bias, p, true)
    }

    fn conv2d_add(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        p: Conv2dParams,
        residual: &CpuTensor,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new("conv2d_add", x.dims(), w.dims(), p)?;
        let os = g.out_shape();
        check_residual(&os, residual.dims())?;
        let d = conv::forward_geometry(&g);
        let bias_ok = bias.is_none_or(|b| b.dims() == [g.k]);
        // The sum in the Winograd path's output pass; elsewhere (and for every error) the two
        // ops in sequence.
        if bias_ok && g.c > 0 && checked_numel("conv2d_add", &os)? > 0 && winograd::applies(&d) {
            return Ok(CpuTensor::build(&os, |o| {
                winograd::forward_add(
                    &d,
                    x.as_slice(),
                    w.as_slice(),
                    bias.map(|b| b.as_slice()),
                    residual.as_slice(),
                    o,
                )
            }));
        }
        let y = self.conv2d(x, w, bias, p)?;
        self.add(&y, residual)
    }

    fn conv2d_backward_input(
        &self,
        gy: &CpuTensor,
        w: &CpuTensor,
        input_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new("conv2d_backward_input", input_shape, w.dims(), p)?;
        same_shape("conv2d_backward_input", gy.dims(), &g.out_shape())?;
        let (ckk, ohw) = (g.c * g.kh * g.kw, g.oh * g.ow);
        let in_sz = g.c * g.h * g.w;
        let out_sz = g.k * ohw;
        if g.n * in_sz == 0 {
            return Ok(CpuTensor::build_zeroed(input_shape, |_| {}));
        }
        if out_sz == 0 {
            return Ok(CpuTensor::build_zeroed(input_shape, |_| {}));
        }
        let fd = conv::forward_geometry(&g);
        if winograd::applies_backward_input(&fd) {
            return Ok(CpuTensor::build(input_shape, |gx| {
                winograd::backward_input(&fd, gy.as_slice(), w.as_slice(), gx)
            }));
        }
        if let Some(d) = conv::backward_input_geometry(&g) {
            // A direct stride-1 convolution of the padded gradient with the flipped weights.
            let mut wt = pool::Scratch::new(conv::packed_len(g.c, g.k * g.kh * g.kw));
            conv::pack_backward_input(&g, w.as_slice(), &mut wt);
            return Ok(CpuTensor::build(input_shape, |gx| {
                conv::direct(&d, gy.as_slice(), &wt, None, false, gx)
            }));
        }
        let wd = w.as_slice();
        let gyd = gy.as_slice();
        Ok(CpuTensor::build(input_shape, |gx| {
            gx.par_chunks_mut(in_sz).enumerate().for_each(|(i, gxi)| {
                // cols = Wᵀ [ckk, k] · gy_i [k, ohw], then scattered back.
                let mut cols = pool::Scratch::new(ckk * ohw);
                kernel::matmul(
                    ckk,
                    g.k,
                    ohw,
                    wd,
                    true,
                    &gyd[i * out_sz..(i + 1) * out_sz],
                    false,
                    &mut cols,
                    false,
                );
                conv::col2im(&cols, &g, gxi);
            })
        }))
    }

    fn conv2d_backward_weight(
        &self,
        x: &CpuTensor,
        gy: &CpuTensor,
        weight_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<CpuTensor> {
        let g = ConvGeometry::new("conv2d_backward_weight", x.dims(), weight_shape, p)?;
        same_shape("conv2d_backward_weight", gy.dims(), &g.out_shape())?;
        let d = conv::forward_geometry(&g);
        if !conv::fits(&d, g.n) {
            return Err(TensorError::invalid(
                "conv2d_backward_weight",
                format!("input {:?} is too large for 32-bit offsets", x.dims()),
            ));
        }
        Ok(CpuTensor::build(weight_shape, |gw| {
            if g.n * g.oh * g.ow == 0 {
                gw.fill(0.0);
            } else if winograd::applies_backward_weight(&d) {
                winograd::backward_weight(&d, x.as_slice(), gy.as_slice(), gw)
            } else {
                conv::backward_weight(&d, x.as_slice(), gy.as_slice(), gw)
            }
        }))
    }

    fn max_pool2d(&self, x: &CpuTensor, size: usize) -> Result<CpuTensor> {
        let os = pool_out_shape("max_pool2d", x.dims(), size)?;
        let (h, w) = (x.dims()[2], x.dims()[3]);
        let (oh, ow) = (os[2], os[3]);
        let xs = x.as_slice();
        Ok(CpuTensor::build(&os, |out| {
            if out.is_empty() {
                return;
            }
            let planes = (CHUNK / (oh * ow).max(1)).max(1);
            let work = |(blk, ob): (usize, &mut [f32])| {
                for (pi, o) in ob.chunks_mut(oh * ow).enumerate() {
                    let plane = blk * planes + pi;
                    let src = &xs[plane * h * w..(plane + 1) * h * w];
                    if size == 2 {
                        for oi in 0..oh {
                            let r0 = &src[2 * oi * w..2 * oi * w + 2 * ow];
                            let r1 = &src[(2 * oi + 1) * w..(2 * oi + 1) * w + 2 * ow];
                            for (oj, d) in o[oi * ow..(oi + 1) * ow].iter_mut().enumerate() {
                                *d = max_first(&[
                                    r0[2 * oj],
                                    r0[2 * oj + 1],
                                    r1[2 * oj],
                                    r1[2 * oj + 1],
                                ]);
                            }
                        }
                        continue;
                    }
                    for oi in 0..oh {
                        for oj in 0..ow {
                            let mut m = f32::NEG_INFINITY;
                            let mut first = true;
                            for di in 0..size {
                                let row = &src[(oi * size + di) * w + oj * size..][..size];
                                for &v in row {
                                    if first || v > m || v.is_nan() {
                                        m = v;
                                        first = false;
                                    }
                                }
                            }
                            o[oi * ow + oj] = m;
                        }
                    }
                }
            };
            if out.len() >= PAR_MIN / 4 {
                out.par_chunks_mut(planes * oh * ow)
                    .enumerate()
                    .for_each(work);
            } else {
                out.chunks_mut(planes * oh * ow).enumerate().for_each(work);
            }
        }))
    }

    fn max_pool2d_backward(&self, x: &CpuTensor, gy: &CpuTensor, size: usize) -> Result<CpuTensor> {
        self.pool_backward("max_pool2d_backward", x, gy, size, false)
    }

    fn relu_max_pool2d_backward(
        &self,
        y: &CpuTensor,
        gy: &CpuTensor,
        size: usize,
    ) -> Result<CpuTensor> {
        self.pool_backward("relu_max_pool2d_backward", y, gy, size, true)
    }

    fn cross_entropy(&self, logits: &CpuTensor, labels: &CpuTensor) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cross_entropy", logits.dims(), labels.dims())?;
        check_labels("cross_entropy", labels.as_slice(), k)?;
        let (zs, ys) = (logits.as_slice(), labels.as_slice());
        Ok(CpuTensor::build(&[n], |out| {
            for (i, o) in out.iter_mut().enumerate() {
                let z = &zs[i * k..(i + 1) * k];
                let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // (m − z_y) + ln Σ exp(z − m): exact when the label holds the maximum.
                *o = (m - z[ys[i] as usize]) + z.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
            }
        }))
    }

    fn cross_entropy_backward(
        &self,
        logits: &CpuTensor,
        labels: &CpuTensor,
        gy: &CpuTensor,
    ) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cross_entropy_backward", logits.dims(), labels.dims())?;
        same_shape("cross_entropy_backward", gy.dims(), &[n])?;
        check_labels("cross_entropy_backward", labels.as_slice(), k)?;
        let (zs, ys, gs) = (logits.as_slice(), labels.as_slice(), gy.as_slice());
        Ok(CpuTensor::build(&[n, k], |out| {
            for i in 0..n {
                let z = &zs[i * k..(i + 1) * k];
                let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = z.iter().map(|&v| (v - m).exp()).sum();
                let o = &mut out[i * k..(i + 1) * k];
                for j in 0..k {
                    o[j] = (z[j] - m).exp() / s * gs[i];
                }
                o[ys[i] as usize] -= gs[i];
            }
        }))
    }

    fn cw_loss(&self, logits: &CpuTensor, labels: &CpuTensor, kappa: f32) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cw_loss", logits.dims(), labels.dims())?;
        if k < 2 {
            return Err(TensorError::shape("cw_loss", "needs at least two classes"));
        }
        check_labels("cw_loss", labels.as_slice(), k)?;
        let (zs, ys) = (logits.as_slice(), labels.as_slice());
        Ok(CpuTensor::build(&[n], |out| {
            for (i, o) in out.iter_mut().enumerate() {
                let z = &zs[i * k..(i + 1) * k];
                let y = ys[i] as usize;
                let (_, wrong) = max_other(z, y);
                *o = -(z[y] - wrong + kappa).max(0.0);
            }
        }))
    }

    fn cw_loss_backward(
        &self,
        logits: &CpuTensor,
        labels: &CpuTensor,
        kappa: f32,
        gy: &CpuTensor,
    ) -> Result<CpuTensor> {
        let (n, k) = check_logits_labels("cw_loss_backward", logits.dims(), labels.dims())?;
        if k < 2 {
            return Err(TensorError::shape(
                "cw_loss_backward",
                "needs at least two classes",
            ));
        }
        same_shape("cw_loss_backward", gy.dims(), &[n])?;
        check_labels("cw_loss_backward", labels.as_slice(), k)?;
        let (zs, ys, gs) = (logits.as_slice(), labels.as_slice(), gy.as_slice());
        Ok(CpuTensor::build_zeroed(&[n, k], |out| {
            for i in 0..n {
                let z = &zs[i * k..(i + 1) * k];
                let y = ys[i] as usize;
                let (j, wrong) = max_other(z, y);
                if z[y] - wrong + kappa > 0.0 {
                    out[i * k + y] = -gs[i];
                    out[i * k + j] = gs[i];
                }
            }
        }))
    }

    fn dlr_loss(
        &self,
        logits: &CpuTensor,
        labels: &CpuTensor,
        targets: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        let op = "dlr_loss";
        let (n, k) = check_dlr(op, logits.dims(), labels.dims(), targets.map(|t| t.dims()))?;
        let t = targets.map(|t| t.as_slice());
        let (loss, _) = dlr_rows(op, logits.as_slice(), labels.as_slice(), t, k, None)?;
        Ok(CpuTensor::from_parts(vec![n], loss))
    }

    fn dlr_loss_backward(
        &self,
        logits: &CpuTensor,
        labels: &CpuTensor,
        targets: Option<&CpuTensor>,
        gy: &CpuTensor,
    ) -> Result<CpuTensor> {
        let op = "dlr_loss_backward";
        let (n, k) = check_dlr(op, logits.dims(), labels.dims(), targets.map(|t| t.dims()))?;
        same_shape(op, gy.dims(), &[n])?;
        let t = targets.map(|t| t.as_slice());
        let g = Some(gy.as_slice());
        let (_, dz) = dlr_rows(op, logits.as_slice(), labels.as_slice(), t, k, g)?;
        Ok(CpuTensor::from_parts(vec![n, k], dz))
    }

    fn mul_rows(&self, x: &CpuTensor, s: &CpuTensor) -> Result<CpuTensor> {
        let n = match x.dims().first() {
            Some(&n) if s.dims() == [n] => n,
            _ => {
                return Err(TensorError::shape(
                    "mul_rows",
                    format!(
                        "{:?} must be [n, …] with one value per example in {:?} ([n])",
                        x.dims(),
                        s.dims()
                    ),
                ))
            }
        };
        let d = x.numel().checked_div(n).unwrap_or(0);
        let (xs, ss) = (x.as_slice(), s.as_slice());
        Ok(CpuTensor::build(x.dims(), |out| {
            for (i, &si) in ss.iter().enumerate() {
                let r = i * d..(i + 1) * d;
                for (o, &v) in out[r.clone()].iter_mut().zip(&xs[r]) {
                    *o = v * si;
                }
            }
        }))
    }

    fn select_rows(&self, mask: &CpuTensor, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        let op = "select_rows";
        same_shape(op, a.dims(), b.dims())?;
        let n = match a.dims().first() {
            Some(&n) if mask.dims() == [n] => n,
            _ => {
                return Err(TensorError::shape(
                    op,
                    format!(
                        "{:?} must be [n, …] with one mask value per example in {:?} ([n])",
                        a.dims(),
                        mask.dims()
                    ),
                ))
            }
        };
        let d = a.numel().checked_div(n).unwrap_or(0);
        let (ms, av, bv) = (mask.as_slice(), a.as_slice(), b.as_slice());
        Ok(CpuTensor::build(a.dims(), |out| {
            for (i, &m) in ms.iter().enumerate() {
                let r = i * d..(i + 1) * d;
                let src = if m != 0.0 {
                    &av[r.clone()]
                } else {
                    &bv[r.clone()]
                };
                out[r].copy_from_slice(src);
            }
        }))
    }

    fn restart_merge(
        &self,
        best: Option<&CpuTensor>,
        logits: &CpuTensor,
        loss: &CpuTensor,
        labels: &CpuTensor,
        targeted: bool,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let (n, k) = check_restart_merge(
            "restart_merge",
            best.map(|t| t.dims()),
            logits.dims(),
            loss.dims(),
            labels.dims(),
        )?;
        let (zs, ls, ys) = (logits.as_slice(), loss.as_slice(), labels.as_slice());
        let old = best.map(|t| t.as_slice());
        // Each example's merge is a few comparisons: computed again for the mask rather than
        // kept in a host vector, so that the op allocates nothing but its two pooled outputs.
        let row = |i: usize| {
            let cur = old.map(|o| [o[i], o[n + i], o[2 * n + i]]);
            restart_merge_row(cur, &zs[i * k..(i + 1) * k], ls[i], ys[i], targeted)
        };
        let merged = CpuTensor::build(&[3, n], |out| {
            for i in 0..n {
                let (_, r) = row(i);
                for (j, v) in r.into_iter().enumerate() {
                    out[j * n + i] = v;
                }
            }
        });
        let take = CpuTensor::build(&[n], |out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = if row(i).0 { 1.0 } else { 0.0 };
            }
        });
        Ok((take, merged))
    }

    fn batch_norm_train(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        eps: f32,
    ) -> Result<(CpuTensor, BatchNormStats<CpuTensor>)> {
        self.bn_train("batch_norm_train", x, gamma, beta, eps, None)
    }

    fn batch_norm_eval(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        mean: &CpuTensor,
        var: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor> {
        self.bn_eval("batch_norm_eval", x, gamma, beta, mean, var, eps, None)
    }

    fn batch_norm_train_backward(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        stats: &BatchNormStats<CpuTensor>,
        gy: &CpuTensor,
        eps: f32,
    ) -> Result<BatchNormGrads<CpuTensor>> {
        self.bn_train_backward("batch_norm_train_backward", x, gamma, stats, None, gy, eps)
    }

    fn batch_norm_act_train(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        eps: f32,
        act: Activation,
    ) -> Result<(CpuTensor, BatchNormStats<CpuTensor>)> {
        act.check("batch_norm_act_train")?;
        self.bn_train("batch_norm_act_train", x, gamma, beta, eps, Some(act))
    }

    fn batch_norm_act_eval(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        mean: &CpuTensor,
        var: &CpuTensor,
        eps: f32,
        act: Activation,
    ) -> Result<CpuTensor> {
        act.check("batch_norm_act_eval")?;
        self.bn_eval(
            "batch_norm_act_eval",
            x,
            gamma,
            beta,
            mean,
            var,
            eps,
            Some(act),
        )
    }

    fn batch_norm_act_train_backward(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        stats: &BatchNormStats<CpuTensor>,
        y: &CpuTensor,
        gy: &CpuTensor,
        eps: f32,
        act: Activation,
    ) -> Result<BatchNormGrads<CpuTensor>> {
        let op = "batch_norm_act_train_backward";
        act.check(op)?;
        same_shape(op, y.dims(), x.dims())?;
        self.bn_train_backward(op, x, gamma, stats, Some((y, act)), gy, eps)
    }

    fn pgd_step_linf(
        &self,
        x: &CpuTensor,
        x0: &CpuTensor,
        g: &CpuTensor,
        alpha: f32,
        eps: f32,
    ) -> Result<CpuTensor> {
        same_shape("pgd_step_linf", x.dims(), x0.dims())?;
        same_shape("pgd_step_linf", x.dims(), g.dims())?;
        let (xs, x0s, gs) = (x.as_slice(), x0.as_slice(), g.as_slice());
        Ok(CpuTensor::build(x.dims(), |o| {
            chunked(
                o,
                #[inline(always)]
                |i, c| {
                    let r = i * CHUNK..i * CHUNK + c.len();
                    let (xs, x0s, gs) = (&xs[r.clone()], &x0s[r.clone()], &gs[r]);
                    for (t, d) in c.iter_mut().enumerate() {
                        let (xv, x0v, gv) = (xs[t], x0s[t], gs[t]);
                        let s = if gv > 0.0 {
                            alpha
                        } else if gv < 0.0 {
                            -alpha
                        } else {
                            0.0
                        };
                        *d = (xv + s).max(x0v - eps).min(x0v + eps).clamp(0.0, 1.0);
                    }
                },
            )
        }))
    }

    fn project_linf(&self, x: &CpuTensor, x0: &CpuTensor, eps: f32) -> Result<CpuTensor> {
        same_shape("project_linf", x.dims(), x0.dims())?;
        let (xs, x0s) = (x.as_slice(), x0.as_slice());
        Ok(CpuTensor::build(x.dims(), |o| {
            chunked(
                o,
                #[inline(always)]
                |i, c| {
                    let r = i * CHUNK..i * CHUNK + c.len();
                    for ((d, &xv), &x0v) in c.iter_mut().zip(&xs[r.clone()]).zip(&x0s[r]) {
                        *d = xv.max(x0v - eps).min(x0v + eps).clamp(0.0, 1.0);
                    }
                },
            )
        }))
    }

    fn adam_update(
        &self,
        param: &mut CpuTensor,
        grad: &CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        h: AdamParams,
    ) -> Result<()> {
        same_shape("adam_update", param.dims(), grad.dims())?;
        same_shape("adam_update", param.dims(), m.dims())?;
        same_shape("adam_update", param.dims(), v.dims())?;
        let t = h.step.max(1) as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        let p = param.as_mut_slice();
        let ms = m.as_mut_slice();
        let vs = v.as_mut_slice();
        p.par_chunks_mut(1 << 14)
            .zip(ms.par_chunks_mut(1 << 14))
            .zip(vs.par_chunks_mut(1 << 14))
            .zip(grad.data.par_chunks(1 << 14))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
                    v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
                    let denom = (v[i] / bc2).sqrt() + h.eps;
                    p[i] -= h.lr * (m[i] / bc1) / denom;
                }
            });
        Ok(())
    }

    fn sgd_update(
        &self,
        param: &mut CpuTensor,
        grad: &CpuTensor,
        momentum_buf: &mut CpuTensor,
        h: SgdParams,
    ) -> Result<()> {
        same_shape("sgd_update", param.dims(), grad.dims())?;
        same_shape("sgd_update", param.dims(), momentum_buf.dims())?;
        let p = param.as_mut_slice();
        let b = momentum_buf.as_mut_slice();
        for i in 0..p.len() {
            let g = grad.data[i] + h.weight_decay * p[i];
            b[i] = h.momentum * b[i] + g;
            p[i] -= h.lr * b[i];
        }
        Ok(())
    }
}

impl Cpu {
    fn conv2d_fused(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        bias: Option<&CpuTensor>,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<CpuTensor> {
        let op = if relu { "conv2d_relu" } else { "conv2d" };
        let g = ConvGeometry::new(op, x.dims(), w.dims(), p)?;
        if let Some(b) = bias {
            if b.dims() != [g.k] {
                return Err(TensorError::shape(
                    op,
                    format!(
                        "bias {:?} must be [{}] for weight {:?}",
                        b.dims(),
                        g.k,
                        w.dims()
                    ),
                ));
            }
        }
        let os = g.out_shape();
        checked_numel(op, &os)?;
        let ckk = g.c * g.kh * g.kw;
        if os.iter().product::<usize>() == 0 {
            return Ok(CpuTensor::build(&os, |_| {}));
        }
        if ckk == 0 {
            let bs = bias.map(|b| b.as_slice());
            let ohw = g.oh * g.ow;
            return Ok(CpuTensor::build(&os, |o| {
                for (i, v) in o.iter_mut().enumerate() {
                    let b = bs.map_or(0.0, |b| b[(i / ohw) % g.k]);
                    *v = if relu && (b <= 0.0 || b.is_nan()) {
                        0.0
                    } else {
                        b
                    };
                }
            }));
        }
        let d = conv::forward_geometry(&g);
        if winograd::applies(&d) {
            return Ok(CpuTensor::build(&os, |o| {
                winograd::forward(
                    &d,
                    x.as_slice(),
                    w.as_slice(),
                    bias.map(|b| b.as_slice()),
                    relu,
                    o,
                )
            }));
        }
        let mut wt = pool::Scratch::new(conv::packed_len(g.k, ckk));
        conv::pack_forward(g.k, ckk, w.as_slice(), &mut wt);
        Ok(CpuTensor::build(&os, |o| {
            conv::direct(&d, x.as_slice(), &wt, bias.map(|b| b.as_slice()), relu, o)
        }))
    }

    /// Max-pool gradient: each window's gradient goes to its first maximum of `x`; with
    /// `relu_mask`, only where that maximum is positive (the gradient through ReLU then
    /// max-pool, given the ReLU's output).
    fn pool_backward(
        &self,
        op: &'static str,
        x: &CpuTensor,
        gy: &CpuTensor,
        size: usize,
        relu_mask: bool,
    ) -> Result<CpuTensor> {
        let os = pool_out_shape(op, x.dims(), size)?;
        same_shape(op, gy.dims(), &os)?;
        let (h, w) = (x.dims()[2], x.dims()[3]);
        let (oh, ow) = (os[2], os[3]);
        let (xs, gs) = (x.as_slice(), gy.as_slice());
        Ok(CpuTensor::build(x.dims(), |gx| {
            if gx.is_empty() {
                return;
            }
            let planes = (CHUNK / (h * w).max(1)).max(1);
            let work = |(blk, gb): (usize, &mut [f32])| {
                for (pi, gxp) in gb.chunks_mut(h * w).enumerate() {
                    let plane = blk * planes + pi;
                    let src = &xs[plane * h * w..(plane + 1) * h * w];
                    let g = &gs[plane * oh * ow..(plane + 1) * oh * ow];
                    if size == 2 {
                        // Every element of a window is written (windows tile the plane), so no
                        // zero fill; the first maximum (strict `>`) is chosen without branches,
                        // which random data would mispredict.
                        for oi in 0..oh {
                            let (r0, r1) = (2 * oi * w, (2 * oi + 1) * w);
                            let (top, bot) = gxp[r0..r1 + w].split_at_mut(w);
                            let (s0, s1) = (&src[r0..r0 + w], &src[r1..r1 + w]);
                            let gr = &g[oi * ow..(oi + 1) * ow];
                            let done = pool2_backward_row_simd(s0, s1, gr, top, bot, relu_mask);
                            for oj in done..ow {
                                let c = 2 * oj;
                                let (a, b, cc, d) = (s0[c], s0[c + 1], s1[c], s1[c + 1]);
                                let (mut m, mut i) = (a, 0u32);
                                let gt = b > m;
                                m = if gt { b } else { m };
                                i = if gt { 1 } else { i };
                                let gt = cc > m;
                                m = if gt { cc } else { m };
                                i = if gt { 2 } else { i };
                                let gt = d > m;
                                m = if gt { d } else { m };
                                i = if gt { 3 } else { i };
                                let gv = if !relu_mask || m > 0.0 { gr[oj] } else { 0.0 };
                                top[c] = if i == 0 { gv } else { 0.0 };
                                top[c + 1] = if i == 1 { gv } else { 0.0 };
                                bot[c] = if i == 2 { gv } else { 0.0 };
                                bot[c + 1] = if i == 3 { gv } else { 0.0 };
                            }
                            top[2 * ow..].fill(0.0);
                            bot[2 * ow..].fill(0.0);
                        }
                        gxp[2 * oh * w..].fill(0.0);
                        continue;
                    }
                    gxp.fill(0.0);
                    for oi in 0..oh {
                        for oj in 0..ow {
                            let mut best = (oi * size) * w + oj * size;
                            let mut m = src[best];
                            for di in 0..size {
                                for dj in 0..size {
                                    let idx = (oi * size + di) * w + oj * size + dj;
                                    if src[idx] > m {
                                        m = src[idx];
                                        best = idx;
                                    }
                                }
                            }
                            if !relu_mask || m > 0.0 {
                                gxp[best] += g[oi * ow + oj];
                            }
                        }
                    }
                }
            };
            if gx.len() >= PAR_MIN / 4 {
                gx.par_chunks_mut(planes * h * w).enumerate().for_each(work);
            } else {
                gx.chunks_mut(planes * h * w).enumerate().for_each(work);
            }
        }))
    }
}

/// Max-pool 2×2 gradient for one pair of input rows `s0`, `s1`, 16 windows at a time with
/// AVX-512 or 8 with AVX2 (same choice as the scalar loop: first strict maximum; with
/// `relu_mask` only where it is positive). Returns how many windows it handled (all, or none
/// with the portable kernels).
fn pool2_backward_row_simd(
    s0: &[f32],
    s1: &[f32],
    g: &[f32],
    top: &mut [f32],
    bot: &mut [f32],
    relu_mask: bool,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let n = g.len();
        let avx512 = kernel::use_avx512();
        if avx512 || kernel::isa() == Isa::Avx2 {
            assert!(
                s0.len() >= 2 * n && s1.len() >= 2 * n && top.len() >= 2 * n && bot.len() >= 2 * n
            );
            // SAFETY: the chosen instruction set is present (checked when it was chosen); all
            // accesses are within the lengths asserted above.
            unsafe {
                if avx512 {
                    pool2_avx512(n, s0, s1, g, top, bot, relu_mask)
                } else {
                    pool2_avx2(n, s0, s1, g, top, bot, relu_mask)
                }
            };
            return n;
        }
    }
    let _ = (s0, s1, g, top, bot, relu_mask);
    0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool2_avx512(
    n: usize,
    s0: &[f32],
    s1: &[f32],
    g: &[f32],
    top: &mut [f32],
    bot: &mut [f32],
    relu_mask: bool,
) {
    use std::arch::x86_64::*;
    let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    let zero = _mm512_setzero_ps();
    for j in (0..n).step_by(16) {
        // Masks for a last group of fewer than 16 windows (2 inputs and outputs per window).
        let lanes = (n - j).min(16);
        let kg: __mmask16 = if lanes == 16 { !0 } else { (1u16 << lanes) - 1 };
        let k0: __mmask16 = if lanes >= 8 {
            !0
        } else {
            (1u16 << (2 * lanes)) - 1
        };
        let k1: __mmask16 = if lanes == 16 {
            !0
        } else if lanes > 8 {
            (1u16 << (2 * lanes - 16)) - 1
        } else {
            0
        };
        // SAFETY: masked accesses touch only elements below 2n of the rows and n of `g`
        // (checked by the caller).
        unsafe {
            let (p0, p1) = (s0.as_ptr().add(2 * j), s1.as_ptr().add(2 * j));
            let x0 = _mm512_maskz_loadu_ps(k0, p0);
            let x1 = _mm512_maskz_loadu_ps(k1, p0.add(16));
            let y0 = _mm512_maskz_loadu_ps(k0, p1);
            let y1 = _mm512_maskz_loadu_ps(k1, p1.add(16));
            let a = _mm512_permutex2var_ps(x0, even, x1);
            let b = _mm512_permutex2var_ps(x0, odd, x1);
            let c = _mm512_permutex2var_ps(y0, even, y1);
            let d = _mm512_permutex2var_ps(y0, odd, y1);
            let mut m = a;
            let kb = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, m);
            m = _mm512_mask_blend_ps(kb, m, b);
            let kc = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(c, m);
            m = _mm512_mask_blend_ps(kc, m, c);
            let kd = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, m);
            m = _mm512_mask_blend_ps(kd, m, d);
            // Winner masks: d if kd; else c if kc; else b if kb; else a.
            let wd = kd;
            let wc = kc & !kd;
            let wb = kb & !kc & !kd;
            let wa = !(kb | kc | kd);
            let mut gv = _mm512_maskz_loadu_ps(kg, g.as_ptr().add(j));
            if relu_mask {
                let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, zero);
                gv = _mm512_maskz_mov_ps(pos, gv);
            }
            let va = _mm512_maskz_mov_ps(wa, gv);
            let vb = _mm512_maskz_mov_ps(wb, gv);
            let vc = _mm512_maskz_mov_ps(wc, gv);
            let vd = _mm512_maskz_mov_ps(wd, gv);
            let (t, u) = (top.as_mut_ptr().add(2 * j), bot.as_mut_ptr().add(2 * j));
            _mm512_mask_storeu_ps(t, k0, _mm512_permutex2var_ps(va, lo, vb));
            _mm512_mask_storeu_ps(t.add(16), k1, _mm512_permutex2var_ps(va, hi, vb));
            _mm512_mask_storeu_ps(u, k0, _mm512_permutex2var_ps(vc, lo, vd));
            _mm512_mask_storeu_ps(u.add(16), k1, _mm512_permutex2var_ps(vc, hi, vd));
        }
    }
}

/// [`pool2_avx512`] with 8 windows per step; a last group of fewer than 8 windows uses masked
/// loads and stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pool2_avx2(
    n: usize,
    s0: &[f32],
    s1: &[f32],
    g: &[f32],
    top: &mut [f32],
    bot: &mut [f32],
    relu_mask: bool,
) {
    let (s0, s1, g) = (s0.as_ptr(), s1.as_ptr(), g.as_ptr());
    let (top, bot) = (top.as_mut_ptr(), bot.as_mut_ptr());
    let full = n / 8 * 8;
    for j in (0..full).step_by(8) {
        // SAFETY: windows j..j+8 lie below n: inputs and outputs below 2n, gradients below n
        // (checked by the caller).
        unsafe {
            let i = 2 * j;
            pool2_avx2_step::<false>(
                s0.add(i),
                s1.add(i),
                g.add(j),
                top.add(i),
                bot.add(i),
                8,
                relu_mask,
            )
        };
    }
    if full < n {
        let (i, j) = (2 * full, full);
        // SAFETY: the masked step touches only windows full..n, as above.
        unsafe {
            pool2_avx2_step::<true>(
                s0.add(i),
                s1.add(i),
                g.add(j),
                top.add(i),
                bot.add(i),
                n - full,
                relu_mask,
            )
        };
    }
}

/// `r` windows (8, or with `MASKED` fewer) of [`pool2_avx2`]: `s0`, `s1`, `top`, `bot` hold
/// `2r` values, `g` `r`. `_mm256_shuffle_ps` splits each row's 16 values into the windows' first
/// and second elements within each 128-bit half, so lanes hold windows 0, 1, 4, 5, 2, 3, 6, 7;
/// the gradient is put in that order by one 64-bit permute, and `unpacklo`/`unpackhi` put the
/// outputs back in place without another cross-lane step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn pool2_avx2_step<const MASKED: bool>(
    s0: *const f32,
    s1: *const f32,
    g: *const f32,
    top: *mut f32,
    bot: *mut f32,
    r: usize,
    relu_mask: bool,
) {
    use std::arch::x86_64::*;
    const EVEN: i32 = 0b10_00_10_00;
    const ODD: i32 = 0b11_01_11_01;
    // 64-bit elements 0, 2, 1, 3: windows 0..8 into the shuffled order above.
    const ORDER: i32 = 0b11_01_10_00;
    // SAFETY: the caller vouches for `2r` values at `s0`, `s1`, `top`, `bot` and `r` at `g`;
    // with `MASKED` only those are read or written, without it `r` is 8.
    unsafe {
        // Lane masks: the first 8 and second 8 values of a row, and the gradients.
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let r = r as i32;
        let (k0, k1, kg) = (
            _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * r), idx),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * r - 8), idx),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(r), idx),
        );
        let load = |p: *const f32, k: __m256i| {
            if MASKED {
                _mm256_maskload_ps(p, k)
            } else {
                _mm256_loadu_ps(p)
            }
        };
        let store = |p: *mut f32, k: __m256i, v: __m256| {
            if MASKED {
                _mm256_maskstore_ps(p, k, v)
            } else {
                _mm256_storeu_ps(p, v)
            }
        };
        let (x0, x1) = (load(s0, k0), load(s0.add(8), k1));
        let (y0, y1) = (load(s1, k0), load(s1.add(8), k1));
        let a = _mm256_shuffle_ps::<EVEN>(x0, x1);
        let b = _mm256_shuffle_ps::<ODD>(x0, x1);
        let c = _mm256_shuffle_ps::<EVEN>(y0, y1);
        let d = _mm256_shuffle_ps::<ODD>(y0, y1);
        let mut m = a;
        let kb = _mm256_cmp_ps::<_CMP_GT_OQ>(b, m);
        m = _mm256_blendv_ps(m, b, kb);
        let kc = _mm256_cmp_ps::<_CMP_GT_OQ>(c, m);
        m = _mm256_blendv_ps(m, c, kc);
        let kd = _mm256_cmp_ps::<_CMP_GT_OQ>(d, m);
        m = _mm256_blendv_ps(m, d, kd);
        let gw = _mm256_castps_pd(load(g, kg));
        let mut gv = _mm256_castpd_ps(_mm256_permute4x64_pd::<ORDER>(gw));
        if relu_mask {
            gv = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps()));
        }
        // Winners: d if kd; else c if kc; else b if kb; else a. The masks are all ones or
        // zero, so `and` keeps the gradient's bits or gives +0.0, as the scalar loop does.
        let vd = _mm256_and_ps(kd, gv);
        let vc = _mm256_andnot_ps(kd, _mm256_and_ps(kc, gv));
        let vb = _mm256_andnot_ps(_mm256_or_ps(kc, kd), _mm256_and_ps(kb, gv));
        let va = _mm256_andnot_ps(_mm256_or_ps(kb, _mm256_or_ps(kc, kd)), gv);
        store(top, k0, _mm256_unpacklo_ps(va, vb));
        store(top.add(8), k1, _mm256_unpackhi_ps(va, vb));
        store(bot, k0, _mm256_unpacklo_ps(vc, vd));
        store(bot.add(8), k1, _mm256_unpackhi_ps(vc, vd));
    }
}

/// Sum of `x` in 16 interleaved `f32` lanes (so the compiler vectorises it), combined in `f64`
/// in a fixed order.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let mut s: f64 = lanes.iter().map(|&v| v as f64).sum();
    for &v in it.remainder() {
        s += v as f64;
    }
    s
}

/// The maximum of a window, NaN-propagating like the general loop (a NaN wins; ties keep the
/// first).
#[inline]
fn max_first(v: &[f32; 4]) -> f32 {
    let mut m = v[0];
    for &x in &v[1..] {
        if x > m || x.is_nan() {
            m = x;
        }
    }
    m
}

/// Index and value of the largest logit other than `y` (first one on ties).
fn max_other(z: &[f32], y: usize) -> (usize, f32) {
    let mut best = (usize::MAX, f32::NEG_INFINITY);
    for (j, &v) in z.iter().enumerate() {
        if j != y && (best.0 == usize::MAX || v > best.1) {
            best = (j, v);
        }
    }
    best
}

#[cfg(test)]
mod vectorised_tests {
    use super::*;

    /// The batch-norm sums and an element-wise row (the work [`vectorised`] recompiles) on
    /// data with a wide dynamic range and lengths that leave remainders, as bit patterns
    /// (always inlined, so that each build below compiles it with its own instructions).
    #[inline(always)]
    fn sums_and_row() -> Vec<u64> {
        let x: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919 % 1000) as f32 - 431.5) * 1.37e-3 * (1.0 + (i % 13) as f32))
            .collect();
        let gy: Vec<f32> = (0..1037)
            .map(|i| ((i * 104_729 % 977) as f32 - 500.0) * 3.1e-4)
            .collect();
        let (mu, inv) = (0.0123f32, 7.77f32);
        let (a, b) = bn_grad_sums_plain(&x, &gy, &gy, mu, inv, |_, g| g);
        let leaky = |y, g| Activation::LeakyRelu(0.1).grad_from_output(y, g);
        let (fa, fb) = bn_grad_sums_plain(&x, &gy, &x, mu, inv, leaky);
        let mut bits = vec![
            sum_f64(&x).to_bits(),
            sq_dev_f64(&x, 0.0123).to_bits(),
            a.to_bits(),
            b.to_bits(),
            fa.to_bits(),
            fb.to_bits(),
            lane_sum(&x).to_bits(),
        ];
        let row: Vec<f32> = x
            .iter()
            .zip(&gy)
            .map(|(&v, &g)| (v - mu) * inv * 1.3 + g / 0.7 - (v * g).max(0.0))
            .collect();
        bits.extend(row.iter().map(|v| v.to_bits() as u64));
        bits
    }

    /// Whatever build runs them, the sums and the element-wise row give the same bits. A
    /// reassociated sum (say, the lanes combined in another order) changes the last bits of
    /// these values and fails this test.
    #[test]
    fn vectorised_builds_agree() {
        let plain = sums_and_row();
        assert_eq!(
            vectorised(sums_and_row),
            plain,
            "build for {:?}",
            kernel::isa()
        );
        #[cfg(target_arch = "x86_64")]
        {
            let mut ran = 0;
            if Isa::Avx512.supported() {
                // SAFETY: this CPU runs AVX-512F (checked just above).
                assert_eq!(unsafe { with_avx512(sums_and_row) }, plain, "AVX-512 build");
                ran += 1;
            }
            if Isa::Avx2.supported() {
                // SAFETY: this CPU runs AVX2 (checked just above).
                assert_eq!(unsafe { with_avx2(sums_and_row) }, plain, "AVX2 build");
                ran += 1;
            }
            // The CI machines have both; on an x86-64 CPU with neither this test compares only
            // the plain build with itself, and says so.
            if ran == 0 {
                eprintln!("vectorised_builds_agree: this CPU has neither AVX2 nor AVX-512");
            }
        }
    }

    /// The batch-norm gradient sums and input gradient written out with AVX2 instructions give
    /// the plain loops' bits, for each fused activation, on lengths with and without a remainder of 8 and on
    /// outputs of both signs, zeros and a NaN (ordered `y > 0`: a NaN passes no gradient).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn explicit_grad_sums_are_the_plain_loops_bits() {
        if !Isa::Avx2.supported() {
            // The explicit loop runs only where AVX2 does (CI's machines have it).
            eprintln!("explicit_grad_sums_are_the_plain_loops_bits: this CPU has no AVX2");
            return;
        }
        for len in [0usize, 5, 8, 64, 1037] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 431.5) * 1.37e-3 * (1.0 + (i % 13) as f32))
                .collect();
            let gy: Vec<f32> = (0..len)
                .map(|i| ((i * 104_729 % 977) as f32 - 500.0) * 3.1e-4)
                .collect();
            let mut y: Vec<f32> = (0..len)
                .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.25)
                .collect();
            if len > 3 {
                y[3] = f32::NAN;
            }
            let (mu, inv) = (0.0123f32, 7.77f32);
            for act in [
                None,
                Some(Activation::Relu),
                Some(Activation::LeakyRelu(0.1)),
            ] {
                let gz = |y, g| act_grad(act, y, g);
                let plain = bn_grad_sums_plain(&x, &gy, &y, mu, inv, gz);
                // SAFETY: this CPU runs AVX2 (checked above).
                let fast = unsafe { bn_grad_sums_avx2(&x, &gy, &y, mu, inv, act) };
                assert_eq!(
                    (fast.0.to_bits(), fast.1.to_bits()),
                    (plain.0.to_bits(), plain.1.to_bits()),
                    "length {len}, {act:?}: {fast:?} against {plain:?}"
                );
                let line = GradLine {
                    mu,
                    inv,
                    k: 0.37,
                    cnt: len as f32,
                    gb: plain.0 as f32,
                    gg: plain.1 as f32,
                };
                let (mut want, mut got) = (vec![0.0f32; len], vec![0.0f32; len]);
                line.apply_plain(&mut want, &x, &gy, &y, gz);
                // SAFETY: this CPU runs AVX2 (checked above).
                unsafe { line.apply_avx2(&mut got, &x, &gy, &y, act) };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "input gradient, length {len}, {act:?}"
                );
            }
        }
    }
}
