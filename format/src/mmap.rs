//! The workspace's single memory-mapping site, with its SAFETY comment
//! (loraguard's main crate has no `unsafe`; llama.cpp's lives in `ffi/`).

use std::fs::File;
use std::path::Path;

pub use memmap2::Mmap;
use memmap2::MmapOptions;

use crate::error::{Error, Result};

/// Map `path` read-only, every page faulted in with one call (the inputs
/// are read whole).
///
/// loraguard writes outputs to a temp file that is renamed, never in place,
/// so no file it writes can change under a live map.
#[allow(unsafe_code)]
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and private to this process. Another
    // process truncating the file while it is mapped would be undefined
    // behaviour; that is the accepted contract of every mmap-based model
    // reader (safetensors, llama.cpp), and loraguard never modifies its inputs.
    unsafe { MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))
}
