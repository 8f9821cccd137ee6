//! The provenance keys every file loraguard writes carries: the version
//! that wrote it and, when a command line made it, that command line.
//!
//! The CLI records its arguments once, at start ([`record_command`]); a
//! library caller that does not leaves the command key out. `batch` runs
//! each row as its own process, so a row's file names the row's command.

use std::sync::OnceLock;

/// The loraguard version that wrote the file.
pub const VERSION_KEY: &str = "loraguard.version";
/// The command line that wrote the file, shell-quoted, program name
/// `loraguard`.
pub const COMMAND_KEY: &str = "loraguard.command";

static COMMAND: OnceLock<String> = OnceLock::new();

/// This crate's version.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Records the command line (the arguments after the program name). The
/// first call wins.
pub fn record_command<I, S>(args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut line = String::from("loraguard");
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a.as_ref()));
    }
    let _ = COMMAND.set(line);
}

/// The recorded command line, if any.
pub fn command_line() -> Option<&'static str> {
    COMMAND.get().map(String::as_str)
}

/// The provenance pairs a writer adds: the version, then the command line
/// when one was recorded.
pub fn pairs() -> Vec<(&'static str, String)> {
    let mut v = vec![(VERSION_KEY, version().to_string())];
    if let Some(c) = command_line() {
        v.push((COMMAND_KEY, c.to_string()));
    }
    v
}

/// [`pairs`] as GGUF metadata (string values).
pub fn gguf_metadata() -> Vec<(String, crate::gguf::MetaValue)> {
    pairs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), crate::gguf::MetaValue::Str(v)))
        .collect()
}

/// `s` as one POSIX shell word: bare when it has only safe characters,
/// single-quoted otherwise.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn words_with_spaces_or_quotes_are_single_quoted() {
        assert_eq!(
            shell_quote("fixtures/smollm2/task-lora:1"),
            "fixtures/smollm2/task-lora:1"
        );
        assert_eq!(shell_quote("my adapter"), "'my adapter'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
