//! `analyze --plot`: per-layer curves, one line per module kind, in SVG or
//! PNG (chosen by the extension), written atomically.
//!
//! Panels: ‖ΔW‖_F; effective rank at 90% energy; with `--base`, the share of
//! ‖ΔW‖² inside the base weight's top-k left singular subspace next to a
//! random subspace's k/d; with `--against`, the cosine with the other
//! adapter. Modules without a layer index (embeddings, the output head) are
//! named in the caption instead.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{AnalyzeReport, ModuleReport};
use crate::atomic::write_atomic;
use crate::error::{Error, Result};

const WIDTH: u32 = 960;
const PANEL: u32 = 280;
/// Title, legend and the list of modules not drawn.
const HEAD: u32 = 80;
const FONT: &str = "sans-serif";
/// DejaVu Sans Mono (Bitstream Vera licence, `assets/fonts/`).
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

/// Picture formats, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotFormat {
    Svg,
    Png,
}

impl PlotFormat {
    pub fn from_path(path: &Path) -> Option<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Some(PlotFormat::Svg),
            Some("png") => Some(PlotFormat::Png),
            _ => None,
        }
    }
}

/// `blk.3.attn_q.weight` → (3, "attn_q"); `model.layers.3.self_attn.q_proj`
/// → (3, "self_attn.q_proj"); no layer index → None.
pub fn layer_and_kind(name: &str) -> Option<(usize, String)> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts.windows(2).position(|w| {
        matches!(w[0], "blk" | "layers" | "h" | "layer") && w[1].parse::<usize>().is_ok()
    })?;
    let layer = parts[i + 1].parse().ok()?;
    let rest: Vec<&str> = parts[i + 2..]
        .iter()
        .copied()
        .filter(|p| *p != "weight")
        .collect();
    Some((layer, rest.join(".")))
}

type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// One value per module, grouped by kind into (layer, value) curves.
fn series(modules: &[&ModuleReport], value: impl Fn(&ModuleReport) -> Option<f64>) -> Series {
    let mut out = Series::new();
    for m in modules {
        if let (Some((layer, kind)), Some(v)) = (layer_and_kind(&m.name), value(m)) {
            if v.is_finite() {
                out.entry(kind).or_default().push((layer as f64, v));
            }
        }
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

struct Panel {
    title: String,
    data: Series,
    /// Per-kind reference curves drawn thin and grey (random expectation).
    reference: Series,
    y_range: Option<(f64, f64)>,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// Every module kind, sorted: a kind keeps its colour in every panel.
fn kinds(modules: &[&ModuleReport]) -> Vec<String> {
    let mut k: Vec<String> = modules
        .iter()
        .filter_map(|m| layer_and_kind(&m.name).map(|(_, k)| k))
        .collect();
    k.sort();
    k.dedup();
    k
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    layers: (f64, f64),
    kinds: &[String],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let values = p
        .data
        .values()
        .chain(p.reference.values())
        .flatten()
        .map(|(_, y)| *y);
    let (lo, hi) = p.y_range.unwrap_or_else(|| {
        let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        lo = lo.min(0.0);
        if hi <= lo {
            hi = lo + 1.0;
        }
        (lo, hi + 0.05 * (hi - lo))
    });
    let x_hi = if layers.1 > layers.0 {
        layers.1
    } else {
        layers.0 + 1.0
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(layers.0..x_hi, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("layer")
        .x_labels(((x_hi - layers.0) as usize + 1).min(16))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FONT, 12))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (kind, pts) in &p.data {
        let c = color(kinds.iter().position(|k| k == kind).unwrap_or(0));
        chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 2, c.filled())))?;
    }
    // Reference curves on top, thin and dark grey, so they stay visible.
    for r in p.reference.values() {
        chart.draw_series(LineSeries::new(
            r.iter().copied(),
            RGBColor(60, 60, 60).stroke_width(1),
        ))?;
    }
    Ok(())
}

/// One line of coloured keys: a short stroke and the kind's name each.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    kinds: &[String],
    y: i32,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut x = 10;
    for (i, k) in kinds.iter().enumerate() {
        let c = color(i);
        area.draw(&PathElement::new(
            vec![(x, y + 7), (x + 18, y + 7)],
            c.stroke_width(3),
        ))?;
        area.draw(&Text::new(k.clone(), (x + 24, y), (FONT, 13).into_font()))?;
        x += 40 + 8 * k.chars().count() as i32;
    }
    Ok(())
}

