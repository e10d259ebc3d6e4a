//! `cargo xtask fuzz [--cases N] [--seed S] [--target NAME]...`: a seeded mutation fuzzer for
//! every reader of untrusted bytes: the safetensors model loader for each architecture
//! (`mnist`, `wrn-madry`, `wrn`), the `.npy` reader of the CLI, the TOML training config, and
//! the IDX and CIFAR-10 binary readers.
//!
//! Each target starts from small valid files built in code (seeds) and feeds `N` mutants of
//! them (default 100,000 per target; CI runs 2,000): bit flips, byte and integer overwrites with
//! boundary values, truncation, insertion, deletion and duplication of ranges, numbers in text
//! headers replaced by huge, negative or non-numeric ones, NaN and infinite values written into
//! the data, and format-aware changes (header lengths, dimensions, dtypes, shapes, labels, the
//! `arch` and `scale` metadata of a model file). The same seed gives the same inputs.
//!
//! Every case runs under [`std::panic::catch_unwind`] and under a counting global allocator
//! ([`CountingAlloc`], installed in `main.rs`). A case **fails** when the reader panics, or
//! when the bytes it holds at its peak exceed [`limit`] for the input: `64 × len + 1 MiB` (a
//! reader may hold the input's values as f32 — 4 bytes per input byte for `|u1` data — a
//! parsed copy, a network's freshly initialised weights beside the loaded ones, and
//! `Vec`-doubling slack; 64× covers all of that with room, while any allocation sized by a
//! header's claim instead of the data is far beyond it), and for gzip input
//! `4 × 1100 × len + 1 MiB` (the IDX reader decompresses at most 1,100 bytes per compressed byte,
//! deflate's own ceiling being about 1,032; the buffer may double while growing and the pixels
//! are copied once). A single request above 16 × that limit (and at least 256 MiB) is not
//! attempted: the fuzzer saves the input and aborts at once, since a request of, say, 10¹²
//! elements would only fail inside the allocator. Failing inputs are written to
//! `target/fuzz/` (the first five per target and kind). The task prints each target's counts
//! and exits non-zero on any panic or allocation beyond the limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use saddle_models::{Arch, Classifier, Model};
use saddle_tensor::cpu::Cpu;
use saddle_train::TrainConfig;

/// The CLI's `.npy` reader, compiled here from its source file (saddle-cli is a binary crate).
#[allow(dead_code)]
#[path = "../../crates/saddle-cli/src/npy.rs"]
mod npy;

/// Arguments of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Malformed inputs per target.
    #[arg(long, default_value_t = 100_000)]
    pub cases: u64,
    /// Seed of the mutations (the same seed gives the same inputs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only these targets (repeatable); all by default.
    #[arg(long)]
    pub target: Vec<String>,
    /// Where failing inputs are saved.
    #[arg(long, default_value = "target/fuzz")]
    pub out: PathBuf,
}

// ---- the counting allocator ----------------------------------------------------------------

