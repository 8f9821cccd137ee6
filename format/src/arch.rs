//! Architecture table: how a Hugging Face module path maps to a GGUF tensor,
//! and which transforms llama.cpp's HF converter applied to the base weights.
//!
//! To add an architecture, add a row to [`ARCHES`]. Each row names the GGUF
//! `general.architecture`, whether `convert_hf_to_gguf.py` permutes the Q/K
//! rows for it, and its module map.

/// Where a PEFT module's update lands in the GGUF model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The whole tensor `blk.N.<name>.weight`.
    Whole(&'static str),
    /// One row block ([`FusedPart`]) of the fused tensor `blk.N.<name>.weight`.
    Part(&'static str, FusedPart),
}

/// The row blocks of a fused tensor, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedPart {
    /// `attn_qkv`: Q rows, then K rows, then V rows.
    Q,
    K,
    V,
    /// `ffn_up` on phi3: gate rows, then up rows.
    Gate,
    Up,
}

/// Which Q/K transform the HF converter applied to the base weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permute {
    /// Rows reordered per head: `reshape(n_head, 2, d/n_head/2, ·).swapaxes(1, 2)`.
    LlamaQ,
    /// The same with `n_head_kv`.
    LlamaK,
}

/// One row of the module map: an HF layer-relative module path and its slot.
pub type ModuleRow = (&'static str, Slot, Option<Permute>);

/// An architecture loraguard converts for.
#[derive(Debug)]
pub struct ArchSpec {
    /// GGUF `general.architecture`.
    pub name: &'static str,
    /// Module paths relative to a decoder layer, e.g. `self_attn.q_proj`.
    pub layer_modules: &'static [ModuleRow],
}

const LLAMA_LIKE: &[ModuleRow] = &[
    ("self_attn.q_proj", Slot::Whole("attn_q"), None),
    ("self_attn.k_proj", Slot::Whole("attn_k"), None),
    ("self_attn.v_proj", Slot::Whole("attn_v"), None),
    ("self_attn.o_proj", Slot::Whole("attn_output"), None),
    ("mlp.gate_proj", Slot::Whole("ffn_gate"), None),
    ("mlp.up_proj", Slot::Whole("ffn_up"), None),
    ("mlp.down_proj", Slot::Whole("ffn_down"), None),
];

const LLAMA: &[ModuleRow] = &[
    (
        "self_attn.q_proj",
        Slot::Whole("attn_q"),
        Some(Permute::LlamaQ),
    ),
    (
        "self_attn.k_proj",
        Slot::Whole("attn_k"),
        Some(Permute::LlamaK),
    ),
    ("self_attn.v_proj", Slot::Whole("attn_v"), None),
    ("self_attn.o_proj", Slot::Whole("attn_output"), None),
    ("mlp.gate_proj", Slot::Whole("ffn_gate"), None),
    ("mlp.up_proj", Slot::Whole("ffn_up"), None),
    ("mlp.down_proj", Slot::Whole("ffn_down"), None),
];

const PHI3: &[ModuleRow] = &[
    ("self_attn.qkv_proj", Slot::Whole("attn_qkv"), None),
    (
        "self_attn.q_proj",
        Slot::Part("attn_qkv", FusedPart::Q),
        None,
    ),
    (
        "self_attn.k_proj",
        Slot::Part("attn_qkv", FusedPart::K),
        None,
    ),
    (
        "self_attn.v_proj",
        Slot::Part("attn_qkv", FusedPart::V),
        None,
    ),
    ("self_attn.o_proj", Slot::Whole("attn_output"), None),
    ("mlp.gate_up_proj", Slot::Whole("ffn_up"), None),
    ("mlp.gate_proj", Slot::Part("ffn_up", FusedPart::Gate), None),
    ("mlp.up_proj", Slot::Part("ffn_up", FusedPart::Up), None),
    ("mlp.down_proj", Slot::Whole("ffn_down"), None),
];

/// Every supported architecture. Mistral and SmolLM convert to `llama`.
pub const ARCHES: &[ArchSpec] = &[
    ArchSpec {
        name: "llama",
        layer_modules: LLAMA,
    },
    ArchSpec {
        name: "qwen2",
        layer_modules: LLAMA_LIKE,
    },
    ArchSpec {
        name: "qwen3",
        layer_modules: LLAMA_LIKE,
    },
    ArchSpec {
        name: "gemma",
        layer_modules: LLAMA_LIKE,
    },
    ArchSpec {
        name: "gemma2",
        layer_modules: LLAMA_LIKE,
    },
    ArchSpec {
        name: "gemma3",
        layer_modules: LLAMA_LIKE,
    },
    ArchSpec {
        name: "phi3",
        layer_modules: PHI3,
    },
];

/// Prefixes that lead to the decoder layers in HF models (text-only and
/// the language half of multimodal checkpoints).
const LAYER_PREFIXES: &[&str] = &[
    "model.layers.",
    "model.language_model.layers.",
    "language_model.model.layers.",
];
const EMBED_MODULES: &[&str] = &[
    "model.embed_tokens",
    "model.language_model.embed_tokens",
    "language_model.model.embed_tokens",
];
const OUTPUT_MODULES: &[&str] = &["lm_head", "language_model.lm_head"];

/// A module resolved to its place in the GGUF model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The GGUF tensor, e.g. `blk.3.attn_q.weight`.
    pub tensor: String,
    /// The layer, for per-layer hyperparameters.
    pub layer: Option<usize>,
    pub part: Option<FusedPart>,
    pub permute: Option<Permute>,
}

