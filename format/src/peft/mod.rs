//! Hugging Face PEFT LoRA adapters: `adapter_config.json` plus
//! `adapter_model.safetensors`, read from mmap and paired by module name.

mod adapter;
mod config;
mod pairing;
pub mod write;

pub use adapter::{
    looks_like_peft, LoraPair, PairKind, PeftAdapter, TensorSpan, UnsupportedTensor, CONFIG_NAME,
    SAFETENSORS_NAME,
};
pub use config::{LoraConfig, ModuleScale, Pattern, MAX_CONFIG_BYTES};