/// Bytes currently allocated through the global allocator.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// The most bytes allocated at once since the last reset.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// A single request above this aborts the fuzzer after saving the input (`usize::MAX`: off).
static HARD_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The input of the running case, for the report of an aborting request.
static INPUT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
/// Where the aborting report saves the input, and the running target's name.
static ABORT_INFO: OnceLock<Mutex<(PathBuf, &'static str)>> = OnceLock::new();

thread_local! {
    /// Set while reporting an oversized request, so that the report's own allocations pass.
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// The global allocator of the xtask binary: the system allocator, counting live bytes and
/// their peak, and refusing (by saving the input and aborting) a single request above
/// [`HARD_CAP`] while a fuzz case runs.
#[derive(Debug)]
pub struct CountingAlloc;

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrink(n: usize) {
    CURRENT.fetch_sub(n, Relaxed);
}

fn check_request(size: usize) {
    if size <= HARD_CAP.load(Relaxed) || REPORTING.with(Cell::get) {
        return;
    }
    REPORTING.with(|r| r.set(true));
    let ptr = INPUT_PTR.load(Relaxed);
    let len = INPUT_LEN.load(Relaxed);
    let (dir, target) = ABORT_INFO
        .get()
        .and_then(|m| m.lock().ok().map(|g| g.clone()))
        .unwrap_or_else(|| (PathBuf::from("target/fuzz"), "?"));
    let saved = if ptr.is_null() {
        "(no input recorded)".to_string()
    } else {
        // SAFETY: ptr and len describe the input slice, alive for the whole case.
        let input = unsafe { std::slice::from_raw_parts(ptr, len) };
        let path = dir.join(format!("{target}-huge-request.bin"));
        let _ = std::fs::create_dir_all(&dir);
        match std::fs::write(&path, input) {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("(cannot save the input: {e})"),
        }
    };
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: target {target}: an input of {len} bytes made the reader request {size} bytes \
         at once, beyond any justified size; input saved to {saved}"
    );
    std::process::abort();
}

// SAFETY: every method forwards to `System` with the same arguments; the counters are atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_request(layout.size());
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_request(layout.size());
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_request(new_size);
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

// ---- a small seeded generator --------------------------------------------------------------

/// SplitMix64: enough for choosing mutations, and reproducible from `--seed`.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

// ---- mutations -----------------------------------------------------------------------------

/// Boundary integers for binary fields.
const INTS: &[u64] = &[
    0,
    1,
    2,
    3,
    10,
    255,
    256,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1_000_000_000_000,
    1 << 62,
    u64::MAX,
];

/// Replacements for a number written as text (JSON, TOML, the `.npy` header).
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "64",
    "65",
    "1000",
    "4294967296",
    "1000000000000",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e308",
    "1e400",
    "-0",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "",
];

fn set_bytes(data: &mut [u8], at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(d) = data.get_mut(at + i) {
            *d = b;
        }
    }
}

/// One generic mutation.
fn mutate_generic(data: &mut Vec<u8>, rng: &mut Rng) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'[', b'"', b'{']);
        }
        2 => data.truncate(rng.below(len + 1)),
        3 => {
            let n = 1 + rng.below(64);
            let at = rng.below(len + 1);
            let extra: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, extra);
        }
        4 if len > 0 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(64)).min(len);
            data.drain(a..b);
        }
        5 if len > 0 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(256)).min(len);
            let chunk = data[a..b].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        6 if len > 0 => {
            let v = *rng.pick(INTS) as u32;
            let at = rng.below(len) & !3;
            set_bytes(data, at, &v.to_be_bytes());
        }
        7 if len > 0 => {
            let v = *rng.pick(INTS);
            let at = rng.below(len);
            if rng.below(2) == 0 {
                set_bytes(data, at, &v.to_le_bytes());
            } else {
                set_bytes(data, at, &(v as u32).to_le_bytes());
            }
        }
        8 => replace_number(data, rng),
        9 if len >= 4 => {
            let v = *rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MAX]);
            let at = (len / 2 + rng.below(len - len / 2)) & !3;
            set_bytes(data, at, &v.to_le_bytes());
        }
        _ => {
            if len > 0 {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
        }
    }
}

/// Replaces a run of ASCII digits (in the first 64 KiB: the text headers) by one of [`NUMBERS`].
fn replace_number(data: &mut Vec<u8>, rng: &mut Rng) {
    let scan = data.len().min(1 << 16);
    let starts: Vec<usize> = (0..scan)
        .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let a = *rng.pick(&starts);
    let mut b = a;
    while b < data.len() && data[b].is_ascii_digit() {
        b += 1;
    }
    let with = rng.pick(NUMBERS).as_bytes().to_vec();
    data.splice(a..b, with);
}

