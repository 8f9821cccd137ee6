//! ΔW = s·B·A held as its factors.

use ndarray::{s, Array1, Array2, Axis};
use ndarray_linalg::{Eigh, JobSvd, QR, SVD, SVDDC, UPLO};

use super::lapack;
use crate::error::Result;

/// A low-rank product `scale · B · A` with B m×r and A r×n.
#[derive(Debug, Clone)]
pub struct LowRank {
    pub b: Array2<f64>,
    pub a: Array2<f64>,
    pub scale: f64,
}

/// A thin SVD `U · diag(s) · Vᵀ`, singular values descending.
#[derive(Debug, Clone)]
pub struct Svd {
    /// m×k, orthonormal columns.
    pub u: Array2<f64>,
    pub s: Array1<f64>,
    /// k×n, orthonormal rows.
    pub vt: Array2<f64>,
}

/// Thin QR of a tall m×r matrix: Q m×k and R k×r with k = min(m, r).
pub fn thin_qr(m: &Array2<f64>) -> Result<(Array2<f64>, Array2<f64>)> {
    let (q, r) = m.qr().map_err(|e| lapack("QR", e))?;
    let k = m.nrows().min(m.ncols());
    Ok((
        q.slice(s![.., ..k]).to_owned(),
        r.slice(s![..k, ..]).to_owned(),
    ))
}

/// SVD of a small dense matrix, thin.
pub fn small_svd(m: &Array2<f64>) -> Result<Svd> {
    let (u, s, vt) = m.svd(true, true).map_err(|e| lapack("SVD", e))?;
    let (u, vt) = (u.expect("requested U"), vt.expect("requested Vᵀ"));
    let k = s.len();
    Ok(Svd {
        u: u.slice(s![.., ..k]).to_owned(),
        s,
        vt: vt.slice(s![..k, ..]).to_owned(),
    })
}

/// Thin SVD of a dense matrix of any shape, by LAPACK's divide and conquer
/// (`gesdd`), without the full square factors.
pub fn dense_svd(m: &Array2<f64>) -> Result<Svd> {
    let (u, s, vt) = m.svddc(JobSvd::Some).map_err(|e| lapack("SVD", e))?;
    Ok(Svd {
        u: u.expect("requested U"),
        s,
        vt: vt.expect("requested Vᵀ"),
    })
}

impl LowRank {
    /// Build from factors; panics if the inner dimensions disagree (callers
    /// validate shapes on input).
    pub fn new(b: Array2<f64>, a: Array2<f64>, scale: f64) -> Self {
        assert_eq!(b.ncols(), a.nrows(), "B is m×r and A is r×n");
        LowRank { b, a, scale }
    }

    pub fn rows(&self) -> usize {
        self.b.nrows()
    }

    pub fn cols(&self) -> usize {
        self.a.ncols()
    }

    pub fn rank(&self) -> usize {
        self.b.ncols()
    }

    /// The SVD of ΔW without forming it: B = Q_B·R_B, Aᵀ = Q_A·R_A, the SVD
    /// of the core s·R_B·R_Aᵀ = U·Σ·Vᵀ, then ΔW = (Q_B·U)·Σ·(Q_A·V)ᵀ.
    /// Cost O((m+n)·r²).
    pub fn svd(&self) -> Result<Svd> {
        let (qb, rb) = thin_qr(&self.b)?;
        let (qa, ra) = thin_qr(&self.a.t().to_owned())?;
        let core = rb.dot(&ra.t()) * self.scale;
        let c = small_svd(&core)?;
        Ok(Svd {
            u: qb.dot(&c.u),
            s: c.s,
            vt: c.vt.dot(&qa.t()),
        })
    }

