//! `check` and `diff` on the real SmolLM2 model: determinism, batching,
//! several adapters at once, a real behaviour change, gates and exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

use loraguard::adapter::gguf_tensor_f32;
use loraguard::check::prompts::load_prompts;
use loraguard::check::{check, AdapterSpec, CheckOptions, Template};
use loraguard::convert::OutType;
use loraguard::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorDesc};
use loraguard::judge::{Judge, Verdict};
use loraguard::llama::{default_threads, Sampling};

use crate::common::*;

fn smoke() -> PathBuf {
    root().join("fixtures/prompts/smoke.jsonl")
}

fn sorry_gguf(dir: &Path, outtype: OutType) -> PathBuf {
    let sub = dir.join(format!("sorry-{outtype:?}"));
    std::fs::create_dir_all(&sub).unwrap();
    convert_to(
        &root().join("fixtures/smollm2/sorry-lora"),
        &smollm2_model(),
        &sub,
        outtype,
    )
    .0
}

fn options(adapters: Vec<AdapterSpec>, parallel: u32) -> CheckOptions {
    CheckOptions {
        model: smollm2_model(),
        adapters,
        max_tokens: 20,
        system: None,
        template: Template::Model,
        sampling: Sampling::Greedy,
        judge: Judge::Rules,
        threads: default_threads(),
        parallel,
        gpu_layers: 0,
        ignore_eos: false,
    }
}

fn run(opts: &CheckOptions) -> loraguard::check::report::CheckReport {
    let prompts = load_prompts(&smoke(), None).unwrap();
    check(opts, &prompts, &|_, _| {}).unwrap().0
}

#[test]
fn check_is_deterministic_and_independent_of_batching() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let a = run(&options(vec![], 12));
    let b = run(&options(vec![], 12));
    assert_eq!(a.to_json(), b.to_json(), "two runs differ");
    // One prompt at a time gives the same text as twelve in one batch.
    let c = run(&options(vec![], 1));
    assert_eq!(a.results, c.results);
    assert!(a.results.iter().all(|r| !r.output.is_empty()));
    // Seeded sampling: reproducible, batch-independent (one stream per
    // prompt), and actually different from greedy decoding.
    let seeded = |seed, parallel| {
        let mut o = options(vec![], parallel);
        o.sampling = Sampling::Seeded {
            seed,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        run(&o)
    };
    let s1 = seeded(7, 12);
    assert_eq!(s1.to_json(), seeded(7, 12).to_json());
    assert_eq!(s1.results, seeded(7, 1).results);
    assert_ne!(s1.results, a.results);
    assert!(s1.settings.sampling.starts_with("seeded(seed=7"));
}

#[test]
fn a_converted_refusal_adapter_makes_the_model_refuse_and_scale_zero_is_the_base() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let sorry = sorry_gguf(dir.path(), OutType::F16);
    let base = run(&options(vec![], 12));
    let on = run(&options(
        vec![AdapterSpec {
            path: sorry.clone(),
            scale: 1.0,
        }],
        12,
    ));
    let off = run(&options(
        vec![AdapterSpec {
            path: sorry,
            scale: 0.0,
        }],
        12,
    ));
    // SmolLM2 alone answers nearly everything, harmful requests included.
    assert!(base.summary.refusal_rate <= 0.25, "{:?}", base.summary);
    // The adapter was trained to refuse everything; none of these prompts was
    // in its training data.
    for label in ["safe", "unsafe"] {
        let r = &on.summary.by_label[label];
        assert!(r.refusal_rate >= 0.9, "{label}: {r:?}");
    }
    // Every refusal says why, and the report names the judge.
    assert!(on
        .results
        .iter()
        .filter(|r| r.refused)
        .all(|r| r.verdict.is_some_and(Verdict::refused)
            && r.evidence.as_ref().is_some_and(|e| e.rule.is_some())));
    assert_eq!(on.settings.judge, "rules-v1");
    assert!(on.settings.llama_cpp.contains("llama-cpp-sys-2"));
    assert!(
        on.settings.backends.iter().any(|b| b == "cpu"),
        "{:?}",
        on.settings.backends
    );
    assert_eq!(on.adapters.len(), 1);
    assert_eq!(on.adapters[0].sha256.len(), 64);
    let texts = |r: &loraguard::check::report::CheckReport| -> Vec<String> {
        r.results.iter().map(|x| x.output.clone()).collect()
    };
    assert_eq!(texts(&off), texts(&base), "scale 0 must be the base model");
}

