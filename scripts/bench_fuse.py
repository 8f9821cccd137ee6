#!/usr/bin/env python3
"""Speed of `loraguard fuse --method svd` against PEFT's svd path, one run.

Two Llama-3-8B-shaped r=64 BF16 adapters (the convert benchmark's, seeds 0
and 1; 224 modules each) fused at 0.6 / 0.4 to rank 64. loraguard reads
both files, fuses every module through the low-rank SVD and writes a PEFT
directory. PEFT's `add_weighted_adapter(..., combination_type="svd")` forms
each ΔW densely, sums them and runs a full `torch.linalg.svd`; that path is
timed here on one layer's 7 modules (one of each shape; file loading not
counted) and extrapolated to 32 layers, which the output says. Its result is
also the accuracy reference: the relative Frobenius difference of the two
rank-64 products, per measured module (same intended mathematics, with the
scaling applied once).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import LAYERS, MODULES, R, make_adapter  # noqa: E402

K = 64
W = (0.6, 0.4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--loraguard", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    a, b = work / "adapter", work / "adapter-b"
    make_adapter(a, 0)
    make_adapter(b, 1)
    out = work / "fused"
    times = []
    for _ in range(args.runs):
        subprocess.run(["rm", "-rf", str(out)], check=True)
        t0 = time.perf_counter()
        subprocess.run([args.loraguard, "-q", "fuse", f"{a}:{W[0]}", f"{b}:{W[1]}", "--method", "svd",
                        "--rank", str(K), "-o", str(out)], check=True)
        times.append(time.perf_counter() - t0)
    ours = statistics.median(times)
    fused = load_file(str(out / "adapter_model.safetensors"))
    ta, tb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    cfg = json.loads((a / "adapter_config.json").read_text())
    s = cfg["lora_alpha"] / cfg["r"]
    torch.set_num_threads(torch.get_num_threads())
    dense_t, worst = 0.0, 0.0
    for hf, _, _, _ in MODULES:
        name = f"base_model.model.model.layers.0.{hf}"
        t0 = time.perf_counter()
        dw = sum(w * s * (t[f"{name}.lora_B.weight"].float() @ t[f"{name}.lora_A.weight"].float())
                 for w, t in zip(W, (ta, tb)))
        u, sv, vh = torch.linalg.svd(dw, full_matrices=False)
        ref = (u[:, :K] * sv[:K]) @ vh[:K]
        dense_t += time.perf_counter() - t0
        mine = fused[f"{name}.lora_B.weight"].double() @ fused[f"{name}.lora_A.weight"].double()
        worst = max(worst, float((mine - ref.double()).norm() / ref.double().norm()))
    dense_total = dense_t * LAYERS
    print(f"two adapters: {LAYERS * len(MODULES)} modules each, r={R}, BF16 (Llama-3-8B shapes); svd to rank {K}")
    print("| path | wall (s) |\n|---|---:|")
    print(f"| loraguard fuse --method svd (all modules, median of {args.runs}, reading and writing included) | {ours:.2f} |")
    print(f"| PEFT's svd path (dense ΔW + torch.linalg.svd), 7 modules measured | {dense_t:.1f} |")
    print(f"| PEFT's svd path, extrapolated to {LAYERS * len(MODULES)} modules (x{LAYERS}) | {dense_total:.0f} |")
    print(f"speed-up: {dense_total / ours:.0f}x (goal >= 100x)")
    print(f"largest relative difference of the rank-{K} products vs the dense path: {worst:.2e}")


if __name__ == "__main__":
    main()
