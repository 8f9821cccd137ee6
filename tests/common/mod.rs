//! Shared helpers: fixture paths, conversion into temp dirs, llama.cpp logits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use loraguard::convert::{convert, ConvertOptions, ConvertReport, OutType};
use loraguard::llama::{Model, ModelOptions, Session, SessionOptions};
use safetensors::SafeTensors;

/// llama.cpp contexts are heavy; run llama-using tests one at a time.
pub static LLAMA: Mutex<()> = Mutex::new(());

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny() -> PathBuf {
    root().join("fixtures/tiny-llama")
}

pub fn tiny_base() -> PathBuf {
    tiny().join("base.gguf")
}

pub fn tiny_adapter(name: &str) -> PathBuf {
    tiny().join("adapters").join(name)
}

/// The SmolLM2 GGUF: `LORAGUARD_TEST_MODEL`, else the cache that
/// `scripts/fetch-model.sh` fills. Missing is a test failure, not a skip.
pub fn smollm2_model() -> PathBuf {
    let p = std::env::var_os("LORAGUARD_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "test model {} is missing: run scripts/fetch-model.sh (CI does)",
        p.display()
    );
    p
}

pub fn opts(outtype: OutType) -> ConvertOptions {
    ConvertOptions::new(outtype)
}

/// Convert into `dir/out.gguf`.
pub fn convert_to(
    adapter: &Path,
    base: &Path,
    dir: &Path,
    outtype: OutType,
) -> (PathBuf, ConvertReport) {
    let out = dir.join("out.gguf");
    let report = convert(adapter, base, Some(&out), &opts(outtype), &|_, _| {})
        .unwrap_or_else(|e| panic!("convert {}: {e}", adapter.display()));
    (out, report)
}

/// The tiny `plain` adapter converted to F32 against the tiny base, in `dir`.
pub fn tiny_plain_f32(dir: &Path) -> PathBuf {
    convert_to(&tiny_adapter("plain"), &tiny_base(), dir, OutType::F32).0
}

/// Read an f32 or i32 tensor from a reference safetensors file.
pub fn reference(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{name} not in {}", path.display()));
    let data = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I32 => t
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    };
    (t.shape().to_vec(), data)
}

pub fn tokens(path: &Path) -> Vec<i32> {
    reference(path, "tokens")
        .1
        .iter()
        .map(|x| *x as i32)
        .collect()
}

/// llama.cpp logits for `tokens` with the given adapters at their scales.
pub fn llama_logits(model: &Model, adapters: &[(&Path, f32)], tokens: &[i32]) -> Vec<f32> {
    let loaded: Vec<_> = adapters
        .iter()
        .map(|(p, _)| model.load_adapter(p).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let pairs: Vec<_> = loaded
        .iter()
        .zip(adapters)
        .map(|(a, (_, s))| (a, *s))
        .collect();
    // F32 KV cache: the comparisons below are about the adapter, not the cache.
    let opts = SessionOptions {
        kv_f32: true,
        ..SessionOptions::default()
    };
    let mut session = Session::new(model, &opts).unwrap();
    session.set_adapters(&pairs).unwrap();
    session.logits(tokens).unwrap()
}

pub fn load_model(path: &Path) -> Model {
    Model::load(path, &ModelOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    dot / (norm(a) * norm(b))
}

/// Files in `dir` (to assert that nothing was written).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
