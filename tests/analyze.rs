//! `analyze` against dense references, across layouts, and ggml dequantization.

use loraguard::analyze::{analyze, AnalyzeOptions};
use loraguard::convert::OutType;
use loraguard::linalg::LowRank;
use ndarray::{s, Array2};
use ndarray_linalg::SVD;

use crate::common::*;

fn opts(
    base: Option<&std::path::Path>,
    against: Option<&std::path::Path>,
    k: usize,
) -> AnalyzeOptions {
    AnalyzeOptions {
        base: base.map(Into::into),
        against: against.map(Into::into),
        top_k: k,
        seed: 1,
        power_iters: 2,
    }
}

#[test]
fn a_peft_adapter_and_its_gguf_conversion_are_the_same_updates() {
    let dir = tempfile::tempdir().unwrap();
    let peft = tiny_adapter("rslora-patterns");
    let (gguf, _) = convert_to(&peft, &tiny_base(), dir.path(), OutType::F32);
    // Singular values do not depend on layout: PEFT (HF names, no base)
    // against GGUF (permuted Q/K rows, scale split into alpha/rank).
    let sv = |p: &std::path::Path| {
        let r = analyze(p, &opts(None, None, 8), &|_, _| {}).unwrap();
        let mut v: Vec<f64> = r
            .modules
            .iter()
            .flat_map(|m| m.spectrum.singular_values.clone())
            .collect();
        v.sort_by(f64::total_cmp);
        (r.layout, v)
    };
    let (lp, vp) = sv(&peft);
    let (lg, vg) = sv(&gguf);
    assert_eq!((lp.as_str(), lg.as_str()), ("peft", "gguf"));
    assert_eq!(vp.len(), vg.len());
    for (a, b) in vp.iter().zip(&vg) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{a} vs {b}");
    }
    // Against each other (the PEFT side mapped to GGUF layout through the
    // base): every module is the same update.
    let r = analyze(&peft, &opts(Some(&tiny_base()), Some(&gguf), 8), &|_, _| {}).unwrap();
    assert_eq!(r.modules.len(), 14);
    for m in &r.modules {
        let a = m.against.as_ref().unwrap();
        assert!(
            (a.cosine - 1.0).abs() < 1e-6,
            "{}: cosine {}",
            m.name,
            a.cosine
        );
        assert!(
            a.column_cosines.iter().all(|c| *c > 1.0 - 1e-6),
            "{}",
            m.name
        );
    }
    // A different adapter is not.
    let other = tiny_adapter("plain");
    let r = analyze(&peft, &opts(None, Some(&other), 8), &|_, _| {}).unwrap();
    assert!(r
        .modules
        .iter()
        .all(|m| m.against.as_ref().unwrap().cosine.abs() < 0.5));
}

#[test]
fn embedding_loras_line_up_with_the_embedding_matrix_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let peft = tiny_adapter("embed-head");
    let (gguf, _) = convert_to(&peft, &tiny_base(), dir.path(), OutType::F32);
    let spectra = |p: &std::path::Path| {
        let r = analyze(p, &opts(None, None, 4), &|_, _| {}).unwrap();
        r.modules
            .iter()
            .map(|m| (m.rows, m.cols, m.spectrum.singular_values.clone()))
            .collect::<Vec<_>>()
    };
    let (sp, sg) = (spectra(&peft), spectra(&gguf));
    assert_eq!(sp.len(), 4, "embedding, lm_head and two o_proj");
    let mut sp_sorted = sp.clone();
    let mut sg_sorted = sg.clone();
    sp_sorted.sort_by(|a, b| a.2[0].total_cmp(&b.2[0]));
    sg_sorted.sort_by(|a, b| a.2[0].total_cmp(&b.2[0]));
    for (a, b) in sp_sorted.iter().zip(&sg_sorted) {
        assert_eq!((a.0, a.1), (b.0, b.1), "same orientation");
        for (x, y) in a.2.iter().zip(&b.2) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{x} vs {y}");
        }
    }
    // Through the base: the embedding update is vocab×width like
    // token_embd.weight, and equals its own conversion.
    let r = analyze(&peft, &opts(Some(&tiny_base()), Some(&gguf), 4), &|_, _| {}).unwrap();
    let embd = r
        .modules
        .iter()
        .find(|m| m.name == "token_embd.weight")
        .expect("the embedding is analysed");
    let base = loraguard::gguf::GgufFile::open(&tiny_base()).unwrap();
    let ne = &base.tensor("token_embd.weight").unwrap().ne;
    assert_eq!((embd.rows, embd.cols), (ne[1] as usize, ne[0] as usize));
    assert!(embd.base.is_some());
    let a = embd.against.as_ref().unwrap();
    assert!((a.cosine - 1.0).abs() < 1e-6, "{}", a.cosine);
}

