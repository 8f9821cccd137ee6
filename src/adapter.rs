//! One adapter abstraction (issue 20): a PEFT directory or a GGUF LoRA,
//! opened once, as named modules with exact low-rank updates, read one
//! module at a time. `analyze`, `merge`, `fuse` and `check --apply-check`
//! consume it.
//!
//! A PEFT adapter opened for a base model is read in GGUF names and layout
//! through `convert`'s own plan and encoder, in F32 and in memory: the
//! factors are the very values `convert --outtype f32` writes (stacked,
//! split, permuted and scaled as llama.cpp needs them), with no file in
//! between. Opened without a base, it keeps PEFT's names and layout.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::base::BaseModel;
use crate::convert::{BufPool, Plan, Target};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, GgufTensor};
use crate::layout::{gguf_scale, PairShape};
use crate::linalg::{f64_matrix, LowRank};
use crate::matrix::SourceDtype;
use crate::peft::{PairKind, PeftAdapter};

/// Where an adapter's modules come from.
pub enum AdapterSource {
    /// A GGUF LoRA: modules named by base tensor, in GGUF layout.
    Gguf {
        file: GgufFile,
        map: Mmap,
        alpha: Option<f64>,
    },
    /// A PEFT adapter planned against a base: modules named by base tensor,
    /// in GGUF layout, computed from the PEFT factors as `convert` would
    /// write them in F32.
    Converted {
        adapter: PeftAdapter,
        plan: Plan,
        architecture: String,
    },
    /// A PEFT adapter: modules named by HF module, in HF layout.
    Peft(PeftAdapter),
}

/// The bytes of GGUF tensor `t` in `map`, the contents of the file `path`.
pub fn gguf_tensor_bytes<'m>(path: &Path, map: &'m [u8], t: &GgufTensor) -> Result<&'m [u8]> {
    let end = t
        .offset
        .checked_add(t.size)
        .filter(|&e| e <= map.len() as u64);
    end.map(|e| &map[t.offset as usize..e as usize])
        .ok_or_else(|| {
            Error::malformed(
                path,
                "GGUF",
                format!("tensor {} lies outside the file", t.name),
            )
        })
}

