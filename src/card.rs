//! `loraguard card`: a Hugging Face model card (`README.md` with YAML front
//! matter) for a converted adapter, a merged GGUF or a quantized model.
//!
//! Deterministic: the same files and reports give the same bytes (files are
//! named by file name, never by absolute path; no dates). What the card
//! says comes from the files themselves: their sizes and SHA-256, the
//! `general.*` metadata and loraguard's `loraguard.*` provenance keys, and,
//! with `check` reports, the measured refusal rates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::check::report::{cell, CheckReport};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::provenance;

/// What `card` is given besides the file.
#[derive(Debug, Clone, Default)]
pub struct CardOptions {
    /// The base model GGUF (required for an adapter; recorded for a merge).
    pub base: Option<PathBuf>,
    /// The Hub id for `base_model`, when the files do not name one.
    pub base_model: Option<String>,
    /// `check --json` reports; the first is the baseline the others are
    /// diffed against.
    pub reports: Vec<PathBuf>,
}

/// A written card and what it found (`card --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Card {
    #[serde(skip)]
    pub text: String,
    pub file: String,
    /// `adapter`, `merge` or `quantized`.
    pub relation: &'static str,
    /// The Hub id used for `base_model`, if any.
    pub base_model: Option<String>,
    pub bytes: u64,
    pub sha256: String,
    /// Check reports shown.
    pub reports: usize,
}

/// How the file relates to its base (`base_model_relation`).
fn relation(g: &GgufFile) -> &'static str {
    if g.is_adapter() {
        "adapter"
    } else if g.metadata.contains_key("loraguard.merge.method") {
        "merge"
    } else {
        "quantized"
    }
}

