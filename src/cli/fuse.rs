//! `loraguard fuse`.

use std::path::PathBuf;

use clap::Args;
use loraguard::fuse::{
    fuse, FuseInput, FuseOptions, Method, Selection, Side, DEFAULT_THRESHOLD, METHODS,
};

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
    /// orthogonal (cat after removing from the other adapters' updates
    /// their component in the --protect adapter's --side subspace), or
    /// selective (SafeMERGE: cat of both adapters in the modules selected
    /// by --threshold or --top-n, the task adapter alone elsewhere).
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
    /// orthogonal and selective: the safety adapter (1-based), the one the
    /// others are kept out of or that is fused selectively; the last one by
    /// default (put the safety adapter last).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub protect: Option<u32>,
    /// orthogonal: project away from the protected adapter's column space
    /// (output directions), row space (input directions), or both.
    #[arg(long, value_name = "SIDE", default_value = "column", value_parser = parse_side)]
    pub side: Side,
    /// selective: fuse the safety adapter into the modules whose Safe LoRA
    /// similarity (of the task's update to the safety update's subspace) is
    /// at most T; SafeMERGE's default, 0.35, when neither this nor --top-n
    /// is given.
    #[arg(long, value_name = "T", conflicts_with = "top_n")]
    pub threshold: Option<f64>,
    /// selective: fuse the safety adapter into the N least similar modules
    /// (ties at the N-th similarity too).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_n: Option<u32>,
    /// The base model GGUF, needed for a .gguf output.
    #[arg(long, value_name = "BASE.gguf")]
    pub base: Option<PathBuf>,
    /// Output: a PEFT directory, or a GGUF LoRA (a name ending in .gguf).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    #[command(flatten)]
    pub out: GgufOutArgs,
    /// Write the per-module report as JSON here (`-` for stdout).
    #[arg(long = "json", visible_alias = "report", value_name = "PATH")]
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
    if args.method != Method::Selective && (args.threshold.is_some() || args.top_n.is_some()) {
        return Err(loraguard::error::Error::Usage(
            "--threshold and --top-n choose modules for --method selective only".into(),
        )
        .into());
    }
    let selection = match (args.threshold, args.top_n) {
        (_, Some(n)) => Selection::TopN(n as usize),
        (Some(t), None) => Selection::Threshold(t),
        (None, None) => Selection::Threshold(DEFAULT_THRESHOLD),
    };
    let opts = FuseOptions {
        selection,
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
    if report.method == "selective" {
        let picked = report
            .modules
            .iter()
            .filter(|m| m.selected == Some(true))
            .count();
        let judged = report
            .modules
            .iter()
            .filter(|m| m.selected.is_some())
            .count();
        ui.say(&format!(
            "selective: the safety adapter fused into {picked} of the {judged} modules both adapters have"
        ));
    }
    ui.say(&format!(
        "fused {} adapters ({}) over {} modules, total rank {rank}; largest relative error against the exact weighted sum {worst:.2e}; wrote {}",
        inputs.len(),
        report.method,
        report.modules.len(),
        report.output.display()
    ));
    Ok(EXIT_OK)
}
