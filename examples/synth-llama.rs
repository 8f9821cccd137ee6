//! A synthetic Llama-3.2-1B-shaped Q4_K base GGUF and an r-rank F16 GGUF
//! LoRA on every projection of it, for `scripts/bench-merge.sh` (issue 8,
//! part 4).
//!
//! `cargo run --release --example synth-llama -- BASE.gguf LORA.gguf [RANK]`
//!
//! Shapes are Llama-3.2-1B's: 16 layers, width 2048, 32 heads, 8 KV heads,
//! MLP 8192, vocabulary 128256, embeddings tied. Every matrix is Q4_K, the
//! norms F32. The Q4_K blocks are seeded random bytes with fixed scales
//! (every such block is a valid Q4_K block), written a block of rows at a
//! time, so making the 0.7 GB file takes seconds and little memory. The
//! LoRA (F16, since llama-export-lora refuses quantized adapters) has
//! PEFT-like factors: A uniform in ±1/√d_in, B uniform in ±0.01.

use std::error::Error;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;
use loraguard::gguf::{GgmlType, GgufWriter, MetaValue, TensorDesc};

const N_LAYER: usize = 16;
const N_EMBD: u64 = 2048;
const N_FF: u64 = 8192;
const N_HEAD: u32 = 32;
const N_HEAD_KV: u32 = 8;
const HEAD_DIM: u64 = 64;
const N_VOCAB: u64 = 128_256;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// The projections of one layer: (name, d_in, d_out).
fn projections() -> [(&'static str, u64, u64); 7] {
    let kv = u64::from(N_HEAD_KV) * HEAD_DIM;
    [
        ("attn_q", N_EMBD, N_EMBD),
        ("attn_k", N_EMBD, kv),
        ("attn_v", N_EMBD, kv),
        ("attn_output", N_EMBD, N_EMBD),
        ("ffn_gate", N_EMBD, N_FF),
        ("ffn_up", N_EMBD, N_FF),
        ("ffn_down", N_FF, N_EMBD),
    ]
}

fn write_base(path: &Path) -> Result<(), Box<dyn Error>> {
    let s = |v: &str| MetaValue::Str(v.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.type".to_string(), s("model")),
        (
            "general.name".to_string(),
            s("synthetic Llama-3.2-1B-shaped Q4_K"),
        ),
        ("general.file_type".to_string(), MetaValue::U32(15)),
        (
            "llama.block_count".to_string(),
            MetaValue::U32(N_LAYER as u32),
        ),
        ("llama.context_length".to_string(), MetaValue::U32(131_072)),
        (
            "llama.embedding_length".to_string(),
            MetaValue::U32(N_EMBD as u32),
        ),
        (
            "llama.feed_forward_length".to_string(),
            MetaValue::U32(N_FF as u32),
        ),
        (
            "llama.attention.head_count".to_string(),
            MetaValue::U32(N_HEAD),
        ),
        (
            "llama.attention.head_count_kv".to_string(),
            MetaValue::U32(N_HEAD_KV),
        ),
        (
            "llama.rope.dimension_count".to_string(),
            MetaValue::U32(HEAD_DIM as u32),
        ),
        (
            "llama.rope.freq_base".to_string(),
            MetaValue::F32(500_000.0),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".to_string(),
            MetaValue::F32(1e-5),
        ),
        (
            "llama.vocab_size".to_string(),
            MetaValue::U32(N_VOCAB as u32),
        ),
    ];
    let mut descs = vec![TensorDesc {
        name: "token_embd.weight".into(),
        ty: GgmlType::Q4_K,
        ne: vec![N_EMBD, N_VOCAB],
    }];
    for l in 0..N_LAYER {
        descs.push(TensorDesc {
            name: format!("blk.{l}.attn_norm.weight"),
            ty: GgmlType::F32,
            ne: vec![N_EMBD],
        });
        for (p, d_in, d_out) in projections() {
            descs.push(TensorDesc {
                name: format!("blk.{l}.{p}.weight"),
                ty: GgmlType::Q4_K,
                ne: vec![d_in, d_out],
            });
        }
        descs.push(TensorDesc {
            name: format!("blk.{l}.ffn_norm.weight"),
            ty: GgmlType::F32,
            ne: vec![N_EMBD],
        });
    }
    descs.push(TensorDesc {
        name: "output_norm.weight".into(),
        ty: GgmlType::F32,
        ne: vec![N_EMBD],
    });
    let shapes: Vec<(GgmlType, Vec<u64>)> = descs.iter().map(|d| (d.ty, d.ne.clone())).collect();
    let file = BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut w = GgufWriter::start(file, &meta, descs)?;
    let mut rng = Rng(1_2026);
    // Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit scales, 128 of nibbles.
    let (d, dmin) = (
        f16::from_f32(1e-4).to_le_bytes(),
        f16::from_f32(5e-5).to_le_bytes(),
    );
    for (ty, ne) in shapes {
        let bytes = ty.tensor_bytes(&ne).ok_or("bad shape")? as usize;
        let mut data = vec![0u8; bytes];
        if ty == GgmlType::F32 {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&1f32.to_le_bytes());
            }
        } else {
            rng.fill(&mut data);
            for b in data.chunks_exact_mut(144) {
                b[0..2].copy_from_slice(&d);
                b[2..4].copy_from_slice(&dmin);
            }
        }
        w.write_tensor(&data)?;
    }
    w.finish()?.flush()?;
    Ok(())
}

fn write_lora(path: &Path, rank: u64) -> Result<(), Box<dyn Error>> {
    let s = |v: &str| MetaValue::Str(v.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.type".to_string(), s("adapter")),
        ("adapter.type".to_string(), s("lora")),
        (
            "adapter.lora.alpha".to_string(),
            MetaValue::F32(rank as f32),
        ),
    ];
    let mut descs = Vec::new();
    let mut bounds = Vec::new();
    for l in 0..N_LAYER {
        for (p, d_in, d_out) in projections() {
            descs.push(TensorDesc {
                name: format!("blk.{l}.{p}.weight.lora_a"),
                ty: GgmlType::F16,
                ne: vec![d_in, rank],
            });
            bounds.push(1.0 / (d_in as f32).sqrt());
            descs.push(TensorDesc {
                name: format!("blk.{l}.{p}.weight.lora_b"),
                ty: GgmlType::F16,
                ne: vec![rank, d_out],
            });
            bounds.push(0.01);
        }
    }
    let sizes: Vec<u64> = descs.iter().map(|d| d.ne.iter().product()).collect();
    let file = BufWriter::new(std::fs::File::create(path)?);
    let mut w = GgufWriter::start(file, &meta, descs)?;
    let mut rng = Rng(2_2026);
    for (n, bound) in sizes.into_iter().zip(bounds) {
        let data: Vec<u8> = (0..n)
            .flat_map(|_| f16::from_f32(rng.uniform() * bound).to_le_bytes())
            .collect();
        w.write_tensor(&data)?;
    }
    w.finish()?.flush()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (base, lora, rank) = match args.as_slice() {
        [b, l] => (b, l, 64),
        [b, l, r] => (b, l, r.parse()?),
        _ => return Err("usage: synth-llama BASE.gguf LORA.gguf [RANK]".into()),
    };
    write_base(Path::new(base))?;
    write_lora(Path::new(lora), rank)?;
    Ok(())
}
