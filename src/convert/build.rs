//! Building one target's GGUF factors from its PEFT pairs.

use super::plan::Target;
use crate::arch::permute_rows;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::peft::{PairKind, PeftAdapter};

/// One target's factors, laid out as llama.cpp reads them (row-major, so the
/// first dimension below is ggml's `ne[1]`).
pub struct BuiltPair {
    /// Linear: R × d_in (ne = [d_in, R]). Embedding: vocab × R (ne = [R, vocab]).
    pub a: Matrix,
    /// d_out × R (ne = [R, d_out]).
    pub b: Matrix,
}

/// Build the factors for `target`: stack the parts' A rows, place each
/// part's B (permuted, scale baked) as a block of a block-diagonal B.
pub fn build(adapter: &PeftAdapter, target: &Target) -> Result<BuiltPair> {
    match target.kind {
        PairKind::Embedding => {
            let part = &target.parts[0];
            let pair = &adapter.pairs[part.pair];
            let a = adapter.matrix(&pair.a)?.transpose();
            let mut b = adapter.matrix(&pair.b)?;
            if part.b_factor != 1.0 {
                b.scale(part.b_factor as f32);
            }
            Ok(BuiltPair { a, b })
        }
        PairKind::Linear if target.parts.len() == 1 && target.parts[0].row_offset == 0 => {
            let part = &target.parts[0];
            let pair = &adapter.pairs[part.pair];
            let a = adapter.matrix(&pair.a)?;
            let mut b = adapter.matrix(&pair.b)?;
            if let Some(heads) = part.permute_heads {
                b.data = permute_rows(&b.data, b.rows, b.cols, heads);
            }
            if part.b_factor != 1.0 {
                b.scale(part.b_factor as f32);
            }
            Ok(BuiltPair { a, b })
        }
        PairKind::Linear => {
            let mut a = Matrix::zeros(target.rank, target.d_in);
            let mut b = Matrix::zeros(target.d_out, target.rank);
            let mut col = 0;
            for part in &target.parts {
                let pair = &adapter.pairs[part.pair];
                let pa = adapter.matrix(&pair.a)?;
                let mut pb = adapter.matrix(&pair.b)?;
                if let Some(heads) = part.permute_heads {
                    pb.data = permute_rows(&pb.data, pb.rows, pb.cols, heads);
                }
                let r = pa.rows;
                a.data[col * target.d_in..(col + r) * target.d_in].copy_from_slice(&pa.data);
                let f = part.b_factor as f32;
                for i in 0..pb.rows {
                    let dst = (part.row_offset + i) * target.rank + col;
                    for (d, s) in b.data[dst..dst + r].iter_mut().zip(pb.row(i)) {
                        *d = s * f;
                    }
                }
                col += r;
            }
            Ok(BuiltPair { a, b })
        }
    }
}
