//! Token sampling over a logit row, in Rust so that it is deterministic and
//! independent of how sequences are batched.

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest token id).
    Greedy,
    /// Temperature, top-k and top-p sampling from a seeded generator. Each
    /// prompt draws from its own stream, derived from `seed` and the prompt's
    /// index, so results do not depend on batching or order.
    Seeded {
        seed: u64,
        temperature: f32,
        /// 0 keeps every token.
        top_k: usize,
        /// 1.0 keeps every token.
        top_p: f32,
    },
}

/// SplitMix64: small, fast, and good enough for sampling.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The index of the largest logit; NaN never wins; ties go to the lowest index.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Draw a token from `logits` with temperature, top-k and top-p.
pub(crate) fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    let (temperature, top_k, top_p) = match s {
        Sampling::Greedy => return argmax(logits),
        Sampling::Seeded {
            temperature,
            top_k,
            top_p,
            ..
        } => (*temperature, *top_k, *top_p),
    };
    if temperature <= 0.0 || !temperature.is_finite() {
        return argmax(logits);
    }
    let mut cand: Vec<(usize, f32)> = logits
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .collect();
    if cand.is_empty() {
        return 0;
    }
    // Descending by logit, ties by id: a total, deterministic order.
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 && top_k < cand.len() {
        cand.truncate(top_k);
    }
    let max = f64::from(cand[0].1);
    let t = f64::from(temperature);
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|(_, v)| ((f64::from(*v) - max) / t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let keep = if top_p < 1.0 {
        let mut acc = 0.0;
        probs
            .iter()
            .position(|p| {
                acc += p;
                acc >= f64::from(top_p)
            })
            .map_or(probs.len(), |i| i + 1)
    } else {
        probs.len()
    };
    let mass: f64 = probs[..keep].iter().sum();
    let mut u = rng.next_f64() * mass;
    for (i, p) in probs[..keep].iter().enumerate() {
        if u < *p {
            return cand[i].0;
        }
        u -= p;
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_prefers_lowest_index_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        let s = Sampling::Seeded {
            seed: 42,
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
        };
        let draw = |stream| {
            let mut rng = Rng::new(42, stream);
            (0..50)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        // top-3 of logits equal to 6 are ids 6, 13, 20.
        assert!(draw(1).iter().all(|t| [6, 13, 20].contains(t)));
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        let logits = [10.0f32, 0.0, 0.0, 0.0];
        let s = Sampling::Seeded {
            seed: 1,
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
        };
        let mut rng = Rng::new(1, 0);
        assert!((0..100).all(|_| sample(&logits, &s, &mut rng) == 0));
    }
}