/// Replaces the first occurrence of `from` (in the first 64 KiB) by `to`.
fn replace_text(data: &mut Vec<u8>, from: &str, to: &str) {
    let scan = &data[..data.len().min(1 << 16)];
    if let Some(i) = scan
        .windows(from.len().max(1))
        .position(|w| w == from.as_bytes())
    {
        data.splice(i..i + from.len(), to.bytes());
    }
}

// The signature every target's mutation shares (others grow or shrink the input).
#[allow(clippy::ptr_arg)]
fn mutate_idx(data: &mut Vec<u8>, rng: &mut Rng) {
    if data.len() >= 2 && data[0] == 0x1f && data[1] == 0x8b {
        // gzip: the header's flags and sizes, or the deflate stream.
        let at = rng.below(data.len().min(24));
        data[at] = rng.next() as u8;
        return;
    }
    match rng.below(3) {
        0 => set_bytes(data, 3, &[*rng.pick(&[0u8, 1, 2, 3, 4, 255])]),
        1 => set_bytes(data, 2, &[*rng.pick(&[0x08u8, 0x09, 0x0d, 0x0e])]),
        _ => {
            let k = rng.below(3);
            let v = *rng.pick(INTS) as u32;
            set_bytes(data, 4 + 4 * k, &v.to_be_bytes());
        }
    }
}

fn mutate_cifar(data: &mut Vec<u8>, rng: &mut Rng) {
    let records = data.len() / saddle_data::cifar10::RECORD_LEN;
    match rng.below(3) {
        0 if records > 0 => {
            let r = rng.below(records);
            data[r * saddle_data::cifar10::RECORD_LEN] = 10 + rng.below(246) as u8;
        }
        1 => {
            let n = 1 + rng.below(3);
            data.truncate(data.len().saturating_sub(n));
        }
        _ => data.push(rng.next() as u8),
    }
}

fn mutate_npy(data: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(5) {
        0 => {
            let shape = *rng.pick(&[
                "(1000000000000,)",
                "(1000000, 1000000)",
                "(4294967296, 4294967296, 4294967296)",
                "()",
                "(0,)",
                "(-1,)",
                "(2, 1, 3, 3, 1, 1, 1, 1)",
                "(18446744073709551615, 2)",
                "(,)",
                "(2",
            ]);
            let start = data.iter().position(|&b| b == b'(');
            let end = data.iter().position(|&b| b == b')');
            if let (Some(a), Some(b)) = (start, end) {
                if a < b {
                    data.splice(a..=b, shape.bytes());
                }
            }
        }
        1 => {
            let descr = *rng.pick(&[
                "<f4", "<f8", ">f4", "|u1", "|b1", "<i8", "<u8", "<i2", "<c8", "O", "<U3", "",
            ]);
            for from in ["<f4", "<f8", "|u1", "<i8", "|b1"] {
                replace_text(data, &format!("'{from}'"), &format!("'{descr}'"));
            }
        }
        2 => set_bytes(data, 6, &[*rng.pick(&[0u8, 1, 2, 3, 4, 255])]),
        3 => {
            let v = *rng.pick(INTS);
            set_bytes(data, 8, &v.to_le_bytes()[..2 + 2 * rng.below(2)]);
        }
        _ => {
            let to = *rng.pick(&["True", "1", "None", ""]);
            replace_text(data, "False", to);
        }
    }
}

