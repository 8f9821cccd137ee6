//! The one OpenBLAS setting loraguard needs.
//!
//! loraguard runs one module per rayon worker and wants BLAS single-threaded
//! inside each: OpenBLAS's own threads, spinning next to rayon's, made
//! `analyze` 10× slower on 2 cores (measured: 11.7 s against 1.2 s for the
//! spectra of a 224-module adapter). OpenBLAS reads `OPENBLAS_NUM_THREADS`
//! when the library loads, before `main`, so the setting is made through its
//! API instead.

use std::os::raw::c_int;
use std::sync::Once;

#[link(name = "openblas")]
extern "C" {
    fn openblas_set_num_threads(num_threads: c_int);
}

static ONCE: Once = Once::new();

/// Make OpenBLAS single-threaded for the rest of the process (idempotent).
pub fn single_threaded() {
    ONCE.call_once(|| {
        // SAFETY: a plain setter of OpenBLAS's global thread count; called
        // once, before loraguard's first BLAS call in this process.
        unsafe { openblas_set_num_threads(1) }
    });
}
