//! Rank truncation of a low-rank SVD and balanced re-factoring:
//! ΔW ≈ U_k·Σ_k·V_kᵀ written as B′ = U_k·√Σ_k, A′ = √Σ_k·V_kᵀ.

use ndarray::{s, Array2, Axis};

use super::Svd;

/// How many singular triplets to keep.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Truncation {
    /// Keep at most this many.
    pub max_rank: Option<usize>,
    /// Keep the fewest that hold at least this fraction of ‖ΔW‖²_F (0 < E ≤ 1).
    pub energy: Option<f64>,
}

impl Truncation {
    /// The number of singular values (descending) to keep: the smaller of
    /// the two limits, never more than the nonzero ones. 0 only for ΔW = 0.
    pub fn kept(&self, s: &[f64]) -> usize {
        let total: f64 = s.iter().map(|x| x * x).sum();
        let nonzero = s.iter().take_while(|x| **x > 0.0).count();
        if total == 0.0 {
            return 0;
        }
        let mut k = nonzero;
        if let Some(r) = self.max_rank {
            k = k.min(r);
        }
        if let Some(e) = self.energy {
            let mut acc = 0.0;
            let by_energy = s
                .iter()
                .position(|x| {
                    acc += x * x;
                    acc >= e * total * (1.0 - 1e-12)
                })
                .map_or(s.len(), |i| i + 1);
            k = k.min(by_energy);
        }
        k
    }
}

/// ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F for the best rank-k approximation (Eckart–Young):
/// the tail's share of the singular values' squares, square-rooted.
pub fn tail_error(s: &[f64], k: usize) -> f64 {
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total == 0.0 {
        return 0.0;
    }
    let tail: f64 = s.iter().skip(k).map(|x| x * x).sum();
    (tail / total).sqrt()
}

/// Balanced factors of the rank-k truncation with `c·B′·A′ = U_k·Σ_k·V_kᵀ`
/// (c > 0, the scale the reader will apply): B′ = U_k·√(Σ_k/c) (m×k) and
/// A′ = √(Σ_k/c)·V_kᵀ (k×n). Column i of B′ and row i of A′ then have the
/// same norm, √(σᵢ/c).
pub fn balanced(svd: &Svd, k: usize, c: f64) -> (Array2<f64>, Array2<f64>) {
    let root = svd.s.slice(s![..k]).mapv(|x| (x.max(0.0) / c).sqrt());
    let b = &svd.u.slice(s![.., ..k]) * &root.view().insert_axis(Axis(0));
    let a = &svd.vt.slice(s![..k, ..]) * &root.view().insert_axis(Axis(1));
    (b, a)
}

#[cfg(test)]
mod tests {
    use super::super::lowrank::tests::random;
    use super::super::lowrank::{small_svd, LowRank};
    use super::*;

    #[test]
    fn kept_rank_by_rank_energy_and_both() {
        let s = [4.0, 2.0, 1.0, 0.0];
        let t = |max_rank, energy| Truncation { max_rank, energy }.kept(&s);
        assert_eq!(t(None, None), 3, "zeros are never kept");
        assert_eq!(t(Some(2), None), 2);
        assert_eq!(t(Some(9), None), 3);
        // Energies 16, 20, 21 of 21.
        assert_eq!(t(None, Some(0.5)), 1);
        assert_eq!(t(None, Some(16.0 / 21.0)), 1, "exactly reached");
        assert_eq!(t(None, Some(0.9)), 2);
        assert_eq!(t(None, Some(1.0)), 3);
        assert_eq!(t(Some(1), Some(0.99)), 1);
        assert_eq!(Truncation::default().kept(&[0.0, 0.0]), 0);
    }

    #[test]
    fn balanced_truncation_is_the_best_rank_k_approximation() {
        let (m, n, r) = (60, 45, 8);
        let lr = LowRank::new(random(m, r, 1), random(r, n, 2), 0.7);
        let svd = lr.svd().unwrap();
        let dense = lr.to_dense();
        let full = small_svd(&dense).unwrap();
        for k in [1, 3, 8] {
            let c = 0.25;
            let (b, a) = balanced(&svd, k, c);
            let approx = b.dot(&a) * c;
            let err = (&dense - &approx).mapv(|x| x * x).sum().sqrt() / lr.norm();
            let want = tail_error(full.s.as_slice().unwrap(), k);
            assert!((err - want).abs() < 1e-10, "k={k}: {err} vs {want}");
            for i in 0..k {
                let (nb, na) = (
                    b.column(i).mapv(|x| x * x).sum().sqrt(),
                    a.row(i).mapv(|x| x * x).sum().sqrt(),
                );
                assert!((nb - na).abs() < 1e-10 * nb, "unbalanced component {i}");
            }
        }
    }
}
