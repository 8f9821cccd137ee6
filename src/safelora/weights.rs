//! The unaligned and aligned models' weights, read one module at a time.
//!
//! Three sources: a GGUF model (any ggml type, dequantized by ggml), a
//! Hugging Face safetensors checkpoint (one file, or shards listed by
//! `model.safetensors.index.json`), or a PEFT adapter standing for
//! "base + this adapter merged" (its ΔW, kept low-rank). Tensor bytes are
//! read with positioned reads into buffers (a safetensors shard is mapped
//! only for the safetensors crate to validate its header): resident memory
//! stays at the modules in flight, whatever the model's size.
//!
//! Every matrix is returned in the adapter's (Hugging Face) layout and in
//! B·A orientation, d_out×d_in: GGUF rows permuted by llama.cpp's converter
//! (llama Q/K) are put back, fused GGUF tensors (phi3) give their row block,
//! and embeddings (stored vocab×width) are transposed.

use std::fs::File;
use std::path::Path;

use ndarray::Array2;

pub use super::checkpoint::HfCheckpoint;
use crate::arch::permuted_source_row;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, GgufTensor};
use crate::linalg::LowRank;
use crate::matrix::{decode_into, SourceDtype};
use crate::peft::{PairKind, PeftAdapter};

/// Where one adapter module's weight lies in a GGUF model (from the convert plan).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufPlace {
    pub tensor: String,
    pub row_offset: usize,
    pub rows: usize,
    pub permute_heads: Option<usize>,
}

/// A source of full weights.
#[derive(Debug)]
pub enum Weights {
    Gguf { file: GgufFile, reader: File },
    Hf(HfCheckpoint),
    Peft(Box<PeftAdapter>),
}

/// `len` bytes of `file` at `offset`.
pub(super) fn read_at(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| Error::malformed(path, "tensor", "too large"))?;
    let mut buf = vec![0u8; len];
    read_exact_at(file, path, offset, &mut buf)?;
    Ok(buf)
}

/// Fill `buf` from `file` at `offset`.
pub(super) fn read_exact_at(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .seek_read(&mut buf[done..], offset + done as u64)
                .map_err(|e| Error::io(path, e))?;
            if n == 0 {
                return Err(Error::malformed(
                    path,
                    "tensor",
                    "file ends inside a tensor",
                ));
            }
            done += n;
        }
    }
    Ok(())
}

/// A worker's reusable buffers: big allocations freed after every module
/// would be returned to the OS and page-faulted in again for the next one
/// (that cost more system time than all the arithmetic).
/// Both only ever grow: shrinking and regrowing would zero-fill again.
#[derive(Debug, Default)]
pub struct Scratch {
    bytes: Vec<u8>,
    buf: Vec<f32>,
    /// Elements of `buf` in use.
    len: usize,
}

impl Scratch {
    /// The module's V (or a weight on its way to V), row-major.
    pub fn v(&self) -> &[f32] {
        &self.buf[..self.len]
    }

    fn v_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }

    /// Make `v` hold `n` elements (contents unspecified until set).
    pub(super) fn set_len(&mut self, n: usize) {
        if self.buf.len() < n {
            self.buf.resize(n, 0.0);
        }
        self.len = n;
    }

    pub(super) fn bytes(&mut self, n: usize) -> &mut [u8] {
        if self.bytes.len() < n {
            self.bytes.resize(n, 0);
        }
        &mut self.bytes[..n]
    }

    /// Apply the first `n` bytes read into [`Scratch::bytes`], of `dtype`, to `v`.
    pub(super) fn apply_bytes(&mut self, op: Op, dtype: SourceDtype, n: usize) {
        apply(op, dtype, &self.bytes[..n], &mut self.buf[..self.len]);
    }
}

/// How a weight enters [`Scratch::v`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Set,
    Subtract,
}

/// Elements decoded per step when subtracting.
const CHUNK: usize = 4096;

pub(super) fn apply(op: Op, dtype: SourceDtype, bytes: &[u8], v: &mut [f32]) {
    match op {
        Op::Set => decode_into(dtype, bytes, v),
        Op::Subtract => {
            let mut tmp = [0f32; CHUNK];
            for (b, out) in bytes.chunks(CHUNK * dtype.size()).zip(v.chunks_mut(CHUNK)) {
                let t = &mut tmp[..out.len()];
                decode_into(dtype, b, t);
                out.iter_mut().zip(t.iter()).for_each(|(o, x)| *o -= x);
            }
        }
    }
}

/// A GGUF tensor (any ggml type) decoded to f32 by ggml, read from `reader`.
/// `GgufFile::open` has checked that it lies inside the file.
pub(super) fn read_tensor_f32(file: &GgufFile, reader: &File, t: &GgufTensor) -> Result<Vec<f32>> {
    let bytes = read_at(reader, &file.path, t.offset, t.size)?;
    let n: u64 = t.ne.iter().product();
    Ok(loraguard_llama::ggml::dequantize(
        t.ty.id(),
        &bytes,
        n as usize,
    )?)
}

pub(super) fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

impl Weights {
    /// Open `path` as a GGUF model, a safetensors checkpoint or a PEFT adapter.
    pub fn open(path: &Path) -> Result<Self> {
        if crate::peft::looks_like_peft(path) {
            return Ok(Weights::Peft(Box::new(PeftAdapter::open(path)?)));
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let file = GgufFile::open(path)?;
            if file.is_adapter() {
                return Err(Error::Usage(format!(
                    "{} is a GGUF LoRA adapter, not model weights (a safety adapter can be given as a PEFT directory)",
                    path.display()
                )));
            }
            return Ok(Weights::Gguf {
                reader: open_file(path)?,
                file,
            });
        }
        Ok(Weights::Hf(HfCheckpoint::open(path)?))
    }

