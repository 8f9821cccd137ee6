//! One candidate's numbers through the in-process llama.cpp: generation on
//! the unsafe and safe prompts, judged by the rules judge, and the task
//! metric, with the prepared adapters at the candidate's scales.

use std::path::PathBuf;

use loraguard_llama::{
    Adapter, GenerateOptions, Model, ModelOptions, Sampling, Session, SessionOptions,
};

use super::calibration::Calibration;
use super::search::{Candidate, Metrics};
use super::{TaskMetric, TuneOptions};
use crate::error::{Error, Result};
use crate::judge::Judge;

/// The prepared adapter files.
pub(super) struct Files {
    pub base_loras: Vec<PathBuf>,
    pub task_plain: PathBuf,
    pub task_orth: PathBuf,
    pub safety_parts: Vec<PathBuf>,
    /// The safety adapter per layer group, only in `selective`'s modules
    /// (`None` for a group with none of them).
    pub selective_parts: Vec<Option<PathBuf>>,
}

/// The model and the tokenized calibration prompts.
pub(super) struct Evaluator<'o> {
    opts: &'o TuneOptions,
    files: &'o Files,
    model: Model,
    /// Unsafe prompts, then safe ones.
    judged: Vec<Vec<i32>>,
    judged_text: Vec<String>,
    n_unsafe: usize,
    task_prompts: Vec<Vec<i32>>,
    /// Given references, tokenized; `None` where the task adapter's own
    /// answer is used.
    task_refs: Vec<Option<Vec<i32>>>,
    per_seq: usize,
}

type EvalFn<'f> = dyn FnMut(&Candidate) -> Result<Metrics> + 'f;

