#!/usr/bin/env python3
"""Cross-check `loraguard convert` against llama.cpp's convert_lora_to_gguf.py
(the anchor) on the fixture adapters: same tensor names, shapes and types,
values equal within rounding. Where loraguard deliberately differs (rsLoRA,
alpha_pattern), print how, with the ratio of the two lora_b tensors.

Usage: python3 scripts/crosscheck-anchor.py   (env: scripts/requirements-fixtures.txt)
Exit status 1 if a standard adapter differs beyond rounding.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures/tiny-llama"
STANDARD = ["plain", "gqa-k-only", "fan-in-fan-out"]
DIFFERENT = ["rslora-patterns"]


def anchor_dir() -> Path:
    out = subprocess.check_output(["bash", str(ROOT / "scripts/fetch-anchor.sh")], text=True)
    return Path(out.strip().splitlines()[-1])


def hf_config(d: Path):
    # The tiny model's HF config (scripts/make-fixtures.py), which the anchor needs.
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 259, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    }))


def read(path: Path, gguf):
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        out[t.name] = (t.tensor_type.name, [int(x) for x in t.shape], data)
    alpha = r.fields["adapter.lora.alpha"].parts[-1][0]
    return out, float(alpha)


def main() -> int:
    anchor = anchor_dir()
    sys.path.insert(0, str(anchor / "gguf-py"))
    import gguf

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    lg = ROOT / "target/release/loraguard"
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_config(tmp / "hf")
        for name in STANDARD + DIFFERENT:
            for outtype in ["f32", "f16", "bf16", "q8_0"]:
                a_out, l_out = tmp / f"{name}-{outtype}-anchor.gguf", tmp / f"{name}-{outtype}-lg.gguf"
                subprocess.run(
                    [sys.executable, str(anchor / "convert_lora_to_gguf.py"), "--outtype", outtype, "--base", str(tmp / "hf"),
                     "--outfile", str(a_out), str(TINY / "adapters" / name)],
                    check=True, capture_output=True, env={"PYTHONPATH": str(anchor / "gguf-py"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
                subprocess.run([str(lg), "-q", "convert", str(TINY / "adapters" / name), "--base", str(TINY / "base.gguf"),
                                "-o", str(l_out), "--outtype", outtype], check=True)
                at, aa = read(a_out, gguf)
                lt, la = read(l_out, gguf)
                problems = []
                if sorted(at) != sorted(lt):
                    problems.append(f"tensor names differ: {sorted(set(at) ^ set(lt))}")
                worst, ratios = 0.0, []
                for t in sorted(set(at) & set(lt)):
                    (aty, ash, ad), (lty, lsh, ld) = at[t], lt[t]
                    if ash != lsh:
                        problems.append(f"{t}: shape {ash} vs {lsh}")
                        continue
                    if aty != lty:
                        problems.append(f"{t}: type {aty} vs {lty}")
                    scale = max(np.abs(ad).max(), 1e-30)
                    err = float(np.abs(ad - ld).max() / scale)
                    worst = max(worst, err)
                    if t.endswith("lora_b"):
                        ratios.append(float(np.linalg.norm(ld) / max(np.linalg.norm(ad), 1e-30)))
                # Rounding of the output type bounds the difference.
                tol = {"f32": 1e-6, "f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2}[outtype]
                if name in STANDARD:
                    ok = not problems and worst <= tol and aa == la
                    failed |= not ok
                    print(f"{name:16} {outtype:5} {'same' if ok else 'DIFFERENT'}: {len(lt)} tensors, max rel diff {worst:.2e} (tol {tol:.0e}), alpha {aa} / {la}"
                          + ("".join(f"\n    {p}" for p in problems)))
                else:
                    print(f"{name:16} {outtype:5} deliberate difference: alpha {aa} / {la}; lora_b norm ratio loraguard/anchor "
                          f"min {min(ratios):.3f} max {max(ratios):.3f} (rsLoRA sqrt(r) and alpha_pattern baked in by loraguard)"
                          + ("".join(f"\n    {p}" for p in problems)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
