//! Encoding f32 data into the GGUF tensor types loraguard writes, and the
//! per-tensor fallback when a row cannot hold a type.
//!
//! Q8_0 follows ggml's `quantize_row_q8_0_ref` exactly (tested bit for bit
//! against ggml through the ffi crate): per block of 32, `d = amax / 127`,
//! `q = round(x / d)` rounding half away from zero, `d` stored as f16. The
//! other quantized types (Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants) go
//! through ggml's own `ggml_quantize_chunk` (no importance matrix), so they
//! come out byte for byte as llama-quantize writes them: those quantizers
//! search for scales iteratively, and a hand-written copy would drift. The
//! one exception is Q4_K, the most common type of published models, whose
//! search is slow enough to dominate `merge`: it runs as a vectorized copy
//! of ggml's code in the ffi crate (`loraguard_llama::q4_k`), tested byte
//! for byte against ggml.

mod bulk;

pub use bulk::{bf16_to_f16, bf16_to_q8_0};

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::gguf::GgmlType;
use crate::matrix::{decode_into, SourceDtype};

/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// f16 scale, little-endian bits.
    pub d: [u8; 2],
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Quantize one block of 32 values.
pub fn quantize_block_q8_0(x: &[f32; QK8_0]) -> BlockQ8_0 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK8_0];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 {
        d: f16::from_f32(d).to_le_bytes(),
        qs,
    }
}

