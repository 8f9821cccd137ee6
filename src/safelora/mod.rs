//! `loraguard safe-lora`: Safe LoRA (Hsu et al., 2024) in streaming,
//! low-rank form.
//!
//! Per target module, V = W_aligned − W_base and the paper's
//! C = V·Vᵀ / ‖V‖_F; a module whose similarity cos(C·B·A, B·A) (rounded to 5
//! decimals, as the authors' code does) is at most the threshold gets
//! B′ = C·B, A unchanged. `--top-n N` sets the threshold to the N-th smallest
//! similarity, as the reference's `number` mode does (ties may project
//! more). C is never formed (see [`crate::projection`]); modules are processed one per
//! worker, each holding one dense V in a reusable buffer.
//!
//! The adapter is a PEFT directory (HF layout; V from GGUF models is brought
//! to it through convert's plan) or a GGUF LoRA (GGUF layout; V from GGUF
//! models as stored). Both give the same result: llama's Q/K row permutation
//! P is orthogonal, so P·C·Pᵀ·P·B = P·(C·B) and the cosines agree.

mod checkpoint;
pub mod input;
mod models;
mod module;
pub mod output;
pub mod weights;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use regex::Regex;
use serde::Serialize;

use crate::adapter::AdapterSource;
use crate::convert::{convert_made, ConvertOptions, ConvertReport};
use crate::error::{Error, Result};
pub use crate::projection::Selection;
use crate::projection::{selected, selection_threshold as threshold};
use input::Module;
use models::{gguf_input_models, gguf_places, open_models};
use module::{compute, Computed};
use weights::{Scratch, Weights};

/// What B is multiplied by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Projection {
    /// The paper's C = V·Vᵀ / ‖V‖_F (not an orthogonal projector: it also
    /// scales the update).
    Paper,
    /// Not the paper's: the orthogonal projector U_K·U_Kᵀ onto V's top-K
    /// left singular vectors.
    Exact(usize),
}

/// Options for [`safe_lora`].
#[derive(Debug, Clone)]
pub struct SafeLoraOptions {
    /// The unaligned base weights the adapter was trained on.
    pub base: PathBuf,
    /// The aligned weights, or a PEFT safety adapter (aligned = base + it).
    pub aligned: PathBuf,
    pub selection: Selection,
    pub projection: Projection,
    /// Only modules whose PEFT name matches are considered.
    pub modules: Option<Regex>,
    /// Seed of the randomized SVD behind `Projection::Exact` on dense V.
    pub seed: u64,
    /// For a `.gguf` output: the conversion's options (type, re-factoring).
    pub convert: ConvertOptions,
}

/// One module's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleResult {
    pub module: String,
    /// cos(C·B·A, B·A), unrounded.
    pub similarity: f64,
    pub projected: bool,
    /// ‖ΔW‖_F before, and as written.
    pub norm_before: f64,
    pub norm_after: f64,
    /// ‖V‖_F.
    pub alignment_norm: f64,
    /// With a quantized GGUF base and an unquantized aligned model: the
    /// quantization error of the aligned weight in the base's type, relative
    /// to ‖V‖_F (the size of the noise quantization puts into V).
    pub quantization_noise: Option<f64>,
}

/// What [`safe_lora`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SafeLoraReport {
    pub adapter: PathBuf,
    pub base: PathBuf,
    pub aligned: PathBuf,
    /// `threshold` or `top_n`.
    pub mode: String,
    /// The similarity at or below which modules were projected.
    pub threshold: f64,
    /// `paper` or `exact-K`.
    pub projection: String,
    pub modules: Vec<ModuleResult>,
    pub projected: usize,
    pub warnings: Vec<String>,
    pub output: PathBuf,
    /// Tensors of a GGUF output written in another type than `--outtype`
    /// asked for (rows not whole blocks of it), and why.
    pub fallbacks: Vec<crate::convert::Fallback>,
    #[serde(skip)]
    pub convert: Option<ConvertReport>,
}