fn panels(report: &AnalyzeReport, modules: &[&ModuleReport]) -> Vec<Panel> {
    let mut out = vec![
        Panel {
            title: "‖ΔW‖_F".into(),
            data: series(modules, |m| Some(m.spectrum.frobenius)),
            reference: Series::new(),
            y_range: None,
        },
        Panel {
            title: "effective rank (90% of ‖ΔW‖²)".into(),
            data: series(modules, |m| Some(m.spectrum.effective_rank_90 as f64)),
            reference: Series::new(),
            y_range: None,
        },
    ];
    if report.base.is_some() {
        out.push(Panel {
            title: format!(
                "share of ‖ΔW‖² in the base weight's top-{} left singular subspace (grey: random k/d)",
                report.top_k
            ),
            data: series(modules, |m| m.base.as_ref().map(|b| b.column_energy)),
            reference: series(modules, |m| m.base.as_ref().map(|b| b.column_energy_random)),
            y_range: Some((0.0, 1.0)),
        });
    }
    if report.against.is_some() {
        out.push(Panel {
            title: "cosine of ΔW with the other adapter's".into(),
            data: series(modules, |m| m.against.as_ref().map(|a| a.cosine)),
            reference: Series::new(),
            y_range: Some((-1.0, 1.0)),
        });
    }
    out
}

fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &AnalyzeReport,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let modules: Vec<&ModuleReport> = report.modules.iter().collect();
    let unplaced: Vec<&str> = modules
        .iter()
        .filter(|m| layer_and_kind(&m.name).is_none())
        .map(|m| m.name.as_str())
        .collect();
    let layers = modules
        .iter()
        .filter_map(|m| layer_and_kind(&m.name).map(|(l, _)| l as f64))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), l| {
            (a.min(l), b.max(l))
        });
    let layers = if layers.0.is_finite() {
        layers
    } else {
        (0.0, 1.0)
    };
    let mut title = format!("loraguard analyze: {}", report.adapter);
    if let Some(o) = &report.against {
        title.push_str(&format!("  vs  {o}"));
    }
    let kinds = kinds(&modules);
    let (head, body) = root.split_vertically(HEAD);
    head.draw(&Text::new(title, (10, 8), (FONT, 18).into_font()))?;
    draw_legend(&head, &kinds, 36)?;
    if !unplaced.is_empty() {
        head.draw(&Text::new(
            format!("not layered, not drawn: {}", unplaced.join(", ")),
            (10, 60),
            (FONT, 12).into_font().color(&RGBColor(90, 90, 90)),
        ))?;
    }
    let ps = panels(report, &modules);
    for (area, p) in body.split_evenly((ps.len(), 1)).iter().zip(&ps) {
        draw_panel(area, p, layers, &kinds)?;
    }
    root.present()
}

fn height(report: &AnalyzeReport) -> u32 {
    let n = 2 + u32::from(report.base.is_some()) + u32::from(report.against.is_some());
    HEAD + n * PANEL
}

/// Draw `report` to `path` (`.svg` or `.png`), atomically.
pub fn plot(report: &AnalyzeReport, path: &Path) -> Result<()> {
    let fail = |e: String| Error::Internal(format!("drawing {}: {e}", path.display()));
    let size = (WIDTH, height(report));
    // Text is measured (SVG) and drawn (PNG) with the bundled font.
    plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
        .map_err(|_| fail("the bundled font does not load".into()))?;
    let bytes = match PlotFormat::from_path(path) {
        Some(PlotFormat::Svg) => {
            let mut s = String::new();
            render(
                SVGBackend::with_string(&mut s, size).into_drawing_area(),
                report,
            )
            .map_err(|e| fail(e.to_string()))?;
            s.into_bytes()
        }
        Some(PlotFormat::Png) => {
            let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
            render(
                BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area(),
                report,
            )
            .map_err(|e| fail(e.to_string()))?;
            encode_png(&rgb, size).map_err(|e| fail(e.to_string()))?
        }
        None => {
            return Err(Error::Usage(format!(
                "--plot {}: the picture is chosen by extension, .svg or .png",
                path.display()
            )))
        }
    };
    write_atomic(path, &bytes)
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_and_kind_from_gguf_and_hf_names() {
        assert_eq!(
            layer_and_kind("blk.3.attn_q.weight"),
            Some((3, "attn_q".into()))
        );
        assert_eq!(
            layer_and_kind("model.layers.12.self_attn.q_proj"),
            Some((12, "self_attn.q_proj".into()))
        );
        assert_eq!(layer_and_kind("token_embd.weight"), None);
        assert_eq!(layer_and_kind("lm_head"), None);
    }
}
