//! The base model: a GGUF file's architecture, hyperparameters and tensor table.

use std::path::Path;

use crate::arch::{ArchSpec, FusedPart};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// A base model GGUF, with the hyperparameters conversion needs.
#[derive(Debug)]
pub struct BaseModel {
    pub gguf: GgufFile,
    pub arch: &'static ArchSpec,
    pub n_layer: usize,
    pub n_embd: usize,
    /// Attention heads, per layer.
    pub n_head: Vec<usize>,
    /// Key/value heads, per layer.
    pub n_head_kv: Vec<usize>,
    pub head_dim_k: Option<usize>,
    pub head_dim_v: Option<usize>,
}

/// The most layers a base may claim: per-layer tables are sized by it.
pub const MAX_LAYERS: usize = 1 << 16;

impl BaseModel {
    /// Open a base model GGUF and read its hyperparameters from metadata.
    pub fn open(path: &Path) -> Result<Self> {
        let gguf = GgufFile::open(path)?;
        if gguf.is_adapter() {
            return Err(Error::Usage(format!(
                "{} is a LoRA adapter, not a base model",
                path.display()
            )));
        }
        let arch_name = gguf
            .architecture()
            .ok_or_else(|| Error::malformed(path, "GGUF", "no general.architecture"))?
            .to_string();
        let arch = ArchSpec::find(&arch_name).ok_or_else(|| Error::Architecture {
            path: path.into(),
            arch: arch_name.clone(),
            supported: ArchSpec::supported(),
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let need = |k: &str| -> Result<usize> {
            gguf.get_u64(&key(k))
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    Error::malformed(path, "GGUF", format!("missing or invalid {}", key(k)))
                })
        };
        let n_layer = need("block_count")?;
        if n_layer > MAX_LAYERS {
            return Err(Error::malformed(
                path,
                "GGUF",
                format!("{} is {n_layer}, over {MAX_LAYERS}", key("block_count")),
            ));
        }
        let n_embd = need("embedding_length")?;
        let per_layer = |k: &str, default: Option<&Vec<usize>>| -> Result<Vec<usize>> {
            match gguf.metadata.get(&key(k)) {
                Some(crate::gguf::MetaValue::Array(a)) => a
                    .to_u64s()
                    .and_then(|v| {
                        v.into_iter()
                            .map(|x| usize::try_from(x).ok())
                            .collect::<Option<Vec<_>>>()
                    })
                    .filter(|v| v.len() == n_layer)
                    .ok_or_else(|| {
                        Error::malformed(path, "GGUF", format!("invalid per-layer {}", key(k)))
                    }),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .map(|x| vec![x; n_layer])
                    .ok_or_else(|| Error::malformed(path, "GGUF", format!("invalid {}", key(k)))),
                None => default
                    .cloned()
                    .ok_or_else(|| Error::malformed(path, "GGUF", format!("missing {}", key(k)))),
            }
        };
        let n_head = per_layer("attention.head_count", None)?;
        let n_head_kv = per_layer("attention.head_count_kv", Some(&n_head))?;
        let dim = |k: &str| gguf.get_u64(&key(k)).and_then(|v| usize::try_from(v).ok());
        Ok(BaseModel {
            head_dim_k: dim("attention.key_length"),
            head_dim_v: dim("attention.value_length"),
            gguf,
            arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
        })
    }

    /// Path of the GGUF file.
    pub fn path(&self) -> &Path {
        &self.gguf.path
    }

    /// `(row offset, rows)` of `part` inside the fused tensor of `layer`,
    /// whose total row count is `total_rows`.
    pub fn fused_rows(
        &self,
        layer: usize,
        part: FusedPart,
        total_rows: usize,
    ) -> Option<(usize, usize)> {
        let n_head = *self.n_head.get(layer)?;
        let n_kv = *self.n_head_kv.get(layer)?;
        if n_head == 0 {
            return None;
        }
        let hk = self.head_dim_k.unwrap_or(self.n_embd / n_head);
        let hv = self.head_dim_v.unwrap_or(hk);
        let (q, k, v) = (n_head * hk, n_kv * hk, n_kv * hv);
        match part {
            FusedPart::Q => Some((0, q)),
            FusedPart::K => Some((q, k)),
            FusedPart::V => Some((q + k, v)),
            FusedPart::Gate if total_rows % 2 == 0 => Some((0, total_rows / 2)),
            FusedPart::Up if total_rows % 2 == 0 => Some((total_rows / 2, total_rows / 2)),
            _ => None,
        }
    }
}
