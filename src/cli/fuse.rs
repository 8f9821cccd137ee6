//! `loraguard fuse`.

use std::path::PathBuf;

use clap::Args;
use loraguard::fuse::{fuse, FuseInput, FuseOptions, Method, Side, METHODS};

use super::gguf_out::GgufOutArgs;
use super::output::{progress_of, write_json, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct FuseArgs {
    /// Adapters as PATH[:WEIGHTS] (PEFT directories or GGUF LoRAs for the
    /// same base; weight 1 if omitted). WEIGHTS is W, or comma-separated
    /// W@A-B (layers A to B), W%KIND (modules ending in KIND) items, e.g.
    /// safety:1.5@22-29 or task:1,0.5%down_proj; unselected modules get the
    /// bare W, else 0.
    #[arg(required = true, num_args = 2.., value_name = "ADAPTER[:W]")]
    pub adapters: Vec<String>,
    /// cat (exact weighted sum, ranks add up), svd (the sum truncated to
    /// --rank), PEFT's per-factor merges (equal ranks; not the weighted
    /// sum, the report says by how much): linear, ties, dare_linear,
    /// dare_ties, magnitude_prune, or PEFT's dense merges truncated to
    /// --rank: ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd;
    /// or orthogonal (cat after removing from the other adapters' updates
    /// their component in the --protect adapter's --side subspace).
    #[arg(long, value_parser = parse_method, value_name = "METHOD")]
    pub method: Method,
    /// svd and *_svd: the rank kept (default: the largest input rank).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub rank: Option<u32>,
    /// ties*, dare_*, magnitude_prune*: the fraction of entries kept, in (0, 1].
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,
    /// dare_*: the seed of the random masks.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// orthogonal: the adapter (1-based) the others are kept out of; the
    /// last one by default (put the safety adapter last).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub protect: Option<u32>,
    /// orthogonal: project away from the protected adapter's column space
    /// (output directions), row space (input directions), or both.
    #[arg(long, value_name = "SIDE", default_value = "column", value_parser = parse_side)]
    pub side: Side,
    /// The base model GGUF, needed for a .gguf output.
    #[arg(long, value_name = "BASE.gguf")]
    pub base: Option<PathBuf>,
    /// Output: a PEFT directory, or a GGUF LoRA (a name ending in .gguf).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    #[command(flatten)]
    pub out: GgufOutArgs,
    /// Write the per-module report as JSON here.
    #[arg(long, value_name = "REPORT.json")]
    pub report: Option<PathBuf>,
}

fn parse_side(s: &str) -> Result<Side, String> {
    Side::parse(s).ok_or_else(|| format!("unknown side {s:?}; expected column, row or both"))
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s).ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(|m| m.name()).collect();
        format!("unknown method {s:?}; expected one of {}", names.join(", "))
    })
}

pub fn run(args: FuseArgs, ui: &Ui) -> anyhow::Result<i32> {
    let inputs = args
        .adapters
        .iter()
        .map(|s| FuseInput::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = FuseOptions {
        method: args.method,
        rank: args.rank.map(|k| k as usize),
        density: args.density,
        seed: args.seed,
        protect: args.protect.map(|n| n as usize - 1),
        side: args.side,
        base: args.base,
        convert: args.out.convert_options(),
    };
    let bar = ui.bar("fuse");
    let progress = progress_of(&bar);
    let report = fuse(&inputs, &args.output, &opts, &progress);
    bar.finish_and_clear();
    let report = report?;
    if let Some(p) = &args.report {
        write_json(p, &report)?;
    }
    ui.say_fallbacks(&report.fallbacks);
    let worst = report
        .modules
        .iter()
        .map(|m| m.relative_error)
        .fold(0.0f64, f64::max);
    let rank: usize = report.modules.iter().map(|m| m.rank).sum();
    ui.say(&format!(
        "fused {} adapters ({}) over {} modules, total rank {rank}; largest relative error against the exact weighted sum {worst:.2e}; wrote {}",
        inputs.len(),
        report.method,
        report.modules.len(),
        report.output.display()
    ));
    Ok(EXIT_OK)
}
