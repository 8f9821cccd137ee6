//! Memory maps of inputs, through the ffi crate's single mapping site
//! (`loraguard_llama::mmap`, where the `unsafe` and its SAFETY comment live).

use std::fs::File;
use std::path::Path;

pub use loraguard_llama::mmap::Mmap;

use crate::error::{Error, Result};

/// Map `path` read-only.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    loraguard_llama::mmap::map_file(&file).map_err(|e| Error::io(path, e))
}
