//! Models and LoRA adapters.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::{c_path, init_backend, Error, Result};

/// Options for loading a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Layers to offload to the GPU (0 on CPU-only builds).
    pub gpu_layers: u32,
}

/// A loaded llama.cpp model.
///
/// `Send` but not `Sync`: [`Model::load_adapter`] and an [`Adapter`]'s drop
/// insert into and erase from the model's set of adapters (a C++
/// `std::unordered_set` in llama-adapter.cpp), so two threads sharing a
/// `&Model` could race. Sharing one across threads does not compile:
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<loraguard_llama::Model>();
/// ```
pub struct Model {
    ptr: NonNull<sys::llama_model>,
    path: PathBuf,
}

// SAFETY: a llama_model has no thread affinity: moving the owner (with no
// borrow alive, as the lifetimes of Adapter and Session guarantee) to
// another thread is sound. It is deliberately not Sync (see above).
unsafe impl Send for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_model_load_from_file and is freed once;
        // every Adapter and Session borrowing it has been dropped (lifetimes).
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

impl Model {
    /// Load a GGUF model.
    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Self> {
        init_backend()?;
        let cpath = c_path(path)?;
        // SAFETY: plain value-returning call with no arguments.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = opts.gpu_layers.min(i32::MAX as u32) as i32;
        crate::log::clear();
        // SAFETY: cpath is a valid NUL-terminated string that outlives the call.
        let raw = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), params) };
        let ptr = NonNull::new(raw).ok_or_else(|| Error::ModelLoad {
            path: path.into(),
            reason: crate::log::reason(),
        })?;
        Ok(Model {
            ptr,
            path: path.to_path_buf(),
        })
    }

    /// The file this model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn raw(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model pointer is valid for &self; the vocab lives as long as the model.
        unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        // SAFETY: vocab() is valid while self lives.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) }.max(0) as usize
    }

    /// Tokenize `text`, adding BOS/EOS as the model is configured to when
    /// `add_special`, and parsing special tokens in the text when `parse_special`.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>> {
        let len = i32::try_from(text.len())
            .map_err(|_| Error::Tokenize("text longer than 2 GiB".into()))?;
        let mut cap = text.len() + 8;
        loop {
            let mut buf = vec![0i32; cap];
            // SAFETY: text is valid for len bytes; buf has room for cap tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast(),
                    len,
                    buf.as_mut_ptr(),
                    cap as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            if (-n) as usize <= cap || n == i32::MIN {
                return Err(Error::Tokenize(format!("llama_tokenize returned {n}")));
            }
            cap = (-n) as usize;
        }
    }

    /// Whether `token` ends generation (EOS, EOT and the like).
    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: vocab() is valid while self lives; any token id is accepted.
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }

    /// The bytes of one token's text (special tokens render as empty).
    pub fn token_bytes(&self, token: i32, out: &mut Vec<u8>) -> Result<()> {
        let mut buf = [0u8; 256];
        // SAFETY: buf has room for buf.len() bytes; the vocab is valid.
        let n = unsafe {
            sys::llama_token_to_piece(
                self.vocab(),
                token,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
                0,
                false,
            )
        };
        if n >= 0 {
            out.extend_from_slice(&buf[..n as usize]);
            return Ok(());
        }
        let need = n.unsigned_abs() as usize;
        let mut big = vec![0u8; need];
        // SAFETY: big has room for `need` bytes, as llama.cpp asked.
        let m = unsafe {
            sys::llama_token_to_piece(
                self.vocab(),
                token,
                big.as_mut_ptr().cast(),
                need as i32,
                0,
                false,
            )
        };
        if m < 0 {
            return Err(Error::Tokenize(format!("token {token} has no text")));
        }
        out.extend_from_slice(&big[..m as usize]);
        Ok(())
    }

    /// The model's own chat template (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: the model is valid; a NULL name asks for the default
        // template. The returned string is owned by the model and copied here.
        let ptr = unsafe { sys::llama_model_chat_template(self.raw(), std::ptr::null()) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: non-NULL, NUL-terminated, alive while the model is.
        let s = unsafe { std::ffi::CStr::from_ptr(ptr) };
        Some(s.to_string_lossy().into_owned())
    }

    /// Render `messages` (`(role, content)`) with llama.cpp's built-in
    /// implementation of `template` (a template string or a name such as
    /// `chatml`), ending with the assistant's turn when `add_assistant`.
    pub fn apply_chat_template(
        template: &str,
        messages: &[(&str, &str)],
        add_assistant: bool,
    ) -> Result<String> {
        let tmpl = std::ffi::CString::new(template)
            .map_err(|_| Error::Template("the chat template contains a NUL byte".into()))?;
        let owned: Vec<(std::ffi::CString, std::ffi::CString)> = messages
            .iter()
            .map(|(r, c)| Ok((std::ffi::CString::new(*r)?, std::ffi::CString::new(*c)?)))
            .collect::<std::result::Result<_, std::ffi::NulError>>()
            .map_err(|_| Error::Template("a message contains a NUL byte".into()))?;
        let chat: Vec<sys::llama_chat_message> = owned
            .iter()
            .map(|(r, c)| sys::llama_chat_message {
                role: r.as_ptr(),
                content: c.as_ptr(),
            })
            .collect();
        let total: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
        let mut cap = 2 * total + 256;
        loop {
            let mut buf = vec![0u8; cap];
            let len = i32::try_from(cap)
                .map_err(|_| Error::Template("the rendered chat exceeds 2 GiB".into()))?;
            // SAFETY: tmpl and every message string outlive the call; chat
            // has chat.len() entries; buf has room for `len` bytes.
            let n = unsafe {
                sys::llama_chat_apply_template(
                    tmpl.as_ptr(),
                    chat.as_ptr(),
                    chat.len(),
                    add_assistant,
                    buf.as_mut_ptr().cast(),
                    len,
                )
            };
            if n < 0 {
                return Err(Error::Template(
                    "llama.cpp does not support this chat template".into(),
                ));
            }
            if (n as usize) <= cap {
                buf.truncate(n as usize);
                return String::from_utf8(buf)
                    .map_err(|_| Error::Template("the rendered chat is not UTF-8".into()));
            }
            cap = n as usize;
        }
    }

    /// Load a GGUF LoRA adapter for this model.
    pub fn load_adapter(&self, path: &Path) -> Result<Adapter<'_>> {
        let cpath = c_path(path)?;
        crate::log::clear();
        // SAFETY: the model is valid for 'self and the path string outlives the call.
        let raw = unsafe { sys::llama_adapter_lora_init(self.raw(), cpath.as_ptr()) };
        let ptr = NonNull::new(raw).ok_or_else(|| Error::AdapterLoad {
            path: path.into(),
            reason: crate::log::reason(),
        })?;
        Ok(Adapter {
            ptr,
            model: self.ptr,
            path: path.to_path_buf(),
            _model: PhantomData,
        })
    }
}

