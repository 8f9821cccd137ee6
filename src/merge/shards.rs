//! A base model as one GGUF file or the shards of a split one
//! (`gguf-split`: `NAME-00001-of-00003.gguf`, …), with positioned reads of
//! tensor data (no map: peak memory stays at the tensors being merged, not
//! the model).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufTensor};

/// Metadata keys of a split model, dropped from a merged (unsplit) output.
pub const SPLIT_KEYS: [&str; 3] = ["split.no", "split.count", "split.tensors.count"];

/// At most this many shards (gguf-split writes five-digit indices).
pub const MAX_SHARDS: u64 = 99_999;

/// The files of a base model.
pub struct Shards {
    pub files: Vec<GgufFile>,
    handles: Vec<File>,
}

/// `NAME-0000i-of-0000n.gguf` for i in 1..=n, from the first shard's path.
fn shard_paths(first: &Path, count: u64) -> Result<Vec<PathBuf>> {
    let name = first
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let suffix = format!("-00001-of-{count:05}.gguf");
    let prefix = name.strip_suffix(&suffix).ok_or_else(|| {
        Error::Usage(format!(
            "{} is a split GGUF of {count} shards: pass its first shard, named …{suffix}",
            first.display()
        ))
    })?;
    Ok((1..=count)
        .map(|i| first.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect())
}

impl Shards {
    /// Open `path`, and the other shards when it is the first of a split model.
    pub fn open(path: &Path) -> Result<Self> {
        let first = GgufFile::open(path)?;
        let count = first.get_u64("split.count").unwrap_or(1);
        if count > MAX_SHARDS {
            return Err(Error::malformed(
                path,
                "GGUF",
                format!("split.count {count} is over {MAX_SHARDS}"),
            ));
        }
        if first.get_u64("split.no").unwrap_or(0) != 0 {
            return Err(Error::Usage(format!(
                "{} is not the first shard of its split model",
                path.display()
            )));
        }
        let mut files = vec![first];
        if count > 1 {
            for (i, p) in shard_paths(path, count)?.iter().enumerate().skip(1) {
                let f = GgufFile::open(p)?;
                if f.get_u64("split.no") != Some(i as u64) {
                    return Err(Error::malformed(
                        p,
                        "GGUF",
                        format!("expected split.no = {i}"),
                    ));
                }
                files.push(f);
            }
        }
        let handles = files
            .iter()
            .map(|f| File::open(&f.path).map_err(|e| Error::io(&f.path, e)))
            .collect::<Result<_>>()?;
        Ok(Shards { files, handles })
    }

    /// Paths, in shard order.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Is this a split model?
    pub fn is_split(&self) -> bool {
        self.files.len() > 1
    }

    /// The tensor called `name` and the index of its shard.
    pub fn tensor(&self, name: &str) -> Option<(usize, &GgufTensor)> {
        self.files
            .iter()
            .enumerate()
            .find_map(|(i, f)| f.tensor(name).map(|t| (i, t)))
    }

    /// Read `len` bytes at `offset` of tensor `t` (of shard `shard`) into `buf`.
    pub fn read(&self, shard: usize, t: &GgufTensor, offset: u64, buf: &mut [u8]) -> Result<()> {
        let path = &self.files[shard].path;
        offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= t.size)
            .ok_or_else(|| Error::Internal(format!("read past tensor {}", t.name)))?;
        read_at(&self.handles[shard], buf, t.offset + offset).map_err(|e| Error::io(path, e))
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

#[cfg(windows)]
fn read_at(f: &File, mut buf: &mut [u8], mut at: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, at)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                at += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_gguf_split() {
        let p = shard_paths(Path::new("/m/llama-00001-of-00003.gguf"), 3).unwrap();
        assert_eq!(p[2], Path::new("/m/llama-00003-of-00003.gguf"));
        assert!(shard_paths(Path::new("/m/llama.gguf"), 3).is_err());
    }
}
