//! One test per architecture: a synthetic base GGUF with the architecture's
//! tensor table, a synthetic PEFT adapter on every supported module, and a
//! dense check that the ΔW llama.cpp will apply, `alpha / rank · B·A` read
//! back from the written file, equals PEFT's `s · B·A` after the HF
//! converter's transform of that architecture.

use std::io::Write;
use std::path::Path;

use loraguard::convert::OutType;
use loraguard::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorDesc};
use loraguard::matrix::Matrix;
use loraguard::quant::decode;

use crate::common::*;

pub const EMBD: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 96;
const HEAD_DIM: usize = EMBD / HEADS;
pub const KV: usize = KV_HEADS * HEAD_DIM;

/// `(tensor, d_in, d_out)` of the base, per architecture (one layer).
fn base_tensors(arch: &str) -> Vec<(&'static str, usize, usize)> {
    if arch == "phi3" {
        vec![
            ("blk.0.attn_qkv.weight", EMBD, EMBD + 2 * KV),
            ("blk.0.attn_output.weight", EMBD, EMBD),
            ("blk.0.ffn_up.weight", EMBD, 2 * FFN),
            ("blk.0.ffn_down.weight", FFN, EMBD),
        ]
    } else {
        vec![
            ("blk.0.attn_q.weight", EMBD, EMBD),
            ("blk.0.attn_k.weight", EMBD, KV),
            ("blk.0.attn_v.weight", EMBD, KV),
            ("blk.0.attn_output.weight", EMBD, EMBD),
            ("blk.0.ffn_gate.weight", EMBD, FFN),
            ("blk.0.ffn_up.weight", EMBD, FFN),
            ("blk.0.ffn_down.weight", FFN, EMBD),
        ]
    }
}

