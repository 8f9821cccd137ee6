//! `loraguard merge`.

use std::path::PathBuf;

use clap::Args;
use loraguard::merge::{merge, MergeInput, MergeOptions, MergeType};

use super::output::{progress_of, write_json, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model GGUF (any type; for a split model, its first shard).
    #[arg(long = "base", visible_alias = "model", value_name = "BASE.gguf")]
    pub model: PathBuf,
    /// An adapter to bake in, as PATH[:SCALE] (a GGUF LoRA of any type or a
    /// PEFT directory; scale 1 if omitted). Repeat for several.
    #[arg(long = "lora", required = true, value_name = "ADAPTER[:S]")]
    pub loras: Vec<String>,
    /// The merged model GGUF to write.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// The type of merged tensors: same (each keeps its base type), f32,
    /// f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k.
    /// Tensors no adapter touches are copied as they are.
    #[arg(long = "type", default_value = "same", value_parser = parse_type, value_name = "TYPE")]
    pub ty: MergeType,
    /// Write the merge even when the merged tensors' types keep less than
    /// half of the adapters' update (by default that exits 2 and writes
    /// nothing: such a model behaves much like the base).
    #[arg(long)]
    pub allow_lossy: bool,
    /// Leave out PEFT tensors outside LoRA pairs (modules_to_save, e.g. a
    /// trained lm_head) instead of refusing the adapter; they are listed.
    #[arg(long)]
    pub drop_unsupported: bool,
    /// Write the per-tensor report as JSON here (`-` for stdout).
    /// After writing, measure the merge's cost on this text: the merged model
    /// against the base with the same (GGUF) adapters at run time, through
    /// llama.cpp: KL divergence of next-token distributions (mean, p99),
    /// top-1 agreement, and perplexity of each.
    #[arg(long, value_name = "TEXT_FILE")]
    pub measure: Option<PathBuf>,
    /// --measure: at most this many tokens of the text, in chunks of 512.
    #[arg(long, value_name = "N", default_value_t = 4096, requires = "measure")]
    pub measure_tokens: usize,
    #[arg(long = "json", visible_alias = "report", value_name = "PATH")]
    pub report: Option<PathBuf>,
}

/// Below this fraction of the update kept, warn (it is written only with
/// --allow-lossy).
const LOW_KEPT: f64 = loraguard::merge::DEFAULT_MIN_KEPT;

fn parse_type(s: &str) -> Result<MergeType, String> {
    MergeType::parse(s).ok_or_else(|| {
        format!(
            "unknown type {s:?}; expected same, {}",
            loraguard::quant::writable_names()
        )
    })
}

pub fn run(args: MergeArgs, ui: &Ui) -> anyhow::Result<i32> {
    let inputs = args
        .loras
        .iter()
        .map(|s| MergeInput::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let bar = ui.bar("merge");
    let progress = progress_of(&bar);
    let opts = MergeOptions {
        min_kept: (!args.allow_lossy).then_some(loraguard::merge::DEFAULT_MIN_KEPT),
        drop_unsupported: args.drop_unsupported,
        ..MergeOptions::new(args.ty)
    };
    if args.measure.is_some() {
        loraguard::merge::measure::check_inputs(&inputs)?;
    }
    let report = merge(&args.model, &inputs, &args.output, &opts, &progress);
    bar.finish_and_clear();
    let mut report = report?;
    if let Some(text) = &args.measure {
        let mopts = loraguard::merge::measure::MeasureOptions {
            max_tokens: args.measure_tokens,
            ..Default::default()
        };
        let cost =
            loraguard::merge::measure::measure(&args.model, &inputs, &report.output, text, &mopts)?;
        report.measure = Some(cost);
    }
    if let Some(p) = &args.report {
        write_json(p, &report)?;
    }
    for m in report.merged.iter().filter(|m| m.fallback.is_some()) {
        ui.say(&format!(
            "{}: {}",
            m.tensor,
            m.fallback.as_deref().unwrap_or_default()
        ));
    }
    ui.say(&format!(
        "merged {} adapter(s) into {} tensors ({} copied as they were); the written types kept {:.1}% of the update (error {:.1}%); wrote {} ({:.1} MiB)",
        inputs.len(),
        report.merged.len(),
        report.copied,
        100.0 * report.update_kept,
        100.0 * report.update_error,
        report.output.display(),
        report.output_bytes as f64 / (1u64 << 20) as f64
    ));
    for d in &report.dropped {
        ui.warn(&format!("left out (--drop-unsupported): {d}"));
    }
    if report.update_kept < LOW_KEPT {
        ui.warn(&format!(
            "rounding to the merged tensors' types lost most of the adapters' update \
             ({:.0}% kept; written because of --allow-lossy); the merged model behaves much \
             like the base. Use --type q8_0 or f16.",
            100.0 * report.update_kept
        ));
    }
    if let Some(cost) = &report.measure {
        ui.say(&cost.to_string());
    }
    Ok(EXIT_OK)
}