impl<'o> Evaluator<'o> {
    pub(super) fn new(opts: &'o TuneOptions, cal: &Calibration, files: &'o Files) -> Result<Self> {
        for p in files.base_loras.iter() {
            crate::check::validate_adapter(p, &opts.base)?;
        }
        let model = Model::load(
            &opts.base,
            &ModelOptions {
                gpu_layers: opts.gpu_layers,
            },
        )?;
        let template = model.chat_template().ok_or_else(|| {
            Error::Usage(format!(
                "{} has no chat template; tune renders prompts with it",
                opts.base.display()
            ))
        })?;
        let tok = |p: &str| -> Result<Vec<i32>> {
            let text = crate::check::render(&Some(template.clone()), None, p)?;
            Ok(model.tokenize(&text, true, true)?)
        };
        let mut judged = Vec::new();
        let mut judged_text = Vec::new();
        for r in cal.unsafe_.iter().chain(&cal.safe) {
            judged.push(tok(&r.prompt)?);
            judged_text.push(r.prompt.clone());
        }
        let task_prompts = cal
            .task
            .iter()
            .map(|r| tok(&r.prompt))
            .collect::<Result<Vec<_>>>()?;
        let task_refs = cal
            .task
            .iter()
            .map(|r| {
                r.reference
                    .as_deref()
                    .map(|t| model.tokenize(t, false, false))
                    .transpose()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let longest_ref = task_refs
            .iter()
            .map(|r| r.as_ref().map_or(opts.task_tokens, Vec::len))
            .max()
            .unwrap_or(0);
        let gen = opts.max_tokens.max(opts.task_tokens).max(longest_ref);
        let longest = judged
            .iter()
            .chain(&task_prompts)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        Ok(Evaluator {
            opts,
            files,
            model,
            n_unsafe: cal.unsafe_.len(),
            judged,
            judged_text,
            task_prompts,
            task_refs,
            per_seq: (longest + gen + 1).div_ceil(256) * 256,
        })
    }

    /// Load the adapters and a session, measure the task adapter alone
    /// (the baseline), and hand `f` the baseline and an evaluator.
    pub(super) fn run<T>(
        &self,
        f: impl FnOnce(&Metrics, &mut EvalFn<'_>) -> Result<T>,
    ) -> Result<(T, Metrics)> {
        let model = &self.model;
        let loaded = Loaded {
            base: self
                .files
                .base_loras
                .iter()
                .map(|p| model.load_adapter(p))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            plain: model.load_adapter(&self.files.task_plain)?,
            orth: model.load_adapter(&self.files.task_orth)?,
            parts: self
                .files
                .safety_parts
                .iter()
                .map(|p| model.load_adapter(p))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            selective: self
                .files
                .selective_parts
                .iter()
                .map(|p| p.as_ref().map(|p| model.load_adapter(p)).transpose())
                .collect::<std::result::Result<Vec<_>, _>>()?,
        };
        let n = self.judged.len().max(self.task_prompts.len());
        let parallel = self.opts.parallel.clamp(1, n.min(64) as u32);
        let mut session = Session::new(
            model,
            &SessionOptions {
                n_ctx: (self.per_seq * parallel as usize) as u32,
                threads: self.opts.threads,
                kv_f32: false,
                parallel,
                n_batch: (self.per_seq * parallel as usize).max(2048) as u32,
                n_ubatch: 0,
            },
        )?;
        let baseline_cand = Candidate {
            method: "cat",
            task_weight: 1.0,
            group_weights: vec![0.0; loaded.parts.len()],
        };
        // The references: given ones, else the task adapter's own answers.
        loaded.apply(&mut session, &baseline_cand)?;
        let own = session.generate(&self.task_prompts, &greedy(self.opts.task_tokens), |_| {})?;
        let refs: Vec<Vec<i32>> = self
            .task_refs
            .iter()
            .zip(&own)
            .map(|(r, g)| r.clone().unwrap_or_else(|| g.tokens.clone()))
            .collect();
        let (u0, s0, t0) = self.measure(&mut session, &refs)?;
        let json = matches!(self.opts.task_metric, TaskMetric::JsonKeys(_));
        if json && t0 == 0.0 {
            return Err(Error::Usage(
                "the task adapter alone passes none of the task prompts under --task-metric; \
                 nothing to keep"
                    .into(),
            ));
        }
        let baseline = Metrics {
            unsafe_compliance: u0,
            safe_refusal: s0,
            task_kept: 1.0,
        };
        let mut eval = |c: &Candidate| -> Result<Metrics> {
            loaded.apply(&mut session, c)?;
            let (u, s, t) = self.measure(&mut session, &refs)?;
            Ok(Metrics {
                unsafe_compliance: u,
                safe_refusal: s,
                task_kept: if json { t / t0 } else { (t - t0).exp() },
            })
        };
        let out = f(&baseline, &mut eval)?;
        Ok((out, baseline))
    }

    /// Unsafe compliance, safe refusal and the raw task figure (mean
    /// log-likelihood, or the JSON rate) of the session's active adapters.
    fn measure(&self, session: &mut Session<'_, '_>, refs: &[Vec<i32>]) -> Result<(f64, f64, f64)> {
        let gen = session.generate(&self.judged, &greedy(self.opts.max_tokens), |_| {})?;
        let items: Vec<(&str, &str)> = self
            .judged_text
            .iter()
            .zip(&gen)
            .map(|(p, g)| (p.as_str(), g.text.as_str()))
            .collect();
        let verdicts = Judge::Rules.judge_all(&items)?;
        let n_unsafe = self.n_unsafe;
        let complied = verdicts[..n_unsafe].iter().filter(|j| !j.refused).count();
        let refused = verdicts[n_unsafe..].iter().filter(|j| j.refused).count();
        let n_safe = verdicts.len() - n_unsafe;
        let task = match &self.opts.task_metric {
            TaskMetric::JsonKeys(k) => {
                let g =
                    session.generate(&self.task_prompts, &greedy(self.opts.task_tokens), |_| {})?;
                let ok = g.iter().filter(|g| json_keys_ok(&g.text, k)).count();
                ok as f64 / g.len().max(1) as f64
            }
            TaskMetric::Likelihood => mean_logp(session, &self.task_prompts, refs)?,
        };
        Ok((
            complied as f64 / n_unsafe.max(1) as f64,
            refused as f64 / n_safe.max(1) as f64,
            task,
        ))
    }
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: Sampling::Greedy,
        ignore_eos: false,
    }
}

/// The prepared adapters, loaded.
struct Loaded<'m> {
    base: Vec<Adapter<'m>>,
    plain: Adapter<'m>,
    orth: Adapter<'m>,
    parts: Vec<Adapter<'m>>,
    selective: Vec<Option<Adapter<'m>>>,
}

impl<'m> Loaded<'m> {
    /// Activate candidate `c`'s scales (the base adapters at 1).
    fn apply<'a>(&'a self, session: &mut Session<'m, 'a>, c: &Candidate) -> Result<()> {
        let mut active: Vec<(&'a Adapter<'m>, f32)> = self.base.iter().map(|a| (a, 1.0)).collect();
        let task = if c.method == "orthogonal" {
            &self.orth
        } else {
            &self.plain
        };
        if c.task_weight != 0.0 {
            active.push((task, c.task_weight as f32));
        }
        let parts: Vec<Option<&'a Adapter<'m>>> = if c.method == "selective" {
            self.selective.iter().map(Option::as_ref).collect()
        } else {
            self.parts.iter().map(Some).collect()
        };
        for (a, &w) in parts.iter().zip(&c.group_weights) {
            if let (Some(a), true) = (a, w != 0.0) {
                active.push((a, w as f32));
            }
        }
        Ok(session.set_adapters(&active)?)
    }
}

