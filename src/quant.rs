//! Encoding f32 data into the GGUF tensor types loraguard writes.
//!
//! Q8_0 follows ggml's `quantize_row_q8_0_ref` exactly (tested bit for bit
//! against ggml through the ffi crate): per block of 32, `d = amax / 127`,
//! `q = round(x / d)` rounding half away from zero, `d` stored as f16.

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

/// Append `data` encoded as `ty` to `out`. `data.len()` must be a multiple
/// of the type's block size; returns false (writing nothing) for a type
/// loraguard does not encode.
pub fn encode_into(ty: GgmlType, data: &[f32], out: &mut Vec<u8>) -> bool {
    // GGUF is little-endian; the casts below write native byte order.
    const _: () = assert!(
        cfg!(target_endian = "little"),
        "loraguard writes GGUF on little-endian hosts only"
    );
    match ty {
        GgmlType::F32 => out.extend_from_slice(bytemuck::cast_slice(data)),
        GgmlType::F16 => {
            // half's slice conversion uses F16C when the CPU has it
            // (detected at run time), rounding to nearest even like ggml.
            let mut tmp = [f16::ZERO; 4096];
            for chunk in data.chunks(tmp.len()) {
                let t = &mut tmp[..chunk.len()];
                t.convert_from_f32_slice(chunk);
                out.extend_from_slice(bytemuck::cast_slice(t));
            }
        }
        GgmlType::BF16 => {
            let mut tmp = [bf16::ZERO; 4096];
            for chunk in data.chunks(tmp.len()) {
                let t = &mut tmp[..chunk.len()];
                t.convert_from_f32_slice(chunk);
                out.extend_from_slice(bytemuck::cast_slice(t));
            }
        }
        GgmlType::Q8_0 => {
            assert!(data.len() % QK8_0 == 0, "Q8_0 data must be whole blocks");
            out.reserve(data.len() / QK8_0 * 34);
            for chunk in data.chunks_exact(QK8_0) {
                let block = quantize_block_q8_0(chunk.try_into().expect("chunks_exact(32)"));
                out.extend_from_slice(&block.d);
                out.extend(block.qs.iter().map(|q| *q as u8));
            }
        }
        _ => return false,
    }
    true
}

/// Decode `bytes` of type `ty` into f32 (for the types loraguard encodes).
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
        _ => return None,
    })
}

/// Does every value fit f16's finite range?
pub fn fits_f16(data: &[f32]) -> bool {
    data.iter().all(|v| v.abs() <= 65504.0)
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
    fn q8_0_zero_block_has_zero_scale() {
        let b = quantize_block_q8_0(&[0.0; 32]);
        assert_eq!(b.d, [0, 0]);
        assert!(b.qs.iter().all(|q| *q == 0));
    }
}
