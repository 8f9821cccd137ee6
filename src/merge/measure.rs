//! The measured cost of a merge (`merge --measure TEXT`, issue 21): the
//! merged model against the base with the same adapters applied at run
//! time, on a text sample through llama.cpp. llama-perplexity's
//! `--kl-divergence` idea in one command.
//!
//! For each position of each chunk, with P the reference (base + runtime
//! adapters) and Q the merged model's next-token distribution:
//! KL(P‖Q) = Σ P·(log P − log Q); top-1 agreement compares their most likely
//! tokens; perplexity is exp of the mean negative log-likelihood of the
//! text's own next tokens, for the reference, the merged model and the base.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::spec::AdapterSpec;
use loraguard_llama::{Model, ModelOptions, Session, SessionOptions};

/// The largest text sample read (bytes).
pub const MAX_MEASURE_TEXT_BYTES: u64 = 16 << 20;

/// How [`measure`] runs.
#[derive(Debug, Clone)]
pub struct MeasureOptions {
    /// Tokens per chunk (each chunk is a fresh sequence).
    pub chunk: usize,
    /// At most this many tokens of the text are used.
    pub max_tokens: usize,
    pub gpu_layers: u32,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            chunk: 512,
            max_tokens: 4096,
            gpu_layers: 0,
        }
    }
}

/// What a merge cost, on one text.
#[derive(Debug, Clone, Serialize)]
pub struct MergeCost {
    pub text: String,
    /// Positions compared (each predicts the next token of the text).
    pub positions: usize,
    pub chunks: usize,
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Share of positions where the merged model's top token is the reference's.
    pub top1_agreement: f64,
    pub ppl_reference: f64,
    pub ppl_merged: f64,
    pub ppl_base: f64,
}

/// Refuse, before any merging, adapters that cannot be applied at run time.
pub fn check_inputs(adapters: &[AdapterSpec]) -> Result<()> {
    match adapters.iter().find(|a| crate::peft::looks_like_peft(&a.path)) {
        None => Ok(()),
        Some(a) => Err(Error::Unsupported {
            path: a.path.clone(),
            feature: "--measure applies the adapters at run time, as GGUF LoRAs; this is a PEFT directory".into(),
            hint: Some("convert it first (`loraguard convert DIR --base BASE.gguf`) and merge the GGUF".into()),
        }),
    }
}

/// log-softmax of `logits`, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x)) as f64;
    let lse = max
        + logits
            .iter()
            .map(|x| (f64::from(*x) - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|x| f64::from(*x) - lse).collect()
}

/// Measure `merged` against `base` + `adapters` (GGUF LoRAs at their
/// scales) on the text file `text`.
pub fn measure(
    base: &Path,
    adapters: &[AdapterSpec],
    merged: &Path,
    text: &Path,
    opts: &MeasureOptions,
) -> Result<MergeCost> {
    if opts.chunk < 2 || opts.max_tokens < 2 {
        return Err(Error::Usage(
            "--measure needs chunks and a sample of at least 2 tokens".into(),
        ));
    }
    check_inputs(adapters)?;
    let sample = crate::capped::read_text(text, MAX_MEASURE_TEXT_BYTES, "text sample")?;
    let mopts = ModelOptions {
        gpu_layers: opts.gpu_layers,
    };
    let base_model = Model::load(base, &mopts)?;
    let merged_model = Model::load(merged, &mopts)?;
    let n_vocab = base_model.n_vocab();
    if merged_model.n_vocab() != n_vocab {
        return Err(Error::Usage(format!(
            "{} has {} tokens in its vocabulary, the base {} has {n_vocab}",
            merged.display(),
            merged_model.n_vocab(),
            base.display()
        )));
    }
    let loras = adapters
        .iter()
        .map(|a| base_model.load_adapter(&a.path))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let pairs: Vec<_> = loras
        .iter()
        .zip(adapters)
        .map(|(l, a)| (l, a.scale))
        .collect();
    let mut tokens = base_model.tokenize(&sample, true, false)?;
    tokens.truncate(opts.max_tokens);
    if tokens.len() < 2 {
        return Err(Error::Usage(format!(
            "{}: the text sample has fewer than 2 tokens",
            text.display()
        )));
    }
    let sopts = SessionOptions {
        n_ctx: (opts.chunk as u32).next_multiple_of(256),
        ..SessionOptions::default()
    };
    let mut reference = Session::new(&base_model, &sopts)?;
    reference.set_adapters(&pairs)?;
    let mut plain = Session::new(&base_model, &sopts)?;
    let mut merged_session = Session::new(&merged_model, &sopts)?;

    let mut kls = Vec::new();
    let (mut agree, mut nll_ref, mut nll_merged, mut nll_base) = (0usize, 0.0, 0.0, 0.0);
    let mut chunks = 0;
    for chunk in tokens.chunks(opts.chunk).filter(|c| c.len() >= 2) {
        chunks += 1;
        let r = reference.logits(chunk)?;
        let m = merged_session.logits(chunk)?;
        let b = plain.logits(chunk)?;
        for i in 0..chunk.len() - 1 {
            let at = |x: &[f32]| log_softmax(&x[i * n_vocab..(i + 1) * n_vocab]);
            let (lp, lq, lb) = (at(&r), at(&m), at(&b));
            let kl: f64 = lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum();
            kls.push(kl.max(0.0));
            // The top token of the logits is the top token of the distribution.
            let top = |x: &[f32]| loraguard_llama::argmax(&x[i * n_vocab..(i + 1) * n_vocab]);
            agree += usize::from(top(&r) == top(&m));
            let next = chunk[i + 1] as usize;
            nll_ref -= lp[next];
            nll_merged -= lq[next];
            nll_base -= lb[next];
        }
    }
    let n = kls.len();
    let kl_mean = kls.iter().sum::<f64>() / n as f64;
    let mut sorted = kls;
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    Ok(MergeCost {
        text: text.display().to_string(),
        positions: n,
        chunks,
        kl_mean,
        kl_p99: p99,
        kl_max: *sorted.last().expect("at least one position"),
        top1_agreement: agree as f64 / n as f64,
        ppl_reference: (nll_ref / n as f64).exp(),
        ppl_merged: (nll_merged / n as f64).exp(),
        ppl_base: (nll_base / n as f64).exp(),
    })
}

impl std::fmt::Display for MergeCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "merge cost on {} ({} positions): KL(runtime‖merged) mean {:.3e}, p99 {:.3e}, max {:.3e}; \
             top-1 agreement {:.2}%; perplexity runtime {:.3}, merged {:.3}, base {:.3}",
            self.text,
            self.positions,
            self.kl_mean,
            self.kl_p99,
            self.kl_max,
            100.0 * self.top1_agreement,
            self.ppl_reference,
            self.ppl_merged,
            self.ppl_base
        )
    }
}
