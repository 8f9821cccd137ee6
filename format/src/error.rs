//! The library's error type. Every variant names the file and, where there is
//! one, the tensor; the CLI maps [`Error::is_bad_input`] to exit code 2.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in loraguard's library code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that is not what it claims to be (truncated, malformed, out of bounds).
    #[error("{path}: malformed {format}: {reason}")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    /// A PEFT feature that llama.cpp's LoRA format cannot express.
    #[error("{path}: unsupported adapter feature: {feature}")]
    Unsupported {
        path: PathBuf,
        feature: String,
        hint: Option<String>,
    },

    /// A pickled `adapter_model.bin`: we never unpickle.
    #[error("{path}: pickled PyTorch checkpoints are not read (unpickling runs arbitrary code)")]
    Pickle { path: PathBuf },

    /// A tensor of the wrong dtype.
    #[error("{path}: tensor {tensor} has dtype {dtype}; expected F32, F16 or BF16")]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    /// A tensor with NaN or Inf values.
    #[error("{path}: tensor {tensor} holds {count} non-finite value(s) (NaN or Inf)")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        count: usize,
    },

    /// Tensors that do not form complete A/B pairs, or that no pair uses.
    #[error("{path}: {problem}: {tensors}")]
    Pairing {
        path: PathBuf,
        problem: &'static str,
        tensors: String,
    },

    /// A/B pairs whose shapes do not agree with each other.
    #[error("{path}: tensor {tensor}: {reason}")]
    Shape {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// The adapter does not fit the base model; every problem is listed.
    #[error("adapter {adapter} does not fit base model {base}: {}", summarize(.problems))]
    // The CLI lists every problem under this line; Display keeps a summary.
    Mismatch {
        adapter: PathBuf,
        base: PathBuf,
        problems: Vec<String>,
    },

    /// The base model's architecture is not in loraguard's table.
    #[error("{path}: architecture {arch:?} is not supported (supported: {supported})")]
    Architecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    /// A command-line or API argument that makes no sense.
    #[error("{0}")]
    Usage(String),

    /// `merge`: the written types would keep too little of the update.
    #[error(
        "{}: the merged tensors' types keep {:.1}% of the adapters' update (at least {:.0}% \
         required); the merged model would behave much like the base, so nothing was written",
        path.display(),
        100.0 * kept,
        100.0 * min
    )]
    Lossy { path: PathBuf, kept: f64, min: f64 },

    /// A failure inside llama.cpp or ggml, from the `loraguard-llama` crate
    /// (which converts its own error into this one; downcast `error` to it).
    #[error("{error}")]
    Llama {
        error: Box<dyn std::error::Error + Send + Sync>,
        /// The input is at fault (a file llama.cpp refuses), not the machine.
        bad_input: bool,
    },

    /// A bug: an invariant that should have held did not.
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        _ => format!("{} kinds of problem", problems.len()),
    }
}

impl Error {
    /// Build an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Build an [`Error::Malformed`].
    pub fn malformed(
        path: impl Into<PathBuf>,
        format: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            path: path.into(),
            format,
            reason: reason.into(),
        }
    }

    /// True when the error is the input's fault (exit code 2), false for
    /// internal failures (exit code 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Error::Internal(_))
            && !matches!(
                self,
                Error::Llama {
                    bad_input: false,
                    ..
                }
            )
            && !matches!(self, Error::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound
                && source.kind() != std::io::ErrorKind::InvalidData
                && source.kind() != std::io::ErrorKind::UnexpectedEof
                && source.kind() != std::io::ErrorKind::PermissionDenied)
    }

    /// A hint for the user, where there is a useful one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Unsupported { hint, .. } => hint.clone(),
            Error::Pickle { .. } => Some(
                "re-save it as safetensors: in Python, `PeftModel.from_pretrained(base, DIR)` \
                 then `model.save_pretrained(OUT, safe_serialization=True)`"
                    .into(),
            ),
            Error::Lossy { .. } => Some(
                "write the merged tensors in a finer type (--type q8_0 or f16), or pass \
                 --allow-lossy to write it anyway"
                    .into(),
            ),
            Error::Mismatch { .. } => Some(
                "check that --base is the model the adapter was trained on (`loraguard inspect ADAPTER --base BASE.gguf` lists every problem)"
                    .into(),
            ),
            Error::NonFinite { .. } => {
                Some("the adapter is corrupt or diverged during training; re-export it".into())
            }
            _ => None,
        }
    }
}
