//! GGUF: reading model and adapter files (through gguf-rs, behind our own
//! capped header walk, [`scan`]) and writing adapter files (our streaming
//! writer).
//!
//! Why our own writer: gguf-rs's `GGUFWriter` pre-fills the whole data section
//! with zero bytes, one `write_u8` at a time, then seeks back to write each
//! tensor, which doubles the output I/O; ggml's `gguf_write_to_file` needs
//! every tensor resident in memory. Neither streams. The writer here computes
//! every offset up front and writes each tensor once, in order; every file it
//! writes is read back by ggml's own loader in the tests.

pub mod fit;
mod reader;
pub mod scan;
mod types;
mod writer;

pub use reader::{GgufFile, GgufTensor, MAX_GGUF_ARRAY_ELEMENTS};
pub use types::GgmlType;
pub use writer::{GgufWriter, MetaValue, TensorDesc};

/// `GGUF` little-endian.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version we write.
pub const GGUF_VERSION: u32 = 3;
/// The default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
