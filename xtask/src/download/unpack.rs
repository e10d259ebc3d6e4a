//! Safe unpacking of tar streams and `ar` archives (`.deb`).
//!
//! Every entry is checked before anything is written: an absolute path, a `..` component, or
//! a symbolic or hard link whose target lies outside the destination makes the whole archive
//! an error. Links that stay inside are not materialised (no data set needs them), so nothing
//! is ever written through a link; only the wanted regular files are extracted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use tar::EntryType;

/// The normalised relative form of an archive path (`./a/b` → `a/b`), or an error for an
/// absolute path or a `..` component.
pub fn sanitize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => bail!("entry {} has a `..` component", path.display()),
            Component::RootDir | Component::Prefix(_) => {
                bail!("entry {} is an absolute path", path.display())
            }
        }
    }
    Ok(out)
}

/// Checks that a symbolic link at `entry` (relative, sanitised) pointing to `target` resolves
/// inside the destination, judged lexically from the link's folder.
pub fn check_symlink(entry: &Path, target: &Path) -> Result<()> {
    if target.has_root() {
        bail!(
            "link {} points to absolute path {}",
            entry.display(),
            target.display()
        );
    }
    let mut depth: i64 = entry.parent().map_or(0, |p| p.components().count() as i64);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    bail!(
                        "link {} points outside the destination ({})",
                        entry.display(),
                        target.display()
                    );
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                bail!(
                    "link {} points to absolute path {}",
                    entry.display(),
                    target.display()
                )
            }
        }
    }
    Ok(())
}

/// Reads a tar stream, checks every entry, and extracts the regular files whose sanitised path
/// is in `wanted` into `dest`. Returns where each wanted member was written; a wanted member
/// missing from the archive is an error. `on_bytes` is told how many bytes were extracted.
pub fn unpack_tar(
    reader: impl Read,
    dest: &Path,
    wanted: &BTreeSet<String>,
    mut on_bytes: impl FnMut(u64),
) -> Result<BTreeMap<String, PathBuf>> {
    let mut archive = tar::Archive::new(reader);
    let mut found = BTreeMap::new();
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("corrupt tar archive")?;
        let raw = entry
            .path()
            .context("tar entry with an unreadable path")?
            .into_owned();
        let rel = sanitize(&raw).context("refusing archive")?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .context("symbolic link without a target")?;
                check_symlink(&rel, &target).context("refusing archive")?;
            }
            EntryType::Link => {
                let target = entry.link_name()?.context("hard link without a target")?;
                sanitize(&target)
                    .with_context(|| format!("hard link {} points outside", rel.display()))
                    .context("refusing archive")?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let key = rel.to_string_lossy().into_owned();
                if wanted.contains(&key) {
                    let out_path = dest.join(&rel);
                    if let Some(parent) = out_path.parent() {
                        fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    let mut out = BufWriter::new(
                        File::create(&out_path)
                            .with_context(|| format!("cannot create {}", out_path.display()))?,
                    );
                    let n = io::copy(&mut entry, &mut out)
                        .with_context(|| format!("cannot extract {key}"))?;
                    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    on_bytes(n);
                    found.insert(key, out_path);
                }
            }
            // Folders are created as needed; devices, FIFOs and metadata entries are skipped.
            _ => {}
        }
    }
    let missing: Vec<&String> = wanted.iter().filter(|w| !found.contains_key(*w)).collect();
    if !missing.is_empty() {
        bail!("archive lacks {missing:?}");
    }
    Ok(found)
}

/// One member of an `ar` archive.
#[derive(Debug)]
pub struct ArMember {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Lists the members of an `ar` archive (the container of a `.deb`).
pub fn ar_members(bytes: &[u8]) -> Result<Vec<ArMember>> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !bytes.starts_with(MAGIC) {
        bail!("not an ar archive");
    }
    let mut pos = MAGIC.len();
    let mut members = Vec::new();
    while pos < bytes.len() {
        let header = bytes.get(pos..pos + 60).context("truncated ar header")?;
        if &header[58..60] != b"`\n" {
            bail!("corrupt ar header at byte {pos}");
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .context("bad ar member size")?;
        let offset = pos as u64 + 60;
        let end = offset
            .checked_add(size)
            .filter(|&e| e <= bytes.len() as u64);
        let end = end.with_context(|| format!("ar member {name} runs past the end"))?;
        sanitize(Path::new(&name)).context("refusing ar archive")?;
        members.push(ArMember { name, offset, size });
        pos = (end + (end & 1)) as usize;
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive from raw `(path, type, link target, data)` entries, without the checks
    /// `tar::Builder` would apply to paths.
    fn raw_tar(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            {
                let g = h.as_gnu_mut().unwrap();
                g.name[..path.len()].copy_from_slice(path.as_bytes());
                g.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(entries: &[(&str, EntryType, &str, &[u8])], want: &[&str]) -> Result<Vec<PathBuf>> {
        let dest = super::super::tests::temp_dir("unpack");
        let wanted = want.iter().map(|s| s.to_string()).collect();
        let r = unpack_tar(&raw_tar(entries)[..], &dest, &wanted, |_| {});
        let listing = walk(&dest);
        let _ = fs::remove_dir_all(&dest);
        r.map(|_| listing)
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn extracts_wanted_files_only() {
        let files = unpack(
            &[
                ("./package/", EntryType::Directory, "", b""),
                ("./package/a.txt", EntryType::Regular, "", b"aaa"),
                ("package/b.txt", EntryType::Regular, "", b"bbb"),
                ("package/link", EntryType::Symlink, "a.txt", b""),
            ],
            &["package/a.txt"],
        )
        .unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].ends_with("package/a.txt"));
    }

    #[test]
    fn refuses_parent_components() {
        let e = unpack(&[("package/../../evil", EntryType::Regular, "", b"x")], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("`..`"), "{e:#}");
    }

    #[test]
    fn refuses_absolute_paths() {
        let e = unpack(&[("/tmp/evil", EntryType::Regular, "", b"x")], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("absolute"), "{e:#}");
    }

    #[test]
    fn refuses_links_pointing_outside() {
        for (kind, target) in [
            (EntryType::Symlink, "../../etc/passwd"),
            (EntryType::Symlink, "/etc/passwd"),
            (EntryType::Symlink, "a/../../../x"),
            (EntryType::Link, "../outside"),
            (EntryType::Link, "/etc/passwd"),
        ] {
            let r = unpack(&[("pkg/l", kind, target, b"")], &[]);
            assert!(r.is_err(), "{kind:?} -> {target} accepted");
        }
        // A link that stays inside is fine (and not created).
        assert!(
            unpack(&[("pkg/sub/l", EntryType::Symlink, "../x", b"")], &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn missing_wanted_member_is_an_error() {
        assert!(unpack(&[("a", EntryType::Regular, "", b"x")], &["b"]).is_err());
    }

    #[test]
    fn parses_ar() {
        let mut ar = b"!<arch>\n".to_vec();
        for (name, data) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("data.tar.gz", &b"xyz"[..]),
        ] {
            ar.extend(
                format!(
                    "{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    0,
                    0,
                    0,
                    644,
                    data.len()
                )
                .as_bytes(),
            );
            ar.extend(data);
            if data.len() % 2 == 1 {
                ar.push(b'\n');
            }
        }
        let m = ar_members(&ar).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].name, "data.tar.gz");
        assert_eq!(&ar[m[1].offset as usize..][..m[1].size as usize], b"xyz");
        assert!(ar_members(&ar[..ar.len() - 2]).is_err());
        assert!(ar_members(b"not ar").is_err());
    }
}
