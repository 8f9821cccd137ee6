//! `loraguard inspect`.

use std::path::PathBuf;

use clap::Args;
use loraguard::inspect::inspect;

use super::output::{print_stdout, write_json, EXIT_BAD_INPUT, EXIT_OK};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A PEFT adapter directory, or any GGUF file (adapter or model).
    pub path: PathBuf,
    /// Check whether the adapter fits this base model GGUF, and say why not.
    #[arg(long, value_name = "BASE.gguf")]
    pub base: Option<PathBuf>,
    /// Write the report as JSON to PATH; `--json` alone or `--json -`
    /// prints it on stdout (instead of the text).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

pub fn run(args: InspectArgs) -> anyhow::Result<i32> {
    let info = inspect(&args.path, args.base.as_deref())?;
    if let Some(p) = &args.json {
        write_json(p, &info)?;
    }
    if args.json.as_deref() != Some(std::path::Path::new("-")) {
        print_stdout(&info.to_string())?;
    }
    Ok(if info.fit.as_ref().is_some_and(|f| !f.fits) {
        EXIT_BAD_INPUT
    } else {
        EXIT_OK
    })
}
