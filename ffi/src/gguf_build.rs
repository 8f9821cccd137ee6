//! Building a GGUF header from existing files with ggml's own GGUF code, as
//! llama-quantize does: every metadata key of the first file copied with
//! `gguf_set_kv` (tokenizer arrays and chat template included, whatever
//! their type), the tensor table of all files in order, types changed with
//! `gguf_set_tensor_type` (ggml recomputes the offsets).
//!
//! Why ggml here: the merged header is the base's as llama.cpp's own tools
//! would rewrite it, offsets recomputed by ggml when types change. (When
//! this was written, the Rust reader was gguf-rs, which cut arrays at a cap;
//! the format crate now reads every value typed and whole, so this could
//! move there. It stays because merge needs ggml to quantize anyway.)

use std::ffi::{CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

use crate::{c_path, Error, Result};

/// One tensor of a header under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltTensor {
    pub name: String,
    pub type_id: u32,
    /// ggml `ne` (4 dims, unused ones 1).
    pub ne: [u64; 4],
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data (without padding).
    pub size: u64,
}

/// A source file parsed by ggml: its GGUF context and the ggml context that
/// holds its tensors' descriptions (no data).
struct Source {
    gguf: *mut sys::gguf_context,
    ggml: *mut sys::ggml_context,
}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: both came from gguf_init_from_file and are freed once.
        unsafe {
            sys::gguf_free(self.gguf);
            sys::ggml_free(self.ggml);
        }
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Ggml(format!("{s:?} contains a NUL byte")))
}

/// A GGUF header being built (see the module documentation). The sources
/// stay open until it is dropped.
pub struct GgufHeader {
    out: *mut sys::gguf_context,
    _sources: Vec<Source>,
}

// SAFETY: the contexts are owned exclusively by this value and ggml's GGUF
// functions keep no thread-local state.
unsafe impl Send for GgufHeader {}

impl Drop for GgufHeader {
    fn drop(&mut self) {
        // SAFETY: out came from gguf_init_empty and is freed once.
        unsafe { sys::gguf_free(self.out) };
    }
}

