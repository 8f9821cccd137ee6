//! `loraguard batch` (issue 21, item 5): a run killed mid-manifest and run
//! again completes every output and redoes nothing finished; shards 0/2 and
//! 1/2 together run each row exactly once; a failing row does not stop the
//! others and makes the batch exit 3.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loraguard::gguf::GgufFile;

use crate::common::*;

fn convert_row(id: &str, adapter: &str, out: &Path) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "op": "convert",
        "args": [tiny_adapter(adapter), "--base", tiny_base(), "--outtype", "f16", "-o", out],
    })
}

fn write_manifest(dir: &Path, rows: &[serde_json::Value]) -> PathBuf {
    let p = dir.join("manifest.jsonl");
    let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p
}

fn batch(manifest: &Path, extra: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .arg("batch")
        .arg(manifest)
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn statuses(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_string(),
                l["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn shards_together_run_every_row_exactly_once_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let adapters = [
        "plain",
        "gqa-k-only",
        "embed-head",
        "rslora-patterns",
        "plain",
    ];
    let rows: Vec<_> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| convert_row(&format!("r{i}"), a, &out.join(format!("r{i}.gguf"))))
        .collect();
    let m = write_manifest(dir.path(), &rows);
    let (l0, l1) = (dir.path().join("s0.jsonl"), dir.path().join("s1.jsonl"));
    for (shard, log) in [("0/2", &l0), ("1/2", &l1)] {
        let (code, err) = batch(&m, &["--shard", shard, "--log", log.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    let ids = |p: &Path| -> BTreeSet<String> {
        statuses(&log_lines(p))
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    };
    let (a, b) = (ids(&l0), ids(&l1));
    assert!(a.is_disjoint(&b), "{a:?} {b:?}");
    let all: BTreeSet<String> = a.union(&b).cloned().collect();
    assert_eq!(all, (0..5).map(|i| format!("r{i}")).collect());
    assert_eq!(a, ["r0", "r2", "r4"].map(String::from).into());
    for i in 0..5 {
        GgufFile::open(&out.join(format!("r{i}.gguf"))).unwrap();
    }
    // The whole manifest again: all done.
    let l = dir.path().join("all.jsonl");
    let (code, err) = batch(&m, &["--jobs", "2", "--log", l.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        statuses(&log_lines(&l)).iter().all(|(_, s)| s == "skipped"),
        "{err}"
    );
    // A changed input is redone.
    let rows2: Vec<_> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 1 { "plain" } else { a };
            convert_row(&format!("r{i}"), a, &out.join(format!("r{i}.gguf")))
        })
        .collect();
    let m = write_manifest(dir.path(), &rows2);
    let l = dir.path().join("changed.jsonl");
    let (code, err) = batch(&m, &["--log", l.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let st = statuses(&log_lines(&l));
    assert_eq!(st.iter().filter(|(_, s)| s == "ok").count(), 1, "{st:?}");
    assert!(st.contains(&("r1".into(), "ok".into())), "{st:?}");
}

/// The pids whose parent is `pid` (Linux /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(pid) {
            out.push(n);
        }
    }
    out
}

#[test]
fn a_killed_batch_resumes_without_redoing_finished_rows() {
    let _g = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let slow = serde_json::json!({
        "id": "slow-check",
        "op": "check",
        "args": ["--base", smollm2_model(), "--prompts", root().join("fixtures/prompts/smoke.jsonl"),
                 "--max-tokens", "48", "--json", out.join("check.json")],
    });
    let rows = vec![
        convert_row("first", "plain", &out.join("first.gguf")),
        slow,
        convert_row("third", "gqa-k-only", &out.join("third.gguf")),
    ];
    let m = write_manifest(dir.path(), &rows);
    let log = dir.path().join("log.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loraguard"))
        .arg("batch")
        .arg(&m)
        .args(["--log", log.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the first row is logged, while the slow check runs: SIGKILL the
    // batch and the row it runs (found by its parent pid in /proc), each
    // by its own pid.
    let start = Instant::now();
    while log_lines(&log).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the first row never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The slow row has started when the batch has a child again.
    let rows_running = loop {
        let c = children_of(child.id());
        if !c.is_empty() {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the slow row never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    let _ = child.wait();
    for pid in rows_running {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(statuses(&log_lines(&log)), [("first".into(), "ok".into())]);
    assert!(
        !out.join("check.json").exists(),
        "the killed row wrote nothing"
    );
    let first_mtime = std::fs::metadata(out.join("first.gguf"))
        .unwrap()
        .modified()
        .unwrap();

    let (code, err) = batch(&m, &["--log", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let st = statuses(&log_lines(&log));
    assert_eq!(
        st[1..],
        [
            ("first".into(), "skipped".into()),
            ("slow-check".into(), "ok".into()),
            ("third".into(), "ok".into())
        ]
    );
    assert_eq!(
        std::fs::metadata(out.join("first.gguf"))
            .unwrap()
            .modified()
            .unwrap(),
        first_mtime,
        "the finished row was not redone"
    );
    GgufFile::open(&out.join("first.gguf")).unwrap();
    GgufFile::open(&out.join("third.gguf")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("check.json")).unwrap()).unwrap();
    assert_eq!(report["results"].as_array().unwrap().len(), 12);
    // Nothing partial anywhere: only the outputs.
    let mut names = entries(&out);
    names.sort();
    assert_eq!(names, ["check.json", "first.gguf", "third.gguf"]);
}

#[test]
fn a_failing_row_is_reported_and_the_rest_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let rows = vec![
        serde_json::json!({"id": "bad", "op": "convert", "args": [dir.path().join("missing"), "--base", tiny_base(), "-o", out.join("bad.gguf")]}),
        convert_row("good", "plain", &out.join("good.gguf")),
    ];
    let m = write_manifest(dir.path(), &rows);
    let log = dir.path().join("log.jsonl");
    let (code, err) = batch(&m, &["--log", log.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("row bad (convert) failed with exit code 2"),
        "{err}"
    );
    let lines = log_lines(&log);
    assert_eq!(lines[0]["status"], "failed");
    assert_eq!(lines[0]["exit_code"], 2);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("error:"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["status"], "ok");
    assert!(out.join("good.gguf").exists());
}

#[test]
fn a_malformed_manifest_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    for (text, why) in [
        (r#"{"id": "a", "op": "tune", "args": []}"#, "op"),
        (r#"{"id": "../x", "op": "convert", "args": []}"#, "id"),
        ("{\"id\": \"a\", \"op\": \"convert\", \"args\": []}\n{\"id\": \"a\", \"op\": \"card\", \"args\": []}", "twice"),
        (r#"{"id": "a", "op": "convert"}"#, "args"),
    ] {
        let m = dir.path().join("m.jsonl");
        std::fs::write(&m, text).unwrap();
        let (code, err) = batch(&m, &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(why), "{text}: {err}");
        assert!(
            !loraguard::batch::state_dir(&m).exists(),
            "{text}: no row ran"
        );
    }
}
