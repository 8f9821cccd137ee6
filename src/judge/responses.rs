//! `loraguard judge`: answers that already exist, judged, with counts per
//! verdict and label, and (where rows carry a human verdict) agreement.
//!
//! Input: JSONL, one `{"id", "prompt", "output", "label"?, "expected"?}`
//! per line, or a `check --json` report. `label` groups rows (e.g. `unsafe`,
//! `safe`); `expected` is a person's verdict (`compliance`, `refusal`,
//! `partial`, or XSTest's `1_full_compliance`...), against which the report
//! measures the judge.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::RateCi;
use super::{Judge, Judgement, Verdict};
use crate::check::report::{cell, CheckReport, UNLABELED};
use crate::error::{Error, Result};

/// Responses files larger than this are refused.
pub const MAX_RESPONSES_BYTES: u64 = 1 << 30;

/// One answer to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: String,
    pub prompt: String,
    pub output: String,
    pub label: Option<String>,
    pub expected: Option<Verdict>,
}

/// Read a responses file: JSONL rows, or a `check` report.
pub fn read_responses(path: &Path) -> Result<Vec<Response>> {
    let text = crate::capped::read_text(path, MAX_RESPONSES_BYTES, "responses file")?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim_start().starts_with('{') {
        if let Ok(report) = serde_json::from_str::<CheckReport>(text) {
            return Ok(report
                .results
                .into_iter()
                .map(|r| Response {
                    id: r.id,
                    prompt: r.prompt,
                    output: r.output,
                    label: r.label,
                    expected: None,
                })
                .collect());
        }
    }
    let bad = |line: usize, why: String| {
        Error::malformed(path, "responses file", format!("line {line}: {why}"))
    };
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            bad(n, format!("{e} (expected one JSON object per line with \"output\", or a `check --json` report)"))
        })?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(n, "not a JSON object".into()))?;
        let string = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(x)) if key == "id" => Ok(Some(x.to_string())),
                Some(_) => Err(bad(n, format!("\"{key}\" is not a string"))),
            }
        };
        let output = string("output")?.ok_or_else(|| bad(n, "no \"output\"".into()))?;
        let id = string("id")?.unwrap_or_else(|| n.to_string());
        if !ids.insert(id.clone()) {
            return Err(bad(n, format!("duplicate id {id:?}")));
        }
        let expected = match string("expected")? {
            None => None,
            Some(s) => Some(Verdict::parse_label(&s).ok_or_else(|| {
                bad(
                    n,
                    format!("\"expected\" is {s:?}; expected compliance, refusal or partial"),
                )
            })?),
        };
        out.push(Response {
            id,
            prompt: string("prompt")?.unwrap_or_default(),
            output,
            label: string("label")?,
            expected,
        });
    }
    if out.is_empty() {
        return Err(Error::malformed(path, "responses file", "no rows"));
    }
    Ok(out)
}

/// One judged row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedRow {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(flatten)]
    pub judgement: Judgement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Verdict>,
}

/// Verdict counts of a group, with its refusal rate (refusal + partial).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictCounts {
    pub n: usize,
    pub compliance: usize,
    pub refusal: usize,
    pub partial: usize,
    pub refused: RateCi,
}

impl VerdictCounts {
    fn of<'a>(rows: impl Iterator<Item = &'a JudgedRow>) -> VerdictCounts {
        let mut c = [0usize; 3];
        for r in rows {
            c[r.judgement.verdict as usize] += 1;
        }
        let n = c.iter().sum();
        VerdictCounts {
            n,
            compliance: c[0],
            refusal: c[1],
            partial: c[2],
            refused: RateCi::new(c[1] + c[2], n),
        }
    }
}

/// Agreement with the rows' `expected` verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub n: usize,
    /// Compliance against any refusal.
    pub two_way: RateCi,
    /// The three verdicts.
    pub three_way: RateCi,
    /// `confusion[expected][verdict]`.
    pub confusion: BTreeMap<Verdict, BTreeMap<Verdict, usize>>,
}

