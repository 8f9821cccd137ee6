//! `loraguard inspect`.

use std::path::PathBuf;

use clap::Args;
use loraguard::inspect::inspect;

use super::output::{print_stdout, EXIT_BAD_INPUT, EXIT_OK};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A PEFT adapter directory, or any GGUF file (adapter or model).
    pub path: PathBuf,
    /// Check whether the adapter fits this base model GGUF, and say why not.
    #[arg(long, value_name = "BASE.gguf")]
    pub base: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<i32> {
    let info = inspect(&args.path, args.base.as_deref())?;
    if args.json {
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&info)?))?;
    } else {
        print_stdout(&info.to_string())?;
    }
    Ok(if info.fit.as_ref().is_some_and(|f| !f.fits) {
        EXIT_BAD_INPUT
    } else {
        EXIT_OK
    })
}
