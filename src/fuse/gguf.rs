//! Fusing GGUF LoRAs: every input in GGUF layout (PEFT adapters converted
//! exactly for `--base` first), the result written as a GGUF LoRA directly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ndarray::Array2;
use rayon::prelude::*;

use super::{
    fuse_module, selective_threshold, FuseInput, FuseOptions, FuseReport, MergeParams, ModuleFuse,
    Term,
};
use crate::adapter::{refuse_alora, AdapterSource};
use crate::atomic::AtomicFile;
use crate::convert::Fallback;
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorDesc};
use crate::quant::{encode_into, fits_f16};

/// The alpha written: with alpha = 1 llama.cpp scales each pair by 1/k,
/// which is folded into `lora_b`.
const ALPHA: f32 = 1.0;

/// The type one tensor is written in, its bytes, and why the type differs
/// from the one requested.
fn encode(requested: GgmlType, m: &Array2<f64>) -> (GgmlType, Vec<u8>, Option<String>) {
    let data: Vec<f32> = m.iter().map(|x| *x as f32).collect();
    let (mut ty, mut why) = crate::quant::writable_type(requested, m.ncols() as u64);
    if ty == GgmlType::F16 && !fits_f16(&data) {
        ty = GgmlType::F32;
        why = Some("values beyond F16's range (±65504)".into());
    }
    let mut out = Vec::new();
    if !encode_into(ty, &data, &mut out) {
        out.clear();
        why = Some(format!("loraguard could not encode it as {ty}"));
        ty = GgmlType::F32;
        encode_into(ty, &data, &mut out);
    }
    (ty, out, why)
}

