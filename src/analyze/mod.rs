//! `loraguard analyze`: SVD subspace analysis of adapters, per module,
//! without forming ΔW.
//!
//! - [`crate::adapter`]: adapters (PEFT or GGUF) as low-rank modules;
//! - [`report`]: the report and its table.

pub mod plot;
pub mod report;

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::adapter::{gguf_tensor_f32, AdapterSource};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::linalg::rsvd::{randomized_svd, RsvdOptions};
use crate::linalg::subspace::{energy_fraction, orth, principal_cosines};
use crate::linalg::LowRank;
pub use report::{AgainstMeasures, AnalyzeReport, BaseMeasures, ModuleReport, Spectrum};

/// Options for [`analyze`].
#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// The base model GGUF, for subspace measures against its weights.
    pub base: Option<PathBuf>,
    /// A second adapter to compare with.
    pub against: Option<PathBuf>,
    /// Size of the base weights' top singular subspace.
    pub top_k: usize,
    /// Seed of the randomized SVD.
    pub seed: u64,
    /// Power iterations of the randomized SVD (more: closer to the exact
    /// top-k subspace when the base spectrum decays slowly; each costs two
    /// passes over W).
    pub power_iters: usize,
}

/// Spectrum statistics from singular values (descending).
pub fn spectrum(s: &[f64]) -> Spectrum {
    let total: f64 = s.iter().map(|x| x * x).sum();
    let mut acc = 0.0;
    let energy: Vec<f64> = s
        .iter()
        .map(|x| {
            acc += x * x;
            if total > 0.0 {
                acc / total
            } else {
                0.0
            }
        })
        .collect();
    let eff = |e: f64| {
        energy
            .iter()
            .position(|c| *c >= e - 1e-12)
            .map_or(0, |i| i + 1)
    };
    Spectrum {
        frobenius: total.sqrt(),
        stable_rank: if s.first().is_some_and(|m| *m > 0.0) {
            total / (s[0] * s[0])
        } else {
            0.0
        },
        effective_rank_90: eff(0.90),
        effective_rank_99: eff(0.99),
        singular_values: s.to_vec(),
        energy,
    }
}

/// The base weight of GGUF tensor `name` as a dense f32 out×in matrix.
fn base_weight(base: &GgufFile, map: &[u8], name: &str) -> Result<Array2<f32>> {
    let t = base.tensor(name).ok_or_else(|| {
        Error::Usage(format!(
            "{name} is not in the base model {}",
            base.path.display()
        ))
    })?;
    if t.ne.len() != 2 {
        return Err(Error::Shape {
            path: base.path.clone(),
            tensor: name.into(),
            reason: format!("expected a matrix, found ne {:?}", t.ne),
        });
    }
    let data = gguf_tensor_f32(&base.path, map, t)?;
    Ok(Array2::from_shape_vec((t.ne[1] as usize, t.ne[0] as usize), data).expect("sizes checked"))
}

fn to_f32(m: &Array2<f64>) -> Array2<f32> {
    m.mapv(|x| x as f32)
}

/// Measures of ΔW against its base weight W.
fn base_measures(dw: &LowRank, w: ArrayView2<'_, f32>, rsvd: RsvdOptions) -> Result<BaseMeasures> {
    let (m, n) = (dw.rows(), dw.cols());
    if w.dim() != (m, n) {
        return Err(Error::Usage(format!(
            "ΔW is {m}×{n} but the base weight is {}×{}",
            w.nrows(),
            w.ncols()
        )));
    }
    let k = rsvd.k.min(m).min(n);
    let top = randomized_svd(w, &RsvdOptions { k, ..rsvd })?;
    let uk = top.u;
    let vk = top.vt.t().to_owned();
    let col = principal_cosines(&uk, &orth(&dw.b)?)?;
    let row = principal_cosines(&vk, &orth(&dw.a.t().to_owned())?)?;
    let dwt = LowRank::new(dw.a.t().to_owned(), dw.b.t().to_owned(), dw.scale);
    // LoRA paper §7.3: ‖U_ΔWᵀ·W·V_ΔW‖_F with ΔW's own top-r singular vectors.
    let svd = dw.svd()?;
    let r = svd
        .s
        .iter()
        .filter(|x| **x > 1e-12 * svd.s[0].max(f64::MIN_POSITIVE))
        .count()
        .max(1);
    let u = to_f32(&svd.u.slice(ndarray::s![.., ..r]).to_owned());
    let v = to_f32(&svd.vt.slice(ndarray::s![..r, ..]).t().to_owned());
    let wv = w.dot(&v); // m×r
    let x = u.t().dot(&wv); // r×r
    let projected = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    let norm = dw.norm();
    Ok(BaseMeasures {
        k,
        column_cosines: col.to_vec(),
        row_cosines: row.to_vec(),
        column_energy: energy_fraction(&uk, dw),
        row_energy: energy_fraction(&vk, &dwt),
        column_energy_random: k as f64 / m as f64,
        row_energy_random: k as f64 / n as f64,
        base_projected_norm: projected,
        amplification: if projected > 0.0 {
            norm / projected
        } else {
            f64::INFINITY
        },
    })
}

