//! ggml's `quantize_row_q4_K_ref` with AVX2, the 8 sub-blocks of a
//! super-block in the 8 lanes of a register (two super-blocks at a time),
//! every lane running the scalar code's operations in its order: each
//! `a < b ? a : b` is `minps`, each division `divps`, `sqrtf` is `sqrtps`,
//! all correctly rounded as the scalar ones are.
//!
//! Two shortcuts are exact only on ordinary data; each super-block is
//! checked for both, and one that fails goes through ggml itself:
//! - ggml's `nearest_int` (add 1.5·2²³, keep the low mantissa bits) equals
//!   round-to-nearest-even (`roundps`) for |t| < 2²², the range checked for
//!   every value rounded;
//! - with every |x| < 2²⁴ no sum of the scale search overflows.
//!
//! One quirk is kept on purpose: ggml updates `min` inside the candidate
//! loop, so later candidates are rounded against the best offset so far,
//! not the block's minimum.
//!
//! Everything here is safe code: the intrinsics are safe inside functions
//! compiled with the feature they need.

use std::arch::x86_64::*;

use half::f16;

use super::{by_ggml, BLOCK_BYTES, QK_K};
use crate::Result;

/// Sub-blocks of 32 per super-block: the lanes.
const SUB: usize = 8;
/// Values per sub-block.
const N: usize = 32;
/// 1.5·2²³: adding it rounds to an integer (ggml's `nearest_int`, used
/// here for the scalar 6-bit scales).
const MAGIC: f32 = 12_582_912.0;
/// Values at or beyond this magnitude (and non-finite ones) send their
/// super-block to ggml.
const FAST_LIMIT: f32 = 16_777_216.0;
/// Rounding in float equals `nearest_int` below this magnitude.
const ROUND_LIMIT: f32 = 4_194_304.0;

type V = __m256;
/// Super-blocks quantized side by side: two independent chains of sums
/// keep the adders busy (each sum is a chain of dependent additions; one
/// super-block at a time ran about 30% slower).
const K: usize = 2;
/// K registers, one per super-block.
type P = [V; K];

/// Quantize whole super-blocks (lengths checked by the caller).
#[target_feature(enable = "avx2")]
pub(super) fn quantize(x: &[f32], out: &mut [u8]) -> Result<()> {
    let mut xs = x.chunks_exact(QK_K * K);
    let mut ys = out.chunks_exact_mut(BLOCK_BYTES * K);
    for (xb, yb) in (&mut xs).zip(&mut ys) {
        let done = super_blocks(xb, yb);
        for (k, ok) in done.into_iter().enumerate() {
            if !ok {
                let (x, y) = (
                    &xb[k * QK_K..(k + 1) * QK_K],
                    &mut yb[k * BLOCK_BYTES..(k + 1) * BLOCK_BYTES],
                );
                by_ggml(x, y)?;
            }
        }
    }
    // The last super-blocks, fewer than K, padded with zeros.
    let (xr, yr) = (xs.remainder(), ys.into_remainder());
    if !xr.is_empty() {
        let mut xp = [0f32; QK_K * K];
        xp[..xr.len()].copy_from_slice(xr);
        let mut yp = [0u8; BLOCK_BYTES * K];
        let done = super_blocks(&xp, &mut yp);
        for k in 0..xr.len() / QK_K {
            let y = &mut yr[k * BLOCK_BYTES..(k + 1) * BLOCK_BYTES];
            if done[k] {
                y.copy_from_slice(&yp[k * BLOCK_BYTES..(k + 1) * BLOCK_BYTES]);
            } else {
                by_ggml(&xr[k * QK_K..(k + 1) * QK_K], y)?;
            }
        }
    }
    Ok(())
}

