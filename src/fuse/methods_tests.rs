//! The fusion methods against dense references: orthogonal, selective and the rest, on random factors.

use super::*;
use crate::linalg::lowrank::tests::random;

fn terms() -> Vec<Term> {
    vec![
        Term {
            b: random(30, 4, 1),
            a: random(4, 20, 2),
            scale: 2.0,
            weight: 0.6,
            input: 0,
        },
        Term {
            b: random(30, 4, 3),
            a: random(4, 20, 4),
            scale: 0.5,
            weight: -0.4,
            input: 1,
        },
    ]
}

/// Test settings: density 1, seed 0, input 1 protected.
fn params(rank: usize, side: Side) -> MergeParams {
    MergeParams {
        rank,
        density: 1.0,
        seed: 0,
        protect: 1,
        side,
        threshold: 0.35,
    }
}

fn dense_sum(ts: &[Term]) -> Array2<f64> {
    ts.iter().fold(Array2::zeros((30, 20)), |acc, t| {
        acc + t.b.dot(&t.a) * (t.weight * t.scale)
    })
}

fn rel(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    (x - y).mapv(|v| v * v).sum().sqrt() / y.mapv(|v| v * v).sum().sqrt()
}

#[test]
fn cat_is_the_exact_weighted_sum_and_svd_its_best_truncation() {
    let ts = terms();
    let want = dense_sum(&ts);
    let p = |rank| params(rank, Side::Column);
    let c = fuse_module(&ts, Method::Cat, "m", &p(0)).unwrap();
    assert_eq!(c.a.nrows(), 8);
    assert!(rel(&c.b.dot(&c.a), &want) < 1e-12);
    let s = fuse_module(&ts, Method::Svd, "m", &p(8)).unwrap();
    assert!(rel(&s.b.dot(&s.a), &want) < 1e-10 && s.relative_error < 1e-7);
    let s3 = fuse_module(&ts, Method::Svd, "m", &p(3)).unwrap();
    let dense_err = rel(&s3.b.dot(&s3.a), &want);
    assert!(
        (dense_err - s3.relative_error).abs() < 1e-10,
        "{dense_err} vs {}",
        s3.relative_error
    );
    // Eckart–Young: no rank-3 matrix is closer.
    let sv = crate::linalg::lowrank::small_svd(&want).unwrap().s;
    let best = (sv.iter().skip(3).map(|x| x * x).sum::<f64>()
        / sv.iter().map(|x| x * x).sum::<f64>())
    .sqrt();
    assert!((dense_err - best).abs() < 1e-10);
}

#[test]
fn linear_has_cross_terms_and_reports_them() {
    let ts = terms();
    let want = dense_sum(&ts);
    let p = params(0, Side::Column);
    let l = fuse_module(&ts, Method::Linear, "m", &p).unwrap();
    let err = rel(&l.b.dot(&l.a), &want);
    assert!(
        err > 0.1,
        "independent adapters: cross terms dominate ({err})"
    );
    assert!((err - l.relative_error).abs() < 1e-10);
    // One adapter alone: linear is exact.
    let one = fuse_module(&ts[..1], Method::Linear, "m", &p).unwrap();
    assert!(one.relative_error < 1e-12);
    // Density 1: ties of one adapter and magnitude_prune are linear.
    for m in [Method::Ties, Method::MagnitudePrune, Method::DareLinear] {
        let x = fuse_module(&ts[..1], m, "m", &p).unwrap();
        assert!(x.relative_error < 1e-12, "{m:?}");
    }
}

