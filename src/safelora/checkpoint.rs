//! A Hugging Face safetensors checkpoint as a source of full weights: one
//! file, or shards listed by `model.safetensors.index.json`. Each shard is
//! mapped only for the safetensors crate to validate its header; tensor
//! bytes are read with positioned reads.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use super::weights::{open_file, read_at, read_exact_at, Op, Scratch};
use crate::capped::read_text;
use crate::error::{Error, Result};
use crate::matrix::{decode_into, SourceDtype};

/// Largest shard index read.
const MAX_INDEX: u64 = 64 << 20;
const INDEX_NAME: &str = "model.safetensors.index.json";

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
    /// Whether the checkpoint holds tensor `name`.
    pub(super) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

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
    pub(super) fn matrix(&self, name: &str) -> Result<Option<Array2<f32>>> {
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
    pub(super) fn apply_into(
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
            Op::Subtract if scratch.v().len() != rows * cols => return Ok(Some((rows, cols))),
            Op::Subtract => {}
        }
        scratch.apply_bytes(op, e.dtype, n);
        Ok(Some((rows, cols)))
    }
}
