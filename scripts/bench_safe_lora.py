#!/usr/bin/env python3
"""Speed and memory of `loraguard safe-lora` against the reference algorithm.

Generates (does not commit) a Llama-3.2-1B-shaped synthetic base and aligned
model, BF16 safetensors of ~2.5 GB each (hidden 2048, 16 layers, 32 heads,
8 KV heads, FFN 8192, vocabulary 128256, tied embeddings), and an r=16
all-linear PEFT adapter. aligned = base + N(0, 0.002²) on every linear weight.

In the same run, cold (page cache dropped before each run, which needs root:
`/proc/sys/vm/drop_caches`; skipped otherwise) and warm:
- reading both models: `cat base aligned > /dev/null`;
- loraguard safe-lora (threshold mode, PEFT output), wall time and peak RSS;
- the reference algorithm (dense C = V·Vᵀ/‖V‖_F per module, then C·B and the
  cosine, torch float32 on CPU, all threads) on one layer's 7 modules,
  extrapolated to the 16 layers (said so in the output); model loading is
  not counted for it.
"""
import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

H, L, HEADS, KV, FFN, VOCAB, R = 2048, 16, 32, 8, 8192, 128256, 16
HD = H // HEADS
MODULES = [  # (HF name, d_out, d_in)
    ("self_attn.q_proj", H, H),
    ("self_attn.k_proj", KV * HD, H),
    ("self_attn.v_proj", KV * HD, H),
    ("self_attn.o_proj", H, H),
    ("mlp.gate_proj", FFN, H),
    ("mlp.up_proj", FFN, H),
    ("mlp.down_proj", H, FFN),
]


def bf16(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32).view(np.uint32)
    return ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors):
    """tensors: list of (name, shape, dtype, generator -> np.ndarray bytes-able)."""
    header, offset = {}, 0
    for name, shape, dtype, _ in tensors:
        n = int(np.prod(shape)) * (2 if dtype == "BF16" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, gen in tensors:
            f.write(gen().tobytes())


def model_tensors(seed: int, aligned: bool):
    def weight(shape, s):
        def gen():
            g = np.random.default_rng(s)
            w = g.standard_normal(shape, dtype=np.float32) * 0.02
            if aligned:
                w += np.random.default_rng(s + 10**6).standard_normal(shape, dtype=np.float32) * 0.002
            return bf16(w)
        return gen

    def fixed(shape, s):
        return lambda: bf16(np.random.default_rng(s).standard_normal(shape, dtype=np.float32) * 0.02)

    t = [("model.embed_tokens.weight", (VOCAB, H), "BF16", fixed((VOCAB, H), seed))]
    k = seed + 1
    for i in range(L):
        t.append((f"model.layers.{i}.input_layernorm.weight", (H,), "BF16", lambda: bf16(np.ones(H))))
        t.append((f"model.layers.{i}.post_attention_layernorm.weight", (H,), "BF16", lambda: bf16(np.ones(H))))
        for m, dout, din in MODULES:
            t.append((f"model.layers.{i}.{m}.weight", (dout, din), "BF16", weight((dout, din), k)))
            k += 1
    t.append(("model.norm.weight", (H,), "BF16", lambda: bf16(np.ones(H))))
    return t


def make_inputs(work: Path):
    base, aligned, adapter = work / "base.safetensors", work / "aligned.safetensors", work / "adapter"
    if not base.exists():
        write_safetensors(base, model_tensors(1, False))
    if not aligned.exists():
        write_safetensors(aligned, model_tensors(1, True))
    adapter.mkdir(exist_ok=True)
    if not (adapter / "adapter_model.safetensors").exists():
        g = np.random.default_rng(3)
        t = []
        for i in range(L):
            for m, dout, din in MODULES:
                pre = f"base_model.model.model.layers.{i}.{m}"
                a = bf16(g.standard_normal((R, din), dtype=np.float32) * 0.02)
                b = bf16(g.standard_normal((dout, R), dtype=np.float32) * 0.002)
                t.append((f"{pre}.lora_A.weight", (R, din), "BF16", lambda a=a: a))
                t.append((f"{pre}.lora_B.weight", (dout, R), "BF16", lambda b=b: b))
        write_safetensors(adapter / "adapter_model.safetensors", t)
        (adapter / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": R, "lora_alpha": 2 * R,
            "target_modules": [m.split(".")[1] for m, _, _ in MODULES]}))
    return base, aligned, adapter