    /// The singular values of ΔW (descending, r of them) from the two r×r
    /// Gram matrices alone: with BᵀB = V·Λ·Vᵀ and M = Λ^½·Vᵀ·(A·Aᵀ)·V·Λ^½,
    /// σᵢ² = s²·eig(M). Two Gram products, O((m+n)·r²), then only r×r work
    /// (no tall QR), so it is the fast path when no singular vectors are
    /// needed. Exact for rank-deficient factors (e.g. a zero B). Small σ lose
    /// relative accuracy as ε·(σ₁/σ)², which f64 keeps negligible for spectra.
    pub fn singular_values(&self) -> Result<Array1<f64>> {
        let gb = self.b.t().dot(&self.b);
        let ga = self.a.dot(&self.a.t());
        let (lam, v) = gb.eigh(UPLO::Lower).map_err(|e| lapack("eigh", e))?;
        let root = lam.mapv(|x| x.max(0.0).sqrt());
        let w = &v * &root.view().insert_axis(Axis(0)); // V·Λ^½
        let m = w.t().dot(&ga).dot(&w);
        let m = (&m + &m.t()) * 0.5;
        let (mu, _) = m.eigh(UPLO::Lower).map_err(|e| lapack("eigh", e))?;
        let mut s: Vec<f64> = mu
            .iter()
            .map(|x| self.scale.abs() * x.max(0.0).sqrt())
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        Ok(Array1::from(s))
    }

    /// ⟨ΔW₁, ΔW₂⟩_F = s₁·s₂·sum((B₁ᵀB₂) ∘ (A₁A₂ᵀ)), in O((m+n)·r₁·r₂).
    pub fn inner(&self, other: &LowRank) -> f64 {
        assert_eq!((self.rows(), self.cols()), (other.rows(), other.cols()));
        let bb = self.b.t().dot(&other.b);
        let aa = self.a.dot(&other.a.t());
        self.scale * other.scale * (&bb * &aa).sum()
    }

    /// ‖ΔW‖_F.
    pub fn norm(&self) -> f64 {
        self.inner(self).max(0.0).sqrt()
    }

    /// Cosine of the flattened ΔWs; 0 when either is zero.
    pub fn cosine(&self, other: &LowRank) -> f64 {
        let d = self.norm() * other.norm();
        if d == 0.0 {
            0.0
        } else {
            self.inner(other) / d
        }
    }

    /// ‖self − other‖_F, stably: the difference as one stacked low-rank
    /// product [s₁B₁, −s₂B₂]·[A₁; A₂] = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ has the norm of
    /// its small core, so nearly equal updates do not lose their difference
    /// to cancellation between two large Gram sums.
    pub fn difference_norm(&self, other: &LowRank) -> Result<f64> {
        let neg = LowRank::new(other.b.clone(), other.a.clone(), -other.scale);
        let d = self.concat(&neg);
        let (_, rb) = thin_qr(&d.b)?;
        let (_, ra) = thin_qr(&d.a.t().to_owned())?;
        Ok(rb.dot(&ra.t()).mapv(|x| x * x).sum().sqrt())
    }

    /// The dense m×n product (tests and small references only).
    pub fn to_dense(&self) -> Array2<f64> {
        self.b.dot(&self.a) * self.scale
    }