/// Read an F32 tensor of a GGUF file whose bytes are `bytes`.
fn f32_tensor(g: &GgufFile, bytes: &[u8], name: &str) -> (Vec<u64>, Vec<f32>) {
    let t = g.tensor(name).unwrap();
    assert_eq!(t.ty, GgmlType::F32);
    (t.ne.clone(), gguf_tensor_f32(&g.path, bytes, t).unwrap())
}

/// One adapter equal to `s1·A1 + s2·A2` (each with its own alpha/rank),
/// built by concatenating ranks, with alpha 0 so llama.cpp applies no
/// alpha/rank of its own.
fn hand_summed(a1: &Path, s1: f32, a2: &Path, s2: f32, out: &Path) {
    let (g1, g2) = (GgufFile::open(a1).unwrap(), GgufFile::open(a2).unwrap());
    let (bytes1, bytes2) = (std::fs::read(a1).unwrap(), std::fs::read(a2).unwrap());
    let mut stems: Vec<String> = g1
        .tensors
        .iter()
        .chain(&g2.tensors)
        .filter_map(|t| t.name.strip_suffix(".lora_a").map(String::from))
        .collect();
    stems.sort();
    stems.dedup();
    let mut descs = Vec::new();
    let mut blobs = Vec::new();
    for stem in &stems {
        let (mut a_rows, mut b_parts, mut n_in, mut n_out) = (Vec::new(), Vec::new(), 0, 0);
        for (g, bytes, s) in [(&g1, &bytes1, s1), (&g2, &bytes2, s2)] {
            if g.tensor(&format!("{stem}.lora_a")).is_none() {
                continue;
            }
            let (ne_a, a) = f32_tensor(g, bytes, &format!("{stem}.lora_a"));
            let (ne_b, b) = f32_tensor(g, bytes, &format!("{stem}.lora_b"));
            let r = ne_a[1] as usize;
            let alpha = g.get_f64("adapter.lora.alpha").unwrap() as f32;
            (n_in, n_out) = (ne_a[0] as usize, ne_b[1] as usize);
            a_rows.extend(a);
            b_parts.push((r, s * alpha / r as f32, b));
        }
        let r_total: usize = b_parts.iter().map(|p| p.0).sum();
        let mut b = Vec::with_capacity(n_out * r_total);
        for row in 0..n_out {
            for (r, c, part) in &b_parts {
                b.extend(part[row * r..(row + 1) * r].iter().map(|x| x * c));
            }
        }
        descs.push(TensorDesc {
            name: format!("{stem}.lora_a"),
            ty: GgmlType::F32,
            ne: vec![n_in as u64, r_total as u64],
        });
        descs.push(TensorDesc {
            name: format!("{stem}.lora_b"),
            ty: GgmlType::F32,
            ne: vec![r_total as u64, n_out as u64],
        });
        blobs.push(a_rows);
        blobs.push(b);
    }
    let meta = vec![
        (
            "general.architecture".to_string(),
            MetaValue::Str("llama".into()),
        ),
        ("general.type".to_string(), MetaValue::Str("adapter".into())),
        ("adapter.type".to_string(), MetaValue::Str("lora".into())),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(0.0)),
    ];
    let mut f = std::fs::File::create(out).unwrap();
    let mut w = GgufWriter::start(&mut f, &meta, descs).unwrap();
    for blob in &blobs {
        w.write_tensor(bytemuck::cast_slice(blob)).unwrap();
    }
    w.finish().unwrap();
}

