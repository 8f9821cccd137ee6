//! The GGUF LoRA validation that runs before llama.cpp sees a file (`check`,
//! `inspect --base`): any bytes as a GGUF LoRA, checked against the tiny
//! fixture base model.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loraguard_format::gguf::GgufFile;

fn base() -> &'static GgufFile {
    static BASE: OnceLock<GgufFile> = OnceLock::new();
    BASE.get_or_init(|| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama/base.gguf");
        GgufFile::open(&p).expect("the tiny base opens")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut f, data).expect("write");
    if let Ok(lora) = GgufFile::open(f.path()) {
        let _ = loraguard_format::gguf::fit::gguf_fit_to(&lora, base());
    }
});