/// Dense reference: W's exact top-k subspaces, ΔW formed, every measure by definition.
#[test]
fn base_measures_match_dense_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_plain_f32(dir.path());
    // k + oversampling covers the tiny model's dimensions, so the randomized
    // SVD is exact here and any difference is a bug.
    let k = 60;
    let r = analyze(&gguf, &opts(Some(&tiny_base()), None, k), &|_, _| {}).unwrap();
    let base = loraguard::gguf::GgufFile::open(&tiny_base()).unwrap();
    let bytes = std::fs::read(tiny_base()).unwrap();
    let src = loraguard::adapter::AdapterSource::open(&gguf, None).unwrap();
    for m in &r.modules {
        let t = base.tensor(&m.name).unwrap();
        let w = loraguard::adapter::gguf_tensor_f32(&tiny_base(), &bytes, t).unwrap();
        let w = Array2::from_shape_vec((t.ne[1] as usize, t.ne[0] as usize), w)
            .unwrap()
            .mapv(f64::from);
        let dw: LowRank = src.load(&m.name).unwrap();
        let dense = dw.to_dense();
        let (u, sw, vt) = w.svd(true, true).unwrap();
        let (u, vt) = (u.unwrap(), vt.unwrap());
        let kk = k.min(sw.len());
        let uk = u.slice(s![.., ..kk]).to_owned();
        let vk = vt.slice(s![..kk, ..]).t().to_owned();
        let b = m.base.as_ref().unwrap();
        let total = dense.mapv(|x| x * x).sum();
        let ecol = uk.t().dot(&dense).mapv(|x| x * x).sum() / total;
        let erow = dense.dot(&vk).mapv(|x| x * x).sum() / total;
        assert!(
            (b.column_energy - ecol).abs() < 1e-4,
            "{}: {} vs {ecol}",
            m.name,
            b.column_energy
        );
        assert!(
            (b.row_energy - erow).abs() < 1e-4,
            "{}: {} vs {erow}",
            m.name,
            b.row_energy
        );
        // Amplification from ΔW's own dense SVD.
        let (du, ds, dvt) = dense.svd(true, true).unwrap();
        let rank = m.rank;
        let x = du
            .unwrap()
            .slice(s![.., ..rank])
            .t()
            .dot(&w)
            .dot(&dvt.unwrap().slice(s![..rank, ..]).t());
        let amp = total.sqrt() / x.mapv(|v| v * v).sum().sqrt();
        assert!(
            (b.amplification - amp).abs() < 1e-3 * amp,
            "{}: {} vs {amp}",
            m.name,
            b.amplification
        );
        // Spectrum against the dense SVD of ΔW.
        for (i, sv) in m.spectrum.singular_values.iter().enumerate() {
            assert!((sv - ds[i]).abs() < 1e-9 * ds[0], "{} σ{i}", m.name);
        }
        assert_eq!(b.column_cosines.len(), rank.min(kk));
    }
}

#[test]
fn ggml_dequantizes_every_type_it_quantizes() {
    use loraguard::gguf::GgmlType;
    let n = 256 * 8;
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
        .collect();
    let norm = data.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (ty, bound) in [
        (GgmlType::F16, 1e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q4_0, 0.15),
        (GgmlType::Q4_1, 0.15),
        (GgmlType::Q5_0, 0.08),
        (GgmlType::Q5_1, 0.08),
        (GgmlType::Q6_K, 0.05),
        (GgmlType::Q4_K, 0.15),
        (GgmlType::Q2_K, 0.6),
    ] {
        let q = loraguard::llama::ggml::quantize(ty.id(), &data, 256).unwrap();
        let back = loraguard::llama::ggml::dequantize(ty.id(), &q, n).unwrap();
        let err = data
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt()
            / norm;
        assert!(err < bound, "{ty:?}: relative error {err}");
        assert!(loraguard::llama::ggml::dequantize(ty.id(), &q[1..], n).is_err());
    }
}

#[test]
fn analyze_cli_writes_json_and_refuses_bad_inputs_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loraguard");
    let peft = tiny_adapter("plain");
    let json = dir.path().join("a.json");
    let out = std::process::Command::new(bin)
        .args([
            "analyze".as_ref(),
            peft.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["modules"].as_array().unwrap().len(), 14);
    assert!(String::from_utf8_lossy(&out.stdout).contains("model.layers.0.self_attn.q_proj"));
    // PEFT against GGUF needs the base to share one layout.
    let (gguf, _) = convert_to(&peft, &tiny_base(), dir.path(), OutType::F32);
    let refused = dir.path().join("refused.json");
    let out = std::process::Command::new(bin)
        .args([
            "analyze".as_ref(),
            peft.as_os_str(),
            "--against".as_ref(),
            gguf.as_os_str(),
            "--json".as_ref(),
            refused.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--base"));
    // A model is not an adapter.
    let out = std::process::Command::new(bin)
        .args([
            "analyze".as_ref(),
            tiny_base().as_os_str(),
            "--json".as_ref(),
            refused.as_os_str(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a LoRA adapter"));
    assert!(!refused.exists(), "no report for a refused run");
}

#[test]
fn analyze_plot_draws_svg_and_png_and_refuses_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loraguard");
    let peft = tiny_adapter("plain");
    let run = |plot: &std::path::Path, json: &std::path::Path| {
        std::process::Command::new(bin)
            .args([
                "-q".as_ref(),
                "analyze".as_ref(),
                peft.as_os_str(),
                "--base".as_ref(),
                tiny_base().as_os_str(),
                "--subspace".as_ref(),
                "4".as_ref(),
                "--plot".as_ref(),
                plot.as_os_str(),
                "--json".as_ref(),
                json.as_os_str(),
            ])
            .output()
            .unwrap()
    };
    let (svg, png, json) = (
        dir.path().join("a.svg"),
        dir.path().join("a.png"),
        dir.path().join("a.json"),
    );
    for p in [&svg, &png] {
        let out = run(p, &json);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
    for want in [
        "effective rank",
        "top-4 left singular subspace",
        "attn_q",
        "ffn_down",
    ] {
        assert!(text.contains(want), "SVG lacks {want:?}");
    }
    // Two layers × 7 kinds: one marker per module and panel (3 panels).
    assert_eq!(text.matches("<circle").count(), 14 * 3);
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (960, 80 + 3 * 280));
    // An unknown extension is refused before any work: exit 2, nothing written.
    let (bad, json2) = (dir.path().join("a.pdf"), dir.path().join("b.json"));
    let out = run(&bad, &json2);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".svg or .png"));
    assert!(!bad.exists() && !json2.exists());
}
