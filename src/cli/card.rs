//! `loraguard card`.

use std::path::PathBuf;

use clap::Args;
use loraguard::atomic::write_atomic;
use loraguard::card::{card, CardOptions};

use super::output::{print_stdout, write_json, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct CardArgs {
    /// The GGUF to describe: a converted adapter, a merged model or a quantized model.
    pub file: PathBuf,
    /// The base model GGUF (required for an adapter): its name, size and sha256 go in the card.
    #[arg(long, visible_alias = "model", value_name = "BASE.gguf")]
    pub base: Option<PathBuf>,
    /// The base model's Hub id for `base_model` (ORG/NAME), when the files do not name it.
    #[arg(long, value_name = "ORG/NAME")]
    pub base_model: Option<String>,
    /// A `check --json` report to show (repeatable); the first is the
    /// baseline the others are diffed against.
    #[arg(long = "report", value_name = "CHECK.json")]
    pub reports: Vec<PathBuf>,
    /// Where to write the card (`README.md` for a Hub repo); `-` for stdout.
    #[arg(short, long, value_name = "README.md")]
    pub output: PathBuf,
    /// Write what the card found (relation, base_model, the file's size and
    /// sha256) as JSON to PATH (`-` for stdout, when the card goes to a file).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub fn run(args: CardArgs, ui: &Ui) -> anyhow::Result<i32> {
    let opts = CardOptions {
        base: args.base,
        base_model: args.base_model,
        reports: args.reports,
    };
    let stdout = args.output.as_os_str() == "-";
    if stdout && args.json.as_deref() == Some(std::path::Path::new("-")) {
        return Err(
            loraguard::Error::Usage("the card and --json cannot both go to stdout".into()).into(),
        );
    }
    let made = card(&args.file, &opts)?;
    if stdout {
        print_stdout(&made.text)?;
    } else {
        write_atomic(&args.output, made.text.as_bytes())?;
        ui.say(&format!("wrote {}", args.output.display()));
    }
    if let Some(p) = &args.json {
        write_json(p, &made)?;
    }
    Ok(EXIT_OK)
}
