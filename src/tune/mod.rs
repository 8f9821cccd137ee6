//! `loraguard tune`: search the fusion of a task and a safety adapter for
//! the adapter that refuses the most unsafe calibration prompts while
//! keeping the task and not over-refusing, then write it.
//!
//! Candidates are evaluated through the in-process llama.cpp with runtime
//! scales, without rewriting files: the task adapter is prepared twice (as
//! it is, and with its component in the safety adapter's column space
//! removed, `fuse --method orthogonal`), and the safety adapter is split
//! into one adapter per layer group, all of it and only in `selective`'s
//! modules (SafeMERGE: the half of the shared modules where the task's
//! update is least similar to the safety update). A candidate is one scale per file,
//! set at once with `llama_set_adapters_lora`. The chosen candidate is then
//! written as one adapter with its per-layer weights baked into `lora_b`
//! (`fuse TASK:1 SAFETY:W@A-B,...`), which applies the same ΔW.
//!
//! - [`calibration`]: the labelled prompts;
//! - [`search`]: the deterministic search within a budget;
//! - `eval`: one candidate's numbers through llama.cpp.

pub mod calibration;
mod eval;
mod groups;
pub mod plot;
pub mod search;

pub use groups::{layer_groups, weights_spec};

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::convert::OutType;
use crate::error::{Error, Result};
use crate::fuse::weights::layer_of;
use crate::fuse::{fuse, FuseInput, FuseOptions, Method, Selection, Weights};
use crate::projection::{selected, selection_threshold};
use calibration::Calibration;
pub use search::{Candidate, Constraints, Metrics, Scored};

/// How the task is measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskMetric {
    /// The per-token likelihood of the reference answers, teacher-forced,
    /// relative to the task adapter alone: exp(mean log p − mean log p_task).
    /// Rows without a reference use the task adapter's own greedy answer.
    Likelihood,
    /// The share of generated task answers that are a JSON object with
    /// exactly these keys, each a non-empty string, relative to the task
    /// adapter alone.
    JsonKeys(Vec<String>),
}

impl TaskMetric {
    /// `likelihood` or `json-keys=K1,K2`.
    pub fn parse(s: &str) -> Result<TaskMetric> {
        if s == "likelihood" {
            return Ok(TaskMetric::Likelihood);
        }
        if let Some(keys) = s.strip_prefix("json-keys=") {
            let keys: Vec<String> = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect();
            if !keys.is_empty() {
                return Ok(TaskMetric::JsonKeys(keys));
            }
        }
        Err(Error::Usage(format!(
            "--task-metric {s:?}: expected likelihood or json-keys=KEY,KEY"
        )))
    }
}

/// Everything `tune` needs.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    pub base: PathBuf,
    /// Adapters always applied at scale 1, part of the model being patched
    /// (e.g. a safety adapter already merged into an aligned model).
    pub base_loras: Vec<PathBuf>,
    pub task: PathBuf,
    pub safety: PathBuf,
    pub calibration: PathBuf,
    pub output: PathBuf,
    pub constraints: Constraints,
    /// Candidate evaluations, at most.
    pub budget: usize,
    /// Layers per group of the per-layer safety weights.
    pub group_size: usize,
    /// New tokens generated per unsafe and safe prompt (refusals show early).
    pub max_tokens: usize,
    /// New tokens of generated task answers and references.
    pub task_tokens: usize,
    pub task_metric: TaskMetric,
    pub outtype: OutType,
    pub threads: i32,
    pub parallel: u32,
    pub gpu_layers: u32,
}

/// What `tune` found.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub base: String,
    pub base_loras: Vec<String>,
    pub task: String,
    pub safety: String,
    pub calibration: String,
    pub judge: String,
    pub task_metric: TaskMetric,
    pub constraints: Constraints,
    pub budget: usize,
    pub layer_groups: Vec<(usize, usize)>,
    pub max_tokens: usize,
    /// The task adapter alone.
    pub baseline: Metrics,
    /// Every candidate evaluated, in order: the frontier.
    pub candidates: Vec<Scored>,
    pub chosen: Scored,
    pub why: String,
    /// The `fuse` inputs that reproduce the output.
    pub fuse: Vec<String>,
    pub fuse_method: String,
    /// The `--top-n` of the `selective` candidates (half of the modules
    /// both adapters have), and of the output when it is one.
    pub selective_top_n: usize,
    pub output: String,
    pub loraguard_version: String,
    #[serde(skip)]
    pub seconds: f64,
}

fn fuse_opts(method: Method, base: &Path, outtype: OutType) -> FuseOptions {
    FuseOptions {
        protect: Some(1),
        ..FuseOptions::new(method).gguf(base, outtype)
    }
}

