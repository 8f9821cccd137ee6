//! Streaming one target's two GGUF tensors straight from the mapped PEFT
//! factors: rows are decoded into a small reusable f32 buffer, transformed
//! (stacked, permuted, scaled) and encoded, so no full-size f32 copy of a
//! factor is ever made. A factor written unchanged in its own dtype is
//! passed through as a slice of the map, and encoded buffers come from a
//! [`BufPool`], so steady-state conversion allocates (and page-faults) nothing.

use std::borrow::Cow;
use std::sync::Mutex;

use super::plan::{Target, TargetPart};
use crate::arch::permuted_source_row;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::matrix::{count_non_finite, decode_into, SourceDtype};
use crate::peft::{PairKind, PeftAdapter, TensorSpan};
use crate::quant::{encode_into, fits_f16};

/// Elements batched per encode call.
const SCRATCH: usize = 16 * 1024;

/// Reusable output buffers.
#[derive(Default)]
pub struct BufPool(Mutex<Vec<Vec<u8>>>);

impl BufPool {
    pub(super) fn get(&self) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .map(|mut p| p.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        v.clear();
        v
    }
    /// Return an encoded tensor's buffer once it has been written.
    pub fn put(&self, bytes: Cow<'_, [u8]>) {
        if let (Cow::Owned(v), Ok(mut p)) = (bytes, self.0.lock()) {
            p.push(v);
        }
    }
}

/// Encode `rows × cols` values of type `ty`, filling each row with `fill`;
/// `None` when a value does not fit the type (F16's range).
pub(super) fn encode_rows(
    mut out: Vec<u8>,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    mut fill: impl FnMut(usize, &mut [f32]),
) -> Option<Vec<u8>> {
    let bytes = ty.tensor_bytes(&[cols as u64, rows as u64])? as usize;
    out.reserve(bytes);
    let per = (SCRATCH / cols.max(1)).max(1);
    let mut scratch = vec![0f32; per * cols];
    let mut row = 0;
    while row < rows {
        let n = per.min(rows - row);
        let buf = &mut scratch[..n * cols];
        for (k, r) in buf.chunks_exact_mut(cols).enumerate() {
            fill(row + k, r);
        }
        if ty == GgmlType::F16 && !fits_f16(buf) {
            return None;
        }
        if !encode_into(ty, buf, &mut out) {
            return None;
        }
        row += n;
    }
    debug_assert_eq!(out.len(), bytes);
    Some(out)
}

/// Encode a whole source factor as stored (row-major, no reordering), times
/// `factor`, decoding it in `SCRATCH`-element slices. Slices are whole
/// blocks of any type: `SCRATCH` is a multiple of 256, and a quantized type
/// is only asked for rows that are whole blocks of it.
fn encode_contiguous(
    mut out: Vec<u8>,
    ty: GgmlType,
    bytes: &[u8],
    dtype: SourceDtype,
    factor: f32,
) -> Option<Vec<u8>> {
    let n = bytes.len() / dtype.size();
    out.reserve(ty.tensor_bytes(&[n as u64])? as usize);
    // BF16 unchanged into F16 or Q8_0 (the common PEFT case): one pass
    // over the bits, no f32 scratch (the map is 2-aligned in practice).
    if dtype == SourceDtype::BF16 && factor == 1.0 {
        if let Ok(bits) = bytemuck::try_cast_slice::<u8, u16>(bytes) {
            match ty {
                GgmlType::F16 => return crate::quant::bf16_to_f16(bits, &mut out).then_some(out),
                GgmlType::Q8_0 => return crate::quant::bf16_to_q8_0(bits, &mut out).then_some(out),
                _ => {}
            }
        }
    }
    let mut scratch = vec![0f32; SCRATCH.min(n)];
    for chunk in bytes.chunks(SCRATCH * dtype.size()) {
        let buf = &mut scratch[..chunk.len() / dtype.size()];
        decode_into(dtype, chunk, buf);
        if factor != 1.0 {
            buf.iter_mut().for_each(|x| *x *= factor);
        }
        if ty == GgmlType::F16 && !fits_f16(buf) {
            return None;
        }
        if !encode_into(ty, buf, &mut out) {
            return None;
        }
    }
    Some(out)
}

