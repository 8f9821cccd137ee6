//! Pairing a PEFT adapter's tensors: every `lora_A`/`lora_B` of a module
//! matched, shapes checked against each other and the config, and anything
//! that is not a LoRA pair (DoRA magnitudes, `modules_to_save`, biases)
//! recorded as unsupported rather than dropped.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors};

use super::adapter::*;
use crate::error::{Error, Result};
use crate::matrix::SourceDtype;

impl PeftAdapter {
    pub(super) fn pair_tensors(&mut self) -> Result<()> {
        let path = self.weights_path.clone();
        let malformed = |reason: String| Error::malformed(&path, "safetensors", reason);
        let (header_len, meta) =
            SafeTensors::read_metadata(&self.data).map_err(|e| malformed(format!("{e:?}")))?;
        let data_start = 8 + header_len;

        #[derive(Default)]
        struct Half {
            a: Option<TensorSpan>,
            b: Option<TensorSpan>,
            kind: Option<PairKind>,
        }
        let mut halves: BTreeMap<String, Half> = BTreeMap::new();
        let mut unpaired_kind: Vec<String> = Vec::new();
        let mut names: Vec<(String, &safetensors::tensor::TensorInfo)> =
            meta.tensors().into_iter().collect();
        names.sort_by(|x, y| x.0.cmp(&y.0));

        for (name, info) in names {
            let span = || -> Result<TensorSpan> {
                let dtype = match info.dtype {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    other => {
                        return Err(Error::Dtype {
                            path: path.clone(),
                            tensor: name.clone(),
                            dtype: format!("{other:?}"),
                        })
                    }
                };
                let [rows, cols] = info.shape[..] else {
                    return Err(Error::Shape {
                        path: path.clone(),
                        tensor: name.clone(),
                        reason: format!("expected a 2-D factor, found shape {:?}", info.shape),
                    });
                };
                // read_metadata validated that the offsets are in bounds,
                // contiguous and sized for dtype × shape.
                Ok(TensorSpan {
                    name: name.clone(),
                    dtype,
                    shape: [rows, cols],
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                })
            };
            let stripped = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name);
            let classified = [
                (".lora_A.weight", PairKind::Linear, true),
                (".lora_B.weight", PairKind::Linear, false),
                (".lora_embedding_A", PairKind::Embedding, true),
                (".lora_embedding_B", PairKind::Embedding, false),
            ]
            .into_iter()
            .find_map(|(suffix, kind, is_a)| {
                stripped
                    .strip_suffix(suffix)
                    .map(|m| (m.to_string(), kind, is_a))
            });
            if let Some((module, kind, is_a)) = classified {
                let span = span()?;
                let h = halves.entry(module).or_default();
                if h.kind.is_some_and(|k| k != kind) {
                    unpaired_kind.push(name.clone());
                }
                h.kind = Some(kind);
                if is_a {
                    h.a = Some(span);
                } else {
                    h.b = Some(span);
                }
            } else if stripped.ends_with(".lora_magnitude_vector")
                || stripped.ends_with(".lora_magnitude_vector.weight")
            {
                return Err(Error::Unsupported {
                    path: path.clone(),
                    feature: format!("DoRA magnitude vector {name}"),
                    hint: Some(
                        "merge the DoRA adapter into the base model in Python and convert the merged model instead"
                            .into(),
                    ),
                });
            } else if stripped.ends_with(".lora_B.bias")
                || stripped.ends_with(".lora_embedding_B.bias")
            {
                let bytes = self
                    .data
                    .get(data_start + info.data_offsets.0..data_start + info.data_offsets.1)
                    .ok_or_else(|| malformed(format!("tensor {name} is out of bounds")))?;
                if is_all_zero(info.dtype, bytes) {
                    self.zero_biases.push(name.clone());
                } else {
                    return Err(Error::Unsupported {
                        path: path.clone(),
                        feature: format!("non-zero LoRA bias {name} (llama.cpp's LoRA format has no bias term)"),
                        hint: Some("train with lora_bias=False, or merge the adapter into the base model instead".into()),
                    });
                }
            } else if let Some(module) = stripped.strip_suffix(".base_layer.weight") {
                self.base_layer_copies
                    .push((module.to_string(), name.clone(), info.shape.clone()));
            } else {
                let reason = if stripped.contains("trainable_tokens")
                    || stripped.contains("token_adapter")
                {
                    "trainable token embeddings (new or retrained tokens)"
                } else if stripped.ends_with(".bias") {
                    "a trained base bias (bias = \"all\" or \"lora_only\")"
                } else if self
                    .config
                    .modules_to_save
                    .iter()
                    .any(|m| stripped.split('.').any(|part| part == m))
                {
                    "a full trained tensor (modules_to_save)"
                } else {
                    "a tensor that no LoRA pair uses"
                };
                self.unsupported.push(UnsupportedTensor {
                    name: name.clone(),
                    reason: reason.into(),
                });
            }
        }
        if !unpaired_kind.is_empty() {
            return Err(Error::Pairing {
                path,
                problem: "Linear and Embedding LoRA factors mixed on one module",
                tensors: unpaired_kind.join(", "),
            });
        }
        let incomplete: Vec<String> = halves
            .iter()
            .filter_map(|(m, h)| match (&h.a, &h.b) {
                (Some(_), None) => Some(format!("{m} has lora_A but no lora_B")),
                (None, Some(_)) => Some(format!("{m} has lora_B but no lora_A")),
                _ => None,
            })
            .collect();
        if !incomplete.is_empty() {
            return Err(Error::Pairing {
                path,
                problem: "incomplete LoRA pairs",
                tensors: incomplete.join(", "),
            });
        }
        for (module, h) in halves {
            let (Some(a), Some(b), Some(kind)) = (h.a, h.b, h.kind) else {
                continue;
            };
            let scale = self.config.module_scale(&module);
            let r = a.shape[0];
            if b.shape[1] != r {
                return Err(Error::Shape {
                    path,
                    tensor: b.name,
                    reason: format!("lora_B has {} columns but lora_A has rank {r}", b.shape[1]),
                });
            }
            if r != scale.rank {
                return Err(Error::Shape {
                    path,
                    tensor: a.name,
                    reason: format!(
                        "rank {r} in the weights but {} in adapter_config.json (r / rank_pattern)",
                        scale.rank
                    ),
                });
            }
            self.pairs.push(LoraPair {
                module,
                kind,
                a,
                b,
                scale,
            });
        }
        if self.pairs.is_empty() {
            return Err(Error::Pairing {
                path: self.weights_path.clone(),
                problem: "no LoRA pairs found",
                tensors:
                    "expected tensors named base_model.model.<module>.lora_A.weight / lora_B.weight"
                        .into(),
            });
        }
        Ok(())
    }
}

fn is_all_zero(dtype: Dtype, bytes: &[u8]) -> bool {
    // +0.0 and -0.0 in every float dtype: all bits zero but the sign bit.
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => return bytes.iter().all(|b| *b == 0),
    };
    bytes.chunks_exact(width).all(|c| {
        let (last, rest) = c
            .split_last()
            .expect("chunks_exact yields non-empty chunks");
        rest.iter().all(|b| *b == 0) && (*last & 0x7f) == 0
    })
}
