//! Writing PEFT adapters: new factors as F32 safetensors tensors.

use std::borrow::Cow;

use ndarray::Array2;
use safetensors::tensor::{Dtype, View};

/// A tensor to be written as F32.
#[derive(Debug, Clone)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl F32Tensor {
    /// The matrix, row-major.
    pub fn from_array(m: &Array2<f32>) -> Self {
        F32Tensor {
            shape: vec![m.nrows(), m.ncols()],
            bytes: m.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

impl View for &F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
