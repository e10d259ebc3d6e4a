//! IDX files (the MNIST format): unsigned-byte images and labels, raw or gzip-compressed.
//!
//! Layout: a 4-byte magic number `00 00 08 D` (type 0x08 = unsigned byte, `D` = number of
//! dimensions), `D` big-endian u32 dimensions, then the bytes in row-major order. Images files
//! have `D = 3` (count, rows, cols), labels files `D = 1`.
//!
//! Every header is validated against the length of the data before anything is allocated from
//! it, so a header claiming 2^31 × 2^31 images is an error, not an attempt. Gzip input is
//! recognised by its magic bytes `1f 8b`; it is decompressed with a cap derived from the
//! header and bounded by what the compressed length can hold.

use std::fs;
use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};

/// Magic number of an unsigned-byte, 3-dimensional IDX file (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte, 1-dimensional IDX file (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Deflate expands at most about 1032:1; anything beyond this ratio cannot be genuine.
const MAX_GZIP_RATIO: u64 = 1100;
/// Hard cap on the decompressed size of one file (4 GiB).
const MAX_DECOMPRESSED: u64 = 4 << 30;

/// The pixels of an IDX images file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count × rows × cols` bytes, row-major.
    pub pixels: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Kind {
    Images,
    Labels,
}

impl Kind {
    fn dims(self) -> u8 {
        match self {
            Kind::Images => 3,
            Kind::Labels => 1,
        }
    }
    fn magic(self) -> u32 {
        match self {
            Kind::Images => IMAGES_MAGIC,
            Kind::Labels => LABELS_MAGIC,
        }
    }
}

/// Reads an IDX images file (raw or gzip).
pub fn read_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_images(&bytes, path)
}

/// Reads an IDX labels file (raw or gzip) and checks every label is below `classes`.
pub fn read_labels(path: impl AsRef<Path>, classes: usize) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_labels(&bytes, path, classes)
}

/// Parses the bytes of an IDX images file (raw or gzip); `path` only names it in errors.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let decompressed;
    let raw = if is_gzip(bytes) {
        decompressed = gunzip(bytes, path, Kind::Images)?;
        &decompressed[..]
    } else {
        bytes
    };
    let (dims, header) = parse_header(raw, path, Kind::Images)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::BadShape {
            path: path.to_path_buf(),
            problem: format!("images are {rows}×{cols}; both sides must be positive"),
        });
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: raw[header..].to_vec(),
    })
}

/// Parses the bytes of an IDX labels file (raw or gzip) and checks every label is below
/// `classes`; `path` only names it in errors.
pub fn parse_labels(bytes: &[u8], path: &Path, classes: usize) -> Result<Vec<u8>> {
    let decompressed;
    let raw = if is_gzip(bytes) {
        decompressed = gunzip(bytes, path, Kind::Labels)?;
        &decompressed[..]
    } else {
        bytes
    };
    let (_, header) = parse_header(raw, path, Kind::Labels)?;
    let labels = &raw[header..];
    check_labels(labels, path, classes)?;
    Ok(labels.to_vec())
}

pub(crate) fn check_labels(labels: &[u8], path: &Path, classes: usize) -> Result<()> {
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index],
            classes,
        }),
        None => Ok(()),
    }
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Checks the magic number and the dimension count; returns the dimension count.
fn check_magic(head: &[u8], path: &Path, kind: Kind) -> Result<u8> {
    let found = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if head[0] != 0 || head[1] != 0 || head[2] != 0x08 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: kind.magic(),
        });
    }
    if head[3] != kind.dims() {
        return Err(DataError::BadDimensionCount {
            path: path.to_path_buf(),
            found: head[3],
            expected: kind.dims(),
        });
    }
    Ok(head[3])
}

/// Product of the dimensions and the total file length they imply, or `Overflow`.
fn implied_len(dims: &[u64], header: u64, path: &Path) -> Result<u64> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|payload| payload.checked_add(header))
        .filter(|&total| usize::try_from(total).is_ok())
        .ok_or_else(|| DataError::Overflow {
            path: path.to_path_buf(),
            dims: dims.to_vec(),
        })
}

