//! ggml's own quantizers and GGUF reader, exposed safely so loraguard's Rust
//! encoders and writer can be checked against ggml's code.

use std::path::Path;

use llama_cpp_sys_2 as sys;

use crate::{c_path, Error, Result};

/// `(block size, bytes per block)` of ggml type `type_id`, from ggml itself.
pub fn type_traits(type_id: u32) -> Option<(u64, u64)> {
    if type_id >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: type_id is a valid ggml_type below GGML_TYPE_COUNT.
    let (blck, size) = unsafe {
        (
            sys::ggml_blck_size(type_id as _),
            sys::ggml_type_size(type_id as _),
        )
    };
    (blck > 0 && size > 0).then_some((blck as u64, size as u64))
}

/// Can [`quantize`] write type `type_id`? ggml's `ggml_quantize_chunk`
/// handles floats, legacy quants, K-quants and i-quants; those that need an
/// importance matrix (IQ1, IQ2_XXS, IQ2_XS) are refused here.
pub fn can_quantize(type_id: u32) -> bool {
    use sys::*;
    let supported = [
        GGML_TYPE_F32,
        GGML_TYPE_F16,
        GGML_TYPE_BF16,
        GGML_TYPE_Q4_0,
        GGML_TYPE_Q4_1,
        GGML_TYPE_Q5_0,
        GGML_TYPE_Q5_1,
        GGML_TYPE_Q8_0,
        GGML_TYPE_Q2_K,
        GGML_TYPE_Q3_K,
        GGML_TYPE_Q4_K,
        GGML_TYPE_Q5_K,
        GGML_TYPE_Q6_K,
        GGML_TYPE_IQ3_XXS,
        GGML_TYPE_IQ3_S,
        GGML_TYPE_IQ2_S,
        GGML_TYPE_IQ4_NL,
        GGML_TYPE_IQ4_XS,
        GGML_TYPE_TQ1_0,
        GGML_TYPE_TQ2_0,
    ];
    // SAFETY: type_id is one of ggml's types (in the list).
    supported.contains(&type_id) && !unsafe { sys::ggml_quantize_requires_imatrix(type_id as _) }
}

/// The bytes `data`, rows of `n_per_row` values, take in ggml type
/// `type_id`: an error unless they are whole rows of whole blocks.
fn quantized_len(type_id: u32, data: &[f32], n_per_row: usize) -> Result<usize> {
    let (blck, size) =
        type_traits(type_id).ok_or_else(|| Error::Ggml(format!("unknown type {type_id}")))?;
    if n_per_row == 0 || data.len() % n_per_row != 0 || n_per_row as u64 % blck != 0 {
        return Err(Error::Ggml("data is not whole rows of whole blocks".into()));
    }
    Ok((n_per_row as u64 / blck * size) as usize * (data.len() / n_per_row))
}

/// Quantize `data` (rows of `n_per_row`) to ggml type `type_id` with ggml's
/// own `ggml_quantize_chunk`.
pub fn quantize(type_id: u32, data: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; quantized_len(type_id, data, n_per_row)?];
    quantize_into(type_id, data, n_per_row, &mut out)?;
    Ok(out)
}

/// [`quantize`] into `out`, which must hold exactly the quantized rows.
pub fn quantize_into(type_id: u32, data: &[f32], n_per_row: usize, out: &mut [u8]) -> Result<()> {
    let need = quantized_len(type_id, data, n_per_row)?;
    // ggml_quantize_chunk aborts (GGML_ASSERT) on a type it has no quantizer
    // for (Q8_K, I8, ...) and on those that need an importance matrix.
    if !can_quantize(type_id) {
        return Err(Error::Ggml(format!(
            "type {type_id} cannot be quantized without an importance matrix, or at all"
        )));
    }
    let nrows = data.len() / n_per_row;
    if out.len() != need {
        return Err(Error::Ggml(format!(
            "{} bytes given for {nrows} rows of {n_per_row}",
            out.len()
        )));
    }
    // SAFETY: data holds nrows*n_per_row floats; out has exactly the room of
    // nrows rows of the type's row size (checked above); no importance
    // matrix is passed.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            type_id as _,
            data.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    if written != out.len() {
        return Err(Error::Ggml(format!(
            "ggml wrote {written} bytes, expected {}",
            out.len()
        )));
    }
    Ok(())
}