def timed(cmd):
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{cmd} failed: {status}")
    return wall, usage.ru_maxrss / 1024


def reference_layer(base: Path, aligned: Path, adapter: Path):
    from safetensors import safe_open
    total = 0.0
    with safe_open(str(base), "pt") as fb, safe_open(str(aligned), "pt") as fa, \
            safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fl:
        for m, _, _ in MODULES:
            name = f"model.layers.0.{m}"
            wb, wa = fb.get_tensor(f"{name}.weight").float(), fa.get_tensor(f"{name}.weight").float()
            a = fl.get_tensor(f"base_model.model.{name}.lora_A.weight").float()
            b = fl.get_tensor(f"base_model.model.{name}.lora_B.weight").float()
            t0 = time.perf_counter()
            v = wa - wb
            c = torch.mm(v, v.t()) / torch.norm(v)
            w = torch.mm(c, b)
            fw, ori = torch.mm(w, a), torch.mm(b, a)
            cos = torch.nn.functional.cosine_similarity(fw.reshape(1, -1), ori.reshape(1, -1)).item()
            total += time.perf_counter() - t0
            del c, w, fw, ori, v
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--loraguard", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base, aligned, adapter = make_inputs(work)
    gib = (base.stat().st_size + aligned.stat().st_size) / 2**30
    out = work / "safe-out"
    cmd = [args.loraguard, "-q", "safe-lora", str(adapter), "--base", str(base), "--aligned", str(aligned),
           "-o", str(out), "--report", str(work / "safe-report.json")]
    read_cmd = ["sh", "-c", f"cat '{base}' '{aligned}' > /dev/null"]

    def drop_caches():
        try:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return True
        except OSError:
            return False

    def series(cold):
        reads, ours, rss = [], [], []
        for _ in range(args.runs):
            if cold and not drop_caches():
                return None
            reads.append(timed(read_cmd)[0])
            subprocess.run(["rm", "-rf", str(out)], check=True)
            if cold:
                drop_caches()
            w, r = timed(cmd)
            ours.append(w)
            rss.append(r)
        return statistics.median(reads), statistics.median(ours), max(rss)

    cold = series(True)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    subprocess.run(cmd, check=True)  # warm-up: page cache
    warm = series(False)
    torch.set_num_threads(os.cpu_count())
    ref_layer = reference_layer(base, aligned, adapter)
    ref = ref_layer * L
    rep = json.loads((work / "safe-report.json").read_text())
    print(f"Llama-3.2-1B-shaped BF16 base + aligned ({gib:.2f} GiB together), r={R} adapter on "
          f"{len(rep['modules'])} modules; {os.cpu_count()} cores; medians of {args.runs}\n")
    print("| what | wall (s) | peak RSS (MiB) |\n|---|---:|---:|")
    for label, res in (("cold (page cache dropped)", cold), ("warm (page cache)", warm)):
        if res is None:
            print(f"| {label}: not measured (needs root) | | |")
            continue
        read, mine, rss = res
        print(f"| {label}: cat base aligned > /dev/null | {read:.2f} | |")
        print(f"| {label}: loraguard safe-lora | {mine:.2f} | {rss:.0f} |")
    print(f"| reference (dense C per module, torch f32), layer 0 measured | {ref_layer:.1f} | |")
    print(f"| reference extrapolated to {L} layers (x{L}), loading not counted | {ref:.1f} | |")
    for label, res in (("cold", cold), ("warm", warm)):
        if res:
            read, mine, _ = res
            print(f"{label}: speed-up vs reference {ref / mine:.0f}x (goal >= 50x); "
                  f"loraguard / read {mine / read:.2f} (goal <= 1.5)")
    print("peak RSS goal <= 1024 MiB")


if __name__ == "__main__":
    main()
