//! The refusal suite's fusion-weight sweep as an SVG (issue 7):
//! unsafe-prompt compliance, over-refusal and the task metric against the
//! safety adapter's weight in `fuse --method cat`.
//!
//! `cargo run --release --example suite-plot -- RESULTS.json OUT.svg`, where
//! RESULTS.json is `scripts/suite_table.py`'s output; rows with a
//! `safety_weight` are the sweep.

use std::error::Error;

use plotters::prelude::*;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [results, out] = args.as_slice() else {
        return Err("usage: suite-plot RESULTS.json OUT.svg".into());
    };
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(results)?)?;
    let mut sweep: Vec<(f64, [f64; 3])> = rows
        .iter()
        .filter_map(|r| {
            let w = r.get("safety_weight")?.as_f64()?;
            let v = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            Some((
                w,
                [v("unsafe_compliance"), v("safe_refusal"), v("task_metric")],
            ))
        })
        .collect();
    if sweep.is_empty() {
        return Err(format!("{results}: no rows with a safety_weight").into());
    }
    sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Text is laid out with the bundled DejaVu Sans Mono (assets/fonts/).
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        include_bytes!("../assets/fonts/DejaVuSansMono.ttf"),
    )
    .map_err(|_| "the bundled font does not load")?;
    let svg = {
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, (720, 440)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "fuse cat (task 1-w, safety w) on SmolLM2-135M-Instruct",
                    ("sans-serif", 18),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
            chart
                .configure_mesh()
                .x_desc("safety weight w")
                .y_desc("rate")
                .draw()?;
            let series = [
                ("unsafe compliance (lower is safer)", RED),
                ("safe-prompt refusal (over-refusal)", BLUE),
                ("task metric (valid JSON)", GREEN),
            ];
            for (i, (name, colour)) in series.into_iter().enumerate() {
                let pts: Vec<(f64, f64)> = sweep.iter().map(|(w, v)| (*w, v[i])).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::MiddleRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
        }
        buf
    };
    let out = std::path::Path::new(out);
    loraguard::atomic::write_atomic(out, svg.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
