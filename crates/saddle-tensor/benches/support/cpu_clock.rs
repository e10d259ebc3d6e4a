//! CPU-time clocks for the benches and examples of saddle-tensor (`#[path]`-included by
//! `benches/ops.rs` and `examples/pgd_ops.rs`): CPU time is what holds on a shared machine.

/// The CPU time of the whole process (all threads), in seconds; NaN off Linux.
#[allow(dead_code)]
pub fn process() -> f64 {
    clock(2) // CLOCK_PROCESS_CPUTIME_ID
}

/// The CPU time of the calling thread, in seconds; NaN off Linux.
#[allow(dead_code)]
pub fn thread() -> f64 {
    clock(3) // CLOCK_THREAD_CPUTIME_ID
}

#[cfg(target_os = "linux")]
fn clock(id: i32) -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { clock_gettime(id, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn clock(_: i32) -> f64 {
    f64::NAN
}
