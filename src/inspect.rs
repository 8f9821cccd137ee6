//! `loraguard inspect`: what an adapter or model file holds, and whether an
//! adapter fits a base model.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::base::BaseModel;
use crate::convert::plan;
use crate::error::{Error, Result};
pub use crate::gguf::fit::{gguf_fit_to, Fit};
use crate::gguf::GgufFile;
use crate::peft::PeftAdapter;

/// One module (PEFT) or LoRA pair (GGUF).
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    pub name: String,
    pub rank: usize,
    pub alpha: f64,
    /// The scale applied to B·A: PEFT's, or llama.cpp's `alpha / rank`.
    pub scale: f64,
    pub shape_a: Vec<u64>,
    pub shape_b: Vec<u64>,
    pub dtype_a: String,
    pub dtype_b: String,
    pub bytes: u64,
}

/// Everything `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: String,
    /// `peft-lora`, `gguf-lora` or `gguf-model`.
    pub kind: String,
    pub architecture: Option<String>,
    pub alpha: Option<f64>,
    pub settings: BTreeMap<String, serde_json::Value>,
    pub modules: Vec<ModuleInfo>,
    /// Model files: tensor count per ggml type.
    pub tensor_types: BTreeMap<String, usize>,
    pub total_bytes: u64,
    pub notes: Vec<String>,
    pub fit: Option<Fit>,
    /// `inspect --apply-check`: whether llama.cpp's logits moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_check: Option<crate::check::applied::Applied>,
}

/// Inspect a PEFT directory or any GGUF file; with `base`, check the fit.
pub fn inspect(path: &Path, base: Option<&Path>) -> Result<Inspection> {
    if crate::peft::looks_like_peft(path) {
        inspect_peft(path, base)
    } else if path.is_dir() {
        Err(Error::Usage(format!(
            "{} is a directory without adapter_config.json: not a PEFT adapter",
            path.display()
        )))
    } else {
        inspect_gguf(path, base)
    }
}

