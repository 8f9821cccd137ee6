//! aLoRA (issue 21, item 4): PEFT's `alora_invocation_tokens` reaches the
//! GGUF as `adapter.alora.invocation_tokens` (u32 array, as llama.cpp's
//! loader in llama-adapter.cpp expects it), `inspect` shows it on both
//! sides, and llama.cpp's own loader reads the same tokens back.

use loraguard::convert::OutType;
use loraguard::gguf::GgufFile;

use crate::common::*;

const TOKENS: [u32; 3] = [17, 4, 29];

/// The tiny `plain` adapter, its config given invocation tokens.
fn alora_adapter(dir: &std::path::Path) -> std::path::PathBuf {
    let src = tiny_adapter("plain");
    let out = dir.join("alora-adapter");
    std::fs::create_dir(&out).unwrap();
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let path = out.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["alora_invocation_tokens"] = serde_json::json!(TOKENS);
    std::fs::write(&path, cfg.to_string()).unwrap();
    out
}

#[test]
fn alora_invocation_tokens_round_trip_into_llama_cpps_loader() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = alora_adapter(dir.path());
    let peft = loraguard::inspect::inspect(&adapter, None).unwrap();
    assert_eq!(
        peft.settings.get("alora_invocation_tokens"),
        Some(&serde_json::json!(TOKENS))
    );

    let (gguf, _) = convert_to(&adapter, &tiny_base(), dir.path(), OutType::F32);
    let g = GgufFile::open(&gguf).unwrap();
    assert_eq!(
        g.metadata.get("adapter.alora.invocation_tokens"),
        Some(&loraguard::gguf::MetaValue::u32s(TOKENS.to_vec())),
        "kept as GGUF's u32 array, the type llama.cpp's loader reads"
    );
    let shown = loraguard::inspect::inspect(&gguf, None).unwrap();
    assert_eq!(
        shown.settings.get("adapter.alora.invocation_tokens"),
        Some(&serde_json::json!(TOKENS))
    );

    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model = load_model(&tiny_base());
    let loaded = model.load_adapter(&gguf).unwrap();
    let want: Vec<i32> = TOKENS.iter().map(|t| *t as i32).collect();
    assert_eq!(loaded.alora_invocation_tokens(), want);
    // A plain LoRA has none.
    std::fs::create_dir(dir.path().join("plain")).unwrap();
    let plain = tiny_plain_f32(&dir.path().join("plain"));
    assert!(model
        .load_adapter(&plain)
        .unwrap()
        .alora_invocation_tokens()
        .is_empty());
}

#[test]
fn alora_invocation_tokens_that_are_not_token_ids_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = alora_adapter(dir.path());
    let path = adapter.join("adapter_config.json");
    for bad in [r#""17 4""#, "[17, -4]", "[1.5]"] {
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg["alora_invocation_tokens"] = serde_json::from_str(bad).unwrap();
        std::fs::write(&path, cfg.to_string()).unwrap();
        let e = loraguard::inspect::inspect(&adapter, None).unwrap_err();
        assert!(e.is_bad_input(), "{bad}: {e}");
        assert!(
            e.to_string().contains("alora_invocation_tokens"),
            "{bad}: {e}"
        );
    }
}

/// fuse and merge would apply an aLoRA's update to every token: both refuse
/// it (exit 2, nothing written), as PEFT directory and as GGUF.
#[test]
fn fuse_and_merge_refuse_an_alora_rather_than_apply_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let peft = alora_adapter(dir.path());
    let (gguf, _) = convert_to(&peft, &tiny_base(), dir.path(), OutType::F32);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let run = |args: Vec<std::ffi::OsString>| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loraguard"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("aLoRA"), "{err}");
        assert!(err.contains("hint:"), "{err}");
        assert!(entries(&out_dir).is_empty(), "{:?}", entries(&out_dir));
    };
    let plain = tiny_adapter("plain");
    for a in [&peft, &gguf] {
        let spec = |p: &std::path::Path| format!("{}:1", p.display());
        run(vec![
            "fuse".into(),
            "--method".into(),
            "cat".into(),
            spec(&plain).into(),
            spec(a).into(),
            "--base".into(),
            tiny_base().into(),
            "-o".into(),
            out_dir.join("f.gguf").into(),
        ]);
        run(vec![
            "merge".into(),
            "--base".into(),
            tiny_base().into(),
            "--lora".into(),
            a.into(),
            "-o".into(),
            out_dir.join("m.gguf").into(),
        ]);
    }
}
