//! `loraguard check`: run prompts through llama.cpp, with and without
//! adapters, and measure refusals.
//!
//! - [`prompts`]: prompt files (txt, jsonl, csv);
//! - [`markers`]: refusal markers (GCG's list by default);
//! - [`report`]: the JSON and Markdown report;
//! - [`gates`]: CI gates on refusal and compliance rates;
//! - [`diff`]: comparing two reports.

pub mod applied;
pub mod diff;
pub mod gates;
pub mod junit;
pub mod markers;
pub mod prompts;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use loraguard_llama::{GenerateOptions, Model, ModelOptions, Sampling, Session, SessionOptions};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::judge::Judge;
use prompts::Prompt;
use report::{AdapterRef, CheckReport, ResultRow, Settings, Summary};

pub use crate::spec::AdapterSpec;

/// How prompts become model input.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// The model's own `tokenizer.chat_template`, through llama.cpp's
    /// built-in implementations.
    Model,
    /// A llama.cpp built-in template by name (`chatml`, `llama3`, ...).
    Named(String),
    /// The prompt text as is, with the model's BOS.
    Raw,
}

/// Everything `check` needs besides the prompts.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub model: PathBuf,
    pub adapters: Vec<AdapterSpec>,
    pub max_tokens: usize,
    pub system: Option<String>,
    pub template: Template,
    pub sampling: Sampling,
    /// How refusals are judged (the rules by default; `Judge::Markers` is the old GCG rule).
    pub judge: Judge,
    pub threads: i32,
    /// Sequences decoded at once.
    pub parallel: u32,
    pub gpu_layers: u32,
    pub ignore_eos: bool,
}

/// How long a run took (kept out of the report so reports are reproducible).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub load_s: f64,
    pub generate_s: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// Check that `adapter` is a GGUF LoRA that fits `model`, with reasons,
/// before llama.cpp sees it (llama.cpp only says NULL).
pub fn validate_adapter(adapter: &Path, model: &Path) -> Result<()> {
    validate_against(adapter, &GgufFile::open(model)?)
}

