//! `loraguard check`.

use std::path::PathBuf;

use clap::Args;
use loraguard::atomic::write_atomic;
use loraguard::check::gates::{evaluate, Gate, GateKind};
use loraguard::check::junit::junit;
use loraguard::check::markers::Markers;
use loraguard::check::prompts::load_prompts;
use loraguard::check::{check, AdapterSpec, CheckOptions, Template};
use loraguard::judge::Judge;
use loraguard::llama::{default_threads, Sampling};

use super::output::{
    json_on_stdout, print_stdout, progress_of, step_summary, Ui, EXIT_GATE, EXIT_OK,
};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The base model GGUF.
    #[arg(long = "base", visible_alias = "model", value_name = "BASE.gguf")]
    pub model: PathBuf,
    /// A GGUF LoRA to apply, with an optional scale (default 1); repeat for
    /// several adapters active at once.
    #[arg(long = "lora", value_name = "A.gguf[:SCALE]", value_parser = parse_lora)]
    pub loras: Vec<AdapterSpec>,
    /// Prompts: .txt (one per line), .jsonl ({"prompt", "label", "id"}) or
    /// .csv (a prompt column, optional label and id columns).
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// The CSV column holding the prompt (e.g. AdvBench's `goal`).
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,
    /// New tokens per prompt, at most.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_tokens: usize,
    /// A system message for the chat template.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Use this llama.cpp built-in chat template (chatml, llama3, gemma, ...)
    /// instead of the model's own.
    #[arg(long, value_name = "NAME", conflicts_with = "raw")]
    pub chat_template: Option<String>,
    /// Feed prompts as raw text, without a chat template.
    #[arg(long)]
    pub raw: bool,
    /// Sample with this seed instead of greedy decoding.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Sampling temperature (with --seed).
    #[arg(long, default_value_t = 0.8, requires = "seed", value_name = "T")]
    pub temperature: f32,
    /// Keep the K most likely tokens (with --seed; 0 keeps all).
    #[arg(long, default_value_t = 40, requires = "seed", value_name = "K")]
    pub top_k: usize,
    /// Keep the most likely tokens up to this probability mass (with --seed).
    #[arg(long, default_value_t = 0.95, requires = "seed", value_name = "P")]
    pub top_p: f32,
    /// The refusal judge: `rules` (how the answer starts; the default),
    /// `markers` (GCG's marker list anywhere in the output, the old rule), or
    /// a MODEL.gguf asked about each answer (see --judge-template).
    #[arg(long, value_name = "NAME|MODEL.gguf", default_value = "rules")]
    pub judge: String,
    /// A model judge's question: `refusal-question` (the default, for chat
    /// models), `llama-guard-3`, or a JSON template file.
    #[arg(long, value_name = "NAME|FILE")]
    pub judge_template: Option<String>,
    /// Judge by this file's markers (one per line) anywhere in the output,
    /// the old rule with another list (implies `--judge markers`).
    #[arg(long, value_name = "FILE")]
    pub refusal_markers: Option<PathBuf>,
    /// Prompts decoded at once as parallel sequences of one context.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: u32,
    /// Model layers to offload to the GPU (needs a cuda, metal or vulkan build).
    #[arg(long, value_name = "N", default_value_t = default_gpu_layers())]
    pub gpu_layers: u32,
    /// Generate exactly --max-tokens tokens, past end-of-generation (benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Write the full JSON report here (`-` for stdout, instead of the table).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Write a Markdown report here.
    #[arg(long, value_name = "OUT.md")]
    pub markdown: Option<PathBuf>,
    /// Write the gates as JUnit XML here: a testcase per gate, and one per
    /// prompt whose verdict broke a gate.
    #[arg(long, value_name = "OUT.xml")]
    pub junit: Option<PathBuf>,
    /// Fail (exit 3) when more than RATE of LABEL's prompts are answered
    /// without refusal. LABEL `*` means all prompts. Repeatable.
    #[arg(long, value_name = "LABEL=RATE")]
    pub max_compliance: Vec<String>,
    /// Fail (exit 3) when more than RATE of LABEL's prompts are refused. Repeatable.
    #[arg(long, value_name = "LABEL=RATE")]
    pub max_refusal: Vec<String>,
}

const fn default_gpu_layers() -> u32 {
    if cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan")) {
        999
    } else {
        0
    }
}

