//! `loraguard merge`: bake LoRA adapters into a base GGUF.
//!
//! Each tensor an adapter touches becomes W′ = W + Σ sᵢ·ΔWᵢ, dequantized and
//! requantized with ggml's own code (so every type comes out as
//! llama-quantize makes it, without an importance matrix); every other
//! tensor is copied byte for byte. The header is ggml's: every metadata key
//! of the base (tokenizer and chat template included) plus provenance keys
//! `loraguard.merge.*`. Adapters are GGUF LoRAs of any type or PEFT
//! directories (converted exactly for the base first). A split base
//! (`gguf-split` shards) is read whole and written as one file. The output
//! is streamed tensor by tensor and written atomically.

pub mod measure;
mod pipeline;
mod shards;
mod targets;
mod tensor;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapter::AdapterSource;
use crate::atomic::AtomicFile;
use crate::base::BaseModel;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use pipeline::Piece;
pub use shards::{Shards, SPLIT_KEYS};
use targets::plan;
use tensor::{merge_tensor, Kept, Update};
use types::out_type;
pub use types::{MergeType, MERGE_TYPES};

/// One adapter and its scale, parsed from `PATH[:SCALE]` as `check --lora`
/// is.
pub type MergeInput = crate::check::AdapterSpec;

/// Below this fraction of the adapters' update kept by the written types,
/// `merge` refuses unless told to write anyway ([`MergeOptions::min_kept`]).
pub const DEFAULT_MIN_KEPT: f64 = 0.5;

/// How [`merge`] writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeOptions {
    pub ty: MergeType,
    /// Refuse, writing nothing, when the written types keep less than this
    /// fraction of the update (a model that behaves like the base, labelled
    /// patched); `None` writes anyway (`--allow-lossy`).
    pub min_kept: Option<f64>,
    /// Leave out PEFT tensors outside LoRA pairs (`modules_to_save`), and
    /// report them, instead of refusing the adapter.
    pub drop_unsupported: bool,
}

impl MergeOptions {
    /// `ty`, refusing lossy merges and adapters with tensors it cannot bake.
    pub fn new(ty: MergeType) -> Self {
        MergeOptions {
            ty,
            min_kept: Some(DEFAULT_MIN_KEPT),
            drop_unsupported: false,
        }
    }
}

/// What happened to one merged tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorMerge {
    pub tensor: String,
    pub base_type: String,
    pub out_type: String,
    /// How many adapters touch it.
    pub adapters: usize,
    /// The fraction of the adapters' update the output type kept (the
    /// written change's projection on the exact update; 1 for F32).
    pub update_kept: f64,
    /// ‖written change − exact update‖ / ‖exact update‖.
    pub update_error: f64,
    /// Why the requested type was not used, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// One adapter as recorded in the output's provenance.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterRecord {
    pub path: PathBuf,
    pub scale: f32,
    pub sha256: String,
}

/// What `merge` did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub model: PathBuf,
    pub shards: usize,
    pub adapters: Vec<AdapterRecord>,
    pub output: PathBuf,
    pub merged: Vec<TensorMerge>,
    /// Tensors copied byte for byte.
    pub copied: usize,
    pub output_bytes: u64,
    /// Over all merged tensors: the fraction of the update kept, and the
    /// relative error of the written change (see [`TensorMerge`]).
    pub update_kept: f64,
    pub update_error: f64,
    /// PEFT tensors left out (`--drop-unsupported`), by adapter.
    pub dropped: Vec<String>,
    /// `merge --measure`: the merged model against the runtime adapters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measure: Option<measure::MergeCost>,
}

/// sha256 of an adapter: of the GGUF file, or of a PEFT directory's
/// `adapter_model.safetensors`.
fn adapter_sha256(path: &Path) -> Result<String> {
    let file = if path.is_dir() {
        path.join(crate::peft::SAFETENSORS_NAME)
    } else {
        path.to_path_buf()
    };
    let map = crate::mmap::map_file(&file)?;
    Ok(crate::hash::sha256_hex(&map))
}