    /// Stack two low-rank terms into one of rank r₁ + r₂ with
    /// `self + other` as its product.
    pub fn concat(&self, other: &LowRank) -> LowRank {
        let b = ndarray::concatenate(
            Axis(1),
            &[
                (&self.b * self.scale).view(),
                (&other.b * other.scale).view(),
            ],
        )
        .expect("same row count");
        let a = ndarray::concatenate(Axis(0), &[self.a.view(), other.a.view()])
            .expect("same column count");
        LowRank::new(b, a, 1.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random matrix in [-0.5, 0.5).
    pub fn random(m: usize, n: usize, seed: u64) -> Array2<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Array2::from_shape_fn((m, n), |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
    }

    #[test]
    fn low_rank_svd_matches_the_dense_svd() {
        for (m, n, r, seed) in [
            (40, 30, 4, 1),
            (7, 90, 5, 2),
            (128, 64, 16, 3),
            (20, 20, 20, 4),
        ] {
            let lr = LowRank::new(random(m, r, seed), random(r, n, seed + 10), 1.7);
            let ours = lr.svd().unwrap();
            let dense = small_svd(&lr.to_dense()).unwrap();
            for i in 0..r {
                let (a, b) = (ours.s[i], dense.s[i]);
                assert!(
                    (a - b).abs() <= 1e-10 * dense.s[0],
                    "{m}x{n} r{r} σ{i}: {a} vs {b}"
                );
            }
            // The Gram path gives the same values.
            let fast = lr.singular_values().unwrap();
            for i in 0..r {
                assert!(
                    (fast[i] - dense.s[i]).abs() <= 1e-9 * dense.s[0],
                    "gram σ{i}"
                );
            }
            // The factors reproduce ΔW.
            let us = &ours.u * &ours.s.view().insert_axis(Axis(0));
            let back = us.dot(&ours.vt);
            let err = (&back - &lr.to_dense()).mapv(|x| x * x).sum().sqrt();
            assert!(err <= 1e-10 * lr.norm(), "reconstruction error {err}");
            // Orthonormal bases.
            let utu = ours.u.t().dot(&ours.u);
            assert!((&utu - &Array2::<f64>::eye(r))
                .iter()
                .all(|x| x.abs() < 1e-10));
        }
    }

    #[test]
    fn singular_values_of_rank_deficient_and_zero_factors() {
        let b = random(30, 4, 1);
        let mut a = random(4, 20, 2);
        let row = a.row(0).to_owned();
        a.row_mut(1).assign(&row); // rank 3
        let lr = LowRank::new(b, a, -2.0);
        let fast = lr.singular_values().unwrap();
        let dense = small_svd(&lr.to_dense()).unwrap();
        for i in 0..4 {
            assert!(
                (fast[i] - dense.s[i]).abs() <= 1e-7 * dense.s[0],
                "σ{i}: {} vs {}",
                fast[i],
                dense.s[i]
            );
        }
        let zero = LowRank::new(Array2::zeros((10, 3)), random(3, 8, 3), 1.0);
        assert!(zero.singular_values().unwrap().iter().all(|x| *x == 0.0));
    }

    #[test]
    fn inner_products_norms_and_cosines_match_dense() {
        let (m, n) = (50, 33);
        let x = LowRank::new(random(m, 3, 5), random(3, n, 6), 0.5);
        let y = LowRank::new(random(m, 6, 7), random(6, n, 8), -2.0);
        let (dx, dy) = (x.to_dense(), y.to_dense());
        let dense_inner = (&dx * &dy).sum();
        assert!((x.inner(&y) - dense_inner).abs() < 1e-10 * dense_inner.abs().max(1.0));
        let dn = dx.mapv(|v| v * v).sum().sqrt();
        assert!((x.norm() - dn).abs() < 1e-12 * dn);
        assert!((x.cosine(&x) - 1.0).abs() < 1e-12);
        let neg = LowRank::new(x.b.clone(), x.a.clone(), -x.scale);
        assert!((x.cosine(&neg) + 1.0).abs() < 1e-12);
        let dd = (&dx - &dy).mapv(|v| v * v).sum().sqrt();
        assert!((x.difference_norm(&y).unwrap() - dd).abs() < 1e-10 * dd);
        // A difference of 1e-9 relative survives (Gram sums would lose it).
        let mut near = x.clone();
        near.scale *= 1.0 + 1e-9;
        let want = 1e-9 * dn;
        let got = x.difference_norm(&near).unwrap();
        assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
        let sum = x.concat(&y);
        let err = (&sum.to_dense() - &(&dx + &dy)).mapv(|v| v.abs()).sum();
        assert!(err < 1e-10);
    }
}