/// A LoRA adapter loaded for model `'m`; freed on drop, before its model.
pub struct Adapter<'m> {
    ptr: NonNull<sys::llama_adapter_lora>,
    /// The model it was loaded for: a session of another model refuses it
    /// (ggml would abort on the shapes).
    model: NonNull<sys::llama_model>,
    path: PathBuf,
    _model: PhantomData<&'m Model>,
}

impl Adapter<'_> {
    /// The file this adapter came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn raw(&self) -> *mut sys::llama_adapter_lora {
        self.ptr.as_ptr()
    }

    /// Whether it was loaded for `model`.
    pub fn belongs_to(&self, model: &Model) -> bool {
        self.model == model.ptr
    }

    /// The aLoRA invocation tokens llama.cpp read from the file
    /// (`adapter.alora.invocation_tokens`); empty for a plain LoRA.
    pub fn alora_invocation_tokens(&self) -> Vec<i32> {
        // SAFETY: the adapter is alive for &self; llama.cpp returns the length
        // of a vector the adapter owns.
        let n = unsafe { sys::llama_adapter_get_alora_n_invocation_tokens(self.raw()) } as usize;
        if n == 0 {
            return Vec::new();
        }
        // SAFETY: the pointer is the data of that same vector of n tokens,
        // valid while the adapter lives; it is copied out at once.
        let p = unsafe { sys::llama_adapter_get_alora_invocation_tokens(self.raw()) };
        if p.is_null() {
            return Vec::new();
        }
        // SAFETY: p points at n initialised llama_tokens (checked non-null).
        unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
    }
}

impl Drop for Adapter<'_> {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_adapter_lora_init on a model that outlives
        // 'm; it is freed once. Sessions that set it borrow it and are gone.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) }
    }
}
