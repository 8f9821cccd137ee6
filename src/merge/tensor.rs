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

/// Values per row block: 512 KiB of f32 per buffer, so that a worker's
/// block stays in cache from dequantizing to measuring what was written
/// (4 MiB blocks ran about 10% slower).
const BLOCK_VALUES: usize = 1 << 17;

/// Rows per block at least: OpenBLAS packs the whole adapter `A` (r × cols)
/// for every product, so a block of few long rows spends its time packing.
const MIN_BLOCK_ROWS: usize = 64;

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

/// Per-thread buffers, reused from block to block (and tensor to tensor).
#[derive(Default)]
struct Scratch {
    raw: Vec<u8>,
    before: Vec<f32>,
    merged: Vec<f32>,
    back: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// The merged tensor's bytes in type `out` (in `output`, reused whatever
/// it holds), and how much of the update the
/// type kept (measured by dequantizing what was written).
pub fn merge_tensor(
    shards: &Shards,
    shard: usize,
    t: &GgufTensor,
    updates: &[Update],
    out: GgmlType,
    mut output: Vec<u8>,
) -> Result<(Vec<u8>, Kept)> {
    let cols = t.ne[0] as usize;
    let rows = t.ne[1..].iter().product::<u64>() as usize;
    let out_row = out
        .tensor_bytes(&[cols as u64, 1])
        .ok_or_else(|| Error::Internal(format!("{}: {out} does not fit rows of {cols}", t.name)))?
        as usize;
    let block = (BLOCK_VALUES / cols.max(1))
        .max(MIN_BLOCK_ROWS)
        .clamp(1, rows.max(1));
    let job = Job {
        shards,
        shard,
        t,
        updates,
        out,
        in_row: t.size as usize / rows.max(1),
        out_row,
    };
    // Every byte is written below: only the length matters (a reused
    // buffer is zero-filled only where it grows).
    output.resize(out_row * rows, 0);
    let kept = output
        .par_chunks_mut(out_row * block)
        .enumerate()
        .map(|(i, dst)| SCRATCH.with_borrow_mut(|sc| job.block(sc, i * block, dst)))
        .try_reduce(Kept::default, |a, b| Ok(a.add(b)))?;
    Ok((output, kept))
}

/// One tensor's merge, shared by the workers.
struct Job<'a> {
    shards: &'a Shards,
    shard: usize,
    t: &'a GgufTensor,
    updates: &'a [Update],
    out: GgmlType,
    in_row: usize,
    out_row: usize,
}

impl Job<'_> {
    /// Rows `r0..` of the merged tensor into `dst` (whole rows of the
    /// output type).
    fn block(&self, sc: &mut Scratch, r0: usize, dst: &mut [u8]) -> Result<Kept> {
        let t = self.t;
        let cols = t.ne[0] as usize;
        let n = dst.len() / self.out_row;
        let values = n * cols;
        let ggml = |e: loraguard_llama::Error| Error::Internal(format!("{}: {e}", t.name));
        sc.raw.resize(self.in_row * n, 0);
        self.shards
            .read(self.shard, t, (r0 * self.in_row) as u64, &mut sc.raw)?;
        sc.before.resize(values, 0.0);
        loraguard_llama::ggml::dequantize_into(t.ty.id(), &sc.raw, &mut sc.before).map_err(ggml)?;
        sc.merged.clear();
        sc.merged.extend_from_slice(&sc.before);
        let mut view = ArrayViewMut2::from_shape((n, cols), &mut sc.merged[..])
            .map_err(|e| Error::Internal(format!("{}: {e}", t.name)))?;
        for u in self.updates {
            let b = u.b.slice(s![r0..r0 + n, ..]);
            general_mat_mul(1.0, &b, &u.a, 1.0, &mut view);
        }
        crate::quant::quantize_into(self.out, &sc.merged, cols, dst).map_err(ggml)?;
        sc.back.resize(values, 0.0);
        loraguard_llama::ggml::dequantize_into(self.out.id(), dst, &mut sc.back).map_err(ggml)?;
        let ([dd, dq, ee], finite) =
            loraguard_llama::sums::update_sums(&sc.before, &sc.merged, &sc.back);
        let k = Kept { dd, dq, ee };
        if !finite {
            let w = &sc.merged;
            let bad = w.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(Error::NonFinite {
                path: self.shards.files[self.shard].path.clone(),
                tensor: format!("{} (merged, row {})", t.name, r0 + bad / cols),
                count: w.iter().filter(|v| !v.is_finite()).count(),
            });
        }
        Ok(k)
    }
}
