//! Validation and planning: which GGUF tensor each PEFT pair becomes, with
//! what scale and transforms. Every problem is collected before any output.

use std::collections::BTreeMap;

use crate::arch::Permute;
use crate::base::BaseModel;
use crate::error::{Error, Result};
use crate::peft::{PairKind, PeftAdapter, UnsupportedTensor};

/// One PEFT pair's contribution to a GGUF target.
#[derive(Debug, Clone)]
pub struct TargetPart {
    /// Index into `PeftAdapter::pairs`.
    pub pair: usize,
    /// First row of this pair's block in the target's B.
    pub row_offset: usize,
    /// Head count for the llama Q/K row permutation, if it applies.
    pub permute_heads: Option<usize>,
    /// Factor baked into this block of B so that llama.cpp's
    /// `alpha / rank` equals PEFT's scale: `scale · rank / alpha`.
    pub b_factor: f64,
    /// PEFT's scale for the pair (for reports).
    pub peft_scale: f64,
}

/// One GGUF LoRA pair to write: `<tensor>.lora_a` and `<tensor>.lora_b`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The base tensor, e.g. `blk.0.attn_q.weight`.
    pub tensor: String,
    pub kind: PairKind,
    /// Base tensor input width (`ne[0]`; vocabulary for embeddings).
    pub d_in: usize,
    /// Base tensor output rows (`ne[1]`; embedding width for embeddings).
    pub d_out: usize,
    /// Total rank: the sum of the parts' ranks.
    pub rank: usize,
    pub parts: Vec<TargetPart>,
}

impl Target {
    /// The GGUF LoRA pair's geometry when written at rank `rank`.
    pub fn pair_shape(&self, rank: usize) -> crate::layout::PairShape {
        crate::layout::PairShape {
            embedding: self.kind == PairKind::Embedding,
            rank: rank as u64,
            d_in: self.d_in as u64,
            d_out: self.d_out as u64,
        }
    }
}

/// What the conversion will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The single `adapter.lora.alpha` written.
    pub alpha: f32,
    pub targets: Vec<Target>,
    /// Tensors left out because `--drop-unsupported` was given.
    pub dropped: Vec<UnsupportedTensor>,
    /// Pairs whose scale had to be baked into `lora_b`.
    pub baked: usize,
}

/// Collects problems grouped by kind, e.g. "30 tensors expect in_features
/// 64, the base has 576".
#[derive(Default)]
struct Problems(BTreeMap<String, Vec<String>>);

impl Problems {
    fn add(&mut self, kind: String, tensor: &str) {
        self.0.entry(kind).or_default().push(tensor.to_string());
    }
    fn into_list(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|(kind, tensors)| match tensors.len() {
                1 => format!("{}: {kind}", tensors[0]),
                n => format!("{n} tensors {kind} (e.g. {})", tensors[0]),
            })
            .collect()
    }
}

