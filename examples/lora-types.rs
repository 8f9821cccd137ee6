//! What each GGUF LoRA tensor type costs (issue 8, part 3), in one run:
//! for every `--outtype` loraguard writes, the file size, the relative error
//! of ΔW as written (convert's `--measure-error`, per module, against PEFT's
//! exact update) and the agreement of llama.cpp's logits with the F32
//! conversion of the same adapter.
//!
//! `cargo run --release --example lora-types -- MODEL.gguf WORKDIR [--f32-copy] [--synthetic-rank R] ADAPTER...`
//!
//! Logits are compared on MODEL and, with `--f32-copy`, on a copy of MODEL
//! whose matrices are all F32 (made with `loraguard merge` at scale 0): on a
//! 4-bit model llama.cpp quantizes activations to 8 bits, which amplifies
//! tiny differences, so the copy shows what the LoRA type itself costs.
//! Each ADAPTER is a PEFT directory for MODEL; `--synthetic-rank R` adds a
//! rank-R adapter on every attention and MLP projection of MODEL, written to
//! WORKDIR (PEFT's initialisation for A, uniform noise for B; seeded), since
//! the trained fixtures have r = 8 and a `lora_b` row of 8 values holds no
//! quantized block. Prints one JSON object per (adapter, type) on stdout.

use std::error::Error;
use std::path::{Path, PathBuf};

use loraguard::convert::{convert, ConvertOptions, OutType};
use loraguard::gguf::GgufFile;
use loraguard::llama::{Model, ModelOptions, Session, SessionOptions};
use loraguard::peft::write::F32Tensor;
use loraguard::quant::WRITABLE;
use ndarray::Array2;

/// Texts whose every position's logits are compared.
const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog, and then it runs into the forest to find its friends.",
    "Question: What is the capital of France? Answer: The capital of France is Paris, a city on the Seine.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Write a short poem about the sea. The waves roll in under a grey sky, and the gulls cry over the harbour.",
];

/// HF projection names and their GGUF tensor names.
const MODULES: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// splitmix64, for a seeded adapter without a dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn matrix(&mut self, rows: usize, cols: usize, bound: f32) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || self.uniform() * bound)
    }
}

/// A rank-`r` PEFT adapter on every projection of `model` (and, with
/// `embed`, on the token embeddings), in `dir`.
fn synthetic_adapter(
    model: &Path,
    dir: &Path,
    r: usize,
    embed: bool,
) -> Result<(), Box<dyn Error>> {
    let gguf = GgufFile::open(model)?;
    let mut rng = Rng(20261201);
    let mut tensors = Vec::new();
    for layer in 0.. {
        if gguf.tensor(&format!("blk.{layer}.attn_q.weight")).is_none() {
            break;
        }
        for (hf, gg) in MODULES {
            let t = gguf
                .tensor(&format!("blk.{layer}.{gg}.weight"))
                .ok_or_else(|| format!("blk.{layer}.{gg}.weight missing"))?;
            let (d_in, d_out) = (t.ne[0] as usize, t.ne[1] as usize);
            let name = format!("base_model.model.model.layers.{layer}.{hf}");
            // PEFT's kaiming-uniform A (bound 1/√d_in); B as a trained one
            // grows from zero, here uniform with a fixed bound.
            let a = rng.matrix(r, d_in, 1.0 / (d_in as f32).sqrt());
            let b = rng.matrix(d_out, r, 0.02);
            tensors.push((format!("{name}.lora_A.weight"), F32Tensor::from_array(&a)));
            tensors.push((format!("{name}.lora_B.weight"), F32Tensor::from_array(&b)));
        }
    }
    if embed {
        let t = gguf
            .tensor("token_embd.weight")
            .ok_or("token_embd.weight missing")?;
        let (width, vocab) = (t.ne[0] as usize, t.ne[1] as usize);
        let name = "base_model.model.model.embed_tokens";
        tensors.push((
            format!("{name}.lora_embedding_A"),
            F32Tensor::from_array(&rng.matrix(r, vocab, 1.0)),
        ));
        tensors.push((
            format!("{name}.lora_embedding_B"),
            F32Tensor::from_array(&rng.matrix(width, r, 0.02)),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), &None)?;
    std::fs::write(dir.join("adapter_model.safetensors"), bytes)?;
    let mut targets: Vec<&str> = MODULES
        .iter()
        .map(|(hf, _)| hf.rsplit('.').next().unwrap_or(hf))
        .collect();
    if embed {
        targets.push("embed_tokens");
    }
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
    });
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

/// Logits of every text with `adapter` (none for the base) at scale 1.
fn logits(model: &Model, adapter: Option<&Path>) -> Result<Vec<Vec<f32>>, Box<dyn Error>> {
    let loaded = adapter.map(|p| model.load_adapter(p)).transpose()?;
    let opts = SessionOptions {
        kv_f32: true,
        ..SessionOptions::default()
    };
    let mut out = Vec::new();
    for text in TEXTS {
        let tokens = model.tokenize(text, true, false)?;
        let mut s = Session::new(model, &opts)?;
        if let Some(a) = &loaded {
            s.set_adapters(&[(a, 1.0)])?;
        }
        out.push(s.logits(&tokens)?);
    }
    Ok(out)
}

