//! `loraguard convert`.

use std::path::PathBuf;

use clap::Args;
use loraguard::convert::{convert, ConvertOptions, OutType};

use super::output::{print_stdout, Ui, EXIT_OK};

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
    /// Tensor type: f32, f16, bf16, q8_0, or auto (the 16-bit type matching the source).
    #[arg(long, default_value = "auto", value_parser = parse_outtype)]
    pub outtype: OutType,
    /// Validate and show the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave out tensors llama.cpp's LoRA format cannot carry (modules_to_save,
    /// embeddings with new tokens) instead of refusing, and list them.
    #[arg(long)]
    pub drop_unsupported: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_outtype(s: &str) -> Result<OutType, String> {
    OutType::parse(s)
        .ok_or_else(|| format!("unknown outtype {s:?}; expected f32, f16, bf16, q8_0 or auto"))
}

pub fn run(args: ConvertArgs, ui: &Ui) -> anyhow::Result<i32> {
    let opts = ConvertOptions {
        outtype: args.outtype,
        drop_unsupported: args.drop_unsupported,
        dry_run: args.dry_run,
    };
    let bar = ui.bar("convert");
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
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
    for f in &report.fallbacks {
        ui.say(&format!(
            "{}: written as {} instead of {}: {}",
            f.tensor, f.written, f.requested, f.reason
        ));
    }
    if args.json {
        let json = serde_json::json!({
            "adapter": report.adapter,
            "base": report.base,
            "output": report.output,
            "architecture": report.architecture,
            "alpha": report.alpha,
            "outtype": report.outtype.name(),
            "targets": report.targets,
            "baked": report.baked,
            "transforms": report.transforms,
            "dropped": report.dropped.iter().map(|d| serde_json::json!({"tensor": d.name, "reason": d.reason})).collect::<Vec<_>>(),
            "fallbacks": report.fallbacks.iter().map(|f| serde_json::json!({"tensor": f.tensor, "requested": f.requested.name(), "written": f.written.name(), "reason": f.reason})).collect::<Vec<_>>(),
            "source_sha256": report.source_sha256,
            "bytes_written": report.bytes_written,
            "dry_run": args.dry_run,
        });
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&json)?))?;
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
