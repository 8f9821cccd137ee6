//! Whether a GGUF LoRA fits its base model, checked before llama.cpp sees it.

use serde::Serialize;

use super::GgufFile;

/// Whether an adapter fits a base model.
#[derive(Debug, Clone, Serialize)]
pub struct Fit {
    pub base: String,
    pub fits: bool,
    pub problems: Vec<String>,
}

/// The checks llama.cpp's adapter loader makes on a GGUF LoRA against its
/// base model, with reasons: every `*.lora_a` has its `*.lora_b`, each
/// names a base tensor, and the shapes fit in the GGUF-LoRA layout
/// (`token_embd` transposed).
pub fn gguf_fit_to(adapter: &GgufFile, base: &GgufFile) -> Fit {
    let mut problems = Vec::new();
    if adapter.architecture() != base.architecture() {
        problems.push(format!(
            "architecture {:?} differs from the base's {:?}",
            adapter.architecture(),
            base.architecture()
        ));
    }
    for t in &adapter.tensors {
        let (stem, is_a) = match (
            t.name.strip_suffix(".lora_a"),
            t.name.strip_suffix(".lora_b"),
        ) {
            (Some(s), _) => (s, true),
            (_, Some(s)) => (s, false),
            _ if t.name.ends_with("_norm.weight") => continue,
            _ => {
                problems.push(format!("{}: unexpected tensor suffix", t.name));
                continue;
            }
        };
        let other = adapter.tensor(&format!(
            "{stem}.{}",
            if is_a { "lora_b" } else { "lora_a" }
        ));
        if other.is_none() {
            problems.push(format!(
                "{stem}: missing its {}",
                if is_a { "lora_b" } else { "lora_a" }
            ));
            continue;
        }
        if !is_a {
            continue;
        }
        let (a, b) = (t, other.expect("checked above"));
        let Some(w) = base.tensor(stem) else {
            problems.push(format!("{stem}: not in the base model"));
            continue;
        };
        let ok = w.ne.len() == 2
            && crate::layout::PairShape::read(stem, &a.ne, &b.ne)
                .is_some_and(|p| p.base_ne()[..] == w.ne[..]);
        if !ok {
            problems.push(format!(
                "{stem}: lora_a {:?} / lora_b {:?} do not fit base {:?}",
                a.ne, b.ne, w.ne
            ));
        }
    }
    Fit {
        base: base.path.display().to_string(),
        fits: problems.is_empty(),
        problems,
    }
}
