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
                .y_label_formatter(&ticks(lo, hi))
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
                .x_label_formatter(&ticks(lo, hi))
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
                .y_label_formatter(&ticks(lo, hi))
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

/// One panel of lines: a series per group (a training mode), points joined and marked.
#[derive(Debug)]
pub struct LinePanel {
    /// The panel's title.
    pub title: String,
    /// The y axis' label.
    pub y_label: String,
    /// A fixed y range (accuracies: 0 to 100), else the data's.
    pub y_range: Option<(f32, f32)>,
    /// `(name, points)` per series, drawn in the palette's order with a legend.
    pub series: Vec<(String, Vec<(f32, f32)>)>,
}

/// Tick labels for an axis from `lo` to `hi`: as many decimals as a tenth of the range needs
/// (none for 0 to 100, three for 0 to 0.06), and never "-0".
pub fn ticks(lo: f32, hi: f32) -> impl Fn(&f32) -> String {
    let span = (hi - lo).abs().max(f32::MIN_POSITIVE) as f64;
    let decimals = (1.0 - span.log10().floor()).clamp(0.0, 6.0) as usize;
    move |v: &f32| {
        let s = format!("{:.*}", decimals, v);
        if s.trim_start_matches('-')
            .chars()
            .all(|c| c == '0' || c == '.')
        {
            s.trim_start_matches('-').to_string()
        } else {
            s
        }
    }
}

/// Line panels in a grid of two columns, sharing a logarithmic x axis (base 2, labelled at the
/// powers of two; the capacity study).
#[derive(Debug)]
pub struct LinePanels {
    /// The panels, row by row.
    pub panels: Vec<LinePanel>,
    /// The x axis' label.
    pub x_label: String,
}

impl LinePanels {
    fn grid(&self) -> (usize, usize) {
        let cols = self.panels.len().clamp(1, 2);
        (self.panels.len().div_ceil(cols).max(1), cols)
    }
}

impl Figure for LinePanels {
    fn size(&self) -> (u32, u32) {
        let (rows, cols) = self.grid();
        (480 * cols as u32, 360 * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(de)?;
        let areas = root.split_evenly(self.grid());
        let (x0, x1) = self
            .panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| s.1.iter().map(|q| q.0)))
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        // The axis is log2 of x, labelled at the powers of two (1, 2, 4, ...); half a doubling
        // of room on the left, more on the right: the legend's place.
        let (x0, x1, data_max) = if x0.is_finite() {
            (x0.log2() - 0.5, x1.log2() + 1.5, x1.log2())
        } else {
            (0.0, 1.0, 1.0)
        };
        let x_ticks = (x1.floor() - x0.ceil()) as usize + 1;
        for (p, area) in self.panels.iter().zip(&areas) {
            let (lo, hi) = p
                .y_range
                .unwrap_or_else(|| range(p.series.iter().flat_map(|s| s.1.iter().map(|q| q.1))));
            let mut chart = ChartBuilder::on(area)
                .caption(&p.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(x0..x1, lo..hi)
                .map_err(de)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&p.y_label)
                .x_labels(x_ticks.max(2))
                .y_label_formatter(&ticks(lo, hi))
                .x_label_formatter(&|v| {
                    // Powers of two within the data; the room on the right is the legend's.
                    if (v - v.round()).abs() < 0.01 && *v <= data_max + 0.01 {
                        format!("{}", 2f32.powf(v.round()))
                    } else {
                        String::new()
                    }
                })
                .light_line_style(WHITE)
                .draw()
                .map_err(de)?;
            for (k, (name, pts)) in p.series.iter().enumerate() {
                let c = PALETTE[k % PALETTE.len()];
                let pts: Vec<(f32, f32)> = pts
                    .iter()
                    .filter(|q| q.0 > 0.0 && q.1.is_finite())
                    .map(|q| (q.0.log2(), q.1))
                    .collect();
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        pts.clone(),
                        c.stroke_width(2),
                    )))
                    .map_err(de)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled())))
                    .map_err(de)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(de)?;
        }
        Ok(())
    }
}

/// The transfer figure: a heatmap of accuracies (rows: the model the examples were crafted on;
/// columns: the model evaluated) beside a bar chart of input-gradient cosine similarities.
#[derive(Debug)]
pub struct TransferFigure {
    /// The heatmap's title.
    pub title: String,
    /// Model names, rows and columns alike.
    pub names: Vec<String>,
    /// `accuracy[i][j]` in `[0, 1]`: model `j` on the examples crafted on model `i`.
    pub accuracy: Vec<Vec<f64>>,
    /// The bar chart's title.
    pub cosine_title: String,
    /// `(source name, mean cosine similarity)` per bar.
    pub cosines: Vec<(String, f64)>,
}

