//! Opening a PEFT adapter and pairing its tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::config::{LoraConfig, ModuleScale};
use crate::error::{Error, Result};
use crate::matrix::{count_non_finite, Matrix, SourceDtype};

/// File names PEFT writes.
pub const CONFIG_NAME: &str = "adapter_config.json";
pub const SAFETENSORS_NAME: &str = "adapter_model.safetensors";
pub const PICKLE_NAME: &str = "adapter_model.bin";

/// The prefix PEFT puts in front of every module path.
const PEFT_PREFIX: &str = "base_model.model.";

/// Whether a pair comes from an `nn.Linear` or an `nn.Embedding` LoRA layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairKind {
    /// `lora_A.weight` is r×in, `lora_B.weight` is out×r.
    Linear,
    /// `lora_embedding_A` is r×vocab, `lora_embedding_B` is dim×r.
    Embedding,
}

/// Where one tensor's bytes lie in the mapped safetensors file.
#[derive(Debug, Clone)]
pub struct TensorSpan {
    pub name: String,
    pub dtype: SourceDtype,
    /// `[rows, cols]` as PyTorch stores it.
    pub shape: [usize; 2],
    start: usize,
    end: usize,
}

/// One LoRA layer: its A and B factors and PEFT's scale for it.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// The module path in the base model, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    pub kind: PairKind,
    pub a: TensorSpan,
    pub b: TensorSpan,
    pub scale: ModuleScale,
}

impl LoraPair {
    /// The rank stored in the factors.
    pub fn rank(&self) -> usize {
        self.a.shape[0]
    }
    /// Input features (vocabulary size for embeddings).
    pub fn d_in(&self) -> usize {
        self.a.shape[1]
    }
    /// Output features (embedding width for embeddings).
    pub fn d_out(&self) -> usize {
        self.b.shape[0]
    }
}

/// A tensor llama.cpp's LoRA format cannot carry; dropped only on request.
#[derive(Debug, Clone)]
pub struct UnsupportedTensor {
    pub name: String,
    pub reason: String,
}

/// An opened PEFT adapter.
pub struct PeftAdapter {
    /// The adapter directory.
    pub dir: PathBuf,
    pub config: LoraConfig,
    /// The safetensors file.
    pub weights_path: PathBuf,
    mmap: Mmap,
    /// The pairs, sorted by module path.
    pub pairs: Vec<LoraPair>,
    /// Tensors outside LoRA pairs: `modules_to_save` copies, trained biases.
    pub unsupported: Vec<UnsupportedTensor>,
    /// All-zero `lora_B.bias` tensors, which change nothing and are skipped.
    pub zero_biases: Vec<String>,
    /// `<module>.base_layer.weight` copies PEFT saves with
    /// `save_embedding_layers`: (module, tensor name, shape). They are the
    /// base's own weights, skipped when their shape matches the base.
    pub base_layer_copies: Vec<(String, String, Vec<usize>)>,
}

impl std::fmt::Debug for PeftAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeftAdapter")
            .field("dir", &self.dir)
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

/// Is `path` a PEFT adapter (a directory holding `adapter_config.json`, or a
/// file beside one)?
pub fn looks_like_peft(path: &Path) -> bool {
    if path.is_dir() {
        path.join(CONFIG_NAME).is_file()
    } else {
        path.parent().is_some_and(|d| d.join(CONFIG_NAME).is_file())
            && path
                .extension()
                .is_some_and(|e| e == "safetensors" || e == "bin")
    }
}

impl PeftAdapter {
    /// Open a PEFT directory, or its `adapter_model.safetensors` with
    /// `adapter_config.json` beside it.
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, weights_path) = if path.is_dir() {
            let st = path.join(SAFETENSORS_NAME);
            if !st.exists() && path.join(PICKLE_NAME).exists() {
                return Err(Error::Pickle {
                    path: path.join(PICKLE_NAME),
                });
            }
            (path.to_path_buf(), st)
        } else {
            if path
                .extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
            {
                return Err(Error::Pickle { path: path.into() });
            }
            let dir = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (dir, path.to_path_buf())
        };
        let config = LoraConfig::from_file(&dir.join(CONFIG_NAME))?;
        let mmap = crate::mmap::map_file(&weights_path)?;
        let mut adapter = PeftAdapter {
            dir,
            config,
            weights_path,
            mmap,
            pairs: Vec::new(),
            unsupported: Vec::new(),
            zero_biases: Vec::new(),
            base_layer_copies: Vec::new(),
        };
        adapter.pair_tensors()?;
        Ok(adapter)
    }

    /// The raw bytes of the mapped safetensors file.
    pub fn file_bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The encoded bytes of one tensor.
    pub fn bytes(&self, t: &TensorSpan) -> &[u8] {
        &self.mmap[t.start..t.end]
    }

    /// Decode one tensor to f32, refusing NaN and Inf.
    pub fn matrix(&self, t: &TensorSpan) -> Result<Matrix> {
        let bad = count_non_finite(t.dtype, self.bytes(t));
        if bad > 0 {
            return Err(self.non_finite(t, bad));
        }
        Ok(Matrix::decode(
            t.shape[0],
            t.shape[1],
            t.dtype,
            self.bytes(t),
        ))
    }

    /// Scan every paired tensor for NaN and Inf without decoding copies.
    pub fn check_finite(&self) -> Result<()> {
        for p in &self.pairs {
            for t in [&p.a, &p.b] {
                let bad = count_non_finite(t.dtype, self.bytes(t));
                if bad > 0 {
                    return Err(self.non_finite(t, bad));
                }
            }
        }
        Ok(())
    }

    fn non_finite(&self, t: &TensorSpan, count: usize) -> Error {
        Error::NonFinite {
            path: self.weights_path.clone(),
            tensor: t.name.clone(),
            count,
        }
    }

    /// The largest dtype among the factors (decides `--outtype auto`).
    pub fn dtypes(&self) -> Vec<SourceDtype> {
        let mut v: Vec<SourceDtype> = Vec::new();
        for p in &self.pairs {
            for d in [p.a.dtype, p.b.dtype] {
                if !v.contains(&d) {
                    v.push(d);
                }
            }
        }
        v
    }

    fn pair_tensors(&mut self) -> Result<()> {
        let path = self.weights_path.clone();
        let malformed = |reason: String| Error::malformed(&path, "safetensors", reason);
        let (header_len, meta) =
            SafeTensors::read_metadata(&self.mmap).map_err(|e| malformed(format!("{e:?}")))?;
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
                    .mmap
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

    /// Hex sha256 of the safetensors file.
    pub fn sha256(&self) -> String {
        crate::hash::sha256_hex(&self.mmap)
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
