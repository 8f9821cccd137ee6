//! Every refusal in `convert`: the right error, exit code 2 from the CLI, and
//! no output file.

use std::path::{Path, PathBuf};
use std::process::Command;

use loraguard::convert::{convert, OutType};
use loraguard::Error;

use crate::common::*;

/// Copy a fixture adapter into a fresh temp dir for mutation.
fn copy_adapter(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(tiny_adapter(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (dir, dst)
}

/// Build a safetensors file byte by byte: header JSON then data.
fn safetensors(tensors: &[(&str, &str, [usize; 2], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A minimal valid adapter on layer 0's v_proj (in 64, out 32) with extras.
fn custom_adapter(
    extra: &[(&str, &str, [usize; 2], Vec<u8>)],
    config: &str,
) -> (tempfile::TempDir, PathBuf) {
    custom_adapter_b(&[0.02; 64], extra, config)
}

/// The same with the given `lora_B` values.
fn custom_adapter_b(
    b: &[f32],
    extra: &[(&str, &str, [usize; 2], Vec<u8>)],
    config: &str,
) -> (tempfile::TempDir, PathBuf) {
    custom_adapter_ab("F32", f32s(&[0.01; 128]), f32s(b), extra, config)
}

/// The v_proj adapter with `lora_A` (2×64) and `lora_B` (32×2) given as
/// bytes of safetensors dtype `dtype`.
fn custom_adapter_ab(
    dtype: &str,
    a: Vec<u8>,
    b: Vec<u8>,
    extra: &[(&str, &str, [usize; 2], Vec<u8>)],
    config: &str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("adapter");
    std::fs::create_dir(&ad).unwrap();
    let mut tensors = vec![
        (
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
            dtype,
            [2, 64],
            a,
        ),
        (
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
            dtype,
            [32, 2],
            b,
        ),
    ];
    tensors.extend(extra.iter().cloned());
    std::fs::write(ad.join("adapter_model.safetensors"), safetensors(&tensors)).unwrap();
    std::fs::write(ad.join("adapter_config.json"), config).unwrap();
    (dir, ad)
}

/// Convert `adapter` with `--drop-unsupported`; the output must exist.
fn convert_dropping(adapter: &Path) -> loraguard::convert::ConvertReport {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let mut o = opts(OutType::F16);
    o.drop_unsupported = true;
    let r = convert(adapter, &tiny_base(), Some(&out), &o, &|_, _| {}).unwrap();
    assert!(out.is_file());
    r
}

const CONFIG: &str =
    r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["v_proj"]}"#;

/// Run the library and the CLI on `adapter`; both must refuse and write nothing.
fn assert_refused(adapter: &Path, check: impl Fn(&Error) -> bool) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let err = convert(
        adapter,
        &tiny_base(),
        Some(&out),
        &opts(OutType::F16),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(err.is_bad_input(), "{err:?} should be bad input");
    let cli = Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .args(["convert"])
        .arg(adapter)
        .arg("--base")
        .arg(tiny_base())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        cli.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        entries(out_dir.path()).is_empty(),
        "files left: {:?}",
        entries(out_dir.path())
    );
}

#[test]
fn the_custom_baseline_converts() {
    let (_d, ad) = custom_adapter(&[], CONFIG);
    let out = tempfile::tempdir().unwrap();
    convert_to(&ad, &tiny_base(), out.path(), OutType::F16);
}

#[test]
fn dora_is_refused() {
    assert_refused(
        &tiny_adapter("dora"),
        |e| matches!(e, Error::Unsupported { feature, .. } if feature.contains("DoRA")),
    );
}

#[test]
fn dora_magnitude_vector_without_the_flag_is_refused() {
    let (_d, ad) = custom_adapter(
        &[(
            "base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector",
            "F32",
            [1, 32],
            f32s(&[1.0; 32]),
        )],
        CONFIG,
    );
    assert_refused(
        &ad,
        |e| matches!(e, Error::Unsupported { feature, .. } if feature.contains("magnitude")),
    );
}

#[test]
fn nonzero_lora_bias_is_refused_and_zero_bias_is_skipped() {
    let bias = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.bias";
    let (_d, ad) = custom_adapter(&[(bias, "F32", [1, 32], f32s(&[0.5; 32]))], CONFIG);
    assert_refused(
        &ad,
        |e| matches!(e, Error::Unsupported { feature, .. } if feature.contains("bias")),
    );
    let mut zeros = f32s(&[0.0; 32]);
    zeros[3] = 0x80; // -0.0 counts as zero
    let (_d2, ad2) = custom_adapter(&[(bias, "F32", [1, 32], zeros)], CONFIG);
    let out = tempfile::tempdir().unwrap();
    convert_to(&ad2, &tiny_base(), out.path(), OutType::F16);
}

#[test]
fn modules_to_save_is_refused_unless_dropped() {
    let ad = tiny_adapter("modules-to-save");
    assert_refused(
        &ad,
        |e| matches!(e, Error::Unsupported { feature, .. } if feature.contains("modules_to_save")),
    );
    let r = convert_dropping(&ad);
    assert_eq!(r.dropped.len(), 1);
    assert!(r.dropped[0].name.contains("lm_head"));
}

#[test]
fn embedding_with_new_tokens_is_refused_unless_dropped() {
    let (_d, ad) = custom_adapter(
        &[
            (
                "base_model.model.model.embed_tokens.lora_embedding_A",
                "F32",
                [2, 300],
                f32s(&[0.01; 600]),
            ),
            (
                "base_model.model.model.embed_tokens.lora_embedding_B",
                "F32",
                [64, 2],
                f32s(&[0.01; 128]),
            ),
        ],
        CONFIG,
    );
    assert_refused(
        &ad,
        |e| matches!(e, Error::Unsupported { feature, .. } if feature.contains("new tokens")),
    );
    let r = convert_dropping(&ad);
    assert_eq!(r.targets, 1);
    assert_eq!(r.dropped.len(), 1);
}

#[test]
fn pickle_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("adapter");
    std::fs::create_dir(&ad).unwrap();
    std::fs::write(ad.join("adapter_config.json"), CONFIG).unwrap();
    // A pickle that would run code if unpickled.
    std::fs::write(
        ad.join("adapter_model.bin"),
        b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.",
    )
    .unwrap();
    assert_refused(&ad, |e| matches!(e, Error::Pickle { .. }));
    assert_refused(&ad.join("adapter_model.bin"), |e| {
        matches!(e, Error::Pickle { .. })
    });
}

#[test]
fn nan_and_inf_are_refused() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut b = vec![0.02f32; 64];
        b[17] = bad;
        let (_d, ad) = custom_adapter_b(&b, &[], CONFIG);
        assert_refused(
            &ad,
            |e| matches!(e, Error::NonFinite { count: 1, tensor, .. } if tensor.contains("lora_B")),
        );
    }
}

