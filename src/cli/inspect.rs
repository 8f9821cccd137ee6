//! `loraguard inspect`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use loraguard::check::applied::{apply_check, ApplyOptions, DEFAULT_MIN_CHANGE};
use loraguard::inspect::inspect;

use super::output::{print_stdout, write_json, EXIT_BAD_INPUT, EXIT_GATE, EXIT_OK};

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
    /// Prove the adapter applies: run a probe text through llama.cpp on
    /// --base with and without the GGUF LoRA and exit 3 when the logits do
    /// not move (an untrained adapter, a scale of 0, an update rounding erased).
    #[arg(long, requires = "base")]
    pub apply_check: bool,
    /// --apply-check: the runtime scale (llama.cpp's --lora-scaled FILE S).
    #[arg(
        long,
        value_name = "S",
        default_value_t = 1.0,
        requires = "apply_check"
    )]
    pub scale: f32,
    /// --apply-check: the smallest largest-logit change that counts as applied.
    #[arg(long, value_name = "X", default_value_t = DEFAULT_MIN_CHANGE, requires = "apply_check")]
    pub min_change: f64,
    /// --apply-check: layers to offload to the GPU.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "apply_check")]
    pub gpu_layers: u32,
}

pub fn run(args: InspectArgs) -> anyhow::Result<i32> {
    let mut info = inspect(&args.path, args.base.as_deref())?;
    let fits = info.fit.as_ref().is_none_or(|f| f.fits);
    if let (true, true, Some(base)) = (args.apply_check, fits, &args.base) {
        let opts = ApplyOptions {
            scale: args.scale,
            min_change: args.min_change,
            gpu_layers: args.gpu_layers,
            ..ApplyOptions::default()
        };
        info.apply_check = Some(apply_check(&args.path, base, &opts)?);
    }
    if let Some(p) = &args.json {
        write_json(p, &info)?;
    }
    if args.json.as_deref() != Some(std::path::Path::new("-")) {
        print_stdout(&info.to_string())?;
    }
    Ok(if !fits {
        EXIT_BAD_INPUT
    } else if let Some(a) = info.apply_check.as_ref().filter(|a| !a.applied) {
        let _ = writeln!(
            std::io::stderr(),
            "error: gate failed: {} did not apply: {}\nhint: convert the trained adapter (not its initialisation), at a non-zero scale, in a finer --outtype",
            a.adapter,
            a.reason.as_deref().unwrap_or("")
        );
        EXIT_GATE
    } else {
        EXIT_OK
    })
}
