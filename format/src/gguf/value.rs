//! GGUF metadata values, typed as the file stores them: read by
//! [`super::scan`], held by [`super::GgufFile`], written by
//! [`super::GgufWriter`]. A value read and written back keeps its GGUF type.

use std::fmt;

/// GGUF metadata value type ids (gguf.h's `enum gguf_type`).
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one element type, no nesting (llama.cpp's reader
/// rejects arrays of arrays, and so does ours).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaValue {
    /// A string array.
    pub fn strings(v: Vec<String>) -> Self {
        MetaValue::Array(MetaArray::Str(v))
    }

    /// A u32 array.
    pub fn u32s(v: Vec<u32>) -> Self {
        MetaValue::Array(MetaArray::U32(v))
    }

    /// The GGUF type id.
    pub fn type_id(&self) -> u32 {
        use type_id as t;
        match self {
            MetaValue::U8(_) => t::U8,
            MetaValue::I8(_) => t::I8,
            MetaValue::U16(_) => t::U16,
            MetaValue::I16(_) => t::I16,
            MetaValue::U32(_) => t::U32,
            MetaValue::I32(_) => t::I32,
            MetaValue::F32(_) => t::F32,
            MetaValue::Bool(_) => t::BOOL,
            MetaValue::Str(_) => t::STRING,
            MetaValue::Array(_) => t::ARRAY,
            MetaValue::U64(_) => t::U64,
            MetaValue::I64(_) => t::I64,
            MetaValue::F64(_) => t::F64,
        }
    }

    /// The string, for a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer of any integer type, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x.into()),
            MetaValue::U16(x) => Some(x.into()),
            MetaValue::U32(x) => Some(x.into()),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any number (integer or float), as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => Some(x.into()),
            MetaValue::F64(x) => Some(x),
            MetaValue::I8(x) => Some(x.into()),
            MetaValue::I16(x) => Some(x.into()),
            MetaValue::I32(x) => Some(x.into()),
            MetaValue::I64(x) => Some(x as f64),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    /// The array, for an array value.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// As JSON (for reports): numbers, booleans, strings and arrays of them.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            MetaValue::Str(s) => J::String(s.clone()),
            MetaValue::Bool(b) => J::Bool(*b),
            MetaValue::F32(x) => float_json(f64::from(*x)),
            MetaValue::F64(x) => float_json(*x),
            MetaValue::Array(a) => J::Array(a.to_json()),
            MetaValue::I8(x) => J::from(*x),
            MetaValue::I16(x) => J::from(*x),
            MetaValue::I32(x) => J::from(*x),
            MetaValue::I64(x) => J::from(*x),
            v => v.as_u64().map_or(J::Null, J::from),
        }
    }

    /// Append the value's bytes (without its type id) to `buf`.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            MetaValue::U8(x) => buf.push(*x),
            MetaValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => buf.push(u8::from(*x)),
            MetaValue::Str(s) => put_str(buf, s),
            MetaValue::Array(a) => a.encode(buf),
            MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

