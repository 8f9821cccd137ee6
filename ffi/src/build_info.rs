//! Which llama.cpp this binary embeds, and which ggml backends it registered:
//! for `loraguard --version` and every `check` report.

use std::ffi::CStr;

use serde::Serialize;

/// The embedded llama.cpp build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// The pinned llama-cpp-sys-2 version, which vendors llama.cpp's sources.
    pub llama_cpp_sys_2: &'static str,
    /// The llama-cpp-rs git commit llama-cpp-sys-2 was packaged from (it pins
    /// llama.cpp's submodule commit); `None` when built from other sources.
    pub llama_cpp_rs_commit: Option<&'static str>,
    /// ggml's version, as its CMakeLists sets it.
    pub ggml_version: String,
    /// ggml's git commit: "unknown" for crates.io sources, which carry no git.
    pub ggml_commit: String,
    /// The registered ggml backends, lower-case (`cpu`, `cuda`, `metal`, `vulkan`, ...).
    pub backends: Vec<String>,
}

impl BuildInfo {
    /// One line: `llama.cpp from llama-cpp-sys-2 0.1.160 (llama-cpp-rs 0dd5814c), ggml 0.26.0; backends: cpu`.
    pub fn summary(&self) -> String {
        let mut s = format!("llama.cpp from llama-cpp-sys-2 {}", self.llama_cpp_sys_2);
        if let Some(c) = self.llama_cpp_rs_commit {
            s += &format!(" (llama-cpp-rs {})", &c[..c.len().min(12)]);
        }
        s += &format!(", ggml {}", self.ggml_version);
        if self.ggml_commit != "unknown" {
            s += &format!(" ({})", self.ggml_commit);
        }
        s + &format!("; backends: {}", self.backends.join(", "))
    }
}

fn c_string(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return "unknown".into();
    }
    // SAFETY: ggml returns pointers to NUL-terminated static strings
    // (`ggml_version`, `ggml_commit`, a backend registry's name) that live as
    // long as the process; null was excluded above.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The embedded build. Registers ggml's backends first (llama.cpp's backend
/// initialisation), so `backends` lists what this binary can run on.
pub fn build_info() -> BuildInfo {
    let _ = crate::init_backend();
    let commit = env!("LORAGUARD_LLAMA_CPP_RS_COMMIT");
    // SAFETY: plain getters without arguments; ggml's backend registry is a
    // process-wide static, initialised on first use and never torn down.
    let (version, ggml_commit, n) = unsafe {
        (
            llama_cpp_sys_2::ggml_version(),
            llama_cpp_sys_2::ggml_commit(),
            llama_cpp_sys_2::ggml_backend_reg_count(),
        )
    };
    let backends = (0..n)
        .map(|i| {
            // SAFETY: `i < ggml_backend_reg_count()`, so `ggml_backend_reg_get`
            // returns a valid registry, whose name is a static string.
            let name = unsafe {
                llama_cpp_sys_2::ggml_backend_reg_name(llama_cpp_sys_2::ggml_backend_reg_get(i))
            };
            c_string(name).to_lowercase()
        })
        .collect();
    BuildInfo {
        llama_cpp_sys_2: env!("LORAGUARD_LLAMA_CPP_SYS_2"),
        llama_cpp_rs_commit: (!commit.is_empty()).then_some(commit),
        ggml_version: c_string(version),
        ggml_commit: c_string(ggml_commit),
        backends,
    }
}
