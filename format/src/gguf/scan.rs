//! loraguard's one GGUF header parser: metadata (typed) and tensor table.
//!
//! Every length read here has a cap (a named constant saying where its
//! number comes from), every read is bounded by the header and the file
//! before anything is allocated, and the tensor table is checked as a whole:
//! offsets aligned, data ranges inside the file and not overlapping.

use std::io::{BufReader, Read, Seek, SeekFrom};

use super::value::{type_id as t, MetaArray, MetaValue};

/// Largest header read (metadata and tensor table). Real headers are
/// dominated by the tokenizer: Gemma 3's 262k-token vocabulary with scores
/// and types makes about 10 MiB.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;
/// Most metadata keys. llama.cpp's converters write fewer than 100.
pub const MAX_KV: u64 = 1 << 16;
/// Most tensors in one file. Large MoE models stay below 10⁴ per file
/// (experts are stacked into one tensor per layer).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Longest metadata key or string value (chat templates are the longest,
/// tens of KiB).
pub const MAX_STRING_BYTES: u64 = 16 << 20;
/// Longest tensor name: ggml's `GGML_MAX_NAME` is 64 bytes with the NUL.
pub const MAX_TENSOR_NAME_BYTES: u64 = 63;
/// Most elements in one metadata array (a vocabulary's tokens or merges:
/// at most a few hundred thousand).
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
/// Tensor dimensions: ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Largest `general.alignment` accepted (ggml writes 32; any power of two
/// is valid).
pub const MAX_ALIGNMENT: u64 = 1 << 20;

/// Byte size of a fixed-size GGUF value type, or None for string, array
/// and unknown types.
fn scalar_size(ty: u32) -> Option<u64> {
    Some(match ty {
        t::U8 | t::I8 | t::BOOL => 1,
        t::U16 | t::I16 => 2,
        t::U32 | t::I32 | t::F32 => 4,
        t::U64 | t::I64 | t::F64 => 8,
        _ => return None,
    })
}

/// A fixed-size value of type `ty` from its `scalar_size(ty)` bytes.
fn scalar(ty: u32, b: &[u8]) -> Option<MetaValue> {
    fn w<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
        b.get(..N)?.try_into().ok()
    }
    Some(match ty {
        t::U8 => MetaValue::U8(*b.first()?),
        t::I8 => MetaValue::I8(i8::from_le_bytes(w(b)?)),
        t::BOOL => MetaValue::Bool(*b.first()? != 0),
        t::U16 => MetaValue::U16(u16::from_le_bytes(w(b)?)),
        t::I16 => MetaValue::I16(i16::from_le_bytes(w(b)?)),
        t::U32 => MetaValue::U32(u32::from_le_bytes(w(b)?)),
        t::I32 => MetaValue::I32(i32::from_le_bytes(w(b)?)),
        t::F32 => MetaValue::F32(f32::from_le_bytes(w(b)?)),
        t::U64 => MetaValue::U64(u64::from_le_bytes(w(b)?)),
        t::I64 => MetaValue::I64(i64::from_le_bytes(w(b)?)),
        t::F64 => MetaValue::F64(f64::from_le_bytes(w(b)?)),
        _ => return None,
    })
}

/// The `N`-byte elements of `b`, each converted by `f`.
fn elements<T, const N: usize>(b: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    b.chunks_exact(N)
        .map(|c| f(c.try_into().expect("N bytes")))
        .collect()
}

/// One tensor's entry in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub type_id: u32,
    /// Relative to the data section.
    pub offset: u64,
}

/// What the walk found.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanned {
    pub version: u32,
    /// The metadata, typed, in file order.
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<ScannedTensor>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