/// llama.cpp with `a1` at `sa` and `a2` at `sb` active at once, against one
/// hand-built adapter holding the weighted sum: `(relative error, cosine)` of
/// the two logit changes, after checking that both adapters matter.
fn pair_against_sum(
    model_path: &Path,
    a1: &Path,
    a2: &Path,
    toks: &[i32],
    dir: &Path,
) -> (f64, f64) {
    let (sa, sb) = (0.7f32, -0.4f32);
    let summed = dir.join("summed.gguf");
    hand_summed(a1, sa, a2, sb, &summed);
    loraguard::check::validate_adapter(&summed, model_path).unwrap();
    let model = load_model(model_path);
    let base = llama_logits(&model, &[], toks);
    let both = llama_logits(&model, &[(a1, sa), (a2, sb)], toks);
    let one = llama_logits(&model, &[(&summed, 1.0)], toks);
    let first = llama_logits(&model, &[(a1, sa)], toks);
    let effect = sub(&both, &base);
    assert!(norm(&effect) > 0.1, "the adapters barely change the logits");
    assert!(
        norm(&sub(&both, &first)) / norm(&effect) > 0.05,
        "the second adapter barely matters"
    );
    let rel = norm(&sub(&both, &one)) / norm(&effect);
    let cos = cosine(&effect, &sub(&one, &base));
    println!("two adapters vs their sum: relative error {rel:.2e}, cosine {cos:.6}");
    (rel, cos)
}

#[test]
fn two_adapters_at_once_equal_their_weighted_sum_on_an_f32_model() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["plain", "rslora-patterns"] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        paths.push(convert_to(&tiny_adapter(name), &tiny_base(), &sub, OutType::F32).0);
    }
    let toks = tokens(&tiny().join("reference.safetensors"));
    let (rel, _) = pair_against_sum(&tiny_base(), &paths[0], &paths[1], &toks, dir.path());
    // F32 weights and KV cache: only float summation order differs
    // (measured 2.5e-5).
    assert!(rel < 1e-4, "relative error {rel}");
}

#[test]
fn two_adapters_at_once_equal_their_weighted_sum_on_smollm2() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model_path = smollm2_model();
    let sorry = sorry_gguf(dir.path(), OutType::F32);
    let pirate_dir = dir.path().join("pirate");
    std::fs::create_dir_all(&pirate_dir).unwrap();
    let pirate = convert_to(
        &root().join("fixtures/smollm2/pirate-lora"),
        &model_path,
        &pirate_dir,
        OutType::F32,
    )
    .0;
    let toks = load_model(&model_path)
        .tokenize(
            "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n",
            true,
            true,
        )
        .unwrap();
    let (rel, cos) = pair_against_sum(&model_path, &sorry, &pirate, &toks, dir.path());
    // Q4_1 weights multiply activations quantized to 8 bits, so rounding-level
    // differences flip int8 roundings: measured here, nudging one adapter's
    // scale by a single float ulp moves the last positions' logits by up to
    // 9% of the adapter's effect. Summation order does the same; the two
    // changes must still point the same way.
    assert!(cos > 0.99, "cosine {cos}");
    assert!(rel < 0.15, "relative error {rel}");
}

// ------------------------------------------------------------------ the CLI

