//! Issue 20's "correctness and soundness" items, each pinned by a test that
//! failed (or aborted the process) on the code before the fix.

use loraguard::llama::{Session, SessionOptions};

use crate::common::*;

/// Item 3: nothing tied an `Adapter` to its own `Model`, so an adapter of
/// another model reached ggml's shape asserts and aborted the process. The
/// session now refuses it with an error naming both files.
#[test]
fn an_adapter_loaded_for_another_model_is_refused_not_aborted() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tiny_lora = tiny_plain_f32(dir.path());
    let tiny = load_model(&tiny_base());
    let smol = load_model(&smollm2_model());
    let adapter = tiny.load_adapter(&tiny_lora).unwrap();
    let mut session = Session::new(&smol, &SessionOptions::default()).unwrap();
    let e = session.set_adapters(&[(&adapter, 1.0)]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("another model"), "{msg}");
    // Its own model's session takes it.
    let mut own = Session::new(&tiny, &SessionOptions::default()).unwrap();
    own.set_adapters(&[(&adapter, 1.0)]).unwrap();
}

/// Item 3: `ggml::quantize_into` checked only the importance-matrix types,
/// and ggml_quantize_chunk aborts on a type it has no quantizer for.
#[test]
fn quantizing_to_a_type_ggml_cannot_write_is_an_error_not_an_abort() {
    use loraguard::llama::ggml;
    let data = vec![0.5f32; 256];
    for (name, id) in [("Q8_K", 15u32), ("I8", 24), ("IQ2_XXS", 16)] {
        assert!(!ggml::can_quantize(id), "{name}");
        let e = ggml::quantize(id, &data, 256).unwrap_err();
        assert!(e.to_string().contains("cannot be quantized"), "{name}: {e}");
    }
    assert!(ggml::quantize(8, &data, 256).is_ok()); // Q8_0
}

/// Item 3: `Session::logits` checked tokens against `n_ctx` only, and
/// llama_decode's GGML_ASSERT aborts on more tokens than the `n_batch`
/// llama.cpp clamped. More than n_batch tokens are now an error.
#[test]
fn logits_of_more_tokens_than_the_batch_is_an_error_not_an_abort() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model = load_model(&tiny_base());
    let opts = SessionOptions {
        n_ctx: 256,
        n_batch: 32,
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).unwrap();
    let toks = vec![1i32; 40];
    let e = session.logits(&toks).unwrap_err();
    assert!(e.to_string().contains("batch 32"), "{e}");
    assert!(session.logits(&toks[..32]).is_ok());
}

/// The tiny base with `llama.block_count` (a u32) set to `n`.
fn base_with_block_count(dir: &std::path::Path, n: u32) -> std::path::PathBuf {
    let mut bytes = std::fs::read(tiny_base()).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes(), "a u32 value");
    bytes[at + 4..at + 8].copy_from_slice(&n.to_le_bytes());
    let out = dir.join(format!("base-{n}.gguf"));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Item 4: convert indexed the per-layer head counts before checking the
/// layer against `block_count`, so a base claiming 0 layers with `blk.0.*`
/// tensors panicked; a huge `block_count` sized those tables. Both are now
/// bad input (exit 2) with nothing written.
#[test]
fn a_base_whose_block_count_disagrees_with_its_tensors_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for n in [0u32, u32::MAX] {
        let base = base_with_block_count(dir.path(), n);
        let out = dir.path().join(format!("out-{n}.gguf"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraguard"))
            .arg("convert")
            .arg(tiny_adapter("plain"))
            .arg("--base")
            .arg(&base)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "block_count {n}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists());
    }
}

/// A GGUF LoRA converted from the tiny fixture with one pair patched to
/// rank 0 (lora_a ne [in, 0], lora_b ne [0, out]; no data).
fn rank_zero_lora(dir: &std::path::Path) -> std::path::PathBuf {
    let lora = tiny_plain_f32(dir);
    let mut bytes = std::fs::read(&lora).unwrap();
    let info = |bytes: &[u8], name: &str| {
        let n = name.as_bytes();
        let mut key = (n.len() as u64).to_le_bytes().to_vec();
        key.extend_from_slice(n);
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        assert_eq!(&bytes[at..at + 4], &2u32.to_le_bytes(), "{name}: two dims");
        at + 4 // ne[0]
    };
    let a = info(&bytes, "blk.0.attn_q.weight.lora_a");
    bytes[a + 8..a + 16].copy_from_slice(&0u64.to_le_bytes()); // ne[1] = r
    let b = info(&bytes, "blk.0.attn_q.weight.lora_b");
    bytes[b..b + 8].copy_from_slice(&0u64.to_le_bytes()); // ne[0] = r
    let out = dir.join("rank0.gguf");
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Item 4: a rank-0 LoRA reached llama.cpp's alpha / rank (and the SVDs
/// of empty factors). Every command that reads GGUF LoRA factors now
/// refuses it as bad input, naming the module.
#[test]
fn a_rank_zero_lora_is_bad_input_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let lora = rank_zero_lora(dir.path());
    let out = dir.path().join("result");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let other = s(&tiny_adapter("plain"));
    let base = s(&tiny_base());
    let cases: Vec<Vec<String>> = vec![
        vec!["analyze".into(), s(&lora), "--base".into(), base.clone()],
        vec![
            "fuse".into(),
            s(&lora),
            other.clone(),
            "--method".into(),
            "cat".into(),
            "--base".into(),
            base.clone(),
            "-o".into(),
            format!("{}.gguf", s(&out)),
        ],
        vec![
            "merge".into(),
            "--model".into(),
            base.clone(),
            "--lora".into(),
            s(&lora),
            "-o".into(),
            format!("{}.gguf", s(&out)),
        ],
        vec![
            "safe-lora".into(),
            s(&lora),
            "--base".into(),
            base.clone(),
            "--aligned".into(),
            other.clone(),
            "-o".into(),
            format!("{}.gguf", s(&out)),
        ],
    ];
    for args in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraguard"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", args[0]);
        assert!(
            err.contains("rank 0") && !err.contains("panicked"),
            "{}: {err}",
            args[0]
        );
        assert!(
            !std::path::Path::new(&format!("{}.gguf", s(&out))).exists(),
            "{}: wrote its output",
            args[0]
        );
    }
}

