//! The frontier as SVG: every candidate's unsafe compliance against the
//! task kept, the ones that meet the constraints filled, the chosen one
//! ringed, the task adapter alone as a square. Deterministic text.

use std::fmt::Write as _;

use super::TuneReport;

const W: f64 = 560.0;
const H: f64 = 400.0;
const M: f64 = 56.0;

/// The plot of `r`'s candidates.
pub fn frontier_svg(r: &TuneReport) -> String {
    let x = |kept: f64| M + kept.clamp(0.0, 1.2) / 1.2 * (W - 2.0 * M);
    let y = |comp: f64| H - M - comp.clamp(0.0, 1.0) * (H - 2.0 * M);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<line x1=\"{M}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{M}\" y1=\"{M}\" x2=\"{M}\" y2=\"{}\" stroke=\"black\"/>",
        H - M,
        W - M,
        H - M,
        H - M
    );
    for t in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.1}</text><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t:.1}</text>",
            x(t),
            H - M + 16.0,
            M - 6.0,
            y(t) + 4.0
        );
    }
    let kx = x(r.constraints.min_task_kept);
    let _ = writeln!(
        s,
        "<line x1=\"{kx:.1}\" y1=\"{M}\" x2=\"{kx:.1}\" y2=\"{}\" stroke=\"grey\" stroke-dasharray=\"4 3\"/>",
        H - M
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">task kept (relative to the task adapter)</text>",
        W / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">unsafe compliance (calibration)</text>",
        H / 2.0,
        H / 2.0
    );
    for c in &r.candidates {
        let fill = if c.meets { "#1f77b4" } else { "none" };
        let stroke = if c.candidate.method == "cat" {
            "#d62728"
        } else {
            "#1f77b4"
        };
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"{stroke}\"/>",
            x(c.metrics.task_kept),
            y(c.metrics.unsafe_compliance)
        );
    }
    let _ = writeln!(
        s,
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"9\" fill=\"none\" stroke=\"black\" stroke-width=\"2\"/>",
        x(r.chosen.metrics.task_kept),
        y(r.chosen.metrics.unsafe_compliance)
    );
    let _ = writeln!(
        s,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"black\"/>",
        x(1.0) - 4.0,
        y(r.baseline.unsafe_compliance) - 4.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\">filled: meets the constraints; red: plain task (cat); ringed: chosen; square: task alone</text>",
        M
    );
    s.push_str("</svg>\n");
    s
}
