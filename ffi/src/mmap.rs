//! The workspace's single memory-mapping site (loraguard's crate has no
//! `unsafe`; this one holds it with its SAFETY comment).

use std::fs::File;
use std::io;

pub use memmap2::Mmap;
use memmap2::MmapOptions;

/// Map `file` read-only, every page faulted in with one call (the inputs
/// are read whole).
///
/// loraguard writes outputs to a temp file that is renamed, never in place,
/// so no file it writes can change under a live map.
pub fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process. Another
    // process truncating the file while it is mapped would be undefined
    // behaviour; that is the accepted contract of every mmap-based model
    // reader (safetensors, llama.cpp), and loraguard never modifies its inputs.
    unsafe { MmapOptions::new().populate().map(file) }
}