#[test]
fn orthogonal_removes_the_protected_subspaces_exactly() {
    let ts = terms();
    let p = |side| params(0, side);
    let (t0, t1) = (&ts[0], &ts[1]);
    let d0 = t0.b.dot(&t0.a) * (t0.weight * t0.scale);
    let d1 = t1.b.dot(&t1.a) * (t1.weight * t1.scale);
    // Dense projectors: I − QQᵀ onto B₁'s columns, I − RRᵀ onto A₁'s rows.
    let q = orth(&t1.b).unwrap();
    let r = orth(&t1.a.t().to_owned()).unwrap();
    let pc = Array2::<f64>::eye(30) - q.dot(&q.t());
    let pr = Array2::<f64>::eye(20) - r.dot(&r.t());
    for (side, want) in [
        (Side::Column, pc.dot(&d0) + &d1),
        (Side::Row, d0.dot(&pr) + &d1),
        (Side::Both, pc.dot(&d0).dot(&pr) + &d1),
    ] {
        let f = fuse_module(&ts, Method::Orthogonal, "m", &p(side)).unwrap();
        let got = f.b.dot(&f.a);
        assert!(rel(&got, &want) < 1e-12, "{side:?}");
        assert!((f.relative_error - rel(&got, &dense_sum(&ts))).abs() < 1e-10);
        // What is left of input 0 is orthogonal to the protected subspace.
        let left = &got - &d1;
        if side != Side::Row {
            assert!(q.t().dot(&left).mapv(f64::abs).sum() < 1e-10);
        }
        if side != Side::Column {
            assert!(left.dot(&r).mapv(f64::abs).sum() < 1e-10);
        }
    }
    // A module the protected input lacks is plain cat.
    let f = fuse_module(&ts[..1], Method::Orthogonal, "m", &p(Side::Both)).unwrap();
    assert!(f.relative_error < 1e-12);
}

#[test]
fn selective_adds_the_protected_input_only_below_the_threshold() {
    let ts = terms();
    let (t0, t1) = (&ts[0], &ts[1]);
    let d0 = t0.b.dot(&t0.a) * (t0.weight * t0.scale);
    // Dense: C = V·Vᵀ/‖V‖ with V the protected update; cos(C·ΔW, ΔW).
    let v = t1.b.dot(&t1.a) * t1.scale;
    let c = v.dot(&v.t()) / v.mapv(|x| x * x).sum().sqrt();
    let x = c.dot(&d0);
    let cos = (&x * &d0).sum() / (x.mapv(|t| t * t).sum().sqrt() * d0.mapv(|t| t * t).sum().sqrt());
    let sim = selective_similarity(&ts, 1).unwrap();
    assert!((sim - cos).abs() < 1e-12, "{sim} vs {cos}");
    let at = |threshold| MergeParams {
        threshold,
        ..params(0, Side::Column)
    };
    let on = fuse_module(&ts, Method::Selective, "m", &at(sim + 0.01)).unwrap();
    assert_eq!(on.selected, Some(true));
    assert!(rel(&on.b.dot(&on.a), &dense_sum(&ts)) < 1e-12);
    let off = fuse_module(&ts, Method::Selective, "m", &at(sim - 0.01)).unwrap();
    assert_eq!((off.selected, off.a.nrows()), (Some(false), 4));
    assert!(rel(&off.b.dot(&off.a), &d0) < 1e-12);
    // Without the protected input, or without any other: no criterion.
    let alone = fuse_module(&ts[1..], Method::Selective, "m", &at(1.0)).unwrap();
    assert_eq!((alone.similarity, alone.selected), (None, None));
    assert!(selective_similarity(&ts[..1], 1).is_none());
}

#[test]
fn zero_weight_terms_add_no_rank() {
    let mut ts = terms();
    ts[1].weight = 0.0;
    let p = params(0, Side::Column);
    for m in [Method::Cat, Method::Orthogonal] {
        let f = fuse_module(&ts, m, "m", &p).unwrap();
        assert_eq!(f.a.nrows(), 4, "{m:?}");
    }
    ts[0].weight = 0.0;
    let f = fuse_module(&ts, Method::Cat, "m", &p).unwrap();
    assert_eq!((f.a.nrows(), f.exact_norm), (4, 0.0));
}
