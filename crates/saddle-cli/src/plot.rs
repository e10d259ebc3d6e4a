//! Figures as PNG and SVG with `plotters`: the same drawing code runs on the bitmap backend
//! (into a buffer that `png` encodes, so no `image` crate) and on the SVG backend. Text is set
//! in DejaVu Sans, shipped in `assets/` (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`)
//! and registered with plotters' `ab_glyph` renderer: no system fonts are read.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use saddle_train::experiments::Grid;

use crate::fsutil;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn fonts() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
            && register_font("sans-serif", FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the shipped font cannot be read"))
    }
}

fn de<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the figure: {e:?}")
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the figure on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Short, distinct names of model files for titles: the file stems, or the parent folder and
/// the stem where stems repeat (`runs/nat/model.safetensors` → `nat/model`).
pub fn names(paths: &[std::path::PathBuf]) -> Vec<String> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let stems: Vec<String> = paths.iter().map(|p| stem(p)).collect();
    let unique = (0..stems.len()).all(|i| !stems[..i].contains(&stems[i]));
    if unique {
        return stems;
    }
    paths
        .iter()
        .zip(stems)
        .map(|(p, s)| match p.parent().and_then(|d| d.file_name()) {
            Some(d) => format!("{}/{s}", d.to_string_lossy()),
            None => s,
        })
        .collect()
}

/// Draws `fig` to `stem.png` and `stem.svg` (each written atomically).
pub fn save(fig: &impl Figure, stem: &Path) -> Result<()> {
    fonts()?;
    let (w, h) = fig.size();
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(de)?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(de)?;
    }
    fsutil::write_atomic(&stem.with_extension("png"), &rgb_png(w, h, &rgb)?)?;
    fsutil::write_atomic(&stem.with_extension("svg"), svg.as_bytes())?;
    Ok(())
}

/// An 8-bit RGB image (`w·h·3` bytes, row-major) as a PNG file's bytes.
pub fn rgb_png(w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().map_err(de)?;
    wr.write_image_data(rgb).map_err(de)?;
    wr.finish().map_err(de)?;
    Ok(out)
}

fn range(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

/// One panel of curves.
#[derive(Debug)]
pub struct CurvePanel {
    /// The panel's title.
    pub title: String,
    /// The curves, each a value per iteration, in their colour group (an image).
    pub curves: Vec<(usize, Vec<f32>)>,
}

/// Panels of curves side by side (the loss over PGD iterations, one panel per model).
#[derive(Debug)]
pub struct Curves {
    /// The panels, left to right.
    pub panels: Vec<CurvePanel>,
    /// The x axis' label.
    pub x_label: String,
    /// The y axis' label.
    pub y_label: String,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

impl Figure for Curves {
    fn size(&self) -> (u32, u32) {
        (480 * self.panels.len().max(1) as u32, 400)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(de)?;
        let areas = root.split_evenly((1, self.panels.len().max(1)));
        for (p, area) in self.panels.iter().zip(&areas) {
            let steps = p.curves.iter().map(|c| c.1.len()).max().unwrap_or(1);
            let (lo, hi) = range(p.curves.iter().flat_map(|c| c.1.iter().copied()));
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(0f32..(steps.max(2) - 1) as f32, lo..hi)
                .map_err(de)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .light_line_style(WHITE)
                .draw()
                .map_err(de)?;
            // Many restarts: thin, translucent lines so that the density shows.
            let alpha = (8.0 / p.curves.len().max(1) as f64).clamp(0.03, 0.8);
            chart
                .draw_series(p.curves.iter().map(|(g, c)| {
                    let pts: Vec<(f32, f32)> =
                        c.iter().enumerate().map(|(t, &v)| (t as f32, v)).collect();
                    PathElement::new(pts, PALETTE[g % PALETTE.len()].mix(alpha).stroke_width(1))
                }))
                .map_err(de)?;
        }
        Ok(())
    }
}

/// One histogram.
#[derive(Debug)]
pub struct HistPanel {
    /// The panel's title.
    pub title: String,
    /// The values counted.
    pub values: Vec<f32>,
}

/// Histograms in a grid of `rows × cols` panels.
#[derive(Debug)]
pub struct Histograms {
    /// Panel rows.
    pub rows: usize,
    /// Panel columns.
    pub cols: usize,
    /// The panels, row by row.
    pub panels: Vec<HistPanel>,
    /// Number of bins.
    pub bins: usize,
    /// The x axis' label.
    pub x_label: String,
}

/// The counts of `values` in `bins` equal bins over `[lo, hi]`.
pub fn histogram(values: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<usize> {
    let mut counts = vec![0; bins];
    let width = (hi - lo) / bins as f32;
    for &v in values.iter().filter(|v| v.is_finite()) {
        let k = if width > 0.0 {
            (((v - lo) / width) as usize).min(bins - 1)
        } else {
            0
        };
        counts[k] += 1;
    }
    counts
}

impl Figure for Histograms {
    fn size(&self) -> (u32, u32) {
        (300 * self.cols.max(1) as u32, 240 * self.rows.max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(de)?;
        let areas = root.split_evenly((self.rows.max(1), self.cols.max(1)));
        for (p, area) in self.panels.iter().zip(&areas) {
            let (lo, hi) = range(p.values.iter().copied());
            let counts = histogram(&p.values, self.bins, lo, hi);
            let top = counts.iter().copied().max().unwrap_or(1).max(1);
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 13))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(lo..hi, 0f32..top as f32 * 1.05)
                .map_err(de)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .x_labels(4)
                .y_labels(4)
                .y_label_formatter(&|v| format!("{}", v.round() as i64))
                .light_line_style(WHITE)
                .draw()
                .map_err(de)?;
            let w = (hi - lo) / self.bins as f32;
            chart
                .draw_series(counts.iter().enumerate().map(|(k, &c)| {
                    let x0 = lo + k as f32 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w, c as f32)], PALETTE[0].filled())
                }))
                .map_err(de)?;
        }
        Ok(())
    }
}

