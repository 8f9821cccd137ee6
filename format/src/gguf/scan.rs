//! A bounded walk over a GGUF header, before gguf-rs parses it.
//!
//! gguf-rs trusts the lengths it reads: a string or array length of 2⁶⁰
//! becomes an allocation of that size, and tensor offsets are not checked
//! against each other. Every length read here has a cap (a named constant
//! saying where its number comes from), every read is bounded by the file,
//! and the tensor table is checked as a whole: offsets aligned, data ranges
//! inside the file and not overlapping. Only a header that passes is handed
//! to gguf-rs.

use std::io::{BufReader, Read, Seek, SeekFrom};

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

/// GGUF metadata value types.
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// Byte size of a fixed-size GGUF value type, or None for string, array
/// and unknown types.
fn scalar_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
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
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        if n > self.limit.saturating_sub(self.pos) {
            return Err(format!(
                "{what} ({n} bytes at offset {}) runs past the end of the header or file",
                self.pos
            ));
        }
        std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| format!("reading {what} at offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(())
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
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
    let mut keys = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = c.string(MAX_STRING_BYTES, "metadata key")?;
        let ty = c.u32("metadata type")?;
        let what = format!("value of {key}");
        match ty {
            TYPE_STRING => {
                c.string(MAX_STRING_BYTES, &what)?;
            }
            TYPE_ARRAY => {
                let ety = c.u32(&what)?;
                let n = c.u64(&what)?;
                if n > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "{key} holds {n} elements, above the cap of {MAX_ARRAY_ELEMENTS}"
                    ));
                }
                match (ety, scalar_size(ety)) {
                    (TYPE_STRING, _) => {
                        for _ in 0..n {
                            let len = c.u64(&what)?;
                            if len > MAX_STRING_BYTES {
                                return Err(format!(
                                    "a string in {key} is {len} bytes long, above the cap of {MAX_STRING_BYTES}"
                                ));
                            }
                            c.skip(len, &what)?;
                        }
                    }
                    (_, Some(size)) => c.skip(n * size, &what)?,
                    (TYPE_ARRAY, _) => return Err(format!("{key} is an array of arrays")),
                    _ => return Err(format!("{key} has unknown array element type {ety}")),
                }
            }
            _ => {
                let size = scalar_size(ty)
                    .ok_or_else(|| format!("{key} has unknown metadata type {ty}"))?;
                let v = c.bytes(size, &what)?;
                if key == "general.alignment" {
                    if ty != 4 {
                        return Err("general.alignment is not a u32".into());
                    }
                    let a = u64::from(u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
                    if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                        return Err(format!(
                            "general.alignment {a} is not a power of two up to {MAX_ALIGNMENT}"
                        ));
                    }
                    alignment = a;
                }
            }
        }
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key {key} appears twice"));
        }
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
mod tests {
    use super::*;

