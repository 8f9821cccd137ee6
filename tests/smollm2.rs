//! Real model: SmolLM2-135M-Instruct (Q4_1) with a LoRA trained by PEFT
//! (fixtures/smollm2/pirate-lora). The change in llama.cpp's logits caused by
//! the converted adapter matches the change under transformers+PEFT.

use loraguard::convert::OutType;
use loraguard::gguf::GgmlType;

use crate::common::*;

/// Cosine between llama.cpp's and PEFT's logit change, per outtype.
/// Measured for the quantized types: 0.9975–0.9984 (q4_0, q5_1, q4_k,
/// q6_k), F32 0.997.
fn min_cosine(outtype: OutType) -> f64 {
    match outtype {
        OutType::F32 => 0.99,
        _ => 0.985,
    }
}

#[test]
fn smollm2_logit_change_matches_peft() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model_path = smollm2_model();
    let fix = root().join("fixtures/smollm2");
    let refs = fix.join("reference.safetensors");
    let toks = tokens(&refs);
    let (shape, want) = reference(&refs, "delta");
    let (rows, vocab) = (shape[0], shape[1]);
    let model = load_model(&model_path);
    let base = llama_logits(&model, &[], &toks);
    let last = |v: &[f32]| v[(toks.len() - rows) * vocab..].to_vec();
    let quantized = [
        GgmlType::Q4_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    let types = [OutType::F32, OutType::F16, OutType::Q8_0]
        .into_iter()
        .chain(quantized.map(OutType::Type));
    for outtype in types {
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = convert_to(&fix.join("pirate-lora"), &model_path, dir.path(), outtype);
        assert_eq!(report.targets, 30 * 4);
        let adapted = llama_logits(&model, &[(&out, 1.0)], &toks);
        let got = sub(&last(&adapted), &last(&base));
        let cos = cosine(&got, &want);
        let ratio = norm(&got) / norm(&want);
        eprintln!("smollm2 {outtype:?}: cosine {cos:.5}, norm ratio {ratio:.4}");
        assert!(cos >= min_cosine(outtype), "{outtype:?}: cosine {cos}");
        assert!(
            (0.9..1.1).contains(&ratio),
            "{outtype:?}: norm ratio {ratio}"
        );
    }
}
