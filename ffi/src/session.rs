//! A decoding session: one llama.cpp context with any number of adapters.

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::{default_threads, Adapter, Error, Model, Result};

/// Options for a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Context length in tokens.
    pub n_ctx: u32,
    /// Threads; defaults to the available parallelism.
    pub threads: i32,
    /// Keep the KV cache in F32 instead of llama.cpp's default F16: slower
    /// and larger, but removes the cache's rounding from exactness checks.
    pub kv_f32: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            n_ctx: 512,
            threads: default_threads(),
            kv_f32: false,
        }
    }
}

/// A llama.cpp context on model `'m`, with adapters `'a` that outlive it.
pub struct Session<'m, 'a> {
    ptr: NonNull<sys::llama_context>,
    model: &'m Model,
    n_ctx: u32,
    _adapters: std::marker::PhantomData<&'a Adapter<'m>>,
}

impl Drop for Session<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: ptr came from llama_init_from_model and is freed once.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}

impl<'m, 'a> Session<'m, 'a> {
    /// Create a context on `model`.
    pub fn new(model: &'m Model, opts: &SessionOptions) -> Result<Self> {
        // SAFETY: plain value-returning call.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = opts.n_ctx;
        p.n_batch = opts.n_ctx;
        p.n_ubatch = opts.n_ctx;
        p.n_seq_max = 1;
        p.n_threads = opts.threads;
        p.n_threads_batch = opts.threads;
        p.no_perf = true;
        if opts.kv_f32 {
            p.type_k = sys::GGML_TYPE_F32;
            p.type_v = sys::GGML_TYPE_F32;
        }
        // SAFETY: the model pointer is valid for 'm, which outlives the context.
        let raw = unsafe { sys::llama_init_from_model(model.raw(), p) };
        let ptr = NonNull::new(raw).ok_or(Error::Context)?;
        Ok(Session {
            ptr,
            model,
            n_ctx: opts.n_ctx,
            _adapters: std::marker::PhantomData,
        })
    }

    /// Replace the active adapters: each `(adapter, scale)` applies
    /// `scale · alpha / rank · B·A` at once. An empty slice removes all.
    pub fn set_adapters(&mut self, adapters: &[(&'a Adapter<'m>, f32)]) -> Result<()> {
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> =
            adapters.iter().map(|(a, _)| a.raw()).collect();
        let mut scales: Vec<f32> = adapters.iter().map(|(_, s)| *s).collect();
        // SAFETY: ptrs and scales have adapters.len() valid elements; the
        // adapters outlive the session ('a), as llama.cpp requires.
        let rc = unsafe {
            sys::llama_set_adapters_lora(
                self.ptr.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                scales.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(Error::SetAdapters(rc));
        }
        Ok(())
    }

    /// Run `tokens` as one fresh sequence and return the logits of every
    /// position, row-major `tokens.len() × n_vocab`.
    pub fn logits(&mut self, tokens: &[i32]) -> Result<Vec<f32>> {
        if tokens.is_empty() || tokens.len() > self.n_ctx as usize {
            return Err(Error::Tokenize(format!(
                "{} tokens do not fit a context of {}",
                tokens.len(),
                self.n_ctx
            )));
        }
        let n = tokens.len() as i32;
        // SAFETY: the context is valid; clearing memory (the KV cache) starts a fresh sequence.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) };
        // SAFETY: allocates a batch for n tokens with one sequence id each; freed below.
        let batch = unsafe { sys::llama_batch_init(n, 0, 1) };
        for (i, t) in tokens.iter().enumerate() {
            // SAFETY: batch arrays have room for n entries and i < n; seq_id[i]
            // points to an array of n_seq_max = 1 ids.
            unsafe {
                *batch.token.add(i) = *t;
                *batch.pos.add(i) = i as i32;
                *batch.n_seq_id.add(i) = 1;
                **batch.seq_id.add(i) = 0;
                *batch.logits.add(i) = 1;
            }
        }
        let mut batch = batch;
        batch.n_tokens = n;
        // SAFETY: the batch is fully initialised for n tokens and fits n_batch.
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch) };
        let result = if rc != 0 {
            Err(Error::Decode(rc))
        } else {
            let n_vocab = self.model.n_vocab();
            let mut out = Vec::with_capacity(tokens.len() * n_vocab);
            for i in 0..n {
                // SAFETY: every position requested logits, so row i exists and
                // holds n_vocab floats until the next decode.
                let row = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), i) };
                if row.is_null() {
                    out.clear();
                    break;
                }
                // SAFETY: see above; the slice is copied before any other call.
                out.extend_from_slice(unsafe { std::slice::from_raw_parts(row, n_vocab) });
            }
            if out.is_empty() {
                Err(Error::Decode(-1))
            } else {
                Ok(out)
            }
        };
        // SAFETY: batch came from llama_batch_init and is freed once.
        unsafe { sys::llama_batch_free(batch) };
        result
    }
}
