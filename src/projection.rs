//! The Safe LoRA projection of one module, in factored form, and the
//! similarity-based selection of modules that `safe-lora`, `fuse --method
//! selective` and `tune` share (a module of its own, so that none of them
//! imports another command's module).
//!
//! With V = W_aligned − W_base (d_out×d_in) and the paper's
//! C = V·Vᵀ / ‖V‖_F (Frobenius norm, not squared, as in the authors' code),
//! the projected factor is B′ = C·B = V·(Vᵀ·B) / ‖V‖_F: two products of
//! cost d_out·d_in·r, never the d_out×d_out matrix C. The similarity is the
//! cosine of the flattened C·B·A and B·A, from r×r Gram matrices:
//! with G = A·Aᵀ, ⟨P·A, B·A⟩ = sum((PᵀB)∘G) and ‖P·A‖² = sum((PᵀP)∘G).

use ndarray::{s, Array2, ArrayView2};

use crate::error::{Error, Result};
use crate::linalg::rsvd::{randomized_svd, RsvdOptions};
use crate::linalg::LowRank;

/// Which modules are projected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// Those with similarity ≤ T (the reference's `threshold` mode; T = 0.5).
    Threshold(f64),
    /// The N least similar (the reference's `number` mode; N = 10).
    TopN(usize),
}

/// V for one module, in the adapter's layout.
#[derive(Debug, Clone)]
pub enum Alignment<'a> {
    /// W_aligned − W_base, dense (in a worker's reusable buffer).
    Dense(ArrayView2<'a, f32>),
    /// An aligned model given as base + a safety adapter: V is its ΔW.
    LowRank(LowRank),
}

impl Alignment<'_> {
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Alignment::Dense(v) => v.dim(),
            Alignment::LowRank(l) => (l.rows(), l.cols()),
        }
    }

    /// ‖V‖_F.
    pub fn norm(&self) -> f64 {
        match self {
            Alignment::Dense(v) => match v.as_slice() {
                Some(xs) => sum_sq(xs).sqrt(),
                None => v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt(),
            },
            Alignment::LowRank(l) => l.norm(),
        }
    }

    /// V·(Vᵀ·B) / ‖V‖_F for B d_out×r.
    pub fn paper_projection(&self, b: &Array2<f64>, norm: f64) -> Array2<f64> {
        match self {
            Alignment::Dense(v) => {
                let b32 = b.mapv(|x| x as f32);
                let x = v.t().dot(&b32); // d_in×r
                v.dot(&x).mapv(|x| f64::from(x) / norm)
            }
            Alignment::LowRank(l) => {
                // V = s·Bv·Av: Vᵀ·B = s·Avᵀ·(Bvᵀ·B); V·X = s·Bv·(Av·X).
                let x = l.a.t().dot(&l.b.t().dot(b)) * l.scale;
                l.b.dot(&l.a.dot(&x)) * (l.scale / norm)
            }
        }
    }

    /// V's top-k left singular vectors (d_out×k): exact for a low-rank V,
    /// a seeded randomized SVD (20 extra directions, 4 power iterations;
    /// exact whenever k + 20 ≥ rank V) for a dense one.
    pub fn top_left(&self, k: usize, seed: u64) -> Result<Array2<f64>> {
        Ok(match self {
            Alignment::Dense(v) => {
                let opts = RsvdOptions {
                    power_iters: 4,
                    oversample: 20,
                    ..RsvdOptions::new(k, seed)
                };
                randomized_svd(*v, &opts)?.u
            }
            Alignment::LowRank(l) => {
                let svd = l.svd()?;
                let k = k.min(svd.u.ncols());
                svd.u.slice(s![.., ..k]).to_owned()
            }
        })
    }
}

/// Σx² in f64, eight lanes at a time (the scalar iterator chain was 14% of
/// a safe-lora run).
pub fn sum_sq(xs: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += f64::from(*x) * f64::from(*x);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>()
}

/// Cosine of the flattened P·A and B·A, and ‖P·A‖_F, ‖B·A‖_F, from Grams.
pub fn similarity(p: &Array2<f64>, b: &Array2<f64>, a: ArrayView2<'_, f64>) -> (f64, f64, f64) {
    let g = a.dot(&a.t());
    let tr = |x: &Array2<f64>, y: &Array2<f64>| (&x.t().dot(y) * &g).sum();
    let (pb, pp, bb) = (tr(p, b), tr(p, p).max(0.0), tr(b, b).max(0.0));
    let (np, nb) = (pp.sqrt(), bb.sqrt());
    let cos = if nb == 0.0 {
        // No update: nothing to project.
        1.0
    } else if np == 0.0 {
        0.0
    } else {
        pb / (np * nb)
    };
    (cos, np, nb)
}

