//! Opening a PEFT adapter and pairing its tensors.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::config::{LoraConfig, ModuleScale};
use crate::error::{Error, Result};
use crate::matrix::{count_non_finite, Matrix, SourceDtype};

/// A safetensors file's bytes: a map of the file, or owned.
pub(super) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// File names PEFT writes.
pub const CONFIG_NAME: &str = "adapter_config.json";
pub const SAFETENSORS_NAME: &str = "adapter_model.safetensors";
pub const PICKLE_NAME: &str = "adapter_model.bin";

/// The prefix PEFT puts in front of every module path.
pub(super) const PEFT_PREFIX: &str = "base_model.model.";

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
    pub(super) start: usize,
    pub(super) end: usize,
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
    /// The safetensors file's bytes: mapped, or in memory for an adapter
    /// made in this process ([`PeftAdapter::from_bytes`]).
    pub(super) data: Bytes,
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
        let data = Bytes::Mapped(crate::mmap::map_file(&weights_path)?);
        Self::paired(dir, config, weights_path, data)
    }

    fn paired(
        dir: PathBuf,
        config: LoraConfig,
        weights_path: PathBuf,
        data: Bytes,
    ) -> Result<Self> {
        let mut adapter = PeftAdapter {
            dir,
            config,
            weights_path,
            data,
            pairs: Vec::new(),
            unsupported: Vec::new(),
            zero_biases: Vec::new(),
            base_layer_copies: Vec::new(),
        };
        adapter.pair_tensors()?;
        Ok(adapter)
    }

    /// An adapter made in memory: `adapter_config.json`'s text and the
    /// safetensors bytes, validated and paired as [`PeftAdapter::open`]
    /// does a directory. `dir` names it (in errors, and the converted
    /// file's `general.name`); nothing is read from or written to it. Lets
    /// `fuse` and `safe-lora` convert what they make without a round trip
    /// through a PEFT directory on disk.
    pub fn from_bytes(dir: &Path, config_json: &str, safetensors: Vec<u8>) -> Result<Self> {
        let weights_path = dir.join(SAFETENSORS_NAME);
        let config = LoraConfig::from_json(&dir.join(CONFIG_NAME), config_json)?;
        Self::paired(
            dir.to_path_buf(),
            config,
            weights_path,
            Bytes::Owned(safetensors),
        )
    }

    /// The raw bytes of the safetensors file (mapped, or in memory).
    pub fn file_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The encoded bytes of one tensor.
    pub fn bytes(&self, t: &TensorSpan) -> &[u8] {
        &self.data[t.start..t.end]
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

    /// Hex digest of the safetensors file's bytes.
    pub fn source_hash(&self, hash: crate::hash::SourceHash) -> String {
        hash.hex(&self.data)
    }
}
