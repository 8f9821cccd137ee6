//! The GGUF-LoRA layout, the one place its rules live (issue 20):
//! - orientation: a linear pair is `lora_a` ne `[in, r]`, `lora_b` ne
//!   `[r, out]` (ΔW = B·A, the base weight ne `[in, out]`); the token
//!   embedding is transposed, because llama.cpp gathers rows of `lora_a` per
//!   token: `lora_a` ne `[r, vocab]`, `lora_b` ne `[r, width]`, the base
//!   ne `[width, vocab]`;
//! - the scale: llama.cpp applies `alpha / r` with r read from `lora_b`, and
//!   reads a missing or zero `adapter.lora.alpha` as "no scaling" (1).

/// The base tensor whose LoRA is stored transposed.
pub const EMBEDDING: &str = "token_embd.weight";

/// Whether `tensor` (a GGUF tensor or module name) is the token embedding.
pub fn is_embedding(tensor: &str) -> bool {
    tensor.ends_with(EMBEDDING)
}

/// A GGUF LoRA pair's geometry, read from the ggml `ne` of its factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairShape {
    pub embedding: bool,
    pub rank: u64,
    /// Linear: the input width. Embedding: the vocabulary.
    pub d_in: u64,
    /// Linear: the output width. Embedding: the embedding width.
    pub d_out: u64,
}

impl PairShape {
    /// The shape of the pair for base tensor `tensor`, or `None` when the
    /// factors are not matrices or their ranks disagree.
    pub fn read(tensor: &str, lora_a: &[u64], lora_b: &[u64]) -> Option<PairShape> {
        let embedding = is_embedding(tensor);
        let (&[a0, a1], &[b0, b1]) = (lora_a, lora_b) else {
            return None;
        };
        let (rank_a, d_in) = if embedding { (a0, a1) } else { (a1, a0) };
        (rank_a == b0).then_some(PairShape {
            embedding,
            rank: b0,
            d_in,
            d_out: b1,
        })
    }

    /// The ggml `ne` of `lora_a` and `lora_b` (the inverse of
    /// [`PairShape::read`]).
    pub fn factor_ne(&self) -> ([u64; 2], [u64; 2]) {
        let b = [self.rank, self.d_out];
        if self.embedding {
            ([self.rank, self.d_in], b)
        } else {
            ([self.d_in, self.rank], b)
        }
    }

    /// The ggml `ne` of the base tensor this pair updates.
    pub fn base_ne(&self) -> [u64; 2] {
        if self.embedding {
            [self.d_out, self.d_in]
        } else {
            [self.d_in, self.d_out]
        }
    }
}

/// The scale llama.cpp applies to a pair of rank `rank` in a file whose
/// `adapter.lora.alpha` is `alpha`, at user scale 1; `None` for rank 0
/// (undefined).
pub fn gguf_scale(alpha: Option<f64>, rank: u64) -> Option<f64> {
    if rank == 0 {
        return None;
    }
    Some(match alpha {
        Some(a) if a != 0.0 => a / rank as f64,
        _ => 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_embedding_pairs_read_in_their_orientations() {
        let lin = PairShape::read("blk.0.attn_q.weight", &[64, 8], &[8, 32]).unwrap();
        assert_eq!((lin.rank, lin.d_in, lin.d_out), (8, 64, 32));
        assert_eq!(lin.base_ne(), [64, 32]);
        let emb = PairShape::read("token_embd.weight", &[8, 1000], &[8, 64]).unwrap();
        assert_eq!((emb.rank, emb.d_in, emb.d_out), (8, 1000, 64));
        assert_eq!(emb.base_ne(), [64, 1000]);
        assert_eq!(lin.factor_ne(), ([64, 8], [8, 32]));
        assert_eq!(emb.factor_ne(), ([8, 1000], [8, 64]));
        assert!(PairShape::read("blk.0.attn_q.weight", &[64, 8], &[4, 32]).is_none());
        assert!(PairShape::read("token_embd.weight", &[64, 8], &[8, 64]).is_none());
        assert!(PairShape::read("x", &[64], &[8, 64]).is_none());
    }

    #[test]
    fn alpha_zero_or_missing_means_no_scaling() {
        assert_eq!(gguf_scale(Some(16.0), 8), Some(2.0));
        assert_eq!(gguf_scale(Some(0.0), 8), Some(1.0));
        assert_eq!(gguf_scale(None, 8), Some(1.0));
        assert_eq!(gguf_scale(Some(16.0), 0), None);
    }
}