/// One model's row of the inspection figure: its first-layer filters and its softmax biases.
#[derive(Debug)]
pub struct InspectRow {
    /// The row's title (the model).
    pub title: String,
    /// The filters as a grid of tiles.
    pub grid: Grid,
    /// The softmax layer's biases.
    pub biases: Vec<f32>,
}

/// Filters (blue negative, white zero, red positive, scaled per model) beside the biases.
#[derive(Debug)]
pub struct Inspect {
    /// One row per model.
    pub rows: Vec<InspectRow>,
}

fn diverging(v: f32) -> RGBColor {
    let v = v.clamp(-1.0, 1.0);
    let fade = |t: f32| (255.0 * (1.0 - t)) as u8;
    if v >= 0.0 {
        RGBColor(255, fade(v), fade(v))
    } else {
        RGBColor(fade(-v), fade(-v), 255)
    }
}

impl Figure for Inspect {
    fn size(&self) -> (u32, u32) {
        (900, 320 * self.rows.len().max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(de)?;
        let rows = root.split_evenly((self.rows.len().max(1), 1));
        for (r, area) in self.rows.iter().zip(&rows) {
            let (left, right) = area.split_horizontally(540);
            let g = &r.grid;
            // Square pixels: the largest whole number of screen pixels per weight that fits.
            let left = left
                .titled(
                    &format!("{}: first-layer filters", r.title),
                    ("sans-serif", 14),
                )
                .map_err(de)?;
            let (aw, ah) = left.dim_in_pixel();
            let cell = ((aw.saturating_sub(20) as usize / g.width.max(1))
                .min(ah.saturating_sub(10) as usize / g.height.max(1)))
            .max(1) as i32;
            let ox = (aw as i32 - cell * g.width as i32) / 2;
            let oy = (ah as i32 - cell * g.height as i32) / 2;
            left.draw(&Rectangle::new(
                [
                    (ox, oy),
                    (ox + cell * g.width as i32, oy + cell * g.height as i32),
                ],
                RGBColor(200, 200, 200).filled(),
            ))
            .map_err(de)?;
            for &(x0, y0) in &g.tiles {
                for y in y0..y0 + g.tile_height {
                    for x in x0..x0 + g.tile_width {
                        let c = diverging(g.pixels[y * g.width + x]);
                        let (px, py) = (ox + cell * x as i32, oy + cell * y as i32);
                        left.draw(&Rectangle::new(
                            [(px, py), (px + cell, py + cell)],
                            c.filled(),
                        ))
                        .map_err(de)?;
                    }
                }
            }

            let (lo, hi) = range(r.biases.iter().copied().chain([0.0]));
            let k = r.biases.len();
            let mut chart = ChartBuilder::on(&right)
                .caption("softmax-layer biases", ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(-0.5f32..k as f32 - 0.5, lo..hi)
                .map_err(de)?;
            chart
                .configure_mesh()
                .x_desc("class")
                .x_labels(k)
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .light_line_style(WHITE)
                .draw()
                .map_err(de)?;
            chart
                .draw_series(r.biases.iter().enumerate().map(|(c, &b)| {
                    let x = c as f32;
                    Rectangle::new([(x - 0.35, 0.0), (x + 0.35, b)], PALETTE[0].filled())
                }))
                .map_err(de)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_every_value_once() {
        let v = [0.0, 0.1, 0.5, 0.99, 1.0, f32::NAN];
        assert_eq!(histogram(&v, 2, 0.0, 1.0), vec![2, 3]);
        assert_eq!(histogram(&[2.0, 2.0], 3, 2.0, 2.0), vec![2, 0, 0]);
    }

    #[test]
    fn names_are_stems_unless_they_repeat() {
        let p = |s: &str| std::path::PathBuf::from(s);
        assert_eq!(names(&[p("a/nat.st"), p("b/adv.st")]), vec!["nat", "adv"]);
        assert_eq!(
            names(&[p("r/nat/model.st"), p("r/adv/model.st")]),
            vec!["nat/model", "adv/model"]
        );
    }

    #[test]
    fn diverging_colours() {
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(1.0), RGBColor(255, 0, 0));
        assert_eq!(diverging(-1.0), RGBColor(0, 0, 255));
    }
}
