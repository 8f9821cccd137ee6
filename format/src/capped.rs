//! Reading small input files whole, with an explicit cap on their size.

use std::path::Path;

use crate::error::{Error, Result};

/// The bytes of `path`, refused as a malformed `format` when larger than `cap`.
pub fn read_capped(path: &Path, cap: u64, format: &'static str) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if size > cap {
        return Err(Error::malformed(
            path,
            format,
            format!("{size} bytes exceeds the {cap}-byte cap"),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// [`read_capped`] as UTF-8 text, without a leading byte-order mark.
pub fn read_text(path: &Path, cap: u64, format: &'static str) -> Result<String> {
    let bytes = read_capped(path, cap, format)?;
    let mut text = String::from_utf8(bytes)
        .map_err(|e| Error::malformed(path, format, format!("not UTF-8: {e}")))?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}
