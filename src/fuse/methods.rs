//! The fusion of one module's terms, on factors only.

use ndarray::{concatenate, Array2, Axis};

use super::prune::{self, tensor_seed, Merge};
use super::Method;
use crate::error::Result;
use crate::linalg::rsvd::{randomized_svd, RsvdOptions};
use crate::linalg::subspace::orth;
use crate::linalg::truncate::{balanced, tail_error};
use crate::linalg::LowRank;
use crate::projection::{selected, similarity, Alignment};

/// One input's factors for a module: its update is weight·scale·B·A.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub b: Array2<f64>,
    pub a: Array2<f64>,
    pub scale: f64,
    pub weight: f64,
    /// Which input (0-based) this term comes from.
    pub input: usize,
}

/// A fused module: B (d_out×k) and A (k×d_in), applied with scaling 1.
#[derive(Debug, Clone)]
pub struct Fused {
    pub b: Array2<f64>,
    pub a: Array2<f64>,
    /// ‖Σ wᵢ·sᵢ·Bᵢ·Aᵢ‖_F.
    pub exact_norm: f64,
    /// ‖B·A − Σ wᵢ·sᵢ·Bᵢ·Aᵢ‖_F relative to the exact norm.
    pub relative_error: f64,
    /// selective: the module's [`selective_similarity`], when it has one.
    pub similarity: Option<f64>,
    /// selective: whether the protected input was fused in.
    pub selected: Option<bool>,
}

/// The exact weighted sum in PEFT's `cat` layout: B′ = [B₁ | B₂ …],
/// A′ = [w₁s₁A₁; w₂s₂A₂ …].
fn cat(terms: &[Term]) -> LowRank {
    let bs: Vec<_> = terms.iter().map(|t| t.b.view()).collect();
    let scaled: Vec<Array2<f64>> = terms.iter().map(|t| &t.a * (t.weight * t.scale)).collect();
    let as_: Vec<_> = scaled.iter().map(|a| a.view()).collect();
    LowRank::new(
        concatenate(Axis(1), &bs).expect("same d_out"),
        concatenate(Axis(0), &as_).expect("same d_in"),
        1.0,
    )
}

/// The terms with a nonzero weight (layer-selected inputs are 0 elsewhere),
/// or the first one alone at weight 0 when none is, to keep the shapes.
fn nonzero(terms: &[Term]) -> Vec<Term> {
    let kept: Vec<Term> = terms.iter().filter(|t| t.weight != 0.0).cloned().collect();
    if kept.is_empty() {
        terms[..1].to_vec()
    } else {
        kept
    }
}

/// Settings of the per-factor merges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeParams {
    /// The svd rank.
    pub rank: usize,
    /// Fraction of entries kept by ties, dare and magnitude_prune.
    pub density: f64,
    /// Seed of DARE's masks.
    pub seed: u64,
    /// orthogonal: the protected input (0-based).
    pub protect: usize,
    /// orthogonal: which of its subspaces the others are projected away from.
    pub side: Side,
    /// selective: the protected input is fused into the modules whose
    /// similarity is at most this (rounded to 5 decimals), and left out of
    /// the others.
    pub threshold: f64,
}

/// Which subspace of the protected input `orthogonal` keeps the others out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// Its column space (output directions): Bᵢ ← (I − Q·Qᵀ)·Bᵢ, Q = orth(B_p).
    #[default]
    Column,
    /// Its row space (input directions): Aᵢ ← Aᵢ·(I − R·Rᵀ), R = orth(A_pᵀ).
    Row,
    /// Both.
    Both,
}

impl Side {
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "column" | "col" => Some(Side::Column),
            "row" => Some(Side::Row),
            "both" => Some(Side::Both),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Column => "column",
            Side::Row => "row",
            Side::Both => "both",
        }
    }
}