/// One error for many modules: an internal failure as itself; bad inputs
/// grouped by what went wrong, e.g. "14 modules: … (e.g. model.layers.0…)".
fn grouped(mut problems: Vec<(String, Error)>) -> Error {
    if let Some(i) = problems.iter().position(|(_, e)| !e.is_bad_input()) {
        return problems.swap_remove(i).1;
    }
    if problems.len() == 1 {
        return problems.remove(0).1;
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (m, e) in &problems {
        let text = e.to_string().replace(m.as_str(), "{module}");
        groups.entry(text).or_default().push(m.clone());
    }
    let lines: Vec<String> = groups
        .into_iter()
        .map(|(text, ms)| match ms.len() {
            1 => text.replace("{module}", &ms[0]),
            n => format!(
                "{n} modules: {} (e.g. {})",
                text.replace("module {module}: ", "")
                    .replace("{module}", "…"),
                ms[0]
            ),
        })
        .collect();
    Error::Usage(lines.join("\n"))
}

/// Project `adapter` and write the result to `out`. A PEFT adapter becomes
/// a PEFT directory, or a GGUF LoRA when `out` ends in `.gguf` (through
/// `convert`, against the GGUF model among base and aligned); a GGUF LoRA
/// becomes a GGUF LoRA.
pub fn safe_lora(
    adapter_path: &Path,
    out: &Path,
    opts: &SafeLoraOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SafeLoraReport> {
    crate::linalg::init();
    let to_gguf = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !to_gguf {
        output::check_output_dir(out)?;
    }
    let input = input::open(adapter_path)?;
    let (base, aligned) = open_models(opts)?;
    let mut all = input::modules(&input)?;
    let gguf_model = match &input {
        AdapterSource::Peft(adapter) => {
            let (model, places) = gguf_places(adapter, &base, &aligned)?;
            for m in &mut all {
                m.place = places.get(&m.name).cloned();
            }
            model
        }
        AdapterSource::Gguf { file, .. } => {
            gguf_input_models(file, &base, &aligned)?;
            if !to_gguf {
                return Err(Error::Usage(format!(
                    "-o {}: a GGUF LoRA input is written back as a GGUF LoRA; name a .gguf output",
                    out.display()
                )));
            }
            Some(base.path().to_path_buf())
        }
        AdapterSource::Converted { .. } => {
            return Err(Error::Internal(
                "safe-lora opened a converted adapter".into(),
            ))
        }
    };
    if to_gguf && gguf_model.is_none() {
        return Err(Error::Usage(format!(
            "-o {}: a GGUF LoRA needs a GGUF model (as --base or --aligned) for its names and \
             layout; write a PEFT directory instead and convert it with `loraguard convert`",
            out.display()
        )));
    }
    let pairs: Vec<&Module> = all
        .iter()
        .filter(|m| opts.modules.as_ref().is_none_or(|r| r.is_match(&m.name)))
        .collect();
    if pairs.is_empty() {
        return Err(Error::Usage(format!(
            "no module of {} matches --modules",
            adapter_path.display()
        )));
    }
    for (w, role) in [(&base, "base"), (&aligned, "aligned")] {
        if role == "base" && matches!(aligned, Weights::Peft(_)) {
            continue; // V comes from the safety adapter alone
        }
        let missing: Vec<&str> = pairs
            .iter()
            .filter(|p| !w.has(&p.name, p.place.as_ref()))
            .map(|p| p.name.as_str())
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::Usage(format!(
                "{} of the adapter's {} modules are missing from the {role} {} {} (e.g. {first}); \
                 restrict the projection with --modules REGEX",
                missing.len(),
                pairs.len(),
                w.kind(),
                w.path().display()
            )));
        }
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    progress(0, pairs.len());
    let computed: Vec<Result<Computed>> = pairs
        .par_iter()
        .map_init(Scratch::default, |scratch, p| {
            let r = compute(&input, p, &base, &aligned, opts, scratch);
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            progress(n, pairs.len());
            r
        })
        .collect();
    // Every problem at once, grouped, as convert does.
    let mut problems: Vec<(String, Error)> = Vec::new();
    let mut ok = Vec::new();
    for (c, p) in computed.into_iter().zip(&pairs) {
        match c {
            Ok(c) => ok.push(c),
            Err(e) => problems.push((p.name.clone(), e)),
        }
    }
    if !problems.is_empty() {
        return Err(grouped(problems));
    }
    let sims: Vec<f64> = ok.iter().map(|c| c.result.similarity).collect();
    let tau = threshold(opts.selection, &sims)?;
    let mut replaced = HashMap::new();
    for c in &mut ok {
        c.result.projected = selected(c.result.similarity, tau);
        if c.result.projected {
            replaced.insert(c.b_name.clone(), std::mem::take(&mut c.projected_b));
        } else {
            c.result.norm_after = c.result.norm_before;
        }
    }
    let mut warnings = Vec::new();
    let noise: Vec<f64> = ok
        .iter()
        .filter_map(|c| c.result.quantization_noise)
        .collect();
    if let Some(max) = noise.iter().copied().reduce(f64::max) {
        warnings.push(format!(
            "the base is quantized and the aligned model is not: quantization noise enters V \
             (measured: up to {:.1}% of ‖V‖_F, {} modules); use base and aligned weights of the same type",
            100.0 * max,
            noise.len()
        ));
    }
    let projection = match opts.projection {
        Projection::Paper => "paper".to_string(),
        Projection::Exact(k) => format!("exact-{k}"),
    };
    let transform = format!("safe_lora({projection}, similarity <= {tau})");
    let mut convert_report = None;
    match &input {
        AdapterSource::Gguf { file, map, .. } => {
            for t in output::write_gguf_lora((file, map), &replaced, &transform, out)? {
                warnings.push(format!(
                    "written as F32 (loraguard does not encode its type): {t}"
                ));
            }
        }
        AdapterSource::Peft(adapter) => {
            let mut meta = BTreeMap::new();
            for (k, v) in crate::provenance::pairs() {
                meta.insert(k.into(), v);
            }
            meta.insert("loraguard.transform".into(), transform);
            let hash = crate::hash::SourceHash::default();
            meta.insert(hash.key(), adapter.source_hash(hash));
            match gguf_model.filter(|_| to_gguf) {
                Some(model) => {
                    // Converted from memory: no PEFT directory on disk in between.
                    let (config, bytes) = output::peft_files(adapter, &replaced, &meta)?;
                    let name = out.with_extension("");
                    convert_report = Some(convert_made(
                        &name,
                        &config,
                        bytes,
                        &model,
                        out,
                        &opts.convert,
                    )?);
                }
                None => output::write_peft_dir(adapter, &replaced, &meta, out)?,
            }
        }
        AdapterSource::Converted { .. } => {
            return Err(Error::Internal(
                "safe-lora opened a converted adapter".into(),
            ))
        }
    }
    let projected = ok.iter().filter(|c| c.result.projected).count();
    Ok(SafeLoraReport {
        adapter: adapter_path.to_path_buf(),
        base: opts.base.clone(),
        aligned: opts.aligned.clone(),
        mode: match opts.selection {
            Selection::Threshold(_) => "threshold",
            Selection::TopN(_) => "top_n",
        }
        .into(),
        threshold: tau,
        projection,
        modules: ok.into_iter().map(|c| c.result).collect(),
        projected,
        warnings,
        output: out.to_path_buf(),
        fallbacks: convert_report
            .as_ref()
            .map(|c| c.fallbacks.clone())
            .unwrap_or_default(),
        convert: convert_report,
    })
}
