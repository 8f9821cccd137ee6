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

  rslora-a/, rslora-b/    two rsLoRA adapters (r 4, alpha 8, q and v), and
                          under "rslora_cat/" PEFT's cat of them (0.6, 0.4):
                          the fused adapter inherits use_rslora, so PEFT
                          scales it by sqrt(8) instead of 1 (expected.json
                          "rslora_cat_scaling")

Types: cat, linear, ties and magnitude_prune (density 0.5), svd (rank 8),
and the dense ties_svd and magnitude_prune_svd (density 0.5, rank 8).
Weights are positive: peft 0.13.2 takes sqrt(weight * scaling) for the
per-factor types and fails on negative products. DARE is left out (its
masks come from torch's RNG). PEFT's svd paths multiply by the scaling
twice; the tests show that against dense mathematics.

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
TYPES = ["cat", "linear", "ties", "magnitude_prune", "svd", "ties_svd", "magnitude_prune_svd"]
RSLORA = dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"])


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
        extra = {"density": DENSITY} if t.startswith(("ties", "magnitude_prune")) else {}
        if t.endswith("svd"):
            extra["svd_rank"] = 8
        model.add_weighted_adapter(["a", "b"], WEIGHTS, adapter_name=t, combination_type=t, **extra)
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and t in module.lora_A:
                mod = name.removeprefix("base_model.model.")
                tensors[f"{t}/{mod}.A"] = module.lora_A[t].weight.detach().float().contiguous()
                tensors[f"{t}/{mod}.B"] = module.lora_B[t].weight.detach().float().contiguous()
                info["scaling"][t] = module.scaling[t]
    # rsLoRA: PEFT's fused config copies use_rslora from the first adapter.
    mkfix.make_adapter(mkfix.tiny_model(), RSLORA, torch.float32, OUT / "rslora-a", 11)
    mkfix.make_adapter(mkfix.tiny_model(), RSLORA, torch.float32, OUT / "rslora-b", 12)
    model = PeftModel.from_pretrained(mkfix.tiny_model(), str(OUT / "rslora-a"), adapter_name="a")
    model.load_adapter(str(OUT / "rslora-b"), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], WEIGHTS, adapter_name="cat", combination_type="cat")
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "cat" in module.lora_A:
            mod = name.removeprefix("base_model.model.")
            tensors[f"rslora_cat/{mod}.A"] = module.lora_A["cat"].weight.detach().float().contiguous()
            tensors[f"rslora_cat/{mod}.B"] = module.lora_B["cat"].weight.detach().float().contiguous()
            info["rslora_cat_scaling"] = module.scaling["cat"]
    save_file(tensors, str(OUT / "expected.safetensors"))
    (OUT / "expected.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print({t: info["scaling"][t] for t in TYPES}, info["rslora_cat_scaling"], len(tensors))


if __name__ == "__main__":
    main()
