//! loraguard: exact PEFT → GGUF LoRA conversion and adapter inspection for
//! the llama.cpp ecosystem.
//!
//! From the format crate ([`mod@format`], no native dependencies), re-exported:
//! - [`peft`]: reading PEFT adapters (config semantics, tensor pairing);
//! - [`gguf`]: reading GGUF headers and writing GGUF files;
//! - [`base`]: a base model's architecture and hyperparameters;
//! - [`arch`]: the HF-module → GGUF-tensor table and its transforms;
//! - [`matrix`], [`hash`], [`error`]: tensor payloads, hashes, the error type.
//!
//! This crate:
//! - [`convert`]: validation, planning and the streaming converter;
//! - [`quant`]: tensor encoders (F16, BF16, Q8_0, and ggml's quantizers for Q4_0 … Q6_K) and the per-tensor type fallback;
//! - [`inspect`]: what `loraguard inspect` reports;
//! - [`analyze`]: what `loraguard analyze` measures;
//! - [`linalg`]: SVD and subspace measures on low-rank factors;
//! - [`merge`]: baking adapters into a base GGUF;
//! - [`check`]: running prompts through llama.cpp and detecting refusals;
//! - [`card`]: Hugging Face model cards for published files;
//! - [`batch`]: manifests of commands, idempotent, resumable and sharded;
//! - [`atomic`]: atomic output files;
//! - [`provenance`]: the version and command line every written file records.

pub mod adapter;
pub mod analyze;
pub mod atomic;
pub mod batch;
pub mod card;
pub mod check;
pub mod convert;
pub mod fuse;
pub mod inspect;
pub mod judge;
pub mod linalg;
pub mod merge;
pub mod projection;
pub mod provenance;
pub mod quant;
pub mod safelora;
pub mod spec;
pub mod tune;

pub use loraguard_format::{arch, base, error, gguf, hash, layout, matrix, peft};
use loraguard_format::{capped, mmap};

pub use error::{Error, Result};
/// The format crate (GGUF, PEFT, the architecture table), re-exported.
pub use loraguard_format as format;
/// The llama.cpp wrapper crate, re-exported for tests and embedders.
pub use loraguard_llama as llama;
