#!/usr/bin/env bash
# The main job on the bundled default: the whole pipeline on the trained
# fixtures and SmolLM2-135M-Instruct (fetched and cached), then the diff.
#
#   convert    the safety, task and eroding adapters (PEFT) to GGUF LoRAs
#   analyze    the task adapter against the safety adapter
#   fuse       task and safety with cat (the seed paper's fusion)
#   safe-lora  the eroding fine-tune, aligned = base + safety
#   tune       task and the task-aware patch (patch-lora: the safety recipe
#              trained on top of the task adapter): per-layer weights and
#              the orthogonal task, searched on fixtures/prompts/calibration.jsonl
#   check      base, base + task, the fused adapter, the eroded and
#              projected fine-tunes, and the tuned adapter on a slice of
#              fixtures/prompts/suite.jsonl (no calibration prompt)
#   diff       base + task against the tuned adapter
# and ends on one summary table, the tuned adapter last.
# DEMO_TUNE_BUDGET (default 8) caps tune's candidates.
#
# Usage: bash scripts/demo.sh   (outputs in ${DEMO_OUT:-.cache/demo})
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
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
# awk reads its whole input (grep | head fails under pipefail when head exits first).
{
  awk '/"label": "unsafe"/ && n++ < 24' fixtures/prompts/suite.jsonl
  awk '/"label": "safe"/ && n++ < 12' fixtures/prompts/suite.jsonl
  awk '/"label": "task"/ && n++ < 12' fixtures/prompts/suite.jsonl
} > "$OUT/prompts.jsonl"

echo "== convert"
for a in safety task eroding; do
  "$LG" convert "$FIX/$a-lora" --base "$MODEL" -o "$OUT/$a.gguf"
done
echo "== analyze: task against safety"
"$LG" analyze "$OUT/task.gguf" --against "$OUT/safety.gguf" --base "$MODEL" --json "$OUT/analyze.json" > "$OUT/analyze.txt"
python3 - "$OUT/analyze.json" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
both = [m for m in d["modules"] if m.get("against")]
med = lambda xs: statistics.median(xs)
print(f"  {len(both)} modules in both; cosine of the two updates: median {med([abs(m['against']['cosine']) for m in both]):.3f} (|cos|)")
print(f"  largest principal cosine of their column spaces: median {med([m['against']['column_cosines'][0] for m in both]):.2f}")
print(f"  task update's share in the base's top-{d['top_k']} subspace: median {med([m['base']['column_energy'] for m in both]):.2f}"
      f" (a random subspace: {med([m['base']['column_energy_random'] for m in both]):.2f})")
PY
echo "== fuse: task $TASK_W + safety $SAFETY_W (cat)"
"$LG" fuse "$FIX/task-lora:$TASK_W" "$FIX/safety-lora:$SAFETY_W" --method cat --base "$MODEL" -o "$OUT/fused.gguf"
echo "== safe-lora: eroding fine-tune, aligned = base + safety"
"$LG" safe-lora "$FIX/eroding-lora" --base "$MODEL" --aligned "$FIX/safety-lora" --threshold 0.5 -o "$OUT/safe-lora.gguf"
echo "== tune: task + the task-aware patch, searched on fixtures/prompts/calibration.jsonl"
"$LG" tune --base "$MODEL" --task "$FIX/task-lora" --safety "$FIX/patch-lora" \
  --calibration fixtures/prompts/calibration.jsonl --task-metric json-keys=topic,answer \
  --budget "${DEMO_TUNE_BUDGET:-8}" -o "$OUT/tuned.gguf" \
  --report "$OUT/tune.json" --plot "$OUT/tune.svg" 2>&1 | tail -n 2
echo "== check"
check() { # NAME [--lora ...]
  local name="$1"
  shift
  echo "  $name"
  "$LG" check --quiet --model "$MODEL" --prompts "$OUT/prompts.jsonl" --max-tokens 48 \
    --json "$OUT/$name.json" --markdown "$OUT/$name.md" "$@"
}
check base
check task --lora "$OUT/task.gguf"
check fused --lora "$OUT/fused.gguf"
check eroded --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf"
check safe-lora --lora "$OUT/safety.gguf" --lora "$OUT/safe-lora.gguf"
check tuned --lora "$OUT/tuned.gguf"
echo "== diff: base + task -> tuned"
"$LG" diff "$OUT/task.json" "$OUT/tuned.json" --markdown "$OUT/diff.md" > "$OUT/diff.txt"
sed -n 3p "$OUT/diff.txt"

echo
echo "== summary ($(( $(date +%s) - t0 )) s)"
# The suite's own metrics (scripts/suite_table.py), one row per configuration.
python3 - "$OUT" "$TASK_W" "$SAFETY_W" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from suite_table import summarise
out, tw, sw = sys.argv[1:4]
rows = [
    ("base", "base"),
    ("task", "base + task"),
    ("fused", f"fuse cat (task {tw}, safety {sw})"),
    ("eroded", "base + safety + eroding fine-tune"),
    ("safe-lora", "base + safety + safe-lora(eroding)"),
    ("tuned", (lambda t: "tune (" + " ".join(f.rsplit("/", 1)[-1] for f in t["fuse"]) + ", " + t["fuse_method"] + ")")(
        json.load(open(f"{out}/tune.json")))),
]
print(f"{'configuration':<58}  {'unsafe compliance':>17}  {'safe refusal':>12}  {'task metric':>11}")
for name, title in rows:
    s = summarise(json.load(open(f"{out}/{name}.json")))
    print(f"{title:<58}  {s['unsafe_compliance']:>17.2f}  {s['safe_refusal']:>12.2f}  {s['task_metric']:>11.2f}")
n = sum(1 for _ in open(f"{out}/prompts.jsonl"))
print(f"\n{n} prompts of fixtures/prompts/suite.jsonl (24 unsafe, 12 safe that look unsafe, 12 task), greedy, 48 new tokens.")
print("unsafe compliance: share of unsafe prompts answered without a refusal (lower is safer); safe refusal: over-refusal;")
print("task metric: share of task answers in the task's JSON format. The full suite and what it means: docs/safety.md.")
PY
echo "reports: $OUT/<configuration>.json and .md (every prompt and output), the diff in $OUT/diff.md,"
echo "the analysis in $OUT/analyze.txt, tune's candidates in $OUT/tune.json and $OUT/tune.svg"
