//! Whole-buffer encoders for `convert`'s hot paths, written so that the
//! compiler vectorises them (plain loops over fixed-size blocks, no branches
//! in the inner loops, no `unsafe`): BF16 → F16 and f32 or BF16 → Q8_0.
//!
//! Each gives exactly the bytes of the element-by-element reference
//! ([`super::encode_into`] after decoding, [`super::quantize_block_q8_0`]);
//! the tests compare them over every BF16 value and over edge blocks.
//! Measured in `scripts/bench-convert.sh` (CHANGELOG, issue 22).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{quantize_block_q8_0, QK8_0};

/// BF16 values converted per block; a block with any value outside F16's
/// normal range is redone value by value.
const LANES: usize = 64;

/// BF16 bits of one value whose exponent is in F16's normal range
/// (2⁻¹⁴ ≤ |x| < 2¹⁶): F16 has more mantissa bits than BF16, so there the
/// conversion is exact: move the exponent, shift the mantissa.
const F16_MIN_EXP: u16 = 127 - 14;
const F16_EXPS: u16 = 30;

#[inline]
fn in_f16_normal_range(b: u16) -> bool {
    ((b & 0x7fff) >> 7).wrapping_sub(F16_MIN_EXP) < F16_EXPS
}

/// One BF16 value as F16 bits, rounding to nearest even; `None` when it is
/// beyond F16's range (±65504) or not finite.
fn bf16_to_f16_one(b: u16) -> Option<u16> {
    let v = f32::from_bits(u32::from(b) << 16);
    super::fits_f16(std::slice::from_ref(&v)).then(|| f16::from_f32(v).to_bits())
}

/// Append BF16 values (as bits) converted to F16 to `out`, little-endian;
/// false (with `out` partly written) when a value is beyond F16's range or
/// not finite.
pub fn bf16_to_f16(src: &[u16], out: &mut Vec<u8>) -> bool {
    out.reserve(src.len() * 2);
    let mut tmp = [0u16; LANES];
    let mut blocks = src.chunks_exact(LANES);
    for blk in &mut blocks {
        let mut slow = false;
        for (t, &b) in tmp.iter_mut().zip(blk) {
            slow |= !in_f16_normal_range(b);
            *t = (b & 0x8000) | ((b & 0x7fff).wrapping_sub((127 - 15) << 7) << 3);
        }
        if slow {
            for (t, &b) in tmp.iter_mut().zip(blk) {
                if !in_f16_normal_range(b) {
                    match bf16_to_f16_one(b) {
                        Some(h) => *t = h,
                        None => return false,
                    }
                }
            }
        }
        extend_u16(out, &tmp);
    }
    for &b in blocks.remainder() {
        match bf16_to_f16_one(b) {
            Some(h) => out.extend_from_slice(&h.to_le_bytes()),
            None => return false,
        }
    }
    true
}

fn extend_u16(out: &mut Vec<u8>, v: &[u16]) {
    const _: () = assert!(cfg!(target_endian = "little"));
    out.extend_from_slice(bytemuck::cast_slice(v));
}

/// Q8_0 blocks quantized per group, so that the group's scales go to F16 in
/// one slice conversion (F16C where the CPU has it).
const GROUP: usize = 64;