impl ArchSpec {
    /// Look up the spec for a GGUF architecture name.
    pub fn find(name: &str) -> Option<&'static ArchSpec> {
        ARCHES.iter().find(|a| a.name == name)
    }

    /// Names of all supported architectures.
    pub fn supported() -> String {
        ARCHES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
    }

    /// Map an HF module path to its GGUF tensor, or None if this
    /// architecture has no such module.
    pub fn resolve(&self, module: &str) -> Option<Resolved> {
        if EMBED_MODULES.contains(&module) {
            return Some(Resolved {
                tensor: "token_embd.weight".into(),
                layer: None,
                part: None,
                permute: None,
            });
        }
        if OUTPUT_MODULES.contains(&module) {
            return Some(Resolved {
                tensor: "output.weight".into(),
                layer: None,
                part: None,
                permute: None,
            });
        }
        let rest = LAYER_PREFIXES.iter().find_map(|p| module.strip_prefix(p))?;
        let (layer, inner) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || layer.len() > 6 {
            return None;
        }
        let layer: usize = layer.parse().ok()?;
        let (_, slot, permute) = self.layer_modules.iter().find(|row| row.0 == inner)?;
        let (name, part) = match *slot {
            Slot::Whole(n) => (n, None),
            Slot::Part(n, p) => (n, Some(p)),
        };
        Some(Resolved {
            tensor: format!("blk.{layer}.{name}.weight"),
            layer: Some(layer),
            part,
            permute: *permute,
        })
    }
}

/// Apply the llama Q/K row permutation to the rows of a row-major
/// `rows × cols` matrix, as `convert_hf_to_gguf.py`'s `permute` does to the
/// base weight: `reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`.
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for dst in 0..rows {
        let src = permuted_source_row(dst, rows, n_head);
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

/// The input row that lands at row `dst` under [`permute_rows`]: within each
/// head of `hd = rows / n_head` rows, row `2j + i` takes row `i·hd/2 + j`.
pub fn permuted_source_row(dst: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head;
    let (h, w) = (dst / hd, dst % hd);
    h * hd + (w % 2) * (hd / 2) + w / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_maps_its_attention_and_mlp() {
        for arch in ARCHES {
            let q = arch.resolve("model.layers.3.self_attn.q_proj").unwrap();
            let down = arch.resolve("model.layers.3.mlp.down_proj").unwrap();
            assert_eq!(down.tensor, "blk.3.ffn_down.weight", "{}", arch.name);
            assert_eq!(
                arch.resolve("model.embed_tokens").unwrap().tensor,
                "token_embd.weight"
            );
            assert_eq!(arch.resolve("lm_head").unwrap().tensor, "output.weight");
            assert!(arch
                .resolve("model.layers.3.self_attn.rotary_emb")
                .is_none());
            assert!(arch
                .resolve("vision_tower.encoder.layers.0.self_attn.q_proj")
                .is_none());
            match arch.name {
                "llama" => {
                    assert_eq!(q.tensor, "blk.3.attn_q.weight");
                    assert_eq!(q.permute, Some(Permute::LlamaQ));
                    let k = arch.resolve("model.layers.3.self_attn.k_proj").unwrap();
                    assert_eq!(k.permute, Some(Permute::LlamaK));
                }
                "phi3" => {
                    assert_eq!(q.tensor, "blk.3.attn_qkv.weight");
                    assert_eq!(q.part, Some(FusedPart::Q));
                    let up = arch.resolve("model.layers.3.mlp.up_proj").unwrap();
                    assert_eq!(
                        (up.tensor.as_str(), up.part),
                        ("blk.3.ffn_up.weight", Some(FusedPart::Up))
                    );
                    let fused = arch.resolve("model.layers.3.self_attn.qkv_proj").unwrap();
                    assert_eq!(
                        (fused.tensor.as_str(), fused.part),
                        ("blk.3.attn_qkv.weight", None)
                    );
                }
                _ => {
                    assert_eq!(q.tensor, "blk.3.attn_q.weight");
                    assert_eq!(q.permute, None);
                    assert_eq!(
                        arch.resolve("model.layers.0.self_attn.o_proj")
                            .unwrap()
                            .tensor,
                        "blk.0.attn_output.weight"
                    );
                }
            }
        }
        let g3 = ArchSpec::find("gemma3").unwrap();
        assert_eq!(
            g3.resolve("language_model.model.layers.1.mlp.gate_proj")
                .unwrap()
                .tensor,
            "blk.1.ffn_gate.weight"
        );
    }

    #[test]
    fn permutation_matches_the_hf_converter() {
        // 2 heads of 4 rows: per head [0,1,2,3] -> [0,2,1,3]
        let rows = 8;
        let data: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let p = permute_rows(&data, rows, 1, 2);
        assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
