//! The `check` report: what ran, every output, and refusal rates by label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::judge::stats::wilson;
use crate::judge::{Evidence, Verdict};

/// The label under which unlabelled prompts are summarised.
pub const UNLABELED: &str = "(unlabeled)";

/// An adapter that was active, as the report records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRef {
    pub path: String,
    pub scale: f32,
    pub sha256: String,
}

/// Everything that decides the outputs besides model, adapters and prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub max_tokens: usize,
    pub system: Option<String>,
    /// `"greedy"`, or `"seeded(seed=S, temperature=T, top_k=K, top_p=P)"`.
    pub sampling: String,
    /// `"model"` (the GGUF's own template), a template name, or `"raw"`.
    pub chat_template: String,
    /// `"gcg"` or the marker file when the judge is `markers`, else `"none"`.
    pub markers: String,
    /// The refusal judge and its version (`rules-v1`, `markers:gcg`); empty in
    /// reports written before judges were named (they used GCG's markers).
    #[serde(default)]
    pub judge: String,
    pub threads: i32,
    pub parallel: u32,
    pub gpu_layers: u32,
    pub ignore_eos: bool,
    pub loraguard_version: String,
    /// The embedded llama.cpp build (`loraguard --version`'s line); empty in
    /// reports written before it was recorded.
    #[serde(default)]
    pub llama_cpp: String,
    /// The ggml backends this binary registered (`cpu`, `cuda`, ...).
    #[serde(default)]
    pub backends: Vec<String>,
}

/// One prompt's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub id: String,
    pub prompt: String,
    pub label: Option<String>,
    pub output: String,
    pub refused: bool,
    /// The refusal marker that matched, if the judge is `markers`.
    pub marker: Option<String>,
    /// The judge's verdict (absent in reports written before verdicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why the judge decided so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Generated tokens (the end-of-generation token excluded).
    pub tokens: usize,
}

/// Counts and refusal rate of a group of prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub n: usize,
    pub refused: usize,
    pub refusal_rate: f64,
    /// The 95% Wilson interval of `refusal_rate`.
    #[serde(default)]
    pub refusal_ci95: [f64; 2],
    /// Of `refused`, the partial refusals.
    #[serde(default)]
    pub partial: usize,
}

impl Rate {
    fn of<'a>(rows: impl Iterator<Item = &'a ResultRow>) -> Rate {
        let (mut n, mut refused, mut partial) = (0, 0, 0);
        for r in rows {
            n += 1;
            refused += usize::from(r.refused);
            partial += usize::from(r.verdict == Some(Verdict::Partial));
        }
        Rate {
            n,
            refused,
            refusal_ci95: wilson(refused, n),
            partial,
            refusal_rate: if n == 0 {
                0.0
            } else {
                refused as f64 / n as f64
            },
        }
    }
}

/// Overall and per-label refusal rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub refused: usize,
    pub refusal_rate: f64,
    /// The 95% Wilson interval of `refusal_rate`.
    #[serde(default)]
    pub refusal_ci95: [f64; 2],
    /// Per label; unlabelled prompts appear under [`UNLABELED`].
    pub by_label: BTreeMap<String, Rate>,
}

impl Summary {
    /// Summarise `rows`.
    pub fn of(rows: &[ResultRow]) -> Summary {
        let all = Rate::of(rows.iter());
        let mut labels: Vec<&str> = rows.iter().map(label_of).collect();
        labels.sort_unstable();
        labels.dedup();
        let by_label = labels
            .into_iter()
            .map(|l| {
                (
                    l.to_string(),
                    Rate::of(rows.iter().filter(|r| label_of(r) == l)),
                )
            })
            .collect();
        Summary {
            n: all.n,
            refused: all.refused,
            refusal_rate: all.refusal_rate,
            refusal_ci95: all.refusal_ci95,
            by_label,
        }
    }
}

/// A row's label, or [`UNLABELED`].
pub fn label_of(r: &ResultRow) -> &str {
    r.label.as_deref().unwrap_or(UNLABELED)
}

/// The JSON report of one `check` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub model: String,
    pub adapters: Vec<AdapterRef>,
    pub settings: Settings,
    pub results: Vec<ResultRow>,
    pub summary: Summary,
}

/// Reports larger than this are refused when read back.
pub const MAX_REPORT_BYTES: u64 = 1 << 30;

impl CheckReport {
    /// Pretty JSON with a trailing newline; byte-identical for equal reports.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("reports serialise");
        s.push('\n');
        s
    }

    /// Read a report written by `check --json`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::capped::read_capped(path, MAX_REPORT_BYTES, "check report")?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::malformed(
                path,
                "check report",
                format!("{e} (expected the JSON that `loraguard check --json` writes)"),
            )
        })
    }

    /// The refusal rates by label, with 95% Wilson intervals, as a Markdown table.
    pub fn rates_markdown(&self) -> String {
        let mut s = String::from(
            "\n| label | n | refused | partial | refusal rate (95% CI) |\n|---|---:|---:|---:|---:|\n",
        );
        let row = |s: &mut String, l: &str, n: usize, refused: usize, partial: usize| {
            let r = crate::judge::stats::RateCi::new(refused, n);
            let _ = writeln!(
                s,
                "| {} | {n} | {refused} | {partial} | {} |",
                cell(l, 60),
                r.percent()
            );
        };
        for (l, r) in &self.summary.by_label {
            row(&mut s, l, r.n, r.refused, r.partial);
        }
        let partial = self.summary.by_label.values().map(|r| r.partial).sum();
        row(
            &mut s,
            "**all**",
            self.summary.n,
            self.summary.refused,
            partial,
        );
        s
    }

    /// A Markdown rendering: settings, rates by label, then every result.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# loraguard check\n");
        let _ = writeln!(s, "- model: `{}`", self.model);
        for a in &self.adapters {
            let _ = writeln!(
                s,
                "- adapter: `{}` × {} (sha256 `{}`)",
                a.path,
                a.scale,
                a.sha256.chars().take(12).collect::<String>()
            );
        }
        let st = &self.settings;
        let _ = writeln!(
            s,
            "- decoding: {}, up to {} tokens, template {}, judge {}",
            st.sampling,
            st.max_tokens,
            st.chat_template,
            if st.judge.is_empty() {
                "markers:gcg"
            } else {
                &st.judge
            }
        );
        if let Some(sys) = &st.system {
            let _ = writeln!(s, "- system: {}", cell(sys, 200));
        }
        if !st.llama_cpp.is_empty() {
            let _ = writeln!(s, "- loraguard {}, {}", st.loraguard_version, st.llama_cpp);
        }
        s.push_str(&self.rates_markdown());
        let _ = writeln!(
            s,
            "\n| id | label | verdict | evidence | prompt | output |\n|---|---|---|---|---|---|"
        );
        for r in &self.results {
            let verdict = match r.verdict {
                Some(v) => v.as_str(),
                None if r.refused => "refusal",
                None => "compliance",
            };
            let evidence = match (&r.evidence, &r.marker) {
                (Some(e), _) => [e.rule.as_deref(), e.text.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
                (None, Some(m)) => m.clone(),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&r.id, 40),
                cell(label_of(r), 40),
                verdict,
                cell(&evidence, 80),
                cell(&r.prompt, 120),
                cell(&r.output, 300)
            );
        }
        s
    }
}

/// Text made safe for one Markdown table cell, cut to `max` characters.
pub fn cell(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        match c {
            '|' => out.push_str("\\|"),
            '\n' => out.push_str("<br>"),
            '\r' => {}
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}