/// BF16 into F16 and Q8_0 skips the up-front finiteness pass (the bulk
/// encoders fail on such values instead): the error must still name the
/// tensor and count its values, and a finite value beyond F16's range must
/// still be a range error, wherever it sits in the tensor.
#[test]
fn bf16_nan_inf_and_overflow_are_refused_on_the_bulk_path() {
    let bf16s = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    };
    let adapter = |a: &[f32], b: &[f32]| custom_adapter_ab("BF16", bf16s(a), bf16s(b), &[], CONFIG);
    let run = |ad: &Path, ty: OutType| {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.gguf");
        let r = convert(ad, &tiny_base(), Some(&out), &opts(ty), &|_, _| {});
        assert_eq!(r.is_ok(), out.exists());
        r
    };
    for ty in [OutType::F16, OutType::Q8_0] {
        for at in [0, 65, 127] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut a = vec![0.01f32; 128];
                a[at] = bad;
                let (_d, ad) = adapter(&a, &[0.02; 64]);
                let e = run(&ad, ty).unwrap_err();
                assert!(
                    matches!(&e, Error::NonFinite { count: 1, tensor, .. } if tensor.contains("lora_A")),
                    "{ty:?} {bad} at {at}: {e:?}"
                );
            }
            let mut b = vec![0.02f32; 64];
            b[at % 64] = f32::NAN;
            let (_d, ad) = adapter(&[0.01; 128], &b);
            let e = run(&ad, ty).unwrap_err();
            assert!(
                matches!(&e, Error::NonFinite { count: 1, tensor, .. } if tensor.contains("lora_B")),
                "{e:?}"
            );
        }
    }
    let mut a = vec![0.01f32; 128];
    a[70] = 1e6;
    let (_d, ad) = adapter(&a, &[0.02; 64]);
    let e = run(&ad, OutType::F16).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { feature, .. } if feature.contains("lora_a has values beyond F16")),
        "{e:?}"
    );
    // Q8_0 holds it (lora_a's rows are 64 long; lora_b's 2 fall back to F16).
    run(&ad, OutType::Q8_0).unwrap();
}

#[test]
fn truncated_or_malformed_safetensors_are_refused() {
    let (_d, ad) = copy_adapter("plain");
    let st = ad.join("adapter_model.safetensors");
    let full = std::fs::read(&st).unwrap();
    for cut in [0, 7, 100, full.len() - 1] {
        std::fs::write(&st, &full[..cut]).unwrap();
        assert_refused(&ad, |e| {
            matches!(
                e,
                Error::Malformed {
                    format: "safetensors",
                    ..
                }
            )
        });
    }
    let mut huge = full.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&st, &huge).unwrap();
    assert_refused(&ad, |e| matches!(e, Error::Malformed { .. }));
}

