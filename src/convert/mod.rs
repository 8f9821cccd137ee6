//! `loraguard convert`: PEFT LoRA to GGUF LoRA, exactly.
//!
//! The ΔW llama.cpp applies (`scale = user_scale · alpha / rank`, rank read
//! from each `lora_b`) equals PEFT's (`lora_alpha / r`, or `/ √r` with
//! rsLoRA, with `rank_pattern` and `alpha_pattern` per module): per-module
//! differences are baked into `lora_b` (see [`plan::effective_b_factor`]).

mod encode;
mod plan;
pub mod refactor;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use encode::{encode_target, BufPool};
pub(crate) use plan::unsupported_error;
pub use plan::{effective_b_factor, plan, Plan, Target, TargetPart};
pub use refactor::ModuleStats;
pub use write::write_gguf;

use crate::base::BaseModel;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::hash::SourceHash;
use crate::linalg::truncate::Truncation;
use crate::matrix::SourceDtype;
use crate::peft::{PeftAdapter, UnsupportedTensor};

/// `--outtype`: one of [`crate::quant::WRITABLE`], or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// Every tensor in this type where its rows allow (see
    /// [`crate::quant::writable_type`] for the per-tensor fallback).
    Type(GgmlType),
    /// The highest-fidelity 16-bit type for the source dtype.
    Auto,
}

impl OutType {
    pub const F32: OutType = OutType::Type(GgmlType::F32);
    pub const F16: OutType = OutType::Type(GgmlType::F16);
    pub const BF16: OutType = OutType::Type(GgmlType::BF16);
    pub const Q8_0: OutType = OutType::Type(GgmlType::Q8_0);

    /// Parse `auto` or a writable type's name (`f32`, `f16`, `bf16`, `q8_0`,
    /// `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q2_k` … `q6_k`), in any case.
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("auto") {
            return Some(OutType::Auto);
        }
        GgmlType::from_name(s)
            .filter(|t| crate::quant::WRITABLE.contains(t))
            .map(OutType::Type)
    }

    /// The concrete type: `auto` is BF16 for BF16 sources and F16 for F16
    /// and F32 sources (F16 keeps 3 more mantissa bits than BF16; values
    /// beyond F16's range fall back to F32 per tensor). No sources (a
    /// computed adapter) count as F32.
    pub fn resolve(self, sources: &[SourceDtype]) -> GgmlType {
        match self {
            OutType::Type(t) => t,
            OutType::Auto
                if !sources.is_empty() && sources.iter().all(|d| *d == SourceDtype::BF16) =>
            {
                GgmlType::BF16
            }
            OutType::Auto => GgmlType::F16,
        }
    }
}

/// Options for [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub outtype: OutType,
    /// Leave out tensors the GGUF LoRA format cannot carry, and list them.
    pub drop_unsupported: bool,
    /// Validate and plan only; write nothing.
    pub dry_run: bool,
    /// Re-factor every target into balanced SVD form, truncated by rank
    /// and/or energy (`--max-rank`, `--energy`).
    pub truncation: Option<Truncation>,
    /// Measure each target's relative error as written (`--measure-error`).
    pub measure_error: bool,
    /// The digest of the source recorded as provenance (`--source-hash`).
    pub source_hash: SourceHash,
}

impl ConvertOptions {
    /// A plain conversion to `outtype`: nothing dropped, re-factored or measured.
    pub fn new(outtype: OutType) -> Self {
        ConvertOptions {
            outtype,
            drop_unsupported: false,
            dry_run: false,
            truncation: None,
            measure_error: false,
            source_hash: SourceHash::default(),
        }
    }
}

/// A tensor written in another type than requested, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fallback {
    pub tensor: String,
    pub requested: GgmlType,
    pub written: GgmlType,
    pub reason: String,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub adapter: PathBuf,
    pub base: PathBuf,
    pub output: Option<PathBuf>,
    pub architecture: String,
    pub alpha: f32,
    pub outtype: GgmlType,
    /// Number of GGUF LoRA pairs.
    pub targets: usize,
    /// Pairs whose PEFT scale was baked into `lora_b`.
    pub baked: usize,
    pub dropped: Vec<UnsupportedTensor>,
    pub fallbacks: Vec<Fallback>,
    pub transforms: Vec<String>,
    /// The algorithm of [`ConvertReport::source_hash`].
    pub source_hash_algorithm: SourceHash,
    /// The source safetensors file's digest, as recorded in the output
    /// (under [`SourceHash::key`]); none in a dry run.
    pub source_hash: Option<String>,
    pub bytes_written: u64,
    /// The re-factoring applied, if any.
    pub truncation: Option<Truncation>,
    /// Per-target ranks and errors (with re-factoring or `--measure-error`).
    pub modules: Vec<ModuleStats>,
}