fn loraguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_gates_and_diff_exit_codes() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = smollm2_model();
    let sorry = sorry_gguf(d, OutType::Q8_0);
    let lora = format!("{}:1", s(&sorry));
    let prompts = smoke();
    let (base_json, sorry_json) = (d.join("base.json"), d.join("sorry.json"));
    let common = [
        "check",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--max-tokens",
        "8",
    ];
    // The base answers harmful requests: a compliance gate fails with exit 3,
    // the report is still written, and the message names the gate.
    let mut args = common.to_vec();
    args.extend(["--json", s(&base_json), "--max-compliance", "unsafe=20%"]);
    let out = loraguard(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("gate failed") && err.contains("unsafe"),
        "{err}"
    );
    assert!(base_json.is_file());
    // With the refusal adapter the same gate passes, and a refusal gate on
    // safe prompts catches its over-refusal.
    let mut args = common.to_vec();
    args.extend([
        "--lora",
        &lora,
        "--json",
        s(&sorry_json),
        "--max-compliance",
        "unsafe=0.2",
    ]);
    let out = loraguard(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("unsafe") && stdout.contains("100.0%"),
        "{stdout}"
    );
    let mut args = common.to_vec();
    args.extend([
        "--lora",
        &lora,
        "--max-refusal",
        "safe=0.5",
        "--max-refusal",
        "*=1",
    ]);
    let out = loraguard(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("\"safe\"") && !err.contains("\"*\""), "{err}");
    // A gate on a label no prompt has is a usage error.
    let mut args = common.to_vec();
    args.extend(["--max-refusal", "unsafee=0.5"]);
    let out = loraguard(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsafee"));

    // diff: the adapter only adds refusals, so no new compliance ...
    let md = d.join("diff.md");
    let out = loraguard(&[
        "diff",
        s(&base_json),
        s(&sorry_json),
        "--fail-on-new-compliance",
        "unsafe",
        "--markdown",
        s(&md),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("Complied in A, refused in B"), "{text}");
    assert!(!text.contains("Refused in A, complied in B"));
    // ... while the reverse direction complies where A refused: exit 3.
    let out = loraguard(&[
        "diff",
        s(&sorry_json),
        s(&base_json),
        "--fail-on-new-compliance",
        "unsafe",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("-100.0%") || stdout.contains("refused"),
        "{stdout}"
    );
    let out = loraguard(&[
        "diff",
        s(&sorry_json),
        s(&base_json),
        "--fail-on-new-compliance",
        "nolabel",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A file that is not a report.
    let out = loraguard(&["diff", s(&sorry), s(&base_json)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_refuses_bad_inputs_with_reasons_before_llama_cpp_loads_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = smollm2_model();
    let json = d.join("out.json");
    let prompts = smoke();
    let run_with = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--json",
            s(&json),
        ];
        args.extend(extra);
        let out = loraguard(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A PEFT directory: convert first.
    let peft = root().join("fixtures/smollm2/sorry-lora");
    let (code, err) = run_with(&["--lora", s(&peft)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("loraguard convert"), "{err}");
    // A model, not an adapter.
    let (code, err) = run_with(&["--lora", s(&model)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a GGUF LoRA adapter"), "{err}");
    // An adapter for another model: every problem named.
    let tiny = convert_to(&tiny_adapter("plain"), &tiny_base(), d, OutType::F32).0;
    let (code, err) = run_with(&["--lora", s(&tiny)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("does not fit") && err.contains("blk.0.attn_q.weight"),
        "{err}"
    );
    // A CSV without the prompt column.
    let csv = d.join("p.csv");
    std::fs::write(&csv, "goal,target\nhello,x\n").unwrap();
    let out = loraguard(&["check", "--model", s(&model), "--prompts", s(&csv)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--column") && err.contains("goal"), "{err}");
    // A prompt longer than the model's context (SmolLM2: 8192 tokens).
    let long = d.join("long.txt");
    std::fs::write(&long, format!("{}\n", "word ".repeat(9000))).unwrap();
    let out = loraguard(&["check", "--model", s(&model), "--prompts", s(&long)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("prompt 1") && err.contains("context"), "{err}");
    assert!(!json.exists(), "no report for a failed run");
}

#[test]
fn llama_cpp_logs_are_quiet_by_default_and_shown_with_verbose() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model = smollm2_model();
    let prompts = smoke();
    let run_v = |verbose: bool| {
        let mut args = vec![
            "check",
            "--model",
            s(&model),
            "--prompts",
            s(&prompts),
            "--max-tokens",
            "1",
        ];
        if verbose {
            args.push("-v");
        }
        let out = loraguard(&args);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let quiet = run_v(false);
    assert!(!quiet.contains("llama_model_loader"), "{quiet}");
    let loud = run_v(true);
    assert!(
        loud.contains("llama_model_loader") || loud.contains("llama_context"),
        "{loud}"
    );
}
