//! Writing PEFT adapters: new factors as F32 safetensors tensors, and
//! safetensors files whose bytes depend only on their content.

use std::borrow::Cow;
use std::collections::BTreeMap;

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

/// `safetensors::serialize` with `metadata` written in key order. The
/// safetensors crate writes its metadata `HashMap` in the map's random
/// order, so the same adapter came out as different bytes (and a different
/// sha256 in the GGUF converted from it) from run to run.
pub fn serialize_sorted<S, V, I>(
    tensors: I,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String>
where
    S: AsRef<str> + Ord + std::fmt::Display,
    V: View,
    I: IntoIterator<Item = (S, V)>,
{
    let raw = safetensors::serialize(tensors, &None).map_err(|e| format!("{e}"))?;
    let n = u64::from_le_bytes(raw[..8].try_into().expect("an 8-byte length prefix")) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw[8..8 + n]).map_err(|e| format!("{e}"))?;
    let mut sorted = serde_json::Map::new();
    if !metadata.is_empty() {
        let m = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        sorted.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    sorted.extend(header);
    let mut text = serde_json::to_vec(&sorted).map_err(|e| format!("{e}"))?;
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + text.len() + raw.len() - 8 - n);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
    out.extend(&raw[8 + n..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_written_in_key_order_and_reads_back() {
        let t = F32Tensor::from_array(&ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]]));
        let meta: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("key{i:02}"), format!("value {i}")))
            .collect();
        let a = serialize_sorted([("b.weight", &t), ("a.weight", &t)], &meta).unwrap();
        let b = serialize_sorted([("a.weight", &t), ("b.weight", &t)], &meta).unwrap();
        assert_eq!(a, b);
        let n = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&a[8..8 + n]).unwrap();
        let keys: Vec<usize> = (0..20)
            .map(|i| header.find(&format!("key{i:02}")).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{header}");
        let (_, read) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        assert_eq!(read.metadata().as_ref().unwrap().len(), 20);
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.tensor("b.weight").unwrap().data(), t.bytes.as_slice());
    }
}
