//! Proof that an adapter applied (issue 21): the base and the base plus the
//! adapter run the same tokens through llama.cpp, and the logits must move.
//!
//! A silent no-op is the most common LoRA complaint across runtimes: an
//! untrained adapter (PEFT initialises B to zero), a scale of 0, an
//! adapter whose update rounding erased. This catches it before a user
//! publishes, and says which of those it is.

use std::path::Path;

use serde::Serialize;

use crate::adapter::AdapterSource;
use crate::error::{Error, Result};
use loraguard_llama::{Model, ModelOptions, Session, SessionOptions};

/// The text the logits are compared on, unless the caller gives one.
pub const DEFAULT_PROBE: &str = "The history of bread begins with wild grains ground between \
stones. Write a short answer: how does yeast make dough rise, and why does salt matter?";

/// Below this largest logit change, the adapter did not apply.
pub const DEFAULT_MIN_CHANGE: f64 = 1e-3;

/// What [`apply_check`] runs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The runtime scale (llama.cpp's `--lora-scaled FILE S`; 1 for `--lora`).
    pub scale: f32,
    /// The text whose next-token logits are compared.
    pub probe: String,
    /// The smallest largest-logit change that counts as applied.
    pub min_change: f64,
    /// Layers offloaded to the GPU.
    pub gpu_layers: u32,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            scale: 1.0,
            probe: DEFAULT_PROBE.into(),
            min_change: DEFAULT_MIN_CHANGE,
            gpu_layers: 0,
        }
    }
}

/// Whether the adapter changed what the model computes, and by how much.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub adapter: String,
    pub base: String,
    pub scale: f32,
    /// Tokens of the probe text (every position's logits are compared).
    pub tokens: usize,
    /// Largest |logit(base + adapter) − logit(base)| over all positions.
    pub max_logit_change: f64,
    /// Mean of that absolute change over all positions and the vocabulary.
    pub mean_logit_change: f64,
    /// Positions whose most likely next token changed.
    pub top1_changed: usize,
    /// ‖scale · ΔW‖_F over all modules, from the factors (what the file holds).
    pub update_norm: f64,
    pub min_change: f64,
    pub applied: bool,
    /// Why it did not apply, when it did not.
    pub reason: Option<String>,
}

/// Run the probe through `base` with and without the GGUF LoRA `adapter`.
pub fn apply_check(adapter: &Path, base: &Path, opts: &ApplyOptions) -> Result<Applied> {
    if crate::peft::looks_like_peft(adapter) {
        return Err(Error::Unsupported {
            path: adapter.to_path_buf(),
            feature: "--apply-check runs the GGUF LoRA llama.cpp loads; this is a PEFT directory"
                .into(),
            hint: Some("convert it first (`loraguard convert DIR --base BASE.gguf`)".into()),
        });
    }
    if !opts.scale.is_finite() {
        return Err(Error::Usage(format!("scale {} is not finite", opts.scale)));
    }
    let source = AdapterSource::open(adapter, None)?;
    let mut update_norm2 = 0.0f64;
    for m in source.modules() {
        update_norm2 += source.load(&m)?.norm().powi(2);
    }
    let update_norm = update_norm2.sqrt() * f64::from(opts.scale).abs();

    let model = Model::load(
        base,
        &ModelOptions {
            gpu_layers: opts.gpu_layers,
        },
    )?;
    let lora = model.load_adapter(adapter)?;
    let tokens = model.tokenize(&opts.probe, true, false)?;
    let session_opts = SessionOptions {
        n_ctx: (tokens.len() as u32).next_multiple_of(256).max(256),
        kv_f32: true,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &session_opts)?;
    let without = session.logits(&tokens)?;
    session.set_adapters(&[(&lora, opts.scale)])?;
    let with = session.logits(&tokens)?;

    let n_vocab = model.n_vocab();
    let (mut max, mut sum) = (0.0f64, 0.0f64);
    for (a, b) in with.iter().zip(&without) {
        let d = f64::from((a - b).abs());
        max = max.max(d);
        sum += d;
    }
    let top1_changed = with
        .chunks_exact(n_vocab)
        .zip(without.chunks_exact(n_vocab))
        .filter(|(a, b)| loraguard_llama::argmax(a) != loraguard_llama::argmax(b))
        .count();
    let applied = max >= opts.min_change;
    let reason = (!applied).then(|| {
        if update_norm == 0.0 {
            "the adapter's update is zero: an untrained adapter (PEFT initialises B to zero), \
             a scale of 0, or factors that rounding erased"
                .to_string()
        } else {
            format!(
                "the update's norm is {update_norm:.3e} but llama.cpp's logits moved by at most \
                 {max:.3e} (below {:.0e}): it did not reach the model",
                opts.min_change
            )
        }
    });
    Ok(Applied {
        adapter: adapter.display().to_string(),
        base: base.display().to_string(),
        scale: opts.scale,
        tokens: tokens.len(),
        max_logit_change: max,
        mean_logit_change: sum / with.len().max(1) as f64,
        top1_changed,
        update_norm,
        min_change: opts.min_change,
        applied,
        reason,
    })
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "apply check on {} at scale {} ({} tokens):",
            self.base, self.scale, self.tokens
        )?;
        writeln!(
            f,
            "  logit change: max {:.4}, mean {:.2e}; top-1 changed at {} of {} positions",
            self.max_logit_change, self.mean_logit_change, self.top1_changed, self.tokens
        )?;
        writeln!(f, "  update norm ‖scale·ΔW‖_F: {:.4e}", self.update_norm)?;
        match &self.reason {
            None => writeln!(f, "  applied: yes"),
            Some(r) => writeln!(f, "  applied: NO: {r}"),
        }
    }
}