pub fn write_base(arch: &str, path: &Path) {
    let meta = vec![
        (
            "general.architecture".to_string(),
            MetaValue::Str(arch.into()),
        ),
        (format!("{arch}.block_count"), MetaValue::U32(1)),
        (
            format!("{arch}.embedding_length"),
            MetaValue::U32(EMBD as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            MetaValue::U32(HEADS as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            MetaValue::U32(KV_HEADS as u32),
        ),
    ];
    let tensors = base_tensors(arch);
    let descs = tensors
        .iter()
        .map(|(n, i, o)| TensorDesc {
            name: n.to_string(),
            ty: GgmlType::F16,
            ne: vec![*i as u64, *o as u64],
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::start(&mut f, &meta, descs).unwrap();
    for (_, i, o) in &tensors {
        w.write_tensor(&vec![0u8; i * o * 2]).unwrap();
    }
    w.finish().unwrap().flush().unwrap();
}

/// Deterministic pseudo-random values.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

/// HF modules and `(d_in, d_out, rank)`; phi3 gets per-projection LoRAs
/// that must be fused.
fn modules() -> Vec<(&'static str, usize, usize, usize)> {
    vec![
        ("self_attn.q_proj", EMBD, EMBD, 4),
        ("self_attn.k_proj", EMBD, KV, 2),
        ("self_attn.v_proj", EMBD, KV, 3),
        ("self_attn.o_proj", EMBD, EMBD, 4),
        ("mlp.gate_proj", EMBD, FFN, 4),
        ("mlp.up_proj", EMBD, FFN, 2),
        ("mlp.down_proj", FFN, EMBD, 4),
    ]
}

fn write_adapter(dir: &Path) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (k, (m, din, dout, r)) in modules().into_iter().enumerate() {
        for (suffix, rows, cols) in [("lora_A", r, din), ("lora_B", dout, r)] {
            let name = format!("base_model.model.model.layers.0.{m}.{suffix}.weight");
            let start = data.len();
            for v in values(rows * cols, (k * 2 + suffix.len()) as u32 + 7) {
                data.extend_from_slice(&v.to_le_bytes());
            }
            header.insert(name, serde_json::json!({"dtype": "F32", "shape": [rows, cols], "data_offsets": [start, data.len()]}));
        }
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(data);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    // rsLoRA with patterns so that every module has its own scale.
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true,
            "rank_pattern": {"k_proj": 2, "v_proj": 3, "up_proj": 2},
            "alpha_pattern": {"o_proj": 5, "v_proj": 3}}"#,
    )
    .unwrap();
}

/// PEFT's dense ΔW for a module.
fn peft_delta(m: &str, k: usize) -> Matrix {
    let (_, din, dout, r) = modules().into_iter().find(|x| x.0 == m).unwrap();
    let a = Matrix {
        rows: r,
        cols: din,
        data: values(r * din, (k * 2 + 6) as u32 + 7),
    };
    let b = Matrix {
        rows: dout,
        cols: r,
        data: values(dout * r, (k * 2 + 6) as u32 + 7),
    };
    let alpha = match m {
        "self_attn.o_proj" => 5.0,
        "self_attn.v_proj" => 3.0,
        _ => 8.0,
    };
    let mut d = b.matmul(&a);
    d.scale(alpha / (r as f32).sqrt());
    d
}

/// `convert_hf_to_gguf.py`'s permute, written independently: row
/// `h·hd + 2j + i` of the result is row `h·hd + i·hd/2 + j` of the input.
pub fn permute(m: &Matrix, heads: usize) -> Matrix {
    let hd = m.rows / heads;
    let mut out = m.clone();
    for dst in 0..m.rows {
        let (h, w) = (dst / hd, dst % hd);
        let src = h * hd + (w % 2) * (hd / 2) + w / 2;
        out.data[dst * m.cols..(dst + 1) * m.cols].copy_from_slice(m.row(src));
    }
    out
}

fn vstack(ms: &[Matrix]) -> Matrix {
    let cols = ms[0].cols;
    Matrix {
        rows: ms.iter().map(|m| m.rows).sum(),
        cols,
        data: ms.iter().flat_map(|m| m.data.clone()).collect(),
    }
}

/// The ΔW llama.cpp applies for `tensor` in the written file.
pub fn llama_delta(g: &GgufFile, bytes: &[u8], tensor: &str) -> Matrix {
    let read = |name: &str| {
        let t = g.tensor(name).unwrap();
        let data = decode(
            t.ty,
            &bytes[t.offset as usize..(t.offset + t.size) as usize],
        )
        .unwrap();
        Matrix {
            rows: t.ne[1] as usize,
            cols: t.ne[0] as usize,
            data,
        }
    };
    let a = read(&format!("{tensor}.lora_a"));
    let b = read(&format!("{tensor}.lora_b"));
    let alpha = g.get_f64("adapter.lora.alpha").unwrap() as f32;
    assert_ne!(alpha, 0.0);
    let mut d = b.matmul(&a);
    d.scale(alpha / b.cols as f32);
    d
}

fn check_arch(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    write_base(arch, &base);
    write_adapter(&dir.path().join("adapter"));
    let (out, report) = convert_to(&dir.path().join("adapter"), &base, dir.path(), OutType::F32);
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.architecture(), Some(arch));
    let bytes = std::fs::read(&out).unwrap();
    let idx = |m: &str| modules().iter().position(|x| x.0 == m).unwrap();
    let want = |m: &str| peft_delta(m, idx(m));
    let mut expected: Vec<(&str, Matrix)> = Vec::new();
    if arch == "phi3" {
        expected.push((
            "blk.0.attn_qkv.weight",
            vstack(&[
                want("self_attn.q_proj"),
                want("self_attn.k_proj"),
                want("self_attn.v_proj"),
            ]),
        ));
        expected.push((
            "blk.0.ffn_up.weight",
            vstack(&[want("mlp.gate_proj"), want("mlp.up_proj")]),
        ));
        assert_eq!(report.targets, 4);
        assert!(report.transforms.iter().any(|t| t.starts_with("fused")));
    } else {
        let (q, k) = if arch == "llama" {
            (
                permute(&want("self_attn.q_proj"), HEADS),
                permute(&want("self_attn.k_proj"), KV_HEADS),
            )
        } else {
            (want("self_attn.q_proj"), want("self_attn.k_proj"))
        };
        expected.push(("blk.0.attn_q.weight", q));
        expected.push(("blk.0.attn_k.weight", k));
        expected.push(("blk.0.attn_v.weight", want("self_attn.v_proj")));
        expected.push(("blk.0.ffn_gate.weight", want("mlp.gate_proj")));
        expected.push(("blk.0.ffn_up.weight", want("mlp.up_proj")));
        assert_eq!(report.targets, 7);
    }
    expected.push(("blk.0.attn_output.weight", want("self_attn.o_proj")));
    expected.push(("blk.0.ffn_down.weight", want("mlp.down_proj")));
    for (tensor, w) in expected {
        let got = llama_delta(&g, &bytes, tensor);
        assert_eq!((got.rows, got.cols), (w.rows, w.cols), "{arch} {tensor}");
        let err = max_abs_diff(&got.data, &w.data);
        let scale = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            err <= 1e-5 * scale,
            "{arch} {tensor}: max error {err} of {scale}"
        );
    }
}

#[test]
fn llama_permutes_q_and_k() {
    check_arch("llama");
}
#[test]
fn qwen2_maps_directly() {
    check_arch("qwen2");
}
#[test]
fn qwen3_maps_directly() {
    check_arch("qwen3");
}
#[test]
fn gemma_maps_directly() {
    check_arch("gemma");
}
#[test]
fn gemma2_maps_directly() {
    check_arch("gemma2");
}
#[test]
fn gemma3_maps_directly() {
    check_arch("gemma3");
}
#[test]
fn phi3_fuses_qkv_and_gate_up_exactly() {
    check_arch("phi3");
}

#[test]
fn unknown_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.gguf");
    write_base("mamba", &base);
    write_adapter(&dir.path().join("adapter"));
    let err = loraguard::convert::convert(
        &dir.path().join("adapter"),
        &base,
        Some(&dir.path().join("o.gguf")),
        &opts(OutType::F32),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, loraguard::Error::Architecture { .. }),
        "{err:?}"
    );
    assert!(!dir.path().join("o.gguf").exists());
}
