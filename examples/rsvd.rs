//! Randomized SVD of one dense f32 matrix, for `scripts/bench-rsvd.sh`.
//!
//! `rsvd IN.f32 ROWS COLS K SEED OUT_PREFIX [POWER_ITERS [OVERSAMPLE]]`: IN is
//! raw little-endian f32,
//! row-major. Writes OUT_PREFIX.u.f32 (ROWS×K), OUT_PREFIX.vt.f32 (K×COLS)
//! and prints a JSON line with the singular values and the time taken by the
//! decomposition alone (the file read is excluded and reported apart).

use std::time::Instant;

use loraguard::linalg::rsvd::{randomized_svd, RsvdOptions};
use ndarray::ArrayView2;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        (7..=9).contains(&args.len()),
        "usage: rsvd IN.f32 ROWS COLS K SEED OUT_PREFIX [POWER_ITERS [OVERSAMPLE]]"
    );
    let (rows, cols, k, seed): (usize, usize, usize, u64) = (
        args[2].parse()?,
        args[3].parse()?,
        args[4].parse()?,
        args[5].parse()?,
    );
    let t0 = Instant::now();
    let bytes = std::fs::read(&args[1])?;
    anyhow::ensure!(bytes.len() == rows * cols * 4, "size mismatch");
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let read_s = t0.elapsed().as_secs_f64();
    let w = ArrayView2::from_shape((rows, cols), &data)?;
    loraguard::linalg::init();
    let t1 = Instant::now();
    let mut opts = RsvdOptions::new(k, seed);
    if let Some(q) = args.get(7) {
        opts.power_iters = q.parse()?;
    }
    if let Some(p) = args.get(8) {
        opts.oversample = p.parse()?;
    }
    let svd = randomized_svd(w, &opts)?;
    let svd_s = t1.elapsed().as_secs_f64();
    let dump = |path: String, m: &ndarray::Array2<f64>| -> anyhow::Result<()> {
        let out: Vec<u8> = m.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        std::fs::write(path, out)?;
        Ok(())
    };
    dump(format!("{}.u.f32", args[6]), &svd.u)?;
    dump(format!("{}.vt.f32", args[6]), &svd.vt)?;
    println!(
        "{}",
        serde_json::json!({
            "read_s": read_s,
            "svd_s": svd_s,
            "threads": rayon::current_num_threads(),
            "power_iters": opts.power_iters,
            "oversample": opts.oversample,
            "s": svd.s.to_vec(),
        })
    );
    Ok(())
}
