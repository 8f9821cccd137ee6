#!/usr/bin/env python3
"""Dense numpy goldens for `fuse --method orthogonal` and per-layer weights
(issue 19). Reads the tiny PEFT adapters fixtures/tiny-llama/adapters/plain
(the "task") and fixtures/fuse/plain-b (the "safety") and writes
fixtures/fuse/subspace-expected.safetensors: for each case, each module's
dense fused update ΔW (float64), as "<case>/<module>", where

  orth_column  plain:1 + plain-b:1.5@1, orthogonal, protect 2, side column:
               (I - Q Qᵀ) ΔW_task + 1.5·[layer 1] ΔW_safety, Q = orth(B_safety)
  orth_row     the same, side row: ΔW_task (I - R Rᵀ), R = orth(A_safetyᵀ)
  orth_both    both projections
  layers_cat   plain:1,0.5%down_proj + plain-b:2@0, cat
  sel_top4     plain:1 + plain-b:1, selective --top-n 4 (SafeMERGE): ΔW_task
               + ΔW_safety in the 4 modules of least similarity
               cos(C ΔW_task, ΔW_task), C = V Vᵀ / ‖V‖_F, V = ΔW_safety
               (rounded to 5 decimals), ΔW_task alone elsewhere; and each
               module's similarity as "sel_sim/<module>" (1×1)

ΔW = (alpha / r)·B·A, as PEFT applies it. The projectors here are dense
d×d matrices, formed on purpose: this is the reference the low-rank code
is checked against. Needs numpy and safetensors.
"""
import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent


def modules(d):
    cfg = json.loads((d / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    t = load_file(str(d / "adapter_model.safetensors"))
    out = {}
    for k in t:
        if k.endswith(".lora_A.weight"):
            m = k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            a = t[k].astype(np.float64)
            b = t[k.replace("lora_A", "lora_B")].astype(np.float64)
            out[m] = (b, a, scale)
    return out


def layer(m):
    return int(re.search(r"layers\.(\d+)\.", m).group(1))


def main():
    task = modules(ROOT / "fixtures/tiny-llama/adapters/plain")
    safety = modules(ROOT / "fixtures/fuse/plain-b")
    assert task.keys() == safety.keys()
    out = {}
    sims = {}
    for m in sorted(task):
        bt, at, st = task[m]
        bs, as_, ss = safety[m]
        dt, ds = st * bt @ at, ss * bs @ as_
        c = ds @ ds.T / np.linalg.norm(ds)
        x = c @ dt
        sims[m] = float((x * dt).sum() / (np.linalg.norm(x) * np.linalg.norm(dt)))
    cut = sorted(round(v, 5) for v in sims.values())[3]
    for m in sorted(task):
        bt, at, st = task[m]
        bs, as_, ss = safety[m]
        dt, ds = st * bt @ at, ss * bs @ as_
        out[f"sel_top4/{m}"] = dt + ds if round(sims[m], 5) <= cut else dt
        out[f"sel_sim/{m}"] = np.array([[sims[m]]])
    for m in sorted(task):
        bt, at, st = task[m]
        bs, as_, ss = safety[m]
        dt, ds = st * bt @ at, ss * bs @ as_
        q = np.linalg.qr(bs)[0]
        r = np.linalg.qr(as_.T)[0]
        pc = np.eye(q.shape[0]) - q @ q.T
        pr = np.eye(r.shape[0]) - r @ r.T
        w = 1.5 if layer(m) == 1 else 0.0
        out[f"orth_column/{m}"] = pc @ dt + w * ds
        out[f"orth_row/{m}"] = dt @ pr + w * ds
        out[f"orth_both/{m}"] = pc @ dt @ pr + w * ds
        wt = 0.5 if m.endswith("down_proj") else 1.0
        out[f"layers_cat/{m}"] = wt * dt + (2.0 if layer(m) == 0 else 0.0) * ds
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
              str(ROOT / "fixtures/fuse/subspace-expected.safetensors"))
    print(f"{len(out)} tensors")


if __name__ == "__main__":
    main()
