//! `loraguard fuse`: several LoRA adapters into one, from the files.
//!
//! - `cat`: the exact weighted sum Σ wᵢ·sᵢ·Bᵢ·Aᵢ as one adapter of rank
//!   Σ rᵢ (PEFT's `cat`: A′ = [w₁s₁A₁; w₂s₂A₂], B′ = [B₁ | B₂], scaling 1),
//!   the seed paper's fusion;
//! - `svd`: that exact sum truncated to rank K through the low-rank SVD
//!   (thin QRs and an r×r core; ΔW is never formed), with the truncation
//!   error per module, and without PEFT's double scaling;
//! - `linear`: PEFT's per-factor combination, A′ = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ and
//!   B′ = Σ √|wᵢsᵢ|·Bᵢ (equal ranks). Its product has cross terms Bᵢ·Aⱼ, so it
//!   is not the weighted sum; the report gives that error per module.
//!
//! - `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: PEFT's
//!   per-factor merges (see [`Merge`]);
//! - `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`:
//!   PEFT's dense merges. Pruning is entry-wise on each input's update
//!   sᵢ·Bᵢ·Aᵢ, which is full-rank once pruned, so these form each module's
//!   ΔWᵢ (one module at a time), merge them with [`Merge`] and truncate the
//!   result to rank K by SVD (exact up to 2048 rows or columns, randomized
//!   above). Unlike PEFT, the scaling is applied once.
//!
//! A module present in only some adapters counts as a zero update in the
//! others. Inputs are PEFT adapters for the same base, written as a PEFT
//! directory (or converted to GGUF); with any GGUF LoRA among them, all are
//! taken in GGUF layout and the result is written as GGUF directly.

mod gguf;
mod methods;
mod options;
mod prune;
mod report;
pub mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;
use rayon::prelude::*;

use crate::adapter::refuse_alora;
use crate::convert::convert_made;
use crate::error::{Error, Result};
use crate::peft::write::F32Tensor;
use crate::peft::{PeftAdapter, CONFIG_NAME, SAFETENSORS_NAME};
use crate::projection::selection_threshold;
pub use crate::projection::Selection;
pub use methods::{fuse_module, selective_similarity, Fused, MergeParams, Side, Term};
pub use options::{FuseInput, FuseOptions, Method, DEFAULT_THRESHOLD, METHODS};
pub use prune::Merge;
pub use report::{FuseReport, ModuleFuse};
pub use weights::Weights;

