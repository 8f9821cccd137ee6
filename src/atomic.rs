//! Atomic output files: write a temp file in the target directory, then
//! rename it over the target. An interrupted run leaves the target untouched.
//!
//! Temp files and directories are named `.loraguard-PID-….tmp`. A run killed
//! outright (SIGKILL, power loss) cannot remove its own, so every run first
//! removes those in its target directory whose process no longer runs
//! ([`sweep_stale`]).

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Prefix of loraguard's temp files, so stale ones are recognisable.
pub const TEMP_PREFIX: &str = ".loraguard-";

/// The prefix of this process's temp files: `.loraguard-PID-`.
fn own_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", std::process::id())
}

/// The PID in a loraguard temp file's name, if `name` is one.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    if !name.ends_with(".tmp") {
        return None;
    }
    rest.split('-').next()?.parse().ok()
}

/// Does process `pid` still run? Known only where `/proc` lists processes
/// (Linux); elsewhere every process is taken to run, so nothing is removed.
fn process_runs(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Remove the temp files and directories that interrupted loraguard runs
/// left in `dir`: those whose process (the PID in the name) no longer runs.
/// Returns what was removed; a file that cannot be removed is left.
pub fn sweep_stale(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if pid == std::process::id() || process_runs(pid) {
            continue;
        }
        let path = e.path();
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path).is_ok(),
            Ok(_) => std::fs::remove_file(&path).is_ok(),
            Err(_) => false,
        };
        if gone {
            tracing::info!("removed {} (left by an interrupted run)", path.display());
            removed.push(path);
        }
    }
    removed
}

/// The directory a target is written in.
fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An output file being written. Dropping it without [`AtomicFile::commit`]
/// deletes the temp file.
pub struct AtomicFile {
    target: PathBuf,
    temp: NamedTempFile,
}

impl AtomicFile {
    /// Create a temp file beside `target`.
    pub fn create(target: &Path) -> Result<Self> {
        let dir = parent_dir(target);
        if target.is_dir() {
            return Err(Error::Usage(format!(
                "output {} is a directory",
                target.display()
            )));
        }
        sweep_stale(&dir);
        let prefix = own_prefix();
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // A temp file is private (0600); the output is not: it gets the
        // replaced file's mode, or a new file's usual 0666 less the umask.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(match std::fs::metadata(target) {
                Ok(m) => m.permissions(),
                Err(_) => std::fs::Permissions::from_mode(0o666),
            });
        }
        let temp = builder.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
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

    /// Start writing the temp file's data back to disk in the background
    /// as it grows (see [`BackgroundSync`]).
    pub fn background_sync(&self) -> Result<BackgroundSync> {
        let file = self
            .temp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io(self.temp.path(), e))?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || -> std::io::Result<()> {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                file.sync_data()?;
            }
            Ok(())
        });
        Ok(BackgroundSync {
            tx: Some(tx),
            handle: Some(handle),
            path: self.temp.path().to_path_buf(),
        })
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

/// Data written back to disk while the file is still being written: each
/// [`BackgroundSync::poke`] asks for a sync of what is there so far (pokes
/// while one runs are coalesced), so that [`AtomicFile::commit`]'s own sync
/// only waits for the tail. For a 320 MiB output, that sync alone took
/// 0.14 s, longer than converting it (issue 22). A sync error is reported
/// by [`BackgroundSync::finish`]: the kernel reports a write-back error
/// once per open file, and the clone shares the temp file's.
pub struct BackgroundSync {
    tx: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    path: PathBuf,
}

impl BackgroundSync {
    /// Ask for the data written so far to go to disk.
    pub fn poke(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(());
        }
    }

    /// Wait for the last sync asked for; its error, if any.
    pub fn finish(mut self) -> Result<()> {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => Err(Error::io(&self.path, e)),
            Some(Err(_)) => Err(Error::Internal("background sync thread panicked".into())),
            _ => Ok(()),
        }
    }
}

/// A scratch directory for the intermediate files of an output at `target`
/// (a PEFT adapter on its way to GGUF): in the target's directory, named
/// like the temp files, so that one a killed run leaves is swept by the
/// next. Removed when dropped.
pub fn scratch_dir(target: &Path) -> Result<tempfile::TempDir> {
    let dir = parent_dir(target);
    sweep_stale(&dir);
    tempfile::Builder::new()
        .prefix(&own_prefix())
        .suffix(".tmp")
        .tempdir_in(&dir)
        .map_err(|e| Error::io(&dir, e))
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

/// Removes a half-written directory unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Refuse an output directory that exists and holds anything.
pub fn check_output_dir(out: &Path) -> Result<()> {
    if out.is_file() {
        return Err(Error::Usage(format!(
            "{} is a file; this output is a directory (or name a .gguf file)",
            out.display()
        )));
    }
    if out.is_dir() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Usage(format!(
                "output directory {} exists and is not empty",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Write a directory of `files` (name, bytes) atomically: into a fresh
/// sibling directory, renamed into place at the end. `out` must not exist or
/// be empty. The directory gets the usual mode (0777 less the umask).
pub fn write_dir_atomic(out: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    check_output_dir(out)?;
    let parent = parent_dir(out);
    sweep_stale(&parent);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = parent.join(format!("{}{nanos}.tmp", own_prefix()));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut guard = DirGuard(Some(tmp.clone()));
    for (name, bytes) in files {
        write_atomic(&tmp.join(name), bytes)?;
    }
    if out.is_dir() {
        // Empty (checked above): rename cannot replace it on every platform.
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    guard.0 = None;
    Ok(())
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

    /// Outputs are not left private like temp files: a new one gets what
    /// `File::create` gives (0666 less the umask), a replaced one keeps its mode.
    #[cfg(unix)]
    #[test]
    fn outputs_get_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let new = dir.path().join("new.gguf");
        write_atomic(&new, b"x").unwrap();
        assert_eq!(mode(&new), mode(&plain));
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&new, b"y").unwrap();
        assert_eq!(mode(&new), 0o640);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn temp_files_of_dead_runs_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A PID that no longer runs: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale_file = dir.path().join(format!("{TEMP_PREFIX}{dead}-abc123.tmp"));
        let stale_dir = dir.path().join(format!("{TEMP_PREFIX}{dead}-99.tmp"));
        std::fs::write(&stale_file, b"half").unwrap();
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("adapter_config.json"), b"{").unwrap();
        // Ours (this process runs), and files that only look similar.
        let live = dir.path().join(format!("{}live.tmp", own_prefix()));
        std::fs::write(&live, b"in progress").unwrap();
        let others = [
            ".loraguard-notapid.tmp",
            "loraguard-1-x.tmp",
            ".loraguard-1-x.txt",
        ];
        for o in others {
            std::fs::write(dir.path().join(o), b"keep").unwrap();
        }
        write_atomic(&dir.path().join("out.gguf"), b"new").unwrap();
        assert!(!stale_file.exists() && !stale_dir.exists());
        assert!(live.exists());
        for o in others {
            assert!(dir.path().join(o).exists(), "{o}");
        }
    }

    #[test]
    fn directories_appear_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        write_dir_atomic(&out, &[("a", b"1"), ("b", b"2")]).unwrap();
        assert_eq!(std::fs::read(out.join("b")).unwrap(), b"2");
        // Not over a non-empty directory, and nothing left behind.
        assert!(write_dir_atomic(&out, &[("c", b"3")]).is_err());
        assert!(!out.join("c").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failing write leaves no directory.
        let bad = dir.path().join("bad");
        assert!(write_dir_atomic(&bad, &[("sub/x", b"1")]).is_err());
        assert!(!bad.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