#[test]
fn malformed_config_is_refused() {
    let (_d, ad) = copy_adapter("plain");
    for bad in [
        "{",
        "[]",
        r#"{"r": "eight"}"#,
        r#"{"r": 8, "lora_alpha": "x"}"#,
    ] {
        std::fs::write(ad.join("adapter_config.json"), bad).unwrap();
        assert_refused(&ad, |e| {
            matches!(
                e,
                Error::Malformed {
                    format: "adapter_config.json",
                    ..
                }
            )
        });
    }
    std::fs::remove_file(ad.join("adapter_config.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = convert(
        &ad,
        &tiny_base(),
        Some(&out.path().join("o.gguf")),
        &opts(OutType::F16),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(entries(out.path()).is_empty());
}

#[test]
fn a_without_b_and_unused_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("adapter");
    std::fs::create_dir(&ad).unwrap();
    std::fs::write(
        ad.join("adapter_model.safetensors"),
        safetensors(&[(
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
            "F32",
            [2, 64],
            f32s(&[0.01; 128]),
        )]),
    )
    .unwrap();
    std::fs::write(ad.join("adapter_config.json"), CONFIG).unwrap();
    assert_refused(
        &ad,
        |e| matches!(e, Error::Pairing { problem, .. } if problem.contains("incomplete")),
    );
}

#[test]
fn wrong_dtypes_are_refused() {
    let (_d, ad) = custom_adapter(&[], CONFIG);
    let st = ad.join("adapter_model.safetensors");
    std::fs::write(
        &st,
        safetensors(&[
            (
                "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                "I32",
                [2, 64],
                vec![0; 512],
            ),
            (
                "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
                "F32",
                [32, 2],
                f32s(&[0.02; 64]),
            ),
        ]),
    )
    .unwrap();
    assert_refused(
        &ad,
        |e| matches!(e, Error::Dtype { dtype, .. } if dtype == "I32"),
    );
}

#[test]
fn shape_mismatches_are_collected_and_reported_together() {
    // An adapter for hidden 128 on a hidden-64 base: every module is wrong.
    let mut tensors = Vec::new();
    let names: Vec<String> = (0..2)
        .flat_map(|l| {
            ["q_proj", "o_proj"].map(|m| format!("base_model.model.model.layers.{l}.self_attn.{m}"))
        })
        .collect();
    for n in &names {
        tensors.push((
            format!("{n}.lora_A.weight"),
            [2usize, 128usize],
            f32s(&[0.01; 256]),
        ));
        tensors.push((format!("{n}.lora_B.weight"), [64, 2], f32s(&[0.01; 128])));
    }
    let refs: Vec<(&str, &str, [usize; 2], Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), "F32", *s, b.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ad = dir.path().join("adapter");
    std::fs::create_dir(&ad).unwrap();
    std::fs::write(ad.join("adapter_model.safetensors"), safetensors(&refs)).unwrap();
    std::fs::write(
        ad.join("adapter_config.json"),
        r#"{"r": 2, "lora_alpha": 2}"#,
    )
    .unwrap();
    assert_refused(&ad, |e| match e {
        Error::Mismatch { problems, .. } => {
            problems.len() == 1
                && problems[0].starts_with("4 tensors expect in_features 128, the base has 64")
        }
        _ => false,
    });
}

#[test]
fn rank_disagreeing_with_config_is_refused() {
    let (_d, ad) = custom_adapter(&[], r#"{"r": 4, "lora_alpha": 4}"#);
    assert_refused(
        &ad,
        |e| matches!(e, Error::Shape { reason, .. } if reason.contains("rank 2")),
    );
}

#[test]
fn a_non_adapter_base_or_unknown_architecture_is_refused() {
    // Passing an adapter GGUF as the base.
    let dir = tempfile::tempdir().unwrap();
    let (lora, _) = convert_to(
        &tiny_adapter("plain"),
        &tiny_base(),
        dir.path(),
        OutType::F16,
    );
    let out = tempfile::tempdir().unwrap();
    let err = convert(
        &tiny_adapter("plain"),
        &lora,
        Some(&out.path().join("o.gguf")),
        &opts(OutType::F16),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err:?}");
    // A GGUF with a truncated header.
    let bytes = std::fs::read(tiny_base()).unwrap();
    let trunc = out.path().join("trunc.gguf");
    std::fs::write(&trunc, &bytes[..1000]).unwrap();
    let err = convert(
        &tiny_adapter("plain"),
        &trunc,
        Some(&out.path().join("o.gguf")),
        &opts(OutType::F16),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Malformed { format: "GGUF", .. }),
        "{err:?}"
    );
    assert_eq!(entries(out.path()), vec!["trunc.gguf"]);
}

#[test]
fn an_existing_output_survives_a_failed_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    std::fs::write(&out, b"previous").unwrap();
    let err = convert(
        &tiny_adapter("dora"),
        &tiny_base(),
        Some(&out),
        &opts(OutType::F16),
        &|_, _| {},
    );
    assert!(err.is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(entries(dir.path()), vec!["out.gguf"]);
}

#[test]
fn tensors_no_pair_uses_are_refused_unless_dropped() {
    let stray = "base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq";
    let (_d, ad) = custom_adapter(&[(stray, "F32", [1, 8], f32s(&[1.0; 8]))], CONFIG);
    assert_refused(
        &ad,
        |e| matches!(e, Error::Unsupported { feature, .. } if feature.contains(stray)),
    );
    let r = convert_dropping(&ad);
    assert_eq!(
        r.dropped
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        vec![stray]
    );
}