/// Whether `t`'s `lora_a` and `lora_b`, as [`encode_target`] writes them
/// (B times each part's factor, in f32), hold values beyond F16's range:
/// `--outtype auto` writes those tensors as F32 instead.
pub fn beyond_f16(adapter: &PeftAdapter, t: &Target) -> (bool, bool) {
    let over = |span: &TensorSpan, factor: f32| {
        let bytes = adapter.bytes(span);
        let mut buf = vec![0f32; SCRATCH.min(bytes.len() / span.dtype.size())];
        bytes.chunks(SCRATCH * span.dtype.size()).any(|chunk| {
            let buf = &mut buf[..chunk.len() / span.dtype.size()];
            decode_into(span.dtype, chunk, buf);
            if factor != 1.0 {
                buf.iter_mut().for_each(|x| *x *= factor);
            }
            !fits_f16(buf)
        })
    };
    let pairs = &adapter.pairs;
    (
        t.parts.iter().any(|p| over(&pairs[p.pair].a, 1.0)),
        t.parts
            .iter()
            .any(|p| over(&pairs[p.pair].b, p.b_factor as f32)),
    )
}

/// A factor in the mapped file, read row by row.
struct Src<'a> {
    bytes: &'a [u8],
    dtype: SourceDtype,
    cols: usize,
}

impl<'a> Src<'a> {
    fn new(adapter: &'a PeftAdapter, t: &TensorSpan) -> Self {
        Src {
            bytes: adapter.bytes(t),
            dtype: t.dtype,
            cols: t.shape[1],
        }
    }
    fn row(&self, i: usize, out: &mut [f32]) {
        let w = self.cols * self.dtype.size();
        decode_into(self.dtype, &self.bytes[i * w..(i + 1) * w], out);
    }
    /// Element (i, j).
    fn at(&self, i: usize, j: usize) -> f32 {
        let s = self.dtype.size();
        let o = (i * self.cols + j) * s;
        let mut v = [0f32; 1];
        decode_into(self.dtype, &self.bytes[o..o + s], &mut v);
        v[0]
    }
}

fn same_type(dtype: SourceDtype, ty: GgmlType) -> bool {
    matches!(
        (dtype, ty),
        (SourceDtype::F32, GgmlType::F32)
            | (SourceDtype::F16, GgmlType::F16)
            | (SourceDtype::BF16, GgmlType::BF16)
    )
}

/// A target's encoded `lora_a` and `lora_b`: borrowed from the map when a
/// factor passes through unchanged.
pub type EncodedPair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Build and encode `target`'s `lora_a` and `lora_b`.
pub fn encode_target<'a>(
    adapter: &'a PeftAdapter,
    t: &Target,
    ty_a: GgmlType,
    ty_b: GgmlType,
    pool: &BufPool,
) -> Result<EncodedPair<'a>> {
    // Every path into F16 (but F16 passed through) and Q8_0 fails on a
    // value that is not finite, so their check waits for a failure: one
    // pass over the bytes fewer on the common path.
    let fails_on_non_finite = |dtype: SourceDtype, ty: GgmlType| match ty {
        GgmlType::F16 => dtype != SourceDtype::F16,
        GgmlType::Q8_0 => true,
        _ => false,
    };
    let check_finite = |lazy: bool| -> Result<()> {
        for p in &t.parts {
            let pair = &adapter.pairs[p.pair];
            for (span, ty) in [(&pair.a, ty_a), (&pair.b, ty_b)] {
                if lazy != fails_on_non_finite(span.dtype, ty) {
                    continue;
                }
                let bad = count_non_finite(span.dtype, adapter.bytes(span));
                if bad > 0 {
                    return Err(Error::NonFinite {
                        path: adapter.weights_path.clone(),
                        tensor: span.name.clone(),
                        count: bad,
                    });
                }
            }
        }
        Ok(())
    };
    check_finite(false)?;
    let range_err = |suffix: &str| Error::Unsupported {
        path: adapter.weights_path.clone(),
        feature: format!(
            "{}.{suffix} has values beyond F16's range (±65504)",
            t.tensor
        ),
        hint: Some("use --outtype f32 or --outtype bf16".into()),
    };
    let failed = |suffix: &str| match check_finite(true) {
        Ok(()) => range_err(suffix),
        Err(e) => e,
    };
    let a = encode_a(adapter, t, ty_a, pool).ok_or_else(|| failed("lora_a"))?;
    let b = encode_b(adapter, t, ty_b, pool).ok_or_else(|| failed("lora_b"))?;
    Ok((a, b))
}

