//! `loraguard card` (issue 21, item 1): Hugging Face model cards, pinned by
//! snapshots (`LORAGUARD_UPDATE_SNAPSHOTS=1` rewrites them) for a converted
//! adapter with refusal reports and for a merged model.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn loraguard(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&std::ffi::OsStr]) {
    let o = loraguard(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Compare `text` with `tests/snapshots/card/NAME`.
fn snapshot(name: &str, text: &str) {
    let path = root().join("tests/snapshots/card").join(name);
    if std::env::var_os("LORAGUARD_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == text,
        "card {name} changed; if on purpose, rerun with LORAGUARD_UPDATE_SNAPSHOTS=1:\n{text}"
    );
}

fn card(file: &Path, extra: &[&std::ffi::OsStr], out: &Path) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec!["card".as_ref(), file.as_os_str()];
    args.extend_from_slice(extra);
    args.extend(["-o".as_ref(), out.as_os_str()]);
    ok(&args);
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn card_of_an_adapter_with_refusal_reports_matches_its_snapshot() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let lora = tiny_plain_f32(dir.path());
    let prompts = root().join("fixtures/prompts/smoke.jsonl");
    let base = tiny_base();
    let report = |name: &str, with: bool| {
        let json = dir.path().join(name);
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "check".as_ref(),
            "--base".as_ref(),
            base.as_os_str(),
            "--prompts".as_ref(),
            prompts.as_os_str(),
            "--raw".as_ref(),
            "--max-tokens".as_ref(),
            "8".as_ref(),
            "--json".as_ref(),
            json.as_os_str(),
        ];
        if with {
            args.extend(["--lora".as_ref(), lora.as_os_str()]);
        }
        ok(&args);
        json
    };
    let (before, after) = (report("base.json", false), report("patched.json", true));
    let args: [&std::ffi::OsStr; 8] = [
        "--base".as_ref(),
        base.as_os_str(),
        "--base-model".as_ref(),
        "loraguard/tiny-llama".as_ref(),
        "--report".as_ref(),
        before.as_os_str(),
        "--report".as_ref(),
        after.as_os_str(),
    ];
    let text = card(&lora, &args, &dir.path().join("README.md"));
    assert!(
        text.starts_with(
            "---\nbase_model: \"loraguard/tiny-llama\"\nbase_model_relation: adapter\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("llama-cli -m base.gguf --lora out.gguf"),
        "{text}"
    );
    assert!(text.contains("refusal rate (95% CI)"), "{text}");
    assert!(
        text.contains("`patched.json` against `base.json`"),
        "{text}"
    );
    // Deterministic: a second run writes the same bytes.
    let again = card(&lora, &args, &dir.path().join("README2.md"));
    assert_eq!(text, again);
    snapshot("adapter.md", &text);
}

#[test]
fn card_of_a_merged_model_matches_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let lora = tiny_plain_f32(dir.path());
    let merged = dir.path().join("merged.gguf");
    let base = dir.path().join("base.gguf");
    std::fs::copy(tiny_base(), &base).unwrap();
    assert_eq!(lora.file_name().unwrap(), "out.gguf");
    // Relative paths from inside the directory, so that the command line
    // the merged file records (and the card shows) is the same on every machine.
    let o = Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .current_dir(dir.path())
        .args([
            "merge",
            "--base",
            "base.gguf",
            "--lora",
            "out.gguf",
            "--type",
            "f32",
            "-o",
            "merged.gguf",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = card(
        &merged,
        &["--base".as_ref(), base.as_os_str()],
        &dir.path().join("README.md"),
    );
    // No Hub id in the files and none given: no base_model, and the card says how to set it.
    assert!(!text.contains("base_model_relation"), "{text}");
    assert!(text.contains("pass `--base-model ORG/NAME`"), "{text}");
    assert!(text.contains("`loraguard.merge.method`"), "{text}");
    assert!(text.contains("llama-cli -m merged.gguf"), "{text}");
    // The exact command that wrote the file (issue 21), from its `loraguard.command` key.
    assert!(
        text.contains(
            "The command that wrote it:\n\n```sh\nloraguard merge --base base.gguf --lora out.gguf --type f32 -o merged.gguf\n```"
        ),
        "{text}"
    );
    let json = dir.path().join("card.json");
    card(
        &merged,
        &[
            "--base".as_ref(),
            base.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
        ],
        &dir.path().join("README3.md"),
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["relation"], "merge");
    assert_eq!(j["base_model"], serde_json::Value::Null);
    assert_eq!(
        j["bytes"].as_u64(),
        Some(std::fs::metadata(&merged).unwrap().len())
    );
    assert!(text.contains(j["sha256"].as_str().unwrap()), "{j}");
    snapshot("merge.md", &text);
}

#[test]
fn card_of_an_adapter_needs_its_base_and_the_adapter_must_fit_it() {
    let dir = tempfile::tempdir().unwrap();
    let lora = tiny_plain_f32(dir.path());
    let out = dir.path().join("README.md");
    let o = loraguard(&[
        "card".as_ref(),
        lora.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--base"));
    assert!(!out.exists());
    let smol = smollm2_model();
    let o = loraguard(&[
        "card".as_ref(),
        lora.as_os_str(),
        "--base".as_ref(),
        smol.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
    // The card and its JSON cannot share stdout: refused, nothing printed.
    let base = tiny_base();
    let o = loraguard(&[
        "card".as_ref(),
        lora.as_os_str(),
        "--base".as_ref(),
        base.as_os_str(),
        "-o".as_ref(),
        "-".as_ref(),
        "--json".as_ref(),
        "-".as_ref(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}
