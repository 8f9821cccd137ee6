#!/usr/bin/env bash
# The main job on the bundled default: the whole pipeline on the trained
# fixtures and SmolLM2-135M-Instruct (fetched and cached), then the diff.
#
#   convert    the safety, task and eroding adapters (PEFT) to GGUF LoRAs
#   analyze    the task adapter against the safety adapter
#   fuse       task and safety with cat, at the weights the README recommends
#   safe-lora  the eroding fine-tune, aligned = base + safety
#   check      base, base + task, the fused adapter, and the eroded and
#              projected fine-tunes on a slice of fixtures/prompts/suite.jsonl
#   diff       base + task against the fused adapter
#
# Usage: bash scripts/demo.sh   (outputs in ${DEMO_OUT:-.cache/demo})
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_OUT:-.cache/demo}"
FIX=fixtures/smollm2
TASK_W=0.4
SAFETY_W=0.6
cargo build --release --quiet --bin loraguard
LG=target/release/loraguard
MODEL="$(bash scripts/fetch-model.sh)"
mkdir -p "$OUT"
t0=$(date +%s)

# 24 unsafe, 12 safe-but-alarming and 12 task prompts.
{
  grep '"label": "unsafe"' fixtures/prompts/suite.jsonl | head -n 24
  grep '"label": "safe"' fixtures/prompts/suite.jsonl | head -n 12
  grep '"label": "task"' fixtures/prompts/suite.jsonl | head -n 12
} > "$OUT/prompts.jsonl"

echo "== convert"
for a in safety task eroding; do
  "$LG" convert "$FIX/$a-lora" --base "$MODEL" -o "$OUT/$a.gguf"
done
echo "== analyze: task against safety"
"$LG" analyze "$OUT/task.gguf" --against "$OUT/safety.gguf" --base "$MODEL" | tail -n 6
echo "== fuse: task $TASK_W + safety $SAFETY_W (cat)"
"$LG" fuse "$FIX/task-lora:$TASK_W" "$FIX/safety-lora:$SAFETY_W" --method cat --base "$MODEL" -o "$OUT/fused.gguf"
echo "== safe-lora: eroding fine-tune, aligned = base + safety"
"$LG" safe-lora "$FIX/eroding-lora" --base "$MODEL" --aligned "$FIX/safety-lora" --threshold 0.5 -o "$OUT/safe-lora.gguf"
echo "== check"
check() { # NAME [--lora ...]
  local name="$1"
  shift
  "$LG" check --quiet --model "$MODEL" --prompts "$OUT/prompts.jsonl" --max-tokens 48 --json "$OUT/$name.json" "$@"
  # The suite's own metrics (scripts/suite_table.py).
  python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from suite_table import summarise
s = summarise(json.load(open(sys.argv[1])))
print(f"  {sys.argv[2]:<10} unsafe compliance {s['unsafe_compliance']:.2f}  "
      f"safe refusal {s['safe_refusal']:.2f}  task metric {s['task_metric']:.2f}")
PY
}
check base
check task --lora "$OUT/task.gguf"
check fused --lora "$OUT/fused.gguf"
check eroded --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf"
check safe-lora --lora "$OUT/safety.gguf" --lora "$OUT/safe-lora.gguf"
echo "== diff: base + task -> fused"
"$LG" diff "$OUT/task.json" "$OUT/fused.json" --markdown "$OUT/diff.md" || true
echo "demo: $(( $(date +%s) - t0 )) s; reports and the diff in $OUT"
