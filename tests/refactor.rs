//! `convert --max-rank/--energy/--measure-error`: balanced SVD re-factoring
//! against dense mathematics, and the errors it reports.

use std::path::{Path, PathBuf};

use loraguard::adapter::AdapterSource;
use loraguard::convert::{convert, ConvertOptions, ConvertReport, OutType};
use loraguard::linalg::lowrank::small_svd;
use loraguard::linalg::truncate::{tail_error, Truncation};
use loraguard::linalg::LowRank;

use crate::common::*;

const ADAPTERS: &[&str] = &[
    "plain",
    "rslora-patterns",
    "gqa-k-only",
    "fan-in-fan-out",
    "embed-head",
];

pub fn refactored(
    adapter: &str,
    dir: &Path,
    file: &str,
    outtype: OutType,
    truncation: Option<Truncation>,
) -> (PathBuf, ConvertReport) {
    let out = dir.join(file);
    let opts = ConvertOptions {
        truncation,
        measure_error: true,
        ..ConvertOptions::new(outtype)
    };
    let report = convert(
        &tiny_adapter(adapter),
        &tiny_base(),
        Some(&out),
        &opts,
        &|_, _| {},
    )
    .unwrap();
    (out, report)
}

fn energy(e: f64) -> Option<Truncation> {
    Some(Truncation {
        max_rank: None,
        energy: Some(e),
    })
}

fn modules(path: &Path) -> Vec<(String, LowRank)> {
    let src = AdapterSource::open(path, None).unwrap();
    src.modules()
        .into_iter()
        .map(|m| {
            let lr = src.load(&m).unwrap();
            (m, lr)
        })
        .collect()
}

fn rel(a: &LowRank, b: &LowRank) -> f64 {
    a.difference_norm(b).unwrap() / a.norm()
}

#[test]
fn full_rank_refactoring_reproduces_every_update_with_balanced_factors() {
    for name in ADAPTERS {
        let dir = tempfile::tempdir().unwrap();
        let (plain, _) = refactored(name, dir.path(), "plain.gguf", OutType::F32, None);
        let (bal, report) = refactored(name, dir.path(), "bal.gguf", OutType::F32, energy(1.0));
        assert!(report
            .transforms
            .contains(&"balanced_svd_refactor".to_string()));
        let (x, y) = (modules(&plain), modules(&bal));
        assert_eq!(x.len(), y.len(), "{name}");
        assert!(x.len() == report.modules.len());
        for ((mx, lx), (my, ly)) in x.iter().zip(&y) {
            assert_eq!(mx, my);
            let e = rel(lx, ly);
            assert!(e < 1e-5, "{name} {mx}: {e:e}");
            assert!(ly.rank() <= lx.rank(), "{name} {mx}");
            // Balanced: component i has the same norm in B′ and A′.
            for i in 0..ly.rank() {
                let nb = ly.b.column(i).mapv(|v| v * v).sum().sqrt();
                let na = ly.a.row(i).mapv(|v| v * v).sum().sqrt();
                assert!(
                    (nb - na).abs() <= 1e-4 * nb.max(na),
                    "{name} {mx} #{i}: {nb} vs {na}"
                );
            }
        }
        for m in &report.modules {
            assert!(m.truncation_error.unwrap() < 1e-6, "{name} {m:?}");
            assert!(m.written_error.unwrap() < 1e-5, "{name} {m:?}");
        }
    }
}

#[test]
fn truncation_errors_are_exact_and_energy_keeps_the_fewest_components() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, _) = refactored("plain", dir.path(), "plain.gguf", OutType::F32, None);
    let exact = modules(&plain);
    let max2 = Some(Truncation {
        max_rank: Some(2),
        energy: None,
    });
    let (two, report) = refactored("plain", dir.path(), "two.gguf", OutType::F32, max2);
    let (e90, report90) = refactored("plain", dir.path(), "e90.gguf", OutType::F32, energy(0.9));
    for (((m, x), (_, y)), ((_, z), (stats, stats90))) in exact.iter().zip(&modules(&two)).zip(
        modules(&e90)
            .iter()
            .zip(report.modules.iter().zip(&report90.modules)),
    ) {
        assert_eq!(&stats.tensor, m);
        let dense = x.to_dense();
        let s = small_svd(&dense).unwrap().s.to_vec();
        // Rank 2: Eckart–Young's error, reported and as written.
        let want = tail_error(&s, 2);
        assert_eq!(y.rank(), 2);
        let got = (&dense - &y.to_dense()).mapv(|v| v * v).sum().sqrt() / x.norm();
        assert!((got - want).abs() < 1e-5, "{m}: dense {got} vs {want}");
        let reported = stats.truncation_error.unwrap();
        assert!(
            (reported - want).abs() < 1e-9,
            "{m}: reported {reported} vs {want}"
        );
        let written = stats.written_error.unwrap();
        assert!(
            (written - want).abs() < 1e-5,
            "{m}: written {written} vs {want}"
        );
        // Energy 0.9: the fewest components holding 90% of ‖ΔW‖².
        let total: f64 = s.iter().map(|v| v * v).sum();
        let held = |k: usize| s[..k].iter().map(|v| v * v).sum::<f64>() / total;
        let k = z.rank();
        assert_eq!(stats90.rank, k);
        assert!(held(k) >= 0.9 - 1e-12, "{m}: rank {k} holds {}", held(k));
        assert!(k == 1 || held(k - 1) < 0.9, "{m}: rank {} would do", k - 1);
        assert!(
            (stats90.truncation_error.unwrap() - (1.0 - held(k)).sqrt()).abs() < 1e-9,
            "{m}"
        );
    }
}

#[test]
fn written_error_matches_an_independent_decode_in_q8_0() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, _) = refactored("plain", dir.path(), "plain.gguf", OutType::F32, None);
    let exact = modules(&plain);
    for (file, truncation) in [("q8.gguf", None), ("q8-bal.gguf", energy(1.0))] {
        let (q8, report) = refactored("plain", dir.path(), file, OutType::Q8_0, truncation);
        // Decoded by ggml's own dequantization, compared densely.
        for ((m, x), (stats, (_, y))) in exact.iter().zip(report.modules.iter().zip(&modules(&q8)))
        {
            let dense = x.to_dense();
            let got = (&dense - &y.to_dense()).mapv(|v| v * v).sum().sqrt() / x.norm();
            let reported = stats.written_error.unwrap();
            assert!(
                (got - reported).abs() < 1e-6 + 1e-3 * got,
                "{file} {m}: {reported} vs dense {got}"
            );
            assert!(got > 1e-5 && got < 2e-2, "{file} {m}: {got}");
        }
    }
}