/// The JSON report (`convert --json`): the fields as named here, except
/// `outtype` (its name), `dropped` (`tensor`, `reason`), `refactor` (the
/// truncation) and `dry_run` (no output written).
impl serde::Serialize for ConvertReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let json = serde_json::json!({
            "adapter": self.adapter,
            "base": self.base,
            "output": self.output,
            "architecture": self.architecture,
            "alpha": self.alpha,
            "outtype": self.outtype.name(),
            "targets": self.targets,
            "baked": self.baked,
            "transforms": self.transforms,
            "dropped": self.dropped.iter().map(|d| serde_json::json!({"tensor": d.name, "reason": d.reason})).collect::<Vec<_>>(),
            "fallbacks": self.fallbacks,
            "source_hash_algorithm": self.source_hash_algorithm,
            "source_hash": self.source_hash,
            "bytes_written": self.bytes_written,
            "dry_run": self.output.is_none(),
            "refactor": self.truncation.map(|t| serde_json::json!({"max_rank": t.max_rank, "energy": t.energy})),
            "modules": self.modules.iter().map(|m| serde_json::json!({
                "tensor": m.tensor,
                "source_rank": m.source_rank,
                "rank": m.rank,
                "truncation_error": m.truncation_error,
                "written_error": m.written_error,
            })).collect::<Vec<_>>(),
        });
        json.serialize(s)
    }
}

