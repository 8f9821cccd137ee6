//! The sums behind `merge`'s report of how much of an update a type kept,
//! vectorized for AVX2 (a running f32 sum is a chain the compiler must keep
//! in order, so it does not vectorise plain Rust; lanes of partial sums
//! in SSE2 came out at 1.9 ns a value, most of a merge's time outside the
//! quantizer).

/// For base values `before`, exact merged values `exact` and the values as
/// written `back`, with δ = exact − before and q = back − before: Σδ², Σq·δ
/// and Σ(q − δ)², and whether every exact value is finite. Partial sums run
/// in f32 over runs of at most 256 values and are added up in f64. The
/// three slices must have one length.
pub fn update_sums(before: &[f32], exact: &[f32], back: &[f32]) -> ([f64; 3], bool) {
    assert!(before.len() == exact.len() && exact.len() == back.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only
        // requirement of this #[target_feature(enable = "avx2")] function.
        return unsafe { avx2(before, exact, back) };
    }
    scalar(before, exact, back)
}

fn scalar(before: &[f32], exact: &[f32], back: &[f32]) -> ([f64; 3], bool) {
    let mut s = [0f64; 3];
    let mut finite = true;
    for ((b, x), y) in before
        .chunks(256)
        .zip(exact.chunks(256))
        .zip(back.chunks(256))
    {
        let mut p = [0f32; 3];
        for ((b, x), y) in b.iter().zip(x).zip(y) {
            let (d, e) = (x - b, y - b);
            p[0] += d * d;
            p[1] += e * d;
            p[2] += (e - d) * (e - d);
            finite &= x.is_finite();
        }
        for k in 0..3 {
            s[k] += f64::from(p[k]);
        }
    }
    (s, finite)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2(before: &[f32], exact: &[f32], back: &[f32]) -> ([f64; 3], bool) {
    use std::arch::x86_64::*;
    let mut s = [0f64; 3];
    // x·0 is 0 for finite x and NaN otherwise.
    let mut nonfinite = _mm256_setzero_ps();
    let lanes = |v: __m256| -> f64 {
        let a: [f32; 8] = bytemuck::cast(v);
        a.iter().map(|x| f64::from(*x)).sum()
    };
    let whole = before.len() / 256 * 256;
    for at in (0..whole).step_by(256) {
        let (mut dd, mut dq, mut ee) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        for i in (at..at + 256).step_by(8) {
            let b: __m256 = bytemuck::cast(<[f32; 8]>::try_from(&before[i..i + 8]).expect("8"));
            let x: __m256 = bytemuck::cast(<[f32; 8]>::try_from(&exact[i..i + 8]).expect("8"));
            let y: __m256 = bytemuck::cast(<[f32; 8]>::try_from(&back[i..i + 8]).expect("8"));
            let d = _mm256_sub_ps(x, b);
            let e = _mm256_sub_ps(y, b);
            let r = _mm256_sub_ps(e, d);
            dd = _mm256_add_ps(dd, _mm256_mul_ps(d, d));
            dq = _mm256_add_ps(dq, _mm256_mul_ps(e, d));
            ee = _mm256_add_ps(ee, _mm256_mul_ps(r, r));
            nonfinite = _mm256_add_ps(nonfinite, _mm256_mul_ps(x, _mm256_setzero_ps()));
        }
        s[0] += lanes(dd);
        s[1] += lanes(dq);
        s[2] += lanes(ee);
    }
    let (rest, fin) = scalar(&before[whole..], &exact[whole..], &back[whole..]);
    for k in 0..3 {
        s[k] += rest[k];
    }
    (s, fin && lanes(nonfinite) == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_and_scalar_agree() {
        let n = 256 * 9 + 37;
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(i, v)| v + 1e-3 * (i % 7) as f32)
            .collect();
        let y: Vec<f32> = x.iter().map(|v| v * 1.01).collect();
        let (a, fa) = update_sums(&b, &x, &y);
        let (s, fs) = scalar(&b, &x, &y);
        assert!(fa && fs);
        for k in 0..3 {
            assert!((a[k] - s[k]).abs() <= 1e-5 * s[k].abs(), "{a:?} vs {s:?}");
        }
        let mut bad = x.clone();
        bad[5] = f32::INFINITY;
        assert!(!update_sums(&b, &bad, &y).1);
        bad[5] = 0.0;
        bad[n - 1] = f32::NAN;
        assert!(!update_sums(&b, &bad, &y).1);
    }
}
