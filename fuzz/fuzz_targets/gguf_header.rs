//! The GGUF header and metadata reader: any bytes as a GGUF file. The capped
//! scan runs first, then gguf-rs; neither may panic or allocate without
//! bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = loraguard_format::gguf::scan::scan(std::io::Cursor::new(data), data.len() as u64);
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut f, data).expect("write");
    if let Ok(g) = loraguard_format::gguf::GgufFile::open(f.path()) {
        let _ = (g.architecture(), g.is_adapter(), g.get_f64("adapter.lora.alpha"));
        for t in &g.tensors {
            assert!(t.offset + t.size <= g.file_size, "{} outside the file", t.name);
        }
    }
});
