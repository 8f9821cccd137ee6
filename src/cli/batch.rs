//! `loraguard batch`: run a manifest's rows (this shard's), each as its own
//! `loraguard OP ARGS...` process, skipping the rows already done.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use clap::Args;
use loraguard::batch::{is_done, mark_done, read_manifest, LogLine, Row, Shard, Stamp};
use loraguard::Error;
use serde::Serialize;

use super::output::{write_json, Ui, EXIT_GATE, EXIT_OK};

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// JSON Lines, one row per command: {"id": ..., "op": "convert", "args": [...]}
    /// with op one of convert, fuse, safe-lora, merge, check, card and the
    /// arguments exactly as on the command line.
    pub manifest: PathBuf,
    /// Run only rows I, I+N, I+2N, ... (0-based): spread one manifest over N
    /// machines, e.g. `--shard $SLURM_ARRAY_TASK_ID/N` or
    /// `--shard $JOB_COMPLETION_INDEX/N`.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Rows run at once.
    #[arg(long, value_name = "J", default_value_t = 1)]
    pub jobs: usize,
    /// Append one JSON line per row here: id, op, status (ok, skipped,
    /// failed), exit code, seconds, and the error.
    #[arg(long, value_name = "LOG.jsonl")]
    pub log: Option<PathBuf>,
    /// Write the summary as JSON here (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Serialize)]
struct Summary {
    rows: usize,
    ok: usize,
    skipped: usize,
    failed: Vec<String>,
}

fn run_row(row: &Row, manifest: &std::path::Path) -> LogLine {
    let start = Instant::now();
    let line = |status: &str, exit_code: Option<i32>, error: Option<String>| LogLine {
        id: row.id.clone(),
        op: row.op.clone(),
        status: status.into(),
        exit_code,
        seconds: start.elapsed().as_secs_f64(),
        error,
    };
    let attempt = || -> Result<LogLine, Error> {
        // Inputs are hashed once: to compare with the record, and to record.
        let stamp = Stamp::of(row)?;
        if is_done(row, manifest, &stamp) {
            return Ok(line("skipped", None, None));
        }
        let exe = std::env::current_exe().map_err(|e| Error::io("loraguard", e))?;
        let out = std::process::Command::new(&exe)
            .arg("-q")
            .arg(&row.op)
            .args(&row.args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::io(&exe, e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Ok(line("failed", out.status.code(), Some(tail.join("\n"))));
        }
        mark_done(row, manifest, &stamp)?;
        Ok(line("ok", Some(0), None))
    };
    attempt().unwrap_or_else(|e| line("failed", None, Some(e.to_string())))
}

pub fn run(args: BatchArgs, ui: &Ui) -> anyhow::Result<i32> {
    if args.jobs == 0 {
        return Err(Error::Usage("--jobs must be at least 1".into()).into());
    }
    let rows = read_manifest(&args.manifest)?;
    let shard = args.shard.unwrap_or(Shard::ALL);
    let mine: VecDeque<&Row> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| shard.takes(*i))
        .map(|(_, r)| r)
        .collect();
    let total = mine.len();
    let log = match &args.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(p, e))?,
        ),
        None => None,
    };
    let queue = Mutex::new(mine);
    let results = Mutex::new((log, Vec::<LogLine>::new()));
    std::thread::scope(|s| {
        for _ in 0..args.jobs.min(total.max(1)) {
            s.spawn(|| loop {
                let Some(row) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                    break;
                };
                let line = run_row(row, &args.manifest);
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(f) = r.0.as_mut() {
                    let text = serde_json::to_string(&line).expect("a log line serializes");
                    let _ = writeln!(f, "{text}").and_then(|()| f.flush());
                }
                ui.say(&format!(
                    "{} {} ({}, {:.1} s)",
                    line.status, line.id, line.op, line.seconds
                ));
                r.1.push(line);
            });
        }
    });
    let (_, lines) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let count = |s: &str| lines.iter().filter(|l| l.status == s).count();
    let summary = Summary {
        rows: total,
        ok: count("ok"),
        skipped: count("skipped"),
        failed: lines
            .iter()
            .filter(|l| l.status == "failed")
            .map(|l| l.id.clone())
            .collect(),
    };
    if let Some(p) = &args.json {
        write_json(p, &summary)?;
    }
    for l in lines.iter().filter(|l| l.status == "failed") {
        ui.error(&format!(
            "row {} ({}) failed{}: {}",
            l.id,
            l.op,
            l.exit_code
                .map_or(String::new(), |c| format!(" with exit code {c}")),
            l.error.as_deref().unwrap_or("")
        ));
    }
    ui.say(&format!(
        "batch: {} rows, {} ok, {} skipped (done before), {} failed",
        summary.rows,
        summary.ok,
        summary.skipped,
        summary.failed.len()
    ));
    Ok(if summary.failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_GATE
    })
}