fn name_of(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn sha256_of(p: &Path) -> Result<(u64, String)> {
    let map = crate::mmap::map_file(p)?;
    Ok((map.len() as u64, crate::hash::sha256_hex(&map)))
}

/// A Hub repo id from a `https://huggingface.co/ORG/NAME` URL or an
/// `ORG/NAME` string.
fn repo_id(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/');
    let s = s
        .strip_prefix("https://huggingface.co/")
        .or_else(|| s.strip_prefix("http://huggingface.co/"))
        .unwrap_or(s);
    let parts: Vec<&str> = s.split('/').collect();
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (parts.len() == 2 && parts.iter().all(|p| ok(p))).then(|| s.to_string())
}

fn base_model_id(file: &GgufFile, base: Option<&GgufFile>, given: Option<&str>) -> Option<String> {
    if let Some(g) = given {
        return Some(g.to_string());
    }
    let keys = [
        "general.base_model.0.repo_url",
        "general.base_model.0.name",
        "general.source.repo_url",
        "general.source.huggingface.repository",
    ];
    let from = |g: &GgufFile| keys.iter().find_map(|k| g.get_str(k).and_then(repo_id));
    // An adapter's own record (PEFT's base_model_name_or_path) names what
    // it was trained on; a merged model's base is its own source.
    from(file).or_else(|| base.and_then(from))
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Write the card for `file`.
pub fn card(file: &Path, opts: &CardOptions) -> Result<Card> {
    let g = GgufFile::open(file)?;
    let rel = relation(&g);
    if rel == "adapter" && opts.base.is_none() {
        return Err(Error::Usage(format!(
            "{} is a LoRA adapter: name its base model with --base BASE.gguf",
            file.display()
        )));
    }
    let base = opts.base.as_deref().map(GgufFile::open).transpose()?;
    if let (Some(b), "adapter") = (&base, rel) {
        let fit = crate::gguf::fit::gguf_fit_to(&g, b);
        if !fit.fits {
            return Err(Error::Mismatch {
                adapter: file.to_path_buf(),
                base: b.path.clone(),
                problems: fit.problems,
            });
        }
    }
    let reports = opts
        .reports
        .iter()
        .map(|p| CheckReport::read(p))
        .collect::<Result<Vec<_>>>()?;
    let license = g
        .get_str("general.license")
        .or_else(|| base.as_ref().and_then(|b| b.get_str("general.license")));
    let base_id = base_model_id(&g, base.as_ref(), opts.base_model.as_deref());
    let arch = g
        .architecture()
        .or_else(|| base.as_ref().and_then(|b| b.architecture()));

    let mut s = String::from("---\n");
    if let Some(id) = &base_id {
        let _ = writeln!(s, "base_model: {}", yaml_str(id));
        let _ = writeln!(s, "base_model_relation: {rel}");
    }
    if let Some(l) = license {
        let _ = writeln!(s, "license: {}", yaml_str(l));
    }
    s.push_str("tags:\n- gguf\n- llama.cpp\n");
    if rel != "quantized" {
        s.push_str("- lora\n");
    }
    s.push_str("- loraguard\n");
    if let Some(a) = arch {
        let _ = writeln!(s, "- {}", yaml_str(a));
    }
    s.push_str("---\n\n");

    let title = g
        .get_str("general.name")
        .map_or_else(|| name_of(file), String::from);
    let _ = writeln!(s, "# {title}\n");
    let what = match rel {
        "adapter" => "A LoRA adapter in GGUF, for llama.cpp's `--lora`",
        "merge" => "A GGUF model with LoRA adapters merged into its weights",
        _ => "A GGUF model",
    };
    let _ = write!(s, "{what}");
    match (&base_id, &base) {
        (Some(id), _) => {
            let _ = write!(s, ", for [{id}](https://huggingface.co/{id})");
        }
        (None, Some(b)) => {
            let _ = write!(s, ", for the base model `{}`", name_of(&b.path));
        }
        (None, None) => {}
    }
    s.push_str(". Made with [loraguard](https://github.com/loraguard/loraguard).\n");
    if base_id.is_none() && rel != "quantized" {
        s.push_str(
            "\nThe files do not name the base model's Hub id: pass `--base-model ORG/NAME` \
             to set `base_model`.\n",
        );
    }

    s.push_str("\n## Files\n\n| file | size (bytes) | sha256 |\n|---|---:|---|\n");
    let (size, sha) = sha256_of(file)?;
    let _ = writeln!(s, "| `{}` | {size} | `{sha}` |", name_of(file));
    let (bytes, sha256) = (size, sha);
    if let Some(b) = &opts.base {
        let (size, sha) = sha256_of(b)?;
        let _ = writeln!(
            s,
            "| `{}` (base, not in this repo) | {size} | `{sha}` |",
            name_of(b)
        );
    }

    let command = g.get_str(provenance::COMMAND_KEY);
    let provenance: Vec<(&String, &MetaValue)> = g
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("loraguard.") || k.starts_with("adapter."))
        .filter(|(k, _)| k.as_str() != provenance::COMMAND_KEY)
        .collect();
    if !provenance.is_empty() || command.is_some() {
        s.push_str("\n## How it was made\n\n");
        if let Some(c) = command {
            s.push_str("The command that wrote it:\n\n```sh\n");
            let _ = writeln!(s, "{c}");
            s.push_str("```\n\n");
        }
        if let Some(v) = g.get_str(provenance::VERSION_KEY) {
            let _ = writeln!(s, "loraguard {v}, as recorded in the file's metadata:\n");
        }
        s.push_str("| key | value |\n|---|---|\n");
        for (k, v) in provenance {
            let _ = writeln!(s, "| `{k}` | {} |", cell(&v.to_string(), 200));
        }
    }

    s.push_str("\n## Run it with llama.cpp\n\n```sh\n");
    let me = name_of(file);
    match (&opts.base, rel) {
        (Some(b), "adapter") => {
            let b = name_of(b);
            let _ = writeln!(s, "llama-cli -m {b} --lora {me} -p \"Hello\"");
            let _ = writeln!(s, "llama-server -m {b} --lora {me}");
            let _ = writeln!(s, "# at another strength: --lora-scaled {me} 0.5");
        }
        _ => {
            let _ = writeln!(s, "llama-cli -m {me} -p \"Hello\"");
            let _ = writeln!(s, "llama-server -m {me}");
        }
    }
    s.push_str("```\n");

    if !reports.is_empty() {
        s.push_str("\n## Refusals\n\nMeasured with `loraguard check` through llama.cpp");
        let _ = writeln!(
            s,
            " (judge `{}`, greedy, {} new tokens).",
            reports[0].settings.judge, reports[0].settings.max_tokens
        );
        for (p, r) in opts.reports.iter().zip(&reports) {
            let adapters: Vec<String> = r
                .adapters
                .iter()
                .map(|a| format!("`{}` at {}", name_of(Path::new(&a.path)), a.scale))
                .collect();
            let _ = writeln!(
                s,
                "\n### `{}`: `{}`{}\n",
                name_of(p),
                name_of(Path::new(&r.model)),
                if adapters.is_empty() {
                    String::new()
                } else {
                    format!(" with {}", adapters.join(", "))
                }
            );
            if r.settings.judge != reports[0].settings.judge {
                let _ = writeln!(s, "Judge `{}`.", r.settings.judge);
            }
            s.push_str(r.rates_markdown().trim_start());
        }
        for (p, r) in opts.reports.iter().zip(&reports).skip(1) {
            let (a, b) = (name_of(&opts.reports[0]), name_of(p));
            let d = crate::check::diff::diff(&a, &reports[0], &b, r)?;
            let _ = writeln!(
                s,
                "\n### `{b}` against `{a}`\n\n{} shared prompts, {} refusal verdicts flipped \
                 (A: `{a}`, B: `{b}`).\n",
                d.n_common,
                d.flips.len(),
            );
            s.push_str(&d.label_table_markdown());
        }
    }
    Ok(Card {
        text: s,
        file: file.display().to_string(),
        relation: rel,
        base_model: base_id,
        bytes,
        sha256,
        reports: reports.len(),
    })
}
