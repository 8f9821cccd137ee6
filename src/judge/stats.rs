//! Rates with honest error bars: the 95% Wilson score interval.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// `k` of `n`, with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateCi {
    pub k: usize,
    pub n: usize,
    pub rate: f64,
    /// The 95% Wilson score interval `[low, high]`.
    pub ci95: [f64; 2],
}

impl RateCi {
    /// `k` of `n` (`n` = 0 gives rate 0 and the interval [0, 1]).
    pub fn new(k: usize, n: usize) -> RateCi {
        RateCi {
            k,
            n,
            rate: if n == 0 { 0.0 } else { k as f64 / n as f64 },
            ci95: wilson(k, n),
        }
    }

    /// `12.5% [5.1, 27.0]`.
    pub fn percent(&self) -> String {
        format!(
            "{:.1}% [{:.1}, {:.1}]",
            100.0 * self.rate,
            100.0 * self.ci95[0],
            100.0 * self.ci95[1]
        )
    }
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), Table I: 81/263 -> 0.2553..0.3662; 0/10 -> 0..0.2775.
        let [lo, hi] = wilson(81, 263);
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 5e-4, "{hi}");
        let [lo, hi] = wilson(10, 10);
        assert!(
            (lo - 0.7225).abs() < 5e-4 && (hi - 1.0).abs() < 1e-12,
            "{lo}"
        );
        assert_eq!(wilson(0, 0), [0.0, 1.0]);
    }
}
