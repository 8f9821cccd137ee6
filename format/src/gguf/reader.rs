//! Reading GGUF headers through gguf-rs, behind loraguard's own bounds checks.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::types::GgmlType;
use crate::error::{Error, Result};

/// Tokenizer arrays are read but only this many elements are kept (we never
/// need the vocabulary itself, only its length via the embedding shape).
pub const MAX_GGUF_ARRAY_ELEMENTS: u64 = 64;

/// One tensor of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub ty: GgmlType,
    /// ggml `ne`, innermost dimension first.
    pub ne: Vec<u64>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<GgufTensor>,
    index: HashMap<String, usize>,
    pub file_size: u64,
}

impl GgufFile {
    /// Parse the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::malformed(path, "GGUF", reason);
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic)
            .map_err(|_| bad("file is shorter than the 4-byte magic".into()))?;
        if magic != super::GGUF_MAGIC {
            return Err(bad(format!("bad magic {magic:02x?}, not a GGUF file")));
        }
        // Every length capped and every range checked before gguf-rs, which
        // trusts them, reads the header.
        let scanned = super::scan::scan(&mut file, file_size).map_err(bad)?;
        file.seek(SeekFrom::Start(4))
            .map_err(|e| Error::io(path, e))?;
        let mut container = gguf_rs::GGUFContainer::new(
            gguf_rs::ByteOrder::LE,
            Box::new(BufReader::with_capacity(1 << 20, file)),
            MAX_GGUF_ARRAY_ELEMENTS,
        );
        let model = container
            .decode()
            .map_err(|e| bad(format!("header: {e}")))?;
        let version = match model.get_version().as_str() {
            "v1" => 1,
            "v2" => 2,
            _ => 3,
        };
        if version < 2 {
            return Err(bad("GGUF v1 is not supported".into()));
        }
        let data_offset = scanned.data_offset;
        if model.tensors().len() != scanned.tensors.len() {
            return Err(bad("tensor table read inconsistently".into()));
        }
        let mut tensors = Vec::with_capacity(model.tensors().len());
        let mut index = HashMap::new();
        for t in model.tensors() {
            let ty = GgmlType::from_id(t.kind).ok_or_else(|| {
                bad(format!(
                    "tensor {} has unknown ggml type id {}",
                    t.name, t.kind
                ))
            })?;
            let size = ty.tensor_bytes(&t.shape).ok_or_else(|| {
                bad(format!(
                    "tensor {} has a shape {:?} invalid for {ty}",
                    t.name, t.shape
                ))
            })?;
            let offset = data_offset
                .checked_add(t.offset)
                .filter(|o| o.checked_add(size).is_some_and(|end| end <= file_size))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor {} ({size} bytes at offset {}) runs past the end of the {file_size}-byte file",
                        t.name, t.offset
                    ))
                })?;
            if index.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(bad(format!("tensor {} appears twice", t.name)));
            }
            tensors.push(GgufTensor {
                name: t.name.clone(),
                ty,
                ne: t.shape.clone(),
                offset,
                size,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata: model.metadata().clone(),
            tensors,
            index,
            file_size,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|i| &self.tensors[*i])
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// An unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(Value::as_u64)
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata.get(key).and_then(Value::as_f64)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Is this file a LoRA adapter (`general.type = adapter`)?
    pub fn is_adapter(&self) -> bool {
        self.get_str("general.type") == Some("adapter")
    }
}
