//! `adapter_config.json`: the PEFT LoRA configuration and its scaling rules.
//!
//! Unknown fields are accepted (PEFT adds fields often); unknown *active*
//! features are rejected, because silently ignoring them would change ΔW.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Cap on the size of `adapter_config.json` we are willing to parse.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// One `rank_pattern` / `alpha_pattern` entry, in file order.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The key as written in the config.
    pub key: String,
    /// `(.*\.)?KEY$`, anchored at the start: PEFT's suffix-or-regex match.
    regex: Regex,
    pub value: f64,
}

/// The parts of a PEFT LoRA config that decide ΔW.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub path: PathBuf,
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub fan_in_fan_out: bool,
    pub rank_pattern: Vec<Pattern>,
    pub alpha_pattern: Vec<Pattern>,
    pub use_dora: bool,
    pub bias: String,
    pub modules_to_save: Vec<String>,
    pub base_model_name_or_path: Option<String>,
    pub target_modules: Vec<String>,
    /// aLoRA invocation tokens (`alora_invocation_tokens`), kept for the GGUF.
    pub alora_invocation_tokens: Option<Vec<u32>>,
}

/// The rank and scale PEFT gives one module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModuleScale {
    pub rank: usize,
    pub alpha: f64,
    /// `alpha / rank`, or `alpha / sqrt(rank)` with rsLoRA.
    pub scale: f64,
}

impl LoraConfig {
    /// Read and validate `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::capped::read_capped(path, MAX_CONFIG_BYTES, "adapter_config.json")?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::malformed(path, "adapter_config.json", format!("not UTF-8: {e}"))
        })?;
        Self::from_json(path, &text)
    }

    /// Parse a config from its JSON text; `path` is used in errors only.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let bad = |reason: String| Error::malformed(path, "adapter_config.json", reason);
        let root: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let obj = root
            .as_object()
            .ok_or_else(|| bad("top level is not a JSON object".into()))?;

        let peft_type = obj
            .get("peft_type")
            .and_then(Value::as_str)
            .unwrap_or("LORA");
        if !peft_type.eq_ignore_ascii_case("LORA") {
            return Err(Error::Unsupported {
                path: path.into(),
                feature: format!(
                    "peft_type {peft_type:?} (only LORA adapters convert to GGUF LoRA)"
                ),
                hint: None,
            });
        }

        let r = get_uint(obj, "r").map_err(bad)?.unwrap_or(8);
        if r == 0 {
            return Err(bad("r is 0".into()));
        }
        let lora_alpha = get_num(obj, "lora_alpha").map_err(bad)?.unwrap_or(8.0);
        let cfg = LoraConfig {
            path: path.into(),
            r,
            lora_alpha,
            use_rslora: get_bool(obj, "use_rslora").map_err(bad)?,
            fan_in_fan_out: get_bool(obj, "fan_in_fan_out").map_err(bad)?,
            rank_pattern: patterns(obj, "rank_pattern").map_err(bad)?,
            alpha_pattern: patterns(obj, "alpha_pattern").map_err(bad)?,
            use_dora: get_bool(obj, "use_dora").map_err(bad)?,
            bias: obj
                .get("bias")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_string(),
            modules_to_save: string_list(obj.get("modules_to_save")),
            base_model_name_or_path: obj
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            target_modules: string_list(obj.get("target_modules")),
            alora_invocation_tokens: match obj.get("alora_invocation_tokens") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
                        .collect::<Option<Vec<u32>>>()
                        .ok_or_else(|| {
                            bad("alora_invocation_tokens holds a non-token value".into())
                        })?,
                ),
                Some(_) => return Err(bad("alora_invocation_tokens is not an array".into())),
            },
        };
        for p in cfg.rank_pattern.iter() {
            if p.value < 1.0 || p.value.fract() != 0.0 {
                return Err(bad(format!(
                    "rank_pattern[{:?}] = {} is not a positive integer",
                    p.key, p.value
                )));
            }
        }
        cfg.reject_active_unsupported(obj)?;
        Ok(cfg)
    }

    /// Features that change the forward pass in ways a GGUF LoRA cannot carry.
    fn reject_active_unsupported(&self, obj: &Map<String, Value>) -> Result<()> {
        let unsupported = |feature: &str, hint: Option<&str>| Error::Unsupported {
            path: self.path.clone(),
            feature: feature.to_string(),
            hint: hint.map(String::from),
        };
        if self.use_dora {
            return Err(unsupported(
                "DoRA (use_dora = true): its magnitude vector rescales whole weight columns and is not a low-rank update",
                Some("merge the DoRA adapter into the base model in Python and convert the merged model instead"),
            ));
        }
        if get_bool(obj, "lora_bias").unwrap_or(false) {
            return Err(unsupported("lora_bias = true (a bias on lora_B)", None));
        }
        if let Some(v) = obj.get("layer_replication") {
            if !v.is_null() {
                return Err(unsupported("layer_replication", None));
            }
        }
        if let Some(Value::Array(a)) = obj.get("target_parameters") {
            if !a.is_empty() {
                return Err(unsupported(
                    "target_parameters (LoRA on raw parameters, e.g. MoE experts)",
                    None,
                ));
            }
        }
        for key in ["use_qalora", "use_bdlora"] {
            if get_bool(obj, key).unwrap_or(false) {
                return Err(unsupported(key, None));
            }
        }
        Ok(())
    }

    /// The rank, alpha and scale PEFT uses for the module `name`
    /// (e.g. `model.layers.0.self_attn.q_proj`), as PEFT's `get_pattern_key` matches it.
    pub fn module_scale(&self, name: &str) -> ModuleScale {
        let rank = match_pattern(&self.rank_pattern, name).map_or(self.r, |v| v as usize);
        let alpha = match_pattern(&self.alpha_pattern, name).unwrap_or(self.lora_alpha);
        let denom = if self.use_rslora {
            (rank as f64).sqrt()
        } else {
            rank as f64
        };
        ModuleScale {
            rank,
            alpha,
            scale: alpha / denom,
        }
    }
}

