//! The adapter being projected, opened as an [`AdapterSource`]: a PEFT
//! directory (HF names and layout) or a GGUF LoRA (GGUF tensor names and
//! layout, PEFT's scale folded into alpha / rank and `lora_b`), seen as a
//! list of modules with their factors in B·A orientation, the orientation
//! whose left factor is the tensor safe-lora rewrites.

use std::path::Path;

use ndarray::Array2;

use super::weights::GgufPlace;
use crate::adapter::AdapterSource;
use crate::error::{Error, Result};
use crate::peft::PairKind;

/// One module of the adapter.
#[derive(Debug, Clone)]
pub struct Module {
    /// PEFT module path, or the GGUF base tensor name.
    pub name: String,
    pub kind: PairKind,
    /// ΔW's shape in B·A orientation.
    pub d_out: usize,
    pub d_in: usize,
    /// The scale the adapter applies to B·A.
    pub scale: f64,
    /// The tensor holding B in the adapter file.
    pub b_tensor: String,
    /// Where the module's weight is in a GGUF model, when one is involved.
    pub place: Option<GgufPlace>,
}

/// Open the adapter to project: a PEFT directory (its non-LoRA tensors are
/// the output's business: a PEFT output keeps them, a GGUF output refuses
/// them as `convert` does) or a `.gguf` LoRA.
pub fn open(path: &Path) -> Result<AdapterSource> {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !crate::peft::looks_like_peft(path) && !is_gguf {
        return Err(Error::Usage(format!(
            "{} is neither a PEFT adapter directory nor a GGUF LoRA",
            path.display()
        )));
    }
    let (source, _) = AdapterSource::open_for(path, None, true)?;
    if let AdapterSource::Peft(a) = &source {
        a.check_finite()?;
    }
    Ok(source)
}

/// The modules, without GGUF places for a PEFT adapter (those come from
/// the convert plan against a GGUF model, see `super::gguf_places`).
pub fn modules(source: &AdapterSource) -> Result<Vec<Module>> {
    if let AdapterSource::Peft(p) = source {
        return Ok(p
            .pairs
            .iter()
            .map(|x| Module {
                name: x.module.clone(),
                kind: x.kind,
                d_out: x.d_out(),
                d_in: x.d_in(),
                scale: x.scale.scale,
                b_tensor: x.b.name.clone(),
                place: None,
            })
            .collect());
    }
    let path = source.path();
    source
        .modules()
        .into_iter()
        .map(|base| {
            let shape = source.pair_shape(&base).ok_or_else(|| Error::Shape {
                path: path.clone(),
                tensor: base.clone(),
                reason: "its lora_a and lora_b are missing or do not pair".into(),
            })?;
            let scale = crate::layout::gguf_scale(source.alpha(), shape.rank)
                .ok_or_else(|| crate::adapter::rank_zero(&path, &base))?;
            let d_out = shape.d_out as usize;
            Ok(Module {
                kind: if shape.embedding {
                    PairKind::Embedding
                } else {
                    PairKind::Linear
                },
                d_out,
                d_in: shape.d_in as usize,
                scale,
                b_tensor: format!("{base}.lora_b"),
                place: Some(GgufPlace {
                    tensor: base.clone(),
                    row_offset: 0,
                    rows: d_out,
                    permute_heads: None,
                }),
                name: base,
            })
        })
        .collect()
}

/// B (d_out×r) and A (r×d_in) of `m`, in B·A orientation: the adapter's
/// update in the base weight's orientation ([`AdapterSource::load`]),
/// transposed back for a token embedding.
pub fn factors(source: &AdapterSource, m: &Module) -> Result<(Array2<f64>, Array2<f64>)> {
    let lr = source.load(&m.name)?;
    Ok(match m.kind {
        PairKind::Linear => (lr.b, lr.a),
        PairKind::Embedding => (
            lr.a.reversed_axes().as_standard_layout().to_owned(),
            lr.b.reversed_axes().as_standard_layout().to_owned(),
        ),
    })
}
