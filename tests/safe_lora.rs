//! `safe-lora` against the transcribed reference (scripts/make-safe-lora-fixtures.py):
//! the same similarities, selections and projected factors from every kind
//! of weight source, and its refusals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use loraguard::convert::{ConvertOptions, OutType};
use loraguard::safelora::{safe_lora, Projection, SafeLoraOptions, SafeLoraReport, Selection};
use safetensors::SafeTensors;

use crate::common::*;

fn fixture(p: &str) -> PathBuf {
    root().join("fixtures/safe-lora").join(p)
}

fn options(
    base: &Path,
    aligned: &Path,
    selection: Selection,
    projection: Projection,
) -> SafeLoraOptions {
    SafeLoraOptions {
        base: base.into(),
        aligned: aligned.into(),
        selection,
        projection,
        modules: None,
        seed: 0,
        convert: ConvertOptions::new(OutType::F32),
    }
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Compare a run with the reference's `key` entry of `expected`.
fn check_against(
    report: &SafeLoraReport,
    out: &Path,
    adapter: &Path,
    expected: &serde_json::Value,
    golden: &SafeTensors,
    key: &str,
) {
    let e = &expected[key];
    assert!(
        (report.threshold - e["threshold"].as_f64().unwrap()).abs() < 1e-12,
        "{key}"
    );
    let want = e["modules"].as_object().unwrap();
    let got: HashMap<&str, _> = report
        .modules
        .iter()
        .map(|m| (m.module.as_str(), m))
        .collect();
    for (m, w) in want {
        let g = got
            .get(m.as_str())
            .unwrap_or_else(|| panic!("{key}: {m} missing"));
        let ws = w["similarity"].as_f64().unwrap();
        assert!(
            (g.similarity - ws).abs() <= 1e-5 * ws.abs().max(1e-3),
            "{key} {m}: {} vs {ws}",
            g.similarity
        );
        assert_eq!(g.projected, w["projected"].as_bool().unwrap(), "{key} {m}");
    }
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&bytes).unwrap();
    let src_bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let src = SafeTensors::deserialize(&src_bytes).unwrap();
    for (name, view) in src.tensors() {
        let golden_name = format!("{key}/{name}");
        match golden.tensor(&golden_name) {
            Ok(_) => {
                let (a, b) = (f32s(&ours, &name), f32s(golden, &golden_name));
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                let err = a
                    .iter()
                    .zip(&b)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    err <= 1e-5 * scale,
                    "{key} {name}: max error {err} of {scale}"
                );
            }
            // Everything not projected is copied as it was.
            Err(_) => {
                let projected = report
                    .modules
                    .iter()
                    .any(|m| m.projected && name.contains(&format!("{}.lora_B", m.module)));
                if !projected {
                    assert_eq!(
                        ours.tensor(&name).unwrap().data(),
                        view.data(),
                        "{key} {name}"
                    );
                }
            }
        }
    }
}

