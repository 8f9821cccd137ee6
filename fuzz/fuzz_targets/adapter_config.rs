//! adapter_config.json parsing: any text; a config that parses answers
//! every module's scale without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("adapter_config.json");
    if let Ok(cfg) = loraguard_format::peft::LoraConfig::from_json(path, text) {
        for m in [
            "model.layers.0.self_attn.q_proj",
            "model.layers.11.mlp.down_proj",
            "lm_head",
            "",
        ] {
            let _ = cfg.module_scale(m);
        }
    }
});
