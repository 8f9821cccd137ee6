#!/usr/bin/env python3
"""Safe LoRA reference and golden outputs for loraguard's `safe-lora` tests.

`safe_lora_reference` below transcribes the published algorithm (Hsu et al.
2024; IBM/SafeLoRA `model.py`): per target module V = W_aligned - W_base,
C = V V^T / ||V||_F (torch.norm: Frobenius, not squared), formed densely;
cos = round(cos_sim(flatten(C B A), flatten(B A)), 5); a module is projected
(B <- C B, A unchanged) when cos <= tau. `threshold` mode uses tau = T;
`number` mode sets tau to the N-th smallest cos, so ties project more. It
pairs V with modules by name (the reference pairs by iteration order). The
"exact-K" variant (not the paper's) replaces C by U_K U_K^T, U_K the top-K
left singular vectors of V. Everything runs in float64 numpy.

Writes fixtures/safe-lora/:
  tiny/base.safetensors        the tiny llama model (HF layout, F32; the
                               model of fixtures/tiny-llama/base.gguf)
  tiny/aligned/                an "aligned" variant as two safetensors shards
                               with model.safetensors.index.json: each linear
                               weight of the 14 modules the `plain` adapter
                               targets moves by 10% of its norm, along a mix
                               (weight t from 0 to 1 over the modules) of
                               rank-8 random noise and the adapter's own
                               column space, so similarities spread out
  tiny/aligned.gguf            the same aligned model as GGUF (llama.cpp's
                               gguf-py and Q/K permutation)
  tiny/base-q8_0.gguf          the base quantized to Q8_0 (for the warning)
  tiny/expected.json           reference similarities and selections for the
                               `plain` adapter: threshold 0.5, top-n 5, exact-4
  tiny/expected.safetensors    reference projected B for those runs
  smollm2-expected.json/.safetensors
                               pirate-lora projected with aligned = base +
                               sorry-lora (V = sorry-lora's ΔW) on q, v, o

Usage: python3 scripts/make-safe-lora-fixtures.py (env: requirements-fixtures.txt)
"""
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "safe-lora"
spec = importlib.util.spec_from_file_location("mkfix", ROOT / "scripts" / "make-fixtures.py")
mkfix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mkfix)


