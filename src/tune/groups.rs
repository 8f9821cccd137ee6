//! Layer groups: the units tune weights the safety adapter by, and the
//! `W@A-B,...` weight spec a choice of per-group weights becomes.

/// The layer groups of a model with `n_layer` layers.
pub fn layer_groups(n_layer: usize, size: usize) -> Vec<(usize, usize)> {
    (0..n_layer)
        .step_by(size.max(1))
        .map(|a| (a, (a + size.max(1)).min(n_layer) - 1))
        .collect()
}

/// The safety adapter's weight spec for per-group weights: `W@A-B,...`,
/// adjacent groups of one weight merged.
pub fn weights_spec(groups: &[(usize, usize)], weights: &[f64]) -> String {
    let mut items: Vec<(f64, usize, usize)> = Vec::new();
    for (&(a, b), &w) in groups.iter().zip(weights) {
        match items.last_mut() {
            Some((lw, _, lb)) if *lw == w && *lb + 1 == a => *lb = b,
            _ => items.push((w, a, b)),
        }
    }
    let items: Vec<String> = items
        .into_iter()
        .filter(|(w, _, _)| *w != 0.0)
        .map(|(w, a, b)| format!("{w}@{a}-{b}"))
        .collect();
    if items.is_empty() {
        "0".into()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::Weights;

    #[test]
    fn groups_cover_every_layer_and_specs_name_the_weighted_ones() {
        let g = layer_groups(30, 4);
        assert_eq!(g.len(), 8);
        assert_eq!((g[0], g[7]), ((0, 3), (28, 29)));
        let spec = weights_spec(&g, &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 2.0]);
        assert_eq!(spec, "1.5@24-27,2@28-29");
        assert_eq!(
            weights_spec(&g, &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 2.0]),
            "1@20-27,2@28-29"
        );
        let w = Weights::parse(&spec).unwrap().unwrap();
        assert_eq!(w.for_module("blk.29.attn_q.weight"), 2.0);
        assert_eq!(w.for_module("blk.3.attn_q.weight"), 0.0);
        assert_eq!(weights_spec(&g, &[0.0; 8]), "0");
    }
}
