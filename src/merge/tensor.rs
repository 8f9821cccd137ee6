//! Merging one base tensor: W′ = W + Σ sᵢ·Bᵢ·Aᵢ, a block of rows at a time
//! (ggml quantizes row by row, so row blocks are independent): read the
//! rows, dequantize them with ggml, add each adapter's rows of B times A,
//! quantize with ggml. Blocks run in parallel; only the output tensor and
//! one block per worker are held.

use ndarray::{linalg::general_mat_mul, s, Array2, ArrayViewMut2};
use rayon::prelude::*;

use super::shards::Shards;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufTensor};

/// Values per row block (about 4 MiB of f32 per worker).
const BLOCK_VALUES: usize = 1 << 20;

/// One adapter's update to a tensor: `B` (rows×r, every scale folded in)
/// and `A` (r×cols), in f32.
pub struct Update {
    pub b: Array2<f32>,
    pub a: Array2<f32>,
}

/// How much of the update survived the output type's rounding, as sums over
/// the tensor's entries: with δ the exact update and q the written minus the
/// base weights, `dd` = Σδ², `dq` = Σq·δ and `ee` = Σ(q − δ)².
#[derive(Debug, Clone, Copy, Default)]
pub struct Kept {
    pub dd: f64,
    pub dq: f64,
    pub ee: f64,
}

impl Kept {
    /// Sums of both.
    pub fn add(self, o: Kept) -> Kept {
        Kept {
            dd: self.dd + o.dd,
            dq: self.dq + o.dq,
            ee: self.ee + o.ee,
        }
    }

    /// The fraction of the update kept (its projection on the exact update),
    /// 1 for lossless types.
    pub fn fraction(&self) -> f64 {
        if self.dd > 0.0 {
            self.dq / self.dd
        } else {
            1.0
        }
    }

    /// ‖written − exact‖ / ‖update‖.
    pub fn error(&self) -> f64 {
        if self.dd > 0.0 {
            (self.ee / self.dd).sqrt()
        } else {
            0.0
        }
    }
}

/// The sums of [`Kept`] for base rows `before`, exact merged rows `exact`
/// and the rows as written `back`: in f32 over runs of 256 values (a
/// loop the compiler vectorises), added up in f64.
fn kept(before: &[f32], exact: &[f32], back: &[f32]) -> Kept {
    let mut k = Kept::default();
    for ((b, x), y) in before
        .chunks(256)
        .zip(exact.chunks(256))
        .zip(back.chunks(256))
    {
        let (mut dd, mut dq, mut ee) = (0f32, 0f32, 0f32);
        for ((b, x), y) in b.iter().zip(x).zip(y) {
            let (d, e) = (x - b, y - b);
            dd += d * d;
            dq += e * d;
            ee += (e - d) * (e - d);
        }
        k.dd += f64::from(dd);
        k.dq += f64::from(dq);
        k.ee += f64::from(ee);
    }
    k
}

/// The merged tensor's bytes in type `out`, and how much of the update the
/// type kept (measured by dequantizing what was written).
pub fn merge_tensor(
    shards: &Shards,
    shard: usize,
    t: &GgufTensor,
    updates: &[Update],
    out: GgmlType,
) -> Result<(Vec<u8>, Kept)> {
    let cols = t.ne[0] as usize;
    let rows = t.ne[1..].iter().product::<u64>() as usize;
    let in_row = t.size as usize / rows.max(1);
    let out_row = out
        .tensor_bytes(&[cols as u64, 1])
        .ok_or_else(|| Error::Internal(format!("{}: {out} does not fit rows of {cols}", t.name)))?
        as usize;
    let block = (BLOCK_VALUES / cols.max(1)).clamp(1, rows.max(1));
    let mut output = vec![0u8; out_row * rows];
    let kept = output
        .par_chunks_mut(out_row * block)
        .enumerate()
        .map(|(i, dst)| -> Result<Kept> {
            let r0 = i * block;
            let n = dst.len() / out_row;
            let mut raw = vec![0u8; in_row * n];
            shards.read(shard, t, (r0 * in_row) as u64, &mut raw)?;
            let mut w = loraguard_llama::ggml::dequantize(t.ty.id(), &raw, n * cols)?;
            drop(raw);
            let before = w.clone();
            let mut view = ArrayViewMut2::from_shape((n, cols), &mut w)
                .map_err(|e| Error::Internal(format!("{}: {e}", t.name)))?;
            for u in updates {
                let b = u.b.slice(s![r0..r0 + n, ..]);
                general_mat_mul(1.0, &b, &u.a, 1.0, &mut view);
            }
            if let Some(bad) = w.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    path: shards.files[shard].path.clone(),
                    tensor: format!("{} (merged, row {})", t.name, r0 + bad / cols),
                    count: w.iter().filter(|v| !v.is_finite()).count(),
                });
            }
            let q = loraguard_llama::ggml::quantize(out.id(), &w, cols)?;
            let back = loraguard_llama::ggml::dequantize(out.id(), &q, w.len())?;
            dst.copy_from_slice(&q);
            Ok(kept(&before, &w, &back))
        })
        .try_reduce(Kept::default, |a, b| Ok(a.add(b)))?;
    Ok((output, kept))
}