fn input(path: &Path, weights: Weights) -> FuseInput {
    FuseInput {
        path: path.to_path_buf(),
        weights,
    }
}

/// Run the search and write the chosen adapter. `say` receives progress
/// lines (one per candidate).
pub fn tune(opts: &TuneOptions, say: &dyn Fn(&str)) -> Result<TuneReport> {
    let t0 = Instant::now();
    let cal = Calibration::read(&opts.calibration)?;
    if opts.budget == 0 {
        return Err(Error::Usage(
            "--budget 0 leaves no candidate to evaluate; give at least 1".into(),
        ));
    }
    if opts.group_size == 0 || opts.max_tokens == 0 || opts.task_tokens == 0 {
        return Err(Error::Usage(
            "--group-size, --max-tokens and --task-tokens must be at least 1".into(),
        ));
    }
    let g = crate::gguf::GgufFile::open(&opts.base)?;
    let n_layer = g
        .architecture()
        .and_then(|a| g.get_u64(&format!("{a}.block_count")))
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: no {{arch}}.block_count: not a base model",
                opts.base.display()
            ))
        })? as usize;
    let groups = layer_groups(n_layer, opts.group_size);
    crate::atomic::check_output_dir(&opts.output)?;

    // Prepare the runtime adapters beside the output (F32: exact).
    let scratch = crate::atomic::scratch_dir(&opts.output)?;
    let dir = scratch.path();
    let zero = Weights::uniform(0.0);
    let one = Weights::uniform(1.0);
    let prep = |name: &str, method: Method, task: Weights, safety: Weights| -> Result<PathBuf> {
        let out = dir.join(name);
        fuse(
            &[input(&opts.task, task), input(&opts.safety, safety)],
            &out,
            &fuse_opts(method, &opts.base, OutType::F32),
            &|_, _| {},
        )?;
        Ok(out)
    };
    say("preparing: the task adapter, its orthogonal form, the safety adapter per layer group (all of it, and selective's modules)");
    let task_plain = prep("task.gguf", Method::Cat, one.clone(), zero.clone())?;
    let task_orth = prep(
        "task-orth.gguf",
        Method::Orthogonal,
        one.clone(),
        zero.clone(),
    )?;
    let mut safety_parts = Vec::new();
    for (i, (a, b)) in groups.iter().enumerate() {
        let w = Weights::parse(&format!("1@{a}-{b}"))
            .and_then(|r| r.ok())
            .ok_or_else(|| Error::Internal("layer group spec".into()))?;
        safety_parts.push(prep(
            &format!("safety-{i}.gguf"),
            Method::Cat,
            zero.clone(),
            w,
        )?);
    }

    // selective: the safety adapter only in the half of the shared modules
    // where the task's update is least similar to it (and in the modules
    // only it has), per layer group.
    let all = fuse(
        &[
            input(&opts.task, one.clone()),
            input(&opts.safety, one.clone()),
        ],
        &dir.join("selective-all.gguf"),
        &FuseOptions {
            selection: Selection::Threshold(2.0),
            ..fuse_opts(Method::Selective, &opts.base, OutType::F32)
        },
        &|_, _| {},
    )?;
    let sims: Vec<f64> = all.modules.iter().filter_map(|m| m.similarity).collect();
    let top_n = (sims.len() / 2).max(1);
    let cut = selection_threshold(Selection::TopN(top_n), &sims)?;
    let safety_modules: Vec<&str> = all
        .modules
        .iter()
        .filter(|m| m.similarity.is_none_or(|s| selected(s, cut)))
        .map(|m| m.module.as_str())
        .collect();
    let mut selective_parts = Vec::new();
    for (i, (a, b)) in groups.iter().enumerate() {
        let items: Vec<String> = safety_modules
            .iter()
            .filter(|m| layer_of(m).is_some_and(|l| *a <= l && l <= *b))
            .map(|m| format!("1%{m}"))
            .collect();
        if items.is_empty() {
            selective_parts.push(None);
            continue;
        }
        let w = Weights::parse(&items.join(","))
            .and_then(|r| r.ok())
            .ok_or_else(|| Error::Internal("selective part spec".into()))?;
        selective_parts.push(Some(prep(
            &format!("safety-selective-{i}.gguf"),
            Method::Cat,
            zero.clone(),
            w,
        )?));
    }

    let files = eval::Files {
        base_loras: opts.base_loras.clone(),
        task_plain,
        task_orth,
        safety_parts,
        selective_parts,
    };
    let ev = eval::Evaluator::new(opts, &cal, &files)?;
    let (candidates, baseline) = ev.run(|baseline, eval| {
        say(&format!(
            "{:<10} task 1 alone{:<19} unsafe compliance {:.2}  safe refusal {:.2}  task kept 1",
            "baseline", "", baseline.unsafe_compliance, baseline.safe_refusal
        ));
        search::search(groups.len(), opts.budget, &opts.constraints, baseline, &mut |c| {
            let m = eval(c)?;
            say(&format!(
                "{:<10} task {} safety {:<24} unsafe compliance {:.2}  safe refusal {:.2}  task kept {:.2}",
                c.method,
                c.task_weight,
                weights_spec(&groups, &c.group_weights),
                m.unsafe_compliance,
                m.safe_refusal,
                m.task_kept
            ));
            Ok(m)
        })
    })?;
    drop(ev);

    let Some(chosen) = search::choose(&candidates).cloned() else {
        let near = search::closest(&candidates, &opts.constraints, &baseline, 3);
        let lines: Vec<String> = near
            .iter()
            .map(|s| {
                format!(
                    "  {} safety {}: unsafe compliance {:.2}, safe refusal {:.2} (+{:.2}), task kept {:.2}",
                    s.candidate.method,
                    weights_spec(&groups, &s.candidate.group_weights),
                    s.metrics.unsafe_compliance,
                    s.metrics.safe_refusal,
                    s.over_refusal,
                    s.metrics.task_kept
                )
            })
            .collect();
        return Err(Error::Usage(format!(
            "no candidate of {} meets --max-over-refusal {} and --min-task-kept {}; the closest:\n{}",
            candidates.len(),
            opts.constraints.max_over_refusal,
            opts.constraints.min_task_kept,
            lines.join("\n")
        )));
    };
    let spec = weights_spec(&groups, &chosen.candidate.group_weights);
    let method = Method::parse(chosen.candidate.method)
        .ok_or_else(|| Error::Internal(format!("method {}", chosen.candidate.method)))?;
    let safety_w = Weights::parse(&spec)
        .and_then(|r| r.ok())
        .ok_or_else(|| Error::Internal(format!("weights spec {spec}")))?;
    let task_w = Weights::uniform(chosen.candidate.task_weight);
    fuse(
        &[
            input(&opts.task, task_w.clone()),
            input(&opts.safety, safety_w.clone()),
        ],
        &opts.output,
        &FuseOptions {
            selection: Selection::TopN(top_n),
            ..fuse_opts(method, &opts.base, opts.outtype)
        },
        &|_, _| {},
    )?;
    let why = format!(
        "of {} candidates, {} meet the constraints (safe refusal at most +{} over the task \
         adapter's {:.2}, task kept at least {}); this one refuses the most unsafe calibration \
         prompts (compliance {:.2}, from {:.2} with the task adapter alone), keeping {:.2} of \
         the task with safe refusal {:.2}",
        candidates.len(),
        candidates.iter().filter(|s| s.meets).count(),
        opts.constraints.max_over_refusal,
        baseline.safe_refusal,
        opts.constraints.min_task_kept,
        chosen.metrics.unsafe_compliance,
        baseline.unsafe_compliance,
        chosen.metrics.task_kept,
        chosen.metrics.safe_refusal
    );
    Ok(TuneReport {
        base: opts.base.display().to_string(),
        base_loras: opts
            .base_loras
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        task: opts.task.display().to_string(),
        safety: opts.safety.display().to_string(),
        calibration: opts.calibration.display().to_string(),
        judge: crate::judge::Judge::Rules.name(),
        task_metric: opts.task_metric.clone(),
        constraints: opts.constraints,
        budget: opts.budget,
        layer_groups: groups,
        max_tokens: opts.max_tokens,
        baseline,
        candidates,
        chosen,
        why,
        fuse: vec![
            input(&opts.task, task_w).spec(),
            input(&opts.safety, safety_w).spec(),
        ],
        fuse_method: method.name().into(),
        selective_top_n: top_n,
        output: opts.output.display().to_string(),
        loraguard_version: env!("CARGO_PKG_VERSION").into(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_metrics_parse() {
        assert_eq!(
            TaskMetric::parse("likelihood").unwrap(),
            TaskMetric::Likelihood
        );
        assert_eq!(
            TaskMetric::parse("json-keys=topic, answer").unwrap(),
            TaskMetric::JsonKeys(vec!["topic".into(), "answer".into()])
        );
        assert!(TaskMetric::parse("json-keys=").is_err());
        assert!(TaskMetric::parse("bleu").is_err());
    }
}
