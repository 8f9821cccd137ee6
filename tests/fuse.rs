//! `fuse` against dense mathematics and through llama.cpp.

use std::path::{Path, PathBuf};

use loraguard::convert::{ConvertOptions, OutType};
use loraguard::fuse::{fuse, FuseInput, FuseOptions, FuseReport, Method};
use loraguard::peft::PeftAdapter;
use ndarray::Array2;

use crate::common::*;

fn input(name: &str, weight: f64) -> FuseInput {
    FuseInput::new(tiny_adapter(name), weight)
}

fn run(inputs: &[FuseInput], out: &Path, method: Method, rank: Option<usize>) -> FuseReport {
    let opts = FuseOptions {
        rank,
        density: method.prunes().then_some(0.5),
        seed: 1,
        ..FuseOptions::new(method).gguf(tiny_base(), OutType::F32)
    };
    fuse(inputs, out, &opts, &|_, _| {}).unwrap()
}

/// Each module's s·B·A, dense, by module name.
fn updates(dir: &Path) -> Vec<(String, Array2<f64>)> {
    let a = PeftAdapter::open(dir).unwrap();
    a.pairs
        .iter()
        .map(|p| {
            let (ma, mb) = (a.matrix(&p.a).unwrap(), a.matrix(&p.b).unwrap());
            let f = |m: loraguard::matrix::Matrix| {
                Array2::from_shape_vec(
                    (m.rows, m.cols),
                    m.data.iter().map(|x| f64::from(*x)).collect(),
                )
                .unwrap()
            };
            (p.module.clone(), f(mb).dot(&f(ma)) * p.scale.scale)
        })
        .collect()
}

fn weighted_sum(inputs: &[FuseInput]) -> std::collections::BTreeMap<String, Array2<f64>> {
    let mut sum = std::collections::BTreeMap::new();
    for i in inputs {
        for (m, d) in updates(&i.path) {
            let w = i.weights.for_module(&m);
            let e = sum.entry(m).or_insert_with(|| Array2::zeros(d.dim()));
            *e = &*e + &(d * w);
        }
    }
    sum
}

fn rel(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    (x - y).mapv(|v| v * v).sum().sqrt() / y.mapv(|v| v * v).sum().sqrt().max(1e-300)
}

/// plain:0.6 + plain-b:0.4, the pair PEFT's goldens were made from.
fn golden_pair() -> [FuseInput; 2] {
    [
        input("plain", 0.6),
        FuseInput::new(root().join("fixtures/fuse/plain-b"), 0.4),
    ]
}

/// The bytes of fixtures/fuse/expected.safetensors (PEFT's merged factors).
fn golden_bytes() -> Vec<u8> {
    std::fs::read(root().join("fixtures/fuse/expected.safetensors")).unwrap()
}

/// Fuse with a density and a seed to a PEFT directory; its updates.
fn fuse_pruned(
    inputs: &[FuseInput],
    out: &Path,
    method: Method,
    rank: Option<usize>,
    density: f64,
    seed: u64,
) -> (FuseReport, Vec<(String, Array2<f64>)>) {
    let opts = FuseOptions {
        rank,
        density: Some(density),
        seed,
        ..FuseOptions::new(method)
    };
    let report = fuse(inputs, out, &opts, &|_, _| {}).unwrap();
    (report, updates(out))
}

/// The same modules, each within `tol` relative error.
fn same(x: &[(String, Array2<f64>)], y: &[(String, Array2<f64>)], tol: f64) -> bool {
    x.len() == y.len()
        && x.iter()
            .zip(y)
            .all(|((m, a), (n, b))| m == n && rel(a, b) < tol)
}

