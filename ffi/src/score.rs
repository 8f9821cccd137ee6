//! Scoring many sequences at once: next-token logits without generation
//! (model judges, teacher-forced likelihoods).

use llama_cpp_sys_2 as sys;

use crate::batch::Batch;
use crate::{Error, Result, Session};

impl Session<'_, '_> {
    /// Evaluate every sequence in `seqs` as a fresh one, each in one
    /// `llama_decode` (prompt processing batches within a sequence), and hand
    /// `on_logits(i, pos, logits)` the next-token logits after token `pos`
    /// of sequence `i`, for every `pos >= from[i]`, in order.
    ///
    /// Each sequence must fit one decode (the session's batch) and one
    /// slot's share of the context.
    pub fn score(
        &mut self,
        seqs: &[Vec<i32>],
        from: &[usize],
        mut on_logits: impl FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        if from.len() != seqs.len() {
            return Err(Error::Generate(format!(
                "{} sequences but {} start positions",
                seqs.len(),
                from.len()
            )));
        }
        let per_seq = self.n_ctx_seq().min(self.n_batch as usize);
        for (i, (s, &f)) in seqs.iter().zip(from).enumerate() {
            if s.is_empty() || s.len() > per_seq || f >= s.len() {
                return Err(Error::Generate(format!(
                    "sequence {} has {} tokens (scored from {f}); each must have 1 to {per_seq} \
                     tokens (the batch and each slot's context) and a start inside it",
                    i + 1,
                    s.len()
                )));
            }
        }
        let n_vocab = self.model.n_vocab();
        let ctx = self.ptr.as_ptr();
        // SAFETY: the context is valid; the memory handle lives as long as it.
        let mem = unsafe { sys::llama_get_memory(ctx) };
        let mut batch = Batch::new(self.n_batch as usize);
        // One sequence per decode: packing sequences of unequal lengths into
        // one batch gave a sequence logits up to 0.57 away from the same
        // sequence alone (llama.cpp splits such batches into equal-length
        // pieces across its per-sequence KV streams); alone they are exact.
        for (i, seq) in seqs.iter().enumerate() {
            batch.clear();
            // SAFETY: removes every cell of sequence 0 (< n_seq_max) from the
            // valid context's memory, so it starts fresh.
            unsafe { sys::llama_memory_seq_rm(mem, 0, -1, -1) };
            for (j, &t) in seq.iter().enumerate() {
                batch.push(t, j as i32, 0, j >= from[i]);
            }
            // SAFETY: the batch holds seq.len() ≤ n_batch tokens of sequence
            // 0 from position 0 of a cleared cache.
            let rc = unsafe { sys::llama_decode(ctx, batch.raw()) };
            if rc != 0 {
                return Err(Error::Decode(rc));
            }
            for pos in from[i]..seq.len() {
                let row = pos as i32;
                // SAFETY: this row requested logits in the batch just
                // decoded; it holds n_vocab floats until the next decode.
                let ptr = unsafe { sys::llama_get_logits_ith(ctx, row) };
                if ptr.is_null() {
                    return Err(Error::Generate(format!("no logits for batch row {row}")));
                }
                // SAFETY: see above; read before any other llama.cpp call.
                on_logits(i, pos, unsafe { std::slice::from_raw_parts(ptr, n_vocab) });
            }
        }
        Ok(())
    }
}