impl GgufHeader {
    /// Start from `files`: the metadata of the first, the tensors of all, in
    /// file order (the shards of a split model, or one file).
    pub fn from_files(files: &[&Path]) -> Result<Self> {
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let cpath = c_path(path)?;
            let mut ggml: *mut sys::ggml_context = std::ptr::null_mut();
            let params = sys::gguf_init_params {
                no_alloc: true,
                ctx: &mut ggml,
            };
            // SAFETY: cpath is a valid C string; with no_alloc ggml parses
            // the header and creates tensor descriptions without data in a
            // new ggml context written to `ggml`.
            let gguf = unsafe { sys::gguf_init_from_file(cpath.as_ptr(), params) };
            if gguf.is_null() || ggml.is_null() {
                if !gguf.is_null() {
                    // SAFETY: a context from gguf_init_from_file, freed once.
                    unsafe { sys::gguf_free(gguf) };
                }
                return Err(Error::Ggml(format!(
                    "{}: ggml could not parse the GGUF header",
                    path.display()
                )));
            }
            sources.push(Source { gguf, ggml });
        }
        let first = sources
            .first()
            .ok_or_else(|| Error::Ggml("no GGUF files given".into()))?;
        // SAFETY: no preconditions.
        let out = unsafe { sys::gguf_init_empty() };
        if out.is_null() {
            return Err(Error::Ggml("gguf_init_empty failed".into()));
        }
        let mut header = GgufHeader {
            out,
            _sources: Vec::new(),
        };
        // SAFETY: both contexts are valid; set_kv copies every key and value.
        unsafe { sys::gguf_set_kv(header.out, first.gguf) };
        for src in &sources {
            // SAFETY: src.gguf is valid.
            let n = unsafe { sys::gguf_get_n_tensors(src.gguf) };
            for i in 0..n {
                // SAFETY: i < n; the name is owned by src.gguf.
                let name = unsafe { CStr::from_ptr(sys::gguf_get_tensor_name(src.gguf, i)) };
                // SAFETY: src.ggml holds a description of every tensor of
                // src.gguf, under the same name.
                let t = unsafe { sys::ggml_get_tensor(src.ggml, name.as_ptr()) };
                if t.is_null() {
                    return Err(Error::Ggml(format!("tensor {name:?} has no description")));
                }
                // SAFETY: header.out is valid; name is a C string.
                if unsafe { sys::gguf_find_tensor(header.out, name.as_ptr()) } >= 0 {
                    return Err(Error::Ggml(format!(
                        "tensor {} appears in more than one file",
                        name.to_string_lossy()
                    )));
                }
                // SAFETY: t is a valid tensor description; gguf_add_tensor
                // copies it (and checked above that its name is new, which
                // ggml would otherwise abort on).
                unsafe { sys::gguf_add_tensor(header.out, t) };
            }
        }
        header._sources = sources;
        Ok(header)
    }

    /// The data alignment of the output.
    pub fn alignment(&self) -> u64 {
        // SAFETY: out is valid.
        unsafe { sys::gguf_get_alignment(self.out) as u64 }
    }

    /// Remove a metadata key (a no-op if absent).
    pub fn remove_key(&mut self, key: &str) -> Result<()> {
        let k = cstr(key)?;
        // SAFETY: out is valid; k outlives the call.
        unsafe { sys::gguf_remove_key(self.out, k.as_ptr()) };
        Ok(())
    }

    /// Set (or replace) a string value.
    pub fn set_str(&mut self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: out is valid; ggml copies both strings.
        unsafe { sys::gguf_set_val_str(self.out, k.as_ptr(), v.as_ptr()) };
        Ok(())
    }

    /// Set (or replace) an array of strings.
    pub fn set_str_array(&mut self, key: &str, values: &[String]) -> Result<()> {
        let k = cstr(key)?;
        let owned = values.iter().map(|v| cstr(v)).collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const std::os::raw::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: out is valid; ptrs holds values.len() C strings that
        // outlive the call; ggml copies them.
        unsafe { sys::gguf_set_arr_str(self.out, k.as_ptr(), ptrs.as_mut_ptr(), ptrs.len() as _) };
        Ok(())
    }

    /// Change the type of tensor `name`; its row length must be whole blocks
    /// of the new type (checked here: ggml would abort).
    pub fn set_tensor_type(&mut self, name: &str, type_id: u32) -> Result<()> {
        let (blck, _) = crate::ggml::type_traits(type_id)
            .ok_or_else(|| Error::Ggml(format!("unknown type {type_id}")))?;
        let id = self.find(name)?;
        let ne0 = self.tensor(id).ne[0];
        if ne0 % blck != 0 {
            return Err(Error::Ggml(format!(
                "{name}: rows of {ne0} are not whole blocks of {blck}"
            )));
        }
        let n = cstr(name)?;
        // SAFETY: out is valid; the tensor exists (found above); the row
        // length is whole blocks of the valid type (checked above).
        unsafe { sys::gguf_set_tensor_type(self.out, n.as_ptr(), type_id as _) };
        Ok(())
    }

    fn find(&self, name: &str) -> Result<i64> {
        let n = cstr(name)?;
        // SAFETY: out is valid; n outlives the call.
        let id = unsafe { sys::gguf_find_tensor(self.out, n.as_ptr()) };
        if id < 0 {
            return Err(Error::Ggml(format!("no tensor {name}")));
        }
        Ok(id)
    }

    fn tensor(&self, id: i64) -> BuiltTensor {
        // SAFETY: id is a valid tensor id of out (callers pass ids from find
        // or below n_tensors); the name is owned by out.
        let (name, type_id, offset, size) = unsafe {
            (
                CStr::from_ptr(sys::gguf_get_tensor_name(self.out, id))
                    .to_string_lossy()
                    .into_owned(),
                sys::gguf_get_tensor_type(self.out, id),
                sys::gguf_get_tensor_offset(self.out, id) as u64,
                sys::gguf_get_tensor_size(self.out, id) as u64,
            )
        };
        BuiltTensor {
            ne: self.ne_of(id),
            name,
            type_id,
            offset,
            size,
        }
    }

    /// ggml's GGUF API exposes a tensor's `ne` only through the ggml context
    /// of the file it came from.
    fn ne_of(&self, id: i64) -> [u64; 4] {
        // SAFETY: id is valid for out; the name is owned by out.
        let name = unsafe { CStr::from_ptr(sys::gguf_get_tensor_name(self.out, id)) };
        for src in &self._sources {
            // SAFETY: src.ggml is valid; name is a C string.
            let t = unsafe { sys::ggml_get_tensor(src.ggml, name.as_ptr()) };
            // SAFETY: a non-null tensor description owned by src.ggml.
            if let Some(t) = unsafe { t.as_ref() } {
                return t.ne.map(|d| d as u64);
            }
        }
        [0; 4]
    }

    /// Every tensor, in output order, with its offset and size.
    pub fn tensors(&self) -> Vec<BuiltTensor> {
        // SAFETY: out is valid.
        let n = unsafe { sys::gguf_get_n_tensors(self.out) };
        (0..n).map(|i| self.tensor(i)).collect()
    }

    /// The serialized header: magic, version, metadata, tensor infos and the
    /// padding up to the data section.
    pub fn bytes(&self) -> Vec<u8> {
        // SAFETY: out is valid.
        let size = unsafe { sys::gguf_get_meta_size(self.out) };
        let mut buf = vec![0u8; size];
        // SAFETY: buf has room for exactly gguf_get_meta_size bytes.
        unsafe { sys::gguf_get_meta_data(self.out, buf.as_mut_ptr().cast()) };
        buf
    }
}
