//! A streaming GGUF v3 writer: offsets and padding are computed up front, then
//! each tensor's bytes are written once, in order.

use std::io::Write;

use super::types::GgmlType;
use super::value::{put_str, MetaValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};

/// A tensor to be written: its name, type and ggml `ne`.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub name: String,
    pub ty: GgmlType,
    pub ne: Vec<u64>,
}

impl TensorDesc {
    /// Bytes of data. Panics if the shape does not fit the type; descriptors
    /// are built by loraguard, which checks that first.
    pub fn bytes(&self) -> u64 {
        self.ty
            .tensor_bytes(&self.ne)
            .expect("tensor descriptors are validated before they reach the writer")
    }
}

/// Writes one GGUF file to any `Write`, streaming tensor data.
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<TensorDesc>,
    next: usize,
    written: u64,
    alignment: u64,
    /// Absolute offset of each string metadata value's bytes, for patching.
    string_offsets: Vec<(String, u64)>,
}

fn pad(n: u64, align: u64) -> u64 {
    (align - n % align) % align
}

impl<W: Write> GgufWriter<W> {
    /// Write the header (metadata and tensor infos, with offsets) and return a
    /// writer that expects the tensors' data in the same order.
    pub fn start(
        mut out: W,
        metadata: &[(String, MetaValue)],
        tensors: Vec<TensorDesc>,
    ) -> std::io::Result<Self> {
        let alignment = DEFAULT_ALIGNMENT;
        let mut head: Vec<u8> = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        let mut string_offsets = Vec::new();
        for (key, value) in metadata {
            put_str(&mut head, key);
            head.extend_from_slice(&value.type_id().to_le_bytes());
            if matches!(value, MetaValue::Str(_)) {
                string_offsets.push((key.clone(), head.len() as u64 + 8));
            }
            value.encode(&mut head);
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += t.bytes();
            offset += pad(offset, alignment);
        }
        let fill = pad(head.len() as u64, alignment) as usize;
        head.resize(head.len() + fill, 0);
        out.write_all(&head)?;
        Ok(GgufWriter {
            out,
            tensors,
            next: 0,
            written: 0,
            alignment,
            string_offsets,
        })
    }

    /// Absolute file offset of the bytes of string metadata value `key`, so a
    /// placeholder of the final length can be patched after streaming.
    pub fn string_value_offset(&self, key: &str) -> Option<u64> {
        self.string_offsets
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, o)| *o)
    }

    /// Write the next tensor's data, which must be exactly its size.
    pub fn write_tensor(&mut self, data: &[u8]) -> std::io::Result<()> {
        let t = self.tensors.get(self.next).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "more tensors written than declared",
            )
        })?;
        if data.len() as u64 != t.bytes() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "tensor {}: {} bytes given, {} declared",
                    t.name,
                    data.len(),
                    t.bytes()
                ),
            ));
        }
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        let fill = pad(self.written, self.alignment);
        if fill > 0 {
            self.out.write_all(&[0u8; 64][..fill as usize])?;
            self.written += fill;
        }
        self.next += 1;
        Ok(())
    }

    /// Check that every declared tensor was written and return the sink.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.next != self.tensors.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} tensors declared, {} written",
                    self.tensors.len(),
                    self.next
                ),
            ));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
