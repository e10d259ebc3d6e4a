//! Getting bytes: HTTP(S) with short timeouts, and packages through their ordinary clients
//! (`npm pack`, `apt-get download`), which use whatever registry the machine is configured for.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::progress;
use super::unpack;
use super::verify::{self, Hasher};

/// Timeouts: an offline machine gives up in seconds, a slow mirror is not cut off mid-file.
pub fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_resolve(Some(Duration::from_secs(5)))
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_send_request(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .http_status_as_error(true)
        .max_redirects(5)
        .user_agent(concat!("saddle-xtask/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::new_with_config(config)
}

/// GETs `url` into `dest` with a progress bar; returns the checksums of what was received.
pub fn http_get(agent: &ureq::Agent, url: &str, dest: &Path) -> Result<verify::Hashes> {
    let response = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let len = response.body().content_length();
    let bar = progress::bytes(len, format!("GET {url}"));
    let mut reader = bar.wrap_read(response.into_body().into_reader());
    let mut out = BufWriter::new(
        File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?,
    );
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(e).with_context(|| format!("GET {url}: download interrupted"));
            }
        };
        hasher.update(&buf[..n]);
        io::Write::write_all(&mut out, &buf[..n])?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    bar.finish_and_clear();
    let got = hasher.finish();
    if let Some(len) = len {
        if got.size != len {
            bail!("GET {url}: received {} of {len} bytes", got.size);
        }
    }
    Ok(got)
}

/// Runs a command in `dir` with a spinner; returns its stdout, or an error quoting stderr.
fn run(mut cmd: Command, dir: &Path, what: &str) -> Result<Vec<u8>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.current_dir(dir).stdin(Stdio::null());
    let bar = progress::spinner(what.to_string());
    let out = cmd.output();
    bar.finish_and_clear();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("`{program}` is not installed (not on PATH)")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run `{program}`")),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(4)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{what}` failed ({}): {}", out.status, tail.join(" | "));
    }
    Ok(out.stdout)
}

/// The only file in `dir` whose name ends with `suffix`.
fn single_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = vec![];
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() && p.to_string_lossy().ends_with(suffix) {
            found.push(p);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no *{suffix} file was produced"),
        _ => bail!("several *{suffix} files were produced: {found:?}"),
    }
}

/// Hashes a package file with SHA-256 (with a progress bar when large).
fn sha256_of(path: &Path) -> Result<String> {
    Ok(verify::hash_file(path)?.sha256)
}

/// `npm pack <spec>` in `staging`, checked against `sha256`, then the wanted members
/// unpacked into `staging/unpacked`.
pub fn npm(
    spec: &str,
    sha256: &str,
    staging: &Path,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new("npm");
    cmd.args([
        "pack",
        spec,
        "--json",
        "--ignore-scripts",
        "--loglevel=error",
    ]);
    let stdout = run(cmd, staging, &format!("npm pack {spec}"))?;
    // `npm pack --json` names the tarball; fall back to looking for it.
    let named = serde_json::from_slice::<serde_json::Value>(&stdout)
        .ok()
        .and_then(|v| v.get(0)?.get("filename")?.as_str().map(str::to_string))
        .map(|f| staging.join(f))
        .filter(|p| p.is_file());
    let tarball = match named {
        Some(p) => p,
        None => single_file(staging, ".tgz")?,
    };
    let got = sha256_of(&tarball)?;
    if got != sha256 {
        bail!(
            "{} has SHA-256 {got}, expected {sha256}",
            verify::file_name(&tarball)
        );
    }
    let dest = staging.join("unpacked");
    fs::create_dir(&dest)?;
    let file = File::open(&tarball)?;
    let len = file.metadata()?.len();
    let bar = progress::bytes(
        Some(len),
        format!("unpacking {}", verify::file_name(&tarball)),
    );
    let gz = flate2::read::GzDecoder::new(BufReader::new(bar.wrap_read(file)));
    let found = unpack::unpack_tar(gz, &dest, wanted, |_| {});
    bar.finish_and_clear();
    let found = found.with_context(|| format!("unpacking {}", verify::file_name(&tarball)))?;
    let _ = fs::remove_file(&tarball);
    Ok(found)
}