struct Cursor<R> {
    r: BufReader<R>,
    pos: u64,
    limit: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, String> {
        if n > self.limit.saturating_sub(self.pos) {
            return Err(format!(
                "{what} ({n} bytes at offset {}) runs past the end of the header or file",
                self.pos
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| format!("reading {what} at offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(v)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// An array value (after its type id): element type, count, elements;
    /// every count capped, every byte bounded by the header before it is
    /// allocated.
    fn array(&mut self, key: &str, what: &str) -> Result<MetaArray, String> {
        let ety = self.u32(what)?;
        let n = self.u64(what)?;
        if n > MAX_ARRAY_ELEMENTS {
            return Err(format!(
                "{key} holds {n} elements, above the cap of {MAX_ARRAY_ELEMENTS}"
            ));
        }
        if ety == t::STRING {
            // Each string takes at least its 8-byte length.
            let room = self.limit.saturating_sub(self.pos) / 8;
            let mut v = Vec::with_capacity(n.min(room) as usize);
            for _ in 0..n {
                let len = self.u64(what)?;
                if len > MAX_STRING_BYTES {
                    return Err(format!(
                        "a string in {key} is {len} bytes long, above the cap of {MAX_STRING_BYTES}"
                    ));
                }
                let b = self.bytes(len, what)?;
                v.push(
                    String::from_utf8(b).map_err(|_| format!("a string in {key} is not UTF-8"))?,
                );
            }
            return Ok(MetaArray::Str(v));
        }
        let size = match (ety, scalar_size(ety)) {
            (_, Some(size)) => size,
            (t::ARRAY, _) => return Err(format!("{key} is an array of arrays")),
            _ => return Err(format!("{key} has unknown array element type {ety}")),
        };
        let b = self.bytes(n * size, what)?;
        Ok(match ety {
            t::U8 => MetaArray::U8(b),
            t::I8 => MetaArray::I8(b.iter().map(|&x| x as i8).collect()),
            t::BOOL => MetaArray::Bool(b.iter().map(|&x| x != 0).collect()),
            t::U16 => MetaArray::U16(elements(&b, u16::from_le_bytes)),
            t::I16 => MetaArray::I16(elements(&b, i16::from_le_bytes)),
            t::U32 => MetaArray::U32(elements(&b, u32::from_le_bytes)),
            t::I32 => MetaArray::I32(elements(&b, i32::from_le_bytes)),
            t::F32 => MetaArray::F32(elements(&b, f32::from_le_bytes)),
            t::U64 => MetaArray::U64(elements(&b, u64::from_le_bytes)),
            t::I64 => MetaArray::I64(elements(&b, i64::from_le_bytes)),
            _ => MetaArray::F64(elements(&b, f64::from_le_bytes)),
        })
    }
    /// A length-prefixed string of at most `cap` bytes.
    fn string(&mut self, cap: u64, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        if n > cap {
            return Err(format!("{what} is {n} bytes long, above the cap of {cap}"));
        }
        String::from_utf8(self.bytes(n, what)?).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// Walk the header of a GGUF file of `file_size` bytes read from `r`
/// (positioned at its start). Errors say which cap or check failed.
pub fn scan<R: Read + Seek>(r: R, file_size: u64) -> Result<Scanned, String> {
    let mut c = Cursor {
        r: BufReader::with_capacity(1 << 16, r),
        pos: 0,
        limit: file_size.min(MAX_HEADER_BYTES),
    };
    c.r.seek(SeekFrom::Start(0))
        .map_err(|e| format!("seek: {e}"))?;
    if c.bytes(4, "magic")? != super::GGUF_MAGIC {
        return Err("bad magic, not a GGUF file".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    let n_tensors = c.u64("tensor count")?;
    if n_tensors > MAX_TENSORS {
        return Err(format!(
            "{n_tensors} tensors declared, above the cap of {MAX_TENSORS}"
        ));
    }
    let n_kv = c.u64("metadata count")?;
    if n_kv > MAX_KV {
        return Err(format!(
            "{n_kv} metadata keys declared, above the cap of {MAX_KV}"
        ));
    }
    let mut alignment = super::DEFAULT_ALIGNMENT;
    let mut metadata = Vec::with_capacity(n_kv.min(1 << 10) as usize);
    let mut keys = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = c.string(MAX_STRING_BYTES, "metadata key")?;
        let ty = c.u32("metadata type")?;
        let what = format!("value of {key}");
        let value = match ty {
            t::STRING => MetaValue::Str(c.string(MAX_STRING_BYTES, &what)?),
            t::ARRAY => MetaValue::Array(c.array(&key, &what)?),
            _ => {
                let size = scalar_size(ty)
                    .ok_or_else(|| format!("{key} has unknown metadata type {ty}"))?;
                let v = c.bytes(size, &what)?;
                scalar(ty, &v).ok_or_else(|| format!("{key} has unknown metadata type {ty}"))?
            }
        };
        if key == "general.alignment" {
            let MetaValue::U32(a) = value else {
                return Err("general.alignment is not a u32".into());
            };
            let a = u64::from(a);
            if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                return Err(format!(
                    "general.alignment {a} is not a power of two up to {MAX_ALIGNMENT}"
                ));
            }
            alignment = a;
        }
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key {key} appears twice"));
        }
        metadata.push((key, value));
    }
    let mut tensors = Vec::with_capacity(n_tensors.min(1 << 12) as usize);
    for _ in 0..n_tensors {
        let name = c.string(MAX_TENSOR_NAME_BYTES, "tensor name")?;
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64("tensor dimension")?);
        }
        let type_id = c.u32("tensor type")?;
        let offset = c.u64("tensor offset")?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name}'s offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        tensors.push(ScannedTensor {
            name,
            ne,
            type_id,
            offset,
        });
    }
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    check_ranges(&tensors, data_offset, file_size)?;
    Ok(Scanned {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Every tensor's data lies inside the file, and no two overlap.
fn check_ranges(tensors: &[ScannedTensor], data_offset: u64, file_size: u64) -> Result<(), String> {
    let avail = file_size.saturating_sub(data_offset);
    let mut ranges = Vec::with_capacity(tensors.len());
    let mut total: u64 = 0;
    for t in tensors {
        let ty = super::GgmlType::from_id(t.type_id)
            .ok_or_else(|| format!("tensor {} has unknown ggml type id {}", t.name, t.type_id))?;
        let size = ty.tensor_bytes(&t.ne).ok_or_else(|| {
            format!(
                "tensor {} has a shape {:?} invalid for {ty} (rows not whole blocks, or too large)",
                t.name, t.ne
            )
        })?;
        let end = t
            .offset
            .checked_add(size)
            .filter(|e| *e <= avail)
            .ok_or_else(|| {
                format!(
                    "tensor {} ({size} bytes at data offset {}) runs past the end of the {file_size}-byte file",
                    t.name, t.offset
                )
            })?;
        total = total.saturating_add(size);
        ranges.push((t.offset, end, &t.name));
    }
    if total > avail {
        return Err(format!(
            "the tensors declare {total} bytes of data; the file holds {avail}"
        ));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        let ((_, end_a, a), (start_b, _, b)) = (&w[0], &w[1]);
        if start_b < end_a {
            return Err(format!("tensors {a} and {b} overlap"));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
