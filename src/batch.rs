//! `loraguard batch`: many commands from one manifest, idempotent and
//! resumable, sharded over machines by index.
//!
//! A manifest is JSON Lines, one row per command:
//! `{"id": "a", "op": "convert", "args": ["DIR", "--base", "B.gguf", "-o", "a.gguf"]}`,
//! the arguments exactly as on the command line. A row's outputs are the
//! values of `-o`/`--output` and of `--json` (unless `-`); its inputs are
//! every other argument that names an existing file or directory. After a
//! row succeeds, a stamp (`MANIFEST.state/ID.json`: the arguments and the
//! SHA-256 of every input) is written atomically; a row whose stamp matches
//! and whose outputs exist is skipped. Every command writes its outputs
//! atomically, so a run killed mid-row leaves no partial file and no stamp:
//! the next run redoes that row and skips the finished ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest manifest read (bytes).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The commands a row may run.
pub const OPS: [&str; 6] = ["convert", "fuse", "safe-lora", "merge", "check", "card"];

/// One manifest row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub id: String,
    pub op: String,
    pub args: Vec<String>,
}

/// Which rows this machine runs: every `n`-th, from `index` (`--shard I/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parse `I/N` with 0 ≤ I < N.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::Usage(format!("--shard {s:?}: expected I/N with 0 <= I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The whole manifest.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn takes(&self, row_index: usize) -> bool {
        row_index % self.count == self.index
    }
}

/// Read and validate a manifest: every row parses, its op is one of
/// [`OPS`], ids are unique and safe as file names.
pub fn read_manifest(path: &Path) -> Result<Vec<Row>> {
    let text = crate::capped::read_text(path, MAX_MANIFEST_BYTES, "batch manifest")?;
    let mut rows = Vec::new();
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| {
            Error::malformed(path, "batch manifest", format!("line {}: {why}", n + 1))
        };
        let row: Row = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let safe = !row.id.is_empty()
            && row.id.len() <= 128
            && !row.id.starts_with('.')
            && row
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !safe {
            return Err(bad(format!(
                "id {:?} must be 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)",
                row.id
            )));
        }
        if !OPS.contains(&row.op.as_str()) {
            return Err(bad(format!(
                "op {:?} is not one of {}",
                row.op,
                OPS.join(", ")
            )));
        }
        if !ids.insert(row.id.clone()) {
            return Err(bad(format!("id {:?} appears twice", row.id)));
        }
        rows.push(row);
    }
    Ok(rows)
}

impl Row {
    /// The paths the row writes.
    pub fn outputs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            if matches!(flag, "-o" | "--output" | "--json") {
                if let Some(v) = inline.or_else(|| it.next().cloned()) {
                    if v != "-" {
                        out.push(PathBuf::from(v));
                    }
                }
            }
        }
        out
    }

    /// The existing files and directories the row reads (every argument
    /// naming one, outputs excluded), with their SHA-256.
    pub fn input_hashes(&self) -> Result<BTreeMap<String, String>> {
        let outputs = self.outputs();
        let mut hashes = BTreeMap::new();
        for a in &self.args {
            let v = a
                .split_once('=')
                .filter(|(f, _)| f.starts_with("--"))
                .map_or(a.as_str(), |(_, v)| v);
            let p = Path::new(v);
            if outputs.iter().any(|o| o == p) || !p.exists() {
                continue;
            }
            hashes.insert(v.to_string(), hash_path(p)?);
        }
        Ok(hashes)
    }

    /// Where the row's stamp lives, for a manifest at `manifest`.
    pub fn stamp_path(&self, manifest: &Path) -> PathBuf {
        state_dir(manifest).join(format!("{}.json", self.id))
    }
}

/// `MANIFEST.state/`, beside the manifest.
pub fn state_dir(manifest: &Path) -> PathBuf {
    let mut name = manifest.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    manifest.with_file_name(name)
}

/// SHA-256 of a file, or of a directory's files (names and contents, sorted).
fn hash_path(p: &Path) -> Result<String> {
    if p.is_file() {
        let map = crate::mmap::map_file(p)?;
        return Ok(crate::hash::sha256_hex(&map));
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut all = String::new();
    for f in names {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        all.push_str(&format!("{name}:{}\n", hash_path(&f)?));
    }
    Ok(crate::hash::sha256_hex(all.as_bytes()))
}

/// What a stamp records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    pub op: String,
    pub args: Vec<String>,
    pub inputs: BTreeMap<String, String>,
}

impl Stamp {
    pub fn of(row: &Row) -> Result<Stamp> {
        Ok(Stamp {
            op: row.op.clone(),
            args: row.args.clone(),
            inputs: row.input_hashes()?,
        })
    }
}

/// Is `row` done: its recorded stamp is `now` (the row's stamp as its
/// inputs stand, [`Stamp::of`]), and its outputs exist?
pub fn is_done(row: &Row, manifest: &Path, now: &Stamp) -> bool {
    let Ok(text) = std::fs::read_to_string(row.stamp_path(manifest)) else {
        return false;
    };
    let Ok(old) = serde_json::from_str::<Stamp>(&text) else {
        return false;
    };
    row.outputs().iter().all(|o| o.exists()) && old == *now
}

/// Record `row` as done (atomically).
pub fn mark_done(row: &Row, manifest: &Path, stamp: &Stamp) -> Result<()> {
    let dir = state_dir(manifest);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let text = serde_json::to_string_pretty(stamp).map_err(|e| Error::Internal(e.to_string()))?;
    crate::atomic::write_atomic(&row.stamp_path(manifest), text.as_bytes())
}

/// One line of the batch log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub id: String,
    pub op: String,
    /// `ok`, `skipped` or `failed`.
    pub status: String,
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_rows() {
        let (a, b) = (Shard::parse("0/2").unwrap(), Shard::parse("1/2").unwrap());
        for i in 0..10 {
            assert!(a.takes(i) ^ b.takes(i));
        }
        for bad in ["2/2", "1/0", "x", "1/", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outputs_are_dash_o_output_and_json_files() {
        let r = Row {
            id: "a".into(),
            op: "check".into(),
            args: [
                "--base",
                "m.gguf",
                "-o",
                "x.gguf",
                "--json=r.json",
                "--output",
                "y",
                "--json",
                "-",
            ]
            .map(String::from)
            .to_vec(),
        };
        assert_eq!(r.outputs(), ["x.gguf", "r.json", "y"].map(PathBuf::from));
    }
}