fn encode_a<'a>(
    adapter: &'a PeftAdapter,
    t: &Target,
    ty: GgmlType,
    pool: &BufPool,
) -> Option<Cow<'a, [u8]>> {
    if t.kind == PairKind::Embedding {
        // llama.cpp gathers rows of lora_a per token: store Aᵀ (vocab × r).
        let a = Src::new(adapter, &adapter.pairs[t.parts[0].pair].a);
        return encode_rows(pool.get(), ty, t.d_in, t.rank, |v, row| {
            for (k, x) in row.iter_mut().enumerate() {
                *x = a.at(k, v);
            }
        })
        .map(Cow::Owned);
    }
    if let [p] = t.parts.as_slice() {
        let span = &adapter.pairs[p.pair].a;
        if same_type(span.dtype, ty) {
            return Some(Cow::Borrowed(adapter.bytes(span)));
        }
        return encode_contiguous(pool.get(), ty, adapter.bytes(span), span.dtype, 1.0)
            .map(Cow::Owned);
    }
    // Stack the parts' A rows: part after part, in B's column order.
    let srcs: Vec<(usize, Src)> = t
        .parts
        .iter()
        .map(|p| {
            (
                adapter.pairs[p.pair].rank(),
                Src::new(adapter, &adapter.pairs[p.pair].a),
            )
        })
        .collect();
    encode_rows(pool.get(), ty, t.rank, t.d_in, |mut k, row| {
        for (r, src) in &srcs {
            if k < *r {
                src.row(k, row);
                return;
            }
            k -= r;
        }
    })
    .map(Cow::Owned)
}

fn encode_b<'a>(
    adapter: &'a PeftAdapter,
    t: &Target,
    ty: GgmlType,
    pool: &BufPool,
) -> Option<Cow<'a, [u8]>> {
    if let [p] = t.parts.as_slice() {
        let span = &adapter.pairs[p.pair].b;
        if p.b_factor == 1.0
            && p.permute_heads.is_none()
            && p.row_offset == 0
            && same_type(span.dtype, ty)
        {
            return Some(Cow::Borrowed(adapter.bytes(span)));
        }
        if p.permute_heads.is_none() && p.row_offset == 0 && span.shape[0] == t.d_out {
            let f = p.b_factor as f32;
            return encode_contiguous(pool.get(), ty, adapter.bytes(span), span.dtype, f)
                .map(Cow::Owned);
        }
    }
    // Each part is a block: its rows at row_offset, its columns after the
    // previous parts' ranks; everything else is zero.
    struct Block<'a> {
        part: &'a TargetPart,
        src: Src<'a>,
        rows: usize,
        col: usize,
        rank: usize,
    }
    let mut col = 0;
    let blocks: Vec<Block> = t
        .parts
        .iter()
        .map(|p| {
            let pair = &adapter.pairs[p.pair];
            let b = Block {
                part: p,
                src: Src::new(adapter, &pair.b),
                rows: pair.d_out(),
                col,
                rank: pair.rank(),
            };
            col += pair.rank();
            b
        })
        .collect();
    let single = blocks.len() == 1 && blocks[0].rank == t.rank;
    encode_rows(pool.get(), ty, t.d_out, t.rank, |i, row| {
        if !single {
            row.fill(0.0);
        }
        let Some(b) = blocks
            .iter()
            .find(|b| i >= b.part.row_offset && i < b.part.row_offset + b.rows)
        else {
            return;
        };
        let local = i - b.part.row_offset;
        let src_row = b
            .part
            .permute_heads
            .map_or(local, |h| permuted_source_row(local, b.rows, h));
        let dst = &mut row[b.col..b.col + b.rank];
        b.src.row(src_row, dst);
        if b.part.b_factor != 1.0 {
            let f = b.part.b_factor as f32;
            dst.iter_mut().for_each(|x| *x *= f);
        }
    })
    .map(Cow::Owned)
}
