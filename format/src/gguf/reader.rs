//! A GGUF file's header, parsed by [`super::scan`]: typed metadata and the
//! tensor table, every tensor's type, size and range checked.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::types::GgmlType;
use super::value::MetaValue;
use crate::error::{Error, Result};

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
    pub metadata: BTreeMap<String, MetaValue>,
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
        let scanned = super::scan::scan(&mut file, file_size).map_err(bad)?;
        let data_offset = scanned.data_offset;
        let mut tensors = Vec::with_capacity(scanned.tensors.len());
        let mut index = HashMap::new();
        for t in scanned.tensors {
            let ty = GgmlType::from_id(t.type_id).ok_or_else(|| {
                bad(format!(
                    "tensor {} has unknown ggml type id {}",
                    t.name, t.type_id
                ))
            })?;
            let size = ty.tensor_bytes(&t.ne).ok_or_else(|| {
                bad(format!(
                    "tensor {} has a shape {:?} invalid for {ty}",
                    t.name, t.ne
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
                name: t.name,
                ty,
                ne: t.ne,
                offset,
                size,
            });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: scanned.version,
            metadata: scanned.metadata.into_iter().collect(),
            tensors,
            index,
            file_size,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|i| &self.tensors[*i])
    }

    /// The metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// A non-negative integer metadata value, of any integer type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    /// A numeric metadata value, integer or float.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
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
