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
mod tensor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::analyze::source::AdapterSource;
use crate::atomic::AtomicFile;
use crate::base::BaseModel;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use pipeline::Piece;
pub use shards::{Shards, SPLIT_KEYS};
use tensor::{merge_tensor, Kept, Update};

/// One adapter and its scale, parsed from `PATH[:SCALE]` as `check --lora`
/// is.
pub type MergeInput = crate::check::AdapterSpec;

/// The type merged tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeType {
    /// Each tensor keeps its base type.
    Same,
    /// Every merged tensor becomes this type.
    To(GgmlType),
}

/// The types `--type` accepts besides `same`: those loraguard writes.
pub const MERGE_TYPES: &[GgmlType] = crate::quant::WRITABLE;

impl MergeType {
    /// Parse `same` or a type name (`f16`, `q4_k`, …).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("same") {
            return Some(MergeType::Same);
        }
        GgmlType::from_name(s)
            .filter(|t| MERGE_TYPES.contains(t))
            .map(MergeType::To)
    }
}

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

/// The type a merged tensor is written in, and the reason for a fallback
/// (llama-quantize's rule, [`crate::quant::writable_type`]).
fn out_type(base: GgmlType, requested: MergeType, cols: u64) -> (GgmlType, Option<String>) {
    let want = match requested {
        MergeType::Same => base,
        MergeType::To(t) => t,
    };
    let (got, why) = crate::quant::writable_type(want, cols);
    (got, why.map(|w| format!("{w}; wrote {got}")))
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

/// The rows×cols of `module`'s update in a GGUF adapter, from its header.
fn update_shape(src: &AdapterSource, module: &str) -> Option<(u64, u64)> {
    let AdapterSource::Gguf { file, .. } = src else {
        return None;
    };
    let a = file.tensor(&format!("{module}.lora_a"))?;
    let b = file.tensor(&format!("{module}.lora_b"))?;
    let [ne0, ne1] = crate::layout::PairShape::read(module, &a.ne, &b.ne)?.base_ne();
    Some((ne1, ne0))
}

/// Check every adapter against the base before anything is written; return
/// base tensor name → the adapters (indices) that touch it.
fn plan(
    shards: &Shards,
    base: &BaseModel,
    sources: &[AdapterSource],
) -> Result<BTreeMap<String, Vec<usize>>> {
    let arch = base.arch.name;
    let mut targets: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, src) in sources.iter().enumerate() {
        let AdapterSource::Gguf { file, .. } = src else {
            return Err(Error::Internal("adapters are opened in GGUF layout".into()));
        };
        if file.architecture() != Some(arch) {
            return Err(Error::Usage(format!(
                "{} is a LoRA for {:?}, the base {} is {arch:?}",
                file.path.display(),
                file.architecture().unwrap_or("an unknown architecture"),
                base.path().display()
            )));
        }
        let mut problems = Vec::new();
        for m in src.modules() {
            match (shards.tensor(&m), update_shape(src, &m)) {
                (None, _) => problems.push(format!("{m}: the base has no such tensor")),
                (Some(_), None) => problems.push(format!("{m}: lora_a/lora_b missing or not 2-D")),
                (Some((_, t)), Some((rows, cols))) => {
                    let base_rows: u64 = t.ne[1..].iter().product();
                    if t.ne.len() > 2 && t.ne[2..].iter().any(|d| *d != 1) {
                        problems.push(format!("{m}: {}-D base tensors are not merged", t.ne.len()));
                    } else if (rows, cols) != (base_rows, t.ne[0]) {
                        problems.push(format!(
                            "{m}: the update is {rows}×{cols}, the base tensor {base_rows}×{}",
                            t.ne[0]
                        ));
                    } else {
                        targets.entry(m).or_default().push(i);
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Mismatch {
                adapter: file.path.clone(),
                base: base.path().to_path_buf(),
                problems,
            });
        }
    }
    Ok(targets)
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
        crate::analyze::source::refuse_alora(s.is_alora(), &i.path, "merge")?;
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
        let (mut writer, wrote) = pipeline::spawn_writer(scope, &shards, file.writer(), out);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_fall_back() {
        assert_eq!(MergeType::parse("same"), Some(MergeType::Same));
        assert_eq!(
            MergeType::parse("q4_k"),
            Some(MergeType::To(GgmlType::Q4_K))
        );
        assert_eq!(MergeType::parse("iq2_xxs"), None);
        assert_eq!(
            out_type(GgmlType::Q4_1, MergeType::Same, 576),
            (GgmlType::Q4_1, None)
        );
        let (t, why) = out_type(GgmlType::Q4_1, MergeType::To(GgmlType::Q4_K), 576);
        assert_eq!(t, GgmlType::Q5_0);
        assert!(why.unwrap().contains("not whole blocks of Q4_K"));
        let (t, why) = out_type(GgmlType::IQ2_XXS, MergeType::Same, 2048);
        assert_eq!(t, GgmlType::Q8_0);
        assert!(why.unwrap().contains("importance matrix"));
        assert_eq!(
            out_type(GgmlType::F32, MergeType::Same, 31).0,
            GgmlType::F32
        );
        assert_eq!(
            out_type(GgmlType::Q8_0, MergeType::Same, 48).0,
            GgmlType::F16
        );
    }
}