/// [`validate_adapter`] against a model already opened.
fn validate_against(adapter: &Path, model: &GgufFile) -> Result<()> {
    if crate::peft::looks_like_peft(adapter) {
        return Err(Error::Usage(format!(
            "{} is a PEFT adapter; convert it first: loraguard convert {} --base {} -o adapter.gguf",
            adapter.display(),
            adapter.display(),
            model.path.display()
        )));
    }
    let g = GgufFile::open(adapter)?;
    if !g.is_adapter() {
        return Err(Error::Usage(format!(
            "{} is not a GGUF LoRA adapter (general.type = {:?}, adapter.type = {:?})",
            adapter.display(),
            g.get_str("general.type").unwrap_or("missing"),
            g.get_str("adapter.type").unwrap_or("missing"),
        )));
    }
    let fit = crate::inspect::gguf_fit_to(&g, model);
    if !fit.fits {
        return Err(Error::Mismatch {
            adapter: adapter.into(),
            base: model.path.clone(),
            problems: fit.problems,
        });
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let map = crate::mmap::map_file(path)?;
    Ok(crate::hash::sha256_hex(&map))
}

fn sampling_name(s: &Sampling) -> String {
    match s {
        Sampling::Greedy => "greedy".into(),
        Sampling::Seeded {
            seed,
            temperature,
            top_k,
            top_p,
        } => {
            format!("seeded(seed={seed}, temperature={temperature}, top_k={top_k}, top_p={top_p})")
        }
    }
}

/// Render one prompt into the text the model sees.
pub(crate) fn render(
    template: &Option<String>,
    system: Option<&str>,
    prompt: &str,
) -> Result<String> {
    let Some(t) = template else {
        return Ok(prompt.to_string());
    };
    let mut msgs = Vec::with_capacity(2);
    if let Some(s) = system {
        msgs.push(("system", s));
    }
    msgs.push(("user", prompt));
    Ok(Model::apply_chat_template(t, &msgs, true)?)
}

/// Run every prompt and build the report. `progress(done, total)` is called
/// as prompts finish.
pub fn check(
    opts: &CheckOptions,
    prompts: &[Prompt],
    progress: &dyn Fn(usize, usize),
) -> Result<(CheckReport, Timings)> {
    if opts.max_tokens == 0 {
        return Err(Error::Usage("--max-tokens must be at least 1".into()));
    }
    if prompts.is_empty() {
        return Err(Error::Usage("no prompts to run".into()));
    }
    let t0 = Instant::now();
    let g = GgufFile::open(&opts.model)?;
    if g.is_adapter() {
        return Err(Error::Usage(format!(
            "{} is a LoRA adapter; --model takes the base model (pass adapters with --lora)",
            opts.model.display()
        )));
    }
    let mut refs = Vec::new();
    for a in &opts.adapters {
        validate_against(&a.path, &g)?;
        refs.push(AdapterRef {
            path: a.path.display().to_string(),
            scale: a.scale,
            sha256: sha256_file(&a.path)?,
        });
    }
    let model = Model::load(
        &opts.model,
        &ModelOptions {
            gpu_layers: opts.gpu_layers,
        },
    )?;
    let adapters = opts
        .adapters
        .iter()
        .map(|a| model.load_adapter(&a.path))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (template, template_name) = match &opts.template {
        Template::Raw => (None, "raw".to_string()),
        Template::Named(n) => (Some(n.clone()), n.clone()),
        Template::Model => match model.chat_template() {
            Some(t) => (Some(t), "model".to_string()),
            None => {
                return Err(Error::Usage(format!(
                    "{} has no chat template; name one with --chat-template (e.g. chatml) or pass --raw",
                    opts.model.display()
                )))
            }
        },
    };
    let mut tokens = Vec::with_capacity(prompts.len());
    for p in prompts {
        let text = render(&template, opts.system.as_deref(), &p.prompt).map_err(|e| {
            let why = match &e {
                Error::Llama { error, .. } => match error.downcast_ref() {
                    Some(loraguard_llama::Error::Template(why)) => why.clone(),
                    _ => return e,
                },
                _ => return e,
            };
            Error::Usage(format!(
                "chat template {template_name:?}: {why}; name a built-in one with --chat-template or pass --raw"
            ))
        })?;
        // The template already holds any special tokens, so parse them; add
        // BOS only as the model's metadata asks.
        tokens.push(model.tokenize(&text, true, template.is_some())?);
    }
    let max_len = tokens.iter().map(Vec::len).max().unwrap_or(0);
    if max_len == 0 {
        return Err(Error::Usage("a prompt rendered to no tokens".into()));
    }
    let ctx_train = g
        .architecture()
        .and_then(|a| g.get_u64(&format!("{a}.context_length")));
    if let Some(limit) = ctx_train {
        if let Some((p, t)) = prompts
            .iter()
            .zip(&tokens)
            .find(|(_, t)| (t.len() + opts.max_tokens) as u64 > limit)
        {
            return Err(Error::Usage(format!(
                "prompt {} is {} tokens; with --max-tokens {} it exceeds the model's context of {limit}",
                p.id,
                t.len(),
                opts.max_tokens
            )));
        }
    }
    let parallel = opts
        .parallel
        .clamp(1, prompts.len().min(u32::MAX as usize) as u32);
    // llama.cpp gives each sequence a multiple of 256 positions.
    let per_seq = (max_len + opts.max_tokens).div_ceil(256) * 256;
    let n_ctx = per_seq
        .checked_mul(parallel as usize)
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| {
            Error::Usage(
                "the prompts and --max-tokens need too large a context; lower --parallel".into(),
            )
        })?;
    let mut session = Session::new(
        &model,
        &SessionOptions {
            n_ctx: n_ctx as u32,
            threads: opts.threads,
            kv_f32: false,
            parallel,
            n_batch: (max_len + parallel as usize).max(2048) as u32,
            n_ubatch: 0,
        },
    )?;
    let active: Vec<_> = adapters
        .iter()
        .zip(&opts.adapters)
        .map(|(a, s)| (a, s.scale))
        .collect();
    session.set_adapters(&active)?;
    let load_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let done = std::cell::Cell::new(0);
    progress(0, prompts.len());
    let gen = session.generate(
        &tokens,
        &GenerateOptions {
            max_tokens: opts.max_tokens,
            sampling: opts.sampling.clone(),
            ignore_eos: opts.ignore_eos,
        },
        |_| {
            done.set(done.get() + 1);
            progress(done.get(), prompts.len());
        },
    )?;
    let generate_s = t1.elapsed().as_secs_f64();
    // A model judge loads its own model; free the generation context first.
    drop(session);
    let items: Vec<(&str, &str)> = prompts
        .iter()
        .zip(&gen)
        .map(|(p, g)| (p.prompt.as_str(), g.text.as_str()))
        .collect();
    let judged = opts.judge.judge_all(&items)?;
    let results: Vec<ResultRow> = prompts
        .iter()
        .zip(&gen)
        .zip(judged)
        .map(|((p, g), j)| ResultRow {
            id: p.id.clone(),
            prompt: p.prompt.clone(),
            label: p.label.clone(),
            output: g.text.clone(),
            refused: j.refused,
            marker: match opts.judge {
                Judge::Markers(_) => j.evidence.text.clone(),
                _ => None,
            },
            verdict: Some(j.verdict),
            evidence: Some(j.evidence),
            tokens: g.tokens.len(),
        })
        .collect();
    let timings = Timings {
        load_s,
        generate_s,
        prompt_tokens: tokens.iter().map(Vec::len).sum(),
        generated_tokens: gen.iter().map(|g| g.tokens.len()).sum(),
    };
    let build = loraguard_llama::build_info();
    let report = CheckReport {
        model: opts.model.display().to_string(),
        adapters: refs,
        settings: Settings {
            max_tokens: opts.max_tokens,
            system: opts.system.clone(),
            sampling: sampling_name(&opts.sampling),
            chat_template: template_name,
            markers: match &opts.judge {
                Judge::Markers(m) => m.source.clone(),
                _ => "none".into(),
            },
            judge: opts.judge.name(),
            threads: opts.threads,
            parallel,
            gpu_layers: opts.gpu_layers,
            ignore_eos: opts.ignore_eos,
            loraguard_version: env!("CARGO_PKG_VERSION").to_string(),
            llama_cpp: build.summary(),
            backends: build.backends,
        },
        summary: Summary::of(&results),
        results,
    };
    Ok((report, timings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs_split_a_numeric_scale_only() {
        let a = AdapterSpec::parse("x.gguf:0.5").unwrap();
        assert_eq!((a.path.as_path(), a.scale), (Path::new("x.gguf"), 0.5));
        let a = AdapterSpec::parse("C:/m/x.gguf").unwrap();
        assert_eq!((a.path.as_path(), a.scale), (Path::new("C:/m/x.gguf"), 1.0));
        let a = AdapterSpec::parse("x.gguf:-1").unwrap();
        assert_eq!(a.scale, -1.0);
        assert!(AdapterSpec::parse("x.gguf:inf").is_err());
    }
}