/// Validates the header of a raw IDX file against its length; returns the dimensions and the
/// header length. Nothing is allocated from the header's numbers.
fn parse_header(raw: &[u8], path: &Path, kind: Kind) -> Result<(Vec<usize>, usize)> {
    let len = raw.len() as u64;
    if raw.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if raw.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            needed: 4,
            actual: len,
        });
    }
    let ndims = check_magic(raw, path, kind)? as usize;
    let header = 4 + 4 * ndims;
    if raw.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            needed: header as u64,
            actual: len,
        });
    }
    let dims: Vec<u64> = raw[4..header]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let total = implied_len(&dims, header as u64, path)?;
    if total > len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            needed: total,
            actual: len,
        });
    }
    if total < len {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            expected: total,
            actual: len,
        });
    }
    // Each dimension is at most the file length here, so it fits in usize.
    Ok((dims.iter().map(|&d| d as usize).collect(), header))
}

/// Decompresses a gzip IDX file. The header is decompressed first and validated; the payload
/// is then read with a cap of exactly what the header announces (plus one byte to detect
/// trailing data), and only if that is no more than the compressed length can hold. The
/// output buffer grows with the data actually produced, never from the header's claim.
fn gunzip(bytes: &[u8], path: &Path, kind: Kind) -> Result<Vec<u8>> {
    let gz_err = |e: std::io::Error| DataError::Gzip {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut dec = MultiGzDecoder::new(bytes);
    let mut out = Vec::new();
    // Magic number.
    let got = read_up_to(&mut dec, &mut out, 4).map_err(gz_err)?;
    if got == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    if got < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            needed: 4,
            actual: got as u64,
        });
    }
    let ndims = check_magic(&out, path, kind)? as usize;
    let header = 4 + 4 * ndims;
    let got = read_up_to(&mut dec, &mut out, header - 4).map_err(gz_err)?;
    if got < header - 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            needed: header as u64,
            actual: (4 + got) as u64,
        });
    }
    let dims: Vec<u64> = out[4..header]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let total = implied_len(&dims, header as u64, path)?;
    let limit = (bytes.len() as u64)
        .saturating_mul(MAX_GZIP_RATIO)
        .saturating_add(1024)
        .min(MAX_DECOMPRESSED);
    if total > limit {
        return Err(DataError::Implausible {
            path: path.to_path_buf(),
            claimed: total,
            limit,
        });
    }
    // Read the payload plus one byte: reading to the end of the stream also makes the decoder
    // check the gzip trailer (CRC-32 and length).
    (&mut dec)
        .take(total - header as u64 + 1)
        .read_to_end(&mut out)
        .map_err(gz_err)?;
    Ok(out)
}

/// Appends up to `n` bytes from `r` to `out`; returns how many were read (fewer only at EOF).
fn read_up_to(r: &mut impl Read, out: &mut Vec<u8>, n: usize) -> std::io::Result<usize> {
    let before = out.len();
    r.take(n as u64).read_to_end(out)?;
    Ok(out.len() - before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images_bytes(count: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut v = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [count, rows, cols] {
            v.extend(d.to_be_bytes());
        }
        v.extend((0..count * rows * cols).map(|i| i as u8));
        v
    }

    #[test]
    fn parses_small_images() {
        let b = images_bytes(2, 3, 4);
        let img = parse_images(&b, Path::new("x")).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 3, 4));
        assert_eq!(img.pixels.len(), 24);
        assert_eq!(img.pixels[23], 23);
    }

    #[test]
    fn huge_claim_is_an_error_before_allocation() {
        let mut v = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [1u32 << 31, 1 << 31, 1] {
            v.extend(d.to_be_bytes());
        }
        assert!(matches!(
            parse_images(&v, Path::new("x")),
            Err(DataError::Truncated { .. })
        ));
        let mut v = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [u32::MAX, u32::MAX, u32::MAX] {
            v.extend(d.to_be_bytes());
        }
        assert!(matches!(
            parse_images(&v, Path::new("x")),
            Err(DataError::Overflow { .. })
        ));
    }
}
