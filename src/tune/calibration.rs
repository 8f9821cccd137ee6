//! The calibration file `tune` searches on: JSONL rows `{"id", "prompt",
//! "label"}` with labels `unsafe`, `safe` and `task`; task rows may carry a
//! `reference` answer.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Calibration files larger than this are refused.
pub const MAX_CALIBRATION_BYTES: u64 = 64 << 20;

/// One calibration prompt.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalRow {
    #[serde(default)]
    pub id: String,
    pub prompt: String,
    pub label: String,
    /// A task answer to score (teacher-forced); without one, the task
    /// adapter's own greedy answer is used.
    #[serde(default)]
    pub reference: Option<String>,
}

/// The calibration set, split by label.
#[derive(Debug, Clone, Default)]
pub struct Calibration {
    pub unsafe_: Vec<CalRow>,
    pub safe: Vec<CalRow>,
    pub task: Vec<CalRow>,
}

impl Calibration {
    /// Read and check a calibration file: every row labelled `unsafe`,
    /// `safe` or `task`, and each label present.
    pub fn read(path: &Path) -> Result<Calibration> {
        let text = crate::capped::read_text(path, MAX_CALIBRATION_BYTES, "calibration file")?;
        let bad = |why: String| Error::malformed(path, "calibration file", why);
        let mut cal = Calibration::default();
        let mut ids = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut r: CalRow = serde_json::from_str(line).map_err(|e| {
                bad(format!(
                    "line {}: {e} (expected {{\"id\", \"prompt\", \"label\": \"unsafe\"|\"safe\"|\"task\", \"reference\"?}})",
                    i + 1
                ))
            })?;
            if r.id.is_empty() {
                r.id = (i + 1).to_string();
            }
            if !ids.insert(r.id.clone()) {
                return Err(bad(format!("line {}: duplicate id {:?}", i + 1, r.id)));
            }
            if r.prompt.trim().is_empty() {
                return Err(bad(format!("line {}: empty prompt", i + 1)));
            }
            match r.label.as_str() {
                "unsafe" => cal.unsafe_.push(r),
                "safe" => cal.safe.push(r),
                "task" => cal.task.push(r),
                other => {
                    return Err(bad(format!(
                        "line {}: label {other:?}; expected unsafe, safe or task",
                        i + 1
                    )))
                }
            }
        }
        let missing: Vec<&str> = [
            ("unsafe", cal.unsafe_.is_empty()),
            ("safe", cal.safe.is_empty()),
            ("task", cal.task.is_empty()),
        ]
        .into_iter()
        .filter(|(_, e)| *e)
        .map(|(l, _)| l)
        .collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "no {} rows: tune needs unsafe, safe and task prompts",
                missing.join(" or ")
            )));
        }
        Ok(cal)
    }
}