/// An F32 copy of `model` at `out`: every matrix an adapter can touch
/// (projections and token embeddings, which are also the tied output
/// head) merged at scale 0 as F32, through `loraguard merge`.
fn f32_copy(model: &Path, work: &Path, out: &Path) -> Result<(), Box<dyn Error>> {
    let probe = work.join("probe-r1");
    synthetic_adapter(model, &probe, 1, true)?;
    let spec = loraguard::merge::MergeInput {
        path: probe,
        scale: 0.0,
    };
    loraguard::merge::merge(
        model,
        &[spec],
        out,
        &loraguard::merge::MergeOptions::new(loraguard::merge::MergeType::To(
            loraguard::gguf::GgmlType::F32,
        )),
        &|_, _| {},
    )?;
    Ok(())
}

/// One run's logits: per text, and all texts flattened.
type Logits = (Vec<Vec<f32>>, Vec<f32>);

fn flat(v: &[Vec<f32>]) -> Vec<f32> {
    v.iter().flatten().copied().collect()
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

fn diff(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Share of positions whose most likely next token is the same.
fn top1(a: &[Vec<f32>], b: &[Vec<f32>], n_vocab: usize) -> f64 {
    let argmax = |row: &[f32]| loraguard::llama::argmax(row);
    let (mut same, mut n) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (rx, ry) in x.chunks_exact(n_vocab).zip(y.chunks_exact(n_vocab)) {
            same += usize::from(argmax(rx) == argmax(ry));
            n += 1;
        }
    }
    same as f64 / n.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: lora-types MODEL.gguf WORKDIR [--f32-copy] [--synthetic-rank R] ADAPTER...";
    let model_path = PathBuf::from(args.next().ok_or(usage)?);
    let work = PathBuf::from(args.next().ok_or(usage)?);
    let mut adapters = Vec::new();
    let mut logit_models = vec![model_path.clone()];
    while let Some(a) = args.next() {
        if a == "--f32-copy" {
            let out = work.join("model-f32.gguf");
            std::fs::create_dir_all(&work)?;
            f32_copy(&model_path, &work, &out)?;
            logit_models.push(out);
        } else if a == "--synthetic-rank" {
            let r: usize = args.next().ok_or(usage)?.parse()?;
            let dir = work.join(format!("synthetic-r{r}"));
            synthetic_adapter(&model_path, &dir, r, false)?;
            adapters.push(dir);
        } else {
            adapters.push(PathBuf::from(a));
        }
    }
    std::fs::create_dir_all(&work)?;
    let models = logit_models
        .iter()
        .map(|p| Model::load(p, &ModelOptions::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let bases = models
        .iter()
        .map(|m| logits(m, None).map(|l| flat(&l)))
        .collect::<Result<Vec<_>, _>>()?;
    for adapter in &adapters {
        let name = adapter
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("adapter")
            .to_string();
        // Per logits model: the F32 conversion's logits.
        let mut reference: Option<Vec<Logits>> = None;
        for ty in WRITABLE {
            let out = work.join(format!("{name}.{}.gguf", ty.name().to_lowercase()));
            let opts = ConvertOptions {
                measure_error: true,
                ..ConvertOptions::new(OutType::Type(*ty))
            };
            let report = convert(adapter, &model_path, Some(&out), &opts, &|_, _| {})?;
            let errors: Vec<f64> = report
                .modules
                .iter()
                .filter_map(|m| m.written_error)
                .collect();
            let max_err = errors.iter().copied().fold(0.0, f64::max);
            let mut withs = Vec::new();
            let mut compared = Vec::new();
            for (i, (model, base_flat)) in models.iter().zip(&bases).enumerate() {
                let with = logits(model, Some(&out))?;
                let with_flat = flat(&with);
                let (rel, agree) = match &reference {
                    None => (0.0, 1.0),
                    Some(r) => (
                        norm(&diff(&with_flat, &r[i].1)) / norm(&diff(&r[i].1, base_flat)),
                        top1(&with, &r[i].0, model.n_vocab()),
                    ),
                };
                compared.push(serde_json::json!({
                    "model": logit_models[i],
                    "logit_error_vs_f32": rel,
                    "top1_agreement_vs_f32": agree,
                    "logit_effect": norm(&diff(&with_flat, base_flat)) / norm(base_flat),
                }));
                withs.push((with, with_flat));
            }
            let row = serde_json::json!({
                "adapter": name,
                "type": ty.name(),
                "bytes": report.bytes_written,
                "fallbacks": report.fallbacks.len(),
                "tensors": 2 * report.targets,
                "fallback_types": report.fallbacks.iter().map(|f| f.written.name()).collect::<std::collections::BTreeSet<_>>(),
                "delta_error_median": median(errors),
                "delta_error_max": max_err,
                "logits": compared,
            });
            println!("{row}");
            if reference.is_none() {
                reference = Some(withs);
            }
        }
    }
    Ok(())
}