/// `orthogonal`'s projection: every term but the protected one loses its
/// component in the protected term's column space (B side), row space (A
/// side) or both, on the factors (m×r and r×n, never m×n). A module the
/// protected input lacks is left as it is.
fn project_away(terms: &[Term], p: &MergeParams) -> Result<Vec<Term>> {
    let Some(prot) = terms.iter().find(|t| t.input == p.protect) else {
        return Ok(terms.to_vec());
    };
    let q = matches!(p.side, Side::Column | Side::Both)
        .then(|| orth(&prot.b))
        .transpose()?;
    let r = matches!(p.side, Side::Row | Side::Both)
        .then(|| orth(&prot.a.t().to_owned()))
        .transpose()?;
    Ok(terms
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if t.input != p.protect {
                if let Some(q) = &q {
                    t.b = &t.b - &q.dot(&q.t().dot(&t.b));
                }
                if let Some(r) = &r {
                    t.a = &t.a - &t.a.dot(r).dot(&r.t());
                }
            }
            t
        })
        .collect())
}

/// `selective`'s criterion (SafeMERGE's, from Safe LoRA): the cosine of
/// the flattened C·ΔW and ΔW, where ΔW is the sum of the other inputs'
/// updates and C = V·Vᵀ/‖V‖_F with V the protected input's update, on the
/// factors. Low: the others' update leaves the protected one's subspace,
/// and the module gets the protected input. `None` when the module lacks
/// the protected input, or every other input (nothing to protect there).
pub fn selective_similarity(terms: &[Term], protect: usize) -> Option<f64> {
    let prot = terms.iter().find(|t| t.input == protect)?;
    let others: Vec<Term> = terms
        .iter()
        .filter(|t| t.input != protect && t.weight != 0.0)
        .cloned()
        .collect();
    if others.is_empty() {
        return None;
    }
    let v = Alignment::LowRank(LowRank::new(prot.b.clone(), prot.a.clone(), prot.scale));
    let norm = v.norm();
    let d = cat(&others);
    if norm == 0.0 {
        return Some(0.0);
    }
    let pb = v.paper_projection(&d.b, norm);
    Some(similarity(&pb, &d.b, d.a.view()).0)
}

/// `selective`: cat of every term where the module is selected (or has no
/// similarity), of all but the protected term elsewhere.
fn select(terms: &[Term], p: &MergeParams) -> (Vec<Term>, Option<f64>, Option<bool>) {
    let sim = selective_similarity(terms, p.protect);
    let Some(s) = sim else {
        return (terms.to_vec(), None, None);
    };
    if selected(s, p.threshold) {
        return (terms.to_vec(), sim, Some(true));
    }
    let rest = terms
        .iter()
        .filter(|t| t.input != p.protect)
        .cloned()
        .collect();
    (rest, sim, Some(false))
}

/// PEFT's per-factor combination: weights √|wᵢsᵢ| on B, with the sign on A.
fn per_factor(terms: &[Term], merge: Option<Merge>, module: &str, p: &MergeParams) -> LowRank {
    let roots: Vec<f64> = terms
        .iter()
        .map(|t| (t.weight * t.scale).abs().sqrt())
        .collect();
    let signed: Vec<f64> = terms
        .iter()
        .zip(&roots)
        .map(|(t, r)| (t.weight * t.scale).signum() * r)
        .collect();
    let combine = |xs: Vec<Array2<f64>>, ws: &[f64], factor: u8| match merge {
        None => xs
            .iter()
            .zip(ws)
            .fold(Array2::zeros(xs[0].dim()), |acc, (x, w)| acc + x * *w),
        Some(m) => {
            let seeds: Vec<u64> = (0..xs.len())
                .map(|i| tensor_seed(p.seed, module, factor, i))
                .collect();
            prune::merge(&xs, ws, m, p.density, &seeds)
        }
    };
    let a = combine(terms.iter().map(|t| t.a.clone()).collect(), &signed, b'A');
    let b = combine(terms.iter().map(|t| t.b.clone()).collect(), &roots, b'B');
    LowRank::new(b, a, 1.0)
}

