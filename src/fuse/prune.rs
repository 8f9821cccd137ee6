//! PEFT's per-factor merges (`merge_utils.py`), applied to the stack of A
//! factors and the stack of B factors separately, with the intended
//! mathematics: DARE divides the kept entries by the density (PEFT before
//! 0.19 computed that division and dropped it).

use ndarray::Array2;

/// Which per-factor merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Keep each tensor's top int(density·numel) entries by magnitude, then
    /// the weighted sum.
    MagnitudePrune,
    /// Magnitude pruning, a sign elected per entry from the unweighted sum
    /// (≥ 0 counts as +), then the mean of the agreeing weighted entries.
    Ties,
    /// Random pruning with Bernoulli(density), kept entries divided by the
    /// density, then the weighted sum.
    DareLinear,
    /// DARE's random pruning, then TIES' sign election and disjoint mean.
    DareTies,
}

/// A seeded SplitMix64 stream.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A stable seed for one tensor: the run's seed, the module, which factor
/// and which input, so results do not depend on thread scheduling.
pub fn tensor_seed(seed: u64, module: &str, factor: u8, input: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in module
        .bytes()
        .chain([factor, input as u8, (input >> 8) as u8])
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn magnitude(t: &Array2<f64>, density: f64) -> Array2<f64> {
    if density >= 1.0 {
        return t.clone();
    }
    let n = t.len();
    let k = (density * n as f64) as usize;
    let flat: Vec<f64> = t.iter().copied().collect();
    let mut idx: Vec<usize> = (0..n).collect();
    // Largest magnitudes first; equal magnitudes keep their order.
    idx.sort_by(|&a, &b| flat[b].abs().total_cmp(&flat[a].abs()));
    let mut keep = vec![false; n];
    for &i in &idx[..k] {
        keep[i] = true;
    }
    let data = flat
        .iter()
        .zip(&keep)
        .map(|(x, k)| if *k { *x } else { 0.0 })
        .collect();
    Array2::from_shape_vec(t.dim(), data).expect("same shape")
}

fn random(t: &Array2<f64>, density: f64, seed: u64) -> Array2<f64> {
    if density >= 1.0 {
        return t.clone();
    }
    let mut rng = SplitMix(seed);
    t.mapv(|x| {
        if rng.next_f64() < density {
            x / density
        } else {
            0.0
        }
    })
}

/// Merge `tensors` (same shape) with `weights`; `seeds[i]` drives tensor i's
/// random mask (DARE). `density` in [0, 1] (≥ 1: no pruning).
pub fn merge(
    tensors: &[Array2<f64>],
    weights: &[f64],
    merge: Merge,
    density: f64,
    seeds: &[u64],
) -> Array2<f64> {
    let pruned: Vec<Array2<f64>> = tensors
        .iter()
        .zip(seeds)
        .map(|(t, s)| match merge {
            Merge::MagnitudePrune | Merge::Ties => magnitude(t, density),
            Merge::DareLinear | Merge::DareTies => random(t, density, *s),
        })
        .collect();
    let dim = tensors[0].dim();
    match merge {
        Merge::MagnitudePrune | Merge::DareLinear => pruned
            .iter()
            .zip(weights)
            .fold(Array2::zeros(dim), |acc, (t, w)| acc + t * *w),
        Merge::Ties | Merge::DareTies => {
            let total = pruned
                .iter()
                .fold(Array2::<f64>::zeros(dim), |acc, t| acc + t);
            let elected = total.mapv(|x| if x >= 0.0 { 1.0 } else { -1.0 });
            let mut sum = Array2::<f64>::zeros(dim);
            let mut count = Array2::<f64>::zeros(dim);
            for (t, w) in pruned.iter().zip(weights) {
                ndarray::Zip::from(&mut sum)
                    .and(&mut count)
                    .and(t)
                    .and(&elected)
                    .for_each(|s, c, x, e| {
                        // sign(0) = 0 agrees with neither sign.
                        if *x != 0.0 && x.signum() == *e {
                            *s += x * w;
                            *c += 1.0;
                        }
                    });
            }
            sum / count.mapv(|c| c.max(1.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn magnitude_prune_keeps_the_largest_and_sums() {
        let a = array![[1.0, -4.0], [0.5, 3.0]];
        let b = array![[-2.0, 1.0], [6.0, 0.1]];
        let m = merge(&[a, b], &[1.0, 0.5], Merge::MagnitudePrune, 0.5, &[0, 0]);
        // a keeps -4, 3; b keeps -2, 6.
        assert_eq!(m, array![[-1.0, -4.0], [3.0, 3.0]]);
    }

    #[test]
    fn ties_elects_signs_from_the_unweighted_sum_and_averages_agreeing_entries() {
        let a = array![[1.0, -4.0, 2.0]];
        let b = array![[3.0, 1.0, -2.0]];
        let m = merge(&[a, b], &[0.5, 2.0], Merge::Ties, 1.0, &[0, 0]);
        // col 0: both +: (0.5 + 6) / 2; col 1: sum -3 → -: only a: -2 / 1;
        // col 2: sum 0 → +: only a: 1 / 1.
        assert_eq!(m, array![[3.25, -2.0, 1.0]]);
    }

    #[test]
    fn dare_keeps_about_density_and_rescales_seeded() {
        let t = Array2::from_elem((100, 100), 1.0);
        let m = merge(
            std::slice::from_ref(&t),
            &[1.0],
            Merge::DareLinear,
            0.3,
            &[7],
        );
        let kept = m.iter().filter(|x| **x != 0.0).count();
        assert!((2700..3300).contains(&kept), "{kept}");
        assert!(m
            .iter()
            .all(|x| *x == 0.0 || (*x - 1.0 / 0.3).abs() < 1e-12));
        // Mean preserved in expectation.
        assert!((m.mean().unwrap() - 1.0).abs() < 0.1);
        assert_eq!(
            m,
            merge(
                std::slice::from_ref(&t),
                &[1.0],
                Merge::DareLinear,
                0.3,
                &[7]
            )
        );
        assert_ne!(m, merge(&[t], &[1.0], Merge::DareLinear, 0.3, &[8]));
    }
}
