//! GGUF: reading model and adapter headers (one capped, bounds-checked
//! parser, [`scan`], with typed metadata, [`MetaValue`]) and writing adapter
//! files (a streaming writer).
//!
//! Why our own reader: gguf-rs (used until issue 20) trusted the lengths it
//! read (a string or array length of 2⁶⁰ became an allocation of that size),
//! turned metadata into JSON, which loses GGUF's types (a u32 and an i64
//! both become a number, so a rewritten file had to guess them back), and
//! kept only the first 64 elements of each array. Our walk already capped
//! and checked every length, so it now keeps the values it reads.
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
mod value;
mod writer;

pub use reader::{GgufFile, GgufTensor};
pub use types::GgmlType;
pub use value::{MetaArray, MetaValue};
pub use writer::{GgufWriter, TensorDesc};

/// `GGUF` little-endian.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version we write.
pub const GGUF_VERSION: u32 = 3;
/// The default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