#[test]
fn cat_is_the_exact_weighted_sum_and_svd_its_best_rank_k_approximation() {
    let dir = tempfile::tempdir().unwrap();
    // Different ranks (8, and 8/4/2 by rank_pattern) and module sets.
    let inputs = [
        input("plain", 0.6),
        input("rslora-patterns", -0.4),
        input("gqa-k-only", 1.5),
    ];
    let want = weighted_sum(&inputs);
    let out = dir.path().join("cat");
    let r = run(&inputs, &out, Method::Cat, None);
    let got: std::collections::BTreeMap<_, _> = updates(&out).into_iter().collect();
    assert_eq!(got.len(), want.len());
    for (m, w) in &want {
        let e = rel(&got[m], w);
        assert!(e < 1e-6, "{m}: {e}");
    }
    let k_proj = r
        .modules
        .iter()
        .find(|m| m.module == "model.layers.0.self_attn.k_proj")
        .unwrap();
    assert_eq!((k_proj.sources, k_proj.rank), (3, 8 + 8 + 4));
    assert!(r.modules.iter().all(|m| m.relative_error == 0.0));
    // svd to rank 4: the reported error is the dense truncation error.
    let out = dir.path().join("svd");
    let r = run(&inputs, &out, Method::Svd, Some(4));
    let got: std::collections::BTreeMap<_, _> = updates(&out).into_iter().collect();
    for m in &r.modules {
        let w = &want[&m.module];
        assert_eq!(m.rank, 4);
        let dense = rel(&got[&m.module], w);
        assert!(
            (dense - m.relative_error).abs() < 1e-5,
            "{}: {dense} vs {}",
            m.module,
            m.relative_error
        );
        let s = loraguard::linalg::lowrank::small_svd(w).unwrap().s;
        let best = (s.iter().skip(4).map(|x| x * x).sum::<f64>()
            / s.iter().map(|x| x * x).sum::<f64>())
        .sqrt();
        assert!(
            (dense - best).abs() < 1e-5,
            "{}: {dense} vs Eckart–Young {best}",
            m.module
        );
    }
}

