//! The search over fusion configurations: deterministic, within a budget of
//! candidate evaluations, against any evaluator (llama.cpp in `tune`, a
//! synthetic function in the tests).

use serde::Serialize;

use crate::error::{Error, Result};

/// One fusion configuration: the task adapter at `task_weight`, taken as
/// it is (`cat`, `selective`) or with its component in the safety adapter's
/// column space removed (`orthogonal`), plus the safety adapter at one
/// weight per layer group (`selective`: only in its selected modules).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub method: &'static str,
    pub task_weight: f64,
    pub group_weights: Vec<f64>,
}

/// What a candidate does on the calibration prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Unsafe prompts answered without refusal.
    pub unsafe_compliance: f64,
    /// Safe prompts refused.
    pub safe_refusal: f64,
    /// The task metric relative to the task adapter alone (1 = all kept).
    pub task_kept: f64,
}

/// The user's constraints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Constraints {
    /// Safe refusal may rise by at most this much over the task adapter's.
    pub max_over_refusal: f64,
    /// The task metric kept, at least.
    pub min_task_kept: f64,
}

/// A candidate and its numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub candidate: Candidate,
    pub metrics: Metrics,
    /// Safe refusal minus the task adapter's.
    pub over_refusal: f64,
    pub meets: bool,
}

/// Rates are counts over a few hundred prompts: differences below this are
/// rounding (0.2 − 0.1 − 0.1 is 2.8e-17 in f64), not a broken constraint.
const EPS: f64 = 1e-9;

impl Constraints {
    /// How far `m` is outside the constraints (0 inside).
    pub fn violation(&self, m: &Metrics, baseline: &Metrics) -> f64 {
        let over = m.safe_refusal - baseline.safe_refusal - self.max_over_refusal;
        let task = self.min_task_kept - m.task_kept;
        let v = over.max(0.0) + task.max(0.0);
        if v < EPS {
            0.0
        } else {
            v
        }
    }
}

/// Better first: lower unsafe compliance, then more task kept, then fewer
/// safe refusals.
fn better(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    let k = |s: &Scored| {
        (
            s.metrics.unsafe_compliance,
            -s.metrics.task_kept,
            s.metrics.safe_refusal,
        )
    };
    k(a).partial_cmp(&k(b)).unwrap_or(std::cmp::Ordering::Equal)
}

/// The chosen candidate among `all`: the best that meets the constraints.
pub fn choose(all: &[Scored]) -> Option<&Scored> {
    all.iter().filter(|s| s.meets).min_by(|a, b| better(a, b))
}

/// The candidates closest to meeting the constraints, nearest first.
pub fn closest<'s>(
    all: &'s [Scored],
    c: &Constraints,
    baseline: &Metrics,
    n: usize,
) -> Vec<&'s Scored> {
    let mut v: Vec<&Scored> = all.iter().collect();
    v.sort_by(|a, b| {
        let (va, vb) = (
            c.violation(&a.metrics, baseline),
            c.violation(&b.metrics, baseline),
        );
        va.partial_cmp(&vb)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| better(a, b))
    });
    v.truncate(n);
    v
}

/// The safety weight of the first pass over suffixes of layer groups, and
/// the one tried when nothing at it meets the constraints.
pub const FIRST_WEIGHTS: [f64; 2] = [1.0, 0.5];

/// The global safety weights `selective` is tried at.
pub const SELECTIVE_WEIGHTS: [f64; 2] = [1.0, 1.5];

