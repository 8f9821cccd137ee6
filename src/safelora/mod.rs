//! `loraguard safe-lora`: Safe LoRA (Hsu et al., 2024) in streaming,
//! low-rank form.
//!
//! Per target module, V = W_aligned − W_base and the paper's
//! C = V·Vᵀ / ‖V‖_F; a module whose similarity cos(C·B·A, B·A) (rounded to 5
//! decimals, as the authors' code does) is at most the threshold gets
//! B′ = C·B, A unchanged. `--top-n N` sets the threshold to the N-th smallest
//! similarity, as the reference's `number` mode does (ties may project
//! more). C is never formed (see [`project`]); modules are processed one per
//! worker, each holding one dense V in a reusable buffer.
//!
//! The adapter is a PEFT directory (HF layout; V from GGUF models is brought
//! to it through convert's plan) or a GGUF LoRA (GGUF layout; V from GGUF
//! models as stored). Both give the same result: llama's Q/K row permutation
//! P is orthogonal, so P·C·Pᵀ·P·B = P·(C·B) and the cosines agree.

pub mod input;
pub mod output;
pub mod project;
pub mod weights;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use regex::Regex;
use serde::Serialize;

use crate::base::BaseModel;
use crate::convert::{convert, ConvertOptions, ConvertReport};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::peft::{PairKind, PeftAdapter};
use input::{GgufLora, Input, Module};
use project::{selected, selection_threshold as threshold, similarity, Alignment};
use weights::{GgufPlace, Op, Scratch, Weights};

/// Which modules are projected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// Those with similarity ≤ T (the reference's `threshold` mode; T = 0.5).
    Threshold(f64),
    /// The N least similar (the reference's `number` mode; N = 10).
    TopN(usize),
}

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

/// One module's computed projection, before selection.
struct Computed {
    result: ModuleResult,
    projected_b: Array2<f32>,
    b_name: String,
}

fn open_models(opts: &SafeLoraOptions) -> Result<(Weights, Weights)> {
    let base = Weights::open(&opts.base)?;
    if matches!(base, Weights::Peft(_)) {
        return Err(Error::Usage(format!(
            "--base {} is a PEFT adapter; the base must be model weights (GGUF or safetensors)",
            opts.base.display()
        )));
    }
    let aligned = Weights::open(&opts.aligned)?;
    Ok((base, aligned))
}

/// Where each adapter module lies in the GGUF model among base and aligned,
/// through convert's plan (names, fused row blocks, Q/K permutation).
fn gguf_places(
    adapter: &PeftAdapter,
    base: &Weights,
    aligned: &Weights,
) -> Result<(Option<PathBuf>, HashMap<String, GgufPlace>)> {
    let ggufs: Vec<&Weights> = [base, aligned]
        .into_iter()
        .filter(|w| matches!(w, Weights::Gguf { .. }))
        .collect();
    let Some(first) = ggufs.first() else {
        return Ok((None, HashMap::new()));
    };
    let model = BaseModel::open(first.path())?;
    if let [Weights::Gguf { file: a, .. }, Weights::Gguf { file: b, .. }] = ggufs.as_slice() {
        if a.architecture() != b.architecture() {
            return Err(Error::Usage(format!(
                "base {} is {:?} but aligned {} is {:?}",
                a.path.display(),
                a.architecture(),
                b.path.display(),
                b.architecture()
            )));
        }
    }
    let plan = crate::convert::plan(adapter, &model, true)?;
    let mut places = HashMap::new();
    for t in &plan.targets {
        for p in &t.parts {
            let pair = &adapter.pairs[p.pair];
            places.insert(
                pair.module.clone(),
                GgufPlace {
                    tensor: t.tensor.clone(),
                    row_offset: p.row_offset,
                    rows: pair.d_out(),
                    permute_heads: p.permute_heads,
                },
            );
        }
    }
    Ok((Some(first.path().to_path_buf()), places))
}

/// ‖W − deq(quant_ty(W))‖_F for the row-major weight `data` (rows of `cols`).
fn quantization_error(data: &[f32], cols: usize, ty: GgmlType) -> Result<f64> {
    let q = loraguard_llama::ggml::quantize(ty.id(), data, cols)?;
    let back = loraguard_llama::ggml::dequantize(ty.id(), &q, data.len())?;
    let err: f64 = data
        .iter()
        .zip(&back)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    Ok(err.sqrt())
}