/// The tiny `plain` adapter with lora_B scaled by `k` (F32), in `dir`.
fn scaled_adapter(dir: &std::path::Path, k: f32) -> std::path::PathBuf {
    let src = tiny_adapter("plain");
    let out = dir.join(format!("plain-x{k}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        out.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        let f = if name.contains("lora_B") { k } else { 1.0 };
        let v: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * f).to_le_bytes())
            .collect();
        data.push((name, view.shape().to_vec(), v));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
            (n.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &out.join("adapter_model.safetensors")).unwrap();
    out
}

/// Item 5: `--outtype auto` errored in `convert` on values beyond F16's
/// range while `fuse` fell back to F32, and the doc comment promised the
/// fallback. Both now write those tensors as F32 and report why; an
/// explicit `--outtype f16` still refuses them.
#[test]
fn outtype_auto_falls_back_to_f32_beyond_f16_in_convert_as_in_fuse() {
    use loraguard::convert::{convert, ConvertOptions, OutType};
    let dir = tempfile::tempdir().unwrap();
    let big = scaled_adapter(dir.path(), 1e7);
    let out = dir.path().join("auto.gguf");
    let r = convert(
        &big,
        &tiny_base(),
        Some(&out),
        &ConvertOptions::new(OutType::Auto),
        &|_, _| {},
    )
    .unwrap();
    assert!(!r.fallbacks.is_empty());
    assert!(
        r.fallbacks.iter().all(|f| f.reason.contains("F16's range")),
        "{:?}",
        r.fallbacks
    );
    let g = loraguard::gguf::GgufFile::open(&out).unwrap();
    for f in &r.fallbacks {
        assert_eq!(
            g.tensor(&f.tensor).unwrap().ty,
            loraguard::gguf::GgmlType::F32
        );
    }
    // The dry run plans the same fallbacks.
    let dry = ConvertOptions {
        dry_run: true,
        ..ConvertOptions::new(OutType::Auto)
    };
    let planned = convert(&big, &tiny_base(), None, &dry, &|_, _| {}).unwrap();
    assert_eq!(planned.fallbacks.len(), r.fallbacks.len());
    // f16 asked for explicitly: refused.
    let e = convert(
        &big,
        &tiny_base(),
        Some(&dir.path().join("f16.gguf")),
        &ConvertOptions::new(OutType::F16),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("F16's range"),
        "{e}"
    );
    // fuse, the same adapter twice at weight 0.5: F32 where F16 cannot hold it.
    let fused = dir.path().join("fused.gguf");
    let inputs = [
        loraguard::fuse::FuseInput::new(&big, 0.5),
        loraguard::fuse::FuseInput::new(&big, 0.5),
    ];
    let opts = loraguard::fuse::FuseOptions::new(loraguard::fuse::Method::Cat)
        .gguf(tiny_base(), OutType::Auto);
    let fr = loraguard::fuse::fuse(&inputs, &fused, &opts, &|_, _| {}).unwrap();
    assert!(!fr.fallbacks.is_empty());
}

/// Section 3: a model or adapter llama.cpp refuses was an internal failure
/// (exit 1) whose reason was only in the -v log. It is now bad input
/// (exit 2) carrying llama.cpp's own first error line.
#[test]
fn files_llama_cpp_refuses_are_bad_input_with_its_reason() {
    use loraguard::llama::{Model, ModelOptions};
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00not really a model").unwrap();
    let e = Model::load(&junk, &ModelOptions::default()).err().unwrap();
    let msg = e.to_string();
    assert!(e.is_bad_input(), "{msg}");
    assert!(!msg.contains("no reason logged"), "{msg}");
    assert!(loraguard::error::Error::from(e).is_bad_input());
    // A tiny model's adapter on SmolLM2: llama.cpp checks the shapes.
    let tiny_lora = tiny_plain_f32(dir.path());
    let smol = load_model(&smollm2_model());
    let e = smol.load_adapter(&tiny_lora).err().unwrap();
    let msg = e.to_string();
    assert!(
        e.is_bad_input() && !msg.contains("no reason logged"),
        "{msg}"
    );
}
