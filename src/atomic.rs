//! Atomic output files: write a temp file in the target directory, then
//! rename it over the target. An interrupted run leaves the target untouched.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Prefix of loraguard's temp files, so stale ones are recognisable.
pub const TEMP_PREFIX: &str = ".loraguard-";

/// An output file being written. Dropping it without [`AtomicFile::commit`]
/// deletes the temp file.
pub struct AtomicFile {
    target: PathBuf,
    temp: NamedTempFile,
}

impl AtomicFile {
    /// Create a temp file beside `target`.
    pub fn create(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if target.is_dir() {
            return Err(Error::Usage(format!(
                "output {} is a directory",
                target.display()
            )));
        }
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
        })
    }

    /// A buffered writer over the temp file.
    pub fn writer(&mut self) -> BufWriter<&mut File> {
        // Small buffer: tensor-sized writes bypass it and go straight to the file.
        BufWriter::with_capacity(256 << 10, self.temp.as_file_mut())
    }

    /// The temp file itself, for seeks and patches.
    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Flush to disk and rename over the target.
    pub fn commit(self) -> Result<()> {
        let AtomicFile { target, temp } = self;
        let tpath = temp.path().to_path_buf();
        temp.as_file()
            .sync_all()
            .map_err(|e| Error::io(&tpath, e))?;
        temp.persist(&target)
            .map_err(|e| Error::io(&target, e.error))?;
        Ok(())
    }
}

/// Write `bytes` to `target` atomically.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(target)?;
    {
        let mut w = f.writer();
        w.write_all(bytes).map_err(|e| Error::io(target, e))?;
        w.flush().map_err(|e| Error::io(target, e))?;
    }
    f.file().rewind().map_err(|e| Error::io(target, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_file_leaves_no_trace_and_keeps_the_old_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.gguf");
        std::fs::write(&target, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.writer().write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