/// Dequantize `n` values of ggml type `type_id` from `data` with ggml's own
/// `to_float` (every type ggml can read: float, legacy quants, K-quants,
/// i-quants).
pub fn dequantize(type_id: u32, data: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_into(type_id, data, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into `out`, whose length is the number of values.
pub fn dequantize_into(type_id: u32, data: &[u8], out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let (blck, size) =
        type_traits(type_id).ok_or_else(|| Error::Ggml(format!("unknown type {type_id}")))?;
    if n as u64 % blck != 0 {
        return Err(Error::Ggml(format!(
            "{n} values are not whole blocks of {blck}"
        )));
    }
    let need = (n as u64 / blck)
        .checked_mul(size)
        .ok_or_else(|| Error::Ggml("tensor size overflows".into()))?;
    if data.len() as u64 != need {
        return Err(Error::Ggml(format!(
            "{} bytes given, {need} expected for {n} values",
            data.len()
        )));
    }
    if type_id == sys::GGML_TYPE_F32 {
        // ggml has no to_float for F32: the data already is.
        for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        return Ok(());
    }
    // SAFETY: type_id is valid (checked by type_traits); the returned pointer
    // is a static table entry.
    let traits = unsafe { sys::ggml_get_type_traits(type_id as _) };
    // SAFETY: non-NULL for every valid type (a static array element).
    let to_float = unsafe { traits.as_ref() }
        .and_then(|t| t.to_float)
        .ok_or_else(|| Error::Ggml(format!("type {type_id} cannot be dequantized")))?;
    // SAFETY: data holds exactly the bytes of n values of this type (checked
    // above); out has room for n floats.
    unsafe { to_float(data.as_ptr().cast(), out.as_mut_ptr(), n as i64) };
    Ok(())
}

/// One tensor as ggml's GGUF reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub type_id: u32,
    /// Absolute offset of the data in the file.
    pub offset: u64,
}

/// A GGUF header as ggml's `gguf_init_from_file` parses it.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub tensors: Vec<GgufTensorInfo>,
    pub architecture: Option<String>,
    pub general_type: Option<String>,
    pub lora_alpha: Option<f32>,
}

/// Parse a GGUF file's header with ggml's reader (no tensor data loaded).
pub fn read_gguf(path: &Path) -> Result<GgufSummary> {
    let cpath = c_path(path)?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: cpath is a valid C string; with no_alloc and a null ctx, ggml
    // only parses the header.
    let ctx = unsafe { sys::gguf_init_from_file(cpath.as_ptr(), params) };
    if ctx.is_null() {
        return Err(Error::Ggml(format!(
            "{}: gguf_init_from_file failed",
            path.display()
        )));
    }
    let get_str = |key: &str| -> Option<String> {
        let k = std::ffi::CString::new(key).ok()?;
        // SAFETY: ctx is valid until gguf_free below; k outlives the call.
        let id = unsafe { sys::gguf_find_key(ctx, k.as_ptr()) };
        // SAFETY: ctx is valid; id is checked before use.
        if id < 0 || unsafe { sys::gguf_get_kv_type(ctx, id) } != sys::GGUF_TYPE_STRING {
            return None;
        }
        // SAFETY: id is a valid key id holding a string (checked above).
        let s = unsafe { std::ffi::CStr::from_ptr(sys::gguf_get_val_str(ctx, id)) };
        Some(s.to_string_lossy().into_owned())
    };
    let architecture = get_str("general.architecture");
    let general_type = get_str("general.type");
    let alpha_key = c"adapter.lora.alpha";
    // SAFETY: ctx is valid; the key is a static C string.
    let alpha_id = unsafe { sys::gguf_find_key(ctx, alpha_key.as_ptr()) };
    let lora_alpha = (alpha_id >= 0
        // SAFETY: ctx and alpha_id are valid; type checked before reading.
        && unsafe { sys::gguf_get_kv_type(ctx, alpha_id) } == sys::GGUF_TYPE_FLOAT32)
        // SAFETY: as above, the key holds an f32.
        .then(|| unsafe { sys::gguf_get_val_f32(ctx, alpha_id) });
    // SAFETY: ctx is valid.
    let n = unsafe { sys::gguf_get_n_tensors(ctx) };
    // SAFETY: ctx is valid.
    let data_offset = unsafe { sys::gguf_get_data_offset(ctx) } as u64;
    let mut tensors = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n {
        // SAFETY: i < n_tensors; the name is a NUL-terminated string owned by ctx.
        let name = unsafe { std::ffi::CStr::from_ptr(sys::gguf_get_tensor_name(ctx, i)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: i < n_tensors.
        let (ty, off) = unsafe {
            (
                sys::gguf_get_tensor_type(ctx, i),
                sys::gguf_get_tensor_offset(ctx, i),
            )
        };
        tensors.push(GgufTensorInfo {
            name,
            type_id: ty,
            offset: data_offset + off as u64,
        });
    }
    // SAFETY: ctx came from gguf_init_from_file and is freed once.
    unsafe { sys::gguf_free(ctx) };
    Ok(GgufSummary {
        tensors,
        architecture,
        general_type,
        lora_alpha,
    })
}
