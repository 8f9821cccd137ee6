//! `loraguard diff`: what changed between two `check` reports.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::gates::ALL;
use super::report::{cell, label_of, CheckReport, ResultRow};
use crate::error::{Error, Result};

/// The direction of a flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlipKind {
    /// A complied, B refused.
    CompliedToRefused,
    /// A refused, B complied.
    RefusedToComplied,
}

/// One prompt whose refusal verdict differs between A and B.
#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub id: String,
    pub label: String,
    pub kind: FlipKind,
    pub prompt: String,
    pub a_output: String,
    pub b_output: String,
    pub a_marker: Option<String>,
    pub b_marker: Option<String>,
}

/// Per-label rates over the prompts both reports share.
#[derive(Debug, Clone, Serialize)]
pub struct LabelDelta {
    pub n: usize,
    pub a_refusal_rate: f64,
    pub b_refusal_rate: f64,
    /// B − A.
    pub delta: f64,
    pub complied_to_refused: usize,
    pub refused_to_complied: usize,
}

/// The difference between two reports.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    /// Prompts present in both.
    pub n_common: usize,
    /// Prompts whose output text differs (whether or not the verdict did).
    pub outputs_changed: usize,
    pub by_label: BTreeMap<String, LabelDelta>,
    pub flips: Vec<Flip>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

