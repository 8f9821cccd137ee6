//! What `fuse` reports, per module and in all.

use std::path::PathBuf;

use serde::Serialize;

use crate::convert::ConvertReport;

use super::Fused;

/// One fused module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleFuse {
    pub module: String,
    /// Inputs that have this module.
    pub sources: usize,
    pub rank: usize,
    /// ‖Σ wᵢ·ΔWᵢ‖_F, the exact weighted sum.
    pub exact_norm: f64,
    /// ‖ΔW_fused − Σ wᵢ·ΔWᵢ‖_F / ‖Σ wᵢ·ΔWᵢ‖_F (0 for cat; the truncation for
    /// svd; the cross terms for linear).
    pub relative_error: f64,
    /// selective: the module's similarity to the protected input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// selective: whether the protected input was fused into this module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected: Option<bool>,
}

impl ModuleFuse {
    pub(super) fn new(module: &str, sources: usize, f: &Fused) -> ModuleFuse {
        ModuleFuse {
            module: module.to_string(),
            sources,
            rank: f.a.nrows(),
            exact_norm: f.exact_norm,
            relative_error: f.relative_error,
            similarity: f.similarity,
            selected: f.selected,
        }
    }
}

/// What [`super::fuse`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FuseReport {
    pub method: String,
    /// Each input and its weights (`1`, `1.5@22-29`, ...).
    pub inputs: Vec<(PathBuf, String)>,
    pub modules: Vec<ModuleFuse>,
    pub output: PathBuf,
    /// Tensors of the GGUF output written in another type than
    /// `--outtype` asked for (rows not whole blocks of it), and why.
    pub fallbacks: Vec<crate::convert::Fallback>,
    #[serde(skip)]
    pub convert: Option<ConvertReport>,
}
