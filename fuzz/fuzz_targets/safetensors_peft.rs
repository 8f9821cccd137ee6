//! The safetensors header plus PEFT pairing: any bytes as
//! `adapter_model.safetensors` beside a valid config. Opening may fail, but
//! must not panic, and an adapter that opens is paired and checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16,
    "use_rslora": true, "rank_pattern": {"k_proj": 4}, "alpha_pattern": {"v_proj": 3},
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}"#;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("adapter_config.json"), CONFIG).expect("write");
    std::fs::write(dir.path().join("adapter_model.safetensors"), data).expect("write");
    if let Ok(adapter) = loraguard_format::peft::PeftAdapter::open(dir.path()) {
        let _ = adapter.check_finite();
        for pair in &adapter.pairs {
            let _ = (pair.rank(), pair.d_in(), pair.d_out());
            let _ = adapter.matrix(&pair.a);
        }
    }
});
