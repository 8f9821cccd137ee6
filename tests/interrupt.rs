//! Interrupted runs (issue 9): `convert`, `fuse`, `safe-lora` and `merge`
//! killed with SIGKILL at seeded random points, on SmolLM2. Whenever the
//! kill lands, the output path either does not exist or holds a complete
//! file (the previous one, or the finished new one: outputs are
//! deterministic, so both equal the reference bytes); the next run removes
//! the temp files a killed run left in the target directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Kills per command.
const KILLS: usize = 8;

struct Job {
    name: &'static str,
    args: Vec<OsString>,
    out: PathBuf,
    /// A file output replaces the previous one; a directory output must
    /// not exist yet.
    replaces: bool,
}

fn command(job: &Job) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraguard"));
    c.args(&job.args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Run to completion; the wall time.
fn complete(job: &Job) -> Duration {
    let t = Instant::now();
    let out = command(job).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        job.name,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// The output's content: a file's bytes, or a directory's files by name.
fn content(p: &Path) -> Option<Vec<(String, Vec<u8>)>> {
    if p.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        Some(v)
    } else if p.exists() {
        Some(vec![(String::new(), std::fs::read(p).unwrap())])
    } else {
        None
    }
}

fn remove(p: &Path) {
    if p.is_dir() {
        std::fs::remove_dir_all(p).unwrap();
    } else if p.exists() {
        std::fs::remove_file(p).unwrap();
    }
}

/// loraguard's temp files and directories in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with(loraguard::atomic::TEMP_PREFIX))
        .collect()
}

/// splitmix64 in [0, 1).
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Kill `job` KILLS times and check the output after each; returns how many
/// kills left a temp file behind (landed mid-write).
fn kill_and_check(job: &Job, seed: u64) -> usize {
    let dir = job.out.parent().unwrap();
    let wall = complete(job);
    let reference = content(&job.out).expect("a complete run writes its output");
    let mut state = seed;
    let mut mid_write = 0;
    for i in 0..KILLS {
        // Half the kills have a previous output in place, half none.
        let had_previous = job.replaces && i % 2 == 0;
        if !had_previous {
            remove(&job.out);
        } else if !job.out.exists() {
            std::fs::write(&job.out, &reference[0].1).unwrap();
        }
        let at = wall.mul_f64(1.2 * uniform(&mut state));
        let mut child = command(job).spawn().unwrap();
        std::thread::sleep(at);
        // Child::kill sends SIGKILL on Unix: no handler runs, nothing is
        // cleaned up by the process itself.
        let _ = child.kill();
        child.wait().unwrap();
        let now = content(&job.out);
        match &now {
            None => assert!(
                !had_previous,
                "{}: kill {i} at {at:?} removed the previous output",
                job.name
            ),
            Some(c) => assert!(
                *c == reference,
                "{}: kill {i} at {at:?} left a partial or changed output: {:?} vs {:?}",
                job.name,
                c.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>(),
                reference
                    .iter()
                    .map(|(n, b)| (n, b.len()))
                    .collect::<Vec<_>>()
            ),
        }
        if !temps(dir).is_empty() {
            mid_write += 1;
        }
    }
    // The next run cleans up after the killed ones and finishes.
    if !job.replaces {
        remove(&job.out);
    }
    complete(job);
    assert_eq!(
        temps(dir),
        Vec::<String>::new(),
        "{}: temp files left after a complete run",
        job.name
    );
    assert!(content(&job.out).unwrap() == reference, "{}", job.name);
    eprintln!(
        "{}: complete run {wall:?}; {mid_write} of {KILLS} kills landed mid-write",
        job.name
    );
    mid_write
}

fn os<S: Into<OsString>>(v: Vec<S>) -> Vec<OsString> {
    v.into_iter().map(Into::into).collect()
}

#[cfg(unix)]
#[test]
fn killed_runs_leave_complete_outputs_or_none_and_no_temp_files() {
    let model = smollm2_model();
    let fix = root().join("fixtures/smollm2");
    let work = tempfile::tempdir().unwrap();
    let job = |name: &'static str, out: &str, mut args: Vec<OsString>| {
        let d = work.path().join(name);
        std::fs::create_dir(&d).unwrap();
        let out = d.join(out);
        args.push("-o".into());
        args.push(out.clone().into());
        Job {
            name,
            replaces: out.extension().is_some(),
            args,
            out,
        }
    };
    let jobs = [
        job(
            "convert",
            "safety.gguf",
            os(vec![
                "convert".into(),
                fix.join("safety-lora").into_os_string(),
                "--base".into(),
                model.clone().into_os_string(),
                "--outtype".into(),
                "q8_0".into(),
            ]),
        ),
        job(
            "fuse",
            "fused.gguf",
            os(vec![
                "fuse".into(),
                format!("{}:0.4", fix.join("task-lora").display()).into(),
                format!("{}:0.6", fix.join("safety-lora").display()).into(),
                "--method".into(),
                "cat".into(),
                "--base".into(),
                model.clone().into_os_string(),
            ]),
        ),
        // A directory output: written whole, then renamed into place.
        job(
            "safe-lora",
            "projected",
            os(vec![
                "safe-lora".into(),
                fix.join("eroding-lora").into_os_string(),
                "--base".into(),
                model.clone().into_os_string(),
                "--aligned".into(),
                fix.join("safety-lora").into_os_string(),
            ]),
        ),
        job(
            "merge",
            "merged.gguf",
            os(vec![
                "merge".into(),
                "--model".into(),
                model.clone().into_os_string(),
                "--lora".into(),
                fix.join("task-lora").into_os_string(),
                "--type".into(),
                "q8_0".into(),
            ]),
        ),
    ];
    let mut mid_write = 0;
    for (i, j) in jobs.iter().enumerate() {
        mid_write += kill_and_check(j, 0x5eed + i as u64);
    }
    // The kills are spread over each run's length, so some must have hit
    // while a temp file existed; otherwise the test proved nothing.
    assert!(mid_write >= 4, "only {mid_write} kills landed mid-write");
}