def peft_pairs(adapter_dir: Path, pattern=None):
    """{module: (A, B, scale, b_tensor_name)} from a PEFT directory, float64."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not cfg.get("use_rslora") and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
    t = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for name in t:
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_A\.weight", name)
        if not m or (pattern and not re.search(pattern, m.group(1))):
            continue
        mod = m.group(1)
        b_name = f"base_model.model.{mod}.lora_B.weight"
        a, b = t[name].astype(np.float64), t[b_name].astype(np.float64)
        out[mod] = (a, b, cfg["lora_alpha"] / cfg["r"], b_name)
    return out


def safe_lora_reference(pairs, v_of, mode, value, exact_k=None):
    """The published algorithm on dense matrices; returns per-module results."""
    res = {}
    for mod, (a, b, _, b_name) in sorted(pairs.items()):
        v = v_of(mod)
        if exact_k is None:
            c = v @ v.T / np.linalg.norm(v)  # torch.norm(vec): Frobenius
        else:
            u = np.linalg.svd(v, full_matrices=False)[0][:, :exact_k]
            c = u @ u.T
        cb = c @ b
        fw, ori = cb @ a, b @ a
        cos = float(np.sum(fw * ori) / (np.linalg.norm(fw) * np.linalg.norm(ori)))
        res[mod] = dict(similarity=cos, rounded=float(np.round(cos, 5)), b_name=b_name, projected_b=cb)
    if mode == "threshold":
        tau = value
    else:
        tau = sorted(r["rounded"] for r in res.values())[value - 1]
    for r in res.values():
        r["projected"] = r["rounded"] <= tau
    return res, tau


def dump(res, tau):
    return {
        "threshold": tau,
        "modules": {m: {"similarity": r["similarity"], "projected": r["projected"]} for m, r in res.items()},
    }


def tiny():
    d = OUT / "tiny"
    (d / "aligned").mkdir(parents=True, exist_ok=True)
    gguf, permute = mkfix.import_llama_cpp()
    base = mkfix.tiny_model()
    sd = {k: v.detach().double().numpy() for k, v in base.state_dict().items()}
    pairs = peft_pairs(ROOT / "fixtures/tiny-llama/adapters/plain")
    rng = np.random.default_rng(7)
    aligned = dict(sd)
    mods = sorted(pairs)
    for i, mod in enumerate(mods):
        a, b, _, _ = pairs[mod]
        w = sd[f"{mod}.weight"]
        t = i / (len(mods) - 1)
        along = b @ rng.standard_normal((b.shape[1], w.shape[1]))
        # Rank-8 noise: real alignment updates are far from isotropic, and a
        # full-rank V would make C nearly a multiple of the identity.
        noise = rng.standard_normal((w.shape[0], 8)) @ rng.standard_normal((8, w.shape[1]))
        delta = t * along / np.linalg.norm(along) + (1 - t) * noise / np.linalg.norm(noise)
        aligned[f"{mod}.weight"] = w + 0.1 * np.linalg.norm(w) * delta / np.linalg.norm(delta)
    f32 = lambda m: {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in m.items()}
    save_file(f32(sd), str(d / "base.safetensors"), metadata={"format": "pt"})
    names = sorted(aligned)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file(f32({k: aligned[k] for k in keys}), str(d / "aligned" / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    (d / "aligned" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1, sort_keys=True) + "\n")
    # The aligned model as GGUF, and the base quantized to Q8_0.
    model = mkfix.tiny_model()
    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_(torch.from_numpy(aligned[k].astype(np.float32)))
    mkfix.write_tiny_gguf(model, d / "aligned.gguf", gguf, permute)
    write_q8(gguf, ROOT / "fixtures/tiny-llama/base.gguf", d / "base-q8_0.gguf")

    # Reference runs on the HF-layout float64 weights (the saved F32 values).
    base32 = load_file(str(d / "base.safetensors"))
    al32 = {}
    for fname in shards:
        al32.update(load_file(str(d / "aligned" / fname)))
    v_of = lambda mod: al32[f"{mod}.weight"].astype(np.float64) - base32[f"{mod}.weight"].astype(np.float64)
    expected, tensors = {}, {}
    for key, mode, value, k in [("threshold-0.5", "threshold", 0.5, None), ("top-5", "number", 5, None),
                                ("exact-4", "threshold", 0.5, 4)]:
        res, tau = safe_lora_reference(pairs, v_of, mode, value, k)
        expected[key] = dump(res, tau)
        for m, r in res.items():
            if r["projected"]:
                tensors[f"{key}/{r['b_name']}"] = r["projected_b"].astype(np.float32)
    (d / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    save_file(tensors, str(d / "expected.safetensors"))
    for key, e in expected.items():
        n = sum(m["projected"] for m in e["modules"].values())
        print(f"tiny {key}: tau {e['threshold']}, projected {n}/{len(e['modules'])}")


def write_q8(gguf, src: Path, dst: Path):
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(field.parts[i]) for i in field.data]
            else:
                val = [field.parts[i].tolist()[0] for i in field.data]
            w.add_array(field.name, val)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(field.name, bytes(field.parts[field.data[0]]).decode())
        else:
            w.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], vtype)
    for t in r.tensors:
        data = np.array(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        if t.name.endswith("norm.weight") or data.shape[-1] % 32:
            w.add_tensor(t.name, data)
        else:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def smollm2():
    pat = r"self_attn\.(q|v|o)_proj$"
    pairs = peft_pairs(ROOT / "fixtures/smollm2/pirate-lora", pat)
    safety = peft_pairs(ROOT / "fixtures/smollm2/sorry-lora", pat)
    v_of = lambda mod: safety[mod][2] * safety[mod][1] @ safety[mod][0]
    expected, tensors = {}, {}
    for key, mode, value in [("threshold-0.5", "threshold", 0.5), ("top-10", "number", 10)]:
        res, tau = safe_lora_reference(pairs, v_of, mode, value)
        expected[key] = dump(res, tau)
        for m in sorted(res)[:3]:
            r = res[m]
            if r["projected"]:
                tensors[f"{key}/{r['b_name']}"] = r["projected_b"].astype(np.float32)
        n = sum(r["projected"] for r in res.values())
        print(f"smollm2 {key}: tau {tau}, projected {n}/{len(res)}")
    (OUT / "smollm2-expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    save_file(tensors, str(OUT / "smollm2-expected.safetensors"))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    tiny()
    smollm2()