#[test]
fn linear_reports_its_cross_terms_and_needs_equal_ranks() {
    let dir = tempfile::tempdir().unwrap();
    // The same adapter twice at 0.5: the weighted sum is the adapter, but
    // PEFT's per-factor sum gives (√.5+√.5)² = 2 times it.
    let inputs = [input("plain", 0.5), input("plain", 0.5)];
    let out = dir.path().join("lin");
    let r = run(&inputs, &out, Method::Linear, None);
    let want = weighted_sum(&inputs);
    for (m, got) in updates(&out) {
        let e = rel(&got, &want[&m]);
        assert!((e - 1.0).abs() < 1e-6, "{m}: {e}");
    }
    assert!(r
        .modules
        .iter()
        .all(|m| (m.relative_error - 1.0).abs() < 1e-6));
    let opts = FuseOptions::new(Method::Linear);
    let e = fuse(
        &[input("plain", 1.0), input("rslora-patterns", 1.0)],
        &dir.path().join("x"),
        &opts,
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("equal ranks"), "{e}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn llama_cpp_with_both_adapters_active_equals_the_cat_fused_adapter() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (wa, wb) = (0.6f32, 0.4f32);
    let a = tiny_plain_f32(dir.path());
    let bdir = dir.path().join("b");
    std::fs::create_dir(&bdir).unwrap();
    let (b, _) = convert_to(
        &tiny_adapter("rslora-patterns"),
        &tiny_base(),
        &bdir,
        OutType::F32,
    );
    let fused = dir.path().join("fused.gguf");
    let r = run(
        &[
            input("plain", f64::from(wa)),
            input("rslora-patterns", f64::from(wb)),
        ],
        &fused,
        Method::Cat,
        None,
    );
    assert_eq!(r.convert.as_ref().unwrap().targets, 14);
    let model = load_model(&tiny_base());
    let toks = tokens(&tiny().join("reference.safetensors"));
    let base = llama_logits(&model, &[], &toks);
    let both = llama_logits(&model, &[(&a, wa), (&b, wb)], &toks);
    let one = llama_logits(&model, &[(&fused, 1.0)], &toks);
    let effect = sub(&both, &base);
    let err = norm(&sub(&one, &both)) / norm(&effect);
    assert!(err < 1e-4, "relative error {err:e}");
}

#[test]
fn fuse_cli_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loraguard");
    let spec = |n: &str, w: &str| format!("{}:{w}", tiny_adapter(n).display());
    let out: PathBuf = dir.path().join("f");
    let o = std::process::Command::new(bin)
        .args([
            "fuse",
            &spec("plain", "0.6"),
            &spec("gqa-k-only", "0.4"),
            "--method",
            "cat",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fused 2 adapters (cat) over 14 modules"));
    for (args, why) in [
        (vec!["--method", "ties"], "needs --density"),
        (vec!["--method", "ties_svd"], "ties_svd needs --density"),
        (vec!["--method", "svd_ties"], "unknown method"),
        (vec!["--method", "cat", "-o", "x.gguf"], "--base"),
    ] {
        let o = std::process::Command::new(bin)
            .current_dir(dir.path())
            .args(["fuse", &spec("plain", "1"), &spec("plain", "1")])
            .args(&args)
            .args(if args.contains(&"-o") {
                vec![]
            } else {
                vec!["-o", "y"]
            })
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(why),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// PEFT's merged factors for plain:0.6 + plain-b:0.4 (scripts/make-fuse-fixtures.py).
fn peft_update(golden: &safetensors::SafeTensors, method: &str, module: &str) -> Array2<f64> {
    let get = |suffix: &str| {
        let t = golden
            .tensor(&format!("{method}/{module}.{suffix}"))
            .unwrap();
        let v: Vec<f64> = t
            .data()
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        Array2::from_shape_vec((t.shape()[0], t.shape()[1]), v).unwrap()
    };
    get("B").dot(&get("A")) // the merged scaling is 1 for every type
}

#[test]
fn cat_linear_ties_and_magnitude_prune_match_peft_and_svd_fixes_its_double_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = golden_bytes();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let inputs = golden_pair();
    for method in [
        Method::Cat,
        Method::Linear,
        Method::Ties,
        Method::MagnitudePrune,
    ] {
        let out = dir.path().join(method.name());
        run(&inputs, &out, method, None);
        for (m, ours) in updates(&out) {
            let e = rel(&ours, &peft_update(&golden, method.name(), &m));
            assert!(e < 1e-5, "{} {m}: {e:e}", method.name());
        }
    }
    // PEFT's svd path scales by sᵢ twice: its result is the truncation of
    // Σ wᵢ·sᵢ²·Bᵢ·Aᵢ. Ours truncates the intended Σ wᵢ·sᵢ·Bᵢ·Aᵢ.
    let out = dir.path().join("svd");
    run(&inputs, &out, Method::Svd, Some(8));
    let sum = weighted_sum(&inputs);
    let s = 16.0 / 8.0;
    for (m, ours) in updates(&out) {
        let want = &sum[&m];
        let truncated = |x: &Array2<f64>| {
            let svd = loraguard::linalg::lowrank::small_svd(x).unwrap();
            let k = 8.min(svd.s.len());
            let us = &svd.u.slice(ndarray::s![.., ..k])
                * &svd.s.slice(ndarray::s![..k]).insert_axis(ndarray::Axis(0));
            us.dot(&svd.vt.slice(ndarray::s![..k, ..]))
        };
        assert!(rel(&ours, &truncated(want)) < 1e-5, "{m}");
        let peft = peft_update(&golden, "svd", &m);
        assert!(
            rel(&peft, &truncated(&(want * s))) < 1e-4,
            "{m}: PEFT's svd is not the double-scaled sum"
        );
        assert!(
            rel(&ours, &peft) > 0.4,
            "{m}: ours should differ from PEFT's double scaling"
        );
    }
}

#[test]
fn dense_svd_merges_match_peft_without_its_double_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = golden_bytes();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let inputs = golden_pair();
    let go = |method: Method, density: f64, seed: u64, name: &str| {
        let (report, ups) = fuse_pruned(
            &inputs,
            &dir.path().join(name),
            method,
            Some(8),
            density,
            seed,
        );
        assert!(report.modules.iter().all(|m| m.rank == 8), "{name}");
        ups
    };
    // PEFT prunes wᵢ·sᵢ·(sᵢ·Bᵢ·Aᵢ): with both scalings 2 (alpha 16, r 8)
    // magnitude pruning and sign election are unchanged and its result is
    // exactly twice the intended one.
    for method in [Method::TiesSvd, Method::MagnitudePruneSvd] {
        let ours = go(method, 0.5, 0, method.name());
        assert_eq!(ours.len(), 14);
        for (m, x) in &ours {
            let peft = peft_update(&golden, method.name(), m);
            let e = rel(&(x * 2.0), &peft);
            assert!(e < 1e-4, "{} {m}: {e:e}", method.name());
        }
    }
    // Without pruning, the dense merges are the truncated exact sum (svd).
    let same = |x: &[(String, Array2<f64>)], y: &[(String, Array2<f64>)]| same(x, y, 1e-9);
    let svd = {
        let out = dir.path().join("svd");
        run(&inputs, &out, Method::Svd, Some(8));
        updates(&out)
    };
    assert!(same(&go(Method::DareLinearSvd, 1.0, 0, "dl1"), &svd));
    assert!(same(
        &go(Method::DareTiesSvd, 1.0, 0, "dt1"),
        &go(Method::TiesSvd, 1.0, 0, "t1")
    ));
    let (a, b, c) = (
        go(Method::DareTiesSvd, 0.5, 3, "a"),
        go(Method::DareTiesSvd, 0.5, 3, "b"),
        go(Method::DareTiesSvd, 0.5, 4, "c"),
    );
    assert!(same(&a, &b), "seeded");
    assert!(!same(&a, &c), "the seed matters");
}

#[test]
fn cat_of_rslora_adapters_is_scaled_once_unlike_peft_which_inherits_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = golden_bytes();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("fixtures/fuse/expected.json")).unwrap())
            .unwrap();
    let inputs = [
        FuseInput::new(root().join("fixtures/fuse/rslora-a"), 0.6),
        FuseInput::new(root().join("fixtures/fuse/rslora-b"), 0.4),
    ];
    let out = dir.path().join("cat");
    run(&inputs, &out, Method::Cat, None);
    // rsLoRA r 4, alpha 8: each input's scaling is 8/√4 = 4, computed here
    // from the factors, not through loraguard's own config reading.
    let mut want = std::collections::BTreeMap::new();
    for i in &inputs {
        let a = PeftAdapter::open(&i.path).unwrap();
        for p in &a.pairs {
            let f = |t: &loraguard::peft::TensorSpan| {
                let m = a.matrix(t).unwrap();
                Array2::from_shape_vec(
                    (m.rows, m.cols),
                    m.data.iter().map(|x| f64::from(*x)).collect(),
                )
                .unwrap()
            };
            let d = f(&p.b).dot(&f(&p.a)) * (4.0 * i.weights.for_module(&p.module));
            let e = want
                .entry(p.module.clone())
                .or_insert_with(|| Array2::zeros(d.dim()));
            *e = &*e + &d;
        }
    }
    let peft_scaling = info["rslora_cat_scaling"].as_f64().unwrap();
    assert!(
        (peft_scaling - 8f64.sqrt()).abs() < 1e-12,
        "PEFT scales the fused adapter by √8"
    );
    let ours = updates(&out);
    assert_eq!(ours.len(), 4);
    for (m, x) in &ours {
        assert!(rel(x, &want[m]) < 1e-6, "{m}");
        // PEFT's factors hold the intended sum, but it applies them √8 times.
        let peft = peft_update(&golden, "rslora_cat", m);
        assert!(rel(&peft, &want[m]) < 1e-6, "{m}");
        assert!(rel(&(peft * peft_scaling), &want[m]) > 1.5, "{m}");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["use_rslora"], serde_json::Value::Bool(false));
}