/// Fuse one module's `terms` with `method`.
pub fn fuse_module(terms: &[Term], method: Method, module: &str, p: &MergeParams) -> Result<Fused> {
    let k = p.rank;
    let exact = cat(terms);
    let exact_norm = exact.norm();
    let rel = |x: &LowRank| -> Result<f64> {
        let d = exact.difference_norm(x)?;
        Ok(if exact_norm > 0.0 { d / exact_norm } else { d })
    };
    let exact_from = |c: LowRank, relative_error: f64| Fused {
        b: c.b,
        a: c.a,
        exact_norm,
        relative_error,
        similarity: None,
        selected: None,
    };
    match method {
        Method::Cat => Ok(exact_from(cat(&nonzero(terms)), 0.0)),
        Method::Orthogonal => {
            let c = cat(&nonzero(&project_away(terms, p)?));
            let relative_error = rel(&c)?;
            Ok(exact_from(c, relative_error))
        }
        Method::Selective => {
            let (kept, similarity, selected) = select(terms, p);
            let c = cat(&nonzero(&kept));
            let relative_error = rel(&c)?;
            Ok(Fused {
                similarity,
                selected,
                ..exact_from(c, relative_error)
            })
        }
        Method::Svd => {
            let svd = exact.svd()?;
            let k = k.min(svd.s.len()).max(1);
            let (b, a) = balanced(&svd, k, 1.0);
            Ok(Fused {
                b,
                a,
                exact_norm,
                relative_error: tail_error(svd.s.as_slice().expect("contiguous"), k),
                similarity: None,
                selected: None,
            })
        }
        m if m.dense() => dense(terms, m.merge(), module, p),
        _ => {
            let fused = per_factor(terms, method.merge(), module, p);
            let relative_error = rel(&fused)?;
            Ok(exact_from(fused, relative_error))
        }
    }
}

/// Above this many rows and columns, the dense merges truncate by randomized
/// SVD (a dense SVD of a 4096×14336 update takes minutes).
const EXACT_SVD_MAX: usize = 2048;

/// PEFT's `*_svd` merges: Mᵢ = sᵢ·Bᵢ·Aᵢ dense, pruned and merged entry-wise
/// with the weights wᵢ, then truncated to rank K.
fn dense(terms: &[Term], merge: Option<Merge>, module: &str, p: &MergeParams) -> Result<Fused> {
    let updates: Vec<Array2<f64>> = terms.iter().map(|t| t.b.dot(&t.a) * t.scale).collect();
    let weights: Vec<f64> = terms.iter().map(|t| t.weight).collect();
    let exact = updates
        .iter()
        .zip(&weights)
        .fold(Array2::zeros(updates[0].dim()), |acc, (u, w)| acc + u * *w);
    let merged = match merge {
        None => exact.clone(),
        Some(m) => {
            let seeds: Vec<u64> = (0..updates.len())
                .map(|i| tensor_seed(p.seed, module, b'W', i))
                .collect();
            prune::merge(&updates, &weights, m, p.density, &seeds)
        }
    };
    drop(updates);
    let (rows, cols) = merged.dim();
    let k = p.rank.min(rows).min(cols).max(1);
    let svd = if rows.min(cols) <= EXACT_SVD_MAX {
        crate::linalg::lowrank::dense_svd(&merged)?
    } else {
        let mut opts = RsvdOptions::new(k, tensor_seed(p.seed, module, b'S', 0));
        opts.power_iters = 4;
        randomized_svd(merged.mapv(|x| x as f32).view(), &opts)?
    };
    let (b, a) = balanced(&svd, k.min(svd.s.len()), 1.0);
    let exact_norm = exact.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff = (b.dot(&a) - &exact)
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt();
    Ok(Fused {
        b,
        a,
        exact_norm,
        relative_error: if exact_norm > 0.0 {
            diff / exact_norm
        } else {
            diff
        },
        similarity: None,
        selected: None,
    })
}

#[cfg(test)]
#[path = "methods_tests.rs"]
mod tests;