/// Compute one module: V, the projected B, the similarity.
fn compute(
    input: &Input,
    module: &Module,
    base: &Weights,
    aligned: &Weights,
    opts: &SafeLoraOptions,
    scratch: &mut Scratch,
) -> Result<Computed> {
    let m = &module.name;
    let place = module.place.as_ref();
    let (d_out, d_in) = (module.d_out, module.d_in);
    let missing = |w: &Weights| {
        Error::Usage(format!(
            "module {m} is missing from the {} {}",
            w.kind(),
            w.path().display()
        ))
    };
    let shape_err = |w: &Weights, got: (usize, usize)| Error::Shape {
        path: w.path().to_path_buf(),
        tensor: m.clone(),
        reason: format!(
            "is {}×{}, the adapter's update is {d_out}×{d_in}",
            got.0, got.1
        ),
    };
    let mut noise = None;
    let lr;
    let v = match aligned {
        Weights::Peft(_) => {
            lr = aligned.low_rank(m)?.ok_or_else(|| missing(aligned))?;
            Alignment::LowRank(lr)
        }
        _ => {
            let got = aligned
                .apply_into(m, module.kind, place, scratch, Op::Set)?
                .ok_or_else(|| missing(aligned))?;
            if got != (d_out, d_in) {
                return Err(shape_err(aligned, got));
            }
            let quantized = base.gguf_type(place).filter(|t| !t.is_float());
            let aligned_float = aligned.gguf_type(place).is_none_or(|t| t.is_float());
            if let (Some(ty), true, PairKind::Linear) = (quantized, aligned_float, module.kind) {
                noise = Some(quantization_error(scratch.v(), d_in, ty)?);
            }
            // A base of another shape leaves V untouched and is refused here.
            let got = base
                .apply_into(m, module.kind, place, scratch, Op::Subtract)?
                .ok_or_else(|| missing(base))?;
            if got != (d_out, d_in) {
                return Err(shape_err(base, got));
            }
            Alignment::Dense(
                ArrayView2::from_shape((d_out, d_in), scratch.v()).expect("shape checked"),
            )
        }
    };
    if v.shape() != (d_out, d_in) {
        return Err(shape_err(aligned, v.shape()));
    }
    let norm = v.norm();
    if !norm.is_finite() {
        return Err(Error::Usage(format!(
            "module {m}: the aligned or base weights hold NaN or Inf"
        )));
    }
    if norm == 0.0 {
        return Err(Error::Usage(format!(
            "module {m}: the aligned and base weights are identical (V = 0), so there is no \
             alignment direction to project onto"
        )));
    }
    let (b, a) = input.factors(module)?;
    if b.iter().chain(a.iter()).any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            path: input.path(),
            tensor: module.b_tensor.clone(),
            count: b.iter().chain(a.iter()).filter(|x| !x.is_finite()).count(),
        });
    }
    let p = match opts.projection {
        Projection::Paper => v.paper_projection(&b, norm),
        Projection::Exact(k) => {
            let u = v.top_left(k, opts.seed)?;
            u.dot(&u.t().dot(&b))
        }
    };
    let (cos, np, nb) = similarity(&p, &b, a.view());
    let s = module.scale.abs();
    Ok(Computed {
        result: ModuleResult {
            module: m.clone(),
            similarity: cos,
            projected: false,
            norm_before: s * nb,
            norm_after: s * np,
            alignment_norm: norm,
            quantization_noise: noise.map(|e| e / norm),
        },
        projected_b: p.mapv(|x| x as f32),
        b_name: module.b_tensor.clone(),
    })
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

/// A GGUF LoRA is in GGUF layout: V must come from GGUF models of the
/// adapter's architecture.
fn gguf_input_models(lora: &GgufLora, base: &Weights, aligned: &Weights) -> Result<()> {
    let arch = lora.file.architecture();
    for (w, role) in [(base, "--base"), (aligned, "--aligned")] {
        let Weights::Gguf { file, .. } = w else {
            return Err(Error::Usage(format!(
                "{role} {}: a GGUF LoRA is in GGUF layout, so base and aligned must be GGUF \
                 models too (or project the PEFT adapter, which takes any weights)",
                w.path().display()
            )));
        };
        if file.architecture() != arch {
            return Err(Error::Usage(format!(
                "{role} {} is {:?}, the adapter {} is for {:?}",
                file.path.display(),
                file.architecture(),
                lora.file.path.display(),
                arch
            )));
        }
    }
    Ok(())
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
    let input = Input::open(adapter_path)?;
    let (base, aligned) = open_models(opts)?;
    let mut all = input.modules()?;
    let gguf_model = match &input {
        Input::Peft(adapter) => {
            let (model, places) = gguf_places(adapter, &base, &aligned)?;
            for m in &mut all {
                m.place = places.get(&m.name).cloned();
            }
            model
        }
        Input::Gguf(lora) => {
            gguf_input_models(lora, &base, &aligned)?;
            if !to_gguf {
                return Err(Error::Usage(format!(
                    "-o {}: a GGUF LoRA input is written back as a GGUF LoRA; name a .gguf output",
                    out.display()
                )));
            }
            Some(base.path().to_path_buf())
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
        Input::Gguf(lora) => {
            for t in output::write_gguf_lora(lora, &replaced, &transform, out)? {
                warnings.push(format!(
                    "written as F32 (loraguard does not encode its type): {t}"
                ));
            }
        }
        Input::Peft(adapter) => {
            let mut meta = BTreeMap::new();
            for (k, v) in crate::provenance::pairs() {
                meta.insert(k.into(), v);
            }
            meta.insert("loraguard.transform".into(), transform);
            meta.insert("loraguard.source.sha256".into(), adapter.sha256());
            match gguf_model.filter(|_| to_gguf) {
                Some(model) => {
                    let tmp = crate::atomic::scratch_dir(out)?;
                    let dir = tmp.path().join("safe-lora");
                    output::write_peft_dir(adapter, &replaced, &meta, &dir)?;
                    let copts = ConvertOptions {
                        dry_run: false,
                        ..opts.convert.clone()
                    };
                    convert_report = Some(convert(&dir, &model, Some(out), &copts, &|_, _| {})?);
                }
                None => output::write_peft_dir(adapter, &replaced, &meta, out)?,
            }
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
