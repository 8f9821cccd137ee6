//! Writing a modified PEFT adapter directory, atomically: every file is
//! written into a fresh sibling directory, which is then renamed into place.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensors, View};

use std::io::Write;

use crate::atomic::{write_dir_atomic, AtomicFile};
use crate::capped::read_capped;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorDesc};
use crate::peft::write::F32Tensor;
use crate::peft::{PeftAdapter, CONFIG_NAME, MAX_CONFIG_BYTES, SAFETENSORS_NAME};
use crate::provenance;
use crate::quant::{encode_into, fits_f16};

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

pub use crate::atomic::check_output_dir;

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
    let (config, bytes) = peft_files(adapter, replaced, meta)?;
    write_dir_atomic(out, &[(CONFIG_NAME, &config), (SAFETENSORS_NAME, &bytes)])
}

/// [`write_peft_dir`]'s two files, in memory: `adapter_config.json` and
/// the safetensors bytes.
pub fn peft_files(
    adapter: &PeftAdapter,
    replaced: &HashMap<String, Array2<f32>>,
    meta: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let src = adapter.file_bytes();
    let st = SafeTensors::deserialize(src)
        .map_err(|e| Error::malformed(&adapter.weights_path, "safetensors", e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(src)
        .map_err(|e| Error::malformed(&adapter.weights_path, "safetensors", e.to_string()))?;
    let owned: HashMap<&String, F32Tensor> = replaced
        .iter()
        .map(|(name, m)| (name, F32Tensor::from_array(m)))
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
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.remove(provenance::COMMAND_KEY); // the source's; this run's is in `meta`
    metadata.extend(meta.iter().map(|(k, v)| (k.clone(), v.clone())));
    let bytes = crate::peft::write::serialize_sorted(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        &metadata,
    )
    .map_err(|e| Error::Internal(format!("serializing safetensors: {e}")))?;
    let config = read_capped(
        &adapter.dir.join(CONFIG_NAME),
        MAX_CONFIG_BYTES,
        "adapter_config.json",
    )?;
    Ok((config, bytes))
}

/// The metadata of a GGUF LoRA rewritten: every key carried with its own
/// GGUF type, except the alignment (the writer's own) and the provenance
/// keys (this run's); `transform` is appended to `loraguard.transforms`.
fn lora_metadata(src: &GgufFile, transform: &str) -> Vec<(String, MetaValue)> {
    let mut out = Vec::new();
    let mut transforms = Vec::new();
    for (k, v) in &src.metadata {
        match k.as_str() {
            "general.alignment" | provenance::VERSION_KEY | provenance::COMMAND_KEY => {}
            "loraguard.transforms" => {
                if let Some(a) = v.as_array().and_then(|a| a.as_strs()) {
                    transforms.extend(a.iter().cloned());
                }
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    transforms.push(transform.to_string());
    out.push((
        "loraguard.transforms".into(),
        MetaValue::strings(transforms),
    ));
    out.extend(provenance::gguf_metadata());
    out
}

/// Write the GGUF LoRA `src` (its header and bytes) to `out` (atomically) with the `lora_b`
/// tensors named in `replaced` swapped for the given matrices (one row per `ne[1]`),
/// encoded in their original type when loraguard encodes it (F32, F16, BF16,
/// Q8_0), else in F32. Returns the tensors written in another type.
pub fn write_gguf_lora(
    (src, bytes): (&GgufFile, &[u8]),
    replaced: &HashMap<String, Array2<f32>>,
    transform: &str,
    out: &Path,
) -> Result<Vec<String>> {
    let meta = lora_metadata(src, transform);
    let mut descs = Vec::new();
    let mut payloads: Vec<Option<Vec<u8>>> = Vec::new();
    let mut changed = Vec::new();
    for t in &src.tensors {
        match replaced.get(&t.name) {
            None => {
                descs.push(TensorDesc {
                    name: t.name.clone(),
                    ty: t.ty,
                    ne: t.ne.clone(),
                });
                payloads.push(None);
            }
            Some(m) => {
                let data = m.as_standard_layout();
                let data = data.as_slice().expect("standard layout");
                let mut bytes = Vec::new();
                let keep = crate::quant::WRITABLE.contains(&t.ty)
                    && (t.ty != GgmlType::F16 || fits_f16(data))
                    && encode_into(t.ty, data, &mut bytes);
                let ty = if keep {
                    t.ty
                } else {
                    bytes.clear();
                    encode_into(GgmlType::F32, data, &mut bytes);
                    changed.push(format!("{}: {} -> F32", t.name, t.ty));
                    GgmlType::F32
                };
                descs.push(TensorDesc {
                    name: t.name.clone(),
                    ty,
                    ne: t.ne.clone(),
                });
                payloads.push(Some(bytes));
            }
        }
    }
    let io = |e: std::io::Error| Error::io(out, e);
    let mut file = AtomicFile::create(out)?;
    {
        let mut w = GgufWriter::start(file.writer(), &meta, descs).map_err(io)?;
        for (t, p) in src.tensors.iter().zip(payloads) {
            match p {
                Some(b) => w.write_tensor(&b).map_err(io)?,
                None => w
                    .write_tensor(crate::adapter::gguf_tensor_bytes(&src.path, bytes, t)?)
                    .map_err(io)?,
            }
        }
        let mut inner = w.finish().map_err(io)?;
        inner.flush().map_err(io)?;
    }
    file.commit()?;
    Ok(changed)
}