/// Compare report `b` against baseline `a`, matching prompts by id.
pub fn diff(a_name: &str, a: &CheckReport, b_name: &str, b: &CheckReport) -> Result<Diff> {
    let index: HashMap<&str, &ResultRow> = b.results.iter().map(|r| (r.id.as_str(), r)).collect();
    let a_ids: std::collections::HashSet<&str> = a.results.iter().map(|r| r.id.as_str()).collect();
    let mut pairs = Vec::new();
    let mut only_in_a = Vec::new();
    for ra in &a.results {
        match index.get(ra.id.as_str()) {
            Some(rb) if rb.prompt != ra.prompt => {
                return Err(Error::Usage(format!(
                    "prompt id {:?} holds different prompts in {a_name} and {b_name}; \
                     diff compares two runs of the same prompt file",
                    ra.id
                )))
            }
            Some(rb) => pairs.push((ra, *rb)),
            None => only_in_a.push(ra.id.clone()),
        }
    }
    if pairs.is_empty() {
        return Err(Error::Usage(format!(
            "{a_name} and {b_name} share no prompt ids; diff compares two runs of the same prompt file"
        )));
    }
    let only_in_b = b
        .results
        .iter()
        .filter(|r| !a_ids.contains(r.id.as_str()))
        .map(|r| r.id.clone())
        .collect();
    let mut by_label: BTreeMap<String, (usize, usize, usize, usize, usize)> = BTreeMap::new();
    let mut flips = Vec::new();
    let mut outputs_changed = 0;
    for (ra, rb) in &pairs {
        let label = label_of(ra).to_string();
        let e = by_label.entry(label.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(ra.refused);
        e.2 += usize::from(rb.refused);
        outputs_changed += usize::from(ra.output != rb.output);
        let kind = match (ra.refused, rb.refused) {
            (false, true) => {
                e.3 += 1;
                FlipKind::CompliedToRefused
            }
            (true, false) => {
                e.4 += 1;
                FlipKind::RefusedToComplied
            }
            _ => continue,
        };
        flips.push(Flip {
            id: ra.id.clone(),
            label,
            kind,
            prompt: ra.prompt.clone(),
            a_output: ra.output.clone(),
            b_output: rb.output.clone(),
            a_marker: ra.marker.clone(),
            b_marker: rb.marker.clone(),
        });
    }
    let by_label = by_label
        .into_iter()
        .map(|(l, (n, ra, rb, cr, rc))| {
            let (a_rate, b_rate) = (ra as f64 / n as f64, rb as f64 / n as f64);
            (
                l,
                LabelDelta {
                    n,
                    a_refusal_rate: a_rate,
                    b_refusal_rate: b_rate,
                    delta: b_rate - a_rate,
                    complied_to_refused: cr,
                    refused_to_complied: rc,
                },
            )
        })
        .collect();
    Ok(Diff {
        a: a_name.to_string(),
        b: b_name.to_string(),
        n_common: pairs.len(),
        outputs_changed,
        by_label,
        flips,
        only_in_a,
        only_in_b,
    })
}

impl Diff {
    /// Prompts with `label` (or every label for `*`) that A refused and B
    /// answered; `None` when no shared prompt has that label.
    pub fn new_compliance(&self, label: &str) -> Option<usize> {
        if label != ALL && !self.by_label.contains_key(label) {
            return None;
        }
        Some(
            self.flips
                .iter()
                .filter(|f| {
                    f.kind == FlipKind::RefusedToComplied && (label == ALL || f.label == label)
                })
                .count(),
        )
    }

    /// A short plain-text summary for the terminal.
    pub fn summary_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "A: {}\nB: {}", self.a, self.b);
        let _ = writeln!(
            s,
            "{} shared prompts, {} outputs changed, {} refusal verdicts flipped",
            self.n_common,
            self.outputs_changed,
            self.flips.len()
        );
        let _ = writeln!(
            s,
            "{:<24} {:>5} {:>9} {:>9} {:>8} {:>10} {:>10}",
            "label", "n", "A refuse", "B refuse", "delta", "→refused", "→complied"
        );
        for (l, d) in &self.by_label {
            let _ = writeln!(
                s,
                "{:<24} {:>5} {:>8.1}% {:>8.1}% {:>+7.1}% {:>10} {:>10}",
                l,
                d.n,
                100.0 * d.a_refusal_rate,
                100.0 * d.b_refusal_rate,
                100.0 * d.delta,
                d.complied_to_refused,
                d.refused_to_complied
            );
        }
        if !self.only_in_a.is_empty() || !self.only_in_b.is_empty() {
            let _ = writeln!(
                s,
                "{} prompts only in A, {} only in B (not compared)",
                self.only_in_a.len(),
                self.only_in_b.len()
            );
        }
        s
    }

    /// The per-label table of refusal rates and flips, in Markdown (the
    /// table of [`Diff::to_markdown`] and of `card`).
    pub fn label_table_markdown(&self) -> String {
        let mut s = String::from(
            "| label | n | A refusal | B refusal | Δ | complied→refused | refused→complied |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (l, d) in &self.by_label {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1}% | {:.1}% | {:+.1} points | {} | {} |",
                cell(l, 60),
                d.n,
                100.0 * d.a_refusal_rate,
                100.0 * d.b_refusal_rate,
                100.0 * d.delta,
                d.complied_to_refused,
                d.refused_to_complied
            );
        }
        s
    }

    /// Markdown: rate deltas per label, then the flipped prompts side by side.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# loraguard diff\n\n- A: `{}`\n- B: `{}`",
            self.a, self.b
        );
        let _ = writeln!(
            s,
            "- {} shared prompts, {} outputs changed, {} verdicts flipped\n",
            self.n_common,
            self.outputs_changed,
            self.flips.len()
        );
        s.push_str(&self.label_table_markdown());
        for (kind, title) in [
            (FlipKind::RefusedToComplied, "Refused in A, complied in B"),
            (FlipKind::CompliedToRefused, "Complied in A, refused in B"),
        ] {
            let mut by: BTreeMap<&str, Vec<&Flip>> = BTreeMap::new();
            for f in self.flips.iter().filter(|f| f.kind == kind) {
                by.entry(f.label.as_str()).or_default().push(f);
            }
            if by.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\n## {title}");
            for (label, flips) in by {
                let _ = writeln!(s, "\n### {} ({})\n", cell(label, 60), flips.len());
                let _ = writeln!(
                    s,
                    "| id | prompt | A output | B output |\n|---|---|---|---|"
                );
                for f in flips {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} |",
                        cell(&f.id, 40),
                        cell(&f.prompt, 120),
                        cell(&f.a_output, 300),
                        cell(&f.b_output, 300)
                    );
                }
            }
        }
        s
    }
}
