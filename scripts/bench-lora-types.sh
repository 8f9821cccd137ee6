#!/usr/bin/env bash
# What each GGUF LoRA tensor type costs, in one run (issue 8, part 3): for
# every --outtype loraguard writes, on SmolLM2-135M-Instruct (Q4_1), the
# file size, the relative error of ΔW as written against PEFT's exact update
# (convert --measure-error: median and worst module), and llama.cpp's
# logits against the F32 conversion of the same adapter (relative error of
# the adapter's effect, and top-1 agreement over 4 texts, every position),
# on the Q4_1 model as shipped and on an F32 copy of it (every matrix,
# the tied embeddings and output head included, merged at scale 0 as F32). On Q4_1, llama.cpp quantizes
# activations to 8 bits, which amplifies tiny differences; the F32 copy
# shows what the LoRA type itself costs.
#
# Adapters: the trained task adapter (r 8: its lora_b rows hold 8 values,
# no quantized block, so lora_b stays F16) and a seeded synthetic r 64
# adapter on every projection (examples/lora-types.rs).
#
# Usage: bash scripts/bench-lora-types.sh [--docs]
#   --docs rewrites the table between the lora-types markers in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$(bash scripts/fetch-model.sh)"
WORK=.cache/bench/lora-types
rm -rf "$WORK"
mkdir -p "$WORK"
cargo build --release --quiet --example lora-types
./target/release/examples/lora-types "$MODEL" "$WORK" --f32-copy \
  fixtures/smollm2/task-lora --synthetic-rank 64 | tee "$WORK/rows.jsonl"
python3 - "$WORK/rows.jsonl" "$WORK/table.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = ["| adapter | --outtype | size (MiB) | tensors in another type | ΔW error median / max | logit error, F32 model | top-1, F32 model | logit error, Q4_1 model | top-1, Q4_1 model |",
       "|---|---|---:|---|---:|---:|---:|---:|---:|"]
for r in rows:
    fb = "none" if r["fallbacks"] == 0 else f'{r["fallbacks"]}/{r["tensors"]} ({", ".join(r["fallback_types"])})'
    q4, f32 = r["logits"][0], r["logits"][1]
    cells = []
    for l in (f32, q4):
        if r["type"] == "F32":
            cells += ["(reference)", "(reference)"]
        else:
            cells += [f'{l["logit_error_vs_f32"]:.4f}', f'{100 * l["top1_agreement_vs_f32"]:.1f}%']
    out.append("| {} | {} | {:.2f} | {} | {:.2e} / {:.2e} | {} |".format(
        r["adapter"], r["type"].lower(), r["bytes"] / 2**20, fb,
        r["delta_error_median"], r["delta_error_max"], " | ".join(cells)))
effects = {r["adapter"]: (r["logits"][1]["logit_effect"], r["logits"][0]["logit_effect"]) for r in rows if r["type"] == "F32"}
out.append("")
out.append("SmolLM2-135M-Instruct through llama.cpp (F32 KV cache), as shipped (Q4_1) and as an F32 copy; "
           "logit error = ‖L(type) − L(f32)‖ / ‖L(f32) − L(base)‖ over every position of 4 texts, "
           "top-1 = share of positions with the same most likely token as the F32 conversion; "
           "the adapters' effects ‖L(f32) − L(base)‖ / ‖L(base)‖ on the F32 / Q4_1 model: "
           + "; ".join(f"{a} {e[0]:.3f} / {e[1]:.3f}" for a, e in effects.items()) + ".")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
if [ "${1:-}" = "--docs" ]; then
  python3 - "$WORK/table.md" docs/benchmarks.md <<'PY'
import sys
table = open(sys.argv[1]).read()
readme = open(sys.argv[2]).read()
begin, end = "<!-- lora-types:begin -->\n", "<!-- lora-types:end -->"
i, j = readme.index(begin) + len(begin), readme.index(end)
open(sys.argv[2], "w").write(readme[:i] + table + readme[j:])
PY
  echo "docs/benchmarks.md table rewritten" >&2
fi
