//! `loraguard-format`: the file formats loraguard reads and writes, with no
//! native dependency (no llama.cpp, no BLAS), so that they build and fuzz
//! anywhere a Rust compiler runs.
//!
//! - [`gguf`]: the capped header scan, the typed reader and the writer;
//! - [`peft`]: PEFT adapters (config semantics, safetensors pairing, writing);
//! - [`arch`]: the HF-module → GGUF-tensor table and its transforms;
//! - [`base`]: a base model's architecture and hyperparameters;
//! - [`layout`]: the GGUF-LoRA orientation and scale rules;
//! - [`matrix`]: tensor payloads decoded to f32/f64;
//! - [`error`]: the typed error every loraguard crate returns.
//!
//! Readers take paths or bytes; [`mmap`] is the one place a file is mapped.

pub mod arch;
pub mod base;
pub mod capped;
pub mod error;
pub mod gguf;
pub mod hash;
pub mod layout;
pub mod matrix;
pub mod mmap;
pub mod peft;

pub use error::{Error, Result};
