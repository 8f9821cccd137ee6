//! Adapters as lists of low-rank modules, read one module at a time.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufTensor};
use crate::layout::{gguf_scale, PairShape};
use crate::linalg::{f64_matrix, LowRank};
use crate::peft::{PairKind, PeftAdapter};

/// Where an adapter's modules come from.
pub enum AdapterSource {
    /// A GGUF LoRA: modules named by base tensor, in GGUF layout.
    Gguf {
        file: GgufFile,
        map: Mmap,
        alpha: Option<f64>,
        /// A converted PEFT adapter lives in this temp dir.
        _tmp: Option<tempfile::TempDir>,
    },
    /// A PEFT adapter: modules named by HF module, in HF layout.
    Peft(PeftAdapter),
}

/// Decode a GGUF tensor (any ggml type) into f32 with ggml's own to_float.
pub fn gguf_tensor_f32(path: &Path, map: &[u8], t: &GgufTensor) -> Result<Vec<f32>> {
    let n: u64 = t.ne.iter().product();
    let end = t
        .offset
        .checked_add(t.size)
        .filter(|&e| e <= map.len() as u64);
    let bytes = end
        .map(|e| &map[t.offset as usize..e as usize])
        .ok_or_else(|| {
            Error::malformed(
                path,
                "GGUF",
                format!("tensor {} lies outside the file", t.name),
            )
        })?;
    Ok(loraguard_llama::ggml::dequantize(
        t.ty.id(),
        bytes,
        n as usize,
    )?)
}

/// Refuse an aLoRA input of `command` (fuse, merge), which would bake or mix
/// its update into every token.
pub fn refuse_alora(alora: bool, path: &Path, command: &str) -> Result<()> {
    if !alora {
        return Ok(());
    }
    Err(Error::Unsupported {
        path: path.to_path_buf(),
        feature: format!(
            "an aLoRA (alora_invocation_tokens) applies only from its invocation tokens on; \
             {command} would apply it to every token"
        ),
        hint: Some(
            "convert it on its own (`loraguard convert`) and load it with llama.cpp's --lora"
                .into(),
        ),
    })
}

impl AdapterSource {
    /// Whether this is an aLoRA (activated LoRA: applied only from its
    /// invocation tokens on, `adapter.alora.invocation_tokens`).
    pub fn is_alora(&self) -> bool {
        match self {
            AdapterSource::Peft(a) => a.config.alora_invocation_tokens.is_some(),
            AdapterSource::Gguf { file, .. } => file
                .metadata
                .contains_key("adapter.alora.invocation_tokens"),
        }
    }

    /// Open a PEFT directory or GGUF LoRA. With `convert_with`, a PEFT
    /// adapter is first converted (exactly, in F32) for that base GGUF, so that
    /// its modules carry GGUF names and layout.
    /// A PEFT adapter with tensors outside LoRA pairs (`modules_to_save`)
    /// is refused, as `convert` refuses it.
    /// The conversion goes to the system's temp directory; commands that
    /// write a file use [`AdapterSource::open_for`] to keep it beside theirs.
    pub fn open(path: &Path, convert_with: Option<&Path>) -> Result<Self> {
        Ok(Self::open_for(path, convert_with, false, None)?.0)
    }

    /// [`AdapterSource::open`], leaving out (with `drop_unsupported`) the
    /// PEFT tensors outside LoRA pairs instead of refusing them, and, with
    /// `scratch_for`, converting in a scratch directory beside that output
    /// file (the project's rule for scratch: same filesystem, swept when
    /// stale) instead of the system's temp directory. Returns the names of
    /// the tensors left out.
    pub fn open_for(
        path: &Path,
        convert_with: Option<&Path>,
        drop_unsupported: bool,
        scratch_for: Option<&Path>,
    ) -> Result<(Self, Vec<String>)> {
        if crate::peft::looks_like_peft(path) {
            let Some(base) = convert_with else {
                let a = PeftAdapter::open(path)?;
                if !a.unsupported.is_empty() && !drop_unsupported {
                    return Err(crate::convert::unsupported_error(&a, &a.unsupported));
                }
                let dropped = a.unsupported.iter().map(|t| t.name.clone()).collect();
                return Ok((AdapterSource::Peft(a), dropped));
            };
            let tmp = match scratch_for {
                Some(out) => crate::atomic::scratch_dir(out)?,
                None => tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?,
            };
            let out = tmp.path().join("adapter.gguf");
            let opts = crate::convert::ConvertOptions {
                drop_unsupported,
                ..crate::convert::ConvertOptions::new(crate::convert::OutType::F32)
            };
            let r = crate::convert::convert(path, base, Some(&out), &opts, &|_, _| {})?;
            let dropped = r.dropped.iter().map(|t| t.name.clone()).collect();
            return Ok((Self::open_gguf(&out, Some(tmp))?, dropped));
        }
        Ok((Self::open_gguf(path, None)?, Vec::new()))
    }

