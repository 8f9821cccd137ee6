//! loraguard's encoders and writer checked against ggml's own code.

use loraguard::convert::OutType;
use loraguard::gguf::{GgmlType, GgufFile};
use loraguard::llama::ggml;
use loraguard::quant::encode_into;

use crate::common::*;

/// A deterministic spread of magnitudes, signs, exact halves and zero blocks.
fn test_data(n: usize) -> Vec<f32> {
    let mut x = 0x9e37_79b9u32;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let u = (x as f32 / u32::MAX as f32) - 0.5;
            match (i / 32) % 5 {
                0 => 0.0,
                1 => u * 1e-3,
                2 => u * 40.0,
                3 => (i % 7) as f32 - 3.5, // ties at .5 after scaling
                _ => u,
            }
        })
        .collect()
}

#[test]
fn q8_0_is_bit_identical_to_ggml() {
    for rows in [1usize, 3, 17] {
        let n_per_row = 256;
        let data = test_data(rows * n_per_row);
        let mut ours = Vec::new();
        assert!(encode_into(GgmlType::Q8_0, &data, &mut ours));
        let theirs = ggml::quantize(GgmlType::Q8_0.id(), &data, n_per_row).unwrap();
        assert_eq!(ours, theirs, "{rows} rows");
    }
}

#[test]
fn type_table_agrees_with_ggml() {
    for id in 0..40u32 {
        let Some(ty) = GgmlType::from_id(id) else {
            continue;
        };
        let (blck, size) = ggml::type_traits(id).unwrap_or_else(|| panic!("ggml lacks {ty}"));
        assert_eq!((ty.block_size(), ty.block_bytes()), (blck, size), "{ty}");
    }
}

#[test]
fn written_files_parse_identically_in_ggml() {
    for outtype in [OutType::F32, OutType::F16, OutType::BF16, OutType::Q8_0] {
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = convert_to(
            &tiny_adapter("embed-head"),
            &tiny_base(),
            dir.path(),
            outtype,
        );
        let ours = GgufFile::open(&out).unwrap();
        let theirs = ggml::read_gguf(&out).unwrap();
        assert_eq!(theirs.general_type.as_deref(), Some("adapter"));
        assert_eq!(theirs.architecture.as_deref(), Some("llama"));
        assert_eq!(theirs.lora_alpha, Some(8.0));
        assert_eq!(theirs.tensors.len(), ours.tensors.len());
        for (a, b) in ours.tensors.iter().zip(&theirs.tensors) {
            assert_eq!(
                (&a.name, a.ty.id(), a.offset),
                (&b.name, b.type_id, b.offset)
            );
        }
    }
}

#[test]
fn token_embd_lora_a_is_stored_transposed() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = convert_to(
        &tiny_adapter("embed-head"),
        &tiny_base(),
        dir.path(),
        OutType::F32,
    );
    let g = GgufFile::open(&out).unwrap();
    // base token_embd ne = [64, 259]: lora_a ne = [r, vocab], lora_b ne = [r, n_embd]
    assert_eq!(
        g.tensor("token_embd.weight.lora_a").unwrap().ne,
        vec![4, 259]
    );
    assert_eq!(
        g.tensor("token_embd.weight.lora_b").unwrap().ne,
        vec![4, 64]
    );
    assert_eq!(g.tensor("output.weight.lora_a").unwrap().ne, vec![64, 4]);
    assert!(report
        .transforms
        .iter()
        .any(|t| t == "token_embd_lora_a_transposed"));
}

#[test]
fn q4_k_fast_path_is_bit_identical_to_ggml_on_real_weights() {
    // Every weight tensor of SmolLM2 (dequantized from its Q4_1 and Q6_K),
    // 48 super-blocks from its start, middle and end, through the
    // vectorized Q4_K quantizer and through ggml's own.
    let model = GgufFile::open(&smollm2_model()).unwrap();
    let all = std::fs::read(&model.path).unwrap();
    let mut blocks = 0usize;
    for t in &model.tensors {
        let n: u64 = t.ne.iter().product();
        if t.ne.len() < 2 || n < 256 * 48 {
            continue;
        }
        let raw = &all[t.offset as usize..(t.offset + t.size) as usize];
        let x = ggml::dequantize(t.ty.id(), raw, n as usize).unwrap();
        let whole = x.len() / 256 * 256;
        let mid = whole / 2 / 256 * 256;
        let mut sample = Vec::new();
        for at in [0, mid, whole - 16 * 256] {
            sample.extend_from_slice(&x[at..at + 16 * 256]);
        }
        let mut ours = vec![0u8; sample.len() / 256 * 144];
        loraguard::llama::q4_k::quantize(&sample, &mut ours).unwrap();
        let theirs = ggml::quantize(GgmlType::Q4_K.id(), &sample, 256).unwrap();
        assert!(
            ours == theirs,
            "{}: the Q4_K bytes differ from ggml's",
            t.name
        );
        blocks += sample.len() / 256;
    }
    assert!(blocks > 48 * 200, "only {blocks} super-blocks compared");
}
