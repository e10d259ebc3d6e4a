//! Files written so that nothing is lost: a temporary file in the same folder, flushed, then
//! renamed over the target.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically (temporary file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot flush {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends one line to `path` (creating it), flushing it to disk.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Removes what interrupted [`write_atomic`]s of `names` left in `dir`: the temporary files
/// `.NAME.tmp-PID` of processes that no longer run (a run killed while writing). Returns how
/// many it removed.
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        let pid = names.iter().find_map(|n| {
            file.strip_prefix(&format!(".{n}.tmp-"))
                .and_then(|p| p.parse::<u32>().ok())
        });
        let Some(pid) = pid else { continue };
        // A live process's file is its own business (Linux: /proc/PID; elsewhere only ours
        // is known to be alive).
        let alive = pid == std::process::id()
            || (Path::new("/proc/self").exists()
                && Path::new("/proc").join(pid.to_string()).exists());
        if !alive {
            std::fs::remove_file(e.path())
                .with_context(|| format!("cannot remove the stale {}", e.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What [`trim_log`] kept and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trimmed {
    /// Lines dropped.
    pub dropped: usize,
    /// The largest `"elapsed_sec"` of the lines kept (0 if none): the training time the log
    /// records up to the step kept.
    pub elapsed_sec: f64,
}

/// Keeps the lines of the JSON-lines log `path` whose `"step"` is at most `step`, dropping the
/// rest and an incomplete last line. For a resumed run: the killed run may have logged steps
/// after its last checkpoint (which the resumed run logs again) and may have been killed in the
/// middle of a line. A missing file is no error.
pub fn trim_log(path: &Path, step: u64) -> Result<Trimmed> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Trimmed::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    let mut t = Trimmed::default();
    for line in text.split_inclusive('\n') {
        // A line cut short by a kill (no newline) is dropped with the lines after the step.
        let v: Option<serde_json::Value> = if line.ends_with('\n') {
            serde_json::from_str(line).ok()
        } else {
            None
        };
        let keep = v
            .as_ref()
            .and_then(|v| v["step"].as_u64())
            .is_some_and(|s| s <= step);
        if keep {
            kept.push_str(line);
            if let Some(e) = v.and_then(|v| v["elapsed_sec"].as_f64()) {
                t.elapsed_sec = t.elapsed_sec.max(e);
            }
        } else {
            t.dropped += 1;
        }
    }
    if t.dropped > 0 {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(t)
}
