//! `loraguard judge`: classify answers that already exist, without generating.

use std::path::PathBuf;

use clap::Args;
use loraguard::atomic::write_atomic;
use loraguard::check::markers::Markers;
use loraguard::judge::responses::{read_responses, JudgeReport};
use loraguard::judge::Judge;

use super::output::{print_stdout, step_summary, Ui, EXIT_OK};

#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// JSONL with "output" (and "id", "prompt", optional "label" and a
    /// person's "expected" verdict), or a `check --json` report.
    #[arg(value_name = "RESPONSES")]
    pub responses: PathBuf,
    /// The judge: `rules` (the default), `markers` (GCG's list anywhere), or
    /// a MODEL.gguf asked about each answer (see --judge-template).
    #[arg(long, value_name = "NAME|MODEL.gguf", default_value = "rules")]
    pub judge: String,
    /// A model judge's question: `refusal-question` (the default, for chat
    /// models), `llama-guard-3`, or a JSON template file.
    #[arg(long, value_name = "NAME|FILE")]
    pub judge_template: Option<String>,
    /// Model layers of a judge model to offload to the GPU.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub gpu_layers: u32,
    /// The markers judge with this file's markers, one per line.
    #[arg(long, value_name = "FILE", conflicts_with = "judge")]
    pub refusal_markers: Option<PathBuf>,
    /// Write the JSON report here (`-` for stdout).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Write a Markdown report here.
    #[arg(long, value_name = "OUT.md")]
    pub markdown: Option<PathBuf>,
}

pub fn run(args: JudgeArgs, ui: &Ui) -> anyhow::Result<i32> {
    let judge = match &args.refusal_markers {
        Some(p) => Judge::Markers(Markers::from_file(p)?),
        None => Judge::parse(&args.judge, args.judge_template.as_deref())?,
    };
    let judge = match judge {
        Judge::Model(mut m) => {
            m.gpu_layers = args.gpu_layers;
            Judge::Model(m)
        }
        j => j,
    };
    let responses = read_responses(&args.responses)?;
    let t = std::time::Instant::now();
    let report = JudgeReport::build(&judge, &args.responses, &responses)?;
    let took = t.elapsed().as_secs_f64();
    let to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    match &args.json {
        Some(_) if to_stdout => print_stdout(&report.to_json())?,
        Some(p) => write_atomic(p, report.to_json().as_bytes())?,
        None => {}
    }
    if let Some(p) = &args.markdown {
        write_atomic(p, report.to_markdown().as_bytes())?;
    }
    step_summary(&report.summary_markdown());
    if !ui.quiet && !to_stdout {
        let line = |l: &str, c: &loraguard::judge::responses::VerdictCounts| {
            format!(
                "{l:<24} {:>6} {:>10} {:>8} {:>8}  {}\n",
                c.n,
                c.compliance,
                c.refusal,
                c.partial,
                c.refused.percent()
            )
        };
        let mut s = format!(
            "{:<24} {:>6} {:>10} {:>8} {:>8}  refused [95% CI] ({})\n",
            "label", "n", "compliance", "refusal", "partial", report.judge
        );
        for (l, c) in &report.summary.by_label {
            s.push_str(&line(l, c));
        }
        s.push_str(&line("all", &report.summary.all));
        if let Some(a) = &report.summary.agreement {
            s.push_str(&format!(
                "agreement with \"expected\" ({} rows): two-way {}, three-way {}\n",
                a.n,
                a.two_way.percent(),
                a.three_way.percent()
            ));
        }
        print_stdout(&s)?;
        ui.say(&format!(
            "judged {} answers in {:.3} s",
            responses.len(),
            took
        ));
    }
    Ok(EXIT_OK)
}
