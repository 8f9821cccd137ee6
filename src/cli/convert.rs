//! `loraguard convert`.

use std::path::PathBuf;

use clap::Args;
use loraguard::convert::{convert, ConvertOptions, ModuleStats};
use loraguard::hash::SourceHash;

use super::gguf_out::GgufOutArgs;
use super::output::{progress_of, write_json, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// PEFT adapter directory, or its adapter_model.safetensors (adapter_config.json beside it).
    pub adapter: PathBuf,
    /// The base model GGUF the adapter was trained on (any quantization).
    #[arg(long, value_name = "BASE.gguf")]
    pub base: PathBuf,
    /// Output GGUF LoRA file.
    #[arg(
        short,
        long,
        value_name = "OUT.gguf",
        required_unless_present = "dry_run"
    )]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub out: GgufOutArgs,
    /// Validate and show the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave out tensors llama.cpp's LoRA format cannot carry (modules_to_save,
    /// embeddings with new tokens) instead of refusing, and list them.
    #[arg(long)]
    pub drop_unsupported: bool,
    /// Measure each module's relative error ‖ΔW − ΔW_written‖_F / ‖ΔW‖_F as
    /// written (re-factoring plus the output type's rounding) and report it.
    #[arg(long)]
    pub measure_error: bool,
    /// The digest of the source file recorded in the output, as
    /// `loraguard.source.<ALGO>`: blake3 (fast), or sha256 to match a
    /// published SHA-256 such as the Hugging Face Hub's file ids.
    #[arg(long, value_name = "ALGO", default_value = "blake3", value_parser = parse_source_hash)]
    pub source_hash: SourceHash,
    /// Write the report as JSON to PATH; `--json` alone or `--json -`
    /// prints it on stdout (instead of the summary line).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

pub fn run(args: ConvertArgs, ui: &Ui) -> anyhow::Result<i32> {
    let opts = ConvertOptions {
        drop_unsupported: args.drop_unsupported,
        dry_run: args.dry_run,
        measure_error: args.measure_error,
        source_hash: args.source_hash,
        ..args.out.convert_options()
    };
    let bar = ui.bar("convert");
    let progress = progress_of(&bar);
    let report = convert(
        &args.adapter,
        &args.base,
        args.output.as_deref(),
        &opts,
        &progress,
    );
    bar.finish_and_clear();
    let report = report?;
    for d in &report.dropped {
        ui.say(&format!("dropped {} ({})", d.name, d.reason));
    }
    ui.say_fallbacks(&report.fallbacks);
    if let Some(line) = module_summary(&report.modules) {
        ui.say(&line);
    }
    if let Some(p) = &args.json {
        write_json(p, &report)?;
    }
    let json_on_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    if json_on_stdout {
        // The report is the output.
    } else if args.dry_run {
        ui.say(&format!(
            "dry run: {} LoRA pairs for {} (alpha {}, {}; {} with PEFT's scale baked into lora_b); nothing written",
            report.targets, report.architecture, report.alpha, report.outtype, report.baked
        ));
    } else if let Some(out) = &report.output {
        ui.say(&format!(
            "wrote {} ({} LoRA pairs, {}, {:.2} MiB, alpha {}{})",
            out.display(),
            report.targets,
            report.outtype,
            report.bytes_written as f64 / (1 << 20) as f64,
            report.alpha,
            if report.transforms.is_empty() {
                String::new()
            } else {
                format!("; {}", report.transforms.join(", "))
            }
        ));
    }
    Ok(EXIT_OK)
}

/// One line over the per-module figures: ranks and the worst and median errors.
fn module_summary(modules: &[ModuleStats]) -> Option<String> {
    if modules.is_empty() {
        return None;
    }
    let stat = |mut v: Vec<f64>| -> Option<(f64, f64)> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 2], v[v.len() - 1]))
    };
    let mut parts = Vec::new();
    let (before, after): (usize, usize) = modules
        .iter()
        .fold((0, 0), |(b, a), m| (b + m.source_rank, a + m.rank));
    if before != after || modules.iter().any(|m| m.truncation_error.is_some()) {
        let lo = modules.iter().map(|m| m.rank).min().unwrap_or(0);
        let hi = modules.iter().map(|m| m.rank).max().unwrap_or(0);
        parts.push(format!(
            "re-factored {} modules: total rank {before} -> {after} (per module {lo}..={hi})",
            modules.len()
        ));
    }
    if let Some((med, max)) = stat(modules.iter().filter_map(|m| m.truncation_error).collect()) {
        parts.push(format!("truncation error median {med:.2e}, max {max:.2e}"));
    }
    if let Some((med, max)) = stat(modules.iter().filter_map(|m| m.written_error).collect()) {
        parts.push(format!("error as written median {med:.2e}, max {max:.2e}"));
    }
    Some(parts.join("; "))
}

fn parse_source_hash(s: &str) -> Result<SourceHash, String> {
    SourceHash::parse(s).ok_or_else(|| format!("--source-hash takes blake3 or sha256, not {s:?}"))
}
