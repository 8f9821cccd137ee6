//! Subspace measures between orthonormal bases and low-rank updates.

use ndarray::{Array1, Array2};

use super::lowrank::{small_svd, thin_qr, LowRank};
use crate::error::Result;

/// An orthonormal basis of the column space of `m` (thin QR).
pub fn orth(m: &Array2<f64>) -> Result<Array2<f64>> {
    Ok(thin_qr(m)?.0)
}

/// Cosines of the principal angles between the spaces spanned by the
/// orthonormal columns of `q1` and `q2`: the singular values of q1ᵀ·q2,
/// descending, min(k₁, k₂) of them, clamped to [0, 1].
pub fn principal_cosines(q1: &Array2<f64>, q2: &Array2<f64>) -> Result<Array1<f64>> {
    let m = q1.t().dot(q2);
    Ok(small_svd(&m)?.s.mapv(|c| c.clamp(0.0, 1.0)))
}

/// ‖U_kᵀ·ΔW‖_F² / ‖ΔW‖_F² for orthonormal columns `uk` (m×k): the share of
/// ΔW's energy in the column space of `uk`. With C = U_kᵀ·B and G = A·Aᵀ it
/// is s²·sum(C ∘ (C·G)) / ‖ΔW‖², in O(m·k·r + n·r²).
pub fn energy_fraction(uk: &Array2<f64>, dw: &LowRank) -> f64 {
    let total = dw.inner(dw);
    if total <= 0.0 {
        return 0.0;
    }
    let c = uk.t().dot(&dw.b);
    let g = dw.a.dot(&dw.a.t());
    (dw.scale * dw.scale * (&c * &c.dot(&g)).sum() / total).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::super::lowrank::tests::random;
    use super::*;

    #[test]
    fn principal_angles_of_known_subspaces() {
        // span(e1, e2) against span(e1, (e2 + e3)/√2): angles 0 and 45°.
        let mut q1 = Array2::<f64>::zeros((4, 2));
        q1[[0, 0]] = 1.0;
        q1[[1, 1]] = 1.0;
        let mut q2 = Array2::<f64>::zeros((4, 2));
        q2[[0, 0]] = 1.0;
        q2[[1, 1]] = std::f64::consts::FRAC_1_SQRT_2;
        q2[[2, 1]] = std::f64::consts::FRAC_1_SQRT_2;
        let c = principal_cosines(&q1, &q2).unwrap();
        assert!((c[0] - 1.0).abs() < 1e-12);
        assert!((c[1] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        // Invariant to the basis chosen: B·M spans the same space as B.
        let b = random(30, 3, 1);
        let bm = b.dot(&random(3, 3, 2));
        let c = principal_cosines(&orth(&b).unwrap(), &orth(&bm).unwrap()).unwrap();
        assert!(c.iter().all(|x| (x - 1.0).abs() < 1e-9), "{c}");
    }

    #[test]
    fn energy_fraction_matches_dense_projection() {
        let (m, n) = (60, 40);
        let dw = LowRank::new(random(m, 5, 3), random(5, n, 4), 1.3);
        let uk = orth(&random(m, 8, 5)).unwrap();
        let dense = dw.to_dense();
        let proj = uk.t().dot(&dense);
        let want = proj.mapv(|x| x * x).sum() / dense.mapv(|x| x * x).sum();
        let got = energy_fraction(&uk, &dw);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // The full space holds all the energy.
        let full = orth(&random(m, m, 6)).unwrap();
        assert!((energy_fraction(&full, &dw) - 1.0).abs() < 1e-9);
    }
}