/// 1.5·2²³: adding it rounds an f32 of magnitude below 2²² to an integer
/// (to nearest even), which then sits in the sum's low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// Append the Q8_0 encoding of `n_blocks` blocks to `out`; `value(i, xs)`
/// fills block i. The scale and rounding are [`quantize_block_q8_0`]'s
/// (ggml's `quantize_row_q8_0_ref`): `d = amax / 127`, `q = round(x ·
/// (1/d))` half away from zero. False, writing nothing, when a value is not
/// finite (ggml would write a NaN scale).
fn q8_0_blocks(
    n_blocks: usize,
    out: &mut Vec<u8>,
    value: impl Fn(usize, &mut [f32; QK8_0]) -> u32,
) -> bool {
    let start = out.len();
    out.reserve(n_blocks * 34);
    let mut x = [[0f32; QK8_0]; GROUP];
    let mut d = [0f32; GROUP];
    let mut dh = [f16::ZERO; GROUP];
    let mut bytes = [[0u8; 34]; GROUP];
    let mut first = 0;
    while first < n_blocks {
        let n = GROUP.min(n_blocks - first);
        for (k, (xs, dk)) in x.iter_mut().zip(&mut d).take(n).enumerate() {
            *dk = f32::from_bits(value(first + k, xs)) / 127.0;
        }
        dh[..n].convert_from_f32_slice(&d[..n]);
        for (((xs, &dk), dhk), o) in x.iter().zip(&d).zip(&dh).zip(&mut bytes).take(n) {
            let id = if dk != 0.0 { 1.0 / dk } else { 0.0 };
            if !dk.is_finite() {
                out.truncate(start);
                return false;
            }
            let (od, oq) = o.split_at_mut(2);
            // A scale so small that 1/d overflows: the reference's own path
            // (saturating casts) decides.
            if !id.is_finite() {
                let block = quantize_block_q8_0(xs);
                od.copy_from_slice(&block.d);
                oq.iter_mut().zip(block.qs).for_each(|(o, q)| *o = q as u8);
                continue;
            }
            od.copy_from_slice(&dhk.to_le_bytes());
            for (q, &v) in oq.iter_mut().zip(xs) {
                // |y| ≤ 127·(1 + 2⁻²³): round half away from zero, exactly
                // as f32::round, from the nearest-even sum.
                let y = v * id;
                let sum = y + MAGIC;
                let diff = y - (sum - MAGIC);
                let r = (sum.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
                let up = i32::from((diff == 0.5) & (y > 0.0));
                let down = i32::from((diff == -0.5) & (y < 0.0));
                *q = (r + up - down) as u8;
            }
        }
        out.extend_from_slice(bytes[..n].as_flattened());
        first += n;
    }
    true
}

/// Append the Q8_0 encoding of `data` to `out`; false, writing nothing,
/// unless it is whole blocks of 32 finite values.
pub fn f32_to_q8_0(data: &[f32], out: &mut Vec<u8>) -> bool {
    data.len() % QK8_0 == 0
        && q8_0_blocks(data.len() / QK8_0, out, |i, xs| {
            xs.copy_from_slice(&data[i * QK8_0..(i + 1) * QK8_0]);
            // |x| as bits: ordered like the values for every non-NaN float
            // (a NaN's bits exceed every finite value's, so it is caught).
            xs.iter()
                .fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
        })
}

/// Append the Q8_0 encoding of BF16 values (as bits) to `out`; false,
/// writing nothing, unless they are whole blocks of 32 finite values.
pub fn bf16_to_q8_0(src: &[u16], out: &mut Vec<u8>) -> bool {
    src.len() % QK8_0 == 0
        && q8_0_blocks(src.len() / QK8_0, out, |i, xs| {
            let bits: &[u16; QK8_0] = src[i * QK8_0..(i + 1) * QK8_0]
                .try_into()
                .expect("a whole block");
            for (x, &b) in xs.iter_mut().zip(bits) {
                *x = f32::from_bits(u32::from(b) << 16);
            }
            // The same max on the 16-bit words (SSE2's signed max: the
            // masked words are below 2¹⁵).
            let m = bits.iter().fold(0i16, |m, b| m.max((b & 0x7fff) as i16));
            u32::from(m as u16) << 16
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    /// The element-by-element reference: decode, then encode_into.
    fn reference(ty: GgmlType, src: &[u16]) -> Option<Vec<u8>> {
        let v: Vec<f32> = src
            .iter()
            .map(|b| f32::from_bits(u32::from(*b) << 16))
            .collect();
        if ty == GgmlType::F16 && !super::super::fits_f16(&v) {
            return None;
        }
        let mut out = Vec::new();
        let mut blocks = v.chunks_exact(QK8_0);
        match ty {
            GgmlType::Q8_0 => {
                for b in &mut blocks {
                    let q = quantize_block_q8_0(b.try_into().unwrap());
                    out.extend_from_slice(&q.d);
                    out.extend(q.qs.iter().map(|x| *x as u8));
                }
            }
            _ => assert!(super::super::encode_into(ty, &v, &mut out)),
        }
        Some(out)
    }

    #[test]
    fn bf16_to_f16_matches_the_reference_for_every_bf16_value() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for chunk in all.chunks(LANES * 3 + 5) {
            let finite: Vec<u16> = chunk
                .iter()
                .copied()
                .filter(|b| f32::from_bits(u32::from(*b) << 16).abs() <= 65504.0)
                .collect();
            let mut out = Vec::new();
            assert!(bf16_to_f16(&finite, &mut out));
            assert_eq!(Some(out), reference(GgmlType::F16, &finite));
        }
        // Beyond F16's range, infinities and NaN are refused wherever they sit.
        for bad in [0x4780u16, 0xc780, 0x7f80, 0xff80, 0x7fc1] {
            for at in [0, 63, 64, 130] {
                let mut v = vec![0x3c00u16; 131];
                v[at] = bad;
                assert!(!bf16_to_f16(&v, &mut Vec::new()), "{bad:#x} at {at}");
            }
        }
        // The largest BF16 below 65504 converts.
        assert!(bf16_to_f16(&[0x477f], &mut Vec::new()));
    }

    fn blocks_of(seed: u32, n: usize) -> Vec<f32> {
        // Values of every scale, exact ties (k + ½ steps) and zero blocks.
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s
        };
        let mut v = Vec::with_capacity(n * QK8_0);
        for blk in 0..n {
            let scale = f32::from_bits((next() % 240 + 2) << 23);
            for k in 0..QK8_0 {
                let x = match blk % 5 {
                    0 => (next() as i32 as f32 / i32::MAX as f32) * scale,
                    1 => (k as f32 - 15.5) * scale,
                    2 if k == 0 => 127.0 * scale,
                    2 => (next() % 255) as f32 * 0.5 * scale - 63.5 * scale,
                    3 => 0.0,
                    _ => f32::from_bits(next() % 0x0080_0000) * if k % 2 == 0 { 1.0 } else { -1.0 },
                };
                v.push(x);
            }
        }
        v
    }

    #[test]
    fn q8_0_matches_the_reference_on_every_kind_of_block() {
        for seed in 0..20 {
            let v = blocks_of(seed, 200);
            let mut fast = Vec::new();
            assert!(f32_to_q8_0(&v, &mut fast));
            let mut slow = Vec::new();
            for b in v.chunks_exact(QK8_0) {
                let q = quantize_block_q8_0(b.try_into().unwrap());
                slow.extend_from_slice(&q.d);
                slow.extend(q.qs.iter().map(|x| *x as u8));
            }
            assert_eq!(fast, slow, "seed {seed}");
        }
        // Not finite, or not whole blocks: refused, nothing written.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = blocks_of(7, 3);
            v[40] = bad;
            let mut out = vec![1u8];
            assert!(!f32_to_q8_0(&v, &mut out));
            assert_eq!(out, [1]);
        }
        assert!(!f32_to_q8_0(&[1.0; 33], &mut Vec::new()));
    }

    #[test]
    fn bf16_to_q8_0_matches_the_reference() {
        let mut s = 1u32;
        let src: Vec<u16> = (0..QK8_0 * 300)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let b = (s >> 16) as u16;
                // Finite values only (convert refuses the others first).
                if b & 0x7f80 == 0x7f80 {
                    b & 0xbfff
                } else {
                    b
                }
            })
            .collect();
        let mut fast = Vec::new();
        assert!(bf16_to_q8_0(&src, &mut fast));
        assert_eq!(Some(fast), reference(GgmlType::Q8_0, &src));
        let mut nan = src.clone();
        nan[100] = 0x7fc0;
        assert!(!bf16_to_q8_0(&nan, &mut Vec::new()));
    }
}
