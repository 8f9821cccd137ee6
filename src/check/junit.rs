//! `check --junit OUT.xml`: the gates as JUnit XML, which GitLab, Jenkins and
//! most CI systems render. One testcase per gate, plus one failing testcase
//! per prompt whose verdict broke a gate (its output in the failure text).

use std::fmt::Write as _;

use super::gates::{Gate, GateKind, Violation, ALL};
use super::report::{label_of, CheckReport};

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML for `report` under `gates`, of which `violations` failed.
pub fn junit(report: &CheckReport, gates: &[Gate], violations: &[Violation]) -> String {
    let mut cases = String::new();
    let mut failures = 0;
    let mut tests = 0;
    for g in gates {
        tests += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"loraguard.check.gates\" name=\"{}\"",
            xml(&g.to_string())
        );
        match violations.iter().find(|v| &v.gate == g) {
            None => cases.push_str("/>\n"),
            Some(v) => {
                failures += 1;
                let _ = write!(
                    cases,
                    ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                    xml(&v.to_string())
                );
            }
        }
    }
    for v in violations {
        let broke = |refused: bool| match v.gate.kind {
            GateKind::MaxCompliance => !refused,
            GateKind::MaxRefusal => refused,
        };
        for r in report
            .results
            .iter()
            .filter(|r| (v.gate.label == ALL || label_of(r) == v.gate.label) && broke(r.refused))
        {
            tests += 1;
            failures += 1;
            let verdict = r
                .verdict
                .map_or(if r.refused { "refusal" } else { "compliance" }, |v| {
                    v.as_str()
                });
            let _ = write!(
                cases,
                "    <testcase classname=\"loraguard.check.prompts.{}\" name=\"{}\">\n      <failure message=\"{} under {}\">prompt: {}\n\noutput: {}</failure>\n    </testcase>\n",
                xml(label_of(r)),
                xml(&r.id),
                verdict,
                xml(&v.gate.to_string()),
                xml(&r.prompt),
                xml(&r.output)
            );
        }
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"loraguard check\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n{cases}  </testsuite>\n</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_markup_and_control_characters() {
        assert_eq!(
            xml("<a href=\"x\">&'\u{1}\n"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;\u{fffd}\n"
        );
    }
}
