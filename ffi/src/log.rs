//! llama.cpp's and ggml's log lines: forwarded to `tracing` (target
//! `llama.cpp`, quiet unless the subscriber enables it), and the first
//! error (else the last warning) since a call began kept, so that a failed
//! load can say why: llama.cpp logs the cause first ("error loading model:
//! ...") and a generic "failed to load model" after it.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

/// The first error and last warning since [`clear`], and the line being
/// continued.
struct Lines {
    error: Option<String>,
    warning: Option<String>,
    current: String,
    current_level: sys::ggml_log_level,
}

static LINES: Mutex<Lines> = Mutex::new(Lines {
    error: None,
    warning: None,
    current: String::new(),
    current_level: sys::GGML_LOG_LEVEL_NONE,
});

fn emit(level: sys::ggml_log_level, line: &str) {
    match level {
        sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama.cpp", "{line}"),
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama.cpp", "{line}"),
        sys::GGML_LOG_LEVEL_INFO => tracing::info!(target: "llama.cpp", "{line}"),
        _ => tracing::debug!(target: "llama.cpp", "{line}"),
    }
}

/// The callback given to llama_log_set and ggml_log_set.
unsafe extern "C" fn capture(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp and ggml pass a NUL-terminated string valid for the
    // duration of the call; it is copied before returning.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let Ok(mut l) = LINES.lock() else {
        return;
    };
    if level != sys::GGML_LOG_LEVEL_CONT {
        l.current.clear();
        l.current_level = level;
    }
    l.current.push_str(&text);
    // A line ends with a newline; CONT pieces continue it.
    while let Some(i) = l.current.find('\n') {
        let line: String = l.current.drain(..=i).collect();
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let lvl = l.current_level;
        emit(lvl, line);
        if lvl == sys::GGML_LOG_LEVEL_ERROR && l.error.is_none() {
            l.error = Some(line.to_string());
        } else if lvl == sys::GGML_LOG_LEVEL_WARN {
            l.warning = Some(line.to_string());
        }
    }
}

/// Route llama.cpp's and ggml's logs through [`capture`].
pub(crate) fn install() {
    // SAFETY: capture is a valid extern "C" callback for the life of the
    // process and ignores its user-data pointer, so null is fine. ggml's is
    // set after llama's, which sets ggml's too.
    unsafe {
        sys::llama_log_set(Some(capture), std::ptr::null_mut());
        sys::ggml_log_set(Some(capture), std::ptr::null_mut());
    }
}

/// Forget what was logged (before a call whose failure we explain).
pub(crate) fn clear() {
    if let Ok(mut l) = LINES.lock() {
        l.error = None;
        l.warning = None;
    }
}

/// The first error line since [`clear`], else the last warning (logs are
/// process-wide: with loads on several threads at once it may be another
/// call's).
pub(crate) fn reason() -> Option<String> {
    LINES.lock().ok().and_then(|mut l| {
        let e = l.error.take();
        let w = l.warning.take();
        e.or(w)
    })
}
