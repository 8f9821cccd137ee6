//! Quantized GGUF LoRA outputs (issue 8, part 3): q4_0, q4_1, q5_0, q5_1 and
//! the K-quants, written by ggml's own quantizers, with llama-quantize's
//! per-tensor fallback, loaded and applied by llama.cpp (on SmolLM2:
//! `tests/smollm2.rs`).

use loraguard::convert::{convert, ConvertOptions, OutType};
use loraguard::gguf::{GgmlType, GgufFile};
use loraguard::quant::writable_type;

use crate::common::*;

/// The quantized types besides Q8_0 (which `convert_e2e` covers).
fn quants() -> impl Iterator<Item = GgmlType> {
    loraguard::quant::WRITABLE
        .iter()
        .copied()
        .filter(|t| !t.is_float() && *t != GgmlType::Q8_0)
}

/// Bounds on the tiny model, per type actually written for `lora_a` (rows of
/// 64 hold no K-quant block, so K-quants are written as their fallback):
/// (median ΔW error as written, error of llama.cpp's logit change against
/// PEFT's). Measured on the plain adapter: Q4_0 6.6e-2 / 7.4e-2, Q4_1
/// 6.1e-2 / 6.7e-2, Q5_0 3.1e-2 / 3.8e-2, Q5_1 3.0e-2 / 2.8e-2, Q8_0 (Q6_K's
/// fallback) 3.8e-3 / 7.1e-3.
fn bounds(written_a: GgmlType) -> (f64, f64) {
    match written_a {
        GgmlType::Q4_0 | GgmlType::Q4_1 => (0.12, 0.15),
        GgmlType::Q5_0 | GgmlType::Q5_1 => (0.06, 0.08),
        GgmlType::Q8_0 => (0.01, 0.02),
        t => panic!("unexpected lora_a type {t}"),
    }
}

#[test]
fn quantized_outtypes_write_ggml_types_and_reproduce_peft_logits() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model = load_model(&tiny_base());
    let refs = tiny().join("reference.safetensors");
    let toks = tokens(&refs);
    let (_, base) = reference(&refs, "base");
    let (_, want) = reference(&refs, "plain");
    let want_effect = sub(&want, &base);
    let ll_base = llama_logits(&model, &[], &toks);
    let mut failures = Vec::new();
    for ty in quants() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("q.gguf");
        let opts = ConvertOptions {
            measure_error: true,
            ..ConvertOptions::new(OutType::Type(ty))
        };
        let report = convert(
            &tiny_adapter("plain"),
            &tiny_base(),
            Some(&out),
            &opts,
            &|_, _| {},
        )
        .unwrap_or_else(|e| panic!("{ty}: {e}"));
        // Every tensor is in the type the fallback rule names, in our reader
        // and in ggml's; exactly the others are reported.
        let file = GgufFile::open(&out).unwrap();
        let ggml = loraguard::llama::ggml::read_gguf(&out).unwrap();
        let mut expected_fallbacks = 0;
        for (t, g) in file.tensors.iter().zip(&ggml.tensors) {
            let (want_ty, why) = writable_type(ty, t.ne[0]);
            assert_eq!(t.ty, want_ty, "{ty}: {}", t.name);
            assert_eq!(g.type_id, want_ty.id(), "{ty}: {} in ggml", t.name);
            expected_fallbacks += usize::from(why.is_some());
        }
        assert_eq!(report.fallbacks.len(), expected_fallbacks, "{ty}");
        let written_a = file.tensors[0].ty;
        let (err_bound, logit_bound) = bounds(written_a);
        let mut errs: Vec<f64> = report
            .modules
            .iter()
            .map(|m| m.written_error.unwrap())
            .collect();
        errs.sort_by(f64::total_cmp);
        let median = errs[errs.len() / 2];
        let got = sub(&llama_logits(&model, &[(&out, 1.0)], &toks), &ll_base);
        let logit_err = norm(&sub(&got, &want_effect)) / norm(&want_effect);
        eprintln!(
            "{ty} (lora_a {written_a}): ΔW error median {median:.3e}, logit-change error {logit_err:.3e}"
        );
        // Quantization loses something: a lossless result means the type
        // was not applied.
        if !(median > 1e-4 && median < err_bound && logit_err < logit_bound) {
            failures.push(format!(
                "{ty}: median {median:.3e} (bound {err_bound}), logits {logit_err:.3e} (bound {logit_bound})"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn k_quant_tensors_are_the_bytes_llama_quantize_writes() {
    // SmolLM2's ffn_down rows hold 1536 values (6 blocks of 256): its
    // lora_a is Q4_K; the other lora_a rows (576) fall back to Q5_0 and
    // every lora_b (rows of 8) to F16. Quantizing block by block, as
    // loraguard does, gives the bytes ggml_quantize_chunk gives for the
    // tensor's real rows (what llama-quantize calls).
    let model = smollm2_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = root().join("fixtures/smollm2/task-lora");
    let (q, report) = convert_to(&adapter, &model, dir.path(), OutType::Type(GgmlType::Q4_K));
    let (f, _) = {
        let d = dir.path().join("f32");
        std::fs::create_dir(&d).unwrap();
        convert_to(&adapter, &model, &d, OutType::F32)
    };
    let (qf, ff) = (GgufFile::open(&q).unwrap(), GgufFile::open(&f).unwrap());
    let bytes = |file: &GgufFile, name: &str| {
        let t = file.tensor(name).unwrap();
        let all = std::fs::read(&file.path).unwrap();
        all[t.offset as usize..(t.offset + t.size) as usize].to_vec()
    };
    let mut k = 0usize;
    for t in &qf.tensors {
        let want = if t.name.ends_with("lora_b") {
            GgmlType::F16
        } else if t.name.contains("ffn_down") {
            GgmlType::Q4_K
        } else {
            GgmlType::Q5_0
        };
        assert_eq!(t.ty, want, "{}", t.name);
        if t.ty == GgmlType::Q4_K {
            let raw = bytes(&ff, &t.name);
            let values: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let ggml =
                loraguard::llama::ggml::quantize(t.ty.id(), &values, t.ne[0] as usize).unwrap();
            assert!(ggml == bytes(&qf, &t.name), "{}", t.name);
            k += 1;
        }
    }
    assert_eq!(k, 30, "one Q4_K tensor per layer");
    assert_eq!(report.fallbacks.len(), qf.tensors.len() - k);
}
