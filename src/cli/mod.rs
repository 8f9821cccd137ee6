//! Command-line interface: clap structs and one function per subcommand.
//! Each builds a validated library call; all work happens in the library.

mod analyze;
mod batch;
mod card;
mod check;
mod convert;
mod diff;
mod fuse;
mod gguf_out;
mod inspect;
mod judge;
mod merge;
mod output;
mod safe_lora;
mod tune;

use clap::{Parser, Subcommand};

/// Exact PEFT → GGUF LoRA conversion and safety tooling for llama.cpp.
#[derive(Debug, Parser)]
#[command(name = "loraguard", version, about, long_about = None)]
pub struct Cli {
    /// More logging (-v: info, with llama.cpp's log; -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bars or summaries; errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Worker threads, for our own work and llama.cpp's (default: the available parallelism).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert a PEFT LoRA adapter to a GGUF LoRA that llama.cpp loads with --lora.
    Convert(convert::ConvertArgs),
    /// SVD subspace analysis of an adapter: spectra, effective rank, overlap with
    /// the base weights and with another adapter.
    Analyze(analyze::AnalyzeArgs),
    /// Safe LoRA: project an adapter's updates onto the alignment subspace
    /// V = W_aligned − W_base, module by module (Hsu et al., 2024).
    SafeLora(safe_lora::SafeLoraArgs),
    /// Fuse adapters (e.g. a task and a safety adapter) into one: exact cat,
    /// orthogonal, selective (SafeMERGE), svd to a rank, or PEFT's merges.
    Fuse(fuse::FuseArgs),
    /// Bake adapters into a base GGUF (W + Σ s·ΔW), requantized with ggml.
    Merge(merge::MergeArgs),
    /// Run prompts through llama.cpp (with adapters) and measure refusals.
    Check(check::CheckArgs),
    /// Judge existing answers: compliance, refusal or partial refusal, with
    /// rates per label and agreement with human labels.
    Judge(judge::JudgeArgs),
    /// Search the fusion of a task and a safety adapter (per-layer weights,
    /// orthogonal or plain) for the safest adapter that keeps the task, and write it.
    Tune(tune::TuneArgs),
    /// Compare two `check --json` reports: refusal flips and rate deltas.
    Diff(diff::DiffArgs),
    /// Show what a PEFT adapter or GGUF file holds; with --base, whether an adapter fits.
    Inspect(inspect::InspectArgs),
    /// Write a Hugging Face model card (README.md) for a converted adapter or a merged GGUF.
    Card(card::CardArgs),
    /// Run a manifest of commands (JSONL), idempotent and resumable, sharded with --shard I/N.
    Batch(batch::BatchArgs),
}

/// Parse the arguments. `--version` also names the embedded llama.cpp build
/// and its backends, which takes initialising llama.cpp: done only then.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    if std::env::args_os().any(|a| a == "--version" || a == "-V") {
        let line = format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            loraguard_llama::build_info().summary()
        );
        cmd = cmd.version(line);
    }
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Parse arguments, run, and return the process exit code.
pub fn run() -> i32 {
    let cli = parse();
    loraguard::provenance::record_command(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    output::init_logging(cli.verbose, cli.quiet);
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            tracing::warn!("could not size the thread pool: {e}");
        }
    }
    let ui = output::Ui::new(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Convert(args) => convert::run(args, &ui),
        Command::Inspect(args) => inspect::run(args),
        Command::Card(args) => card::run(args, &ui),
        Command::Batch(args) => batch::run(args, &ui),
        Command::Analyze(args) => analyze::run(args, &ui),
        Command::SafeLora(args) => safe_lora::run(args, &ui),
        Command::Fuse(args) => fuse::run(args, &ui),
        Command::Merge(args) => merge::run(args, &ui),
        Command::Check(args) => check::run(args, &ui, cli.threads),
        Command::Diff(args) => diff::run(args, &ui),
        Command::Judge(args) => judge::run(args, &ui),
        Command::Tune(args) => tune::run(args, &ui, cli.threads),
    };
    match result {
        Ok(code) => code,
        Err(e) => output::report_error(&e),
    }
}