#[test]
fn dare_is_seeded_and_at_density_one_is_linear_or_ties() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = golden_pair();
    let go = |method: Method, density: f64, seed: u64, name: &str| {
        fuse_pruned(&inputs, &dir.path().join(name), method, None, density, seed).1
    };
    let same = |x: &[(String, Array2<f64>)], y: &[(String, Array2<f64>)]| same(x, y, 1e-12);
    assert!(same(
        &go(Method::DareLinear, 1.0, 0, "d1"),
        &go(Method::Linear, 1.0, 0, "l1")
    ));
    assert!(same(
        &go(Method::DareTies, 1.0, 0, "dt1"),
        &go(Method::Ties, 1.0, 0, "t1")
    ));
    let (a, b, c) = (
        go(Method::DareLinear, 0.5, 3, "a"),
        go(Method::DareLinear, 0.5, 3, "b"),
        go(Method::DareLinear, 0.5, 4, "c"),
    );
    assert!(same(&a, &b), "seeded");
    assert!(!same(&a, &c), "the seed matters");
}

#[test]
fn gguf_and_peft_inputs_fuse_in_gguf_layout() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // plain as a GGUF LoRA (F32), rslora-patterns as PEFT: mapped through --base.
    let plain_gguf = tiny_plain_f32(dir.path());
    let mixed = [
        FuseInput::new(plain_gguf.clone(), 0.6),
        input("rslora-patterns", -0.4),
    ];
    let peft_only = [input("plain", 0.6), input("rslora-patterns", -0.4)];
    for method in [Method::Cat, Method::Svd] {
        let (x, y) = (
            dir.path().join(format!("mixed-{}.gguf", method.name())),
            dir.path().join(format!("peft-{}.gguf", method.name())),
        );
        let opts = FuseOptions {
            rank: Some(6),
            ..FuseOptions::new(method).gguf(tiny_base(), OutType::F32)
        };
        let r = fuse(&mixed, &x, &opts, &|_, _| {}).unwrap();
        assert!(r.convert.is_none(), "written directly");
        fuse(&peft_only, &y, &opts, &|_, _| {}).unwrap();
        let a = loraguard::adapter::AdapterSource::open(&x, None).unwrap();
        let b = loraguard::adapter::AdapterSource::open(&y, None).unwrap();
        assert_eq!(a.modules().len(), 14);
        for m in a.modules() {
            let (p, q) = (a.load(&m).unwrap(), b.load(&m).unwrap());
            let e = p.difference_norm(&q).unwrap() / q.norm();
            assert!(e < 1e-5, "{} {m}: {e:e}", method.name());
        }
        // llama.cpp loads the directly written file.
        let model = load_model(&tiny_base());
        let toks = tokens(&tiny().join("reference.safetensors"));
        let (lx, ly) = (
            llama_logits(&model, &[(&x, 1.0)], &toks),
            llama_logits(&model, &[(&y, 1.0)], &toks),
        );
        assert!(cosine(&lx, &ly) > 0.99999, "{}", method.name());
    }
    // Embedding LoRAs keep llama.cpp's token_embd layout.
    let edir = dir.path().join("e");
    std::fs::create_dir(&edir).unwrap();
    let (embed_gguf, _) = convert_to(
        &tiny_adapter("embed-head"),
        &tiny_base(),
        &edir,
        OutType::F32,
    );
    let opts = FuseOptions::new(Method::Cat).gguf(tiny_base(), OutType::F32);
    let (x, y) = (dir.path().join("ex.gguf"), dir.path().join("ey.gguf"));
    let ins = [FuseInput::new(embed_gguf, 0.5), input("embed-head", 0.25)];
    fuse(&ins, &x, &opts, &|_, _| {}).unwrap();
    fuse(&[input("embed-head", 0.75)], &y, &opts, &|_, _| {}).unwrap_err(); // one input is refused
    let single = [input("embed-head", 0.5), input("embed-head", 0.25)];
    fuse(&single, &y, &opts, &|_, _| {}).unwrap();
    let model = load_model(&tiny_base());
    let toks = tokens(&tiny().join("reference.safetensors"));
    let (lx, ly) = (
        llama_logits(&model, &[(&x, 1.0)], &toks),
        llama_logits(&model, &[(&y, 1.0)], &toks),
    );
    let base = llama_logits(&model, &[], &toks);
    let e = norm(&sub(&lx, &ly)) / norm(&sub(&ly, &base));
    assert!(e < 1e-4, "embedding fusion: {e:e}");
    // GGUF inputs need --base and a .gguf output.
    let opts = FuseOptions::new(Method::Cat);
    let e = fuse(&mixed, &dir.path().join("z.gguf"), &opts, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--base"), "{e}");
}