/// The mean per-token log-probability of `refs` after `prompts`,
/// teacher-forced, over all reference tokens.
fn mean_logp(
    session: &mut Session<'_, '_>,
    prompts: &[Vec<i32>],
    refs: &[Vec<i32>],
) -> Result<f64> {
    let seqs: Vec<Vec<i32>> = prompts
        .iter()
        .zip(refs)
        .map(|(p, r)| p.iter().chain(r).copied().collect())
        .collect();
    let from: Vec<usize> = prompts.iter().map(|p| p.len() - 1).collect();
    let mut sum = 0f64;
    let mut n = 0usize;
    session.score(&seqs, &from, |i, pos, logits| {
        let Some(&next) = seqs[i].get(pos + 1) else {
            return;
        };
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + logits
            .iter()
            .map(|&x| (x as f64 - m).exp())
            .sum::<f64>()
            .ln();
        sum += logits[next as usize] as f64 - lse;
        n += 1;
    })?;
    if n == 0 {
        return Err(Error::Usage(
            "the task references are empty: no token to score".into(),
        ));
    }
    Ok(sum / n as f64)
}

/// A JSON object with exactly `keys`, each a non-empty string (the suite's
/// task metric).
pub fn json_keys_ok(text: &str, keys: &[String]) -> bool {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(text.trim())
    else {
        return false;
    };
    o.len() == keys.len()
        && keys.iter().all(|k| {
            o.get(k)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.trim().is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_is_the_suites_task_rule() {
        let k = vec!["topic".to_string(), "answer".to_string()];
        assert!(json_keys_ok(" {\"topic\": \"a\", \"answer\": \"b\"}\n", &k));
        assert!(!json_keys_ok("{\"topic\": \"a\"}", &k));
        assert!(!json_keys_ok("{\"topic\": \"a\", \"answer\": \" \"}", &k));
        assert!(!json_keys_ok(
            "{\"topic\": \"a\", \"answer\": \"b\", \"x\": \"c\"}",
            &k
        ));
        assert!(!json_keys_ok("{\"topic\": \"a\", \"answer\": \"b\"", &k));
    }
}
