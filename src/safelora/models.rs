//! The models V = W_aligned − W_base comes from: opening them, checking
//! them against the adapter, and placing each PEFT module in a GGUF model.

use std::collections::HashMap;
use std::path::PathBuf;

use super::weights::{GgufPlace, Weights};
use super::SafeLoraOptions;
use crate::base::BaseModel;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::peft::PeftAdapter;

/// Base and aligned weights; the base must be model weights.
pub(super) fn open_models(opts: &SafeLoraOptions) -> Result<(Weights, Weights)> {
    let base = Weights::open(&opts.base)?;
    if matches!(base, Weights::Peft(_)) {
        return Err(Error::Usage(format!(
            "--base {} is a PEFT adapter; the base must be model weights (GGUF or safetensors)",
            opts.base.display()
        )));
    }
    let aligned = Weights::open(&opts.aligned)?;
    Ok((base, aligned))
}

/// Where each adapter module lies in the GGUF model among base and aligned,
/// through convert's plan (names, fused row blocks, Q/K permutation).
pub(super) fn gguf_places(
    adapter: &PeftAdapter,
    base: &Weights,
    aligned: &Weights,
) -> Result<(Option<PathBuf>, HashMap<String, GgufPlace>)> {
    let ggufs: Vec<&Weights> = [base, aligned]
        .into_iter()
        .filter(|w| matches!(w, Weights::Gguf { .. }))
        .collect();
    let Some(first) = ggufs.first() else {
        return Ok((None, HashMap::new()));
    };
    let model = BaseModel::open(first.path())?;
    if let [Weights::Gguf { file: a, .. }, Weights::Gguf { file: b, .. }] = ggufs.as_slice() {
        if a.architecture() != b.architecture() {
            return Err(Error::Usage(format!(
                "base {} is {:?} but aligned {} is {:?}",
                a.path.display(),
                a.architecture(),
                b.path.display(),
                b.architecture()
            )));
        }
    }
    let plan = crate::convert::plan(adapter, &model, true)?;
    let mut places = HashMap::new();
    for t in &plan.targets {
        for p in &t.parts {
            let pair = &adapter.pairs[p.pair];
            places.insert(
                pair.module.clone(),
                GgufPlace {
                    tensor: t.tensor.clone(),
                    row_offset: p.row_offset,
                    rows: pair.d_out(),
                    permute_heads: p.permute_heads,
                },
            );
        }
    }
    Ok((Some(first.path().to_path_buf()), places))
}

/// A GGUF LoRA is in GGUF layout: V must come from GGUF models of the
/// adapter's architecture.
pub(super) fn gguf_input_models(lora: &GgufFile, base: &Weights, aligned: &Weights) -> Result<()> {
    let arch = lora.architecture();
    for (w, role) in [(base, "--base"), (aligned, "--aligned")] {
        let Weights::Gguf { file, .. } = w else {
            return Err(Error::Usage(format!(
                "{role} {}: a GGUF LoRA is in GGUF layout, so base and aligned must be GGUF \
                 models too (or project the PEFT adapter, which takes any weights)",
                w.path().display()
            )));
        };
        if file.architecture() != arch {
            return Err(Error::Usage(format!(
                "{role} {} is {:?}, the adapter {} is for {:?}",
                file.path.display(),
                file.architecture(),
                lora.path.display(),
                arch
            )));
        }
    }
    Ok(())
}