#[test]
fn fuse_refusals_say_why_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plain_gguf = tiny_plain_f32(dir.path());
    let peft = [input("plain", 0.6), input("gqa-k-only", 0.4)];
    let mixed = [FuseInput::new(plain_gguf, 0.6), input("gqa-k-only", 0.4)];
    let opts = |method, density, base: Option<PathBuf>, truncation| FuseOptions {
        density,
        base,
        convert: ConvertOptions {
            truncation,
            ..ConvertOptions::new(OutType::F32)
        },
        ..FuseOptions::new(method)
    };
    let refactor = Some(loraguard::linalg::truncate::Truncation {
        max_rank: Some(2),
        energy: None,
    });
    let cases: Vec<(&[FuseInput], &str, FuseOptions, &str)> = vec![
        (
            &peft[..1],
            "one",
            opts(Method::Cat, None, None, None),
            "at least two",
        ),
        (
            &peft,
            "ties",
            opts(Method::Ties, None, None, None),
            "needs --density",
        ),
        (
            &peft,
            "dense",
            opts(Method::Ties, Some(1.5), None, None),
            "(0, 1]",
        ),
        (
            &peft,
            "nobase.gguf",
            opts(Method::Cat, None, None, None),
            "--base",
        ),
        (
            &mixed,
            "nobase2.gguf",
            opts(Method::Cat, None, None, None),
            "--base",
        ),
        (
            &mixed,
            "dir",
            opts(Method::Cat, None, Some(tiny_base()), None),
            "name a .gguf output",
        ),
        (
            &mixed,
            "refactor.gguf",
            opts(Method::Cat, None, Some(tiny_base()), refactor),
            "--method svd --rank",
        ),
    ];
    for (inputs, out, o, why) in cases {
        let path = dir.path().join(out);
        let e = fuse(inputs, &path, &o, &|_, _| {}).unwrap_err();
        assert!(e.is_bad_input(), "{out}: {e}");
        assert!(e.to_string().contains(why), "{out}: {e}");
        assert!(!path.exists(), "{out} written");
    }
    assert!(FuseInput::parse("a:inf").is_err() && FuseInput::parse("a:NaN").is_err());
}

