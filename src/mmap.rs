//! The crate's single memory-mapping site.

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};

/// Map `path` read-only.
///
/// Outputs are never written in place (they go to a temp file that is renamed),
/// so no file loraguard itself writes can change under a live map.
#[allow(unsafe_code)]
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and private to this process. Another process
    // truncating the file while it is mapped would be undefined behaviour; that
    // is the accepted contract of every mmap-based model reader (safetensors,
    // llama.cpp), and loraguard never modifies its inputs.
    // populate: fault every page in with one call (the inputs are read whole).
    unsafe { MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, e))
}
