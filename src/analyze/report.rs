//! What `analyze` reports, and its table.

use std::fmt;

use serde::Serialize;

/// Singular values of ΔW and what follows from them.
#[derive(Debug, Clone, Serialize)]
pub struct Spectrum {
    /// Descending.
    pub singular_values: Vec<f64>,
    /// ‖ΔW‖_F.
    pub frobenius: f64,
    /// ‖ΔW‖_F² / σ₁².
    pub stable_rank: f64,
    /// Energy captured by the top-i singular values, i = 1..r.
    pub energy: Vec<f64>,
    /// Fewest singular values holding 90% / 99% of the energy.
    pub effective_rank_90: usize,
    pub effective_rank_99: usize,
}

/// ΔW against the base weight W's top-k singular subspaces.
#[derive(Debug, Clone, Serialize)]
pub struct BaseMeasures {
    pub k: usize,
    /// Cosines of the principal angles between ΔW's column space and W's
    /// top-k left singular subspace (descending).
    pub column_cosines: Vec<f64>,
    /// The same for the row space and W's top-k right singular subspace.
    pub row_cosines: Vec<f64>,
    /// ‖U_kᵀ·ΔW‖² / ‖ΔW‖².
    pub column_energy: f64,
    /// ‖ΔW·V_k‖² / ‖ΔW‖².
    pub row_energy: f64,
    /// What a random subspace of ΔW's size would give: k/d_out and k/d_in.
    pub column_energy_random: f64,
    pub row_energy_random: f64,
    /// ‖U_ΔWᵀ·W·V_ΔW‖_F (LoRA paper §7.3).
    pub base_projected_norm: f64,
    /// ‖ΔW‖_F / ‖U_ΔWᵀ·W·V_ΔW‖_F.
    pub amplification: f64,
}

/// ΔW against the same module of another adapter.
#[derive(Debug, Clone, Serialize)]
pub struct AgainstMeasures {
    /// Cosine of the flattened ΔWs.
    pub cosine: f64,
    /// Principal cosines between the column spaces, and between the row spaces.
    pub column_cosines: Vec<f64>,
    pub row_cosines: Vec<f64>,
    pub other_frobenius: f64,
}

/// One module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleReport {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub spectrum: Spectrum,
    pub base: Option<BaseMeasures>,
    pub against: Option<AgainstMeasures>,
}

/// Everything `analyze` reports.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeReport {
    pub adapter: String,
    /// `gguf` (GGUF tensor names and layout) or `peft` (HF module names).
    pub layout: String,
    pub base: Option<String>,
    pub against: Option<String>,
    pub top_k: usize,
    pub modules: Vec<ModuleReport>,
    /// Modules the other adapter has and this one lacks.
    pub only_in_against: Vec<String>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl fmt::Display for AnalyzeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} layout, {} modules)",
            self.adapter,
            self.layout,
            self.modules.len()
        )?;
        write!(
            f,
            "{:<40} {:>4} {:>10} {:>8} {:>5} {:>5}",
            "module", "rank", "‖ΔW‖_F", "σ₁", "r90", "r99"
        )?;
        if self.base.is_some() {
            write!(
                f,
                " {:>8} {:>8} {:>8} {:>8} {:>7}",
                "cos col", "cos row", "E col", "k/d", "amplif"
            )?;
        }
        if self.against.is_some() {
            write!(f, " {:>8} {:>8}", "cosine", "overlap")?;
        }
        writeln!(f)?;
        for m in &self.modules {
            let s = &m.spectrum;
            write!(
                f,
                "{:<40} {:>4} {:>10.4} {:>8.4} {:>5} {:>5}",
                m.name,
                m.rank,
                s.frobenius,
                s.singular_values.first().copied().unwrap_or(0.0),
                s.effective_rank_90,
                s.effective_rank_99
            )?;
            if self.base.is_some() {
                match &m.base {
                    Some(b) => write!(
                        f,
                        " {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>7.2}",
                        b.column_cosines.first().copied().unwrap_or(0.0),
                        b.row_cosines.first().copied().unwrap_or(0.0),
                        b.column_energy,
                        b.column_energy_random,
                        b.amplification
                    )?,
                    None => write!(f, " {:>44}", "-")?,
                }
            }
            if self.against.is_some() {
                match &m.against {
                    Some(a) => write!(f, " {:>8.4} {:>8.4}", a.cosine, mean(&a.column_cosines))?,
                    None => write!(f, " {:>8} {:>8}", "absent", "-")?,
                }
            }
            writeln!(f)?;
        }
        if self.base.is_some() {
            writeln!(
                f,
                "cos col/row: largest principal cosine with the base weight's top-{} left/right singular subspace;\n\
                 E col: share of ‖ΔW‖² in that left subspace, next to a random subspace's k/d_out; \
                 amplif: ‖ΔW‖_F / ‖U_ΔWᵀ·W·V_ΔW‖_F",
                self.top_k
            )?;
        }
        if self.against.is_some() {
            writeln!(
                f,
                "cosine: of the flattened ΔWs; overlap: mean principal cosine of the column spaces"
            )?;
            if !self.only_in_against.is_empty() {
                writeln!(
                    f,
                    "{} modules only in {}",
                    self.only_in_against.len(),
                    self.against.as_deref().unwrap_or("")
                )?;
            }
        }
        Ok(())
    }
}
