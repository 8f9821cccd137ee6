//! loraguard's integration tests: one binary, one module per area.
//! Tests that load llama.cpp share its once-initialised backend.

mod adapter;
mod alora;
mod analyze;
mod applied;
mod architectures;
mod batch;
mod card;
mod check;
mod cli;
mod common;
mod convert_e2e;
mod fuse;
mod ggml_parity;
mod interrupt;
mod judge;
mod merge;
mod properties;
mod quant_types;
mod refactor;
mod refusals;
mod safe_lora;
mod setup;
mod smollm2;
mod soundness;
mod suite;
mod tune;
