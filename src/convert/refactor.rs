//! Re-factoring each target into balanced, truncated SVD form (`--max-rank`,
//! `--energy`), and measuring the error of what is written
//! (`--measure-error`). Works on one target at a time, in f64, at
//! O((m+n)·r²) per target: ΔW is never formed.

use std::borrow::Cow;
use std::path::Path;

use ndarray::Array2;
use rayon::prelude::*;

use super::encode::{encode_rows, encode_target, BufPool, EncodedPair};
use super::plan::{Plan, Target};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::linalg::truncate::{balanced, tail_error, Truncation};
use crate::linalg::{f64_matrix, LowRank};
use crate::peft::{PairKind, PeftAdapter};
use crate::quant::decode;

/// Per-target figures for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleStats {
    /// The GGUF base tensor, e.g. `blk.0.attn_q.weight`.
    pub tensor: String,
    /// Rank before re-factoring.
    pub source_rank: usize,
    /// Rank written.
    pub rank: usize,
    /// ‖ΔW − ΔW′‖_F / ‖ΔW‖_F of the truncation (exact, from the singular
    /// values), when re-factoring.
    pub truncation_error: Option<f64>,
    /// ‖ΔW − ΔW_written‖_F / ‖ΔW‖_F of the tensors as written (truncation
    /// and encoding), with `--measure-error`.
    pub written_error: Option<f64>,
}

/// Decode a target's encoded `lora_a` and `lora_b` into the ΔW llama.cpp
/// applies: (alpha / rank)·B·A with B d_out×rank and A rank×d_in.
fn decode_pair(
    t: &Target,
    rank: usize,
    alpha: f32,
    (a, b): (&[u8], &[u8]),
    (ty_a, ty_b): (GgmlType, GgmlType),
) -> Result<LowRank> {
    let undecodable =
        |ty: GgmlType| Error::Internal(format!("cannot decode {ty} for {}", t.tensor));
    let a = decode(ty_a, a).ok_or_else(|| undecodable(ty_a))?;
    let b = decode(ty_b, b).ok_or_else(|| undecodable(ty_b))?;
    let a = match t.kind {
        PairKind::Linear => f64_matrix(rank, t.d_in, &a),
        // Stored as Aᵀ (one row per token).
        PairKind::Embedding => f64_matrix(t.d_in, rank, &a).reversed_axes(),
    };
    Ok(LowRank::new(
        f64_matrix(t.d_out, rank, &b),
        a.as_standard_layout().to_owned(),
        f64::from(alpha) / rank as f64,
    ))
}

/// The target's ΔW exactly as a plain conversion writes it in F32: PEFT's
/// factors in GGUF layout (stacked, Q/K rows permuted, PEFT's scale baked
/// into B in f32), times llama.cpp's alpha / rank. The reference for
/// re-factoring and for `--measure-error`.
pub fn target_lowrank(adapter: &PeftAdapter, t: &Target, alpha: f32) -> Result<LowRank> {
    let pool = BufPool::default();
    let (a, b) = encode_target(adapter, t, GgmlType::F32, GgmlType::F32, &pool)?;
    decode_pair(t, t.rank, alpha, (&a, &b), (GgmlType::F32, GgmlType::F32))
}

/// Pass one of re-factoring: each target's kept rank (at least 1, so a zero
/// update stays a valid rank-1 pair of zeros) and its truncation error, from
/// the singular values alone.
pub fn plan_ranks(
    adapter: &PeftAdapter,
    plan: &Plan,
    truncation: &Truncation,
) -> Result<Vec<(usize, f64)>> {
    plan.targets
        .par_iter()
        .map(|t| {
            let s = target_lowrank(adapter, t, plan.alpha)?.singular_values()?;
            let s = s.as_slice().expect("contiguous");
            let k = truncation.kept(s);
            Ok((k.max(1), tail_error(s, k)))
        })
        .collect()
}

/// Encode f64 rows as `ty`; `None` when a value is out of the type's range.
fn encode_f64(pool: &BufPool, ty: GgmlType, m: &Array2<f64>) -> Option<Vec<u8>> {
    let (rows, cols) = m.dim();
    encode_rows(pool.get(), ty, rows, cols, |i, row| {
        for (x, v) in row.iter_mut().zip(m.row(i)) {
            *x = *v as f32;
        }
    })
}

/// Pass two: the target's balanced rank-`k` factors, encoded. With
/// c = alpha / k (llama.cpp's scale for this pair), B′ = U_k·√(Σ_k/c) and
/// A′ = √(Σ_k/c)·V_kᵀ, so that c·B′·A′ is the best rank-k approximation.
/// `delta` is the target's [`target_lowrank`]; `source` names the adapter
/// file in errors.
pub fn encode_refactored(
    delta: &LowRank,
    t: &Target,
    alpha: f32,
    k: usize,
    (ty_a, ty_b): (GgmlType, GgmlType),
    pool: &BufPool,
    source: &Path,
) -> Result<EncodedPair<'static>> {
    let svd = delta.svd()?;
    let c = f64::from(alpha) / k as f64;
    let (mut b, a) = balanced(&svd, k, c.abs());
    if c < 0.0 {
        b.mapv_inplace(|x| -x);
    }
    let range_err = |suffix: &str| Error::Unsupported {
        path: source.to_path_buf(),
        feature: format!(
            "{}.{suffix} has values beyond F16's range (±65504) after re-factoring",
            t.tensor
        ),
        hint: Some("use --outtype f32 or --outtype bf16".into()),
    };
    let a = match t.kind {
        PairKind::Linear => encode_f64(pool, ty_a, &a),
        PairKind::Embedding => encode_f64(pool, ty_a, &a.t().as_standard_layout().to_owned()),
    }
    .ok_or_else(|| range_err("lora_a"))?;
    let b = encode_f64(pool, ty_b, &b).ok_or_else(|| range_err("lora_b"))?;
    Ok((Cow::Owned(a), Cow::Owned(b)))
}

/// ‖ΔW − ΔW_written‖_F / ‖ΔW‖_F for one encoded target (0 for ΔW = 0 written
/// exactly).
pub fn written_error(
    reference: &LowRank,
    t: &Target,
    rank: usize,
    alpha: f32,
    encoded: (&[u8], &[u8]),
    types: (GgmlType, GgmlType),
) -> Result<f64> {
    let written = decode_pair(t, rank, alpha, encoded, types)?;
    let diff = reference.difference_norm(&written)?;
    let norm = reference.norm();
    Ok(if norm == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        diff / norm
    })
}
