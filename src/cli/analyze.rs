//! `loraguard analyze`.

use std::path::PathBuf;

use clap::Args;
use loraguard::analyze::plot::{plot, PlotFormat};
use loraguard::analyze::{analyze, AnalyzeOptions};

use super::output::{json_on_stdout, print_stdout, progress_of, write_json, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A PEFT adapter directory or a GGUF LoRA.
    pub adapter: PathBuf,
    /// The base model GGUF: measure ΔW against its weights' top-k singular
    /// subspaces (a PEFT adapter is mapped to GGUF names and layout first).
    #[arg(long, value_name = "BASE.gguf")]
    pub base: Option<PathBuf>,
    /// Another adapter (PEFT or GGUF) to compare with, module by module.
    #[arg(long, value_name = "OTHER")]
    pub against: Option<PathBuf>,
    /// Size of the base weights' top singular subspace (was --top-k, which
    /// in `check` is a sampling cut-off).
    #[arg(long, default_value_t = 64, value_name = "K")]
    pub subspace: usize,
    /// Seed of the randomized SVD.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Power iterations of the randomized SVD of each base weight (each adds
    /// two passes over the weight; 4 instead of 2 cost ~1.6x and tightened
    /// the top-64 subspace of a 4096x14336 weight, see CHANGELOG).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub power_iters: usize,
    /// Write the full report as JSON here (`-` for stdout, instead of the table).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Draw per-layer curves (norms, effective ranks, base-subspace energy,
    /// cosines with --against) to a picture; .svg or .png by extension.
    #[arg(long, value_name = "OUT.svg|OUT.png")]
    pub plot: Option<PathBuf>,
}

pub fn run(args: AnalyzeArgs, ui: &Ui) -> anyhow::Result<i32> {
    if let Some(p) = &args.plot {
        if PlotFormat::from_path(p).is_none() {
            return Err(loraguard::Error::Usage(format!(
                "--plot {}: the picture is chosen by extension, .svg or .png",
                p.display()
            ))
            .into());
        }
    }
    let opts = AnalyzeOptions {
        base: args.base,
        against: args.against,
        top_k: args.subspace,
        seed: args.seed,
        power_iters: args.power_iters,
    };
    let bar = ui.bar("analyze");
    let progress = progress_of(&bar);
    let report = analyze(&args.adapter, &opts, &progress)?;
    bar.finish_and_clear();
    if let Some(p) = &args.json {
        write_json(p, &report)?;
    }
    if let Some(p) = &args.plot {
        plot(&report, p)?;
    }
    if !ui.quiet && !json_on_stdout(&args.json) {
        print_stdout(&report.to_string())?;
    }
    Ok(EXIT_OK)
}
