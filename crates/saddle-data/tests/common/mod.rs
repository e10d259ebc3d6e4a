//! Helpers shared by the integration tests: a unique temporary folder and small data files.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "saddle-data-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An IDX file with the given magic number, dimensions and payload.
pub fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// `n` 28×28 images whose pixels are `(image + position) mod 256`.
pub fn mnist_images(n: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..n as usize * 784)
        .map(|i| ((i / 784 + i % 784) % 256) as u8)
        .collect();
    idx(0x803, &[n, 28, 28], &payload)
}

/// `n` labels `i mod 10`.
pub fn mnist_labels(n: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    idx(0x801, &[n], &payload)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `n` CIFAR records: label `i mod 10`, then R, G, B planes filled with `i`, `i+1`, `i+2`.
pub fn cifar_records(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * 3073);
    for i in 0..n {
        v.push((i % 10) as u8);
        for ch in 0..3 {
            v.extend(std::iter::repeat_n(((i + ch) % 256) as u8, 1024));
        }
    }
    v
}

/// The datasets root for tests: `$SADDLE_DATASETS`, else `<workspace>/datasets`.
pub fn datasets_root() -> PathBuf {
    match std::env::var_os("SADDLE_DATASETS").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets"),
    }
}