/// selective: the similarity threshold of `selection`; for `--top-n`, from
/// a first pass over every module's factors (`load`).
pub(crate) fn selective_threshold(
    opts: &FuseOptions,
    protect: usize,
    names: &[&String],
    load: &(dyn Fn(&str) -> Result<Vec<Term>> + Sync),
) -> Result<f64> {
    if opts.method != Method::Selective {
        return Ok(f64::NEG_INFINITY);
    }
    let sims = match opts.selection {
        Selection::Threshold(t) if !t.is_finite() => {
            return Err(Error::Usage(format!("--threshold {t}: expected a number")))
        }
        Selection::Threshold(_) => Vec::new(),
        Selection::TopN(_) => names
            .par_iter()
            .map(|m| Ok(selective_similarity(&load(m)?, protect)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect(),
    };
    selection_threshold(opts.selection, &sims)
}

/// A module as the inputs hold it.
struct Source<'a> {
    a_name: String,
    b_name: String,
    /// (adapter, pair, weight, input index)
    terms: Vec<(&'a PeftAdapter, &'a crate::peft::LoraPair, f64, usize)>,
}

/// The PEFT config of the fused adapter: scaling 1 everywhere (alpha = rank
/// per module), the commonest rank as `r`, the others in the patterns.
fn config(first: &PeftAdapter, ranks: &BTreeMap<String, usize>, method: Method) -> Vec<u8> {
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for r in ranks.values() {
        *count.entry(*r).or_default() += 1;
    }
    let r0 = count
        .iter()
        .max_by_key(|(r, n)| (**n, std::cmp::Reverse(**r)))
        .map_or(1, |(r, _)| *r);
    let others: serde_json::Map<String, serde_json::Value> = ranks
        .iter()
        .filter(|(_, r)| **r != r0)
        .map(|(m, r)| (m.clone(), serde_json::json!(r)))
        .collect();
    let mut targets: Vec<String> = ranks
        .keys()
        .map(|m| m.rsplit('.').next().unwrap_or(m).to_string())
        .collect();
    targets.sort();
    targets.dedup();
    let cfg = serde_json::json!({
        "peft_type": "LORA",
        "r": r0,
        "lora_alpha": r0,
        "rank_pattern": others,
        "alpha_pattern": others,
        "use_rslora": false,
        "use_dora": false,
        "fan_in_fan_out": false,
        "bias": "none",
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "target_modules": targets,
        "base_model_name_or_path": first.config.base_model_name_or_path,
        "inference_mode": true,
        "init_lora_weights": true,
        "loraguard_fuse": method.name(),
    });
    let mut s = serde_json::to_string_pretty(&cfg).expect("JSON values serialize");
    s.push('\n');
    s.into_bytes()
}

/// Fuse `inputs` and write the result to `out`: a PEFT directory, or a GGUF
/// LoRA when `out` ends in `.gguf` (through `convert`, against `opts.base`).
pub fn fuse(
    inputs: &[FuseInput],
    out: &Path,
    opts: &FuseOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<FuseReport> {
    crate::linalg::init();
    if inputs.len() < 2 {
        return Err(Error::Usage("fuse takes at least two adapters".into()));
    }
    let protect = opts.protect.unwrap_or(inputs.len() - 1);
    if protect >= inputs.len() {
        return Err(Error::Usage(format!(
            "--protect {}: there are {} adapters",
            protect + 1,
            inputs.len()
        )));
    }
    let to_gguf = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let gguf_base = match (to_gguf, &opts.base) {
        (true, None) => {
            return Err(Error::Usage(format!(
                "-o {}: a GGUF output needs --base BASE.gguf for its names and layout",
                out.display()
            )))
        }
        (true, Some(b)) => Some(b.clone()),
        (false, _) => {
            crate::atomic::check_output_dir(out)?;
            None
        }
    };
    let density = match (opts.method.prunes(), opts.density) {
        (true, None) => {
            return Err(Error::Usage(format!(
                "{} needs --density D (the fraction of entries kept, in (0, 1])",
                opts.method.name()
            )))
        }
        (_, Some(d)) if !(d > 0.0 && d <= 1.0) => {
            return Err(Error::Usage(format!(
                "--density {d}: expected a fraction in (0, 1]"
            )))
        }
        (_, d) => d.unwrap_or(1.0),
    };
    let params = MergeParams {
        rank: opts.rank.unwrap_or(0),
        density,
        seed: opts.seed,
        protect,
        side: opts.side,
        threshold: f64::NEG_INFINITY,
    };
    if opts.method == Method::Selective && inputs.len() != 2 {
        return Err(Error::Usage(format!(
            "selective fuses two adapters (a task and the --protect safety adapter), not {}",
            inputs.len()
        )));
    }
    if inputs
        .iter()
        .any(|i| !crate::peft::looks_like_peft(&i.path))
    {
        return gguf::fuse_gguf(inputs, out, opts, &params, progress);
    }
    let adapters: Vec<PeftAdapter> = inputs
        .iter()
        .map(|i| {
            let a = PeftAdapter::open(&i.path)?;
            a.check_finite()?;
            refuse_alora(a.config.alora_invocation_tokens.is_some(), &i.path, "fuse")?;
            if !a.unsupported.is_empty() {
                return Err(Error::Unsupported {
                    path: a.dir.clone(),
                    feature: format!(
                        "tensors outside LoRA pairs ({}) cannot be fused",
                        a.unsupported[0].name
                    ),
                    hint: None,
                });
            }
            Ok(a)
        })
        .collect::<Result<_>>()?;
    // Modules across inputs, with consistent shapes.
    let mut modules: BTreeMap<String, Source> = BTreeMap::new();
    for (n, (a, inp)) in adapters.iter().zip(inputs).enumerate() {
        for p in &a.pairs {
            let s = modules.entry(p.module.clone()).or_insert_with(|| Source {
                a_name: p.a.name.clone(),
                b_name: p.b.name.clone(),
                terms: Vec::new(),
            });
            if let Some((_, q, _, _)) = s.terms.first() {
                if q.kind != p.kind || q.d_in() != p.d_in() || q.d_out() != p.d_out() {
                    return Err(Error::Shape {
                        path: a.dir.clone(),
                        tensor: p.module.clone(),
                        reason: format!(
                            "is {}×{} here and {}×{} in another input: not the same base",
                            p.d_out(),
                            p.d_in(),
                            q.d_out(),
                            q.d_in()
                        ),
                    });
                }
            }
            s.terms.push((a, p, inp.weights.for_module(&p.module), n));
        }
    }
    // A module every input weights 0 is a zero update: leave it out.
    modules.retain(|_, s| s.terms.iter().any(|t| t.2 != 0.0));
    if modules.is_empty() {
        return Err(Error::Usage(
            "every module has weight 0 in every input: nothing to fuse".into(),
        ));
    }
    let max_rank = adapters
        .iter()
        .flat_map(|a| a.pairs.iter().map(|p| p.rank()))
        .max()
        .unwrap_or(1);
    let k = opts.rank.unwrap_or(max_rank);
    if k == 0 {
        return Err(Error::Usage("--rank must be at least 1".into()));
    }
    let params = MergeParams { rank: k, ..params };
    if opts.method.per_factor() {
        for (m, s) in &modules {
            let ranks: Vec<usize> = s.terms.iter().map(|(_, p, _, _)| p.rank()).collect();
            if ranks.iter().any(|r| *r != ranks[0]) {
                return Err(Error::Usage(format!(
                    "{} needs equal ranks, and {m} has ranks {ranks:?} (use cat or svd)",
                    opts.method.name()
                )));
            }
        }
    }
    let names: Vec<&String> = modules.keys().collect();
    let load = |m: &str| -> Result<Vec<Term>> {
        modules[m]
            .terms
            .iter()
            .map(|(a, p, w, n)| {
                Ok(Term {
                    b: a.matrix(&p.b)?.to_f64(),
                    a: a.matrix(&p.a)?.to_f64(),
                    scale: p.scale.scale,
                    weight: *w,
                    input: *n,
                })
            })
            .collect()
    };
    let params = MergeParams {
        threshold: selective_threshold(opts, protect, &names, &load)?,
        ..params
    };
    let done = std::sync::atomic::AtomicUsize::new(0);
    progress(0, names.len());
    // Each module leaves the parallel map as its F32 tensors and figures: the
    // f64 factors of all modules at once would be twice the output's size.
    let fused: Vec<(F32Tensor, F32Tensor, ModuleFuse)> = names
        .par_iter()
        .map(|m| {
            let terms = load(m)?;
            let f = fuse_module(&terms, opts.method, m, &params)?;
            let stats = ModuleFuse::new(m, terms.len(), &f);
            drop(terms);
            progress(
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                names.len(),
            );
            let to32 = |x: &Array2<f64>| F32Tensor::from_array(&x.mapv(|v| v as f32));
            Ok((to32(&f.a), to32(&f.b), stats))
        })
        .collect::<Result<_>>()?;

    let mut tensors: Vec<(String, F32Tensor)> = Vec::new();
    let mut ranks = BTreeMap::new();
    let mut report = Vec::new();
    for (m, (a, b, stats)) in names.iter().zip(fused) {
        let s = &modules[*m];
        tensors.push((s.a_name.clone(), a));
        tensors.push((s.b_name.clone(), b));
        ranks.insert((*m).clone(), stats.rank);
        report.push(stats);
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    for (k, v) in crate::provenance::pairs() {
        meta.insert(k.to_string(), v);
    }
    meta.insert(
        "loraguard.fuse".to_string(),
        format!(
            "{}({})",
            opts.method.name(),
            inputs
                .iter()
                .map(FuseInput::spec)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let bytes =
        crate::peft::write::serialize_sorted(tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta)
            .map_err(|e| Error::Internal(format!("serializing safetensors: {e}")))?;
    let cfg = config(&adapters[0], &ranks, opts.method);
    let mut convert_report = None;
    match gguf_base {
        Some(base) => {
            // Converted from memory: no PEFT directory on disk in between.
            convert_report = Some(convert_made(
                &out.with_extension(""),
                &cfg,
                bytes,
                &base,
                out,
                &opts.convert,
            )?);
        }
        None => crate::atomic::write_dir_atomic(
            out,
            &[(CONFIG_NAME, &cfg), (SAFETENSORS_NAME, &bytes)],
        )?,
    }
    Ok(FuseReport {
        method: opts.method.name().into(),
        inputs: inputs
            .iter()
            .map(|i| (i.path.clone(), i.weights.to_string()))
            .collect(),
        modules: report,
        output: out.to_path_buf(),
        fallbacks: convert_report
            .as_ref()
            .map(|c| c.fallbacks.clone())
            .unwrap_or_default(),
        convert: convert_report,
    })
}
