#!/usr/bin/env python3
"""Speed of `loraguard analyze` spectra against the dense path, in one run.

The adapter is the convert benchmark's Llama-3-8B-shaped synthetic one (r=64
on q, k, v, o, gate, up, down of 32 layers: 224 modules, BF16). loraguard
computes every module's singular values from the factors. The dense path
forms each ΔW = s·B·A in f32 with torch and runs torch.linalg.svdvals; it is
timed on one layer's 7 modules (one of each shape) and extrapolated to the 32
layers, which the output says. Its singular values are also the accuracy
reference for ours.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--loraguard", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    adapter = work / "adapter"
    make_adapter(adapter)
    out = work / "analyze.json"

    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([args.loraguard, "-q", "analyze", str(adapter), "--json", str(out)], check=True)
        times.append(time.perf_counter() - t0)
    ours = statistics.median(times)
    report = json.loads(out.read_text())
    by_name = {m["name"]: m for m in report["modules"]}
    assert len(by_name) == LAYERS * len(MODULES), len(by_name)

    torch.set_num_threads(torch.get_num_threads())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    layer = 0
    dense_t, worst = 0.0, 0.0
    for hf, _, _, _ in MODULES:
        name = f"base_model.model.model.layers.{layer}.{hf}"
        a = tensors[f"{name}.lora_A.weight"].float()
        b = tensors[f"{name}.lora_B.weight"].float()
        t0 = time.perf_counter()
        dw = scale * (b @ a)
        sv = torch.linalg.svdvals(dw)
        dense_t += time.perf_counter() - t0
        mine = torch.tensor(by_name[f"model.layers.{layer}.{hf}"]["spectrum"]["singular_values"], dtype=torch.float64)
        ref = sv[:R].double()
        worst = max(worst, float(((mine - ref).abs() / ref[0]).max()))
    dense_total = dense_t * LAYERS
    print(f"adapter: {LAYERS * len(MODULES)} modules, r={R}, BF16 (Llama-3-8B shapes)")
    print(f"| path | wall (s) |\n|---|---:|")
    print(f"| loraguard analyze (all 224 modules, median of {args.runs}, incl. reading the file) | {ours:.3f} |")
    print(f"| dense ΔW + torch.linalg.svdvals, 7 modules measured | {dense_t:.3f} |")
    print(f"| dense, extrapolated to 224 modules (x{LAYERS}) | {dense_total:.1f} |")
    print(f"speed-up: {dense_total / ours:.0f}x; goal: < 2 s and >= 100x")
    print(f"largest singular-value difference vs dense (relative to sigma_1): {worst:.2e}")


if __name__ == "__main__":
    main()