/// Decode a GGUF tensor (any ggml type) into f32 with ggml's own to_float.
pub fn gguf_tensor_f32(path: &Path, map: &[u8], t: &GgufTensor) -> Result<Vec<f32>> {
    let n: u64 = t.ne.iter().product();
    Ok(loraguard_llama::ggml::dequantize(
        t.ty.id(),
        gguf_tensor_bytes(path, map, t)?,
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

/// A GGUF LoRA pair of rank 0: llama.cpp's scale alpha / rank is undefined.
pub(crate) fn rank_zero(path: &std::path::Path, module: &str) -> Error {
    Error::Shape {
        path: path.to_path_buf(),
        tensor: module.into(),
        reason: "has rank 0 (lora_b has no rows): llama.cpp's scale alpha / rank is undefined"
            .into(),
    }
}

/// The plan's target for base tensor `module`.
fn target<'p>(plan: &'p Plan, module: &str) -> Option<&'p Target> {
    plan.targets.iter().find(|t| t.tensor == module)
}

/// ΔW of a GGUF-layout pair as its factors, in the base weight's orientation
/// (see [`AdapterSource::load`]), from the f32 values of `lora_a` (ggml `ne`
/// `ne_a`) and `lora_b` (`ne_b`) in a file whose alpha is `alpha`.
fn gguf_pair(
    path: &Path,
    module: &str,
    (ne_a, a): (&[u64], Vec<f32>),
    (ne_b, b): (&[u64], Vec<f32>),
    alpha: Option<f64>,
) -> Result<LowRank> {
    let shape = PairShape::read(module, ne_a, ne_b).ok_or_else(|| Error::Shape {
        path: path.to_path_buf(),
        tensor: module.into(),
        reason: format!("lora_a {ne_a:?} and lora_b {ne_b:?} do not pair"),
    })?;
    let r = shape.rank as usize;
    let scale = gguf_scale(alpha, shape.rank).ok_or_else(|| rank_zero(path, module))?;
    let b = f64_matrix(shape.d_out as usize, r, &b);
    Ok(if shape.embedding {
        // lora_a holds Aᵀ (vocab × r): ΔE = Aᵀ·Bᵀ.
        let at = f64_matrix(shape.d_in as usize, r, &a);
        LowRank::new(at, b.reversed_axes().as_standard_layout().to_owned(), scale)
    } else {
        LowRank::new(b, f64_matrix(r, shape.d_in as usize, &a), scale)
    })
}

impl AdapterSource {
    /// Whether this is an aLoRA (activated LoRA: applied only from its
    /// invocation tokens on, `adapter.alora.invocation_tokens`).
    pub fn is_alora(&self) -> bool {
        match self {
            AdapterSource::Peft(a) | AdapterSource::Converted { adapter: a, .. } => {
                a.config.alora_invocation_tokens.is_some()
            }
            AdapterSource::Gguf { file, .. } => file
                .metadata
                .contains_key("adapter.alora.invocation_tokens"),
        }
    }

    /// Open a PEFT directory or GGUF LoRA. With `convert_with`, a PEFT
    /// adapter is planned against that base GGUF as `convert` plans it, so
    /// that its modules carry GGUF names and layout (nothing is written).
    /// A PEFT adapter with tensors outside LoRA pairs (`modules_to_save`)
    /// is refused, as `convert` refuses it.
    pub fn open(path: &Path, convert_with: Option<&Path>) -> Result<Self> {
        Ok(Self::open_for(path, convert_with, false)?.0)
    }

    /// [`AdapterSource::open`], leaving out (with `drop_unsupported`) the
    /// PEFT tensors outside LoRA pairs instead of refusing them. Returns the
    /// names of the tensors left out.
    pub fn open_for(
        path: &Path,
        convert_with: Option<&Path>,
        drop_unsupported: bool,
    ) -> Result<(Self, Vec<String>)> {
        if !crate::peft::looks_like_peft(path) {
            return Ok((Self::open_gguf(path)?, Vec::new()));
        }
        let adapter = PeftAdapter::open(path)?;
        let Some(base) = convert_with else {
            if !adapter.unsupported.is_empty() && !drop_unsupported {
                return Err(crate::convert::unsupported_error(
                    &adapter,
                    &adapter.unsupported,
                ));
            }
            let dropped = adapter.unsupported.iter().map(|t| t.name.clone()).collect();
            return Ok((AdapterSource::Peft(adapter), dropped));
        };
        let base = BaseModel::open(base)?;
        let plan = crate::convert::plan(&adapter, &base, drop_unsupported)?;
        let dropped = plan.dropped.iter().map(|t| t.name.clone()).collect();
        let source = AdapterSource::Converted {
            adapter,
            plan,
            architecture: base.arch.name.to_string(),
        };
        Ok((source, dropped))
    }

    fn open_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        if !file.is_adapter() {
            return Err(Error::Usage(format!(
                "{} is not a LoRA adapter (a PEFT directory or a GGUF LoRA)",
                path.display()
            )));
        }
        let alpha = file.get_f64("adapter.lora.alpha");
        let map = crate::mmap::map_file(path)?;
        Ok(AdapterSource::Gguf { file, map, alpha })
    }

    /// `adapter.lora.alpha` of a GGUF LoRA, or the plan's alpha for a
    /// converted PEFT adapter; `None` when absent (llama.cpp then scales by 1).
    pub fn alpha(&self) -> Option<f64> {
        match self {
            AdapterSource::Gguf { alpha, .. } => *alpha,
            AdapterSource::Converted { plan, .. } => Some(f64::from(plan.alpha)),
            AdapterSource::Peft(_) => None,
        }
    }

    /// True for GGUF names and layout.
    pub fn is_gguf(&self) -> bool {
        !matches!(self, AdapterSource::Peft(_))
    }

    pub fn path(&self) -> PathBuf {
        match self {
            AdapterSource::Gguf { file, .. } => file.path.clone(),
            AdapterSource::Peft(p) | AdapterSource::Converted { adapter: p, .. } => p.dir.clone(),
        }
    }

    /// The architecture the modules are named for (GGUF layout only).
    pub fn architecture(&self) -> Option<&str> {
        match self {
            AdapterSource::Gguf { file, .. } => file.architecture(),
            AdapterSource::Converted { architecture, .. } => Some(architecture),
            AdapterSource::Peft(_) => None,
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
            AdapterSource::Converted { plan, .. } => {
                plan.targets.iter().map(|t| t.tensor.clone()).collect()
            }
            AdapterSource::Peft(p) => p.pairs.iter().map(|x| x.module.clone()).collect(),
        }
    }

    /// The geometry of `module`'s pair (GGUF layout only), from the header
    /// or the plan, without reading its factors; `None` when it is missing
    /// or its factors do not pair.
    pub fn pair_shape(&self, module: &str) -> Option<PairShape> {
        match self {
            AdapterSource::Gguf { file, .. } => {
                let a = file.tensor(&format!("{module}.lora_a"))?;
                let b = file.tensor(&format!("{module}.lora_b"))?;
                PairShape::read(module, &a.ne, &b.ne)
            }
            AdapterSource::Converted { plan, .. } => {
                target(plan, module).map(|t| t.pair_shape(t.rank))
            }
            AdapterSource::Peft(_) => None,
        }
    }

    /// The largest rank of any module (GGUF layout only).
    pub fn max_rank(&self) -> Option<usize> {
        self.modules()
            .iter()
            .filter_map(|m| self.pair_shape(m))
            .map(|s| s.rank as usize)
            .max()
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
                let a = gguf_tensor_f32(&file.path, map, ta)?;
                let b = gguf_tensor_f32(&file.path, map, tb)?;
                gguf_pair(&file.path, module, (&ta.ne, a), (&tb.ne, b), *alpha)
            }
            AdapterSource::Converted { adapter, plan, .. } => {
                let t = target(plan, module)
                    .ok_or_else(|| Error::Usage(format!("no module {module}")))?;
                let pool = BufPool::default();
                let (a, b) =
                    crate::convert::encode_target(adapter, t, GgmlType::F32, GgmlType::F32, &pool)?;
                let (ne_a, ne_b) = t.pair_shape(t.rank).factor_ne();
                let f32s = |bytes: &[u8]| {
                    let mut v = vec![0f32; bytes.len() / 4];
                    crate::matrix::decode_into(SourceDtype::F32, bytes, &mut v);
                    v
                };
                gguf_pair(
                    &adapter.weights_path,
                    module,
                    (&ne_a, f32s(&a)),
                    (&ne_b, f32s(&b)),
                    self.alpha(),
                )
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
