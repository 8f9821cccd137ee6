//! Records which llama.cpp this crate embeds, for `loraguard --version` and
//! `check` reports: the pinned llama-cpp-sys-2 version (read from this
//! crate's own Cargo.toml, the one place it is written) and, where the
//! crate came from crates.io, the llama-cpp-rs commit it was packaged from
//! (its `.cargo_vcs_info.json`), which pins llama.cpp's submodule commit.
//! The packaged llama.cpp sources carry no git metadata, so ggml's own
//! `ggml_commit()` reads "unknown".
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", manifest.display());
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    let version = text
        .lines()
        .find(|l| l.trim_start().starts_with("llama-cpp-sys-2"))
        .and_then(|l| l.split("version = \"").nth(1))
        .and_then(|v| v.split('"').next())
        .map(|v| v.trim_start_matches('='))
        .unwrap_or("unknown")
        .to_string();
    println!("cargo:rustc-env=LORAGUARD_LLAMA_CPP_SYS_2={version}");
    println!(
        "cargo:rustc-env=LORAGUARD_LLAMA_CPP_RS_COMMIT={}",
        vcs_commit(&version).unwrap_or_default()
    );
}

/// The git commit in `.cargo_vcs_info.json` of llama-cpp-sys-2 in cargo's
/// registry sources, if it is there.
fn vcs_commit(version: &str) -> Option<String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    for index in std::fs::read_dir(home.join("registry").join("src"))
        .ok()?
        .flatten()
    {
        let info = index
            .path()
            .join(format!("llama-cpp-sys-2-{version}"))
            .join(".cargo_vcs_info.json");
        if let Ok(json) = std::fs::read_to_string(&info) {
            println!("cargo:rerun-if-changed={}", info.display());
            let sha = json.split("\"sha1\"").nth(1)?.split('"').nth(1)?;
            if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(sha.to_string());
            }
        }
    }
    None
}