fn inspect_peft(path: &Path, base: Option<&Path>) -> Result<Inspection> {
    let adapter = PeftAdapter::open(path)?;
    let c = &adapter.config;
    let mut settings = BTreeMap::new();
    settings.insert("r".into(), c.r.into());
    settings.insert("lora_alpha".into(), c.lora_alpha.into());
    settings.insert("use_rslora".into(), c.use_rslora.into());
    settings.insert("fan_in_fan_out".into(), c.fan_in_fan_out.into());
    let patterns = |ps: &[crate::peft::Pattern]| -> serde_json::Value {
        ps.iter()
            .map(|p| (p.key.clone(), p.value.into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    settings.insert("rank_pattern".into(), patterns(&c.rank_pattern));
    settings.insert("alpha_pattern".into(), patterns(&c.alpha_pattern));
    if let Some(b) = &c.base_model_name_or_path {
        settings.insert("base_model_name_or_path".into(), b.clone().into());
    }
    if let Some(t) = &c.alora_invocation_tokens {
        settings.insert("alora_invocation_tokens".into(), t.clone().into());
    }
    let modules: Vec<ModuleInfo> = adapter
        .pairs
        .iter()
        .map(|p| ModuleInfo {
            name: p.module.clone(),
            rank: p.rank(),
            alpha: p.scale.alpha,
            scale: p.scale.scale,
            shape_a: p.a.shape.iter().map(|x| *x as u64).collect(),
            shape_b: p.b.shape.iter().map(|x| *x as u64).collect(),
            dtype_a: p.a.dtype.name().into(),
            dtype_b: p.b.dtype.name().into(),
            bytes: ((p.a.shape[0] * p.a.shape[1] * p.a.dtype.size())
                + (p.b.shape[0] * p.b.shape[1] * p.b.dtype.size())) as u64,
        })
        .collect();
    let mut notes: Vec<String> = adapter
        .unsupported
        .iter()
        .map(|u| {
            format!(
                "{}: {} (needs --drop-unsupported to convert)",
                u.name, u.reason
            )
        })
        .collect();
    notes.extend(
        adapter
            .zero_biases
            .iter()
            .map(|b| format!("{b}: all-zero LoRA bias, skipped")),
    );
    if modules.iter().any(|m| m.name.ends_with("embed_tokens")) {
        notes.push("embedding LoRA present (lora_embedding_A/B)".into());
    }
    let fit = base.map(|b| -> Result<Fit> {
        let base = BaseModel::open(b)?;
        Ok(match plan(&adapter, &base, false) {
            Ok(_) => Fit {
                base: b.display().to_string(),
                fits: true,
                problems: vec![],
            },
            Err(Error::Mismatch { problems, .. }) => Fit {
                base: b.display().to_string(),
                fits: false,
                problems,
            },
            Err(e @ Error::Unsupported { .. }) => Fit {
                base: b.display().to_string(),
                fits: false,
                problems: vec![e.to_string()],
            },
            Err(e) => return Err(e),
        })
    });
    Ok(Inspection {
        path: path.display().to_string(),
        kind: "peft-lora".into(),
        architecture: None,
        alpha: Some(c.lora_alpha),
        settings,
        total_bytes: modules.iter().map(|m| m.bytes).sum(),
        modules,
        tensor_types: BTreeMap::new(),
        notes,
        fit: fit.transpose()?,
        apply_check: None,
    })
}

fn inspect_gguf(path: &Path, base: Option<&Path>) -> Result<Inspection> {
    let g = GgufFile::open(path)?;
    let mut tensor_types = BTreeMap::new();
    for t in &g.tensors {
        *tensor_types.entry(t.ty.name().to_string()).or_insert(0) += 1;
    }
    let total_bytes = g.tensors.iter().map(|t| t.size).sum();
    let mut settings = BTreeMap::new();
    for (k, v) in &g.metadata {
        if k.starts_with("loraguard.")
            || k.starts_with("adapter.")
            || k.starts_with("general.") && !k.starts_with("general.base_model")
        {
            settings.insert(k.clone(), v.to_json());
        }
    }
    if !g.is_adapter() {
        let arch = g.architecture().map(String::from);
        if let Some(a) = &arch {
            for k in [
                "block_count",
                "embedding_length",
                "attention.head_count",
                "attention.head_count_kv",
                "feed_forward_length",
                "context_length",
            ] {
                if let Some(v) = g.metadata.get(&format!("{a}.{k}")) {
                    settings.insert(k.into(), v.to_json());
                }
            }
        }
        return Ok(Inspection {
            path: path.display().to_string(),
            kind: "gguf-model".into(),
            architecture: arch,
            alpha: None,
            settings,
            modules: vec![],
            tensor_types,
            total_bytes,
            notes: vec![format!("{} tensors", g.tensors.len())],
            fit: None,
            apply_check: None,
        });
    }
    let alpha = g.get_f64("adapter.lora.alpha");
    let mut modules = Vec::new();
    let mut notes = Vec::new();
    let mut names: Vec<&str> = g
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_suffix(".lora_a"))
        .collect();
    names.sort();
    for base_name in &names {
        let a = g.tensor(&format!("{base_name}.lora_a"));
        let b = g.tensor(&format!("{base_name}.lora_b"));
        let (Some(a), Some(b)) = (a, b) else {
            notes.push(format!("{base_name}: lora_a without lora_b"));
            continue;
        };
        let rank = b.ne.first().copied().unwrap_or(0) as usize;
        let a_eff = alpha.filter(|x| *x != 0.0);
        modules.push(ModuleInfo {
            name: base_name.to_string(),
            rank,
            alpha: a_eff.unwrap_or(0.0),
            scale: crate::layout::gguf_scale(alpha, rank as u64).unwrap_or(f64::NAN),
            shape_a: a.ne.clone(),
            shape_b: b.ne.clone(),
            dtype_a: a.ty.name().into(),
            dtype_b: b.ty.name().into(),
            bytes: a.size + b.size,
        });
    }
    if alpha.is_none_or(|a| a == 0.0) {
        notes.push(
            "adapter.lora.alpha is missing or 0: llama.cpp applies the user scale only".into(),
        );
    }
    let fit = match base {
        None => None,
        Some(b) => Some(gguf_fit(&g, b)?),
    };
    Ok(Inspection {
        path: path.display().to_string(),
        kind: "gguf-lora".into(),
        architecture: g.architecture().map(String::from),
        alpha,
        settings,
        modules,
        tensor_types,
        total_bytes,
        notes,
        fit,
        apply_check: None,
    })
}

/// The checks llama.cpp's adapter loader makes, done up front with reasons.
pub fn gguf_fit(adapter: &GgufFile, base_path: &Path) -> Result<Fit> {
    Ok(gguf_fit_to(adapter, &GgufFile::open(base_path)?))
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({})", self.path, self.kind)?;
        if let Some(a) = &self.architecture {
            writeln!(f, "  architecture: {a}")?;
        }
        if let Some(a) = self.alpha {
            writeln!(f, "  alpha: {a}")?;
        }
        for (k, v) in &self.settings {
            writeln!(f, "  {k}: {v}")?;
        }
        for (k, v) in &self.tensor_types {
            writeln!(f, "  tensors of type {k}: {v}")?;
        }
        writeln!(
            f,
            "  total size: {:.2} MiB",
            self.total_bytes as f64 / (1 << 20) as f64
        )?;
        if !self.modules.is_empty() {
            writeln!(f, "  {} modules:", self.modules.len())?;
            writeln!(
                f,
                "    {:<48} {:>5} {:>8} {:>10}  {:<12} {:<12} {:<5}",
                "module", "rank", "alpha", "scale", "A", "B", "dtype"
            )?;
            for m in &self.modules {
                writeln!(
                    f,
                    "    {:<48} {:>5} {:>8} {:>10.5}  {:<12} {:<12} {}/{}",
                    m.name,
                    m.rank,
                    m.alpha,
                    m.scale,
                    format!("{:?}", m.shape_a),
                    format!("{:?}", m.shape_b),
                    m.dtype_a,
                    m.dtype_b
                )?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if let Some(fit) = &self.fit {
            if fit.fits {
                writeln!(f, "  fits {}: yes", fit.base)?;
            } else {
                writeln!(f, "  fits {}: NO", fit.base)?;
                for p in &fit.problems {
                    writeln!(f, "    - {p}")?;
                }
            }
        }
        if let Some(a) = &self.apply_check {
            write!(f, "  {}", a.to_string().replace('\n', "\n  ").trim_end())?;
            writeln!(f)?;
        }
        Ok(())
    }
}