#[test]
fn tiny_matches_the_reference_from_safetensors_sharded_and_gguf_weights() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny/expected.json")).unwrap())
            .unwrap();
    let golden_bytes = std::fs::read(fixture("tiny/expected.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&golden_bytes).unwrap();
    let adapter = tiny_adapter("plain");
    // HF layout (one file + shards), GGUF layout (Q/K rows permuted), and mixed.
    let sources = [
        (fixture("tiny/base.safetensors"), fixture("tiny/aligned")),
        (tiny_base(), fixture("tiny/aligned.gguf")),
        (
            tiny_base(),
            fixture("tiny/aligned/model.safetensors.index.json"),
        ),
    ];
    for (base, aligned) in &sources {
        for (key, sel, proj) in [
            (
                "threshold-0.5",
                Selection::Threshold(0.5),
                Projection::Paper,
            ),
            ("top-5", Selection::TopN(5), Projection::Paper),
            ("exact-4", Selection::Threshold(0.5), Projection::Exact(4)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            let report = safe_lora(
                &adapter,
                &out,
                &options(base, aligned, sel, proj),
                &|_, _| {},
            )
            .unwrap_or_else(|e| panic!("{key} {}: {e}", aligned.display()));
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            check_against(&report, &out, &adapter, &expected, &golden, key);
        }
    }
}

#[test]
fn smollm2_matches_the_reference_with_a_peft_safety_adapter() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2-expected.json")).unwrap())
            .unwrap();
    let golden_bytes = std::fs::read(fixture("smollm2-expected.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&golden_bytes).unwrap();
    let adapter = root().join("fixtures/smollm2/pirate-lora");
    let safety = root().join("fixtures/smollm2/sorry-lora");
    let attention = regex::Regex::new(r"self_attn\.(q|v|o)_proj$").unwrap();
    for (key, sel) in [
        ("threshold-0.5", Selection::Threshold(0.5)),
        ("top-10", Selection::TopN(10)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut opts = options(&smollm2_model(), &safety, sel, Projection::Paper);
        opts.modules = Some(attention.clone());
        let report = safe_lora(&adapter, &out, &opts, &|_, _| {}).unwrap();
        assert_eq!(report.modules.len(), 90);
        check_against(&report, &out, &adapter, &expected, &golden, key);
    }
}

#[test]
fn gguf_output_goes_through_convert_and_loads_in_llama_cpp() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let adapter = tiny_adapter("plain");
    let opts = options(
        &tiny_base(),
        &fixture("tiny/aligned.gguf"),
        Selection::TopN(5),
        Projection::Paper,
    );
    let peft_out = dir.path().join("peft");
    safe_lora(&adapter, &peft_out, &opts, &|_, _| {}).unwrap();
    let gguf_out = dir.path().join("safe.gguf");
    let report = safe_lora(&adapter, &gguf_out, &opts, &|_, _| {}).unwrap();
    assert_eq!(report.projected, 5);
    let conv = report.convert.as_ref().expect("converted");
    assert_eq!(conv.targets, 14);
    // The GGUF holds exactly the projected PEFT adapter, converted.
    let (plain_gguf, _) = convert_to(&peft_out, &tiny_base(), dir.path(), OutType::F32);
    let a = loraguard::adapter::AdapterSource::open(&gguf_out, None).unwrap();
    let b = loraguard::adapter::AdapterSource::open(&plain_gguf, None).unwrap();
    for m in a.modules() {
        let (x, y) = (a.load(&m).unwrap(), b.load(&m).unwrap());
        assert!(
            x.difference_norm(&y).unwrap() <= 1e-6 * x.norm().max(1e-12),
            "{m}"
        );
    }
    // llama.cpp loads it, and it changes the logits less than the original.
    let model = load_model(&tiny_base());
    let toks = tokens(&tiny().join("reference.safetensors"));
    let base = llama_logits(&model, &[], &toks);
    let odir = dir.path().join("o");
    std::fs::create_dir(&odir).unwrap();
    let (orig, _) = convert_to(&adapter, &tiny_base(), &odir, OutType::F32);
    let with_orig = llama_logits(&model, &[(&orig, 1.0)], &toks);
    let with_safe = llama_logits(&model, &[(&gguf_out, 1.0)], &toks);
    assert!(with_safe.iter().all(|x| x.is_finite()));
    let (d_orig, d_safe) = (norm(&sub(&with_orig, &base)), norm(&sub(&with_safe, &base)));
    assert!(d_safe > 0.0 && d_safe < d_orig, "{d_safe} vs {d_orig}");
}

#[test]
fn bad_inputs_are_refused_with_reasons_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let adapter = tiny_adapter("plain");
    let run = |base: &Path, aligned: &Path, modules: Option<&str>| {
        let mut o = options(base, aligned, Selection::Threshold(0.5), Projection::Paper);
        o.modules = modules.map(|m| regex::Regex::new(m).unwrap());
        safe_lora(&adapter, &out, &o, &|_, _| {})
    };
    let base = fixture("tiny/base.safetensors");
    // V = 0.
    let e = run(&base, &base, None).unwrap_err().to_string();
    assert!(e.contains("identical"), "{e}");
    // Modules the safety adapter lacks.
    let sorry = root().join("fixtures/smollm2/sorry-lora");
    let e = run(&base, &sorry, None).unwrap_err().to_string();
    assert!(
        e.contains("missing from the aligned PEFT adapter") && e.contains("--modules"),
        "{e}"
    );
    // Shapes that disagree (a SmolLM2 safety adapter for a tiny model).
    let e = run(&base, &sorry, Some("q_proj$")).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(format!("{e:?}").contains("576"), "{e:?}");
    // Models of different shapes.
    let e = run(&tiny_base(), &smollm2_model(), None).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    // A PEFT adapter as the base; a GGUF LoRA as the adapter's input.
    assert!(run(&sorry, &base, None)
        .unwrap_err()
        .to_string()
        .contains("model weights"));
    assert!(!out.exists(), "nothing written on refusal");
    // A non-empty output directory is refused before any work.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"x").unwrap();
    let e = run(&base, &fixture("tiny/aligned"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    // GGUF output needs a GGUF model among base and aligned.
    let o = options(
        &base,
        &fixture("tiny/aligned"),
        Selection::Threshold(0.5),
        Projection::Paper,
    );
    let e = safe_lora(&adapter, &dir.path().join("x.gguf"), &o, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a GGUF model"), "{e}");
    assert!(!dir.path().join("x.gguf").exists());
}

#[test]
fn a_quantized_base_beside_a_float_aligned_model_is_warned_about_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(
        &fixture("tiny/base-q8_0.gguf"),
        &fixture("tiny/aligned.gguf"),
        Selection::Threshold(0.5),
        Projection::Paper,
    );
    let r = safe_lora(
        &tiny_adapter("plain"),
        &dir.path().join("o"),
        &o,
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("quantization noise"),
        "{}",
        r.warnings[0]
    );
    let noise: Vec<f64> = r
        .modules
        .iter()
        .map(|m| m.quantization_noise.unwrap())
        .collect();
    // Q8_0 error of a 0.15-scale weight against a 10% move: a few percent.
    assert!(noise.iter().all(|n| *n > 1e-3 && *n < 0.2), "{noise:?}");
    // Both float: no warning.
    let o = options(
        &tiny_base(),
        &fixture("tiny/aligned.gguf"),
        Selection::Threshold(0.5),
        Projection::Paper,
    );
    let r = safe_lora(
        &tiny_adapter("plain"),
        &dir.path().join("p"),
        &o,
        &|_, _| {},
    )
    .unwrap();
    assert!(r.warnings.is_empty() && r.modules.iter().all(|m| m.quantization_noise.is_none()));
}

#[test]
fn cli_prints_a_summary_writes_the_report_and_exits_2_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("safe"), dir.path().join("r.json"));
    let run = |aligned: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loraguard"))
            .args(["safe-lora".as_ref(), tiny_adapter("plain").as_os_str()])
            .args(["--base".as_ref(), tiny_base().as_os_str()])
            .args(["--aligned".as_ref(), aligned.as_os_str()])
            .args(["--top-n", "5", "-o"])
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap()
    };
    let o = run(&fixture("tiny/aligned.gguf"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("projected 5 of 14 modules"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["projected"], 5);
    assert_eq!(v["mode"], "top_n");
    assert_eq!(v["modules"].as_array().unwrap().len(), 14);
    assert!(out.join("adapter_config.json").is_file());
    // Identical base and aligned: exit 2, the reason, nothing new written.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&report).unwrap();
    let o = run(&tiny_base());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("identical"));
    assert!(!out.exists() && !report.exists());
}

#[test]
fn a_gguf_lora_input_gives_what_its_peft_source_gives() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let adapter = tiny_adapter("plain");
    let (lora, _) = convert_to(&adapter, &tiny_base(), dir.path(), OutType::F16);
    let opts = options(
        &tiny_base(),
        &fixture("tiny/aligned.gguf"),
        Selection::TopN(5),
        Projection::Paper,
    );
    let (from_peft, from_gguf) = (dir.path().join("peft.gguf"), dir.path().join("gguf.gguf"));
    let r1 = safe_lora(&adapter, &from_peft, &opts, &|_, _| {}).unwrap();
    let r2 = safe_lora(&lora, &from_gguf, &opts, &|_, _| {}).unwrap();
    // Same similarities (GGUF names and layout against HF ones), same selection.
    let sorted = |r: &SafeLoraReport| {
        let mut v: Vec<(f64, bool)> = r
            .modules
            .iter()
            .map(|m| (m.similarity, m.projected))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let (s1, s2) = (sorted(&r1), sorted(&r2));
    assert_eq!(s1.len(), s2.len());
    for (a, b) in s1.iter().zip(&s2) {
        assert!((a.0 - b.0).abs() < 1e-4, "{a:?} vs {b:?}"); // F16 factors
        assert_eq!(a.1, b.1);
    }
    assert!(r2.modules.iter().any(|m| m.module == "blk.0.attn_q.weight"));
    // The same updates, module by module.
    let x = loraguard::adapter::AdapterSource::open(&from_peft, None).unwrap();
    let y = loraguard::adapter::AdapterSource::open(&from_gguf, None).unwrap();
    for m in x.modules() {
        let (a, b) = (x.load(&m).unwrap(), y.load(&m).unwrap());
        let rel = a.difference_norm(&b).unwrap() / a.norm();
        assert!(rel < 2e-3, "{m}: {rel}"); // F16 rounding of the input factors
    }
    // Metadata carried, transform recorded; llama.cpp loads it.
    let g = loraguard::gguf::GgufFile::open(&from_gguf).unwrap();
    assert_eq!(g.get_str("general.type"), Some("adapter"));
    assert_eq!(g.get_f64("adapter.lora.alpha"), Some(16.0));
    let t = &g.metadata["loraguard.transforms"];
    assert!(
        t.to_string().contains("llama_qk_row_permutation_on_lora_b")
            && t.to_string().contains("safe_lora"),
        "{t}"
    );
    let model = load_model(&tiny_base());
    let toks = tokens(&tiny().join("reference.safetensors"));
    let a = llama_logits(&model, &[(&from_gguf, 1.0)], &toks);
    let b = llama_logits(&model, &[(&from_peft, 1.0)], &toks);
    assert!(cosine(&a, &b) > 0.9999);
    // GGUF input needs GGUF weights and a GGUF output.
    let hf = options(
        &fixture("tiny/base.safetensors"),
        &fixture("tiny/aligned"),
        Selection::TopN(5),
        Projection::Paper,
    );
    let e = safe_lora(&lora, &dir.path().join("x.gguf"), &hf, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("GGUF layout"), "{e}");
    let e = safe_lora(&lora, &dir.path().join("dir"), &opts, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("written back as a GGUF LoRA"), "{e}");
    assert!(!dir.path().join("x.gguf").exists() && !dir.path().join("dir").exists());
}

/// Issue 20, item 4: the safetensors header reader added untrusted u64
/// `data_offsets` to the header length unchecked (an overflow panic in
/// debug builds, a wrapped offset in release). Now bad input.
#[test]
fn huge_safetensors_offsets_are_bad_input_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let header = format!(
        r#"{{"model.layers.0.self_attn.q_proj.weight":{{"dtype":"F32","shape":[1,1],"data_offsets":[{},{}]}}}}"#,
        u64::MAX - 4,
        u64::MAX
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    let base = dir.path().join("huge.safetensors");
    std::fs::write(&base, bytes).unwrap();
    let out = dir.path().join("out");
    let o = options(
        &base,
        &fixture("tiny/aligned"),
        Selection::Threshold(0.5),
        Projection::Paper,
    );
    let e = safe_lora(&tiny_adapter("plain"), &out, &o, &|_, _| {}).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("data_offsets"),
        "{e}"
    );
    assert!(!out.exists());
}
