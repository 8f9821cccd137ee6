#!/usr/bin/env bash
# The refusal regression suite (issue 7), end to end through llama.cpp.
#
# Converts the trained fixtures (fixtures/smollm2/{safety,task,eroding}-lora)
# with loraguard, fuses the task and safety adapters with cat over a sweep of
# weights, projects the eroding fine-tune with safe-lora, runs `loraguard
# check` over fixtures/prompts/suite.jsonl for each configuration, diffs the
# configurations, and summarises them (scripts/suite_table.py): a results
# table, written into docs/safety.md with --docs, and the sweep plot
# (examples/suite-plot.rs).
#
# Usage: bash scripts/refusal-suite.sh [--docs]
# Environment: SUITE_OUT (default .cache/suite), SUITE_MAX_TOKENS (64),
# SUITE_WEIGHTS (the safety weights of the sweep), SUITE_BOOST (safety
# weights added to the full task adapter), SAFE_LORA_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${SUITE_OUT:-.cache/suite}"
PROMPTS="fixtures/prompts/suite.jsonl"
MAX_TOKENS="${SUITE_MAX_TOKENS:-64}"
# Safety weights of the sweep (0 and 1 are the task and safety rows).
WEIGHTS="${SUITE_WEIGHTS:-0.2 0.4 0.6 0.8}"
# Off the convex sweep: the whole task adapter plus some safety.
BOOST="${SUITE_BOOST:-0.5 1}"
# safe-lora runs twice: the paper's threshold, and projecting only the
# least similar third of the modules.
SAFE_LORA_ARGS="${SAFE_LORA_ARGS:---threshold 0.5}"
SAFE_LORA_PARTIAL="${SAFE_LORA_PARTIAL:---top-n 40}"
FIX=fixtures/smollm2

cargo build --release --quiet --bin loraguard --example suite-plot
LG=target/release/loraguard
MODEL="$(bash scripts/fetch-model.sh)"
mkdir -p "$OUT"
t0=$(date +%s)

echo "== convert"
for a in safety task eroding; do
  "$LG" convert "$FIX/$a-lora" --base "$MODEL" -o "$OUT/$a.gguf"
done

echo "== analyze: task against safety"
"$LG" analyze "$FIX/task-lora" --against "$FIX/safety-lora" --json "$OUT/analyze.json" | tail -n 4

echo "== fuse (cat; task 1-w, safety w)"
for w in $WEIGHTS; do
  t=$(python3 -c "print(round(1 - $w, 6))")
  "$LG" fuse "$FIX/task-lora:$t" "$FIX/safety-lora:$w" --method cat --base "$MODEL" \
    -o "$OUT/fused-$w.gguf" --quiet
done
for w in $BOOST; do
  "$LG" fuse "$FIX/task-lora:1" "$FIX/safety-lora:$w" --method cat --base "$MODEL" \
    -o "$OUT/boost-$w.gguf" --quiet
done

echo "== safe-lora: eroding, base, aligned = base + safety"
# shellcheck disable=SC2086
"$LG" safe-lora "$FIX/eroding-lora" --base "$MODEL" --aligned "$FIX/safety-lora" $SAFE_LORA_ARGS \
  -o "$OUT/safe-lora.gguf" --report "$OUT/safe-lora-report.json"
# shellcheck disable=SC2086
"$LG" safe-lora "$FIX/eroding-lora" --base "$MODEL" --aligned "$FIX/safety-lora" $SAFE_LORA_PARTIAL \
  -o "$OUT/safe-lora-partial.gguf" --report "$OUT/safe-lora-partial-report.json"

echo "== check"
configs="["
run() { # NAME WHAT [SAFETY_WEIGHT|-] [--lora ...]
  local name="$1" what="$2" w="$3"
  shift 3
  "$LG" check --quiet --model "$MODEL" --prompts "$PROMPTS" --max-tokens "$MAX_TOKENS" \
    --json "$OUT/$name.json" "$@"
  local extra=""
  [ "$w" != "-" ] && extra=", \"safety_weight\": $w"
  [ "$configs" != "[" ] && configs+=","
  configs+="{\"name\": \"$name\", \"what\": \"$what\", \"report\": \"$OUT/$name.json\", \"max_tokens\": $MAX_TOKENS$extra}"
  echo "  $name: $what"
}
point() { # NAME REPORT SAFETY_WEIGHT: a sweep point from an existing report
  configs+=",{\"name\": \"$1\", \"what\": \"$1\", \"report\": \"$2\", \"max_tokens\": $MAX_TOKENS, \"safety_weight\": $3, \"table\": false}"
}
run base "base" -
run task "base + task" -  --lora "$OUT/task.gguf"
run safety "base + safety" - --lora "$OUT/safety.gguf"
point sweep-0 "$OUT/task.json" 0
point sweep-1 "$OUT/safety.json" 1
for w in $WEIGHTS; do
  t=$(python3 -c "print(round(1 - $w, 6))")
  run "fused-$w" "fuse cat (task $t, safety $w)" "$w" --lora "$OUT/fused-$w.gguf"
done
for w in $BOOST; do
  run "boost-$w" "fuse cat (task 1, safety $w)" - --lora "$OUT/boost-$w.gguf"
done
run eroded "base + safety merged + eroding" - --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf"
run safe-lora "base + safety merged + safe-lora(eroding; $SAFE_LORA_ARGS)" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/safe-lora.gguf"
run safe-lora-partial "base + safety merged + safe-lora(eroding; $SAFE_LORA_PARTIAL)" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/safe-lora-partial.gguf"
echo "${configs}]" > "$OUT/configs.json"

echo "== diff"
"$LG" diff "$OUT/base.json" "$OUT/safety.json" --markdown "$OUT/diff-base-safety.md"
"$LG" diff "$OUT/task.json" "$OUT/fused-0.4.json" --markdown "$OUT/diff-task-fused.md"
"$LG" diff "$OUT/eroded.json" "$OUT/safe-lora.json" --markdown "$OUT/diff-eroded-safe-lora.md"

echo "== results"
if [ "${1:-}" = "--docs" ]; then
  python3 scripts/suite_table.py "$OUT" --docs docs/safety.md
  mkdir -p docs
  target/release/examples/suite-plot "$OUT/results.json" docs/refusal-sweep.svg
else
  python3 scripts/suite_table.py "$OUT"
  target/release/examples/suite-plot "$OUT/results.json" "$OUT/sweep.svg"
fi
echo "refusal-suite: $(( $(date +%s) - t0 )) s; reports in $OUT"
