//! Checksums, and writing a final file through a temporary file that is renamed only after
//! it has been verified.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use sha2::Sha256;

use super::manifest::FileSpec;
use super::progress;

/// Size, MD5 and SHA-256 of some bytes, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    pub size: u64,
    pub md5: String,
    pub sha256: String,
}

/// Computes all checksums while bytes pass through.
#[derive(Default)]
pub struct Hasher {
    size: u64,
    md5: Md5,
    sha256: Sha256,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.md5.update(bytes);
        self.sha256.update(bytes);
    }

    pub fn finish(self) -> Hashes {
        Hashes {
            size: self.size,
            md5: hex(&self.md5.finalize()),
            sha256: hex(&self.sha256.finalize()),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what it writes.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::default(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a file, with a progress bar when it is large.
pub fn hash_file(path: &Path) -> Result<Hashes> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).ok();
    let bar = if len.unwrap_or(0) > 32 << 20 {
        Some(progress::bytes(
            len,
            format!("checking {}", file_name(path)),
        ))
    } else {
        None
    };
    let mut reader: Box<dyn Read> = match &bar {
        Some(b) => Box::new(b.wrap_read(file)),
        None => Box::new(file),
    };
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(hasher.finish())
}

/// Why `got` does not match `spec`, or `None` when it does.
pub fn mismatch(spec: &FileSpec, got: &Hashes) -> Option<String> {
    if got.size != spec.size {
        return Some(format!("{} bytes, expected {}", got.size, spec.size));
    }
    if got.md5 != spec.md5 {
        return Some(format!("MD5 {}, expected {}", got.md5, spec.md5));
    }
    match &spec.sha256 {
        Some(want) if *want != got.sha256 => {
            Some(format!("SHA-256 {}, expected {want}", got.sha256))
        }
        _ => None,
    }
}

/// The state of a final file on disk.
pub enum Existing {
    Verified(Hashes),
    Missing,
    Bad(String),
}

/// Checks a final file on disk against its spec (size first, so a truncated file is cheap to
/// detect).
pub fn check_existing(path: &Path, spec: &FileSpec) -> Result<Existing> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.is_file() {
        return Ok(Existing::Bad("not a regular file".into()));
    }
    if meta.len() != spec.size {
        return Ok(Existing::Bad(format!(
            "{} bytes, expected {}",
            meta.len(),
            spec.size
        )));
    }
    let got = hash_file(path)?;
    Ok(match mismatch(spec, &got) {
        None => Existing::Verified(got),
        Some(why) => Existing::Bad(why),
    })
}

/// Removes the temporary file unless it was renamed into place.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes `final_path` through `produce`: the bytes go to a temporary file in the same folder,
/// are hashed on the way, and the file is renamed into place only when size, MD5 and SHA-256
/// match `spec`. An interrupted or failed write never leaves a file under the final name.
pub fn write_verified(
    final_path: &Path,
    spec: &FileSpec,
    produce: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<Hashes> {
    let dir = final_path.parent().context("final path has no folder")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.part-{}", spec.name, std::process::id()));
    let mut guard = TempGuard(Some(tmp.clone()));
    let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    produce(&mut w)?;
    w.flush()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let HashingWriter { inner, hasher } = w;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    drop(file);
    let got = hasher.finish();
    if let Some(why) = mismatch(spec, &got) {
        bail!("{} does not verify: {why}", spec.name);
    }
    fs::rename(&tmp, final_path).with_context(|| {
        format!(
            "cannot rename {} to {}",
            tmp.display(),
            final_path.display()
        )
    })?;
    guard.0 = None;
    Ok(got)
}

/// Writes a small text file atomically (temporary file + rename) unless it already holds
/// `content`. Returns whether it was written.
pub fn write_text(path: &Path, content: &str) -> Result<bool> {
    write_bytes(path, content.as_bytes())
}

/// Writes a small file atomically (temporary file + rename) unless it already holds
/// `content`. Returns whether it was written.
pub fn write_bytes(path: &Path, content: &[u8]) -> Result<bool> {
    if fs::read(path).is_ok_and(|b| b == content) {
        return Ok(false);
    }
    let dir = path.parent().context("file has no folder")?;
    let tmp = dir.join(format!(".{}.part-{}", file_name(path), std::process::id()));
    let mut guard = TempGuard(Some(tmp.clone()));
    fs::write(&tmp, content).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
    guard.0 = None;
    Ok(true)
}

pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let mut h = Hasher::default();
        h.update(b"abc");
        let got = h.finish();
        assert_eq!(got.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            got.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// What `repro` writes last (its REPORT.md, and the experiments' figures) on a full disk
    /// (a 64 KB tmpfs) and into a read-only folder: an error of one line naming the file, the
    /// report already there byte-identical, no temporary file left. Mounting needs root (and,
    /// in a container, the right to mount); where it is refused the test says that it skipped,
    /// as `saddle-cli`'s fault tests do.
    #[test]
    fn a_report_on_a_full_disk_or_read_only_folder_fails_and_keeps_the_old_one() {
        use std::process::{Command, Stdio};
        let dir = super::super::tests::temp_dir("full-disk");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("SKIPPED: `mount -t tmpfs` is not permitted here (it needs root)");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.0)
                    .status();
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _guard = Unmount(dir.clone());
        let report = dir.join("REPORT.md");
        std::fs::write(&report, "an earlier report").unwrap();
        let check = |e: anyhow::Error| {
            let msg = format!("{e:#}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
            assert!(msg.contains("REPORT.md"), "{msg}");
            assert_eq!(std::fs::read(&report).unwrap(), b"an earlier report");
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".part-"))
                .collect();
            assert!(left.is_empty(), "left behind: {left:?}");
        };
        {
            use std::io::Write;
            let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
            while filler.write_all(&[0u8; 4096]).is_ok() {}
            let big = "a new report\n".repeat(10_000);
            check(write_text(&report, &big).unwrap_err());
        }
        std::fs::remove_file(dir.join("filler")).unwrap();
        // Read-only: as root, permissions do not stop writes; the immutable attribute does.
        let immutable = Command::new("chattr")
            .arg("+i")
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if immutable {
            check(write_text(&report, "a new report").unwrap_err());
        } else {
            eprintln!("SKIPPED the read-only case: chattr +i is not supported on this tmpfs");
        }
    }

    #[test]
    fn write_verified_renames_only_good_files() {
        let dir = super::super::tests::temp_dir("verify");
        let spec = FileSpec {
            name: "f".into(),
            size: 3,
            md5: "900150983cd24fb0d6963f7d28e17f72".into(),
            sha256: None,
        };
        let p = dir.join("f");
        assert!(write_verified(&p, &spec, |w| Ok(w.write_all(b"abd")?)).is_err());
        assert!(!p.exists());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "temporary file removed"
        );
        write_verified(&p, &spec, |w| Ok(w.write_all(b"abc")?)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"abc");
        assert!(matches!(
            check_existing(&p, &spec).unwrap(),
            Existing::Verified(_)
        ));
        fs::write(&p, b"abx").unwrap();
        assert!(matches!(
            check_existing(&p, &spec).unwrap(),
            Existing::Bad(_)
        ));
        fs::write(&p, b"ab").unwrap();
        assert!(matches!(
            check_existing(&p, &spec).unwrap(),
            Existing::Bad(_)
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