fn mutate_safetensors(data: &mut Vec<u8>, rng: &mut Rng) {
    let header = if data.len() >= 8 {
        u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8])) as usize
    } else {
        0
    };
    match rng.below(6) {
        0 => {
            let v = *rng.pick(INTS);
            set_bytes(data, 0, &v.to_le_bytes());
        }
        1 => {
            let arch = *rng.pick(&[
                "wrn-1000-32",
                "wrn-10-32",
                "wrn-madry-34-10",
                "wrn-madry-1000-32",
                "wrn-16-1",
                "mnist",
                "madry-mnist",
                "wrn-10-1",
                "wrn-madry-10-1",
                "wrn--",
                "",
            ]);
            for from in ["\"mnist\"", "\"wrn-10-1\"", "\"wrn-madry-10-1\""] {
                replace_text(data, from, &format!("\"{arch}\""));
            }
        }
        2 => {
            let scale = *rng.pick(&[
                "\"64\"",
                "\"65\"",
                "\"16\"",
                "\"0\"",
                "\"1000000\"",
                "\"x\"",
            ]);
            replace_text(data, "\"1\"", scale);
        }
        3 => {
            let dtype = *rng.pick(&[
                "\"F64\"", "\"I64\"", "\"U8\"", "\"BF16\"", "\"F16\"", "\"X\"",
            ]);
            replace_text(data, "\"F32\"", dtype);
        }
        4 => {
            let shape = *rng.pick(&[
                "[1000000,1000000]",
                "[1000000000000]",
                "[]",
                "[0]",
                "[18446744073709551615,2]",
            ]);
            let scan = &data[..data.len().min(8 + header).min(1 << 16)];
            if let Some(a) = scan.windows(8).position(|w| w == b"\"shape\":") {
                if let Some(len) = scan[a..].iter().position(|&b| b == b']') {
                    data.splice(a + 8..a + len + 1, shape.bytes());
                }
            }
        }
        _ if data.len() > 8 + header + 4 => {
            // A NaN or infinity in the tensor data.
            let body = data.len() - 8 - header;
            let at = 8 + header + (rng.below(body) & !3);
            let v = *rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            set_bytes(data, at, &v.to_le_bytes());
        }
        _ => {}
    }
}

fn mutate_toml(data: &mut Vec<u8>, rng: &mut Rng) {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return;
    }
    let i = rng.below(lines.len());
    match rng.below(5) {
        0 => {
            if let Some((key, _)) = lines[i].split_once('=') {
                let v = *rng.pick(&[
                    "1e400",
                    "nan",
                    "-inf",
                    "-1",
                    "18446744073709551616",
                    "\"wrn-1000-32\"",
                    "\"wrn-10-32\"",
                    "\"mnist\"",
                    "[1, 2]",
                    "{ a = 1 }",
                    "true",
                    "\"\"",
                    "\"\\u0000\"",
                    "1979-05-27T07:32:00Z",
                    "0x7fffffffffffffff",
                    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                ]);
                lines[i] = format!("{key}= {v}");
            }
        }
        1 => {
            let dup = lines[i].clone();
            lines.insert(i, dup);
        }
        2 => {
            lines.remove(i);
        }
        3 => lines.insert(
            i,
            rng.pick(&[
                "[schedule]",
                "[[x]]",
                "unknown_key = 1",
                "a.b.c = 1",
                "=",
                "\"",
                "[]",
            ])
            .to_string(),
        ),
        _ => {
            let depth = 1 + rng.below(5000);
            lines.insert(
                i,
                format!("deep = {}{}", "[".repeat(depth), "]".repeat(depth)),
            );
        }
    }
    *data = lines.join("\n").into_bytes();
}

// ---- targets -------------------------------------------------------------------------------

type Reader = Box<dyn Fn(&[u8]) -> std::result::Result<(), String>>;

struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Reader,
    special: fn(&mut Vec<u8>, &mut Rng),
}

/// The peak bytes a reader may hold for an input (see the module documentation).
pub fn limit(input: &[u8]) -> usize {
    let gzip = input.len() >= 2 && input[0] == 0x1f && input[1] == 0x8b;
    let per_byte = if gzip { 4 * 1100 } else { 64 };
    input.len().saturating_mul(per_byte).saturating_add(1 << 20)
}