/// `apt-get download <package>` in `staging`, then the wanted members of its data archive
/// unpacked into `staging/unpacked`. Returns the members and a note when the `.deb` is not a
/// build listed in the manifest.
pub fn apt(
    package: &str,
    known_sha256: &[String],
    staging: &Path,
    wanted: &BTreeSet<String>,
) -> Result<(BTreeMap<String, PathBuf>, Option<String>)> {
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", package]);
    run(cmd, staging, &format!("apt-get download {package}")).map_err(|e| {
        e.context("if apt reports that it cannot locate the package, run `apt-get update` first")
    })?;
    let deb = single_file(staging, ".deb")?;
    let got = sha256_of(&deb)?;
    let note = (!known_sha256.contains(&got)).then(|| {
        format!(
            "{} (SHA-256 {got}) is not a build listed in the manifest; apt authenticated it \
             against the signed archive index and the extracted files are verified by checksum",
            verify::file_name(&deb)
        )
    });
    let dest = staging.join("unpacked");
    fs::create_dir(&dest)?;
    let bar = progress::spinner(format!("unpacking {}", verify::file_name(&deb)));
    let found = unpack_deb(&deb, staging, &dest, wanted);
    bar.finish_and_clear();
    let found = found.with_context(|| format!("unpacking {}", verify::file_name(&deb)))?;
    let _ = fs::remove_file(&deb);
    Ok((found, note))
}

/// Extracts the wanted members of a `.deb`'s data archive. Uses `dpkg-deb --fsys-tarfile`
/// when installed (it handles every compression), else reads the `ar` container here and
/// decompresses gzip in-process or xz/zstd with the `xz`/`zstd` tools.
fn unpack_deb(
    deb: &Path,
    staging: &Path,
    dest: &Path,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, PathBuf>> {
    match Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            let stdout = child.stdout.take().context("no stdout from dpkg-deb")?;
            let result = unpack::unpack_tar(stdout, dest, wanted, |_| {});
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "`dpkg-deb --fsys-tarfile` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            result
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes = fs::read(deb)?;
            let members = unpack::ar_members(&bytes)?;
            let data = members
                .iter()
                .find(|m| m.name.starts_with("data.tar"))
                .context(".deb has no data.tar member")?;
            let body = &bytes[data.offset as usize..(data.offset + data.size) as usize];
            let tool = match data.name.as_str() {
                "data.tar" => return unpack::unpack_tar(body, dest, wanted, |_| {}),
                "data.tar.gz" => {
                    return unpack::unpack_tar(
                        flate2::read::GzDecoder::new(body),
                        dest,
                        wanted,
                        |_| {},
                    )
                }
                "data.tar.xz" => "xz",
                "data.tar.zst" => "zstd",
                other => bail!("unsupported .deb data member {other}"),
            };
            let member = staging.join(&data.name);
            fs::write(&member, body)?;
            let mut child = Command::new(tool)
                .arg("-dc")
                .arg(&member)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| {
                    format!(
                        "`{tool}` is needed to read {} (or install dpkg-deb)",
                        data.name
                    )
                })?;
            let stdout = child.stdout.take().context("no stdout")?;
            let result = unpack::unpack_tar(stdout, dest, wanted, |_| {});
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "`{tool} -dc` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            result
        }
        Err(e) => Err(e).context("cannot run dpkg-deb"),
    }
}

/// Downloads a `.tar.gz`, checks its MD5, and unpacks the wanted members.
pub fn http_archive(
    agent: &ureq::Agent,
    url: &str,
    md5: &str,
    staging: &Path,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, PathBuf>> {
    let archive = staging.join("archive.tar.gz");
    let got = http_get(agent, url, &archive)?;
    if got.md5 != md5 {
        bail!("{url} has MD5 {}, expected {md5}", got.md5);
    }
    let dest = staging.join("unpacked");
    fs::create_dir(&dest)?;
    let file = File::open(&archive)?;
    let bar = progress::bytes(Some(got.size), "unpacking archive");
    let gz = flate2::read::GzDecoder::new(BufReader::new(bar.wrap_read(file)));
    let found = unpack::unpack_tar(gz, &dest, wanted, |_| {});
    bar.finish_and_clear();
    let _ = fs::remove_file(&archive);
    found
}