    pub fn path(&self) -> &Path {
        match self {
            Weights::Gguf { file, .. } => &file.path,
            Weights::Hf(h) => &h.path,
            Weights::Peft(p) => &p.dir,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Weights::Gguf { .. } => "GGUF",
            Weights::Hf(_) => "safetensors",
            Weights::Peft(_) => "PEFT adapter",
        }
    }

    /// The ggml type of the module's GGUF tensor (None for other sources).
    pub fn gguf_type(&self, place: Option<&GgufPlace>) -> Option<GgmlType> {
        match (self, place) {
            (Weights::Gguf { file, .. }, Some(p)) => file.tensor(&p.tensor).map(|t| t.ty),
            _ => None,
        }
    }

    /// The dense weight of HF `module` (kind `kind`) in B·A orientation and
    /// HF layout; `place` locates it in a GGUF. `Ok(None)` when absent.
    pub fn dense(
        &self,
        module: &str,
        kind: PairKind,
        place: Option<&GgufPlace>,
    ) -> Result<Option<Array2<f32>>> {
        let m = match self {
            Weights::Hf(h) => h.matrix(&format!("{module}.weight"))?,
            Weights::Gguf { file, reader } => {
                let Some(p) = place else {
                    return Ok(None);
                };
                let Some(t) = file.tensor(&p.tensor) else {
                    return Ok(None);
                };
                let [ne0, ne1] = t.ne[..] else {
                    return Err(Error::Shape {
                        path: file.path.clone(),
                        tensor: t.name.clone(),
                        reason: format!("expected a matrix, found ne {:?}", t.ne),
                    });
                };
                let (cols, rows) = (ne0 as usize, ne1 as usize);
                let all = read_tensor_f32(file, reader, t)?;
                let all = Array2::from_shape_vec((rows, cols), all).expect("size checked");
                if kind == PairKind::Embedding {
                    Some(all)
                } else {
                    if p.row_offset + p.rows > rows {
                        return Err(Error::Shape {
                            path: file.path.clone(),
                            tensor: t.name.clone(),
                            reason: format!(
                                "rows {}..{} of {rows}",
                                p.row_offset,
                                p.row_offset + p.rows
                            ),
                        });
                    }
                    let block = all.slice(ndarray::s![p.row_offset..p.row_offset + p.rows, ..]);
                    Some(match p.permute_heads {
                        None => block.to_owned(),
                        Some(h) => {
                            // GGUF row i holds HF row permuted_source_row(i).
                            let mut out = Array2::<f32>::zeros(block.dim());
                            for (i, row) in block.rows().into_iter().enumerate() {
                                out.row_mut(permuted_source_row(i, p.rows, h)).assign(&row);
                            }
                            out
                        }
                    })
                }
            }
            Weights::Peft(_) => return Ok(None),
        };
        Ok(m.map(|m| match kind {
            PairKind::Linear => m,
            // Stored vocab×width; B·A is width×vocab.
            PairKind::Embedding => m.reversed_axes().as_standard_layout().to_owned(),
        }))
    }

    /// Does this source hold a weight for `module` (located by `place` in a GGUF)?
    pub fn has(&self, module: &str, place: Option<&GgufPlace>) -> bool {
        match self {
            Weights::Hf(h) => h.has(&format!("{module}.weight")),
            Weights::Gguf { file, .. } => place.is_some_and(|p| file.tensor(&p.tensor).is_some()),
            Weights::Peft(p) => p.pairs.iter().any(|x| x.module == module),
        }
    }

    /// The module's weight (as [`Weights::dense`] returns it) set into or
    /// subtracted from `scratch.v`; its shape, or `None` when absent.
    pub fn apply_into(
        &self,
        module: &str,
        kind: PairKind,
        place: Option<&GgufPlace>,
        scratch: &mut Scratch,
        op: Op,
    ) -> Result<Option<(usize, usize)>> {
        if let (Weights::Hf(h), PairKind::Linear) = (self, kind) {
            return h.apply_into(&format!("{module}.weight"), scratch, op);
        }
        let Some(m) = self.dense(module, kind, place)? else {
            return Ok(None);
        };
        let m = m.as_standard_layout();
        let data = m.as_slice().expect("standard layout");
        match op {
            Op::Set => {
                scratch.set_len(data.len());
                scratch.v_mut().copy_from_slice(data);
            }
            // A shape mismatch is reported by the caller from the shape.
            Op::Subtract if scratch.len != data.len() => {}
            Op::Subtract => scratch
                .v_mut()
                .iter_mut()
                .zip(data)
                .for_each(|(o, x)| *o -= x),
        }
        Ok(Some(m.dim()))
    }

    /// For a PEFT source: its ΔW for `module` (B·A orientation), if it has one.
    pub fn low_rank(&self, module: &str) -> Result<Option<LowRank>> {
        let Weights::Peft(p) = self else {
            return Ok(None);
        };
        let Some(pair) = p.pairs.iter().find(|x| x.module == module) else {
            return Ok(None);
        };
        let (a, b) = (p.matrix(&pair.a)?, p.matrix(&pair.b)?);
        Ok(Some(LowRank::new(b.to_f64(), a.to_f64(), pair.scale.scale)))
    }
}