fn idx_bytes(magic: u32, dims: &[u32], fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    let n: u32 = dims.iter().product();
    v.extend((0..n as usize).map(fill));
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// A `.npy` file with the header written as given (dtype, shape text, version).
fn npy_bytes(descr: &str, shape: &str, body: &[u8], version: u8) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let pre = if version == 1 { 10 } else { 12 };
    header.push_str(&" ".repeat((64 - (pre + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((header.len() as u16).to_le_bytes());
    } else {
        out.extend((header.len() as u32).to_le_bytes());
    }
    out.extend(header.as_bytes());
    out.extend(body);
    out
}

fn model_seed(arch: &str) -> Result<Vec<u8>> {
    let arch: Arch = match arch {
        "mnist" => Arch::Mnist { scale: Some(1) },
        other => other.parse()?,
    };
    Ok(Model::build(&arch, Cpu::new(), 1)?.to_safetensors()?)
}

fn model_target(name: &'static str, arch: &'static str) -> Result<Target> {
    let seed = model_seed(arch)?;
    let flip = std::cell::Cell::new(false);
    Ok(Target {
        name,
        seeds: vec![seed],
        // Half the cases name the architecture as `--arch` would, half rely on the metadata.
        run: Box::new(move |bytes| {
            flip.set(!flip.get());
            let given = if flip.get() { Some(arch) } else { None };
            Model::load(Cpu::new(), bytes, given)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        special: mutate_safetensors,
    })
}

fn targets() -> Result<Vec<Target>> {
    let path = Path::new("fuzz-input");
    let images = idx_bytes(saddle_data::idx::IMAGES_MAGIC, &[3, 4, 5], |i| {
        (i * 7) as u8
    });
    let labels = idx_bytes(saddle_data::idx::LABELS_MAGIC, &[7], |i| (i % 10) as u8);
    let zeros = idx_bytes(saddle_data::idx::IMAGES_MAGIC, &[10, 28, 28], |_| 0);
    let mut cifar = Vec::new();
    for (r, label) in [3u8, 9].into_iter().enumerate() {
        cifar.push(label);
        cifar.extend((0..saddle_data::cifar10::IMAGE_LEN).map(|i| (i + r) as u8));
    }
    let f32s: Vec<u8> = (0..18)
        .flat_map(|i| (i as f32 / 17.0).to_le_bytes())
        .collect();
    let mut configs = vec![
        "dataset = \"mnist\"\narch = \"mnist\"\nmodel_scale = 1\nmax_num_training_steps = 10\n"
            .to_string(),
    ];
    for p in saddle_train::config::PRESETS {
        if let Some(cfg) = TrainConfig::preset(p) {
            configs.push(toml::to_string(&cfg)?);
        }
    }
    Ok(vec![
        model_target("safetensors-mnist", "mnist")?,
        model_target("safetensors-wrn-madry", "wrn-madry-10-1")?,
        model_target("safetensors-wrn", "wrn-10-1")?,
        Target {
            name: "npy",
            seeds: vec![
                npy::encode_f32(
                    &[2, 1, 3, 3],
                    &(0..18).map(|i| i as f32 / 17.0).collect::<Vec<_>>(),
                ),
                npy_bytes("<f4", "(2, 1, 3, 3)", &f32s, 2),
                npy_bytes(
                    "<i8",
                    "(3,)",
                    &[
                        1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
                    ],
                    1,
                ),
                npy_bytes("|u1", "(2, 3)", &[0, 1, 2, 3, 4, 5], 3),
                npy::encode_bool(&[2, 2], &[true, false, false, true]),
            ],
            run: Box::new(|bytes| {
                let a = npy::parse(bytes).map_err(|e| format!("{e:#}"))?;
                let n: usize = a.shape.iter().product();
                assert_eq!(n, a.data.len(), "the shape does not match the data");
                Ok(())
            }),
            special: mutate_npy,
        },
        Target {
            name: "toml-config",
            seeds: configs.into_iter().map(String::into_bytes).collect(),
            run: Box::new(|bytes| {
                let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
                let cfg: TrainConfig = toml::from_str(text).map_err(|e| e.to_string())?;
                cfg.validate().map_err(|e| e.to_string())?;
                cfg.arch().map_err(|e| e.to_string())?;
                Ok(())
            }),
            special: mutate_toml,
        },
        Target {
            name: "idx",
            seeds: vec![
                images.clone(),
                labels.clone(),
                gzip(&images),
                gzip(&labels),
                gzip(&zeros),
            ],
            run: Box::new(move |bytes| {
                let a = saddle_data::idx::parse_images(bytes, path).map(|img| {
                    assert_eq!(img.pixels.len(), img.count * img.rows * img.cols);
                });
                let b = saddle_data::idx::parse_labels(bytes, path, 10).map(|l| {
                    assert!(l.iter().all(|&v| v < 10));
                });
                match (a, b) {
                    (Ok(()), _) | (_, Ok(())) => Ok(()),
                    (Err(e), _) => Err(e.to_string()),
                }
            }),
            special: mutate_idx,
        },
        Target {
            name: "cifar10",
            seeds: vec![cifar],
            run: Box::new(move |bytes| {
                let b =
                    saddle_data::cifar10::parse_batch(bytes, path).map_err(|e| e.to_string())?;
                assert_eq!(
                    b.pixels.len(),
                    b.labels.len() * saddle_data::cifar10::IMAGE_LEN
                );
                Ok(())
            }),
            special: mutate_cifar,
        },
    ])
}

// ---- the run -------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    ok: u64,
    errors: u64,
    panics: u64,
    over_limit: u64,
    /// The largest peak as a fraction of its input's limit.
    worst_ratio: f64,
    worst_peak: usize,
    saved: usize,
}

fn save(dir: &Path, target: &str, kind: &str, case: u64, input: &[u8]) -> String {
    let path = dir.join(format!("{target}-{kind}-{case}.bin"));
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    }
}

/// Runs the fuzzer.
pub fn run(args: Args) -> Result<()> {
    if args.cases == 0 {
        bail!("--cases must be at least 1");
    }
    let all = targets().context("cannot build the seed files")?;
    let names: Vec<&str> = all.iter().map(|t| t.name).collect();
    for t in &args.target {
        if !names.contains(&t.as_str()) {
            bail!("unknown target {t}; the targets are {}", names.join(", "));
        }
    }
    let chosen: Vec<&Target> = all
        .iter()
        .filter(|t| args.target.is_empty() || args.target.iter().any(|n| n == t.name))
        .collect();
    // Seeds must be accepted, or the mutants explore only error paths.
    for t in &chosen {
        for (i, s) in t.seeds.iter().enumerate() {
            if let Err(e) = (t.run)(s) {
                bail!("seed {i} of {} is rejected: {e}", t.name);
            }
        }
    }
    let info = ABORT_INFO.get_or_init(|| Mutex::new((args.out.clone(), "")));
    // Panics are caught and counted; the default hook would print each one.
    let last_panic: &'static Mutex<String> = Box::leak(Box::new(Mutex::new(String::new())));
    std::panic::set_hook(Box::new(move |p| {
        if let Ok(mut m) = last_panic.lock() {
            *m = p.to_string();
        }
    }));
    println!(
        "fuzzing {} targets, {} cases each, seed {}",
        chosen.len(),
        args.cases,
        args.seed
    );
    let mut tallies = Vec::new();
    let mut failures = Vec::new();
    for (ti, t) in chosen.iter().enumerate() {
        if let Ok(mut g) = info.lock() {
            g.1 = t.name;
        }
        let start = Instant::now();
        let mut rng = Rng(args.seed ^ (ti as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
        let mut tally = Tally::default();
        for case in 0..args.cases {
            let mut input = rng.pick(&t.seeds).clone();
            for _ in 0..1 + rng.below(4) {
                if rng.below(3) == 0 {
                    (t.special)(&mut input, &mut rng);
                } else {
                    mutate_generic(&mut input, &mut rng);
                }
            }
            let lim = limit(&input);
            INPUT_PTR.store(input.as_ptr().cast_mut(), Relaxed);
            INPUT_LEN.store(input.len(), Relaxed);
            let base = CURRENT.load(Relaxed);
            PEAK.store(base, Relaxed);
            HARD_CAP.store(lim.saturating_mul(16).max(256 << 20), Relaxed);
            let outcome = catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
            HARD_CAP.store(usize::MAX, Relaxed);
            let peak = PEAK.load(Relaxed).saturating_sub(base);
            INPUT_PTR.store(std::ptr::null_mut(), Relaxed);
            tally.cases += 1;
            match outcome {
                Ok(Ok(())) => tally.ok += 1,
                Ok(Err(_)) => tally.errors += 1,
                Err(_) => {
                    tally.panics += 1;
                    let msg = last_panic.lock().map(|m| m.clone()).unwrap_or_default();
                    let saved = if tally.saved < 5 {
                        tally.saved += 1;
                        save(&args.out, t.name, "panic", case, &input)
                    } else {
                        "(not saved: five already)".into()
                    };
                    failures.push(format!(
                        "{} case {case}: panic: {msg}; input {saved}",
                        t.name
                    ));
                }
            }
            let ratio = peak as f64 / lim as f64;
            if ratio > tally.worst_ratio {
                tally.worst_ratio = ratio;
                tally.worst_peak = peak;
            }
            if peak > lim {
                tally.over_limit += 1;
                let saved = if tally.saved < 5 {
                    tally.saved += 1;
                    save(&args.out, t.name, "alloc", case, &input)
                } else {
                    "(not saved: five already)".into()
                };
                failures.push(format!(
                    "{} case {case}: held {peak} bytes for an input of {} bytes (limit {lim}); \
                     input {saved}",
                    t.name,
                    input.len()
                ));
            }
        }
        println!(
            "{:<22} {:>8} cases {:>8} ok {:>8} errors {:>3} panics {:>3} over the allocation \
             limit; largest peak {:.1}% of its limit ({} bytes); {:.1} s",
            t.name,
            tally.cases,
            tally.ok,
            tally.errors,
            tally.panics,
            tally.over_limit,
            100.0 * tally.worst_ratio,
            tally.worst_peak,
            start.elapsed().as_secs_f64()
        );
        tallies.push(tally);
    }
    let _ = std::panic::take_hook();
    if !failures.is_empty() {
        for f in failures.iter().take(20) {
            eprintln!("  {f}");
        }
        bail!(
            "{} failing cases (panics or allocations beyond the limit); inputs under {}",
            failures.len(),
            args.out.display()
        );
    }
    let total: u64 = tallies.iter().map(|t| t.cases).sum();
    println!("{total} inputs, no panic, no allocation beyond its limit");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_accepted_and_mutations_are_seeded() {
        for t in targets().unwrap() {
            for s in &t.seeds {
                (t.run)(s).unwrap_or_else(|e| panic!("{}: {e}", t.name));
            }
        }
        let mutants = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| {
                    let mut v = b"0123456789 abc {'shape': (2, 3)}".to_vec();
                    mutate_generic(&mut v, &mut rng);
                    v
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(mutants(5), mutants(5));
        assert_ne!(mutants(5), mutants(6));
    }

    /// The counting allocator (installed by `main.rs`, which is this test binary's root too)
    /// sees a 16 MiB buffer in the peak, so an over-allocating reader cannot go unnoticed.
    #[test]
    fn the_allocator_counts_the_peak() {
        let base = CURRENT.load(Relaxed);
        PEAK.store(base, Relaxed);
        let v = vec![1u8; 16 << 20];
        std::hint::black_box(&v);
        drop(v);
        let peak = PEAK.load(Relaxed).saturating_sub(base);
        assert!(peak >= 16 << 20, "peak {peak}");
        assert!(peak > limit(&[0u8; 1000]));
    }

    #[test]
    fn the_limit_allows_gzip_its_ratio() {
        assert_eq!(limit(&[0; 100]), 6400 + (1 << 20));
        assert_eq!(limit(&[0x1f, 0x8b, 0, 0]), 4 * 4400 + (1 << 20));
    }
}
