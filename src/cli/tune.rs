//! `loraguard tune`.

use std::path::PathBuf;

use clap::Args;
use loraguard::atomic::write_atomic;
use loraguard::convert::OutType;
use loraguard::llama::default_threads;
use loraguard::tune::{tune, weights_spec, Constraints, TaskMetric, TuneOptions};

use super::output::{Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The base model GGUF.
    #[arg(long, value_name = "MODEL.gguf")]
    pub base: PathBuf,
    /// The task adapter to keep (PEFT directory or GGUF LoRA).
    #[arg(long, value_name = "ADAPTER")]
    pub task: PathBuf,
    /// The safety adapter to fuse in (PEFT directory or GGUF LoRA).
    #[arg(long, value_name = "ADAPTER")]
    pub safety: PathBuf,
    /// GGUF LoRAs always applied at scale 1, as part of the model being
    /// patched (e.g. a safety adapter already merged into an aligned model,
    /// with --task the fine-tune that eroded it). Repeatable.
    #[arg(long = "base-lora", value_name = "ADAPTER.gguf")]
    pub base_loras: Vec<PathBuf>,
    /// JSONL with "prompt" and "label" unsafe, safe or task (task rows may
    /// carry a "reference" answer). Keep it apart from evaluation prompts.
    #[arg(long, value_name = "FILE.jsonl")]
    pub calibration: PathBuf,
    /// The tuned adapter, a GGUF LoRA.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// Write every candidate's numbers, the chosen one and why, as JSON (`-` for stdout).
    #[arg(long = "json", visible_alias = "report", value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Plot the frontier (unsafe compliance against task kept) as SVG.
    #[arg(long, value_name = "R.svg")]
    pub plot: Option<PathBuf>,
    /// Safe refusal may rise by at most this much over the task adapter's.
    #[arg(long, default_value_t = 0.10, value_name = "R")]
    pub max_over_refusal: f64,
    /// Keep at least this fraction of the task metric.
    #[arg(long, default_value_t = 0.90, value_name = "F")]
    pub min_task_kept: f64,
    /// Candidate evaluations, at most (each is one pass over the calibration
    /// prompts: 35–50 s on 2 cores for SmolLM2 and 160 prompts, so the
    /// default finishes within 15 minutes).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub budget: usize,
    /// Layers per group of the per-layer safety weights.
    #[arg(long, default_value_t = 5, value_name = "L")]
    pub group_size: usize,
    /// likelihood (the reference answers' per-token likelihood relative to
    /// the task adapter's; no generation) or json-keys=K1,K2 (generated task
    /// answers that are JSON objects with exactly those keys).
    #[arg(long, default_value = "likelihood", value_name = "METRIC")]
    pub task_metric: String,
    /// New tokens per unsafe and safe prompt, judged by the rules judge
    /// (which reads how the answer starts).
    #[arg(long, default_value_t = 24, value_name = "N")]
    pub max_tokens: usize,
    /// New tokens of generated task answers (references and json-keys).
    #[arg(long, default_value_t = 48, value_name = "N")]
    pub task_tokens: usize,
    /// Tensor type of the output: f32, f16, bf16, q8_0, ...
    #[arg(long, default_value = "f16", value_parser = super::gguf_out::parse_outtype)]
    pub outtype: OutType,
    /// Prompts decoded at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: u32,
    /// Model layers to offload to the GPU.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub gpu_layers: u32,
}

pub fn run(args: TuneArgs, ui: &Ui, threads: Option<usize>) -> anyhow::Result<i32> {
    let opts = TuneOptions {
        base: args.base,
        base_loras: args.base_loras,
        task: args.task,
        safety: args.safety,
        calibration: args.calibration,
        output: args.output,
        constraints: Constraints {
            max_over_refusal: args.max_over_refusal,
            min_task_kept: args.min_task_kept,
        },
        budget: args.budget,
        group_size: args.group_size,
        max_tokens: args.max_tokens,
        task_tokens: args.task_tokens,
        task_metric: TaskMetric::parse(&args.task_metric)?,
        outtype: args.outtype,
        threads: threads.map_or_else(default_threads, |n| n.clamp(1, i32::MAX as usize) as i32),
        parallel: args.parallel,
        gpu_layers: args.gpu_layers,
    };
    let report = tune(&opts, &|line| ui.say(line))?;
    if let Some(p) = &args.report {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        write_atomic(p, s.as_bytes())?;
    }
    if let Some(p) = &args.plot {
        write_atomic(p, loraguard::tune::plot::frontier_svg(&report).as_bytes())?;
    }
    let c = &report.chosen;
    ui.say(&format!(
        "chosen: {} task {} + safety {}: unsafe compliance {:.2} (task alone {:.2}), safe refusal {:.2} (task alone {:.2}), task kept {:.2}; {} candidates in {:.0} s; wrote {}",
        c.candidate.method,
        c.candidate.task_weight,
        weights_spec(&report.layer_groups, &c.candidate.group_weights),
        c.metrics.unsafe_compliance,
        report.baseline.unsafe_compliance,
        c.metrics.safe_refusal,
        report.baseline.safe_refusal,
        c.metrics.task_kept,
        report.candidates.len(),
        report.seconds,
        report.output
    ));
    ui.say(&format!(
        "reproduce: loraguard fuse {} --method {} --base {} -o OUT.gguf",
        report.fuse.join(" "),
        report.fuse_method,
        report.base
    ));
    Ok(EXIT_OK)
}
