//! The GGUF-output flags shared by `convert`, `safe-lora` and `fuse`.

use clap::Args;
use loraguard::convert::{ConvertOptions, OutType};
use loraguard::linalg::truncate::Truncation;

/// `--outtype`, `--max-rank`, `--energy`.
#[derive(Debug, Args)]
pub struct GgufOutArgs {
    /// Tensor type of the GGUF output: f32, f16, bf16, q8_0, q4_0, q4_1,
    /// q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, or auto (the 16-bit type
    /// matching the source). A tensor whose rows are not whole blocks of the
    /// type falls back as llama-quantize does, and is listed.
    #[arg(long, default_value = "auto", value_parser = parse_outtype)]
    pub outtype: OutType,
    /// Re-factor every module of the GGUF output into balanced SVD form
    /// (B′ = U·√Σ, A′ = √Σ·Vᵀ) of at most this rank; the error of each
    /// truncation is reported.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rank: Option<u32>,
    /// Re-factor every module of the GGUF output into balanced SVD form
    /// keeping the fewest singular values that hold this fraction of ‖ΔW‖²_F
    /// (0 < E ≤ 1; 1 keeps every nonzero one and only re-balances).
    #[arg(long, value_name = "E", value_parser = parse_energy)]
    pub energy: Option<f64>,
}

impl GgufOutArgs {
    /// A conversion to the requested type, re-factored when asked.
    pub fn convert_options(&self) -> ConvertOptions {
        let truncation = (self.max_rank.is_some() || self.energy.is_some()).then_some(Truncation {
            max_rank: self.max_rank.map(|k| k as usize),
            energy: self.energy,
        });
        ConvertOptions {
            truncation,
            ..ConvertOptions::new(self.outtype)
        }
    }
}

fn parse_energy(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(e) if e > 0.0 && e <= 1.0 => Ok(e),
        _ => Err(format!("--energy takes a fraction in (0, 1], not {s:?}")),
    }
}

pub(super) fn parse_outtype(s: &str) -> Result<OutType, String> {
    OutType::parse(s).ok_or_else(|| {
        format!(
            "unknown outtype {s:?}; expected {} or auto",
            loraguard::quant::writable_names()
        )
    })
}
