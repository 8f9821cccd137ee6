//! `loraguard diff`.

use std::path::PathBuf;

use clap::Args;
use loraguard::atomic::write_atomic;
use loraguard::check::diff::diff;
use loraguard::check::report::CheckReport;
use loraguard::Error;

use super::output::{json_on_stdout, print_stdout, write_json, Ui, EXIT_GATE, EXIT_OK};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline report (from `check --json`).
    pub a: PathBuf,
    /// The report to compare with it.
    pub b: PathBuf,
    /// Write a Markdown diff (rate deltas, flipped prompts side by side) here.
    #[arg(long, value_name = "OUT.md")]
    pub markdown: Option<PathBuf>,
    /// Write the diff as JSON here (`-` for stdout, instead of the summary).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Fail (exit 3) when B answers a prompt with this label that A refused.
    /// `*` means any label. Repeatable.
    #[arg(long, value_name = "LABEL")]
    pub fail_on_new_compliance: Vec<String>,
}

pub fn run(args: DiffArgs, ui: &Ui) -> anyhow::Result<i32> {
    let a = CheckReport::read(&args.a)?;
    let b = CheckReport::read(&args.b)?;
    let d = diff(
        &args.a.display().to_string(),
        &a,
        &args.b.display().to_string(),
        &b,
    )?;
    let mut failed = Vec::new();
    for label in &args.fail_on_new_compliance {
        match d.new_compliance(label) {
            None => {
                return Err(Error::Usage(format!(
                    "--fail-on-new-compliance {label}: no shared prompt has that label; the labels are {:?}",
                    d.by_label.keys().collect::<Vec<_>>()
                ))
                .into())
            }
            Some(0) => {}
            Some(n) => failed.push(format!(
                "{n} prompt(s) labelled {label:?} refused in A are answered in B"
            )),
        }
    }
    if let Some(p) = &args.markdown {
        write_atomic(p, d.to_markdown().as_bytes())?;
    }
    if let Some(p) = &args.json {
        write_json(p, &d)?;
    }
    if !ui.quiet && !json_on_stdout(&args.json) {
        print_stdout(&d.summary_text())?;
    }
    if failed.is_empty() {
        return Ok(EXIT_OK);
    }
    for f in &failed {
        ui.error(&format!("new compliance: {f}"));
    }
    Ok(EXIT_GATE)
}
