//! CI gates on a report: `--max-compliance LABEL=RATE`, `--max-refusal LABEL=RATE`.

use std::fmt;
use std::str::FromStr;

use super::report::{label_of, CheckReport};
use crate::error::{Error, Result};

/// The label that selects every prompt.
pub const ALL: &str = "*";

/// What a gate bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// The share of prompts answered without a refusal.
    MaxCompliance,
    /// The share of prompts refused.
    MaxRefusal,
}

/// One gate: the rate of `kind` over prompts labelled `label` is at most `rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub kind: GateKind,
    pub label: String,
    pub rate: f64,
}

impl Gate {
    /// Parse `LABEL=RATE`; RATE is a fraction in [0, 1] or a percentage (`20%`).
    pub fn parse(kind: GateKind, spec: &str) -> Result<Gate> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "gate {spec:?}: {why}; expected LABEL=RATE, e.g. unsafe=0.2 or unsafe=20% (LABEL {ALL} means all prompts)"
            ))
        };
        let (label, rate) = spec.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        let rate = match rate.trim().strip_suffix('%') {
            Some(p) => f64::from_str(p.trim()).map(|x| x / 100.0),
            None => f64::from_str(rate.trim()),
        }
        .map_err(|_| bad("the rate is not a number"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(bad("the rate must lie in [0, 1] (or 0%..100%)"));
        }
        Ok(Gate {
            kind,
            label: label.to_string(),
            rate,
        })
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = match self.kind {
            GateKind::MaxCompliance => "--max-compliance",
            GateKind::MaxRefusal => "--max-refusal",
        };
        write!(f, "{flag} {}={}", self.label, self.rate)
    }
}

/// A gate the report violates.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub gate: Gate,
    pub n: usize,
    /// The measured rate of the gate's kind.
    pub actual: f64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.gate.kind {
            GateKind::MaxCompliance => "compliance",
            GateKind::MaxRefusal => "refusal",
        };
        write!(
            f,
            "{what} rate on label {:?} is {:.1}% of {} prompts, above the gate's {:.1}% ({})",
            self.gate.label,
            100.0 * self.actual,
            self.n,
            100.0 * self.gate.rate,
            self.gate
        )
    }
}

/// The gates `report` violates. A gate on a label no prompt has is a usage
/// error (most likely a typo), not a pass.
pub fn evaluate(report: &CheckReport, gates: &[Gate]) -> Result<Vec<Violation>> {
    let mut out = Vec::new();
    for g in gates {
        let rows: Vec<_> = report
            .results
            .iter()
            .filter(|r| g.label == ALL || label_of(r) == g.label)
            .collect();
        if rows.is_empty() {
            let labels: Vec<&String> = report.summary.by_label.keys().collect();
            return Err(Error::Usage(format!(
                "gate {g}: no prompt has label {:?}; the labels are {labels:?} ({ALL} means all)",
                g.label
            )));
        }
        let refused = rows.iter().filter(|r| r.refused).count() as f64 / rows.len() as f64;
        let actual = match g.kind {
            GateKind::MaxCompliance => 1.0 - refused,
            GateKind::MaxRefusal => refused,
        };
        // A rate equal to the bound passes; compare with a tolerance for the
        // decimal spelling of the bound.
        if actual > g.rate + 1e-12 {
            out.push(Violation {
                gate: g.clone(),
                n: rows.len(),
                actual,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractions_and_percentages_and_rejects_nonsense() {
        let g = Gate::parse(GateKind::MaxRefusal, "safe=20%").unwrap();
        assert_eq!((g.label.as_str(), g.rate), ("safe", 0.2));
        let g = Gate::parse(GateKind::MaxCompliance, "a=b=0.5").unwrap();
        assert_eq!(g.label, "a=b");
        for bad in ["unsafe", "=0.1", "x=1.5", "x=abc", "x=-1%"] {
            assert!(Gate::parse(GateKind::MaxRefusal, bad).is_err(), "{bad}");
        }
    }
}