/// See the module documentation; `params` as in [`super::fuse`].
pub fn fuse_gguf(
    inputs: &[FuseInput],
    out: &Path,
    opts: &FuseOptions,
    params: &MergeParams,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<FuseReport> {
    let base = opts.base.as_deref().ok_or_else(|| {
        Error::Usage(
            "GGUF LoRA inputs: pass --base BASE.gguf (PEFT inputs are mapped to GGUF layout through it)"
                .into(),
        )
    })?;
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return Err(Error::Usage(format!(
            "-o {}: fusing GGUF LoRAs writes a GGUF LoRA; name a .gguf output",
            out.display()
        )));
    }
    if opts.convert.truncation.is_some() {
        return Err(Error::Usage(
            "--max-rank/--energy re-factor PEFT-built outputs; with GGUF inputs use --method svd --rank K".into(),
        ));
    }
    let arch = GgufFile::open(base)?
        .architecture()
        .map(String::from)
        .ok_or_else(|| Error::malformed(base, "GGUF", "no general.architecture"))?;
    let sources: Vec<AdapterSource> = inputs
        .iter()
        .map(|i| Ok(AdapterSource::open_for(&i.path, Some(base), false)?.0))
        .collect::<Result<_>>()?;
    for (s, i) in sources.iter().zip(inputs) {
        refuse_alora(s.is_alora(), &i.path, "fuse")?;
        if s.architecture() != Some(arch.as_str()) {
            return Err(Error::Usage(format!(
                "{} is for {:?}, the base {} is {arch:?}",
                s.path().display(),
                s.architecture(),
                base.display()
            )));
        }
    }
    // svd's default rank: the largest input rank (each lora_b's ne[0]).
    let max_rank = sources
        .iter()
        .filter_map(AdapterSource::max_rank)
        .max()
        .unwrap_or(1);
    let params = &MergeParams {
        rank: if params.rank == 0 {
            max_rank
        } else {
            params.rank
        },
        ..*params
    };
    let mut modules: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        for m in s.modules() {
            modules.entry(m).or_default().push(i);
        }
    }
    // A module every input weights 0 is a zero update: leave it out.
    modules.retain(|m, ins| ins.iter().any(|&i| inputs[i].weights.for_module(m) != 0.0));
    if modules.is_empty() {
        return Err(Error::Usage(
            "every module has weight 0 in every input: nothing to fuse".into(),
        ));
    }
    let names: Vec<&String> = modules.keys().collect();
    let load = |m: &str| -> Result<Vec<Term>> {
        let terms = modules[m]
            .iter()
            .map(|&i| {
                let lr = sources[i].load(m)?;
                Ok(Term {
                    b: lr.b,
                    a: lr.a,
                    scale: lr.scale,
                    weight: inputs[i].weights.for_module(m),
                    input: i,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (d_out, d_in) = (terms[0].b.nrows(), terms[0].a.ncols());
        if terms
            .iter()
            .any(|t| (t.b.nrows(), t.a.ncols()) != (d_out, d_in))
        {
            return Err(Error::Usage(format!(
                "{m}: the inputs disagree on its shape"
            )));
        }
        if opts.method.per_factor() && terms.iter().any(|t| t.a.nrows() != terms[0].a.nrows()) {
            return Err(Error::Usage(format!(
                "{} needs equal ranks, and {m} has different ones (use cat or svd)",
                opts.method.name()
            )));
        }
        Ok(terms)
    };
    let params = &MergeParams {
        threshold: selective_threshold(opts, params.protect, &names, &load)?,
        ..*params
    };
    let done = std::sync::atomic::AtomicUsize::new(0);
    let fused: Vec<(Array2<f64>, Array2<f64>, ModuleFuse)> = names
        .par_iter()
        .map(|m| {
            let terms = load(m)?;
            let f = fuse_module(&terms, opts.method, m, params)?;
            progress(
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
                names.len(),
            );
            let stats = ModuleFuse::new(m, terms.len(), &f);
            Ok((f.b, f.a, stats))
        })
        .collect::<Result<_>>()?;

    let requested = opts.convert.outtype.resolve(&[]);
    let mut descs = Vec::new();
    let mut payloads = Vec::new();
    let mut report = Vec::new();
    let mut fallbacks = Vec::new();
    for (m, (b, a, stats)) in names.iter().zip(fused) {
        let k = stats.rank;
        let fold = k as f64 / f64::from(ALPHA);
        // Linear: lora_a rows are A (k×in), lora_b rows are B (out×k).
        // token_embd: ΔE = (B·A)ᵀ was fused as Aᵀ·Bᵀ: lora_a rows are Aᵀ
        // (vocab×k), lora_b rows are B (width×k).
        let (la, lb) = if crate::layout::is_embedding(m) {
            (b, a.reversed_axes().as_standard_layout().to_owned() * fold)
        } else {
            (a, b * fold)
        };
        for (suffix, t) in [("lora_a", la), ("lora_b", lb)] {
            let (ty, bytes, why) = encode(requested, &t);
            let name = format!("{m}.{suffix}");
            if let Some(reason) = why {
                fallbacks.push(Fallback {
                    tensor: name.clone(),
                    requested,
                    written: ty,
                    reason,
                });
            }
            descs.push(TensorDesc {
                name,
                ty,
                ne: vec![t.ncols() as u64, t.nrows() as u64],
            });
            payloads.push(bytes);
        }
        report.push(stats);
    }
    let s = |v: &str| MetaValue::Str(v.to_string());
    let mut meta = vec![
        ("general.architecture".to_string(), s(&arch)),
        ("general.type".to_string(), s("adapter")),
        ("adapter.type".to_string(), s("lora")),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(ALPHA)),
    ];
    meta.extend(crate::provenance::gguf_metadata());
    meta.extend([
        (
            "loraguard.transforms".to_string(),
            MetaValue::strings(vec![format!("fuse_{}", opts.method.name())]),
        ),
        (
            "loraguard.fuse".to_string(),
            s(&inputs
                .iter()
                .map(FuseInput::spec)
                .collect::<Vec<_>>()
                .join(", ")),
        ),
    ]);
    let io = |e: std::io::Error| Error::io(out, e);
    let mut file = AtomicFile::create(out)?;
    {
        let mut w = GgufWriter::start(file.writer(), &meta, descs).map_err(io)?;
        for p in &payloads {
            w.write_tensor(p).map_err(io)?;
        }
        w.finish().map_err(io)?.flush().map_err(io)?;
    }
    file.commit()?;
    Ok(FuseReport {
        method: opts.method.name().into(),
        inputs: inputs
            .iter()
            .map(|i| (i.path.clone(), i.weights.to_string()))
            .collect(),
        modules: report,
        output: out.to_path_buf(),
        fallbacks,
        convert: None,
    })
}