/// Convert the PEFT adapter at `adapter_path` for the base model at
/// `base_path`, writing a GGUF LoRA to `out` (atomically) unless dry-run.
/// `progress` is called with (done, total) targets.
pub fn convert(
    adapter_path: &Path,
    base_path: &Path,
    out: Option<&Path>,
    opts: &ConvertOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ConvertReport> {
    let adapter = PeftAdapter::open(adapter_path)?;
    convert_adapter(&adapter, base_path, out, opts, progress)
}

/// Convert a PEFT adapter made in this process (`adapter_config.json`'s
/// text and the safetensors bytes) to a GGUF LoRA at `out`, with no PEFT
/// directory on disk in between (what `fuse` and `safe-lora` write). `name`
/// names it in errors and as the file's `general.name`. Never a dry run.
pub fn convert_made(
    name: &Path,
    config_json: &[u8],
    safetensors: Vec<u8>,
    base_path: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    let config = std::str::from_utf8(config_json)
        .map_err(|_| Error::malformed(name, "adapter_config.json", "not UTF-8"))?;
    let adapter = PeftAdapter::from_bytes(name, config, safetensors)?;
    let opts = ConvertOptions {
        dry_run: false,
        ..opts.clone()
    };
    convert_adapter(&adapter, base_path, Some(out), &opts, &|_, _| {})
}

/// [`convert`] of an adapter already open (from a directory, or made in
/// memory with [`PeftAdapter::from_bytes`]).
pub fn convert_adapter(
    adapter: &PeftAdapter,
    base_path: &Path,
    out: Option<&Path>,
    opts: &ConvertOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ConvertReport> {
    let base = BaseModel::open(base_path)?;
    let plan = plan(adapter, &base, opts.drop_unsupported)?;
    let outtype = opts.outtype.resolve(&adapter.dtypes());
    // `auto` promises F32 where values do not fit F16 (checked before the
    // header is written; re-factored values are checked as they are made).
    let auto_f32 = opts.outtype == OutType::Auto && opts.truncation.is_none();
    let mut transforms = transforms(&plan);
    if opts.truncation.is_some() {
        transforms.push("balanced_svd_refactor".to_string());
    }
    let mut report = ConvertReport {
        adapter: adapter.dir.clone(),
        base: base_path.to_path_buf(),
        output: None,
        architecture: base.arch.name.to_string(),
        alpha: plan.alpha,
        outtype,
        targets: plan.targets.len(),
        baked: plan.baked,
        dropped: plan.dropped.clone(),
        fallbacks: Vec::new(),
        transforms,
        source_hash_algorithm: opts.source_hash,
        source_hash: None,
        bytes_written: 0,
        truncation: opts.truncation,
        modules: Vec::new(),
    };
    let out = match (opts.dry_run, out) {
        (true, _) => None,
        (false, Some(o)) => Some(o),
        (false, None) => {
            return Err(Error::Usage(
                "an output path is required unless --dry-run".into(),
            ))
        }
    };
    if opts.dry_run || opts.truncation.is_some() {
        adapter.check_finite()?;
    }
    if opts.truncation.is_some() || opts.measure_error {
        crate::linalg::init();
    }
    let truncated = match &opts.truncation {
        Some(t) => Some(refactor::plan_ranks(adapter, &plan, t)?),
        None => None,
    };
    let ranks: Vec<usize> = match &truncated {
        Some(v) => v.iter().map(|(k, _)| *k).collect(),
        None => plan.targets.iter().map(|t| t.rank).collect(),
    };
    let stats = |written: Vec<Option<f64>>| -> Vec<ModuleStats> {
        plan.targets
            .iter()
            .enumerate()
            .map(|(i, t)| ModuleStats {
                tensor: t.tensor.clone(),
                source_rank: t.rank,
                rank: ranks[i],
                truncation_error: truncated.as_ref().map(|v| v[i].1),
                written_error: written[i],
            })
            .collect()
    };
    let Some(out) = out else {
        report.fallbacks =
            write::planned_fallbacks(&plan, &ranks, outtype, auto_f32.then_some(adapter));
        if truncated.is_some() {
            report.modules = stats(vec![None; plan.targets.len()]);
        }
        return Ok(report);
    };
    let written = Mutex::new(vec![None; plan.targets.len()]);
    let encoder = |i: usize, t: &Target, types: (GgmlType, GgmlType), pool: &encode::BufPool| {
        let delta = if opts.truncation.is_some() || opts.measure_error {
            Some(refactor::target_lowrank(adapter, t, plan.alpha)?)
        } else {
            None
        };
        let pair = match &delta {
            Some(d) if opts.truncation.is_some() => refactor::encode_refactored(
                d,
                t,
                plan.alpha,
                ranks[i],
                types,
                pool,
                &adapter.weights_path,
            )?,
            _ => encode_target(adapter, t, types.0, types.1, pool)?,
        };
        if let (Some(d), true) = (&delta, opts.measure_error) {
            let e = refactor::written_error(d, t, ranks[i], plan.alpha, (&pair.0, &pair.1), types)?;
            if let Ok(mut w) = written.lock() {
                w[i] = Some(e);
            }
        }
        Ok(pair)
    };
    write_gguf(
        adapter,
        &base,
        &plan,
        &ranks,
        &encoder,
        out,
        progress,
        &mut report,
        auto_f32,
    )?;
    if truncated.is_some() || opts.measure_error {
        let written = written
            .into_inner()
            .map_err(|_| Error::Internal("error measurement poisoned".into()))?;
        report.modules = stats(written);
    }
    report.output = Some(out.to_path_buf());
    Ok(report)
}

/// The transforms applied, recorded in `loraguard.transforms`.
fn transforms(plan: &Plan) -> Vec<String> {
    let mut t = Vec::new();
    let any = |f: &dyn Fn(&TargetPart) -> bool| plan.targets.iter().any(|x| x.parts.iter().any(f));
    if any(&|p| p.permute_heads.is_some()) {
        t.push("llama_qk_row_permutation_on_lora_b".to_string());
    }
    if plan.baked > 0 {
        t.push("peft_scale_baked_into_lora_b".to_string());
    }
    if plan
        .targets
        .iter()
        .any(|x| x.parts.len() > 1 || x.parts.iter().any(|p| p.row_offset > 0))
    {
        t.push("fused_block_diagonal_concatenated_rank".to_string());
    }
    if plan
        .targets
        .iter()
        .any(|x| x.kind == crate::peft::PairKind::Embedding)
    {
        t.push("token_embd_lora_a_transposed".to_string());
    }
    t
}
