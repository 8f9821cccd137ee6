//! Dense row-major f32 matrices and the source dtypes we decode into them.

use half::f16;

/// Element types a PEFT adapter may store its factors in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    F32,
    F16,
    BF16,
}

impl SourceDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }

    /// The dtype's name as safetensors writes it.
    pub fn name(self) -> &'static str {
        match self {
            SourceDtype::F32 => "F32",
            SourceDtype::F16 => "F16",
            SourceDtype::BF16 => "BF16",
        }
    }
}

/// A dense row-major matrix of f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// A zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Decode little-endian `bytes` of `dtype` into a `rows × cols` matrix.
    /// The caller has checked that `bytes.len() == rows * cols * dtype.size()`.
    pub fn decode(rows: usize, cols: usize, dtype: SourceDtype, bytes: &[u8]) -> Self {
        debug_assert_eq!(bytes.len(), rows * cols * dtype.size());
        let mut data = vec![0f32; rows * cols];
        decode_into(dtype, bytes, &mut data);
        Matrix { rows, cols, data }
    }

    /// The same matrix in f64, for loraguard's linear algebra.
    pub fn to_f64(&self) -> ndarray::Array2<f64> {
        f64_matrix(self.rows, self.cols, &self.data)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Multiply every element by `factor`.
    pub fn scale(&mut self, factor: f32) {
        self.data.iter_mut().for_each(|x| *x *= factor);
    }

    /// `self · other`, accumulated in f64. Meant for tests and small factors.
    pub fn matmul(&self, other: &Matrix) -> Matrix {
        assert_eq!(self.cols, other.rows, "matmul shape mismatch");
        let mut out = Matrix::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for j in 0..other.cols {
                let mut acc = 0f64;
                for k in 0..self.cols {
                    acc +=
                        self.data[i * self.cols + k] as f64 * other.data[k * other.cols + j] as f64;
                }
                out.data[i * other.cols + j] = acc as f32;
            }
        }
        out
    }
}

/// Decode little-endian `bytes` of `dtype` into `out` (one value per element).
pub fn decode_into(dtype: SourceDtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        SourceDtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        SourceDtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        SourceDtype::BF16 => {
            let bytes = &bytes[..out.len() * 2];
            for (i, o) in out.iter_mut().enumerate() {
                *o = f32::from_bits(
                    ((bytes[2 * i] as u32) << 16) | ((bytes[2 * i + 1] as u32) << 24),
                );
            }
        }
    }
}

/// Count non-finite values directly in encoded bytes, without decoding a copy.
pub fn count_non_finite(dtype: SourceDtype, bytes: &[u8]) -> usize {
    if !any_non_finite(dtype, bytes) {
        return 0;
    }
    match dtype {
        SourceDtype::F32 => bytes
            .chunks_exact(4)
            .filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .count(),
        SourceDtype::F16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00)
            .count(),
        SourceDtype::BF16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80)
            .count(),
    }
}

/// Whether any value is non-finite: the exponent bits all ones. A max
/// over the masked exponents of aligned words (vectorised, read-only); the
/// count is only taken when this finds one.
fn any_non_finite(dtype: SourceDtype, bytes: &[u8]) -> bool {
    // Masked exponents are non-negative as signed words, and a signed max
    // is the one SSE2 has for 16-bit lanes.
    let max16 = |mask: u16| match bytemuck::try_cast_slice::<u8, u16>(bytes) {
        Ok(w) => w.iter().fold(0i16, |m, x| m.max((x & mask) as i16)) == mask as i16,
        Err(_) => true,
    };
    match dtype {
        SourceDtype::F32 => match bytemuck::try_cast_slice::<u8, u32>(bytes) {
            Ok(w) => w.iter().fold(0i32, |m, x| m.max((x & 0x7f80_0000) as i32)) == 0x7f80_0000,
            Err(_) => true,
        },
        SourceDtype::F16 => max16(0x7c00),
        SourceDtype::BF16 => max16(0x7f80),
    }
}

/// A row-major f32 buffer as an f64 matrix; panics unless
/// `data.len() == rows·cols` (callers have checked the shape on input).
pub fn f64_matrix(rows: usize, cols: usize, data: &[f32]) -> ndarray::Array2<f64> {
    ndarray::Array2::from_shape_vec((rows, cols), data.iter().map(|x| f64::from(*x)).collect())
        .expect("rows × cols elements")
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn non_finite_detection_in_every_dtype() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, -0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(SourceDtype::F32, &f32s), 2);
        let f16s: Vec<u8> = [f16::from_f32(1.0), f16::NAN, f16::NEG_INFINITY, f16::MAX]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(SourceDtype::F16, &f16s), 2);
        let bf16s: Vec<u8> = [bf16::from_f32(1.0), bf16::NAN, bf16::INFINITY, bf16::MAX]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(SourceDtype::BF16, &bf16s), 2);
        // Unaligned bytes take the counting path directly; finite ones count 0.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bf16s);
        assert_eq!(count_non_finite(SourceDtype::BF16, &shifted[1..]), 2);
        let finite: Vec<u8> = [1.0f32, -2.5, f32::MAX, f32::MIN_POSITIVE]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(SourceDtype::F32, &finite), 0);
    }

    #[test]
    fn decode_round_trips_each_dtype() {
        let vals = [0.5f32, -2.0, 3.25, 0.0];
        let b: Vec<u8> = vals
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(Matrix::decode(2, 2, SourceDtype::BF16, &b).data, vals);
        let h: Vec<u8> = vals
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(Matrix::decode(2, 2, SourceDtype::F16, &h).data, vals);
    }
}
