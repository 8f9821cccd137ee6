//! What `merge` will change, checked before anything is written: each
//! adapter against the base (architecture, every module's tensor and shape).

use std::collections::BTreeMap;

use super::shards::Shards;
use crate::adapter::AdapterSource;
use crate::base::BaseModel;
use crate::error::{Error, Result};

/// The rows×cols of `module`'s update in a GGUF adapter, from its header.
fn update_shape(src: &AdapterSource, module: &str) -> Option<(u64, u64)> {
    let [ne0, ne1] = src.pair_shape(module)?.base_ne();
    Some((ne1, ne0))
}

/// Check every adapter against the base before anything is written; return
/// base tensor name → the adapters (indices) that touch it.
pub(super) fn plan(
    shards: &Shards,
    base: &BaseModel,
    sources: &[AdapterSource],
) -> Result<BTreeMap<String, Vec<usize>>> {
    let arch = base.arch.name;
    let mut targets: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, src) in sources.iter().enumerate() {
        if !src.is_gguf() {
            return Err(Error::Internal("adapters are opened in GGUF layout".into()));
        }
        if src.architecture() != Some(arch) {
            return Err(Error::Usage(format!(
                "{} is a LoRA for {:?}, the base {} is {arch:?}",
                src.path().display(),
                src.architecture().unwrap_or("an unknown architecture"),
                base.path().display()
            )));
        }
        let mut problems = Vec::new();
        for m in src.modules() {
            match (shards.tensor(&m), update_shape(src, &m)) {
                (None, _) => problems.push(format!("{m}: the base has no such tensor")),
                (Some(_), None) => problems.push(format!("{m}: lora_a/lora_b missing or not 2-D")),
                (Some((_, t)), Some((rows, cols))) => {
                    let base_rows: u64 = t.ne[1..].iter().product();
                    if t.ne.len() > 2 && t.ne[2..].iter().any(|d| *d != 1) {
                        problems.push(format!("{m}: {}-D base tensors are not merged", t.ne.len()));
                    } else if (rows, cols) != (base_rows, t.ne[0]) {
                        problems.push(format!(
                            "{m}: the update is {rows}×{cols}, the base tensor {base_rows}×{}",
                            t.ne[0]
                        ));
                    } else {
                        targets.entry(m).or_default().push(i);
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Mismatch {
                adapter: src.path(),
                base: base.path().to_path_buf(),
                problems,
            });
        }
    }
    Ok(targets)
}