/// The value of the first pattern (in file order) that matches `name`.
fn match_pattern(patterns: &[Pattern], name: &str) -> Option<f64> {
    patterns
        .iter()
        .find(|p| p.key == name || p.regex.is_match(name))
        .map(|p| p.value)
}

fn patterns(obj: &Map<String, Value>, key: &str) -> std::result::Result<Vec<Pattern>, String> {
    let Some(v) = obj.get(key) else {
        return Ok(Vec::new());
    };
    let Some(map) = v.as_object() else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err(format!("{key} is not an object"))
        };
    };
    map.iter()
        .map(|(k, v)| {
            let value = v
                .as_f64()
                .ok_or_else(|| format!("{key}[{k:?}] is not a number"))?;
            let regex = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                .map_err(|e| format!("{key}[{k:?}] is not a valid regular expression: {e}"))?;
            Ok(Pattern {
                key: k.clone(),
                regex,
                value,
            })
        })
        .collect()
}

fn get_bool(obj: &Map<String, Value>, key: &str) -> std::result::Result<bool, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key} is {other}, expected true or false")),
    }
}

fn get_num(obj: &Map<String, Value>, key: &str) -> std::result::Result<Option<f64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| format!("{key} is {v}, expected a finite number")),
    }
}

fn get_uint(obj: &Map<String, Value>, key: &str) -> std::result::Result<Option<usize>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| format!("{key} is {v}, expected a non-negative integer")),
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<LoraConfig> {
        LoraConfig::from_json(Path::new("adapter_config.json"), json)
    }

    #[test]
    fn plain_scale_is_alpha_over_r() {
        let c = cfg(r#"{"r": 8, "lora_alpha": 16}"#).unwrap();
        let s = c.module_scale("model.layers.0.self_attn.q_proj");
        assert_eq!((s.rank, s.alpha, s.scale), (8, 16.0, 2.0));
    }

    #[test]
    fn rslora_scale_is_alpha_over_sqrt_r() {
        let c = cfg(r#"{"r": 16, "lora_alpha": 8, "use_rslora": true}"#).unwrap();
        assert_eq!(c.module_scale("x.q_proj").scale, 2.0);
    }

    #[test]
    fn patterns_match_as_suffix_or_regex_first_key_wins() {
        let c = cfg(r#"{"r": 8, "lora_alpha": 16,
                "rank_pattern": {"layers.1.self_attn.q_proj": 4, "v_proj": 2},
                "alpha_pattern": {"layers\\.[01]\\.self_attn\\.k_proj": 3, "k_proj": 5}}"#)
        .unwrap();
        assert_eq!(c.module_scale("model.layers.1.self_attn.q_proj").rank, 4);
        assert_eq!(c.module_scale("model.layers.11.self_attn.q_proj").rank, 8);
        assert_eq!(c.module_scale("model.layers.3.self_attn.v_proj").rank, 2);
        // a suffix must start at a dot boundary
        assert_eq!(c.module_scale("model.layers.3.self_attn.xv_proj").rank, 8);
        assert_eq!(c.module_scale("model.layers.0.self_attn.k_proj").alpha, 3.0);
        assert_eq!(c.module_scale("model.layers.2.self_attn.k_proj").alpha, 5.0);
    }

    #[test]
    fn dora_is_refused() {
        assert!(matches!(
            cfg(r#"{"r": 8, "use_dora": true}"#),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn other_peft_types_are_refused() {
        assert!(matches!(
            cfg(r#"{"peft_type": "IA3"}"#),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for text in [
            "",
            "{",
            "[]",
            r#"{"r": -1}"#,
            r#"{"r": 0}"#,
            r#"{"rank_pattern": {"(": 2}}"#,
            r#"{"rank_pattern": {"a": 1.5}}"#,
        ] {
            assert!(matches!(cfg(text), Err(Error::Malformed { .. })), "{text}");
        }
    }

    #[test]
    fn unknown_fields_are_accepted() {
        assert!(cfg(r#"{"r": 4, "some_future_field": {"x": 1}, "lora_alpha": 8}"#).is_ok());
    }
}
