//! The binary: help, inspect, convert output and exit codes.

use std::process::Command;

use crate::common::*;

fn loraguard(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn help_lists_the_commands() {
    let out = loraguard(&[os("--help")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["convert", "inspect", "fuse", "tune", "check", "judge"] {
        assert!(text.contains(cmd), "{text}");
    }
}

#[test]
fn inspect_peft_reports_per_module_scales_as_json() {
    let ad = tiny_adapter("rslora-patterns");
    let out = loraguard(&[os("inspect"), ad.as_os_str(), os("--json")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "peft-lora");
    let modules = v["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 14);
    let q1 = modules
        .iter()
        .find(|m| m["name"] == "model.layers.1.self_attn.q_proj")
        .unwrap();
    assert_eq!(q1["rank"], 4);
    assert_eq!(q1["scale"], 4.0); // rsLoRA: 8 / sqrt(4)
    let k0 = modules
        .iter()
        .find(|m| m["name"] == "model.layers.0.self_attn.k_proj")
        .unwrap();
    assert_eq!(k0["alpha"], 32.0);
}

#[test]
fn inspect_gguf_adapter_shows_the_same_effective_scale() {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, _) = convert_to(
        &tiny_adapter("rslora-patterns"),
        &tiny_base(),
        dir.path(),
        loraguard::convert::OutType::F32,
    );
    let out = loraguard(&[
        os("inspect"),
        out_path.as_os_str(),
        os("--json"),
        os("--base"),
        tiny_base().as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "gguf-lora");
    assert_eq!(v["fit"]["fits"], true);
    // llama.cpp's alpha/rank for q of layer 1 is 8/4 = 2; the rest of PEFT's
    // scale (4 = 8/sqrt(4)) is baked into lora_b.
    let q1 = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "blk.1.attn_q.weight")
        .unwrap();
    assert_eq!(q1["scale"], 2.0);
}

#[test]
fn inspect_with_a_wrong_base_says_why_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (lora, _) = convert_to(
        &tiny_adapter("plain"),
        &tiny_base(),
        dir.path(),
        loraguard::convert::OutType::F16,
    );
    let out = loraguard(&[
        os("inspect"),
        lora.as_os_str(),
        os("--base"),
        smollm2_model().as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fits") && text.contains("NO"), "{text}");
    assert!(text.contains("do not fit base"), "{text}");
}

#[test]
fn convert_json_report_and_mismatch_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("o.gguf");
    let out = loraguard(&[
        os("convert"),
        tiny_adapter("plain").as_os_str(),
        os("--base"),
        tiny_base().as_os_str(),
        os("-o"),
        out_path.as_os_str(),
        os("--outtype"),
        os("q8_0"),
        os("--json"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["targets"], 14);
    assert_eq!(v["fallbacks"].as_array().unwrap().len(), 14);
    // The same adapter against SmolLM2: every problem, a hint, exit 2.
    let out = loraguard(&[
        os("convert"),
        tiny_adapter("plain").as_os_str(),
        os("--base"),
        smollm2_model().as_os_str(),
        os("-o"),
        dir.path().join("x.gguf").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tensors expect in_features 64, the base has 576"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert!(!dir.path().join("x.gguf").exists());
}

#[test]
fn unknown_outtype_is_a_usage_error() {
    let out = loraguard(&[
        os("convert"),
        os("x"),
        os("--base"),
        os("y"),
        os("-o"),
        os("z"),
        os("--outtype"),
        os("q4_9"),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn convert_refactors_reports_per_module_errors_and_checks_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("r.gguf");
    let (adapter, base) = (tiny_adapter("plain"), tiny_base());
    let run = |extra: &[&str], out: &std::path::Path| {
        let mut args = vec![
            os("convert"),
            adapter.as_os_str(),
            os("--base"),
            base.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(|s| os(s)));
        loraguard(&args)
    };
    let out = run(&["--max-rank", "3", "--measure-error", "--json"], &out_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["refactor"]["max_rank"], 3);
    let modules = v["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 14);
    for m in modules {
        assert_eq!(m["source_rank"], 8);
        assert_eq!(m["rank"], 3);
        let (t, w) = (
            m["truncation_error"].as_f64().unwrap(),
            m["written_error"].as_f64().unwrap(),
        );
        assert!(t > 0.0 && t < 1.0 && (w - t).abs() < 1e-3, "{m}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("total rank 112 -> 42"), "{err}");
    let g = loraguard::gguf::GgufFile::open(&out_path).unwrap();
    assert_eq!(g.get_u64("loraguard.refactor.max_rank"), Some(3));
    // Bad values are usage errors and write nothing.
    for bad in [["--energy", "0"], ["--energy", "1.5"], ["--max-rank", "0"]] {
        let o = dir.path().join("bad.gguf");
        let out = run(&bad, &o);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!o.exists());
    }
}

#[test]
fn unknown_types_exit_2_list_the_writable_ones_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("o.gguf");
    let convert = loraguard(&[
        os("convert"),
        tiny_adapter("plain").as_os_str(),
        os("--base"),
        tiny_base().as_os_str(),
        os("-o"),
        out_path.as_os_str(),
        os("--outtype"),
        os("q9_9"),
    ]);
    let merge = loraguard(&[
        os("merge"),
        os("--model"),
        tiny_base().as_os_str(),
        os("--lora"),
        tiny_adapter("plain").as_os_str(),
        os("-o"),
        out_path.as_os_str(),
        os("--type"),
        os("iq2_xxs"),
    ]);
    for (out, want) in [(convert, "or auto"), (merge, "expected same, ")] {
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.contains("q4_k") && err.contains("q8_0"),
            "{err}"
        );
    }
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn fuse_selective_refuses_other_counts_and_its_flags_elsewhere() {
    let d = tempfile::tempdir().unwrap();
    let plain = tiny_adapter("plain");
    let b = root().join("fixtures/fuse/plain-b");
    let out = d.path().join("out");
    let cases: [Vec<&std::ffi::OsStr>; 2] = [
        // --threshold chooses modules for selective only.
        vec![
            plain.as_os_str(),
            b.as_os_str(),
            os("--method"),
            os("cat"),
            os("--threshold"),
            os("0.3"),
        ],
        // selective takes a task and a safety adapter, not three.
        vec![
            plain.as_os_str(),
            b.as_os_str(),
            b.as_os_str(),
            os("--method"),
            os("selective"),
        ],
    ];
    for args in cases {
        let mut all = vec![os("fuse")];
        all.extend(args);
        all.extend([os("-o"), out.as_os_str()]);
        let o = loraguard(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("error:"), "{err}");
        assert!(!out.exists());
    }
}

/// Every command's `--help`, pinned: a change to the CLI shows up here (and
/// must be reflected in docs/commands.md). `LORAGUARD_UPDATE_SNAPSHOTS=1`
/// rewrites the snapshots.
#[test]
fn help_of_every_command_matches_its_snapshot() {
    let dir = root().join("tests/snapshots/help");
    let update = std::env::var_os("LORAGUARD_UPDATE_SNAPSHOTS").is_some();
    let commands = [
        "",
        "convert",
        "inspect",
        "card",
        "batch",
        "analyze",
        "safe-lora",
        "fuse",
        "merge",
        "check",
        "judge",
        "diff",
        "tune",
    ];
    let mut stale = Vec::new();
    for cmd in commands {
        let mut args: Vec<&std::ffi::OsStr> = Vec::new();
        if !cmd.is_empty() {
            args.push(os(cmd));
        }
        args.push(os("--help"));
        let out = loraguard(&args);
        assert!(out.status.success(), "{cmd}");
        let text = String::from_utf8(out.stdout).unwrap();
        let name = if cmd.is_empty() { "loraguard" } else { cmd };
        let path = dir.join(format!("{name}.txt"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "--help changed for {stale:?}: update docs/commands.md, then run with LORAGUARD_UPDATE_SNAPSHOTS=1"
    );
}

/// `--json PATH` is every command's machine report, `-` for stdout.
#[test]
fn every_command_writes_its_report_with_json_path_or_dash() {
    let d = tempfile::tempdir().unwrap();
    let plain = tiny_adapter("plain");
    let b = root().join("fixtures/fuse/plain-b");
    let base = tiny_base();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let out = |n: &str| s(&d.path().join(n));
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "convert",
            vec![
                "convert".into(),
                s(&plain),
                "--base".into(),
                s(&base),
                "-o".into(),
                out("c.gguf"),
            ],
        ),
        ("inspect", vec!["inspect".into(), s(&plain)]),
        ("analyze", vec!["analyze".into(), s(&plain)]),
        (
            "fuse",
            vec![
                "fuse".into(),
                s(&plain),
                s(&b),
                "--method".into(),
                "cat".into(),
                "-o".into(),
                out("f"),
            ],
        ),
    ];
    for (name, args) in runs {
        for dest in ["file", "-"] {
            let json = d.path().join(format!("{name}-{dest}.json"));
            let mut a: Vec<String> = args.clone();
            a.push("--json".into());
            a.push(if dest == "-" { "-".into() } else { s(&json) });
            if name == "fuse" {
                // A fresh output directory each time.
                a[6] = out(&format!("f-{dest}"));
            }
            if name == "convert" {
                a[5] = out(&format!("c-{dest}.gguf"));
            }
            let o = Command::new(env!("CARGO_BIN_EXE_loraguard"))
                .args(&a)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let text = if dest == "-" {
                String::from_utf8(o.stdout).unwrap()
            } else {
                std::fs::read_to_string(&json).unwrap()
            };
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} {dest}: {e}: {text}"));
            assert!(v.is_object(), "{name} {dest}");
        }
    }
}

/// Every written file records the command line that wrote it (issue 21),
/// shell-quoted; a file rewritten from another (safe-lora of a GGUF LoRA)
/// records its own run's command, not its source's.
#[test]
fn written_files_record_their_own_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_loraguard"))
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let (plain, base) = (tiny_adapter("plain"), tiny_base());
    let (plain, base) = (plain.to_str().unwrap(), base.to_str().unwrap());
    let command = |file: &str| {
        let g = loraguard::gguf::GgufFile::open(&dir.path().join(file)).unwrap();
        g.get_str(loraguard::provenance::COMMAND_KEY)
            .map(String::from)
    };
    run(&["convert", plain, "--base", base, "-o", "a b.gguf", "-q"]);
    assert_eq!(
        command("a b.gguf").as_deref(),
        Some(format!("loraguard convert {plain} --base {base} -o 'a b.gguf' -q").as_str())
    );
    run(&[
        "merge",
        "--base",
        base,
        "--lora",
        "a b.gguf",
        "--type",
        "f32",
        "-o",
        "aligned.gguf",
        "-q",
    ]);
    run(&[
        "safe-lora",
        "a b.gguf",
        "--base",
        base,
        "--aligned",
        "aligned.gguf",
        "--threshold",
        "0.5",
        "-o",
        "s.gguf",
        "-q",
    ]);
    let c = command("s.gguf").unwrap();
    assert!(
        c.starts_with("loraguard safe-lora 'a b.gguf' --base "),
        "{c}"
    );
    assert_eq!(
        command("aligned.gguf").unwrap().split(' ').nth(1),
        Some("merge")
    );
}

#[test]
fn source_hash_sha256_records_the_digest_sha256sum_prints() {
    let dir = tempfile::tempdir().unwrap();
    let (ad, base) = (tiny_adapter("plain"), tiny_base());
    let digest = |kind: &str| {
        let out = dir.path().join(format!("{kind}.gguf"));
        let o = loraguard(&[
            os("convert"),
            ad.as_os_str(),
            os("--base"),
            base.as_os_str(),
            os("-o"),
            out.as_os_str(),
            os("--source-hash"),
            os(kind),
            os("--json"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let g = loraguard::gguf::GgufFile::open(&out).unwrap();
        let other = if kind == "sha256" { "blake3" } else { "sha256" };
        assert_eq!(g.get_str(&format!("loraguard.source.{other}")), None);
        assert_eq!(report["source_hash_algorithm"], kind);
        let hex = g
            .get_str(&format!("loraguard.source.{kind}"))
            .unwrap()
            .to_string();
        assert_eq!(report["source_hash"], hex.as_str());
        hex
    };
    let bytes = std::fs::read(ad.join("adapter_model.safetensors")).unwrap();
    assert_eq!(digest("sha256"), loraguard::hash::sha256_hex(&bytes));
    assert_eq!(digest("blake3"), loraguard::hash::blake3_hex(&bytes));
    let o = loraguard(&[
        os("convert"),
        ad.as_os_str(),
        os("--base"),
        base.as_os_str(),
        os("--dry-run"),
        os("--source-hash"),
        os("md5"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
