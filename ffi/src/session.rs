//! A decoding session: one llama.cpp context with any number of adapters.

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::batch::Batch;
use crate::sample::{sample, Rng, Sampling};
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
    /// Sequences decoded in parallel; each gets `n_ctx / parallel` positions
    /// of its own KV cache (llama.cpp rounds that up to a multiple of 256).
    pub parallel: u32,
    /// Tokens per `llama_decode` call; 0 means `n_ctx`.
    pub n_batch: u32,
    /// Tokens per physical batch; 0 means `n_batch` for one sequence and at
    /// most 512 for several. Scoring sets it to `n_batch`, so each sequence
    /// is evaluated in one piece, as it would be alone.
    pub n_ubatch: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            n_ctx: 512,
            threads: default_threads(),
            kv_f32: false,
            parallel: 1,
            n_batch: 0,
            n_ubatch: 0,
        }
    }
}

/// A llama.cpp context on model `'m`, with adapters `'a` that outlive it.
pub struct Session<'m, 'a> {
    pub(crate) ptr: NonNull<sys::llama_context>,
    pub(crate) model: &'m Model,
    n_ctx: u32,
    parallel: u32,
    /// Tokens per decode, as llama.cpp clamped it (read back from the context).
    pub(crate) n_batch: u32,
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
        let parallel = opts.parallel.max(1);
        let n_batch = if opts.n_batch == 0 {
            opts.n_ctx
        } else {
            opts.n_batch
        }
        .max(parallel);
        p.n_ctx = opts.n_ctx;
        p.n_batch = n_batch;
        p.n_ubatch = if opts.n_ubatch > 0 {
            opts.n_ubatch.min(n_batch)
        } else if parallel == 1 {
            n_batch
        } else {
            n_batch.min(512)
        };
        p.n_seq_max = parallel;
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
        // SAFETY: the context was just created and is valid.
        let n_batch = unsafe { sys::llama_n_batch(ptr.as_ptr()) }.min(n_batch);
        Ok(Session {
            ptr,
            model,
            n_ctx: opts.n_ctx,
            parallel,
            n_batch,
            _adapters: std::marker::PhantomData,
        })
    }

    /// Replace the active adapters: each `(adapter, scale)` applies
    /// `scale · alpha / rank · B·A` at once. An empty slice removes all.
    pub fn set_adapters(&mut self, adapters: &[(&'a Adapter<'m>, f32)]) -> Result<()> {
        if let Some((a, _)) = adapters.iter().find(|(a, _)| !a.belongs_to(self.model)) {
            return Err(Error::AdapterModel {
                path: a.path().to_path_buf(),
                model: self.model.path().to_path_buf(),
            });
        }
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
        if tokens.is_empty() || tokens.len() > self.n_ctx.min(self.n_batch) as usize {
            return Err(Error::Tokenize(format!(
                "{} tokens do not fit a context of {} (batch {})",
                tokens.len(),
                self.n_ctx,
                self.n_batch
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

    /// Positions available to each parallel sequence.
    pub fn n_ctx_seq(&self) -> usize {
        // SAFETY: the context is valid for &self.
        unsafe { sys::llama_n_ctx_seq(self.ptr.as_ptr()) as usize }
    }

    /// Generate a continuation for every prompt (already tokenized),
    /// decoding up to `parallel` sequences at once in one context with
    /// continuous batching: a finished sequence's slot takes the next prompt.
    ///
    /// Sampling draws from one stream per prompt, so on CPU the result for a
    /// prompt depends only on the prompt, the model, the active adapters and
    /// `opts` (loraguard's tests check one-at-a-time against all-at-once).
    /// GPU backends may pick kernels by batch shape, so there the text can
    /// depend on batching; it is still deterministic for the same inputs.
    /// `on_done(i)` is called as prompt `i` finishes.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i32>],
        opts: &GenerateOptions,
        mut on_done: impl FnMut(usize),
    ) -> Result<Vec<Generated>> {
        let per_seq = self.n_ctx_seq();
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::Generate(format!("prompt {} is empty", i + 1)));
            }
            if p.len() + opts.max_tokens > per_seq || p.len() > self.n_batch as usize {
                return Err(Error::Generate(format!(
                    "prompt {} has {} tokens; with {} new tokens it does not fit the {} positions \
                     each sequence has (batch {})",
                    i + 1,
                    p.len(),
                    opts.max_tokens,
                    per_seq,
                    self.n_batch
                )));
            }
        }
        let n_vocab = self.model.n_vocab();
        let ctx = self.ptr.as_ptr();
        // SAFETY: the context is valid; the memory handle lives as long as it.
        let mem = unsafe { sys::llama_get_memory(ctx) };
        // SAFETY: clears every sequence's KV cache in a valid context.
        unsafe { sys::llama_memory_clear(mem, true) };

        struct Slot {
            prompt: usize,
            pos: i32,
            tokens: Vec<i32>,
            /// The sampled token not yet decoded.
            pending: Option<i32>,
            rng: Rng,
            /// Index of this slot's logits row in the current batch.
            row: Option<usize>,
        }
        let seed = match &opts.sampling {
            Sampling::Seeded { seed, .. } => *seed,
            Sampling::Greedy => 0,
        };
        let mut results: Vec<Option<Generated>> = (0..prompts.len()).map(|_| None).collect();
        let mut slots: Vec<Option<Slot>> = (0..self.parallel).map(|_| None).collect();
        let mut next = 0usize;
        let mut batch = Batch::new(self.n_batch as usize);
        let mut finished = 0usize;
        while finished < prompts.len() {
            batch.clear();
            // Running sequences first: one token each.
            for (seq, slot) in slots.iter_mut().enumerate() {
                if let Some(s) = slot.as_mut() {
                    s.row = None;
                    if let Some(t) = s.pending.take() {
                        s.row = Some(batch.push(t, s.pos, seq as i32, true));
                        s.pos += 1;
                    }
                }
            }
            // Then new prompts into free slots while they fit this batch.
            for (seq, slot) in slots.iter_mut().enumerate() {
                if slot.is_some() || next >= prompts.len() {
                    continue;
                }
                let p = &prompts[next];
                if p.len() > batch.room() {
                    break;
                }
                // SAFETY: removes every cell of sequence `seq` (< n_seq_max)
                // from the valid context's memory.
                unsafe { sys::llama_memory_seq_rm(mem, seq as i32, -1, -1) };
                let mut row = 0;
                for (j, &t) in p.iter().enumerate() {
                    row = batch.push(t, j as i32, seq as i32, j + 1 == p.len());
                }
                *slot = Some(Slot {
                    prompt: next,
                    pos: p.len() as i32,
                    tokens: Vec::new(),
                    pending: None,
                    rng: Rng::new(seed, next as u64),
                    row: Some(row),
                });
                next += 1;
            }
            if batch.is_empty() {
                return Err(Error::Generate(
                    "nothing to decode: internal scheduling error".into(),
                ));
            }
            // SAFETY: the batch is initialised for batch.len() ≤ n_batch tokens
            // whose sequence ids are < n_seq_max and whose positions follow
            // each sequence's cache.
            let rc = unsafe { sys::llama_decode(ctx, batch.raw()) };
            if rc != 0 {
                return Err(Error::Decode(rc));
            }
            for slot in slots.iter_mut() {
                let Some(s) = slot.as_mut() else { continue };
                let Some(row) = s.row else { continue };
                // SAFETY: `row` requested logits in the batch just decoded; the
                // row holds n_vocab floats until the next decode.
                let ptr = unsafe { sys::llama_get_logits_ith(ctx, row as i32) };
                if ptr.is_null() {
                    return Err(Error::Generate(format!("no logits for batch row {row}")));
                }
                // SAFETY: see above; used before any other llama.cpp call.
                let logits = unsafe { std::slice::from_raw_parts(ptr, n_vocab) };
                let t = sample(logits, &opts.sampling, &mut s.rng) as i32;
                let eog = self.model.is_eog(t);
                if !eog || opts.ignore_eos {
                    s.tokens.push(t);
                }
                let done = (eog && !opts.ignore_eos) || s.tokens.len() >= opts.max_tokens;
                if done {
                    let s = slot.take().expect("slot is occupied");
                    let mut bytes = Vec::new();
                    for &t in &s.tokens {
                        self.model.token_bytes(t, &mut bytes)?;
                    }
                    results[s.prompt] = Some(Generated {
                        text: String::from_utf8_lossy(&bytes).into_owned(),
                        tokens: s.tokens,
                        stopped_at_eog: eog,
                    });
                    finished += 1;
                    on_done(s.prompt);
                } else {
                    s.pending = Some(t);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every prompt finished"))
            .collect())
    }
}

/// Options for [`Session::generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// New tokens per prompt, at most.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Keep generating past end-of-generation tokens (for benchmarks).
    pub ignore_eos: bool,
}

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The generated tokens, without the end-of-generation token.
    pub tokens: Vec<i32>,
    /// Their text (invalid UTF-8 from a cut-off character becomes U+FFFD).
    pub text: String,
    /// Whether generation ended with an end-of-generation token rather than
    /// the token limit.
    pub stopped_at_eog: bool,
}
