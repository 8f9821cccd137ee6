//! Per-module weights of one fuse input: `ADAPTER:W` everywhere, or by
//! layer range and module kind.
//!
//! The weight spec after `ADAPTER:` is a comma-separated list of items
//! `W`, `W@A-B` (layers A to B, inclusive), `W%KIND` (modules whose name
//! ends in KIND, e.g. `q_proj`, `mlp.down_proj`, `attn_q`) or `W@A-B%KIND`.
//! A module takes the weight of the last item that matches it; a module no
//! item matches takes the bare `W` item, or 0 when there is none. So
//! `safety:1.5@22-29` is the safety adapter at 1.5 in layers 22 to 29 only,
//! and `task:1,0.5%down_proj` halves the task in every `down_proj`.
//! llama.cpp applies one scale per file: `fuse` bakes these into `lora_b`.

use std::fmt;

/// One item of a weight spec.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    weight: f64,
    layers: Option<(usize, usize)>,
    kind: Option<String>,
}

/// The weights of one input, per module.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    items: Vec<Item>,
}

impl Weights {
    /// The same weight everywhere.
    pub fn uniform(weight: f64) -> Weights {
        Weights {
            items: vec![Item {
                weight,
                layers: None,
                kind: None,
            }],
        }
    }

    /// Parse a weight spec; `None` when `s` does not look like one (so it
    /// belongs to the path), `Some(Err)` when it does but is wrong.
    pub fn parse(s: &str) -> Option<Result<Weights, String>> {
        if let Ok(w) = s.parse::<f64>() {
            return Some(if w.is_finite() {
                Ok(Weights::uniform(w))
            } else {
                Err("the weight must be finite".into())
            });
        }
        if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c)) {
            return None;
        }
        let mut items = Vec::new();
        for part in s.split(',') {
            let (rest, kind) = match part.split_once('%') {
                Some((r, k)) if !k.is_empty() => (r, Some(k.to_string())),
                Some(_) => return Some(Err(format!("{part:?}: empty module kind after %"))),
                None => (part, None),
            };
            let (w, layers) = match rest.split_once('@') {
                Some((w, range)) => match parse_range(range) {
                    Some(r) => (w, Some(r)),
                    None => {
                        return Some(Err(format!(
                            "{part:?}: layers must be A-B or A with A <= B, e.g. 20-29"
                        )))
                    }
                },
                None => (rest, None),
            };
            let Ok(weight) = w.parse::<f64>() else {
                // Not a number at all: the whole suffix is part of the path.
                return if items.is_empty() && layers.is_none() && kind.is_none() {
                    None
                } else {
                    Some(Err(format!("{part:?}: {w:?} is not a weight")))
                };
            };
            if !weight.is_finite() {
                return Some(Err(format!("{part:?}: the weight must be finite")));
            }
            items.push(Item {
                weight,
                layers,
                kind,
            });
        }
        Some(Ok(Weights { items }))
    }

    /// The weight of `module` (a PEFT or GGUF module name).
    pub fn for_module(&self, module: &str) -> f64 {
        let layer = layer_of(module);
        let default = self
            .items
            .iter()
            .rev()
            .find(|i| i.layers.is_none() && i.kind.is_none())
            .map_or(0.0, |i| i.weight);
        self.items
            .iter()
            .rev()
            .find(|i| {
                (i.layers.is_some() || i.kind.is_some())
                    && i.layers
                        .is_none_or(|(a, b)| layer.is_some_and(|l| a <= l && l <= b))
                    && i.kind.as_deref().is_none_or(|k| kind_matches(module, k))
            })
            .map_or(default, |i| i.weight)
    }

    /// The weight where it is the same everywhere.
    pub fn uniform_weight(&self) -> Option<f64> {
        match self.items.as_slice() {
            [Item {
                weight,
                layers: None,
                kind: None,
            }] => Some(*weight),
            _ => None,
        }
    }

    /// The weight of modules no selector matches (0 when every item selects).
    pub fn default_weight(&self) -> f64 {
        self.for_module("")
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, i) in self.items.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", i.weight)?;
            if let Some((a, b)) = i.layers {
                write!(f, "@{a}-{b}")?;
            }
            if let Some(k) = &i.kind {
                write!(f, "%{k}")?;
            }
        }
        Ok(())
    }
}

