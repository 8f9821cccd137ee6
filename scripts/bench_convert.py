#!/usr/bin/env python3
"""Driver for scripts/bench-convert.sh: make the inputs, time every command,
measure peak RSS of each child, print a Markdown table."""
import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LAYERS, EMBD, KV, FFN, R = 32, 4096, 1024, 14336, 64
MODULES = [
    ("self_attn.q_proj", "attn_q", EMBD, EMBD),
    ("self_attn.k_proj", "attn_k", EMBD, KV),
    ("self_attn.v_proj", "attn_v", EMBD, KV),
    ("self_attn.o_proj", "attn_output", EMBD, EMBD),
    ("mlp.gate_proj", "ffn_gate", EMBD, FFN),
    ("mlp.up_proj", "ffn_up", EMBD, FFN),
    ("mlp.down_proj", "ffn_down", FFN, EMBD),
]


def make_adapter(d: Path, seed: int = 0):
    d.mkdir(parents=True, exist_ok=True)
    st = d / "adapter_model.safetensors"
    if st.exists():
        return
    rng = np.random.default_rng(seed)
    header, offset, chunks = {}, 0, []
    for layer in range(LAYERS):
        for hf, _, din, dout in MODULES:
            for suffix, shape in (("lora_A", (R, din)), ("lora_B", (dout, R))):
                name = f"base_model.model.model.layers.{layer}.{hf}.{suffix}.weight"
                n = shape[0] * shape[1]
                f = (rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32)
                bf16 = ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)
                header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
                offset += 2 * n
                chunks.append(bf16)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(st, "wb") as out:
        out.write(struct.pack("<Q", len(h)))
        out.write(h)
        for c in chunks:
            out.write(c.tobytes())
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": R, "lora_alpha": 2 * R, "target_modules": [m[0].split(".")[1] for m in MODULES],
        "base_model_name_or_path": "synthetic-llama-3-8b",
    }))


def make_hf_config(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": EMBD,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
    }))


def make_base(path: Path, gguf_py: str):
    if path.exists():
        return
    sys.path.insert(0, gguf_py)
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_embedding_length(EMBD)
    w.add_head_count(32)
    w.add_head_count_kv(8)
    w.add_feed_forward_length(FFN)
    q4k = gguf.GGMLQuantizationType.Q4_K
    total = 0
    for layer in range(LAYERS):
        for _, gg, din, dout in MODULES:
            nbytes = din // 256 * 144 * dout
            w.add_tensor_info(f"blk.{layer}.{gg}.weight", (dout, din // 256 * 144), np.dtype(np.uint8), nbytes, raw_dtype=q4k)
            total += nbytes + (-nbytes % 32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # Sparse data section: the tensor table is all convert reads.
    with open(path, "r+b") as f:
        f.seek(0, 2)
        pad = -f.tell() % 32
        f.truncate(f.tell() + pad + total)


def measure(cmd, env=None, quiet=False):
    """Wall seconds and peak RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        if env:
            os.environ.update(env)
        if quiet:  # the anchor logs every tensor
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
        os.execvp(cmd[0], cmd)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, ru.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loraguard", required=True)
    ap.add_argument("--anchor", required=True)
    ap.add_argument("--anchor-path", required=True)
    a = ap.parse_args()
    work = Path(a.work)
    adapter, hf, base = work / "adapter", work / "hf-config", work / "base-q4_k.gguf"
    make_adapter(adapter)
    make_hf_config(hf)
    make_base(base, a.anchor_path)
    src = adapter / "adapter_model.safetensors"
    print(f"input: {src.stat().st_size / 2**20:.0f} MiB BF16 safetensors, {LAYERS * len(MODULES)} modules, r={R}", flush=True)
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    rows = []

    def bench(label, cmd, out, runs, env=None, quiet=False):
        results = []
        for _ in range(runs):
            if out and out.exists():
                out.unlink()
            os.sync()  # start each run with no earlier run's write-back pending
            results.append(measure(cmd, env, quiet))
        wall = statistics.median(r[0] for r in results)
        rss = max(r[1] for r in results)
        rows.append((label, wall, rss))
        print(f"{label}: {wall:.3f} s (median of {runs}), peak RSS {rss:.0f} MiB", flush=True)
        return wall, rss

    out = work / "out.gguf"
    # The floor two ways: `cat` leaves its output in the page cache; loraguard
    # syncs its output to disk before the rename (an interrupted or crashed
    # run never leaves a partial file), which `cat` followed by `sync FILE`
    # matches. Neither the anchor nor `cat` syncs.
    cat_t, _ = bench("cat input > file", ["sh", "-c", f"cat '{src}' > '{out}'"], out, a.runs)
    sync_t, _ = bench("cat input > file && sync file", ["sh", "-c", f"cat '{src}' > '{out}' && sync '{out}'"], out, a.runs)
    res = {}
    for outtype in ("f16", "q8_0"):
        lg = [a.loraguard, "-q", "convert", str(adapter), "--base", str(base), "-o", str(out), "--outtype", outtype]
        res[("lg", outtype)] = bench(f"loraguard convert --outtype {outtype}", lg, out, a.runs)
        bench(f"loraguard convert --outtype {outtype} --source-hash sha256", lg + ["--source-hash", "sha256"], out, a.runs)
        res[("anchor", outtype)] = bench(
            f"convert_lora_to_gguf.py --outtype {outtype}",
            [sys.executable, a.anchor, "--outtype", outtype, "--base", str(hf), "--outfile", str(out), str(adapter)],
            out, max(1, a.runs - 1), env={"PYTHONPATH": a.anchor_path, "HF_HUB_OFFLINE": "1"}, quiet=True)
    print()
    print("| command | wall (s) | peak RSS (MiB) |")
    print("|---|---:|---:|")
    for label, wall, rss in rows:
        print(f"| {label} | {wall:.3f} | {rss:.0f} |")
    print()
    for outtype, goal in (("f16", 1.5), ("q8_0", 2.0)):
        lg, an = res[("lg", outtype)], res[("anchor", outtype)]
        print(f"{outtype}: {an[0] / lg[0]:.1f}x faster than the anchor (goal >= 15x); "
              f"{lg[0] / cat_t:.2f}x cat (goal <= {goal}x), {lg[0] / sync_t:.2f}x cat && sync; "
              f"RSS {lg[1]:.0f} vs {an[1]:.0f} MiB ({lg[1] / an[1]:.2f} of the anchor, goal < 0.5)")
    shutil.rmtree(work / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
