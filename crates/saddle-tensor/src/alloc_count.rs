//! A counting global allocator for tests that assert how often shipped code allocates
//! (`crates/saddle-attacks/tests/alloc.rs`, `crates/saddle-train/tests/alloc.rs`).
//!
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;` and measures with [`counted`].
//! Counting is per thread: only the thread that turned it on counts, so the test harness's other
//! threads do not disturb a measurement (run the measured code on that thread, for the CPU
//! backend inside a one-thread rayon pool).

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// The system allocator, counting the allocations (and reallocations) of threads that turned
/// counting on.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    static TRACE: Cell<bool> = const { Cell::new(false) };
    /// Set while the allocator itself allocates (capturing a backtrace): not counted.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    static TRACES: RefCell<Vec<Backtrace>> = const { RefCell::new(Vec::new()) };
}

fn note(size: usize) {
    // `try_with`: an allocation during thread teardown is not counted (and must not panic).
    let _ = ON.try_with(|on| {
        if !on.get() || IN_HOOK.get() {
            return;
        }
        COUNT.set(COUNT.get() + 1);
        BYTES.set(BYTES.get() + size as u64);
        if TRACE.get() {
            IN_HOOK.set(true);
            let bt = Backtrace::force_capture();
            TRACES.with_borrow_mut(|t| t.push(bt));
            IN_HOOK.set(false);
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the counting touches only `const`-initialised thread-locals (no allocation, no destructor)
// except while tracing, where the nested allocations are excluded by `IN_HOOK`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` with counting on for this thread; returns `(allocations, bytes, f's result)`. The
/// result is dropped by the caller, outside the count (a deallocation is never counted anyway).
pub fn counted<R>(f: impl FnOnce() -> R) -> (u64, u64, R) {
    COUNT.set(0);
    BYTES.set(0);
    ON.set(true);
    let r = f();
    ON.set(false);
    (COUNT.get(), BYTES.get(), r)
}

/// Runs `f` with backtraces captured for each allocation, and summarises them: for each
/// distinct chain of this workspace's frames (innermost first, at most 4), how many
/// allocations it made.
pub fn traced<R>(package: &str, f: impl FnOnce() -> R) -> (String, R) {
    TRACE.set(true);
    let (n, _, r) = counted(f);
    TRACE.set(false);
    let traces = TRACES.take();
    let mut sites: BTreeMap<String, u64> = BTreeMap::new();
    for bt in &traces {
        let text = bt.to_string();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut chain = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            // A frame line is `N: symbol`, followed by `at path:line:col`; keep this
            // workspace's library frames (symbols may be printed without their paths).
            let Some((_, sym)) = l.split_once(": ") else {
                continue;
            };
            let Some(at) = lines.get(i + 1).and_then(|a| a.strip_prefix("at ")) else {
                continue;
            };
            // Paths are absolute, relative to the workspace (`crates/…`) or, for this
            // package, to the package (`src/…`).
            let rel = if let Some((_, r)) = at.split_once("crates/saddle-") {
                format!("saddle-{r}")
            } else if let Some(r) = at.strip_prefix("src/").or(at.strip_prefix("./src/")) {
                format!("{package}/src/{r}")
            } else {
                continue;
            };
            // The allocator's own frames say nothing about where the allocation comes from.
            if rel.contains("alloc_count.rs") {
                continue;
            }
            let sym = sym.split('<').next().unwrap_or(sym);
            chain.push(format!("{sym} ({rel})"));
            if chain.len() == 4 {
                break;
            }
        }
        *sites.entry(chain.join("\n      <- ")).or_default() += 1;
    }
    let mut out = format!("{n} allocations:\n");
    let mut v: Vec<_> = sites.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (site, k) in v {
        out.push_str(&format!("  {k:>4} × {site}\n"));
    }
    (out, r)
}

/// This thread's count so far (while counting is off it does not move).
pub fn count() -> u64 {
    COUNT.get()
}

/// The fewest allocations among the measurements `(key, allocations, bytes)` of `key`: the
/// count of the measured code itself, when now and then a call also counts an allocation that
/// is not its own (a test running beside it grows rayon's or the allocator's shared
/// structures).
///
/// # Panics
/// No measurement of `key`.
pub fn fewest<K: PartialEq + std::fmt::Debug>(counts: &[(K, u64, u64)], key: K) -> u64 {
    counts
        .iter()
        .filter(|c| c.0 == key)
        .map(|c| c.1)
        .min()
        .unwrap_or_else(|| panic!("no measurement of {key:?}"))
}