/// The reference rounds the similarity to 5 decimals before comparing it.
pub fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// The threshold a selection takes modules at or below (similarities
/// rounded by [`round5`]): T itself, or the N-th smallest similarity (ties
/// at it are taken too). `safe-lora` projects those modules and `fuse
/// --method selective` fuses the safety adapter into them.
pub fn selection_threshold(selection: Selection, sims: &[f64]) -> Result<f64> {
    match selection {
        Selection::Threshold(t) => Ok(t),
        Selection::TopN(0) => Err(Error::Usage("--top-n must be at least 1".into())),
        Selection::TopN(_) if sims.is_empty() => Ok(f64::NEG_INFINITY),
        Selection::TopN(n) => {
            let mut s: Vec<f64> = sims.iter().map(|x| round5(*x)).collect();
            s.sort_by(f64::total_cmp);
            Ok(s[n.min(s.len()) - 1])
        }
    }
}

/// Whether a module of similarity `sim` is selected at `threshold`.
pub fn selected(sim: f64, threshold: f64) -> bool {
    round5(sim) <= threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::lowrank::tests::random;

    /// Dense definitions: C = V·Vᵀ/‖V‖, cos of C·B·A and B·A.
    fn dense(v: &Array2<f64>, b: &Array2<f64>, a: &Array2<f64>) -> (Array2<f64>, f64) {
        let n = v.mapv(|x| x * x).sum().sqrt();
        let c = v.dot(&v.t()) / n;
        let cb = c.dot(b);
        let (x, y) = (cb.dot(a), b.dot(a));
        let cos =
            (&x * &y).sum() / (x.mapv(|t| t * t).sum().sqrt() * y.mapv(|t| t * t).sum().sqrt());
        (cb, cos)
    }

    #[test]
    fn factored_projection_equals_the_dense_definition() {
        let (m, n, r) = (48, 32, 4);
        let v = random(m, n, 1);
        let (b, a) = (random(m, r, 2), random(r, n, 3));
        let (want_cb, want_cos) = dense(&v, &b, &a);
        let v32 = v.mapv(|x| x as f32);
        let dense_v = Alignment::Dense(v32.view());
        let norm = dense_v.norm();
        let cb = dense_v.paper_projection(&b, norm);
        let err = (&cb - &want_cb)
            .mapv(f64::abs)
            .fold(0.0f64, |m, x| m.max(*x));
        assert!(
            err < 1e-5 * want_cb.mapv(f64::abs).fold(0.0f64, |m, x| m.max(*x)),
            "{err}"
        );
        let (cos, _, _) = similarity(&cb, &b, a.view());
        assert!((cos - want_cos).abs() < 1e-6, "{cos} vs {want_cos}");
        // A low-rank V gives the same as its dense form.
        let lr = LowRank::new(random(m, 3, 4), random(3, n, 5), 0.7);
        let (want_cb, want_cos) = dense(&lr.to_dense(), &b, &a);
        let low = Alignment::LowRank(lr);
        let cb = low.paper_projection(&b, low.norm());
        assert!((&cb - &want_cb).mapv(f64::abs).sum() < 1e-9);
        let (cos, _, _) = similarity(&cb, &b, a.view());
        assert!((cos - want_cos).abs() < 1e-12);
    }

    #[test]
    fn degenerate_updates_have_defined_similarities() {
        let a = random(2, 5, 1);
        let zero = Array2::<f64>::zeros((6, 2));
        assert_eq!(similarity(&zero, &zero, a.view()).0, 1.0, "no update");
        assert_eq!(similarity(&zero, &random(6, 2, 2), a.view()).0, 0.0);
        assert_eq!(round5(0.123456), 0.12346);
        let xs: Vec<f32> = (0..1003).map(|i| i as f32 * 0.01 - 3.0).collect();
        let want: f64 = xs.iter().map(|x| f64::from(*x).powi(2)).sum();
        assert!((sum_sq(&xs) - want).abs() < 1e-9 * want);
    }
}
