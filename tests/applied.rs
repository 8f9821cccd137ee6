//! `inspect --apply-check` (issue 21, item 3): the no-op detector. A real
//! adapter passes; the same adapter at scale 0 and an adapter whose B is
//! zero (PEFT's initialisation, never trained) are caught with exit 3.

use std::process::Command;

use loraguard::check::applied::{apply_check, ApplyOptions};
use loraguard::convert::OutType;
use loraguard::gguf::GgufFile;

use crate::common::*;

fn inspect_apply(adapter: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .arg("inspect")
        .arg(adapter)
        .arg("--base")
        .arg(smollm2_model())
        .args(["--apply-check", "--json", "-"])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let json = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), json, err)
}

#[test]
fn a_trained_adapter_applies_and_at_scale_zero_is_caught() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (lora, _) = convert_to(
        &root().join("fixtures/smollm2/task-lora"),
        &smollm2_model(),
        dir.path(),
        OutType::F16,
    );
    let (code, json, err) = inspect_apply(&lora, &[]);
    assert_eq!(code, 0, "{err}");
    let a = &json["apply_check"];
    assert_eq!(a["applied"], true, "{a}");
    assert!(a["max_logit_change"].as_f64().unwrap() > 1.0, "{a}");
    assert!(a["update_norm"].as_f64().unwrap() > 0.1, "{a}");

    let (code, json, err) = inspect_apply(&lora, &["--scale", "0"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("gate failed") && err.contains("hint:"),
        "{err}"
    );
    let a = &json["apply_check"];
    assert_eq!(a["applied"], false, "{a}");
    assert_eq!(a["max_logit_change"].as_f64(), Some(0.0), "{a}");
    assert!(a["reason"].as_str().unwrap().contains("zero"), "{a}");
}

/// The tiny `plain` adapter with every `lora_b` zeroed: what an untrained
/// PEFT adapter converts to.
#[test]
fn an_untrained_adapter_is_caught_as_a_no_op() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let lora = tiny_plain_f32(dir.path());
    let g = GgufFile::open(&lora).unwrap();
    let mut bytes = std::fs::read(&lora).unwrap();
    for t in g.tensors.iter().filter(|t| t.name.ends_with(".lora_b")) {
        bytes[t.offset as usize..(t.offset + t.size) as usize].fill(0);
    }
    let zeroed = dir.path().join("untrained.gguf");
    std::fs::write(&zeroed, bytes).unwrap();

    let opts = ApplyOptions::default();
    let trained = apply_check(&lora, &tiny_base(), &opts).unwrap();
    assert!(trained.applied, "{trained}");
    let untrained = apply_check(&zeroed, &tiny_base(), &opts).unwrap();
    assert!(!untrained.applied, "{untrained}");
    assert_eq!(untrained.update_norm, 0.0);
    assert_eq!(untrained.max_logit_change, 0.0);
}

#[test]
fn apply_check_of_a_peft_directory_is_bad_input_with_a_hint() {
    let (code, _, err) = inspect_apply(&root().join("fixtures/smollm2/task-lora"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hint: convert it first"), "{err}");
}
