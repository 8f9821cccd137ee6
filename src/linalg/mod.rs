//! Linear algebra on low-rank factors, never forming ΔW or a d×d projector.
//!
//! - [`lowrank`]: ΔW = s·B·A: its SVD through thin QRs and an r×r core,
//!   Frobenius inner products, norms and cosines between low-rank products;
//! - [`subspace`]: orthonormal bases, principal angles, energy fractions;
//! - [`truncate`]: rank truncation (by rank or energy) into balanced factors;
//! - [`rsvd`]: randomized SVD (Halko, Martinsson and Tropp 2011) for the top-k
//!   singular subspace of a full base weight.
//!
//! Factor math runs in f64 (it costs O((m+n)·r²)); full base weights stay f32.

pub mod lowrank;
pub mod rsvd;
pub mod subspace;
pub mod truncate;

pub use lowrank::{LowRank, Svd};

pub use crate::matrix::f64_matrix;

/// Call before parallel linear algebra: BLAS runs single-threaded inside
/// loraguard's own (rayon) workers.
pub fn init() {
    loraguard_llama::blas::single_threaded();
}

use crate::error::Error;

fn lapack(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("LAPACK {what} failed: {e}"))
}
