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

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use crate::arch::permuted_source_row;
use crate::capped::read_text;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, GgufTensor};
use crate::linalg::LowRank;
use crate::matrix::{decode_into, SourceDtype};
use crate::peft::{PairKind, PeftAdapter};

/// Largest shard index read.
const MAX_INDEX: u64 = 64 << 20;
const INDEX_NAME: &str = "model.safetensors.index.json";

/// Where one adapter module's weight lies in a GGUF model (from the convert plan).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufPlace {
    pub tensor: String,
    pub row_offset: usize,
    pub rows: usize,
    pub permute_heads: Option<usize>,
}

/// One tensor of a safetensors shard.
#[derive(Debug, Clone)]
struct Entry {
    shard: usize,
    dtype: SourceDtype,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// A Hugging Face safetensors checkpoint.
#[derive(Debug)]
pub struct HfCheckpoint {
    pub path: PathBuf,
    shards: Vec<(PathBuf, File)>,
    tensors: HashMap<String, Entry>,
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
fn read_exact_at(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
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
    fn set_len(&mut self, n: usize) {
        if self.buf.len() < n {
            self.buf.resize(n, 0.0);
        }
        self.len = n;
    }

    fn bytes(&mut self, n: usize) -> &mut [u8] {
        if self.bytes.len() < n {
            self.bytes.resize(n, 0);
        }
        &mut self.bytes[..n]
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

fn apply(op: Op, dtype: SourceDtype, bytes: &[u8], v: &mut [f32]) {
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

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

impl HfCheckpoint {
    /// A `.safetensors` file, an index JSON, or a directory holding either.
    pub fn open(path: &Path) -> Result<Self> {
        let (index, single) = if path.is_dir() {
            let idx = path.join(INDEX_NAME);
            if idx.is_file() {
                (Some(idx), None)
            } else {
                (None, Some(path.join("model.safetensors")))
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            (Some(path.to_path_buf()), None)
        } else {
            (None, Some(path.to_path_buf()))
        };
        let shard_paths: Vec<PathBuf> = match (index, single) {
            (Some(idx), _) => {
                let text = read_text(&idx, MAX_INDEX, "safetensors index")?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::malformed(&idx, "safetensors index", e.to_string()))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| {
                        Error::malformed(&idx, "safetensors index", "no weight_map object")
                    })?;
                let dir = idx.parent().unwrap_or(Path::new("."));
                let mut files: Vec<String> = map
                    .values()
                    .map(|f| {
                        f.as_str().map(String::from).ok_or_else(|| {
                            Error::malformed(
                                &idx,
                                "safetensors index",
                                "a weight_map value is not a file name",
                            )
                        })
                    })
                    .collect::<Result<_>>()?;
                files.sort();
                files.dedup();
                for f in &files {
                    if f.contains('/') || f.contains('\\') || f == ".." {
                        return Err(Error::malformed(
                            &idx,
                            "safetensors index",
                            format!("shard {f:?} is not a plain file name"),
                        ));
                    }
                }
                files.into_iter().map(|f| dir.join(f)).collect()
            }
            (None, Some(p)) => vec![p],
            (None, None) => unreachable!("one of the two is set"),
        };
        let mut shards = Vec::new();
        let mut tensors = HashMap::new();
        for (i, p) in shard_paths.iter().enumerate() {
            let file = open_file(p)?;
            let bad = |r: String| Error::malformed(p, "safetensors", r);
            // The safetensors crate validates the header (its length cap,
            // dtypes, shapes, contiguous in-bounds offsets) over a map of
            // the shard; only the header's pages are read. Data is read
            // later, one tensor at a time, with pread.
            let map = crate::mmap::map_file(p)?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                bad(match e {
                    SafeTensorError::InvalidOffset(t) => {
                        format!("tensor {t}: data_offsets do not fit the file")
                    }
                    e => format!("header: {e:?}"),
                })
            })?;
            let data_start = 8 + n as u64;
            for (name, info) in meta.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => SourceDtype::F32,
                    Dtype::F16 => SourceDtype::F16,
                    Dtype::BF16 => SourceDtype::BF16,
                    _ => continue, // integer buffers and the like: never a weight we read
                };
                let (s, e) = info.data_offsets;
                tensors.insert(
                    name,
                    Entry {
                        shard: i,
                        dtype,
                        shape: info.shape.clone(),
                        start: data_start + s as u64,
                        end: data_start + e as u64,
                    },
                );
            }
            shards.push((p.clone(), file));
        }
        Ok(HfCheckpoint {
            path: path.to_path_buf(),
            shards,
            tensors,
        })
    }

    /// Tensor `name`'s entry, checked to be a matrix of consistent size.
    fn entry(&self, name: &str) -> Result<Option<(&Entry, usize, usize)>> {
        let Some(e) = self.tensors.get(name) else {
            return Ok(None);
        };
        let path = &self.shards[e.shard].0;
        let [rows, cols] = e.shape[..] else {
            return Err(Error::Shape {
                path: path.clone(),
                tensor: name.into(),
                reason: format!("expected a matrix, found shape {:?}", e.shape),
            });
        };
        let want = rows
            .checked_mul(cols)
            .and_then(|x| x.checked_mul(e.dtype.size()));
        if want != Some((e.end - e.start) as usize) {
            return Err(Error::malformed(
                path,
                "safetensors",
                format!("tensor {name}: size disagrees with its shape"),
            ));
        }
        Ok(Some((e, rows, cols)))
    }

    /// The f32 matrix of tensor `name`, as stored (rows × cols).
    fn matrix(&self, name: &str) -> Result<Option<Array2<f32>>> {
        let Some((e, rows, cols)) = self.entry(name)? else {
            return Ok(None);
        };
        let (path, file) = &self.shards[e.shard];
        let bytes = read_at(file, path, e.start, e.end - e.start)?;
        let mut data = vec![0f32; rows * cols];
        decode_into(e.dtype, &bytes, &mut data);
        Ok(Some(
            Array2::from_shape_vec((rows, cols), data).expect("size checked"),
        ))
    }

    /// Tensor `name` applied into `scratch.v` (rows × cols, as stored),
    /// through the reusable byte buffer.
    fn apply_into(
        &self,
        name: &str,
        scratch: &mut Scratch,
        op: Op,
    ) -> Result<Option<(usize, usize)>> {
        let Some((e, rows, cols)) = self.entry(name)? else {
            return Ok(None);
        };
        let (path, file) = &self.shards[e.shard];
        let n = (e.end - e.start) as usize;
        read_exact_at(file, path, e.start, scratch.bytes(n))?;
        match op {
            Op::Set => scratch.set_len(rows * cols),
            Op::Subtract if scratch.len != rows * cols => return Ok(Some((rows, cols))),
            Op::Subtract => {}
        }
        let Scratch {
            bytes, buf, len, ..
        } = scratch;
        apply(op, e.dtype, &bytes[..n], &mut buf[..*len]);
        Ok(Some((rows, cols)))
    }
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
            Weights::Hf(h) => h.tensors.contains_key(&format!("{module}.weight")),
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
