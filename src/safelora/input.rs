//! The adapter being projected: a PEFT directory (HF names and layout) or a
//! GGUF LoRA (GGUF tensor names and layout, PEFT's scale folded into
//! alpha / rank and `lora_b`), seen as a list of modules with their factors.

use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::weights::{read_tensor_f32, GgufPlace};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::layout::{gguf_scale, PairShape};
use crate::linalg::f64_matrix;
use crate::peft::{PairKind, PeftAdapter};

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

/// A GGUF LoRA file.
#[derive(Debug)]
pub struct GgufLora {
    pub file: GgufFile,
    pub reader: File,
}

/// The adapter being projected.
#[derive(Debug)]
pub enum Input {
    Peft(Box<PeftAdapter>),
    Gguf(GgufLora),
}

impl GgufLora {
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        if !file.is_adapter() {
            return Err(Error::Usage(format!(
                "{} is a GGUF model, not a LoRA adapter",
                path.display()
            )));
        }
        let reader = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(GgufLora { file, reader })
    }

    fn tensor_f32(&self, name: &str) -> Result<(Vec<u64>, Vec<f32>)> {
        let t = self.file.tensor(name).ok_or_else(|| {
            Error::malformed(&self.file.path, "GGUF LoRA", format!("{name} is missing"))
        })?;
        Ok((t.ne.clone(), read_tensor_f32(&self.file, &self.reader, t)?))
    }

    /// Every lora_a/lora_b pair as a module in GGUF layout.
    fn modules(&self) -> Result<Vec<Module>> {
        let alpha = self.file.get_f64("adapter.lora.alpha");
        let mut out = Vec::new();
        for ta in &self.file.tensors {
            let Some(base) = ta.name.strip_suffix(".lora_a") else {
                continue;
            };
            let b_name = format!("{base}.lora_b");
            let tb = self.file.tensor(&b_name).ok_or_else(|| {
                Error::malformed(&self.file.path, "GGUF LoRA", format!("{b_name} is missing"))
            })?;
            let shape = PairShape::read(base, &ta.ne, &tb.ne).ok_or_else(|| Error::Shape {
                path: self.file.path.clone(),
                tensor: base.into(),
                reason: format!("lora_a {:?} and lora_b {:?} do not pair", ta.ne, tb.ne),
            })?;
            let embedding = shape.embedding;
            let (r, d_in, d_out) = (
                shape.rank as usize,
                shape.d_in as usize,
                shape.d_out as usize,
            );
            if r == 0 {
                return Err(crate::adapter::rank_zero(&self.file.path, base));
            }
            out.push(Module {
                name: base.to_string(),
                kind: if embedding {
                    PairKind::Embedding
                } else {
                    PairKind::Linear
                },
                d_out,
                d_in,
                scale: gguf_scale(alpha, r as u64)
                    .ok_or_else(|| crate::adapter::rank_zero(&self.file.path, base))?,
                b_tensor: b_name,
                place: Some(GgufPlace {
                    tensor: base.to_string(),
                    row_offset: 0,
                    rows: d_out,
                    permute_heads: None,
                }),
            });
        }
        Ok(out)
    }
}

impl Input {
    pub fn open(path: &Path) -> Result<Self> {
        if crate::peft::looks_like_peft(path) {
            let a = PeftAdapter::open(path)?;
            a.check_finite()?;
            return Ok(Input::Peft(Box::new(a)));
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(Input::Gguf(GgufLora::open(path)?));
        }
        Err(Error::Usage(format!(
            "{} is neither a PEFT adapter directory nor a GGUF LoRA",
            path.display()
        )))
    }

    pub fn path(&self) -> PathBuf {
        match self {
            Input::Peft(p) => p.dir.clone(),
            Input::Gguf(g) => g.file.path.clone(),
        }
    }

    /// The modules, without GGUF places for a PEFT adapter (those come from
    /// the convert plan against a GGUF model, see `super::gguf_places`).
    pub fn modules(&self) -> Result<Vec<Module>> {
        match self {
            Input::Peft(p) => Ok(p
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
                .collect()),
            Input::Gguf(g) => g.modules(),
        }
    }

    /// B (d_out×r) and A (r×d_in) of `m`, in the adapter's own layout.
    pub fn factors(&self, m: &Module) -> Result<(Array2<f64>, Array2<f64>)> {
        match self {
            Input::Peft(p) => {
                let pair = p
                    .pairs
                    .iter()
                    .find(|x| x.module == m.name)
                    .ok_or_else(|| Error::Internal(format!("no pair {}", m.name)))?;
                let (a, b) = (p.matrix(&pair.a)?, p.matrix(&pair.b)?);
                Ok((b.to_f64(), a.to_f64()))
            }
            Input::Gguf(g) => {
                let (nb, b) = g.tensor_f32(&m.b_tensor)?;
                let (na, a) = g.tensor_f32(&format!("{}.lora_a", m.name))?;
                let b = f64_matrix(nb[1] as usize, nb[0] as usize, &b);
                let a = f64_matrix(na[1] as usize, na[0] as usize, &a);
                let a = match m.kind {
                    PairKind::Linear => a,
                    PairKind::Embedding => a.reversed_axes().as_standard_layout().to_owned(),
                };
                Ok((b, a))
            }
        }
    }
}