/// Validate `adapter` against `base` and plan the conversion.
pub fn plan(adapter: &PeftAdapter, base: &BaseModel, drop_unsupported: bool) -> Result<Plan> {
    let mut dropped = Vec::new();
    if !adapter.unsupported.is_empty() {
        if drop_unsupported {
            dropped.extend(adapter.unsupported.iter().cloned());
        } else {
            return Err(unsupported_error(adapter, &adapter.unsupported));
        }
    }

    let cfg_alpha = adapter.config.lora_alpha;
    let alpha: f32 = if cfg_alpha.is_finite() && cfg_alpha > 0.0 && cfg_alpha <= f32::MAX as f64 {
        cfg_alpha as f32
    } else {
        1.0
    };

    let mut problems = Problems::default();
    let mut by_tensor: BTreeMap<String, Target> = BTreeMap::new();
    let mut new_tokens = Vec::new();

    for (i, pair) in adapter.pairs.iter().enumerate() {
        let Some(res) = base.arch.resolve(&pair.module) else {
            problems.add(
                format!("have no counterpart in a {} model", base.arch.name),
                &pair.module,
            );
            continue;
        };
        let Some(bt) = base.gguf.tensor(&res.tensor) else {
            problems.add("are missing from the base model".into(), &res.tensor);
            continue;
        };
        if bt.ne.len() != 2 {
            problems.add(
                format!("are not matrices in the base (ne {:?})", bt.ne),
                &res.tensor,
            );
            continue;
        }
        let (ne0, ne1) = (bt.ne[0] as usize, bt.ne[1] as usize);
        let is_embd = crate::layout::is_embedding(&res.tensor);
        if (pair.kind == PairKind::Embedding) != is_embd {
            problems.add(
                "mix an embedding LoRA with a linear layer".into(),
                &res.tensor,
            );
            continue;
        }
        let (d_in, d_out) = if is_embd { (ne1, ne0) } else { (ne0, ne1) };
        if pair.d_in() != d_in {
            if is_embd && pair.d_in() > d_in {
                new_tokens.push(UnsupportedTensor {
                    name: pair.a.name.clone(),
                    reason: format!(
                        "embedding LoRA over {} tokens; the base vocabulary has {d_in} (new tokens)",
                        pair.d_in()
                    ),
                });
                continue;
            }
            let what = if is_embd {
                "vocabulary size"
            } else {
                "in_features"
            };
            problems.add(
                format!("expect {what} {}, the base has {d_in}", pair.d_in()),
                &res.tensor,
            );
            continue;
        }
        let (row_offset, rows) = match res.part {
            None => (0, d_out),
            Some(part) => match base.fused_rows(res.layer.unwrap_or(0), part, d_out) {
                Some(x) if x.0 + x.1 <= d_out => x,
                _ => {
                    problems.add(
                        format!("cannot be split into {part:?} rows ({d_out} rows)"),
                        &res.tensor,
                    );
                    continue;
                }
            },
        };
        if pair.d_out() != rows {
            let what = match res.part {
                None => "out_features".to_string(),
                Some(p) => format!("{p:?} rows"),
            };
            problems.add(
                format!("expect {what} {}, the base has {rows}", pair.d_out()),
                &res.tensor,
            );
            continue;
        }
        let permute_heads = match (res.permute, res.layer) {
            (Some(p), Some(layer)) => {
                // The layer is checked before any per-layer table is read: a
                // base may claim fewer layers than its tensors have.
                let heads = match p {
                    Permute::LlamaQ => base.n_head.get(layer),
                    Permute::LlamaK => base.n_head_kv.get(layer),
                }
                .copied()
                .filter(|_| layer < base.n_layer)
                .unwrap_or(0);
                if layer >= base.n_layer {
                    problems.add(
                        format!(
                            "are in layer {layer}, and the base has {} layers",
                            base.n_layer
                        ),
                        &res.tensor,
                    );
                    continue;
                }
                if heads == 0 || rows % (2 * heads) != 0 {
                    problems.add(
                        format!("have {rows} rows, not divisible into {heads} rotary heads"),
                        &res.tensor,
                    );
                    continue;
                }
                Some(heads)
            }
            _ => None,
        };
        let target = by_tensor
            .entry(res.tensor.clone())
            .or_insert_with(|| Target {
                tensor: res.tensor.clone(),
                kind: pair.kind,
                d_in,
                d_out,
                rank: 0,
                parts: Vec::new(),
            });
        let clash = target.parts.iter().any(|p| {
            let other = &adapter.pairs[p.pair];
            let other_part = base.arch.resolve(&other.module).and_then(|r| r.part);
            res.part.is_none() || other_part.is_none() || other_part == res.part
        });
        if clash {
            problems.add(
                "are targeted by more than one module (fused and per-projection LoRA together)"
                    .into(),
                &res.tensor,
            );
            continue;
        }
        target.rank += pair.rank();
        target.parts.push(TargetPart {
            pair: i,
            row_offset,
            permute_heads,
            b_factor: 0.0,
            peft_scale: pair.scale.scale,
        });
    }

    for (module, name, shape) in &adapter.base_layer_copies {
        let base_ne = base
            .arch
            .resolve(module)
            .and_then(|r| base.gguf.tensor(&r.tensor))
            .map(|t| t.ne.iter().rev().map(|d| *d as usize).collect::<Vec<_>>());
        if base_ne.as_deref() != Some(shape.as_slice()) {
            new_tokens.push(UnsupportedTensor {
                name: name.clone(),
                reason: format!(
                    "a saved base weight of shape {shape:?} that differs from the base model's {base_ne:?} (resized vocabulary)"
                ),
            });
        }
    }
    if !new_tokens.is_empty() {
        if drop_unsupported {
            dropped.extend(new_tokens);
        } else {
            return Err(unsupported_error(adapter, &new_tokens));
        }
    }
    let problems = problems.into_list();
    if !problems.is_empty() {
        return Err(Error::Mismatch {
            adapter: adapter.dir.clone(),
            base: base.path().to_path_buf(),
            problems,
        });
    }

    let mut baked = 0;
    let mut targets: Vec<Target> = by_tensor.into_values().collect();
    for t in &mut targets {
        // Fused parts are written in row order so B is block-diagonal in place.
        t.parts.sort_by_key(|p| p.row_offset);
        for p in &mut t.parts {
            p.b_factor = effective_b_factor(p.peft_scale, t.rank, alpha);
            if p.b_factor != 1.0 {
                baked += 1;
            }
        }
    }
    targets.sort_by_key(|t| tensor_order(&t.tensor));
    Ok(Plan {
        alpha,
        targets,
        dropped,
        baked,
    })
}

/// The one place that turns PEFT's scale into what is baked into `lora_b`:
/// llama.cpp applies `alpha / rank` (rank = `lora_b.ne[0]`), so B is
/// multiplied by `scale · rank / alpha`, making the product exactly PEFT's
/// `scale`.
pub fn effective_b_factor(peft_scale: f64, rank: usize, alpha: f32) -> f64 {
    let f = peft_scale * rank as f64 / alpha as f64;
    // Plain LoRA gives exactly 1 up to rounding: keep B bit-identical then.
    if (f - 1.0).abs() < 1e-12 {
        1.0
    } else {
        f
    }
}

/// Sort key: layer number, then name, with non-layer tensors first.
fn tensor_order(name: &str) -> (usize, String) {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(0, |n| n + 1);
    (layer, name.to_string())
}

pub(crate) fn unsupported_error(adapter: &PeftAdapter, tensors: &[UnsupportedTensor]) -> Error {
    let list = tensors
        .iter()
        .take(6)
        .map(|t| format!("{} ({})", t.name, t.reason))
        .collect::<Vec<_>>()
        .join(", ");
    let more = tensors.len().saturating_sub(6);
    Error::Unsupported {
        path: adapter.weights_path.clone(),
        feature: format!(
            "{} tensor(s) outside LoRA pairs that llama.cpp's LoRA format cannot carry: {list}{}",
            tensors.len(),
            if more > 0 { format!(", and {more} more") } else { String::new() }
        ),
        hint: Some(
            "pass --drop-unsupported to convert the LoRA pairs without them (the output then differs from the PEFT model in those tensors)"
                .into(),
        ),
    }
}