/// `orthogonal` (each side), `selective` (SafeMERGE, top 4 modules) and
/// per-layer / per-kind weights against dense numpy
/// (scripts/make-subspace-fixtures.py forms the d×d projectors).
#[test]
fn orthogonal_selective_and_layer_weights_match_the_dense_numpy_goldens() {
    use loraguard::fuse::{Selection, Side};
    let bytes = std::fs::read(root().join("fixtures/fuse/subspace-expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let matrix = |name: &str| {
        let view = st.tensor(name).unwrap();
        let shape = view.shape();
        Array2::from_shape_vec(
            (shape[0], shape[1]),
            view.data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
        .unwrap()
    };
    let plain = tiny_adapter("plain");
    let plain_b = root().join("fixtures/fuse/plain-b");
    let thr = Selection::Threshold(0.35);
    let cases = [
        (
            "orth_column",
            Method::Orthogonal,
            Side::Column,
            thr,
            "1",
            "1.5@1",
        ),
        ("orth_row", Method::Orthogonal, Side::Row, thr, "1", "1.5@1"),
        (
            "orth_both",
            Method::Orthogonal,
            Side::Both,
            thr,
            "1",
            "1.5@1",
        ),
        (
            "layers_cat",
            Method::Cat,
            Side::Column,
            thr,
            "1,0.5%down_proj",
            "2@0",
        ),
        (
            "sel_top4",
            Method::Selective,
            Side::Column,
            Selection::TopN(4),
            "1",
            "1",
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    for (case, method, side, selection, wt, ws) in cases {
        let inputs = [
            FuseInput::parse(&format!("{}:{wt}", plain.display())).unwrap(),
            FuseInput::parse(&format!("{}:{ws}", plain_b.display())).unwrap(),
        ];
        let out = d.path().join(case);
        let opts = FuseOptions {
            protect: Some(1),
            selection,
            side,
            ..FuseOptions::new(method)
        };
        let report = fuse(&inputs, &out, &opts, &|_, _| {}).unwrap();
        let got: std::collections::BTreeMap<String, Array2<f64>> =
            updates(&out).into_iter().collect();
        let mut n = 0;
        for (name, _) in st.tensors() {
            let Some(module) = name.strip_prefix(&format!("{case}/")) else {
                continue;
            };
            let want = matrix(&name);
            let g = got
                .get(module)
                .unwrap_or_else(|| panic!("{case}: {module} missing"));
            let e = rel(g, &want);
            assert!(e < 1e-5, "{case} {module}: relative error {e}");
            n += 1;
        }
        assert_eq!(n, 14, "{case}");
        if method == Method::Selective {
            // Each module's similarity is numpy's, and exactly 4 were selected.
            for m in &report.modules {
                let want = matrix(&format!("sel_sim/{}", m.module))[[0, 0]];
                let sim = m.similarity.unwrap();
                assert!((sim - want).abs() < 1e-9, "{}: {sim} vs {want}", m.module);
            }
            let picked = report.modules.iter().filter(|m| m.selected == Some(true));
            assert_eq!(picked.count(), 4);
        }
    }
}

#[test]
fn fuse_refuses_bad_weight_specs_and_an_all_zero_fusion() {
    assert!(FuseInput::parse("a:1@9-2").is_err());
    assert!(FuseInput::parse("a:1,x").is_err());
    let i = FuseInput::parse("dir:name").unwrap();
    assert_eq!(i.path, PathBuf::from("dir:name"));
    let d = tempfile::tempdir().unwrap();
    let inputs = [
        FuseInput::new(tiny_adapter("plain"), 0.0),
        FuseInput::parse(&format!(
            "{}:1@7-9",
            root().join("fixtures/fuse/plain-b").display()
        ))
        .unwrap(),
    ];
    let opts = FuseOptions::new(Method::Cat);
    let out = d.path().join("o");
    let e = fuse(&inputs, &out, &opts, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("weight 0"), "{e}");
    assert!(!out.exists());
}

/// `fuse` and `safe-lora` convert what they make from memory
/// (`PeftAdapter::from_bytes` + `convert_adapter`), not through a PEFT
/// directory on disk (issue 20). The in-memory adapter pairs like the one
/// opened from its directory, and converts to the same tensors and
/// metadata, `general.name` (the name it is given) aside.
#[test]
fn an_adapter_made_in_memory_converts_as_its_directory_does() {
    use loraguard::convert::{convert_adapter, ConvertOptions, OutType};
    use loraguard::gguf::GgufFile;
    use loraguard::peft::PeftAdapter;
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_adapter("gqa-k-only");
    let on_disk = PeftAdapter::open(&src).unwrap();
    let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let named = dir.path().join("gqa-k-only");
    let in_memory = PeftAdapter::from_bytes(&named, &config, bytes).unwrap();
    assert_eq!(in_memory.pairs.len(), on_disk.pairs.len());
    let h = loraguard::hash::SourceHash::default();
    assert_eq!(in_memory.source_hash(h), on_disk.source_hash(h));
    let opts = ConvertOptions::new(OutType::F32);
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    let ra = loraguard::convert::convert(&src, &tiny_base(), Some(&a), &opts, &|_, _| {}).unwrap();
    let rb = convert_adapter(&in_memory, &tiny_base(), Some(&b), &opts, &|_, _| {}).unwrap();
    assert_eq!(ra.targets, rb.targets);
    let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(
        ga.metadata, gb.metadata,
        "same metadata, general.name included (same dir name)"
    );
    let (fa, fb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(fa, fb, "byte-identical output");
    // Bad bytes are refused as a file would be, naming the adapter, and
    // convert_made then writes nothing.
    let e = PeftAdapter::from_bytes(&named, &config, b"not safetensors".to_vec()).unwrap_err();
    assert!(e.to_string().contains("gqa-k-only"), "{e}");
    let c = dir.path().join("c.gguf");
    let e = loraguard::convert::convert_made(
        &named,
        config.as_bytes(),
        b"not safetensors".to_vec(),
        &tiny_base(),
        &c,
        &opts,
    )
    .unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(!c.exists());
}
