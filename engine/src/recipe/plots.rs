//! The report's figures, drawn with plotters and encoded as PNG by `image`: every chart has a
//! title, labelled axes with values and a legend; every heatmap its row and column names, the
//! values in its cells and a colour scale. Text is drawn with DejaVu Sans, compiled into the
//! binary, so no system font is needed.

use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// The font every figure uses.
const FONT: &str = "sans-serif";
static REGISTER_FONT: Once = Once::new();

fn ensure_font() {
    REGISTER_FONT.call_once(|| {
        let bytes = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
        // The shipped font is valid; a failure here would be a build of a broken file.
        register_font(FONT, FontStyle::Normal, bytes).unwrap_or_else(|_| panic!("assets/fonts/DejaVuSans.ttf is not a font"));
    });
}

/// Distinct colours for series and experts (Tableau 10).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One named series: a line, or markers (evaluations), optionally each with its own label
/// drawn beside it.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
    pub point_labels: Vec<String>,
}

/// A line chart: what it shows and its series.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Chart {
    /// Every string the figure draws besides tick values (for checks).
    pub fn texts(&self) -> Vec<&str> {
        [&self.title, &self.x_label, &self.y_label]
            .into_iter()
            .chain(self.series.iter().flat_map(|s| std::iter::once(&s.label).chain(&s.point_labels)))
            .map(String::as_str)
            .collect()
    }
}

/// Shares per domain (rows) and expert (columns), one panel per layer.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    /// `[panel][row][column]`.
    pub panels: Vec<Vec<Vec<f64>>>,
    pub panel_label: String,
    /// `[panel][row][column]` text in the cells, when it is not the shaded value itself.
    pub cell_text: Vec<Vec<Vec<String>>>,
    /// What the colour scale measures.
    pub scale_label: String,
}

/// A rendered figure: the PNG, its size, and every string drawn on it besides tick values.
#[derive(Debug, Clone)]
pub struct Figure {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub texts: Vec<String>,
}

impl Heatmap {
    pub fn texts(&self) -> Vec<&str> {
        [&self.title, &self.panel_label, &self.scale_label].into_iter().chain(&self.rows).chain(&self.columns).map(String::as_str).collect()
    }
}

fn figure(png: Vec<u8>, width: u32, height: u32, texts: Vec<&str>) -> Figure {
    Figure { png, width, height, texts: texts.into_iter().map(str::to_string).collect() }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Renders `draw` on a white `width` x `height` canvas and encodes it as PNG.
fn render(width: u32, height: u32, draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>) -> Result<Vec<u8>> {
    ensure_font();
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(png)
}

/// The range of `values` with a margin, never empty.
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
    lo - pad..hi + pad
}

/// Tick labels for an axis from `lo` to `hi` with about `labels` ticks: short (1.2e12 rather
/// than 1200000000000), with as many digits as the ticks' spacing needs to tell them apart
/// (8.21e12, 8.22e12, ... where the values are close, not 8.2e12 twice).
pub fn tick_labels(lo: f64, hi: f64, labels: usize) -> impl Fn(&f64) -> String {
    let step = ((hi - lo) / labels.max(1) as f64).abs();
    let step_exponent = if step > 0.0 && step.is_finite() { step.log10().floor() as i32 } else { 0 };
    move |v: &f64| {
        let a = v.abs();
        if a != 0.0 && !(1e-2..1e5).contains(&a) {
            let decimals = (a.log10().floor() as i32 - step_exponent).clamp(1, 12) as usize;
            format!("{v:.decimals$e}")
        } else {
            let decimals = (-step_exponent).clamp(0, 8) as usize;
            format!("{v:.decimals$}")
        }
    }
}

/// Draws `chart` in `area`; a small multiple has fewer ticks and no legend (its colours are
/// the main chart's). The legend stands in a strip right of the plot, so that it covers no
/// point or label, however the points fall.
fn draw_chart(area: &DrawingArea<BitMapBackend<'_>, Shift>, chart: &Chart, small: bool) -> Result<()> {
    if small {
        return draw_plot(area, chart, true);
    }
    let width = area.dim_in_pixel().0;
    let longest = chart.series.iter().map(|s| s.label.chars().count()).max().unwrap_or(0) as u32;
    let legend_width = (longest * 8 + 44).min(width * 2 / 5);
    let (plot, legend) = area.split_horizontally(width - legend_width);
    draw_plot(&plot, chart, false)?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let y = 50 + 24 * i as i32;
        if s.markers {
            legend.draw(&Circle::new((14, y), 5, colour.filled())).map_err(err)?;
        } else {
            legend.draw(&PathElement::new(vec![(4, y), (24, y)], colour.stroke_width(3))).map_err(err)?;
        }
        legend.draw(&Text::new(s.label.clone(), (32, y - 8), (FONT, 14))).map_err(err)?;
    }
    Ok(())
}

fn draw_plot(area: &DrawingArea<BitMapBackend<'_>, Shift>, chart: &Chart, small: bool) -> Result<()> {
    let title_size = if small { 18 } else { 24 };
    let x = padded(chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let y = padded(chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let x_labels = if small { 4 } else { 10 };
    let (x_tick, y_tick) = (tick_labels(x.start, x.end, x_labels), tick_labels(y.start, y.end, 10));
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, title_size))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_labels(x_labels)
        .y_labels(10)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        if s.markers {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, colour.filled()))).map_err(err)?;
            let labelled = s.points.iter().zip(&s.point_labels);
            ctx.draw_series(labelled.map(|(&p, l)| EmptyElement::at(p) + Text::new(l.clone(), (7, -14), (FONT, 13)))).map_err(err)?;
        } else {
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2))).map_err(err)?;
        }
    }
    Ok(())
}

