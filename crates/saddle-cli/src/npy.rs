//! NumPy `.npy` files (format versions 1–3): the interchange format of `saddle predict` and
//! `saddle attack`. Images are float32 NCHW; labels int64.
//!
//! Read by hand rather than through a crate because a reader must never trust a header: the
//! element count it claims is checked against the file's length before anything is allocated.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// An array read from a `.npy` file, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
    /// The file's dtype string (`<f4`, `<i8`, ...).
    pub dtype: String,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads `path`, accepting little-endian float32/float64 and integer dtypes (converted to f32),
/// C order only.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a usable .npy file", path.display()))
}

/// Parses the bytes of a `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("it does not start with the .npy magic string");
    }
    let major = bytes[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("truncated header");
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .context("truncated header")?;
    let header = std::str::from_utf8(&bytes[start..end]).context("header is not text")?;
    let descr = dict_str(header, "descr").context("header has no 'descr'")?;
    if dict_raw(header, "fortran_order")
        .map(|v| v.starts_with("True"))
        .unwrap_or(false)
    {
        bail!("Fortran-order arrays are not supported; save with np.ascontiguousarray");
    }
    let shape_txt = dict_raw(header, "shape").context("header has no 'shape'")?;
    let inner = shape_txt
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .context("malformed 'shape'")?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(
            part.parse::<usize>()
                .with_context(|| format!("bad dimension '{part}'"))?,
        );
    }
    let width = match descr.as_str() {
        "<f4" | "<i4" | "<u4" => 4,
        "<f8" | "<i8" | "<u8" => 8,
        "|u1" | "|i1" | "|b1" => 1,
        "<i2" | "<u2" => 2,
        other => bail!(
            "unsupported dtype '{other}' (use float32, float64 or an integer type, little-endian)"
        ),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("shape overflows")?;
    let need = count.checked_mul(width).context("shape overflows")?;
    let body = &bytes[end..];
    if body.len() != need {
        bail!(
            "shape {shape:?} of {descr} needs {need} data bytes but the file has {}",
            body.len()
        );
    }
    let data: Vec<f32> = match descr.as_str() {
        "<f4" => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "<f8" => body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "<i4" => body
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "<u4" => body
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "<i8" => body
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "<u8" => body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        "<i2" => body
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        "<u2" => body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32)
            .collect(),
        "|i1" => body.iter().map(|&b| b as i8 as f32).collect(),
        _ => body.iter().map(|&b| b as f32).collect(),
    };
    Ok(Array {
        shape,
        data,
        dtype: descr,
    })
}

fn dict_raw<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}':");
    let pat_b = format!("\"{key}\":");
    let i = header
        .find(&pat_a)
        .map(|i| i + pat_a.len())
        .or_else(|| header.find(&pat_b).map(|i| i + pat_b.len()))?;
    Some(header[i..].trim_start())
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let v = dict_raw(header, key)?;
    let q = v.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    v[1..].split(q).next().map(str::to_string)
}

fn encode(shape: &[usize], descr: &str, body: Vec<u8>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending the header with a newline.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(body);
    out
}

/// The bytes of a float32 `.npy` file.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    encode(
        shape,
        "<f4",
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// The bytes of a boolean `.npy` file (`|b1`: one byte, 0 or 1, per entry).
pub fn encode_bool(shape: &[usize], data: &[bool]) -> Vec<u8> {
    encode(shape, "|b1", data.iter().map(|&v| u8::from(v)).collect())
}

/// The bytes of an int64 `.npy` file.
#[cfg(test)]
pub fn encode_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    encode(
        shape,
        "<i8",
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_and_i64() {
        let a = parse(&encode_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5])).unwrap();
        assert_eq!(
            (a.shape.clone(), a.data.clone()),
            (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5])
        );
        let b = parse(&encode_i64(&[3], &[7, 0, 9])).unwrap();
        assert_eq!(
            (b.shape, b.data, b.dtype.as_str()),
            (vec![3], vec![7.0, 0.0, 9.0], "<i8")
        );
        let c = parse(&encode_bool(&[2, 2], &[true, false, false, true])).unwrap();
        assert_eq!(
            (c.shape, c.data, c.dtype.as_str()),
            (vec![2, 2], vec![1.0, 0.0, 0.0, 1.0], "|b1")
        );
        // The header pads the data to a 64-byte boundary: 6 floats = 24 bytes after it.
        assert_eq!(encode_f32(&[2, 3], &[0.0; 6]).len() % 64, 24);
    }

    #[test]
    fn lying_headers_are_errors_before_allocation() {
        let mut bad = encode_f32(&[2], &[1.0, 2.0]);
        let s = String::from_utf8_lossy(&bad).replace("(2,)", "(9999999999999,)");
        bad = s.into_bytes();
        assert!(parse(&bad).is_err());
        assert!(parse(b"not numpy at all").is_err());
        assert!(parse(&encode_f32(&[4], &[1.0, 2.0, 3.0, 4.0])[..70]).is_err());
        let fortran = String::from_utf8_lossy(&encode_f32(&[1], &[1.0])).replace("False", "True ");
        assert!(parse(fortran.as_bytes()).is_err());
    }
}