fn parse_range(s: &str) -> Option<(usize, usize)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let a = s.parse().ok()?;
            (a, a)
        }
    };
    (a <= b).then_some((a, b))
}

/// The layer number in a PEFT (`...layers.12.self_attn.q_proj`) or GGUF
/// (`blk.12.attn_q`) module name.
pub fn layer_of(module: &str) -> Option<usize> {
    for key in ["layers.", "blk.", "h.", "layer."] {
        let mut rest = module;
        while let Some(i) = rest.find(key) {
            let at_boundary = i == 0 || rest.as_bytes()[i - 1] == b'.';
            let tail = &rest[i + key.len()..];
            let digits: &str = &tail[..tail
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(tail.len())];
            if at_boundary && !digits.is_empty() {
                return digits.parse().ok();
            }
            rest = &rest[i + key.len()..];
        }
    }
    None
}

/// Whether `module` (with or without a `.weight` suffix) ends in the
/// dotted `kind`.
fn kind_matches(module: &str, kind: &str) -> bool {
    let m = module.strip_suffix(".weight").unwrap_or(module);
    m == kind || m.ends_with(&format!(".{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q12: &str = "base_model.model.model.layers.12.self_attn.q_proj";

    #[test]
    fn a_bare_weight_is_uniform() {
        let w = Weights::parse("0.6").unwrap().unwrap();
        assert_eq!(w, Weights::uniform(0.6));
        assert_eq!(w.for_module(Q12), 0.6);
        assert_eq!(w.uniform_weight(), Some(0.6));
    }

    #[test]
    fn layer_ranges_and_kinds_select_and_the_last_match_wins() {
        let w = Weights::parse("1.5@10-12,2@12%q_proj").unwrap().unwrap();
        assert_eq!(w.for_module(Q12), 2.0);
        assert_eq!(w.for_module(&Q12.replace("q_proj", "v_proj")), 1.5);
        assert_eq!(w.for_module(&Q12.replace(".12.", ".9.")), 0.0);
        assert_eq!(w.for_module("blk.11.attn_q.weight"), 1.5);
        assert_eq!(w.default_weight(), 0.0);
        let w = Weights::parse("1,0.5%down_proj").unwrap().unwrap();
        assert_eq!(w.for_module("model.layers.3.mlp.down_proj"), 0.5);
        assert_eq!(w.for_module("model.layers.3.mlp.up_proj"), 1.0);
        assert_eq!(w.to_string(), "1,0.5%down_proj");
        assert_eq!(w.uniform_weight(), None);
    }

    #[test]
    fn suffixes_that_are_not_weights_belong_to_the_path_and_bad_ones_are_errors() {
        assert!(Weights::parse("name").is_none());
        assert!(Weights::parse("").is_none());
        assert!(Weights::parse("1@9-3").unwrap().is_err());
        assert!(Weights::parse("1@x").unwrap().is_err());
        assert!(Weights::parse("1,abc").unwrap().is_err());
        assert!(Weights::parse("inf").unwrap().is_err());
        assert!(Weights::parse("1%").unwrap().is_err());
    }

    #[test]
    fn layers_are_found_in_peft_and_gguf_names_only_at_a_boundary() {
        assert_eq!(layer_of(Q12), Some(12));
        assert_eq!(layer_of("blk.0.ffn_up.weight"), Some(0));
        assert_eq!(layer_of("model.sublayers.3.x"), None);
        assert_eq!(layer_of("token_embd.weight"), None);
    }
}
