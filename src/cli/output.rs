//! Logging, progress bars and error reporting for the CLI.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use loraguard::Error;

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_INTERNAL: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
/// A CI gate failed (`check --max-*`, `diff --fail-on-new-compliance`).
pub const EXIT_GATE: i32 = 3;

/// Route logs (ours and llama.cpp's) to stderr through tracing.
pub fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        // llama-cpp-2 logs llama.cpp's and ggml's messages under this target.
        (_, 0) => "warn,llama-cpp-2=off",
        (_, 1) => "info,llama-cpp-2=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// What the user sees besides data on stdout.
pub struct Ui {
    /// Progress bars: only on a terminal, never with -q or -v (so they never
    /// interleave with log lines).
    pub progress: bool,
    pub quiet: bool,
}

impl Ui {
    pub fn new(verbose: u8, quiet: bool) -> Self {
        Ui {
            progress: !quiet && verbose == 0 && std::io::stderr().is_terminal(),
            quiet,
        }
    }

    /// A progress bar over `total` steps, hidden when progress is off.
    pub fn bar(&self, msg: &'static str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({elapsed})")
                .expect("static template is valid")
                .progress_chars("=> "),
        );
        bar.set_message(msg);
        bar
    }

    /// A line for stderr, even when quiet.
    pub fn error(&self, line: &str) {
        let _ = writeln!(std::io::stderr(), "error: {line}");
    }

    /// A warning for stderr, even when quiet.
    pub fn warn(&self, line: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {line}");
    }

    /// A line for stderr unless quiet.
    pub fn say(&self, line: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// One line per kind of type fallback (same requested and written type,
    /// same reason), with a count and the first tensor; the JSON reports
    /// list every tensor.
    pub fn say_fallbacks(&self, fallbacks: &[loraguard::convert::Fallback]) {
        let mut groups: Vec<(&loraguard::convert::Fallback, usize)> = Vec::new();
        for f in fallbacks {
            match groups.iter_mut().find(|(g, _)| {
                (g.requested, g.written, &g.reason) == (f.requested, f.written, &f.reason)
            }) {
                Some((_, n)) => *n += 1,
                None => groups.push((f, 1)),
            }
        }
        for (f, n) in groups {
            let which = match n {
                1 => f.tensor.clone(),
                _ => format!("{n} tensors (such as {})", f.tensor),
            };
            self.say(&format!(
                "{which}: written as {} instead of {}: {}",
                f.written, f.requested, f.reason
            ));
        }
    }
}

/// Print an error with its causes and hint; return the exit code.
pub fn report_error(e: &anyhow::Error) -> i32 {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "error: {e}");
    for cause in e.chain().skip(1) {
        let _ = writeln!(err, "  caused by: {cause}");
    }
    if let Some(lib) = e.downcast_ref::<Error>() {
        if let Error::Mismatch { problems, .. } = lib {
            for p in problems.iter().filter(|_| problems.len() > 1) {
                let _ = writeln!(err, "  - {p}");
            }
        }
        if let Some(h) = lib.hint() {
            let _ = writeln!(err, "hint: {h}");
        }
        return if lib.is_bad_input() {
            EXIT_BAD_INPUT
        } else {
            EXIT_INTERNAL
        };
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return EXIT_OK;
        }
    }
    EXIT_INTERNAL
}

/// A `(done, total)` progress callback that drives `bar`.
pub fn progress_of(bar: &ProgressBar) -> impl Fn(usize, usize) + Sync + '_ {
    move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }
}

/// Write `value` as pretty JSON with a final newline, atomically.
/// Whether `--json` sends the report to stdout (`-`): the command then
/// prints nothing else there.
pub fn json_on_stdout(json: &Option<std::path::PathBuf>) -> bool {
    json.as_deref() == Some(std::path::Path::new("-"))
}

/// Write `value` as pretty JSON to `path` atomically, or on stdout for `-`.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    if path == std::path::Path::new("-") {
        return print_stdout(&s);
    }
    loraguard::atomic::write_atomic(path, s.as_bytes())?;
    Ok(())
}

/// Write `text` to stdout; a closed pipe is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Append `markdown` to the file `$GITHUB_STEP_SUMMARY` names, when it is
/// set (GitHub Actions renders it on the run's page). A failure to append is
/// a warning: the reports themselves were written.
pub fn step_summary(markdown: &str) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return;
    };
    use std::io::Write as _;
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{markdown}\n").as_bytes()));
    if let Err(e) = res {
        tracing::warn!(
            "could not append to $GITHUB_STEP_SUMMARY ({}): {e}",
            std::path::Path::new(&path).display()
        );
    }
}
