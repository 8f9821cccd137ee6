//! `loraguard safe-lora`.

use std::path::PathBuf;

use clap::Args;
use loraguard::safelora::{safe_lora, Projection, SafeLoraOptions, Selection};

use super::gguf_out::GgufOutArgs;
use super::output::{progress_of, write_json, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct SafeLoraArgs {
    /// The fine-tuned adapter to make safer: a PEFT directory, or a GGUF LoRA
    /// (then base and aligned must be GGUF models and the output a .gguf).
    pub adapter: PathBuf,
    /// The unaligned weights the adapter was trained on: a GGUF model (any
    /// type), a safetensors file, or a directory of safetensors shards.
    #[arg(long, value_name = "UNALIGNED")]
    pub base: PathBuf,
    /// The safety-aligned weights, in the same forms; or a PEFT safety
    /// adapter, meaning base + that adapter (V is then its low-rank ΔW).
    #[arg(long, value_name = "ALIGNED")]
    pub aligned: PathBuf,
    /// Project the modules whose similarity is at most T (the paper's
    /// threshold mode; the default, with T = 0.5).
    #[arg(long, value_name = "T", conflicts_with = "top_n")]
    pub threshold: Option<f64>,
    /// Project the N least similar modules (the reference's number mode;
    /// its default is 10). Ties at the N-th similarity are projected too.
    #[arg(long, value_name = "N")]
    pub top_n: Option<usize>,
    /// Not the paper's projection: the orthogonal projector onto V's top-K
    /// left singular vectors instead of C = V·Vᵀ/‖V‖_F.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub exact_projection: Option<u32>,
    /// Only modules whose PEFT name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub modules: Option<String>,
    /// Output: a PEFT adapter directory, or a GGUF LoRA (a name ending in .gguf).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    #[command(flatten)]
    pub out: GgufOutArgs,
    /// Seed of the randomized SVD for --exact-projection on dense weights.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Write the per-module report as JSON here (`-` for stdout).
    #[arg(long = "json", visible_alias = "report", value_name = "PATH")]
    pub report: Option<PathBuf>,
}

pub fn run(args: SafeLoraArgs, ui: &Ui) -> anyhow::Result<i32> {
    let selection = match (args.threshold, args.top_n) {
        (_, Some(n)) => Selection::TopN(n),
        (Some(t), None) => Selection::Threshold(t),
        (None, None) => Selection::Threshold(0.5),
    };
    let modules = args
        .modules
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| loraguard::Error::Usage(format!("--modules: {e}")))?;
    let opts = SafeLoraOptions {
        base: args.base,
        aligned: args.aligned,
        selection,
        projection: args
            .exact_projection
            .map_or(Projection::Paper, |k| Projection::Exact(k as usize)),
        modules,
        seed: args.seed,
        convert: args.out.convert_options(),
    };
    let bar = ui.bar("safe-lora");
    let progress = progress_of(&bar);
    let report = safe_lora(&args.adapter, &args.output, &opts, &progress);
    bar.finish_and_clear();
    let report = report?;
    if let Some(p) = &args.report {
        write_json(p, &report)?;
    }
    ui.say_fallbacks(&report.fallbacks);
    for w in &report.warnings {
        ui.say(&format!("warning: {w}"));
    }
    let (before, after) = report.modules.iter().fold((0.0, 0.0), |(b, a), m| {
        (b + m.norm_before.powi(2), a + m.norm_after.powi(2))
    });
    ui.say(&format!(
        "projected {} of {} modules (similarity <= {:.5}, {} projection); ‖ΔW‖_F over all modules {:.4} -> {:.4}; wrote {}",
        report.projected,
        report.modules.len(),
        report.threshold,
        report.projection,
        before.sqrt(),
        after.sqrt(),
        report.output.display()
    ));
    Ok(EXIT_OK)
}