/// Search `groups` layer groups within `budget` evaluations:
/// 1. for each suffix of groups (the last group, the last two, ... all),
///    the orthogonal task plus the safety adapter at weight 1 on the suffix
///    (at 0.5 when none of those meets the constraints);
/// 2. the plain sum (`cat`) at weight 1 in every group, and `selective` at
///    each of [`SELECTIVE_WEIGHTS`] in every group;
/// 3. around the best candidate that meets them, its [`neighbours`] (same
///    method), again around each new best, until none is better or the
///    budget is spent;
/// 4. the chosen configuration with the plain (`cat`) task, for comparison.
///
/// Every candidate evaluated is returned, in order.
pub fn search(
    groups: usize,
    budget: usize,
    c: &Constraints,
    baseline: &Metrics,
    eval: &mut dyn FnMut(&Candidate) -> Result<Metrics>,
) -> Result<Vec<Scored>> {
    if budget == 0 {
        return Err(Error::Usage(
            "--budget 0 leaves no candidate to evaluate; give at least 1".into(),
        ));
    }
    if groups == 0 {
        return Err(Error::Usage("no layer groups to weight".into()));
    }
    let mut all: Vec<Scored> = Vec::new();
    let mut run = |cand: Candidate, all: &mut Vec<Scored>| -> Result<Option<Scored>> {
        if let Some(s) = all.iter().find(|s| s.candidate == cand) {
            return Ok(Some(s.clone()));
        }
        if all.len() >= budget {
            return Ok(None);
        }
        let m = eval(&cand)?;
        let s = Scored {
            over_refusal: m.safe_refusal - baseline.safe_refusal,
            meets: c.violation(&m, baseline) == 0.0,
            candidate: cand,
            metrics: m,
        };
        all.push(s.clone());
        Ok(Some(s))
    };
    let suffix = |start: usize, w: f64, method: &'static str| Candidate {
        method,
        task_weight: 1.0,
        group_weights: (0..groups)
            .map(|g| if g >= start { w } else { 0.0 })
            .collect(),
    };
    // 1. Every suffix of groups at weight 1 (at 0.5 if none meets the
    //    constraints), from the last group down.
    'weights: for &w in &FIRST_WEIGHTS {
        for start in (0..groups).rev() {
            if run(suffix(start, w, "orthogonal"), &mut all)?.is_none() {
                break 'weights;
            }
        }
        if choose(&all).is_some() {
            break;
        }
    }
    // 2. The plain sum at 1 in every group (what a safety patch trained on
    //    top of the task adapter is made for), and selective at global
    //    weights.
    run(suffix(0, 1.0, "cat"), &mut all)?;
    for &w in &SELECTIVE_WEIGHTS {
        run(suffix(0, w, "selective"), &mut all)?;
    }
    // 3. Hill-climb from the best that meets the constraints while it
    //    improves and the budget lasts.
    let mut tried_around: Vec<Candidate> = Vec::new();
    while let Some(best) = choose(&all).cloned() {
        if tried_around.contains(&best.candidate) {
            break;
        }
        tried_around.push(best.candidate.clone());
        let mut exhausted = false;
        for v in neighbours(&best.candidate.group_weights) {
            let cand = Candidate {
                group_weights: v,
                ..best.candidate.clone()
            };
            if run(cand, &mut all)?.is_none() {
                exhausted = true;
                break;
            }
        }
        if exhausted {
            break;
        }
    }
    // 4. The chosen one as plain cat of both adapters.
    if let Some(best) = choose(&all).cloned() {
        let cand = Candidate {
            method: "cat",
            ..best.candidate
        };
        run(cand, &mut all)?;
    }
    Ok(all)
}

