//! Q4_K quantization, byte for byte as ggml's `quantize_row_q4_K_ref` (what
//! `ggml_quantize_chunk`, and so llama-quantize, runs without an importance
//! matrix), about 10 times faster where the CPU has AVX2 (10.4–11.1 against
//! 104–115 ns a value on one core, `speed_against_ggml`).
//!
//! Why a second implementation beside ggml's, when every other type goes
//! through ggml's own code: ggml searches 21 candidate scales for each block
//! of 32 values, one block at a time in scalar code, and that search was
//! most of `loraguard merge`'s time on Q4_K models (issue 8: 58 of 70 s on
//! a 1B model). The `avx2` module runs the very same IEEE operations in
//! the very same order, for the 8 sub-blocks of a super-block side by side
//! (one SIMD lane each), so every sum is formed as ggml forms it and the
//! bytes are identical: the tests here compare it with ggml on random and structured
//! data, and loraguard's tests on real model tensors. ggml's reference code
//! is built for baseline x86-64 (no FMA, so no contraction), as
//! llama-cpp-sys-2 and llama.cpp's `GGML_NATIVE=OFF` builds compile it.
//!
//! Without AVX2 (or off x86-64), and for any super-block outside the range
//! where the `avx2` module's shortcuts are exact, ggml's own quantizer runs.

#[cfg(target_arch = "x86_64")]
mod avx2;

use crate::{Error, Result};

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of ggml's `block_q4_K`: f16 `d`, f16 `dmin`, 12 bytes of packed
/// 6-bit scales and mins, 128 bytes of 4-bit quants.
pub const BLOCK_BYTES: usize = 144;

/// Quantize `x` (whole super-blocks of 256) into `out` (144 bytes each).
pub fn quantize(x: &[f32], out: &mut [u8]) -> Result<()> {
    if x.len() % QK_K != 0 || out.len() != x.len() / QK_K * BLOCK_BYTES {
        return Err(Error::Ggml(format!(
            "Q4_K: {} values into {} bytes are not whole super-blocks",
            x.len(),
            out.len()
        )));
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only
        // requirement of this #[target_feature(enable = "avx2")] function.
        return unsafe { avx2::quantize(x, out) };
    }
    by_ggml(x, out)
}

/// `x` through ggml's own quantizer.
fn by_ggml(x: &[f32], out: &mut [u8]) -> Result<()> {
    crate::ggml::quantize_into(llama_cpp_sys_2::GGML_TYPE_Q4_K, x, QK_K, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ggml(x: &[f32]) -> Vec<u8> {
        crate::ggml::quantize(llama_cpp_sys_2::GGML_TYPE_Q4_K, x, QK_K).unwrap()
    }

    fn ours(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK_K * BLOCK_BYTES];
        quantize(x, &mut out).unwrap();
        out
    }

    /// A seeded xorshift stream in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[track_caller]
    fn assert_same(what: &str, x: &[f32]) {
        let (a, b) = (ours(x), ggml(x));
        if let Some(k) = a.iter().zip(&b).position(|(p, q)| p != q) {
            panic!(
                "{what}: first difference at byte {k} (block {})",
                k / BLOCK_BYTES
            );
        }
    }

    #[test]
    fn matches_ggml_on_noise_at_many_scales() {
        for (k, scale) in [1e-9f32, 1e-6, 1e-3, 0.02, 1.0, 37.0, 1e4, 1e6]
            .into_iter()
            .enumerate()
        {
            let x: Vec<f32> = noise(k as u64, QK_K * 256)
                .iter()
                .map(|v| v * scale)
                .collect();
            assert_same(&format!("uniform x {scale}"), &x);
            // Skewed: mostly one sign, heavy tails, an offset.
            let y: Vec<f32> = noise(100 + k as u64, QK_K * 256)
                .iter()
                .map(|v| (v * v * v * 4.0 + 0.3) * scale)
                .collect();
            assert_same(&format!("skewed x {scale}"), &y);
            // All positive, all negative.
            let z: Vec<f32> = noise(200 + k as u64, QK_K * 64)
                .iter()
                .map(|v| (v.abs() + 0.01) * scale * if k % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            assert_same(&format!("one-signed x {scale}"), &z);
        }
    }

    #[test]
    fn matches_ggml_on_structured_blocks() {
        let mut x = Vec::new();
        x.extend(std::iter::repeat_n(0.0, QK_K)); // all zero
        x.extend(std::iter::repeat_n(-0.5, QK_K)); // flat, negative
        x.extend(std::iter::repeat_n(0.25, QK_K)); // flat, positive
        x.extend((0..QK_K).map(|i| i as f32)); // a ramp
        x.extend((0..QK_K).map(|i| if i % 32 == 0 { 1.0 } else { 0.0 })); // spikes
        x.extend((0..QK_K).map(|i| if i < 32 { 1e-3 } else { 0.0 })); // one live sub-block
        x.extend((0..QK_K).map(|i| if i < 128 { 5.0 } else { 1e-7 })); // mixed magnitudes
        x.extend((0..QK_K).map(|i| (i % 16) as f32 - 7.5)); // exactly 16 levels
        x.extend((0..QK_K).map(|i| if i % 2 == 0 { -0.0 } else { 0.0 })); // signed zeros
        x.extend((0..QK_K).map(|i| 6.0e-8 * (i % 5) as f32)); // f16-subnormal scales
        x.extend((0..QK_K).map(|i| if i % 32 == 7 { -3.0 } else { 0.1 })); // one low outlier
        assert_same("structured", &x);
    }

    #[test]
    fn extreme_blocks_go_through_ggml_and_still_match() {
        let mut x: Vec<f32> = noise(7, QK_K * 4);
        x[3] = 3.0e7; // beyond the fast range
        x[QK_K + 9] = 1.0e30;
        x[2 * QK_K] = -2.0e38;
        assert_same("extreme", &x);
        // Just under the limit, where f16 scales overflow: the rounding
        // check hands the blocks over.
        let y: Vec<f32> = noise(8, QK_K * 8).iter().map(|v| v * 1.6e7).collect();
        assert_same("near the limit", &y);
        x[QK_K * 3 + 1] = f32::NAN;
        x[QK_K * 3 + 2] = f32::INFINITY;
        assert_same("non-finite", &x);
    }

    #[test]
    fn refuses_partial_blocks() {
        assert!(quantize(&[0.0; 100], &mut [0u8; BLOCK_BYTES]).is_err());
        assert!(quantize(&[0.0; QK_K], &mut [0u8; BLOCK_BYTES - 1]).is_err());
    }

    #[test]
    #[ignore = "timing; run with --ignored --nocapture in release"]
    fn speed_against_ggml() {
        let x: Vec<f32> = noise(1, 1 << 24).iter().map(|v| v * 0.05).collect();
        let mut o = vec![0u8; x.len() / QK_K * BLOCK_BYTES];
        let t = std::time::Instant::now();
        quantize(&x, &mut o).unwrap();
        let ours = t.elapsed();
        let t = std::time::Instant::now();
        let g = ggml(&x);
        let theirs = t.elapsed();
        assert_eq!(o, g);
        let ns = |d: std::time::Duration| d.as_nanos() as f64 / x.len() as f64;
        eprintln!(
            "Q4_K: {:.2} ns/value, ggml {:.2} ns/value",
            ns(ours),
            ns(theirs)
        );
    }
}
