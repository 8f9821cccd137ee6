//! Streaming the planned targets into a GGUF LoRA file.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use rayon::prelude::*;

use super::encode::{BufPool, EncodedPair};
use super::plan::{Plan, Target};
use super::{ConvertReport, Fallback};
use crate::atomic::AtomicFile;
use crate::base::BaseModel;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufWriter, MetaValue, TensorDesc};
use crate::peft::PeftAdapter;

/// Tensor descriptors and the fallbacks they imply; `ranks[i]` is the rank
/// target i is written at.
fn descriptors(
    plan: &Plan,
    ranks: &[usize],
    outtype: GgmlType,
    f32_beyond_f16: Option<&PeftAdapter>,
) -> (Vec<TensorDesc>, Vec<Fallback>) {
    let mut descs = Vec::with_capacity(plan.targets.len() * 2);
    let mut fallbacks = Vec::new();
    for (t, rank) in plan.targets.iter().zip(ranks) {
        let (ne_a, ne_b) = t.pair_shape(*rank).factor_ne();
        let over = match f32_beyond_f16 {
            Some(a) if outtype == GgmlType::F16 => super::encode::beyond_f16(a, t),
            _ => (false, false),
        };
        for (suffix, ne, over) in [("lora_a", ne_a, over.0), ("lora_b", ne_b, over.1)] {
            let name = format!("{}.{suffix}", t.tensor);
            let (mut ty, mut why) = crate::quant::writable_type(outtype, ne[0]);
            if over && ty == GgmlType::F16 {
                ty = GgmlType::F32;
                why = Some("values beyond F16's range (±65504)".into());
            }
            if let Some(reason) = why {
                fallbacks.push(Fallback {
                    tensor: name.clone(),
                    requested: outtype,
                    written: ty,
                    reason,
                });
            }
            descs.push(TensorDesc {
                name,
                ty,
                ne: ne.to_vec(),
            });
        }
    }
    (descs, fallbacks)
}

/// The fallbacks a conversion to `outtype` will make (for `--dry-run`);
/// with `f32_beyond_f16` (`--outtype auto`), F16 tensors whose values do
/// not fit F16 become F32.
pub fn planned_fallbacks(
    plan: &Plan,
    ranks: &[usize],
    outtype: GgmlType,
    f32_beyond_f16: Option<&PeftAdapter>,
) -> Vec<Fallback> {
    descriptors(plan, ranks, outtype, f32_beyond_f16).1
}

/// Produces target i's encoded pair, given its tensor types and a buffer pool.
pub type Encoder<'e, 'a> =
    dyn Fn(usize, &Target, (GgmlType, GgmlType), &BufPool) -> Result<EncodedPair<'a>> + Sync + 'e;

fn metadata(
    adapter: &PeftAdapter,
    base: &BaseModel,
    plan: &Plan,
    report: &ConvertReport,
) -> Vec<(String, MetaValue)> {
    let s = |v: &str| MetaValue::Str(v.to_string());
    let mut m = vec![
        ("general.architecture".to_string(), s(base.arch.name)),
        ("general.type".to_string(), s("adapter")),
        ("adapter.type".to_string(), s("lora")),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(plan.alpha)),
    ];
    if let Some(name) = adapter.dir.file_name().and_then(|n| n.to_str()) {
        m.push(("general.name".to_string(), s(name)));
    }
    if let Some(tokens) = &adapter.config.alora_invocation_tokens {
        m.push((
            "adapter.alora.invocation_tokens".to_string(),
            MetaValue::u32s(tokens.clone()),
        ));
    }
    if let Some(b) = &adapter.config.base_model_name_or_path {
        m.push(("general.base_model.0.name".to_string(), s(b)));
    }
    m.extend(crate::provenance::gguf_metadata());
    m.push((
        "loraguard.source.file".to_string(),
        s(adapter
            .weights_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("adapter_model.safetensors")),
    ));
    // A placeholder of the digest's length, patched after streaming.
    m.push((report.source_hash_algorithm.key(), s(&"0".repeat(64))));
    m.push((
        "loraguard.peft.r".to_string(),
        MetaValue::U32(adapter.config.r as u32),
    ));
    m.push((
        "loraguard.peft.lora_alpha".to_string(),
        MetaValue::F32(adapter.config.lora_alpha as f32),
    ));
    m.push((
        "loraguard.peft.use_rslora".to_string(),
        MetaValue::Bool(adapter.config.use_rslora),
    ));
    m.push((
        "loraguard.transforms".to_string(),
        MetaValue::strings(report.transforms.clone()),
    ));
    if let Some(t) = &report.truncation {
        if let Some(k) = t.max_rank {
            m.push((
                "loraguard.refactor.max_rank".to_string(),
                MetaValue::U32(k.min(u32::MAX as usize) as u32),
            ));
        }
        if let Some(e) = t.energy {
            m.push((
                "loraguard.refactor.energy".to_string(),
                MetaValue::F32(e as f32),
            ));
        }
    }
    m
}

