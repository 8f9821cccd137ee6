//! `loraguard-llama`: the only crate in loraguard that touches llama.cpp and
//! ggml, and the only one with `unsafe` code. Every unsafe block carries a
//! `SAFETY:` comment.
//!
//! It wraps llama-cpp-sys-2 (pinned with llama-cpp-2) in RAII types whose
//! lifetimes tie adapters and sessions to their model:
//! - [`Model`] owns a `llama_model`;
//! - [`Adapter<'m>`](Adapter) owns a `llama_adapter_lora` of model `'m`;
//! - [`Session<'m>`](Session) owns a `llama_context` and can activate several
//!   adapters at once, each with its own scale (llama-cpp-2's own wrapper
//!   sets only one).
//!
//! [`ggml`] exposes ggml's quantizers and GGUF reader, so loraguard can test
//! its own encoders and writers against ggml's code rather than a copy;
//! [`gguf_build`] builds a GGUF header from existing files with ggml's GGUF
//! API (for `merge`); [`q4_k`] is ggml's Q4_K quantizer, byte for byte,
//! vectorized for AVX2.

mod batch;
pub mod blas;
mod build_info;
pub mod ggml;
pub mod gguf_build;
mod log;
mod model;
pub mod q4_k;
mod sample;
mod score;
mod session;
pub mod sums;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use build_info::{build_info, BuildInfo};
pub use model::{Adapter, Model, ModelOptions};
pub use sample::{argmax, Sampling};
pub use session::{GenerateOptions, Generated, Session, SessionOptions};

/// Errors from llama.cpp and ggml.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("llama.cpp backend failed to initialise: {0}")]
    Backend(String),
    #[error("{path}: llama.cpp could not load the model: {}", reason.as_deref().unwrap_or("no reason logged (run with -v for its log)"))]
    ModelLoad {
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("{path}: llama.cpp refused the LoRA adapter: {}", reason.as_deref().unwrap_or("no reason logged (run with -v for its log)"))]
    AdapterLoad {
        path: PathBuf,
        reason: Option<String>,
    },
    #[error("path {0:?} is not valid UTF-8 or contains a NUL byte")]
    Path(PathBuf),
    #[error("llama.cpp could not create a context")]
    Context,
    #[error("llama_decode failed with status {0}")]
    Decode(i32),
    #[error("{path}: the adapter was loaded for another model than {model}")]
    AdapterModel { path: PathBuf, model: PathBuf },
    #[error("llama_set_adapters_lora failed with status {0}")]
    SetAdapters(i32),
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Generate(String),
    #[error("ggml: {0}")]
    Ggml(String),
}

impl Error {
    /// True when the input is at fault (a file llama.cpp refuses, an adapter
    /// of another model), not llama.cpp or the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::ModelLoad { .. }
                | Error::AdapterLoad { .. }
                | Error::AdapterModel { .. }
                | Error::Path(_)
                | Error::Tokenize(_)
                | Error::Template(_)
        )
    }
}

/// Into the workspace's error type, keeping whether the input was at fault.
impl From<Error> for loraguard_format::Error {
    fn from(e: Error) -> Self {
        let bad_input = e.is_bad_input();
        loraguard_format::Error::Llama {
            error: Box::new(e),
            bad_input,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

static BACKEND: OnceLock<std::result::Result<llama_cpp_2::llama_backend::LlamaBackend, String>> =
    OnceLock::new();

/// Initialise llama.cpp's backend once per process and route its logs into
/// `tracing` (target `llama.cpp`): quiet unless the subscriber enables them.
pub fn init_backend() -> Result<()> {
    BACKEND
        .get_or_init(|| {
            log::install();
            llama_cpp_2::llama_backend::LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|_| ())
        .map_err(|e| Error::Backend(e.clone()))
}

/// The number of threads to use by default: the available parallelism.
pub fn default_threads() -> i32 {
    std::thread::available_parallelism().map_or(4, |n| n.get() as i32)
}

fn c_path(path: &std::path::Path) -> Result<std::ffi::CString> {
    path.to_str()
        .and_then(|s| std::ffi::CString::new(s).ok())
        .ok_or_else(|| Error::Path(path.to_path_buf()))
}
