//! An owned `llama_batch`, filled one token at a time.

use llama_cpp_sys_2 as sys;

/// A `llama_batch` with room for `cap` tokens, one sequence id each.
pub(crate) struct Batch {
    raw: sys::llama_batch,
    cap: usize,
}

impl Batch {
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        // SAFETY: allocates arrays for `cap` tokens with one sequence id each;
        // freed once in Drop.
        let raw = unsafe { sys::llama_batch_init(cap as i32, 0, 1) };
        Batch { raw, cap }
    }

    pub(crate) fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.raw.n_tokens == 0
    }

    pub(crate) fn room(&self) -> usize {
        self.cap - self.len()
    }

    pub(crate) fn clear(&mut self) {
        self.raw.n_tokens = 0;
    }

    /// Append a token; returns its index in the batch. Panics when full
    /// (callers check [`room`](Self::room)): an internal invariant, not input.
    pub(crate) fn push(&mut self, token: i32, pos: i32, seq: i32, logits: bool) -> usize {
        let i = self.len();
        assert!(i < self.cap, "batch overflow");
        // SAFETY: every array has `cap` entries and i < cap; seq_id[i] points
        // to an array of one id (llama_batch_init with n_seq_max = 1).
        unsafe {
            *self.raw.token.add(i) = token;
            *self.raw.pos.add(i) = pos;
            *self.raw.n_seq_id.add(i) = 1;
            **self.raw.seq_id.add(i) = seq;
            *self.raw.logits.add(i) = i8::from(logits);
        }
        self.raw.n_tokens += 1;
        i
    }

    pub(crate) fn raw(&self) -> sys::llama_batch {
        self.raw
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: raw came from llama_batch_init and is freed once; n_tokens
        // does not affect what llama_batch_free releases.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}