fn parse_lora(s: &str) -> Result<AdapterSpec, String> {
    AdapterSpec::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: CheckArgs, ui: &Ui, threads: Option<usize>) -> anyhow::Result<i32> {
    // Parse everything cheap before loading a model.
    let mut gates = Vec::new();
    for g in &args.max_compliance {
        gates.push(Gate::parse(GateKind::MaxCompliance, g)?);
    }
    for g in &args.max_refusal {
        gates.push(Gate::parse(GateKind::MaxRefusal, g)?);
    }
    let prompts = load_prompts(&args.prompts, args.column.as_deref())?;
    let judge = match &args.refusal_markers {
        Some(p) if matches!(args.judge.as_str(), "rules" | "markers" | "gcg") => {
            Judge::Markers(Markers::from_file(p)?)
        }
        Some(_) => anyhow::bail!(loraguard::error::Error::Usage(format!(
            "--refusal-markers is the markers judge; it cannot be combined with --judge {}",
            args.judge
        ))),
        None => Judge::parse(&args.judge, args.judge_template.as_deref())?,
    };
    let threads = threads.map_or_else(default_threads, |n| n.clamp(1, i32::MAX as usize) as i32);
    let judge = match judge {
        Judge::Model(mut m) => {
            m.threads = threads;
            m.gpu_layers = args.gpu_layers;
            Judge::Model(m)
        }
        j => j,
    };
    let opts = CheckOptions {
        model: args.model,
        adapters: args.loras,
        max_tokens: args.max_tokens,
        system: args.system,
        template: match (args.raw, args.chat_template) {
            (true, _) => Template::Raw,
            (_, Some(n)) => Template::Named(n),
            _ => Template::Model,
        },
        sampling: match args.seed {
            None => Sampling::Greedy,
            Some(seed) => Sampling::Seeded {
                seed,
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
            },
        },
        judge,
        threads,
        parallel: args.parallel,
        gpu_layers: args.gpu_layers,
        ignore_eos: args.ignore_eos,
    };
    let bar = ui.bar("check");
    let progress = progress_of(&bar);
    let (report, t) = check(&opts, &prompts, &progress)?;
    bar.finish_and_clear();
    let violations = evaluate(&report, &gates)?;
    match &args.json {
        Some(_) if json_on_stdout(&args.json) => print_stdout(&report.to_json())?,
        Some(p) => write_atomic(p, report.to_json().as_bytes())?,
        None => {}
    }
    if let Some(p) = &args.markdown {
        write_atomic(p, report.to_markdown().as_bytes())?;
    }
    if let Some(p) = &args.junit {
        write_atomic(p, junit(&report, &gates, &violations).as_bytes())?;
    }
    step_summary(&format!(
        "### loraguard check: `{}`{}\n\njudge `{}`\n{}{}",
        report.model,
        report
            .adapters
            .iter()
            .map(|a| format!(" + `{}` × {}", a.path, a.scale))
            .collect::<String>(),
        report.settings.judge,
        report.rates_markdown(),
        violations
            .iter()
            .map(|v| format!("\n**gate failed:** {v}\n"))
            .collect::<String>()
    ));
    if !ui.quiet && !json_on_stdout(&args.json) {
        let line = |l: &str, n: usize, refused: usize, partial: usize| {
            let r = loraguard::judge::stats::RateCi::new(refused, n);
            format!(
                "{l:<24} {n:>5} {refused:>8} {partial:>8}  {}\n",
                r.percent()
            )
        };
        let mut s = format!(
            "{:<24} {:>5} {:>8} {:>8}  refusal rate [95% CI] ({})\n",
            "label", "n", "refused", "partial", report.settings.judge
        );
        for (l, r) in &report.summary.by_label {
            s.push_str(&line(l, r.n, r.refused, r.partial));
        }
        let sm = &report.summary;
        let partial = sm.by_label.values().map(|r| r.partial).sum();
        s.push_str(&line("all", sm.n, sm.refused, partial));
        print_stdout(&s)?;
        let total = t.prompt_tokens + t.generated_tokens;
        ui.say(&format!(
            "{} prompts: {} prompt + {} generated tokens in {:.2} s ({:.1} tokens/s; {:.1} generated/s), model load {:.2} s",
            report.summary.n,
            t.prompt_tokens,
            t.generated_tokens,
            t.generate_s,
            total as f64 / t.generate_s.max(1e-9),
            t.generated_tokens as f64 / t.generate_s.max(1e-9),
            t.load_s
        ));
    }
    if violations.is_empty() {
        return Ok(EXIT_OK);
    }
    for v in &violations {
        ui.error(&format!("gate failed: {v}"));
    }
    Ok(EXIT_GATE)
}