/// White (0) to dark blue (1).
fn sequential(v: f64) -> RGBColor {
    let t = v.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

impl Figure for TransferFigure {
    fn size(&self) -> (u32, u32) {
        (1000, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(de)?;
        let (left, right) = root.split_horizontally(560);
        let k = self.names.len();
        let names = &self.names;
        // Row 0 at the top: row i is drawn at y = k - 1 - i.
        let name_at = move |v: f32| {
            let i = v.round();
            if (v - i).abs() < 0.01 && i >= 0.0 && (i as usize) < k {
                names[i as usize].clone()
            } else {
                String::new()
            }
        };
        let x_label = move |v: &f32| name_at(*v);
        // Room for the longest name (about 7 pixels a character at this size).
        let label_width = (self
            .names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(1)
            * 7
            + 15)
            .clamp(40, 180) as u32;
        let y_label = move |v: &f32| name_at(k as f32 - 1.0 - *v);
        let mut chart = ChartBuilder::on(&left)
            .caption(&self.title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(label_width)
            .build_cartesian_2d(-0.5f32..k as f32 - 0.5, -0.5f32..k as f32 - 0.5)
            .map_err(de)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("evaluated on")
            .y_desc("crafted on")
            .x_labels(k.max(1))
            .y_labels(k.max(1))
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(de)?;
        let row_y = |i: usize| (k - 1 - i) as f32;
        chart
            .draw_series(self.accuracy.iter().enumerate().flat_map(|(i, r)| {
                r.iter().enumerate().map(move |(j, &v)| {
                    let (x, y) = (j as f32, row_y(i));
                    Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        sequential(v).filled(),
                    )
                })
            }))
            .map_err(de)?;
        // The diagonal (white-box) outlined.
        chart
            .draw_series((0..k).map(|i| {
                let (x, y) = (i as f32, row_y(i));
                Rectangle::new(
                    [(x - 0.48, y - 0.48), (x + 0.48, y + 0.48)],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(de)?;
        chart
            .draw_series(self.accuracy.iter().enumerate().flat_map(|(i, r)| {
                r.iter().enumerate().map(move |(j, &v)| {
                    let colour = if v > 0.55 { WHITE } else { BLACK };
                    Text::new(
                        format!("{:.1}%", 100.0 * v),
                        (j as f32 - 0.22, row_y(i) + 0.08),
                        ("sans-serif", 14).into_font().color(&colour),
                    )
                })
            }))
            .map_err(de)?;

        let m = self.cosines.len();
        let (lo, hi) = range(self.cosines.iter().map(|c| c.1 as f32).chain([0.0, 1.0]));
        let bars = &self.cosines;
        let bar_label = move |v: &f32| {
            let i = v.round();
            if (v - i).abs() < 0.01 && i >= 0.0 && (i as usize) < m {
                bars[i as usize].0.clone()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(&right)
            .caption(&self.cosine_title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(-0.5f32..m.max(1) as f32 - 0.5, lo..hi)
            .map_err(de)?;
        chart
            .configure_mesh()
            .x_desc("source")
            .y_desc("mean cosine similarity")
            .x_labels(m.max(1))
            .x_label_formatter(&bar_label)
            .y_label_formatter(&ticks(lo, hi))
            .light_line_style(WHITE)
            .draw()
            .map_err(de)?;
        chart
            .draw_series(self.cosines.iter().enumerate().map(|(i, c)| {
                let x = i as f32;
                Rectangle::new(
                    [(x - 0.35, 0.0), (x + 0.35, c.1 as f32)],
                    PALETTE[0].filled(),
                )
            }))
            .map_err(de)?;
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
    fn tick_labels_have_the_range_s_decimals_and_no_negative_zero() {
        let t = ticks(0.0, 100.0);
        assert_eq!(
            (t(&0.0), t(&50.0), t(&-0.0)),
            ("0".into(), "50".into(), "0".into())
        );
        let t = ticks(-0.05, 0.07);
        assert_eq!((t(&0.02), t(&-0.04)), ("0.02".into(), "-0.04".into()));
        // A value that rounds to zero is "0.00", not "-0.00".
        assert_eq!(t(&-0.0001), "0.00");
        assert_eq!(ticks(0.0, 0.06)(&0.01), "0.010");
        let t = ticks(0.0, 14.0);
        assert_eq!(t(&2.0), "2");
        // An empty range still formats.
        assert_eq!(ticks(1.0, 1.0)(&1.0), "1.000000");
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
    fn sequential_colours_run_from_white_to_blue() {
        assert_eq!(sequential(0.0), RGBColor(255, 255, 255));
        assert_eq!(sequential(1.0), RGBColor(8, 48, 107));
        assert_eq!(sequential(2.0), sequential(1.0));
    }

    #[test]
    fn diverging_colours() {
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(1.0), RGBColor(255, 0, 0));
        assert_eq!(diverging(-1.0), RGBColor(0, 0, 255));
    }
}
