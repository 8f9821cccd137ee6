//! Writing a modified PEFT adapter directory, atomically: every file is
//! written into a fresh sibling directory, which is then renamed into place.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensors, View};

use std::io::Write;

use super::input::GgufLora;
use super::weights::read_at;
use crate::atomic::{write_dir_atomic, AtomicFile};
use crate::capped::read_capped;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorDesc, MAX_GGUF_ARRAY_ELEMENTS};
use crate::peft::write::F32Tensor;
use crate::peft::{PeftAdapter, CONFIG_NAME, MAX_CONFIG_BYTES, SAFETENSORS_NAME};
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
    write_dir_atomic(out, &[(CONFIG_NAME, &config), (SAFETENSORS_NAME, &bytes)])
}

/// The metadata of a GGUF LoRA rewritten: what llama.cpp reads keeps its
/// type (alpha F32, invocation tokens u32); other keys are carried when they
/// are strings, booleans, numbers or string arrays read whole; `transform`
/// is appended to `loraguard.transforms`.
fn lora_metadata(src: &GgufFile, transform: &str) -> Result<Vec<(String, MetaValue)>> {
    use serde_json::Value;
    let mut out = Vec::new();
    let mut transforms = Vec::new();
    for (k, v) in &src.metadata {
        if k == "general.alignment" {
            continue; // the writer uses its own alignment
        }
        if k == crate::provenance::VERSION_KEY || k == crate::provenance::COMMAND_KEY {
            continue; // this run's own, below
        }
        if k == "loraguard.transforms" {
            if let Value::Array(a) = v {
                transforms.extend(a.iter().filter_map(|x| x.as_str().map(String::from)));
            }
            continue;
        }
        let capped = |a: &Vec<Value>| a.len() as u64 >= MAX_GGUF_ARRAY_ELEMENTS;
        let mv = match (k.as_str(), v) {
            ("adapter.lora.alpha", v) => MetaValue::F32(v.as_f64().unwrap_or(0.0) as f32),
            ("adapter.alora.invocation_tokens", Value::Array(a)) => {
                if capped(a) {
                    return Err(Error::Unsupported {
                        path: src.path.clone(),
                        feature: format!("{k} with {MAX_GGUF_ARRAY_ELEMENTS} or more tokens"),
                        hint: None,
                    });
                }
                MetaValue::ArrU32(
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect(),
                )
            }
            (_, Value::String(s)) => MetaValue::Str(s.clone()),
            (_, Value::Bool(b)) => MetaValue::Bool(*b),
            (_, Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) if u <= u64::from(u32::MAX) => MetaValue::U32(u as u32),
                (Some(u), _, _) => MetaValue::U64(u),
                (_, Some(i), _) if i >= i64::from(i32::MIN) => MetaValue::I32(i as i32),
                (_, _, Some(f)) => MetaValue::F32(f as f32),
                _ => continue,
            },
            (_, Value::Array(a)) if !capped(a) && a.iter().all(|x| x.is_string()) => {
                MetaValue::ArrStr(
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                )
            }
            _ => continue,
        };
        out.push((k.clone(), mv));
    }
    transforms.push(transform.to_string());
    out.push(("loraguard.transforms".into(), MetaValue::ArrStr(transforms)));
    out.extend(
        crate::provenance::pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), MetaValue::Str(v))),
    );
    Ok(out)
}

/// Write the GGUF LoRA `src` to `out` (atomically) with the `lora_b`
/// tensors named in `replaced` swapped for the given matrices (one row per `ne[1]`),
/// encoded in their original type when loraguard encodes it (F32, F16, BF16,
/// Q8_0), else in F32. Returns the tensors written in another type.
pub fn write_gguf_lora(
    src: &GgufLora,
    replaced: &HashMap<String, Array2<f32>>,
    transform: &str,
    out: &Path,
) -> Result<Vec<String>> {
    let meta = lora_metadata(&src.file, transform)?;
    let mut descs = Vec::new();
    let mut payloads: Vec<Option<Vec<u8>>> = Vec::new();
    let mut changed = Vec::new();
    for t in &src.file.tensors {
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
        for (t, p) in src.file.tensors.iter().zip(payloads) {
            let bytes = match p {
                Some(b) => b,
                None => read_at(&src.reader, &src.file.path, t.offset, t.size)?,
            };
            w.write_tensor(&bytes).map_err(io)?;
        }
        let mut inner = w.finish().map_err(io)?;
        inner.flush().map_err(io)?;
    }
    file.commit()?;
    Ok(changed)
}