fn float_json(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

macro_rules! each_array {
    ($a:expr, $v:ident => $e:expr) => {
        match $a {
            MetaArray::U8($v) => $e,
            MetaArray::I8($v) => $e,
            MetaArray::U16($v) => $e,
            MetaArray::I16($v) => $e,
            MetaArray::U32($v) => $e,
            MetaArray::I32($v) => $e,
            MetaArray::F32($v) => $e,
            MetaArray::Bool($v) => $e,
            MetaArray::Str($v) => $e,
            MetaArray::U64($v) => $e,
            MetaArray::I64($v) => $e,
            MetaArray::F64($v) => $e,
        }
    };
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        each_array!(self, v => v.len())
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's GGUF id.
    pub fn element_type_id(&self) -> u32 {
        use type_id as t;
        match self {
            MetaArray::U8(_) => t::U8,
            MetaArray::I8(_) => t::I8,
            MetaArray::U16(_) => t::U16,
            MetaArray::I16(_) => t::I16,
            MetaArray::U32(_) => t::U32,
            MetaArray::I32(_) => t::I32,
            MetaArray::F32(_) => t::F32,
            MetaArray::Bool(_) => t::BOOL,
            MetaArray::Str(_) => t::STRING,
            MetaArray::U64(_) => t::U64,
            MetaArray::I64(_) => t::I64,
            MetaArray::F64(_) => t::F64,
        }
    }

    /// Element `i` as a value.
    pub fn get(&self, i: usize) -> Option<MetaValue> {
        Some(match self {
            MetaArray::U8(v) => MetaValue::U8(*v.get(i)?),
            MetaArray::I8(v) => MetaValue::I8(*v.get(i)?),
            MetaArray::U16(v) => MetaValue::U16(*v.get(i)?),
            MetaArray::I16(v) => MetaValue::I16(*v.get(i)?),
            MetaArray::U32(v) => MetaValue::U32(*v.get(i)?),
            MetaArray::I32(v) => MetaValue::I32(*v.get(i)?),
            MetaArray::F32(v) => MetaValue::F32(*v.get(i)?),
            MetaArray::Bool(v) => MetaValue::Bool(*v.get(i)?),
            MetaArray::Str(v) => MetaValue::Str(v.get(i)?.clone()),
            MetaArray::U64(v) => MetaValue::U64(*v.get(i)?),
            MetaArray::I64(v) => MetaValue::I64(*v.get(i)?),
            MetaArray::F64(v) => MetaValue::F64(*v.get(i)?),
        })
    }

    /// Every element as a non-negative integer, or None.
    pub fn to_u64s(&self) -> Option<Vec<u64>> {
        (0..self.len()).map(|i| self.get(i)?.as_u64()).collect()
    }

    /// The strings, for a string array.
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            MetaArray::Str(v) => Some(v),
            _ => None,
        }
    }

    fn to_json(&self) -> Vec<serde_json::Value> {
        (0..self.len())
            .filter_map(|i| self.get(i).map(|v| v.to_json()))
            .collect()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.element_type_id().to_le_bytes());
        buf.extend_from_slice(&(self.len() as u64).to_le_bytes());
        match self {
            MetaArray::Str(v) => v.iter().for_each(|s| put_str(buf, s)),
            MetaArray::U8(v) => buf.extend_from_slice(v),
            MetaArray::Bool(v) => buf.extend(v.iter().map(|b| u8::from(*b))),
            MetaArray::I8(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U16(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I16(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U32(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I32(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::F32(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::U64(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::I64(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            MetaArray::F64(v) => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        }
    }
}

/// Text for people: strings bare, everything else as JSON.
impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::Str(s) => f.write_str(s),
            v => write!(f, "{}", v.to_json()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MetaArray, MetaValue};
    use crate::gguf::{scan::scan, GgufWriter};

    /// Every GGUF type written by our writer is read back by our parser
    /// with the same type and value (gguf-rs, before, read all of them as
    /// JSON numbers, and arrays cut at 64 elements).
    #[test]
    fn every_type_round_trips_typed() {
        let long: Vec<u32> = (0..1000).collect();
        let meta: Vec<(String, MetaValue)> = [
            MetaValue::U8(200),
            MetaValue::I8(-5),
            MetaValue::U16(60000),
            MetaValue::I16(-30000),
            MetaValue::U32(4_000_000_000),
            MetaValue::I32(-2_000_000_000),
            MetaValue::F32(0.1),
            MetaValue::Bool(true),
            MetaValue::Str("héllo".into()),
            MetaValue::U64(u64::MAX),
            MetaValue::I64(i64::MIN),
            MetaValue::F64(-1e300),
            MetaValue::u32s(long),
            MetaValue::strings(vec!["a".into(), String::new(), "ç".into()]),
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
            MetaValue::Array(MetaArray::I8(vec![-1, 2])),
            MetaValue::Array(MetaArray::U16(vec![1, 65535])),
            MetaValue::Array(MetaArray::I16(vec![-1, 2])),
            MetaValue::Array(MetaArray::I32(vec![-7])),
            MetaValue::Array(MetaArray::F32(vec![1.5, -0.25])),
            MetaValue::Array(MetaArray::U64(vec![])),
            MetaValue::Array(MetaArray::I64(vec![-9])),
            MetaValue::Array(MetaArray::F64(vec![2.5])),
            MetaValue::Array(MetaArray::U8(vec![0, 255])),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("k.{i:02}"), v))
        .collect();
        let w = GgufWriter::start(Vec::new(), &meta, vec![]).unwrap();
        let bytes = w.finish().unwrap();
        let len = bytes.len() as u64;
        let got = scan(std::io::Cursor::new(bytes), len).unwrap();
        assert_eq!(got.metadata, meta);
        assert_eq!(got.metadata[12].1.as_array().unwrap().len(), 1000);
    }

    #[test]
    fn accessors_read_across_integer_types() {
        assert_eq!(MetaValue::I32(7).as_u64(), Some(7));
        assert_eq!(MetaValue::I32(-7).as_u64(), None);
        assert_eq!(MetaValue::U16(3).as_f64(), Some(3.0));
        assert_eq!(MetaValue::F32(0.5).as_u64(), None);
        assert_eq!(MetaValue::Str("x".into()).to_string(), "x");
        assert_eq!(MetaValue::u32s(vec![1, 2]).to_string(), "[1,2]");
        assert_eq!(MetaValue::I64(-3).to_json(), serde_json::json!(-3));
        // Exact beyond f64's 53 bits.
        assert_eq!(
            MetaValue::I64(i64::MIN + 1).to_json(),
            serde_json::json!(i64::MIN + 1)
        );
        assert_eq!(
            MetaValue::U64(u64::MAX).to_json(),
            serde_json::json!(u64::MAX)
        );
    }
}