/// One line chart as PNG.
pub fn line_chart(chart: &Chart, width: u32, height: u32) -> Result<Figure> {
    let png = render(width, height, |root| draw_chart(root, chart, false))?;
    Ok(figure(png, width, height, chart.texts()))
}

/// A main chart on top and small multiples below it, `columns` to a row, as one PNG.
pub fn chart_with_panels(main: &Chart, panels: &[Chart], columns: usize, width: u32) -> Result<Figure> {
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns) as u32;
    let (main_h, panel_h) = (480u32, 320u32);
    let height = main_h + rows * panel_h;
    let texts = main.texts().into_iter().chain(panels.iter().flat_map(|p| [p.title.as_str(), p.x_label.as_str(), p.y_label.as_str()])).collect();
    let png = render(width, height, |root| {
        let (top, bottom) = root.split_vertically(main_h);
        draw_chart(&top, main, false)?;
        if rows > 0 {
            let cells = bottom.split_evenly((rows as usize, columns));
            for (cell, chart) in cells.iter().zip(panels) {
                draw_chart(cell, chart, true)?;
            }
        }
        Ok(())
    })?;
    Ok(figure(png, width, height, texts))
}

/// A white-to-blue colour for a share in [0, 1] of the scale's top.
fn shade(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    RGBColor((255.0 * (1.0 - 0.88 * v)) as u8, (255.0 * (1.0 - 0.6 * v)) as u8, (255.0 * (1.0 - 0.2 * v)) as u8)
}

/// Heatmap panels side by side with row and column names, values in the cells, and a colour
/// scale from 0 to the largest value shown.
pub fn heatmap(map: &Heatmap) -> Result<Figure> {
    let (cell_w, cell_h) = (86i32, 34i32);
    let label_w = 10 + 9 * map.rows.iter().map(|r| r.chars().count()).max().unwrap_or(4) as i32;
    let panel_w = cell_w * map.columns.len() as i32 + 24;
    let (top, scale_w) = (78i32, 110i32);
    let title_w = 30 + 11 * map.title.chars().count() as i32;
    let width = (label_w + panel_w * map.panels.len() as i32 + scale_w).max(title_w) as u32;
    let height = (top + cell_h * map.rows.len() as i32 + 40).max(260) as u32;
    let max = map.panels.iter().flatten().flatten().cloned().fold(1e-9, f64::max);
    let png = render(width, height, |root| {
        let text = |size| (FONT, size).into_font().color(&BLACK);
        root.draw(&Text::new(map.title.clone(), (10, 8), text(22))).map_err(err)?;
        for (r, name) in map.rows.iter().enumerate() {
            root.draw(&Text::new(name.clone(), (8, top + r as i32 * cell_h + 10), text(15))).map_err(err)?;
        }
        for (p, panel) in map.panels.iter().enumerate() {
            let x0 = label_w + p as i32 * panel_w;
            let heading = if map.panels.len() == 1 { map.panel_label.clone() } else { format!("{} {p}", map.panel_label) };
            root.draw(&Text::new(heading, (x0, 36), text(16))).map_err(err)?;
            for (c, name) in map.columns.iter().enumerate() {
                let short: String = name.chars().take(10).collect();
                root.draw(&Text::new(short, (x0 + c as i32 * cell_w + 4, top - 20), text(13))).map_err(err)?;
            }
            for (r, row) in panel.iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    let (x, y) = (x0 + c as i32 * cell_w, top + r as i32 * cell_h);
                    root.draw(&Rectangle::new([(x, y), (x + cell_w - 2, y + cell_h - 2)], shade(v / max).filled())).map_err(err)?;
                    let ink = if v / max > 0.6 { WHITE } else { BLACK };
                    let label = map.cell_text.get(p).and_then(|t| t.get(r)?.get(c)).cloned().unwrap_or_else(|| format!("{v:.2}"));
                    root.draw(&Text::new(label, (x + cell_w / 2 - 18, y + 9), (FONT, 14).into_font().color(&ink))).map_err(err)?;
                }
            }
        }
        // The colour scale: 0 at the bottom, the largest share at the top.
        let (sx, sy, sh) = (width as i32 - scale_w + 20, top, cell_h * map.rows.len() as i32);
        for i in 0..sh {
            let v = 1.0 - i as f64 / sh.max(1) as f64;
            root.draw(&Rectangle::new([(sx, sy + i), (sx + 18, sy + i + 1)], shade(v).filled())).map_err(err)?;
        }
        root.draw(&Rectangle::new([(sx, sy), (sx + 18, sy + sh)], BLACK.stroke_width(1))).map_err(err)?;
        root.draw(&Text::new(format!("{max:.2}"), (sx + 24, sy - 6), text(13))).map_err(err)?;
        root.draw(&Text::new("0".to_string(), (sx + 24, sy + sh - 8), text(13))).map_err(err)?;
        root.draw(&Text::new(map.scale_label.clone(), (sx - 4, sy - 26), text(13))).map_err(err)?;
        Ok(())
    })?;
    Ok(figure(png, width, height, map.texts()))
}
