#!/usr/bin/env python3
"""Balanced re-factoring in `convert`: the error of what is written, with and
without re-factoring, and truncation by rank and energy, in one run.

Every figure comes from `loraguard convert --measure-error --json`: per module,
‖ΔW − ΔW_written‖_F / ‖ΔW‖_F against PEFT's exact update (tested against a
dense decode by ggml in tests/refactor.rs). "plain" writes PEFT's factors as
they are; "balanced" is `--energy 1` (full rank, B′ = U·√Σ, A′ = √Σ·Vᵀ).

Adapters:
- the convert benchmark's Llama-3-8B-shaped synthetic one (r=64, BF16, i.i.d.
  factors: a flat spectrum, the worst case for truncation), on its sparse
  base (made by scripts/bench-convert.sh);
- the two LoRAs trained with PEFT on SmolLM2-135M-Instruct in fixtures/
  (pirate-lora r=8, sorry-lora r=4). Their lora_b rows (length r < 32) cannot
  be Q8_0 blocks, so in "q8_0" only lora_a is Q8_0 and lora_b is F16.
"""
import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path


def run(loraguard, adapter, base, out, outtype, extra):
    cmd = [loraguard, "-q", "convert", str(adapter), "--base", str(base), "-o", str(out),
           "--outtype", outtype, "--measure-error", "--json", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return json.loads(res.stdout), wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--loraguard", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    work, root = Path(args.work), Path(args.root)
    cases = [
        ("synthetic Llama-3-8B r=64", work / "adapter", work / "base-q4_k.gguf"),
        ("SmolLM2 pirate-lora r=8", root / "fixtures/smollm2/pirate-lora", Path(args.model)),
        ("SmolLM2 sorry-lora r=4", root / "fixtures/smollm2/sorry-lora", Path(args.model)),
    ]
    modes = [
        ("plain", []),
        ("balanced (--energy 1)", ["--energy", "1"]),
    ]
    out = work / "refactor.gguf"
    print("| adapter | outtype | factors | total rank | written error median | max | wall (s) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for label, adapter, base in cases:
        rows = [(o, m, x) for o in ("q8_0", "f16") for m, x in modes]
        rows += [("q8_0", "--max-rank 32" if "r=64" in label else "--max-rank 2",
                  ["--max-rank", "32" if "r=64" in label else "2"]),
                 ("q8_0", "--energy 0.9", ["--energy", "0.9"])]
        for outtype, mode, extra in rows:
            rep, wall = run(args.loraguard, adapter, base, out, outtype, extra)
            errs = sorted(m["written_error"] for m in rep["modules"])
            rank = sum(m["rank"] for m in rep["modules"])
            print(f"| {label} | {outtype} | {mode} | {rank} | {statistics.median(errs):.3e} | "
                  f"{errs[-1]:.3e} | {wall:.2f} |", flush=True)
    out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
