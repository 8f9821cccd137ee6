//! The header parser's caps and checks, each pinned on a hand-built header.

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
        self.kv.extend(t::STRING.to_le_bytes());
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
    v.extend(t::STRING.to_le_bytes());
    v.extend((1u64 << 20).to_le_bytes());
    fails(&Builder::new().kv_raw(&v), "runs past the end");
    // Arrays: too many elements, arrays of arrays, unknown types.
    let array = |ety: u32, n: u64| {
        let mut v = Vec::new();
        Builder::str(&mut v, "tokenizer.ggml.tokens");
        v.extend(t::ARRAY.to_le_bytes());
        v.extend(ety.to_le_bytes());
        v.extend(n.to_le_bytes());
        v
    };
    fails(
        &Builder::new().kv_raw(&array(t::STRING, MAX_ARRAY_ELEMENTS + 1)),
        "above the cap",
    );
    fails(
        &Builder::new().kv_raw(&array(t::ARRAY, 1)),
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
    let mut s = array(t::STRING, 1);
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

#[test]
fn strings_in_arrays_must_be_utf8_and_values_keep_their_types() {
    let mut v = Vec::new();
    Builder::str(&mut v, "tokens");
    v.extend(t::ARRAY.to_le_bytes());
    v.extend(t::STRING.to_le_bytes());
    v.extend(1u64.to_le_bytes());
    v.extend(2u64.to_le_bytes());
    v.extend([0xff, 0xfe]);
    fails(
        &Builder::new().kv_raw(&v),
        "a string in tokens is not UTF-8",
    );
    let s = Builder::new()
        .kv_u32("general.alignment", 64)
        .kv_str("general.architecture", "llama")
        .scan()
        .unwrap();
    assert_eq!(
        s.metadata,
        vec![
            ("general.alignment".to_string(), MetaValue::U32(64)),
            (
                "general.architecture".to_string(),
                MetaValue::Str("llama".into())
            ),
        ]
    );
}