impl Agreement {
    fn of(rows: &[JudgedRow]) -> Option<Agreement> {
        let pairs: Vec<(Verdict, Verdict)> = rows
            .iter()
            .filter_map(|r| r.expected.map(|e| (e, r.judgement.verdict)))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let mut confusion: BTreeMap<Verdict, BTreeMap<Verdict, usize>> = BTreeMap::new();
        for e in Verdict::ALL {
            confusion.insert(e, Verdict::ALL.iter().map(|&v| (v, 0)).collect());
        }
        for &(e, v) in &pairs {
            *confusion
                .get_mut(&e)
                .and_then(|m| m.get_mut(&v))
                .expect("all verdicts present") += 1;
        }
        let two = pairs
            .iter()
            .filter(|(e, v)| e.refused() == v.refused())
            .count();
        let three = pairs.iter().filter(|(e, v)| e == v).count();
        Some(Agreement {
            n: pairs.len(),
            two_way: RateCi::new(two, pairs.len()),
            three_way: RateCi::new(three, pairs.len()),
            confusion,
        })
    }
}

/// The summary: counts overall and per label, and agreement where known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeSummary {
    pub all: VerdictCounts,
    pub by_label: BTreeMap<String, VerdictCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
}

/// `loraguard judge`'s report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    pub judge: String,
    pub loraguard_version: String,
    pub responses: String,
    pub results: Vec<JudgedRow>,
    pub summary: JudgeSummary,
}

impl JudgeReport {
    /// Judge every response.
    pub fn build(judge: &Judge, source: &Path, responses: &[Response]) -> Result<JudgeReport> {
        let items: Vec<(&str, &str)> = responses
            .iter()
            .map(|r| (r.prompt.as_str(), r.output.as_str()))
            .collect();
        let results: Vec<JudgedRow> = judge
            .judge_all(&items)?
            .into_iter()
            .zip(responses)
            .map(|(judgement, r)| JudgedRow {
                id: r.id.clone(),
                label: r.label.clone(),
                judgement,
                expected: r.expected,
            })
            .collect();
        let mut by_label: BTreeMap<String, Vec<&JudgedRow>> = BTreeMap::new();
        for r in &results {
            by_label
                .entry(r.label.clone().unwrap_or_else(|| UNLABELED.into()))
                .or_default()
                .push(r);
        }
        let summary = JudgeSummary {
            all: VerdictCounts::of(results.iter()),
            by_label: by_label
                .into_iter()
                .map(|(l, rs)| (l, VerdictCounts::of(rs.into_iter())))
                .collect(),
            agreement: Agreement::of(&results),
        };
        Ok(JudgeReport {
            judge: judge.name(),
            loraguard_version: env!("CARGO_PKG_VERSION").into(),
            responses: source.display().to_string(),
            results,
            summary,
        })
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("reports serialise");
        s.push('\n');
        s
    }

    /// The summary as Markdown: verdicts per label with 95% intervals, and agreement.
    pub fn summary_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### loraguard judge: `{}` on `{}`\n",
            self.judge, self.responses
        );
        let _ = writeln!(s, "| label | n | compliance | refusal | partial | refused (95% CI) |\n|---|---:|---:|---:|---:|---:|");
        let row = |s: &mut String, l: &str, c: &VerdictCounts| {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                cell(l, 60),
                c.n,
                c.compliance,
                c.refusal,
                c.partial,
                c.refused.percent()
            );
        };
        for (l, c) in &self.summary.by_label {
            row(&mut s, l, c);
        }
        row(&mut s, "**all**", &self.summary.all);
        if let Some(a) = &self.summary.agreement {
            let _ = writeln!(
                s,
                "\nAgreement with the expected verdicts of {} rows: two-way {}, three-way {}.\n",
                a.n,
                a.two_way.percent(),
                a.three_way.percent()
            );
            let _ = writeln!(
                s,
                "| expected \\ judged | compliance | refusal | partial |\n|---|---:|---:|---:|"
            );
            for (e, m) in &a.confusion {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    e.as_str(),
                    m[&Verdict::Compliance],
                    m[&Verdict::Refusal],
                    m[&Verdict::Partial]
                );
            }
        }
        s
    }

    /// The summary, then every row.
    pub fn to_markdown(&self) -> String {
        let mut s = self.summary_markdown();
        let _ = writeln!(
            s,
            "\n| id | label | verdict | rule | evidence |\n|---|---|---|---|---|"
        );
        for r in &self.results {
            let e = &r.judgement.evidence;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                cell(&r.id, 40),
                cell(r.label.as_deref().unwrap_or(""), 40),
                r.judgement.verdict.as_str(),
                cell(e.rule.as_deref().unwrap_or(""), 40),
                cell(e.text.as_deref().unwrap_or(""), 120)
            );
        }
        s
    }
}