    fn open_gguf(path: &Path, tmp: Option<tempfile::TempDir>) -> Result<Self> {
        let file = GgufFile::open(path)?;
        if !file.is_adapter() {
            return Err(Error::Usage(format!(
                "{} is not a LoRA adapter (a PEFT directory or a GGUF LoRA)",
                path.display()
            )));
        }
        let alpha = file.get_f64("adapter.lora.alpha");
        let map = crate::mmap::map_file(path)?;
        Ok(AdapterSource::Gguf {
            file,
            map,
            alpha,
            _tmp: tmp,
        })
    }

    /// True for GGUF names and layout.
    pub fn is_gguf(&self) -> bool {
        matches!(self, AdapterSource::Gguf { .. })
    }

    pub fn path(&self) -> PathBuf {
        match self {
            AdapterSource::Gguf { file, .. } => file.path.clone(),
            AdapterSource::Peft(p) => p.dir.clone(),
        }
    }

    /// Module names, in file order, embeddings included.
    pub fn modules(&self) -> Vec<String> {
        match self {
            AdapterSource::Gguf { file, .. } => file
                .tensors
                .iter()
                .filter_map(|t| t.name.strip_suffix(".lora_a"))
                .map(String::from)
                .collect(),
            AdapterSource::Peft(p) => p.pairs.iter().map(|x| x.module.clone()).collect(),
        }
    }

    /// ΔW of `module` as its factors (scale included), in the base weight's
    /// orientation: out×in for a linear layer; for a token embedding the
    /// vocab×width update ΔE = (B·A)ᵀ, held as Aᵀ·Bᵀ, so that it lines up
    /// with the embedding matrix (GGUF `token_embd.weight`, HF
    /// `embed_tokens.weight`) row for row.
    pub fn load(&self, module: &str) -> Result<LowRank> {
        match self {
            AdapterSource::Gguf {
                file, map, alpha, ..
            } => {
                let get = |suffix: &str| {
                    let name = format!("{module}.{suffix}");
                    file.tensor(&name).ok_or_else(|| {
                        Error::malformed(&file.path, "GGUF LoRA", format!("{name} is missing"))
                    })
                };
                let (ta, tb) = (get("lora_a")?, get("lora_b")?);
                // Linear: lora_a ne [in, r], lora_b ne [r, out]. Embedding
                // (llama.cpp gathers rows of lora_a per token): lora_a ne
                // [r, vocab], lora_b ne [r, width].
                let shape =
                    PairShape::read(module, &ta.ne, &tb.ne).ok_or_else(|| Error::Shape {
                        path: file.path.clone(),
                        tensor: module.into(),
                        reason: format!("lora_a {:?} and lora_b {:?} do not pair", ta.ne, tb.ne),
                    })?;
                let embedding = shape.embedding;
                let a = gguf_tensor_f32(&file.path, map, ta)?;
                let b = gguf_tensor_f32(&file.path, map, tb)?;
                let r = tb.ne[0] as usize;
                if r == 0 {
                    return Err(crate::safelora::input::rank_zero(&file.path, module));
                }
                let scale = gguf_scale(*alpha, r as u64)
                    .ok_or_else(|| crate::safelora::input::rank_zero(&file.path, module))?;
                let b = f64_matrix(tb.ne[1] as usize, r, &b);
                Ok(if embedding {
                    // a holds Aᵀ (vocab × r): ΔE = Aᵀ·Bᵀ.
                    let at = f64_matrix(ta.ne[1] as usize, r, &a);
                    LowRank::new(at, b.reversed_axes().as_standard_layout().to_owned(), scale)
                } else {
                    LowRank::new(b, f64_matrix(r, ta.ne[0] as usize, &a), scale)
                })
            }
            AdapterSource::Peft(p) => {
                let pair = p
                    .pairs
                    .iter()
                    .find(|x| x.module == module)
                    .ok_or_else(|| Error::Usage(format!("no module {module}")))?;
                let (a, b) = (p.matrix(&pair.a)?, p.matrix(&pair.b)?);
                let (a, b) = (a.to_f64(), b.to_f64());
                Ok(match pair.kind {
                    PairKind::Linear => LowRank::new(b, a, pair.scale.scale),
                    PairKind::Embedding => LowRank::new(
                        a.reversed_axes().as_standard_layout().to_owned(),
                        b.reversed_axes().as_standard_layout().to_owned(),
                        pair.scale.scale,
                    ),
                })
            }
        }
    }
}
