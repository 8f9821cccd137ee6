//! Property tests (issue 9): GGUF write→read round trips for every type
//! loraguard writes, Q8_0 quantize→dequantize within half a step, and
//! PEFT→GGUF conversion preserving ΔW for random ranks, alphas, rsLoRA and
//! per-module patterns.

use std::collections::BTreeMap;
use std::io::Write;

use loraguard::convert::OutType;
use loraguard::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorDesc};
use loraguard::matrix::Matrix;
use loraguard::quant::{decode, encode_into, WRITABLE};
use proptest::prelude::*;

use crate::architectures::{llama_delta, permute, write_base, EMBD, FFN, HEADS, KV, KV_HEADS};
use crate::common::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A tensor to write: its type, rows, blocks per row, and seed for values.
fn tensor_spec() -> impl Strategy<Value = (usize, usize, usize, u64, f32)> {
    (
        0..WRITABLE.len(),
        1usize..4,
        1usize..3,
        any::<u64>(),
        1e-3f32..100.0,
    )
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gguf_write_read_round_trips_every_written_type(
        specs in prop::collection::vec(tensor_spec(), 1..5),
        name in "[a-z][a-z0-9_.]{0,40}",
        text in "\\PC{0,64}",
        n in any::<u32>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let meta = vec![
            ("general.architecture".to_string(), MetaValue::Str("llama".into())),
            ("test.name".to_string(), MetaValue::Str(text.clone())),
            ("test.n".to_string(), MetaValue::U32(n)),
            ("test.list".to_string(), MetaValue::strings(vec![text.clone(), name.clone()])),
        ];
        let mut descs = Vec::new();
        let mut payloads = Vec::new();
        let mut originals = Vec::new();
        for (i, (ty, rows, blocks, seed, scale)) in specs.iter().enumerate() {
            let ty = WRITABLE[*ty];
            let cols = 256usize.max(ty.block_size() as usize) * blocks;
            let data = values(rows * cols, *seed, *scale);
            let mut bytes = Vec::new();
            prop_assert!(encode_into(ty, &data, &mut bytes), "{ty}");
            descs.push(TensorDesc { name: format!("{name}.{i}"), ty, ne: vec![cols as u64, *rows as u64] });
            payloads.push(bytes);
            originals.push(data);
        }
        {
            let mut f = std::fs::File::create(&path).unwrap();
            let mut w = GgufWriter::start(&mut f, &meta, descs.clone()).unwrap();
            for p in &payloads {
                w.write_tensor(p).unwrap();
            }
            w.finish().unwrap().flush().unwrap();
        }
        let g = GgufFile::open(&path).unwrap();
        let ggml = loraguard::llama::ggml::read_gguf(&path).unwrap();
        let all = std::fs::read(&path).unwrap();
        prop_assert_eq!(g.get_str("test.name"), Some(text.as_str()));
        prop_assert_eq!(g.get_u64("test.n"), Some(u64::from(n)));
        prop_assert_eq!(g.tensors.len(), descs.len());
        for (((t, d), p), orig) in g.tensors.iter().zip(&descs).zip(&payloads).zip(&originals) {
            prop_assert_eq!(&t.name, &d.name);
            prop_assert_eq!(t.ty, d.ty);
            prop_assert_eq!(&t.ne, &d.ne);
            let got = &all[t.offset as usize..(t.offset + t.size) as usize];
            prop_assert!(got == p.as_slice(), "{}: bytes differ", t.name);
            let ti = ggml.tensors.iter().find(|x| x.name == t.name).unwrap();
            prop_assert_eq!(ti.offset, t.offset);
            prop_assert_eq!(ti.type_id, t.ty.id());
            // Decoding gives the values back within the type's precision.
            let back = decode(t.ty, got).unwrap();
            let err = back.iter().zip(orig).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
            let norm = orig.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let bound = match t.ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                GgmlType::BF16 => 8e-3,
                GgmlType::Q8_0 | GgmlType::Q6_K => 2e-2,
                GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 8e-2,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 0.15,
                _ => 0.6,
            };
            prop_assert!(err <= bound * norm, "{}: relative error {}", t.ty, err / norm);
        }
    }

    #[test]
    fn q8_0_dequantizes_within_half_a_step(seed in any::<u64>(), scale in 1e-6f32..1e4, blocks in 1usize..16) {
        let data = values(32 * blocks, seed, scale);
        let mut q = Vec::new();
        prop_assert!(encode_into(GgmlType::Q8_0, &data, &mut q));
        let back = decode(GgmlType::Q8_0, &q).unwrap();
        for (b, (xs, ys)) in data.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            // d = amax / 127, stored as f16 (relative rounding ≤ 2⁻¹¹).
            let step = amax / 127.0 * (1.0 + 1.0 / 1024.0);
            for (x, y) in xs.iter().zip(ys) {
                prop_assert!((x - y).abs() <= 0.5 * step + amax * 1e-3, "block {}: {} vs {}", b, x, y);
            }
        }
        // And ggml's own dequantizer reads the same values.
        let ggml = loraguard::llama::ggml::dequantize(GgmlType::Q8_0.id(), &q, data.len()).unwrap();
        prop_assert_eq!(ggml, back);
    }
}

