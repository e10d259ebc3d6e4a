//! A recycling pool for the CPU backend's buffers, so that a PGD step or a training step
//! allocates nothing once the first step has run.
//!
//! Tensors hold their data as `Arc<Vec<f32>>`. When the last handle to a buffer is dropped, the
//! whole `Arc` (its control block and its vector) goes back to the pool under its length; the
//! next request for that length takes it back out. A loop that repeats the same shapes (a PGD
//! attack, a training run) therefore stops allocating after its first iteration. Scratch space
//! inside the kernels (padded images, packed panels) comes from the same pool.
//!
//! The pool is bounded ([`MAX_POOLED_BYTES`] in all, [`MAX_PER_LEN`] buffers per length), so
//! peak memory stays flat over a long run with changing shapes: a buffer that does not fit is
//! simply freed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Upper bound on the bytes kept for reuse.
pub const MAX_POOLED_BYTES: usize = 1 << 30;
/// Upper bound on the buffers kept for one length.
pub const MAX_PER_LEN: usize = 64;

#[derive(Default)]
struct Inner {
    free: HashMap<usize, Vec<Arc<Vec<f32>>>>,
    bytes: usize,
}

fn pool() -> &'static Mutex<Inner> {
    static POOL: OnceLock<Mutex<Inner>> = OnceLock::new();
    POOL.get_or_init(|| {
        Mutex::new(Inner {
            free: HashMap::with_capacity(256),
            bytes: 0,
        })
    })
}

/// A uniquely owned buffer of `len` elements whose contents are unspecified (stale values of an
/// earlier tensor, or zeros when freshly allocated). Callers overwrite every element.
pub(crate) fn take(len: usize) -> Arc<Vec<f32>> {
    if len > 0 {
        let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = p.free.get_mut(&len).and_then(|l| l.pop()) {
            p.bytes -= len * 4;
            return v;
        }
    }
    Arc::new(vec![0.0; len])
}

/// A uniquely owned buffer of `len` zeros.
pub(crate) fn take_zeroed(len: usize) -> Arc<Vec<f32>> {
    let mut a = take(len);
    Arc::get_mut(&mut a)
        .expect("pooled buffers are unique")
        .fill(0.0);
    a
}

/// Gives a buffer back: kept for reuse if this was its last handle and the pool has room.
pub(crate) fn give(mut a: Arc<Vec<f32>>) {
    let len = a.len();
    if len == 0 || Arc::get_mut(&mut a).is_none() {
        return;
    }
    let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
    if p.bytes + len * 4 > MAX_POOLED_BYTES {
        return;
    }
    let list = p
        .free
        .entry(len)
        .or_insert_with(|| Vec::with_capacity(MAX_PER_LEN));
    if list.len() >= MAX_PER_LEN {
        return;
    }
    list.push(a);
    p.bytes += len * 4;
}

/// Bytes currently held for reuse (for tests and benchmarks).
pub fn pooled_bytes() -> usize {
    pool().lock().unwrap_or_else(|e| e.into_inner()).bytes
}

/// A scratch buffer from the pool, returned to it on drop.
pub(crate) struct Scratch(Option<Arc<Vec<f32>>>);

impl Scratch {
    /// `len` elements of unspecified contents.
    pub fn new(len: usize) -> Self {
        Scratch(Some(take(len)))
    }

    /// `len` zeros.
    #[allow(dead_code)]
    pub fn zeroed(len: usize) -> Self {
        Scratch(Some(take_zeroed(len)))
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.0.as_ref().expect("live scratch")
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        Arc::get_mut(self.0.as_mut().expect("live scratch")).expect("scratch is unique")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            give(a);
        }
    }
}