    /// A GGUF built byte by byte.
    #[derive(Clone)]
    struct Builder {
        version: u32,
        n_tensors: Option<u64>,
        n_kv: Option<u64>,
        kv: Vec<u8>,
        kv_count: u64,
        tensors: Vec<u8>,
        tensor_count: u64,
        data: u64,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                version: 3,
                n_tensors: None,
                n_kv: None,
                kv: Vec::new(),
                kv_count: 0,
                tensors: Vec::new(),
                tensor_count: 0,
                data: 0,
            }
        }
        fn str(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn kv_str(mut self, k: &str, v: &str) -> Self {
            Self::str(&mut self.kv, k);
            self.kv.extend(TYPE_STRING.to_le_bytes());
            Self::str(&mut self.kv, v);
            self.kv_count += 1;
            self
        }
        fn kv_u32(mut self, k: &str, v: u32) -> Self {
            Self::str(&mut self.kv, k);
            self.kv.extend(4u32.to_le_bytes());
            self.kv.extend(v.to_le_bytes());
            self.kv_count += 1;
            self
        }
        fn kv_raw(mut self, bytes: &[u8]) -> Self {
            self.kv.extend(bytes);
            self.kv_count += 1;
            self
        }
        /// An F32 tensor of `ne` at data offset `offset`.
        fn tensor(mut self, name: &str, ne: &[u64], offset: u64) -> Self {
            Self::str(&mut self.tensors, name);
            self.tensors.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                self.tensors.extend(d.to_le_bytes());
            }
            self.tensors.extend(0u32.to_le_bytes());
            self.tensors.extend(offset.to_le_bytes());
            self.tensor_count += 1;
            self
        }
        fn data(mut self, bytes: u64) -> Self {
            self.data = bytes;
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend(self.n_tensors.unwrap_or(self.tensor_count).to_le_bytes());
            out.extend(self.n_kv.unwrap_or(self.kv_count).to_le_bytes());
            out.extend(&self.kv);
            out.extend(&self.tensors);
            while out.len() % 32 != 0 {
                out.push(0);
            }
            out.extend(std::iter::repeat_n(0u8, self.data as usize));
            out
        }
        fn scan(&self) -> Result<Scanned, String> {
            let b = self.bytes();
            scan(std::io::Cursor::new(&b), b.len() as u64)
        }
    }

    fn fails(b: &Builder, needle: &str) {
        match b.scan() {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => assert!(e.contains(needle), "{e:?} does not say {needle:?}"),
        }
    }

    #[test]
    fn a_well_formed_header_passes() {
        let s = Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("general.alignment", 64)
            .tensor("a", &[4, 2], 0)
            .tensor("b", &[16], 64)
            .data(128)
            .scan()
            .unwrap();
        assert_eq!(s.alignment, 64);
        assert_eq!(s.tensors.len(), 2);
        assert_eq!(s.tensors[1].ne, vec![16]);
        assert_eq!(s.data_offset % 64, 0);
    }

    #[test]
    fn counts_above_their_caps_are_refused_before_anything_is_allocated() {
        let mut b = Builder::new();
        b.n_tensors = Some(u64::MAX);
        fails(&b, "above the cap");
        let mut b = Builder::new();
        b.n_kv = Some(MAX_KV + 1);
        fails(&b, "above the cap");
        // A declared count the file cannot hold runs out of bytes.
        let mut b = Builder::new();
        b.n_kv = Some(1000);
        fails(&b, "runs past the end");
    }

    #[test]
    fn string_and_array_lengths_are_capped() {
        let mut huge = Vec::new();
        huge.extend(u64::MAX.to_le_bytes());
        fails(
            &Builder::new().kv_raw(&huge),
            "metadata key is 18446744073709551615 bytes long",
        );
        // A value string longer than the file.
        let mut v = Vec::new();
        Builder::str(&mut v, "k");
        v.extend(TYPE_STRING.to_le_bytes());
        v.extend((1u64 << 20).to_le_bytes());
        fails(&Builder::new().kv_raw(&v), "runs past the end");
        // Arrays: too many elements, arrays of arrays, unknown types.
        let array = |ety: u32, n: u64| {
            let mut v = Vec::new();
            Builder::str(&mut v, "tokenizer.ggml.tokens");
            v.extend(TYPE_ARRAY.to_le_bytes());
            v.extend(ety.to_le_bytes());
            v.extend(n.to_le_bytes());
            v
        };
        fails(
            &Builder::new().kv_raw(&array(TYPE_STRING, MAX_ARRAY_ELEMENTS + 1)),
            "above the cap",
        );
        fails(
            &Builder::new().kv_raw(&array(TYPE_ARRAY, 1)),
            "array of arrays",
        );
        fails(
            &Builder::new().kv_raw(&array(99, 1)),
            "unknown array element type",
        );
        fails(
            &Builder::new().kv_raw(&array(6, 1 << 20)),
            "runs past the end",
        );
        let mut s = array(TYPE_STRING, 1);
        s.extend((MAX_STRING_BYTES + 1).to_le_bytes());
        fails(&Builder::new().kv_raw(&s), "above the cap");
        // Tensor names beyond ggml's limit.
        fails(
            &Builder::new().tensor(&"x".repeat(64), &[4], 0).data(32),
            "above the cap of 63",
        );
    }

    #[test]
    fn tensor_shapes_and_data_ranges_are_checked() {
        fails(
            &Builder::new().tensor("t", &[1, 1, 1, 1, 1], 0).data(32),
            "5 dimensions",
        );
        fails(&Builder::new().tensor("t", &[], 0), "0 dimensions");
        // Element count overflowing u64.
        fails(
            &Builder::new().tensor("t", &[u64::MAX, 2], 0),
            "invalid for F32",
        );
        // Data beyond the file, and more data declared than the file holds.
        fails(
            &Builder::new().tensor("t", &[64], 0).data(128),
            "runs past the end",
        );
        fails(
            &Builder::new().tensor("t", &[8], u64::MAX - 31).data(64),
            "runs past the end",
        );
        // Overlapping tensors, in either order.
        let b = Builder::new()
            .tensor("a", &[16], 0)
            .tensor("b", &[16], 32)
            .data(128);
        fails(&b, "overlap");
        let b = Builder::new()
            .tensor("b", &[16], 32)
            .tensor("a", &[16], 0)
            .data(128);
        fails(&b, "overlap");
    }

    #[test]
    fn alignment_and_offsets_are_checked() {
        fails(
            &Builder::new().kv_u32("general.alignment", 3),
            "not a power of two",
        );
        fails(
            &Builder::new().kv_u32("general.alignment", 0),
            "not a power of two",
        );
        fails(
            &Builder::new().kv_u32("general.alignment", 1 << 30),
            "not a power of two",
        );
        fails(
            &Builder::new().tensor("t", &[4], 8).data(64),
            "not a multiple of the alignment 32",
        );
    }

    #[test]
    fn versions_keys_and_types_are_checked() {
        let mut b = Builder::new();
        b.version = 1;
        fails(&b, "version 1");
        b.version = 4;
        fails(&b, "version 4");
        let dup = Builder::new().kv_u32("k", 1).kv_u32("k", 2);
        fails(&dup, "appears twice");
        let mut v = Vec::new();
        Builder::str(&mut v, "k");
        v.extend(77u32.to_le_bytes());
        fails(&Builder::new().kv_raw(&v), "unknown metadata type 77");
        // Truncated anywhere: every prefix of a good file is refused, never
        // a panic.
        let good = Builder::new()
            .kv_str("general.architecture", "llama")
            .tensor("a", &[8], 0)
            .data(32)
            .bytes();
        for n in 0..good.len() - 1 {
            assert!(
                scan(std::io::Cursor::new(&good[..n]), n as u64).is_err(),
                "prefix {n}"
            );
        }
    }
}
