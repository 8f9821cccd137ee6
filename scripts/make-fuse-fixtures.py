#!/usr/bin/env python3
"""PEFT `add_weighted_adapter` goldens for loraguard's `fuse` tests.

Writes fixtures/fuse/:
  plain-b/                a second PEFT adapter on the tiny model (r 8,
                          alpha 16, all linear layers, seed 7), the partner
                          of fixtures/tiny-llama/adapters/plain
  expected.safetensors    for each combination type, the merged factors PEFT
                          produces for plain:0.6 + plain-b:0.4, as
                          "<type>/<module>.A" and ".B" (float32)
  expected.json           each type's merged scaling, and the settings

Types: cat, linear, ties and magnitude_prune (density 0.5), and svd (rank 8).
Weights are positive: peft 0.13.2 takes sqrt(weight * scaling) for the
per-factor types and fails on negative products. DARE is left out (its
masks come from torch's RNG). PEFT's svd path multiplies by the scaling
twice; the test shows that against dense mathematics.

Usage: python3 scripts/make-fuse-fixtures.py (env: requirements-fixtures.txt)
"""
import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "fuse"
spec = importlib.util.spec_from_file_location("mkfix", ROOT / "scripts" / "make-fixtures.py")
mkfix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mkfix)

WEIGHTS = [0.6, 0.4]
DENSITY = 0.5
TYPES = ["cat", "linear", "ties", "magnitude_prune", "svd"]


@torch.no_grad()
def main():
    from peft import PeftModel

    OUT.mkdir(parents=True, exist_ok=True)
    kw, dtype = mkfix.TINY_ADAPTERS["plain"]
    mkfix.make_adapter(mkfix.tiny_model(), kw, dtype, OUT / "plain-b", 7)
    model = PeftModel.from_pretrained(mkfix.tiny_model(), str(ROOT / "fixtures/tiny-llama/adapters/plain"), adapter_name="a")
    model.load_adapter(str(OUT / "plain-b"), adapter_name="b")
    tensors, info = {}, {"weights": WEIGHTS, "density": DENSITY, "svd_rank": 8, "scaling": {}}
    for t in TYPES:
        extra = {"density": DENSITY} if t in ("ties", "magnitude_prune") else {}
        if t == "svd":
            extra = {"svd_rank": 8}
        model.add_weighted_adapter(["a", "b"], WEIGHTS, adapter_name=t, combination_type=t, **extra)
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and t in module.lora_A:
                mod = name.removeprefix("base_model.model.")
                tensors[f"{t}/{mod}.A"] = module.lora_A[t].weight.detach().float().contiguous()
                tensors[f"{t}/{mod}.B"] = module.lora_B[t].weight.detach().float().contiguous()
                info["scaling"][t] = module.scaling[t]
    save_file(tensors, str(OUT / "expected.safetensors"))
    (OUT / "expected.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print({t: info["scaling"][t] for t in TYPES}, len(tensors))


if __name__ == "__main__":
    main()