fn against_measures(dw: &LowRank, other: &LowRank) -> Result<AgainstMeasures> {
    if (dw.rows(), dw.cols()) != (other.rows(), other.cols()) {
        return Err(Error::Usage(format!(
            "shapes differ: {}×{} against {}×{}",
            dw.rows(),
            dw.cols(),
            other.rows(),
            other.cols()
        )));
    }
    Ok(AgainstMeasures {
        cosine: dw.cosine(other),
        column_cosines: principal_cosines(&orth(&dw.b)?, &orth(&other.b)?)?.to_vec(),
        row_cosines: principal_cosines(
            &orth(&dw.a.t().to_owned())?,
            &orth(&other.a.t().to_owned())?,
        )?
        .to_vec(),
        other_frobenius: other.norm(),
    })
}

/// Analyze `adapter` module by module, one module per rayon task.
/// `progress(done, total)` is called as modules finish.
pub fn analyze(
    adapter: &Path,
    opts: &AnalyzeOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<AnalyzeReport> {
    crate::linalg::init();
    if opts.top_k == 0 {
        return Err(Error::Usage("--top-k must be at least 1".into()));
    }
    // GGUF names and layout whenever a GGUF is involved: a PEFT adapter is
    // converted (exactly) for the base model first.
    let a_is_peft = crate::peft::looks_like_peft(adapter);
    let o_is_peft = opts.against.as_deref().map(crate::peft::looks_like_peft);
    let need_gguf = opts.base.is_some() || (o_is_peft == Some(!a_is_peft));
    if need_gguf && opts.base.is_none() {
        return Err(Error::Usage(
            "one adapter is PEFT and the other GGUF: pass --base BASE.gguf so the PEFT one can be \
             mapped to GGUF names and layout"
                .into(),
        ));
    }
    let via = if need_gguf {
        opts.base.as_deref()
    } else {
        None
    };
    // Analysis reads the LoRA pairs only: tensors outside them
    // (`modules_to_save`) do not stop it, and nothing is written.
    let open = |p: &Path| AdapterSource::open_for(p, via, true).map(|(s, _)| s);
    let src = open(adapter)?;
    let other = opts.against.as_deref().map(open).transpose()?;
    let base = match &opts.base {
        Some(b) => {
            let g = GgufFile::open(b)?;
            let map = crate::mmap::map_file(b)?;
            Some((g, map))
        }
        None => None,
    };
    let names = src.modules();
    if names.is_empty() {
        return Err(Error::Usage(format!(
            "{} has no LoRA modules",
            adapter.display()
        )));
    }
    let other_names: Vec<String> = other.as_ref().map(|o| o.modules()).unwrap_or_default();
    let done = std::sync::atomic::AtomicUsize::new(0);
    progress(0, names.len());
    let modules: Vec<ModuleReport> = names
        .par_iter()
        .map(|name| -> Result<ModuleReport> {
            let dw = src.load(name)?;
            let sv = dw.singular_values()?;
            let mut rep = ModuleReport {
                name: name.clone(),
                rows: dw.rows(),
                cols: dw.cols(),
                rank: dw.rank(),
                spectrum: spectrum(sv.as_slice().expect("contiguous")),
                base: None,
                against: None,
            };
            if let Some((g, map)) = &base {
                let w = base_weight(g, map, name)?;
                let rsvd = RsvdOptions {
                    power_iters: opts.power_iters,
                    ..RsvdOptions::new(opts.top_k, opts.seed)
                };
                rep.base = Some(base_measures(&dw, w.view(), rsvd)?);
            }
            if let Some(o) = &other {
                if other_names.contains(name) {
                    rep.against = Some(against_measures(&dw, &o.load(name)?)?);
                }
            }
            progress(
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                names.len(),
            );
            Ok(rep)
        })
        .collect::<Result<_>>()?;
    let only_in_against = other_names
        .into_iter()
        .filter(|n| !names.contains(n))
        .collect();
    Ok(AnalyzeReport {
        adapter: adapter.display().to_string(),
        layout: if src.is_gguf() { "gguf" } else { "peft" }.into(),
        base: opts.base.as_ref().map(|p| p.display().to_string()),
        against: opts.against.as_ref().map(|p| p.display().to_string()),
        top_k: opts.top_k,
        modules,
        only_in_against,
    })
}
