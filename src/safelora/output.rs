//! Writing a modified PEFT adapter directory, atomically: every file is
//! written into a fresh sibling directory, which is then renamed into place.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::atomic::{write_atomic, TEMP_PREFIX};
use crate::capped::read_capped;
use crate::error::{Error, Result};
use crate::peft::{PeftAdapter, CONFIG_NAME, MAX_CONFIG_BYTES, SAFETENSORS_NAME};

/// A replacement tensor, stored as F32.
struct F32Tensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// An original tensor or a replacement.
enum Out<'a> {
    Kept(safetensors::tensor::TensorView<'a>),
    Replaced(&'a F32Tensor),
}

impl View for &Out<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Out::Kept(t) => t.dtype(),
            Out::Replaced(t) => t.dtype(),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Out::Kept(t) => t.shape(),
            Out::Replaced(t) => t.shape.as_slice(),
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Out::Kept(t) => Cow::Borrowed(t.data()),
            Out::Replaced(t) => Cow::Borrowed(&t.bytes),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Out::Kept(t) => t.data().len(),
            Out::Replaced(t) => t.bytes.len(),
        }
    }
}

/// Refuse an output directory that exists and holds anything, before work starts.
pub fn check_output_dir(out: &Path) -> Result<()> {
    if out.is_file() {
        return Err(Error::Usage(format!(
            "{} is a file; a PEFT output is a directory (or name a .gguf file)",
            out.display()
        )));
    }
    if out.is_dir() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Usage(format!(
                "output directory {} exists and is not empty",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Removes a half-written directory unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Write `adapter` to the directory `out` with the tensors named in
/// `replaced` swapped for F32 copies of the given matrices; the config and
/// every other tensor are copied unchanged. `meta` is added to the
/// safetensors metadata.
pub fn write_peft_dir(
    adapter: &PeftAdapter,
    replaced: &HashMap<String, Array2<f32>>,
    meta: &BTreeMap<String, String>,
    out: &Path,
) -> Result<()> {
    check_output_dir(out)?;
    let src = adapter.file_bytes();
    let st = SafeTensors::deserialize(src)
        .map_err(|e| Error::malformed(&adapter.weights_path, "safetensors", e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(src)
        .map_err(|e| Error::malformed(&adapter.weights_path, "safetensors", e.to_string()))?;
    let owned: HashMap<&String, F32Tensor> = replaced
        .iter()
        .map(|(name, m)| {
            let bytes = m.iter().flat_map(|x| x.to_le_bytes()).collect();
            (
                name,
                F32Tensor {
                    shape: vec![m.nrows(), m.ncols()],
                    bytes,
                },
            )
        })
        .collect();
    let mut tensors: Vec<(String, Out)> = Vec::new();
    for (name, view) in st.tensors() {
        let t = match owned.get(&name) {
            Some(r) => Out::Replaced(r),
            None => Out::Kept(view),
        };
        tensors.push((name, t));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    metadata.extend(meta.iter().map(|(k, v)| (k.clone(), v.clone())));
    let bytes = safetensors::serialize(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        &Some(metadata),
    )
    .map_err(|e| Error::Internal(format!("serializing safetensors: {e}")))?;
    let config = read_capped(
        &adapter.dir.join(CONFIG_NAME),
        MAX_CONFIG_BYTES,
        "adapter_config.json",
    )?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = parent.join(format!("{TEMP_PREFIX}{}-{nanos}.tmp", std::process::id()));
    // create_dir gives the usual mode (0777 less the umask), unlike a temp dir.
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut guard = DirGuard(Some(tmp.clone()));
    write_atomic(&tmp.join(CONFIG_NAME), &config)?;
    write_atomic(&tmp.join(SAFETENSORS_NAME), &bytes)?;
    if out.is_dir() {
        // Empty (checked above): rename cannot replace it on every platform.
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    guard.0 = None;
    Ok(())
}