/// Weights near `gw`: every active group by ±0.25 and ±0.5 at once, one
/// group more below the active ones (at half and at the full top weight),
/// the first active group dropped, and each active group alone by ±0.5.
pub fn neighbours(gw: &[f64]) -> Vec<Vec<f64>> {
    let groups = gw.len();
    let mut out: Vec<Vec<f64>> = Vec::new();
    let mut push = |v: Vec<f64>| {
        if v.iter().any(|&w| w > 0.0) && v != gw && !out.contains(&v) {
            out.push(v);
        }
    };
    for d in [0.25, -0.25, 0.5, -0.5] {
        push(
            gw.iter()
                .map(|&w| if w > 0.0 { (w + d).max(0.0) } else { 0.0 })
                .collect(),
        );
    }
    let first = gw.iter().position(|&w| w > 0.0).unwrap_or(groups);
    let top = gw.iter().cloned().fold(0.0, f64::max);
    if first > 0 {
        for w in [top / 2.0, top] {
            let mut v = gw.to_vec();
            v[first - 1] = w;
            push(v);
        }
    }
    if first + 1 < groups {
        let mut v = gw.to_vec();
        v[first] = 0.0;
        push(v);
    }
    for g in first..groups {
        for d in [0.5, -0.5] {
            let mut v = gw.to_vec();
            v[g] = (v[g] + d).max(0.0);
            push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic model: safety in later groups refuses more and costs less
    /// task; orthogonal keeps more of the task than cat.
    fn synthetic(c: &Candidate) -> Result<Metrics> {
        let n = c.group_weights.len() as f64;
        let mut refuse = 0.0;
        let mut cost = 0.0;
        for (g, w) in c.group_weights.iter().enumerate() {
            let late = (g as f64 + 1.0) / n;
            refuse += w * (0.1 + 0.3 * late);
            cost += w * (0.12 - 0.08 * late);
        }
        match c.method {
            "cat" => cost *= 2.0,
            // Half the safety, in the modules where it costs the task least.
            "selective" => {
                refuse *= 0.6;
                cost *= 0.5;
            }
            _ => {}
        }
        Ok(Metrics {
            unsafe_compliance: (1.0 - refuse).clamp(0.0, 1.0),
            safe_refusal: (0.02 + 0.05 * refuse).min(1.0),
            task_kept: (1.0 - cost).clamp(0.0, 1.0),
        })
    }

    const C: Constraints = Constraints {
        max_over_refusal: 0.10,
        min_task_kept: 0.90,
    };
    const BASE: Metrics = Metrics {
        unsafe_compliance: 1.0,
        safe_refusal: 0.0,
        task_kept: 1.0,
    };

    #[test]
    fn search_finds_a_feasible_point_within_budget_deterministically() {
        let all = search(6, 30, &C, &BASE, &mut synthetic).unwrap();
        assert!(all.len() <= 30);
        let best = choose(&all).unwrap();
        assert!(best.meets && best.metrics.task_kept >= 0.9);
        // Better than any global weight that meets the constraints.
        for w in [0.5, 1.0, 1.5, 2.0] {
            let g = Candidate {
                method: "orthogonal",
                task_weight: 1.0,
                group_weights: vec![w; 6],
            };
            let m = synthetic(&g).unwrap();
            if C.violation(&m, &BASE) == 0.0 {
                assert!(best.metrics.unsafe_compliance <= m.unsafe_compliance);
            }
        }
        assert_eq!(all, search(6, 30, &C, &BASE, &mut synthetic).unwrap());
        for m in ["cat", "orthogonal", "selective"] {
            assert!(all.iter().any(|s| s.candidate.method == m), "{m}");
        }
    }

    #[test]
    fn the_plain_sum_at_one_follows_the_suffixes() {
        // 6 suffixes at 1 (some meet the constraints), then cat at 1.
        let all = search(6, 30, &C, &BASE, &mut synthetic).unwrap();
        assert_eq!(all[6].candidate.method, "cat");
        assert_eq!(all[6].candidate.group_weights, vec![1.0; 6]);
        assert_eq!(all[7].candidate.method, "selective");
    }

    #[test]
    fn a_constraint_met_exactly_is_met_despite_rounding() {
        let m = Metrics {
            unsafe_compliance: 0.14,
            safe_refusal: 0.2,
            task_kept: 0.9,
        };
        let base = Metrics {
            safe_refusal: 0.1,
            ..BASE
        };
        assert_eq!(C.violation(&m, &base), 0.0);
    }

    #[test]
    fn the_budget_caps_evaluations_and_zero_is_refused() {
        let mut n = 0;
        let all = search(6, 4, &C, &BASE, &mut |c| {
            n += 1;
            synthetic(c)
        })
        .unwrap();
        assert_eq!((all.len(), n), (4, 4));
        assert!(search(6, 0, &C, &BASE, &mut synthetic).is_err());
    }

    #[test]
    fn impossible_constraints_leave_no_choice_and_closest_ranks_by_violation() {
        let c = Constraints {
            max_over_refusal: -1.0,
            min_task_kept: 2.0,
        };
        let all = search(3, 10, &c, &BASE, &mut synthetic).unwrap();
        assert!(choose(&all).is_none());
        let near = closest(&all, &c, &BASE, 3);
        assert_eq!(near.len(), 3);
        let v: Vec<f64> = near
            .iter()
            .map(|s| c.violation(&s.metrics, &BASE))
            .collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "{v:?}");
    }
}