/// Write the plan to `out` atomically, target i at rank `ranks[i]` through
/// `encode`; fills the report's fallbacks, hash and size.
#[allow(clippy::too_many_arguments)]
pub fn write_gguf<'a>(
    adapter: &'a PeftAdapter,
    base: &BaseModel,
    plan: &Plan,
    ranks: &[usize],
    encode: &Encoder<'_, 'a>,
    out: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
    report: &mut ConvertReport,
    f32_beyond_f16: bool,
) -> Result<()> {
    let (descs, fallbacks) = descriptors(
        plan,
        ranks,
        report.outtype,
        f32_beyond_f16.then_some(adapter),
    );
    let types: Vec<GgmlType> = descs.iter().map(|d| d.ty).collect();
    let meta = metadata(adapter, base, plan, report);
    let io = |e: std::io::Error| Error::io(out, e);
    let mut file = AtomicFile::create(out)?;
    let total = plan.targets.len();
    let chunk = rayon::current_num_threads().max(1) * 2;
    let pool = BufPool::default();

    let syncer = file.background_sync()?;
    let hash_kind = report.source_hash_algorithm;
    let (digest, digest_offset) = std::thread::scope(|scope| -> Result<(String, u64)> {
        let hasher = scope.spawn(|| adapter.source_hash(hash_kind));
        let mut gw = GgufWriter::start(file.writer(), &meta, descs).map_err(io)?;
        let digest_offset = gw
            .string_value_offset(&hash_kind.key())
            .ok_or_else(|| Error::Internal("source digest placeholder missing".into()))?;
        // Encode chunk i+1 while chunk i is written (rayon::join), so the
        // file writes overlap the conversion.
        let encode_chunk = |ci: usize, targets: &[Target]| -> Vec<Result<EncodedPair<'a>>> {
            targets
                .par_iter()
                .enumerate()
                .map(|(j, t)| {
                    let i = ci * chunk + j;
                    encode(i, t, (types[2 * i], types[2 * i + 1]), &pool)
                })
                .collect()
        };
        let mut write_chunk = |encoded: Vec<Result<EncodedPair<'a>>>| -> Result<usize> {
            let n = encoded.len();
            for e in encoded {
                let (a, b) = e?;
                gw.write_tensor(&a).map_err(io)?;
                gw.write_tensor(&b).map_err(io)?;
                pool.put(a);
                pool.put(b);
            }
            Ok(n)
        };
        let mut done = 0;
        let mut pending: Vec<Result<EncodedPair<'a>>> = Vec::new();
        for (ci, targets) in plan.targets.chunks(chunk).enumerate() {
            let (written, next) = rayon::join(
                || write_chunk(std::mem::take(&mut pending)),
                || encode_chunk(ci, targets),
            );
            done += written?;
            syncer.poke();
            progress(done, total);
            pending = next;
        }
        done += write_chunk(pending)?;
        progress(done, total);
        let mut w = gw.finish().map_err(io)?;
        w.flush().map_err(io)?;
        drop(w);
        let digest = hasher
            .join()
            .map_err(|_| Error::Internal("hashing thread panicked".into()))?;
        Ok((digest, digest_offset))
    })?;
    syncer.finish()?;
    let f = file.file();
    f.seek(SeekFrom::Start(digest_offset)).map_err(io)?;
    f.write_all(digest.as_bytes()).map_err(io)?;
    report.bytes_written = f.seek(SeekFrom::End(0)).map_err(io)?;
    file.commit()?;
    report.fallbacks = fallbacks;
    report.source_hash = Some(digest);
    Ok(())
}