/// HF module, GGUF tensor, d_in, d_out.
const MODULES: [(&str, &str, usize, usize); 7] = [
    ("self_attn.q_proj", "blk.0.attn_q.weight", EMBD, EMBD),
    ("self_attn.k_proj", "blk.0.attn_k.weight", EMBD, KV),
    ("self_attn.v_proj", "blk.0.attn_v.weight", EMBD, KV),
    ("self_attn.o_proj", "blk.0.attn_output.weight", EMBD, EMBD),
    ("mlp.gate_proj", "blk.0.ffn_gate.weight", EMBD, FFN),
    ("mlp.up_proj", "blk.0.ffn_up.weight", EMBD, FFN),
    ("mlp.down_proj", "blk.0.ffn_down.weight", FFN, EMBD),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..config() })]

    /// For random r, lora_alpha, use_rslora, per-module rank and alpha
    /// patterns and output float type, the ΔW llama.cpp applies from the
    /// written file (alpha / rank · B′·A′) equals PEFT's s·B·A after the
    /// llama Q/K row permutation.
    #[test]
    fn peft_to_gguf_preserves_delta_w(
        r in 1usize..9,
        alpha in 1u32..64,
        rslora in any::<bool>(),
        ranks in prop::collection::vec(prop::option::of(1usize..9), 7),
        alphas in prop::collection::vec(prop::option::of(1u32..64), 7),
        seed in any::<u64>(),
        outtype in prop::sample::select(vec![OutType::F32, OutType::F16, OutType::BF16]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.gguf");
        write_base("llama", &base);
        let ad = dir.path().join("adapter");
        std::fs::create_dir(&ad).unwrap();
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        let mut rank_pattern = BTreeMap::new();
        let mut alpha_pattern = BTreeMap::new();
        let mut want = Vec::new();
        for (k, (m, tensor, din, dout)) in MODULES.iter().enumerate() {
            let short = m.rsplit('.').next().unwrap();
            let rk = ranks[k].unwrap_or(r);
            let ak = alphas[k].unwrap_or(alpha);
            if let Some(x) = ranks[k] { rank_pattern.insert(short.to_string(), x); }
            if let Some(x) = alphas[k] { alpha_pattern.insert(short.to_string(), x); }
            let a = Matrix { rows: rk, cols: *din, data: values(rk * din, seed ^ (2 * k as u64 + 1), 1.0) };
            let b = Matrix { rows: *dout, cols: rk, data: values(dout * rk, seed ^ (2 * k as u64 + 2), 1.0) };
            for (suffix, mtx) in [("lora_A", &a), ("lora_B", &b)] {
                let start = data.len();
                for v in &mtx.data {
                    data.extend_from_slice(&v.to_le_bytes());
                }
                header.insert(
                    format!("base_model.model.model.layers.0.{m}.{suffix}.weight"),
                    serde_json::json!({"dtype": "F32", "shape": [mtx.rows, mtx.cols], "data_offsets": [start, data.len()]}),
                );
            }
            let s = ak as f32 / if rslora { (rk as f32).sqrt() } else { rk as f32 };
            let mut d = b.matmul(&a);
            d.scale(s);
            let d = match *tensor {
                "blk.0.attn_q.weight" => permute(&d, HEADS),
                "blk.0.attn_k.weight" => permute(&d, KV_HEADS),
                _ => d,
            };
            want.push((*tensor, d));
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend(h);
        bytes.extend(data);
        std::fs::write(ad.join("adapter_model.safetensors"), bytes).unwrap();
        let cfg = serde_json::json!({
            "peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
            "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
            "target_modules": MODULES.iter().map(|m| m.0.rsplit('.').next().unwrap()).collect::<Vec<_>>(),
        });
        std::fs::write(ad.join("adapter_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let (out, _) = convert_to(&ad, &base, dir.path(), outtype);
        let g = GgufFile::open(&out).unwrap();
        let file = std::fs::read(&out).unwrap();
        let tol = match outtype {
            OutType::F32 => 1e-5,
            OutType::F16 => 2e-3,
            _ => 1.6e-2,
        };
        for (tensor, w) in want {
            let got = llama_delta(&g, &file, tensor);
            prop_assert_eq!((got.rows, got.cols), (w.rows, w.cols));
            let err = max_abs_diff(&got.data, &w.data);
            let scale = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            prop_assert!(err <= tol * scale, "{} {:?}: max error {} of {}", tensor, outtype, err, scale);
        }
    }
}