/// The types loraguard writes LoRA tensors in (`--outtype`), besides `auto`.
pub const WRITABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The names of [`WRITABLE`], lower case and comma-separated, for messages.
pub fn writable_names() -> String {
    WRITABLE
        .iter()
        .map(|t| t.name().to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type a tensor whose rows hold `ne0` values is written in when `want`
/// is asked for, and why it differs. The rule is llama-quantize's
/// (`tensor_type_fallback` in llama.cpp's `src/llama-quant.cpp`): a type
/// whose blocks do not divide a row demotes a 256-block type to a 32-block
/// one of about the same precision (Q2_K and Q3_K to Q4_0, Q4_K to Q5_0,
/// Q5_K to Q5_1, Q6_K to Q8_0, the i-quants to IQ4_NL), and to F16 when that
/// does not divide the row either. A type ggml cannot write (one that needs
/// an importance matrix) is written as Q8_0, or F16 when rows are not whole
/// blocks of 32.
pub fn writable_type(want: GgmlType, ne0: u64) -> (GgmlType, Option<String>) {
    use GgmlType::*;
    let fits = |t: GgmlType| ne0 % t.block_size() == 0;
    let can = |t: GgmlType| t.is_float() || loraguard_llama::ggml::can_quantize(t.id());
    if fits(want) && can(want) {
        return (want, None);
    }
    let (why, next) = if !can(want) {
        (
            format!("ggml cannot write {want} without an importance matrix"),
            Q8_0,
        )
    } else {
        let next = match want {
            IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS => IQ4_NL,
            Q2_K | Q3_K | TQ1_0 | TQ2_0 => Q4_0,
            Q4_K => Q5_0,
            Q5_K => Q5_1,
            Q6_K => Q8_0,
            _ => F16,
        };
        (
            format!(
                "rows of {ne0} are not whole blocks of {want} ({} values)",
                want.block_size()
            ),
            next,
        )
    };
    let got = if fits(next) && can(next) { next } else { F16 };
    (got, Some(why))
}

/// Append `data` as 16-bit floats `T` (f16 or bf16) to `out`, a stack
/// buffer at a time. half's slice conversion uses F16C when the CPU has it
/// (detected at run time), rounding to nearest even like ggml.
fn extend_half<T: bytemuck::Pod + Default>(data: &[f32], out: &mut Vec<u8>)
where
    [T]: HalfFloatSliceExt,
{
    let mut tmp = [T::default(); 4096];
    for chunk in data.chunks(tmp.len()) {
        let t = &mut tmp[..chunk.len()];
        t.convert_from_f32_slice(chunk);
        out.extend_from_slice(bytemuck::cast_slice(t));
    }
}

/// Append `data` encoded as `ty` to `out`. `data.len()` must be a multiple
/// of the type's block size; returns false (writing nothing) for a type
/// loraguard does not encode, data that is not whole blocks, or (Q8_0)
/// values that are not finite.
pub fn encode_into(ty: GgmlType, data: &[f32], out: &mut Vec<u8>) -> bool {
    // GGUF is little-endian; the casts below write native byte order.
    const _: () = assert!(
        cfg!(target_endian = "little"),
        "loraguard writes GGUF on little-endian hosts only"
    );
    match ty {
        GgmlType::F32 => out.extend_from_slice(bytemuck::cast_slice(data)),
        GgmlType::F16 => extend_half::<f16>(data, out),
        GgmlType::BF16 => extend_half::<bf16>(data, out),
        GgmlType::Q8_0 => return bulk::f32_to_q8_0(data, out),
        ty if WRITABLE.contains(&ty) => {
            // Blocks are quantized independently (no importance matrix), so
            // one "row" of a block is as good as the tensor's real rows.
            let block = ty.block_size() as usize;
            if data.len() % block != 0 {
                return false;
            }
            let start = out.len();
            out.resize(start + data.len() / block * ty.block_bytes() as usize, 0);
            if quantize_into(ty, data, block, &mut out[start..]).is_err() {
                out.truncate(start);
                return false;
            }
        }
        _ => return false,
    }
    true
}

/// Quantize `data`, rows of `n_per_row` values, into `out` (exactly their
/// bytes) as ggml's `ggml_quantize_chunk` does without an importance
/// matrix: Q4_K through the ffi crate's vectorized copy of ggml's quantizer
/// (byte-identical, about 10 times faster), every other type through ggml.
pub fn quantize_into(
    ty: GgmlType,
    data: &[f32],
    n_per_row: usize,
    out: &mut [u8],
) -> loraguard_llama::Result<()> {
    if ty == GgmlType::Q4_K && n_per_row % loraguard_llama::q4_k::QK_K == 0 {
        return loraguard_llama::q4_k::quantize(data, out);
    }
    loraguard_llama::ggml::quantize_into(ty.id(), data, n_per_row, out)
}

/// Decode `bytes` of type `ty` into f32 (for the types loraguard encodes;
/// the quantized ones through ggml's own `to_float`).
pub fn decode(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let float = |dtype: SourceDtype| {
        let mut out = vec![0f32; bytes.len() / dtype.size()];
        decode_into(dtype, bytes, &mut out);
        out
    };
    Some(match ty {
        GgmlType::F32 => float(SourceDtype::F32),
        GgmlType::F16 => float(SourceDtype::F16),
        GgmlType::BF16 => float(SourceDtype::BF16),
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                b[2..].iter().map(move |q| *q as i8 as f32 * d)
            })
            .collect(),
        ty if WRITABLE.contains(&ty) => {
            let (block, size) = (ty.block_size() as usize, ty.block_bytes() as usize);
            if bytes.len() % size != 0 {
                return None;
            }
            loraguard_llama::ggml::dequantize(ty.id(), bytes, bytes.len() / size * block).ok()?
        }
        _ => return None,
    })
}