/// The f32 update of `module` from adapter `src`, every scale folded into B.
fn update(src: &AdapterSource, module: &str, scale: f32) -> Result<Update> {
    let lr = src.load(module)?;
    let s = lr.scale * f64::from(scale);
    Ok(Update {
        b: lr.b.mapv(|x| (x * s) as f32),
        a: lr.a.mapv(|x| x as f32),
    })
}

/// Merge `inputs` into `model`, writing `out`. `progress(done, total)` is
/// called after each tensor.
pub fn merge(
    model: &Path,
    inputs: &[MergeInput],
    out: &Path,
    opts: &MergeOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<MergeReport> {
    let requested = opts.ty;
    if inputs.is_empty() {
        return Err(Error::Usage("merge needs at least one --lora".into()));
    }
    // Row blocks run one per rayon worker, each with its own GEMM: OpenBLAS's
    // own threads would only spin beside them (measured: a fifth of the run
    // in sched_yield).
    crate::linalg::init();
    let shards = Shards::open(model)?;
    let base = BaseModel::open(model)?;
    let peft = inputs
        .iter()
        .filter(|i| crate::peft::looks_like_peft(&i.path))
        .count();
    if shards.is_split() && peft > 0 {
        return Err(Error::Usage(format!(
            "{} is split: PEFT adapters are converted against a single-file base; \
             convert them first (`loraguard convert --base` on an unsplit copy) or pass GGUF LoRAs",
            model.display()
        )));
    }
    let mut dropped = Vec::new();
    let mut sources: Vec<AdapterSource> = Vec::new();
    for i in inputs {
        let (s, d) = AdapterSource::open_for(&i.path, Some(model), opts.drop_unsupported)?;
        crate::adapter::refuse_alora(s.is_alora(), &i.path, "merge")?;
        dropped.extend(d.into_iter().map(|t| format!("{}: {t}", i.path.display())));
        sources.push(s);
    }
    let targets = plan(&shards, &base, &sources)?;
    let adapters = inputs
        .iter()
        .map(|i| {
            Ok(AdapterRecord {
                path: i.path.clone(),
                scale: i.scale,
                sha256: adapter_sha256(&i.path)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    // The header: the base's metadata and tensors, merged tensors retyped.
    let mut header = loraguard_llama::gguf_build::GgufHeader::from_files(&shards.paths())?;
    for k in SPLIT_KEYS {
        header.remove_key(k)?;
    }
    // ggml lays out a new header's data with its default alignment whatever
    // general.alignment says; drop the key so readers agree with the layout.
    if header.alignment() != crate::gguf::DEFAULT_ALIGNMENT {
        return Err(Error::Internal("unexpected output alignment".into()));
    }
    header.remove_key("general.alignment")?;
    let mut merged = Vec::new();
    for (name, who) in &targets {
        let (_, t) = shards.tensor(name).expect("planned tensors exist");
        let (ty, fallback) = out_type(t.ty, requested, t.ne[0]);
        header.set_tensor_type(name, ty.id())?;
        merged.push(TensorMerge {
            tensor: name.clone(),
            base_type: t.ty.name().into(),
            out_type: ty.name().into(),
            adapters: who.len(),
            update_kept: 1.0,
            update_error: 0.0,
            fallback,
        });
    }
    let strs = |f: &dyn Fn(&AdapterRecord) -> String| adapters.iter().map(f).collect::<Vec<_>>();
    header.remove_key(crate::provenance::COMMAND_KEY)?; // the base's own, if any
    for (k, v) in crate::provenance::pairs() {
        header.set_str(k, &v)?;
    }
    header.set_str(
        "loraguard.merge.method",
        "W + sum(scale * alpha / rank * B * A)",
    )?;
    header.set_str_array(
        "loraguard.merge.adapters",
        &strs(&|a| {
            a.path.file_name().map_or_else(
                || a.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        }),
    )?;
    header.set_str_array("loraguard.merge.scales", &strs(&|a| a.scale.to_string()))?;
    header.set_str_array("loraguard.merge.sha256", &strs(&|a| a.sha256.clone()))?;
    let types: BTreeMap<String, GgmlType> = merged
        .iter()
        .map(|m| {
            (
                m.tensor.clone(),
                GgmlType::from_name(&m.out_type).expect("a type name we wrote"),
            )
        })
        .collect();

    let head = header.bytes();
    let layout = header.tensors();
    let mut file = AtomicFile::create(out)?;
    let mut written = 0u64;
    let mut total = Kept::default();
    let merged_names: Vec<String> = layout
        .iter()
        .filter(|t| types.contains_key(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let load = |name: &str| -> Result<Vec<Update>> {
        targets[name]
            .iter()
            .map(|&i| update(&sources[i], name, inputs[i].scale))
            .collect()
    };
    std::thread::scope(|scope| -> Result<()> {
        let syncer = file.background_sync()?;
        let (mut writer, wrote) =
            pipeline::spawn_writer(scope, &shards, file.writer(), syncer, out);
        let updates = pipeline::spawn_loader(scope, merged_names, load);
        let result = (|| -> Result<()> {
            written += head.len() as u64;
            if !writer.send(Piece::Bytes(head)) {
                return Ok(()); // the writer failed; its error is reported below
            }
            let data_start = written;
            let align = header.alignment();
            for (k, bt) in layout.iter().enumerate() {
                let (shard, t) = shards
                    .tensor(&bt.name)
                    .ok_or_else(|| Error::Internal(format!("{} vanished", bt.name)))?;
                if written - data_start != bt.offset {
                    return Err(Error::Internal(format!(
                        "{}: at data offset {}, ggml put it at {}",
                        bt.name,
                        written - data_start,
                        bt.offset
                    )));
                }
                let (piece, size) = if let Some(ty) = types.get(&bt.name) {
                    let u = updates
                        .recv()
                        .map_err(|_| Error::Internal("the update loader stopped".into()))??;
                    let buf = writer.buffer(bt.size as usize);
                    let (bytes, k) = merge_tensor(&shards, shard, t, &u, *ty, buf)?;
                    if let Some(m) = merged.iter_mut().find(|m| m.tensor == bt.name) {
                        m.update_kept = k.fraction();
                        m.update_error = k.error();
                    }
                    total = total.add(k);
                    let size = bytes.len() as u64;
                    (Piece::Bytes(bytes), size)
                } else {
                    (Piece::Copy { shard, t }, t.size)
                };
                if size != bt.size {
                    return Err(Error::Internal(format!(
                        "{}: wrote {size} bytes, ggml expects {}",
                        bt.name, bt.size
                    )));
                }
                if !writer.send(piece) {
                    return Ok(());
                }
                let pad = (align - size % align) % align;
                if pad > 0 && !writer.send(Piece::Bytes(vec![0u8; pad as usize])) {
                    return Ok(());
                }
                written += size + pad;
                progress(k + 1, layout.len());
            }
            Ok(())
        })();
        drop(writer);
        drop(updates);
        let wrote = wrote
            .join()
            .map_err(|_| Error::Internal("the output writer panicked".into()))?;
        result?;
        wrote
    })?;
    if let Some(min) = opts.min_kept {
        if total.fraction() < min {
            // `file` is dropped uncommitted: nothing is written.
            return Err(Error::Lossy {
                path: out.to_path_buf(),
                kept: total.fraction(),
                min,
            });
        }
    }
    file.commit()?;
    Ok(MergeReport {
        model: model.to_path_buf(),
        shards: shards.files.len(),
        adapters,
        output: out.to_path_buf(),
        copied: layout.len() - merged.len(),
        merged,
        output_bytes: written,
        update_kept: total.fraction(),
        update_error: total.error(),
        dropped,
        measure: None,
    })
}