/// ggml's `nearest_int`, bit for bit (any input).
fn nearest_int(f: f32) -> i32 {
    ((f + MAGIC).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j`.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

macro_rules! lanewise {
    ($($name:ident($($arg:ident),*) = $body:expr;)*) => {$(
        #[target_feature(enable = "avx2")]
        #[inline]
        fn $name($($arg: P),*) -> P {
            std::array::from_fn(|k| {
                $(let $arg = $arg[k];)*
                $body
            })
        }
    )*};
}

lanewise! {
    add(a, b) = _mm256_add_ps(a, b);
    sub(a, b) = _mm256_sub_ps(a, b);
    mul(a, b) = _mm256_mul_ps(a, b);
    div(a, b) = _mm256_div_ps(a, b);
    // `a < b ? a : b` and `a > b ? a : b`, as C's `if (x < min) min = x`.
    min(a, b) = _mm256_min_ps(a, b);
    max(a, b) = _mm256_max_ps(a, b);
    abs(a) = _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)));
    lt(a, b) = _mm256_cmp_ps::<_CMP_LT_OQ>(a, b);
    gt(a, b) = _mm256_cmp_ps::<_CMP_GT_OQ>(a, b);
    eq(a, b) = _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b);
    and(a, b) = _mm256_and_ps(a, b);
    or(a, b) = _mm256_or_ps(a, b);
    andnot(a, b) = _mm256_andnot_ps(a, b);
    // `c ? a : b` per lane.
    select(c, a, b) = _mm256_blendv_ps(b, a, c);
    // `nearest_int(t)` as a float (for |t| < 2²²), clamped to [0, 15] as
    // `MAX(0, MIN(15, l))`.
    q15(t) = _mm256_min_ps(
        _mm256_max_ps(
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t),
            _mm256_setzero_ps(),
        ),
        _mm256_set1_ps(15.0),
    );
}

/// Eight values from the front of `s`.
#[target_feature(enable = "avx2")]
#[inline]
fn load(s: &[f32]) -> V {
    bytemuck::cast(<[f32; 8]>::try_from(&s[..8]).expect("8 values"))
}

/// An 8×8 transpose: lane j of the result's register i is lane i of
/// `r[j]`.
#[target_feature(enable = "avx2")]
#[inline]
fn transpose8(r: [V; 8]) -> [V; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

#[target_feature(enable = "avx2")]
#[inline]
fn splat(v: f32) -> P {
    [_mm256_set1_ps(v); K]
}

/// Which of the K lane groups are all set.
#[target_feature(enable = "avx2")]
#[inline]
fn all(c: P) -> [bool; K] {
    c.map(|c| _mm256_movemask_ps(c) == 0xff)
}

/// K super-blocks; for each, whether it was written (false: it needs
/// ggml, and its bytes are unspecified).
#[target_feature(enable = "avx2")]
fn super_blocks(x: &[f32], y: &mut [u8]) -> [bool; K] {
    // xt[i][k] holds value i of each sub-block of super-block k: 8×8
    // transposes of the rows of 8 values.
    let mut xt = [splat(0.0); N];
    let mut ok = [true; K];
    for (k, xs) in x.chunks_exact(QK_K).enumerate() {
        let mut fine = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        for t in 0..N / 8 {
            let rows: [V; 8] = std::array::from_fn(|j| load(&xs[N * j + 8 * t..]));
            for (c, v) in transpose8(rows).into_iter().enumerate() {
                // |x| < FAST_LIMIT, false for NaN.
                fine = _mm256_and_ps(fine, lt(abs([v; K]), splat(FAST_LIMIT))[0]);
                xt[8 * t + c][k] = v;
            }
        }
        ok[k] = _mm256_movemask_ps(fine) == 0xff;
    }
    let mut sum_x2 = splat(0.0);
    for v in &xt {
        sum_x2 = add(sum_x2, mul(*v, *v));
    }
    let av_x = div(sum_x2, splat(32.0)).map(|v| _mm256_sqrt_ps(v));
    let w = xt.map(|v| add(av_x, abs(v)));
    let (scales, mins, l, fits) = make_qkx2_quants(&xt, &w);
    let fits_search = all(fits);

    let mut d = [[0f32; SUB]; K];
    let mut dm = [[0f32; SUB]; K];
    for (k, yb) in y.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        let scales: [f32; SUB] = bytemuck::cast(scales[k]);
        let mins: [f32; SUB] = bytemuck::cast(mins[k]);
        ok[k] &= fits_search[k];
        (d[k], dm[k]) = pack_scales(&scales, &mins, yb);
    }
    // The quants against the rounded scales; sub-blocks whose scale rounds
    // to 0 keep the search's quants, as in ggml.
    let d: P = d.map(bytemuck::cast);
    let dm: P = dm.map(bytemuck::cast);
    let dead = eq(d, splat(0.0));
    let mut fits = splat(f32::from_bits(!0));
    let mut lq = [splat(0.0); N];
    for i in 0..N {
        let f = div(add(xt[i], dm), d);
        fits = and(fits, or(dead, lt(abs(f), splat(ROUND_LIMIT))));
        lq[i] = select(dead, l[i], q15(f));
    }
    let fits = all(fits);
    for (k, yb) in y.chunks_exact_mut(BLOCK_BYTES).enumerate() {
        ok[k] &= fits[k];
        let qs = &mut yb[16..];
        for t in 0..N / 8 {
            // Back to rows: rows[j] holds values 8t.. of sub-block j.
            let rows = transpose8(std::array::from_fn(|c| lq[8 * t + c][k]));
            for p in 0..SUB / 2 {
                let lo = _mm256_cvttps_epi32(rows[2 * p]);
                let hi = _mm256_cvttps_epi32(rows[2 * p + 1]);
                let q: [u32; 8] = bytemuck::cast(_mm256_or_si256(lo, _mm256_slli_epi32::<4>(hi)));
                for (dst, v) in qs[N * p + 8 * t..N * p + 8 * t + 8].iter_mut().zip(q) {
                    *dst = v as u8;
                }
            }
        }
    }
    ok
}

/// The super-block's scales and mins as ggml packs them into `y`'s first
/// 16 bytes; the rounded scale and min of each sub-block.
fn pack_scales(scales: &[f32; SUB], mins: &[f32; SUB], y: &mut [u8]) -> ([f32; SUB], [f32; SUB]) {
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..SUB {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (dm_bytes, packed) = y[..16].split_at_mut(4);
    for j in 0..SUB {
        // C keeps the int in a uint8_t (modulo 256), then clamps.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d16 = f16::from_f32(max_scale / 63.0);
    let dmin16 = f16::from_f32(max_min / 63.0);
    dm_bytes[..2].copy_from_slice(&d16.to_le_bytes());
    dm_bytes[2..].copy_from_slice(&dmin16.to_le_bytes());
    let mut d = [0f32; SUB];
    let mut dm = [0f32; SUB];
    for j in 0..SUB {
        let (sc, m) = scale_min(j, packed);
        d[j] = d16.to_f32() * f32::from(sc);
        dm[j] = dmin16.to_f32() * f32::from(m);
    }
    (d, dm)
}

/// ggml's `make_qkx2_quants(32, 15, x, weights, L, &the_min, Laux, -1.f,
/// 0.1f, 20, false)` for 8 sub-blocks at once (in each of K super-blocks):
/// each sub-block's scale, min (`the_min`, the negated offset) and quants
/// (as floats), and which lanes stayed in the range where float rounding
/// is `nearest_int`.
///
/// As in ggml, each candidate's quants are taken against the offset of the
/// best candidate so far (`min` changes inside the search), not against
/// the block's minimum.
#[target_feature(enable = "avx2")]
fn make_qkx2_quants(xt: &[P; N], w: &[P; N]) -> (P, P, [P; N], P) {
    const NMAX: f32 = 15.0;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    let zero = splat(0.0);
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = w[0];
    let mut sum_x = mul(sum_w, xt[0]);
    for i in 1..N {
        // `if (x[i] < min) min = x[i];` is minps(x, min).
        min = self::min(xt[i], min);
        max = self::max(xt[i], max);
        sum_w = add(sum_w, w[i]);
        sum_x = add(sum_x, mul(w[i], xt[i]));
    }
    let lowest = min;
    min = select(gt(min, zero), zero, min);
    let flat = eq(max, min);
    let iscale = div(splat(NMAX), sub(max, min));
    let mut scale = div(splat(1.0), iscale);
    let mut best_error = zero;
    for i in 0..N {
        let l = q15(mul(iscale, sub(xt[i], min)));
        let diff = sub(add(mul(scale, l), min), xt[i]);
        best_error = add(best_error, mul(w[i], mul(diff, diff)));
    }
    // The best candidate's quants are recomputed at the end from its
    // inverse scale and offset.
    let mut best_iscale = iscale;
    let mut best_offset = min;
    let mut laux = [zero; N];
    let mut fits = splat(f32::from_bits(!0));
    for is in 0..=NSTEP {
        let num = RMIN + RDELTA * is as f32 + NMAX;
        let offset = min;
        let isc = div(splat(num), sub(max, offset));
        // |x − offset| is at most the larger distance to either end; one
        // candidate out of the exact range sends the block to ggml.
        let reach = mul(
            abs(isc),
            self::max(abs(sub(max, offset)), abs(sub(lowest, offset))),
        );
        fits = and(fits, or(flat, lt(reach, splat(ROUND_LIMIT))));
        let mut sum_l = zero;
        let mut sum_l2 = zero;
        let mut sum_xl = zero;
        for i in 0..N {
            let l = q15(mul(isc, sub(xt[i], offset)));
            laux[i] = l;
            let wl = mul(w[i], l);
            sum_l = add(sum_l, wl);
            sum_l2 = add(sum_l2, mul(wl, l));
            sum_xl = add(sum_xl, mul(wl, xt[i]));
        }
        let dd = sub(mul(sum_w, sum_l2), mul(sum_l, sum_l));
        let this_scale = div(sub(mul(sum_w, sum_xl), mul(sum_x, sum_l)), dd);
        let this_min = div(sub(mul(sum_l2, sum_x), mul(sum_l, sum_xl)), dd);
        let pos = gt(this_min, zero);
        let this_scale = select(pos, div(sum_xl, sum_l2), this_scale);
        let this_min = select(pos, zero, this_min);
        let mut cur_error = zero;
        for i in 0..N {
            let diff = sub(add(mul(this_scale, laux[i]), this_min), xt[i]);
            cur_error = add(cur_error, mul(w[i], mul(diff, diff)));
        }
        let better = andnot(flat, and(gt(dd, zero), lt(cur_error, best_error)));
        best_error = select(better, cur_error, best_error);
        scale = select(better, this_scale, scale);
        min = select(better, this_min, min);
        best_iscale = select(better, isc, best_iscale);
        best_offset = select(better, offset, best_offset);
    }
    let mut l = [zero; N];
    for i in 0..N {
        l[i] = select(flat, zero, q15(mul(best_iscale, sub(xt[i], best_offset))));
    }
    (select(flat, zero, scale), sub(zero, min), l, fits)
}
