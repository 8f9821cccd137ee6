#!/usr/bin/env python3
"""Randomized top-64 subspace of a 4096×14336 weight against the dense SVD.

Two matrices of Llama-3-8B's MLP shape, both seeded:
- "spiked": a Gaussian bulk (entries N(0, 1/n), the spectrum of a random
  weight) plus 96 orthonormal rank-one directions with strengths decaying from
  8 to 1.9 times the bulk's edge, the shape trained weights show (a few
  outlier directions above a Marchenko–Pastur bulk);
- "gaussian": the bulk alone: a nearly flat spectrum, the hardest case for
  any randomized method (its top-64 subspace is barely defined).

loraguard's randomized SVD (k=64, oversampling 10; 2 power iterations, the
`analyze --base` default, and 4) runs through `examples/rsvd.rs`; its time
excludes reading the file. The dense reference is torch.linalg.svd in float64 in the
same run. Accuracy: the relative error of each of the 64 singular values,
the principal cosines between the two top-64 left and right subspaces, and
the energy captured, ‖U_kᵀW‖²_F / Σ_{i≤64} σ_i² (1 is optimal).
"""
import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

M, N, K = 4096, 14336, 64


def make(kind, seed):
    g = np.random.default_rng(seed)
    w = g.standard_normal((M, N), dtype=np.float32) / np.float32(np.sqrt(N))
    if kind == "spiked":
        edge = 1.0 + np.sqrt(M / N)  # the bulk's largest singular value
        p = 96
        u, _ = np.linalg.qr(g.standard_normal((M, p)))
        v, _ = np.linalg.qr(g.standard_normal((N, p)))
        s = edge * 8.0 * (0.985 ** np.arange(p))
        w += ((u * s) @ v.T).astype(np.float32)
    return w


def principal_cosines(a, b):
    return np.linalg.svd(a.T @ b, compute_uv=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--example", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    print(f"weight {M}x{N} f32, top-{K}, oversampling 10; "
          f"dense reference torch.linalg.svd (float64), same run\n")
    print("| matrix | power iterations | rSVD (s, median) | dense SVD (s) | max σ rel. err | "
          "min / median cos (left) | min / median cos (right) | energy captured |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for seed, kind in enumerate(["spiked", "gaussian"]):
        w = make(kind, seed)
        raw = work / f"rsvd-{kind}.f32"
        w.tofile(raw)
        t0 = time.perf_counter()
        u, s, vt = torch.linalg.svd(torch.from_numpy(w).double(), full_matrices=False)
        dense = time.perf_counter() - t0
        u, s, vt = u[:, :K].numpy(), s.numpy(), vt[:K].numpy()
        wd = w.astype(np.float64)
        for q in (2, 4):
            times = []
            for _ in range(args.runs):
                out = subprocess.run([args.example, str(raw), str(M), str(N), str(K), "7",
                                      str(work / f"rsvd-{kind}"), str(q)],
                                     check=True, capture_output=True, text=True).stdout
                res = json.loads(out)
                times.append(res["svd_s"])
            ours = float(np.median(times))
            s_ours = np.array(res["s"])
            u_ours = np.fromfile(work / f"rsvd-{kind}.u.f32", dtype=np.float32).reshape(M, K).astype(np.float64)
            vt_ours = np.fromfile(work / f"rsvd-{kind}.vt.f32", dtype=np.float32).reshape(K, N).astype(np.float64)
            rel = np.abs(s_ours - s[:K]) / s[:K]
            cl = principal_cosines(u_ours, u)
            cr = principal_cosines(vt_ours.T, vt.T)
            energy = float(np.sum((u_ours.T @ wd) ** 2) / np.sum(s[:K] ** 2))
            print(f"| {kind} | {q} | {ours:.3f} | {dense:.1f} | {rel.max():.2e} | "
                  f"{cl.min():.4f} / {np.median(cl):.4f} | {cr.min():.4f} / {np.median(cr):.4f} | {energy:.6f} |",
                  flush=True)
        raw.unlink()
    print(f"\nrSVD threads: {res['threads']}; goal: at most 3 s")


if __name__ == "__main__":
    main()
