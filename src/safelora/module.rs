//! One module of Safe LoRA: V from the base and aligned weights, the
//! projected B, and the similarity that decides whether it is kept.

use ndarray::{Array2, ArrayView2};

use super::input::{factors, Module};
use super::weights::{Op, Scratch, Weights};
use super::{ModuleResult, Projection, SafeLoraOptions};
use crate::adapter::AdapterSource;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::peft::PairKind;
use crate::projection::{similarity, Alignment};

/// One module's computed projection, before selection.
pub(super) struct Computed {
    pub(super) result: ModuleResult,
    pub(super) projected_b: Array2<f32>,
    pub(super) b_name: String,
}

/// ‖W − deq(quant_ty(W))‖_F for the row-major weight `data` (rows of `cols`).
fn quantization_error(data: &[f32], cols: usize, ty: GgmlType) -> Result<f64> {
    let q = loraguard_llama::ggml::quantize(ty.id(), data, cols)?;
    let back = loraguard_llama::ggml::dequantize(ty.id(), &q, data.len())?;
    let err: f64 = data
        .iter()
        .zip(&back)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    Ok(err.sqrt())
}

/// Compute one module: V, the projected B, the similarity.
pub(super) fn compute(
    input: &AdapterSource,
    module: &Module,
    base: &Weights,
    aligned: &Weights,
    opts: &SafeLoraOptions,
    scratch: &mut Scratch,
) -> Result<Computed> {
    let m = &module.name;
    let place = module.place.as_ref();
    let (d_out, d_in) = (module.d_out, module.d_in);
    let missing = |w: &Weights| {
        Error::Usage(format!(
            "module {m} is missing from the {} {}",
            w.kind(),
            w.path().display()
        ))
    };
    let shape_err = |w: &Weights, got: (usize, usize)| Error::Shape {
        path: w.path().to_path_buf(),
        tensor: m.clone(),
        reason: format!(
            "is {}×{}, the adapter's update is {d_out}×{d_in}",
            got.0, got.1
        ),
    };
    let mut noise = None;
    let lr;
    let v = match aligned {
        Weights::Peft(_) => {
            lr = aligned.low_rank(m)?.ok_or_else(|| missing(aligned))?;
            Alignment::LowRank(lr)
        }
        _ => {
            let got = aligned
                .apply_into(m, module.kind, place, scratch, Op::Set)?
                .ok_or_else(|| missing(aligned))?;
            if got != (d_out, d_in) {
                return Err(shape_err(aligned, got));
            }
            let quantized = base.gguf_type(place).filter(|t| !t.is_float());
            let aligned_float = aligned.gguf_type(place).is_none_or(|t| t.is_float());
            if let (Some(ty), true, PairKind::Linear) = (quantized, aligned_float, module.kind) {
                noise = Some(quantization_error(scratch.v(), d_in, ty)?);
            }
            // A base of another shape leaves V untouched and is refused here.
            let got = base
                .apply_into(m, module.kind, place, scratch, Op::Subtract)?
                .ok_or_else(|| missing(base))?;
            if got != (d_out, d_in) {
                return Err(shape_err(base, got));
            }
            Alignment::Dense(
                ArrayView2::from_shape((d_out, d_in), scratch.v()).expect("shape checked"),
            )
        }
    };
    if v.shape() != (d_out, d_in) {
        return Err(shape_err(aligned, v.shape()));
    }
    let norm = v.norm();
    if !norm.is_finite() {
        return Err(Error::Usage(format!(
            "module {m}: the aligned or base weights hold NaN or Inf"
        )));
    }
    if norm == 0.0 {
        return Err(Error::Usage(format!(
            "module {m}: the aligned and base weights are identical (V = 0), so there is no \
             alignment direction to project onto"
        )));
    }
    let (b, a) = factors(input, module)?;
    if b.iter().chain(a.iter()).any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            path: input.path(),
            tensor: module.b_tensor.clone(),
            count: b.iter().chain(a.iter()).filter(|x| !x.is_finite()).count(),
        });
    }
    let p = match opts.projection {
        Projection::Paper => v.paper_projection(&b, norm),
        Projection::Exact(k) => {
            let u = v.top_left(k, opts.seed)?;
            u.dot(&u.t().dot(&b))
        }
    };
    let (cos, np, nb) = similarity(&p, &b, a.view());
    let s = module.scale.abs();
    Ok(Computed {
        result: ModuleResult {
            module: m.clone(),
            similarity: cos,
            projected: false,
            norm_before: s * nb,
            norm_after: s * np,
            alignment_norm: norm,
            quantization_noise: noise.map(|e| e / norm),
        },
        projected_b: p.mapv(|x| x as f32),
        b_name: module.b_tensor.clone(),
    })
}
