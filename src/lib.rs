//! loraguard: exact PEFT → GGUF LoRA conversion and adapter inspection for
//! the llama.cpp ecosystem.
//!
//! - [`peft`]: reading PEFT adapters (config semantics, tensor pairing);
//! - [`gguf`]: reading GGUF headers and writing GGUF files;
//! - [`base`]: a base model's architecture and hyperparameters;
//! - [`arch`]: the HF-module → GGUF-tensor table and its transforms;
//! - [`convert`]: validation, planning and the streaming converter;
//! - [`quant`]: tensor encoders (F16, BF16, Q8_0, and ggml's quantizers for Q4_0 … Q6_K) and the per-tensor type fallback;
//! - [`inspect`]: what `loraguard inspect` reports;
//! - [`analyze`]: what `loraguard analyze` measures;
//! - [`linalg`]: SVD and subspace measures on low-rank factors;
//! - [`merge`]: baking adapters into a base GGUF;
//! - [`check`]: running prompts through llama.cpp and detecting refusals;
//! - [`atomic`]: atomic output files.

pub mod analyze;
pub mod arch;
pub mod atomic;
pub mod base;
mod capped;
pub mod check;
pub mod convert;
pub mod error;
pub mod fuse;
pub mod gguf;
pub mod hash;
pub mod inspect;
pub mod judge;
pub mod linalg;
pub mod matrix;
pub mod merge;
mod mmap;
pub mod peft;
pub mod quant;
pub mod safelora;
pub mod spec;
pub mod tune;

pub use error::{Error, Result};
/// The llama.cpp wrapper crate, re-exported for tests and embedders.
pub use loraguard_llama as llama;
