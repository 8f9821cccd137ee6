//! Randomized SVD (Halko, Martinsson and Tropp 2011, Alg. 4.4 and 5.1) of a
//! full f32 weight: the top-k singular subspace without a dense SVD.

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::lowrank::{small_svd, thin_qr, Svd};
use crate::error::Result;

/// Settings for [`randomized_svd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RsvdOptions {
    /// Singular triplets wanted.
    pub k: usize,
    /// Extra random directions (5–10 is usual).
    pub oversample: usize,
    /// Power iterations, each re-orthonormalised (2–4 for slowly decaying spectra).
    pub power_iters: usize,
    pub seed: u64,
}

impl RsvdOptions {
    /// k with oversampling 10 and 2 power iterations.
    pub fn new(k: usize, seed: u64) -> Self {
        RsvdOptions {
            k,
            oversample: 10,
            power_iters: 2,
            seed,
        }
    }
}

/// Rows per parallel block of W.
const BLOCK: usize = 256;

/// Standard normal samples from a seeded SplitMix64 stream (Box–Muller).
fn gaussian(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut state = seed ^ 0x5851_F42D_4C95_7F2D;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    Array2::from_shape_simple_fn((rows, cols), || {
        let (u1, u2) = (next().max(f64::MIN_POSITIVE), next());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    })
}

/// W·X for W m×n (f32) and X n×l, row blocks of W in parallel.
fn w_times(w: ArrayView2<'_, f32>, x: &Array2<f32>) -> Array2<f32> {
    let blocks: Vec<Array2<f32>> = w
        .axis_chunks_iter(Axis(0), BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|wb| wb.dot(x))
        .collect();
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    ndarray::concatenate(Axis(0), &views).expect("blocks share their width")
}

/// Wᵀ·Y for W m×n and Y m×l: a parallel sum over row blocks.
fn wt_times(w: ArrayView2<'_, f32>, y: &Array2<f32>) -> Array2<f32> {
    let l = y.ncols();
    w.axis_chunks_iter(Axis(0), BLOCK)
        .zip(y.axis_chunks_iter(Axis(0), BLOCK))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(wb, yb)| wb.t().dot(&yb))
        .reduce(|| Array2::zeros((w.ncols(), l)), |a, b| a + b)
}

/// Orthonormalise the columns of an f32 matrix (QR in f64).
fn orth32(m: &Array2<f32>) -> Result<Array2<f32>> {
    Ok(thin_qr(&m.mapv(f64::from))?.0.mapv(|x| x as f32))
}

/// The top-k singular triplets of `w` (m×n). Accuracy improves with
/// oversampling and power iterations; the result is exact when
/// k + oversample ≥ rank(W).
pub fn randomized_svd(w: ArrayView2<'_, f32>, opts: &RsvdOptions) -> Result<Svd> {
    let (m, n) = w.dim();
    let l = (opts.k + opts.oversample).min(m).min(n).max(1);
    let omega = gaussian(n, l, opts.seed);
    let mut q = orth32(&w_times(w, &omega))?;
    for _ in 0..opts.power_iters {
        let z = orth32(&wt_times(w, &q))?;
        q = orth32(&w_times(w, &z))?;
    }
    // B = Qᵀ·W (l×n), formed as (Wᵀ·Q)ᵀ; its SVD through a thin QR of Bᵀ.
    let bt = wt_times(w, &q).mapv(f64::from);
    let (qb, rb) = thin_qr(&bt)?;
    let c = small_svd(&rb.t().to_owned())?;
    let k = opts.k.min(c.s.len());
    let u = q.mapv(f64::from).dot(&c.u.slice(s![.., ..k]));
    let vt = c.vt.slice(s![..k, ..]).dot(&qb.t());
    Ok(Svd {
        u,
        s: c.s.slice(s![..k]).to_owned(),
        vt,
    })
}

#[cfg(test)]
mod tests {
    use super::super::lowrank::tests::random;
    use super::super::subspace::principal_cosines;
    use super::*;

    /// A matrix with a known, decaying spectrum.
    fn decaying(m: usize, n: usize) -> (Array2<f32>, Vec<f64>) {
        let r = m.min(n);
        let u = thin_qr(&random(m, r, 11)).unwrap().0;
        let v = thin_qr(&random(n, r, 12)).unwrap().0;
        let s: Vec<f64> = (0..r).map(|i| 0.8f64.powi(i as i32)).collect();
        let us = &u * &ndarray::Array1::from(s.clone()).insert_axis(Axis(0));
        (us.dot(&v.t()).mapv(|x| x as f32), s)
    }

    #[test]
    fn randomized_svd_recovers_the_top_subspace() {
        for (m, n) in [(300, 200), (120, 700)] {
            let (w, s) = decaying(m, n);
            let got = randomized_svd(w.view(), &RsvdOptions::new(8, 3)).unwrap();
            for (i, (g, want)) in got.s.iter().zip(&s).enumerate() {
                assert!((g - want).abs() < 1e-4, "{m}x{n} σ{i}: {g} vs {want}");
            }
            let dense = small_svd(&w.mapv(f64::from)).unwrap();
            let cos = principal_cosines(&got.u, &dense.u.slice(s![.., ..8]).to_owned()).unwrap();
            assert!(cos.iter().all(|c| *c > 0.999), "{cos}");
        }
    }

    #[test]
    fn randomized_svd_is_seeded() {
        let (w, _) = decaying(100, 80);
        let a = randomized_svd(w.view(), &RsvdOptions::new(4, 1)).unwrap();
        let b = randomized_svd(w.view(), &RsvdOptions::new(4, 1)).unwrap();
        assert_eq!(a.s, b.s);
    }
}