/// Does every value fit f16's finite range?
pub fn fits_f16(data: &[f32]) -> bool {
    // A fold, not `all`: without the early exit the loop vectorises.
    data.iter().fold(true, |ok, v| ok & (v.abs() <= 65504.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trip_error_is_within_half_a_step() {
        let data: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut out = Vec::new();
        assert!(encode_into(GgmlType::Q8_0, &data, &mut out));
        assert_eq!(out.len(), 8 * 34);
        let back = decode(GgmlType::Q8_0, &out).unwrap();
        for (block, orig) in back.chunks(32).zip(data.chunks(32)) {
            let amax = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = amax / 127.0;
            for (a, b) in block.iter().zip(orig) {
                assert!((a - b).abs() <= step * 0.5 + step * 2e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn slice_encodings_match_scalar_rounding() {
        let data: Vec<f32> = (0..5000)
            .map(|i| (i as f32 - 2500.0) * 1.000_123_4e-3 + 1e-7 * i as f32)
            .collect();
        type Scalar = fn(f32) -> [u8; 2];
        let scalar: [(GgmlType, Scalar); 2] = [
            (GgmlType::F16, |v| f16::from_f32(v).to_le_bytes()),
            (GgmlType::BF16, |v| bf16::from_f32(v).to_le_bytes()),
        ];
        for (ty, one) in scalar {
            let mut out = Vec::new();
            assert!(encode_into(ty, &data, &mut out));
            let want: Vec<u8> = data.iter().flat_map(|v| one(*v)).collect();
            assert_eq!(out, want, "{ty}");
        }
    }

    #[test]
    fn fallbacks_follow_llama_quantize() {
        use GgmlType::*;
        let got = |t, n| writable_type(t, n).0;
        // Whole blocks: as asked.
        assert_eq!(got(Q4_K, 512), Q4_K);
        assert_eq!(got(Q4_0, 64), Q4_0);
        assert_eq!(got(F16, 7), F16);
        // 256-block types on rows of 576 (SmolLM2's width) demote as
        // llama-quantize's tensor_type_fallback does.
        assert_eq!(got(Q2_K, 576), Q4_0);
        assert_eq!(got(Q3_K, 576), Q4_0);
        assert_eq!(got(Q4_K, 576), Q5_0);
        assert_eq!(got(Q5_K, 576), Q5_1);
        assert_eq!(got(Q6_K, 576), Q8_0);
        assert_eq!(got(IQ4_XS, 576), IQ4_NL);
        // Rows of 8 (a rank-8 lora_b) hold no block at all: F16.
        for t in [Q4_0, Q5_1, Q8_0, Q4_K, Q6_K] {
            let (ty, why) = writable_type(t, 8);
            assert_eq!(ty, F16, "{t}");
            assert!(why.unwrap().contains("rows of 8 are not whole blocks"));
        }
        // A type that needs an importance matrix.
        let (ty, why) = writable_type(IQ2_XXS, 512);
        assert_eq!(ty, Q8_0);
        assert!(why.unwrap().contains("importance matrix"));
    }

    #[test]
    fn ggml_quantized_types_round_trip_within_their_steps() {
        // Each writable quantized type, encoded and decoded through ggml:
        // the relative error falls with the bits per value.
        let data: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919 % 1021) as f32 / 1021.0 - 0.5) * (1.0 + (i % 13) as f32))
            .collect();
        let rms = |v: &[f32]| {
            (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let bounds = [
            (GgmlType::Q2_K, 0.5),
            (GgmlType::Q3_K, 0.25),
            (GgmlType::Q4_0, 0.15),
            (GgmlType::Q4_1, 0.12),
            (GgmlType::Q4_K, 0.12),
            (GgmlType::Q5_0, 0.07),
            (GgmlType::Q5_1, 0.06),
            (GgmlType::Q5_K, 0.06),
            (GgmlType::Q6_K, 0.03),
            (GgmlType::Q8_0, 0.01),
        ];
        for (ty, bound) in bounds {
            let mut out = Vec::new();
            assert!(encode_into(ty, &data, &mut out), "{ty}");
            assert_eq!(out.len() as u64, ty.tensor_bytes(&[4096]).unwrap(), "{ty}");
            let back = decode(ty, &out).unwrap();
            let err: Vec<f32> = back.iter().zip(&data).map(|(a, b)| a - b).collect();
            let rel = rms(&err) / rms(&data);
            assert!(rel < bound, "{ty}: relative error {rel:.3} >= {bound}");
            assert!(rel > 0.0, "{ty}: lossless?");
        }
        // Not whole blocks: refused, nothing written.
        let mut out = Vec::new();
        assert!(!encode_into(GgmlType::Q4_K, &data[..300], &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn q8_0_zero_block_has_zero_scale() {
        let b = quantize_block_q8_0(&[0.0; 32]);
        assert_eq!(b.d, [0, 0]);
        assert!(b.qs.iter().all(|q| *q == 0));
    }
}
