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
# It also fuses with `orthogonal`, runs `loraguard tune` on
# fixtures/prompts/calibration.jsonl (no suite prompt) for the task adapter
# with the safety adapter, with the task-aware patch (patch-lora: the safety
# recipe trained on top of the task adapter) and for the eroded case (also
# with eroded-patch-lora, the recipe trained on top of base + safety +
# eroding), and runs the main configurations on a held-out
# set in another style (fixtures/prompts/heldout-style.jsonl). Every report
# is also re-judged with GCG's markers, the old rule, for comparison.
#
# Usage: bash scripts/refusal-suite.sh [--docs]
# Environment: SUITE_OUT (default .cache/suite), SUITE_MAX_TOKENS (64),
# SUITE_WEIGHTS (the safety weights of the sweep), SUITE_BOOST (safety
# weights added to the full task adapter), SAFE_LORA_ARGS, TUNE_ARGS;
# SUITE_RESUME=1 keeps the tune outputs and check reports already in
# SUITE_OUT (an interrupted run goes on where it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${SUITE_OUT:-.cache/suite}"
PROMPTS="fixtures/prompts/suite.jsonl"
HELDOUT="fixtures/prompts/heldout-style.jsonl"
CALIBRATION="fixtures/prompts/calibration.jsonl"
MAX_TOKENS="${SUITE_MAX_TOKENS:-64}"
# Task answers on the calibration set are judged at the suite's length.
TUNE_ARGS="${TUNE_ARGS:---task-metric json-keys=topic,answer --task-tokens $MAX_TOKENS}"
# Safety weights of the sweep (0 and 1 are the task and safety rows).
WEIGHTS="${SUITE_WEIGHTS:-0.2 0.4 0.6 0.8}"
# Off the convex sweep: the whole task adapter plus some safety.
BOOST="${SUITE_BOOST:-0.5 1}"
# safe-lora runs twice: the paper's threshold, and its number mode on about
# 10% of the eroding adapter's 120 modules, as the paper uses it.
SAFE_LORA_ARGS="${SAFE_LORA_ARGS:---threshold 0.5}"
SAFE_LORA_PARTIAL="${SAFE_LORA_PARTIAL:---top-n 12}"
FIX=fixtures/smollm2

cargo build --release --quiet --bin loraguard --example suite-plot
LG=target/release/loraguard
MODEL="$(bash scripts/fetch-model.sh)"
mkdir -p "$OUT"
t0=$(date +%s)

echo "== convert"
for a in safety task eroding patch eroded-patch; do
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

echo "== fuse selective (SafeMERGE: safety 1 in the half of the shared modules least similar to the task)"
"$LG" fuse "$FIX/task-lora:1" "$FIX/safety-lora:1" --method selective --top-n 60 --base "$MODEL" \
  -o "$OUT/sel-1.gguf" --quiet

echo "== fuse orthogonal (task 1, safety 1: the task's B without its part in the safety adapter's column space)"
"$LG" fuse "$FIX/task-lora:1" "$FIX/safety-lora:1" --method orthogonal --base "$MODEL" \
  -o "$OUT/orth-1.gguf" --quiet

echo "== fuse cat (task 1, task-aware patch 1: one file with the runtime sum's ΔW)"
"$LG" fuse "$FIX/task-lora:1" "$FIX/patch-lora:1" --method cat --base "$MODEL" -o "$OUT/patch-fused.gguf" --quiet

resume() { [ -n "${SUITE_RESUME:-}" ] && [ -f "$1" ]; }
echo "== tune: task + safety on the calibration prompts"
# shellcheck disable=SC2086
resume "$OUT/tune-report.json" || "$LG" tune --base "$MODEL" --task "$FIX/task-lora" --safety "$FIX/safety-lora" \
  --calibration "$CALIBRATION" -o "$OUT/tuned.gguf" --report "$OUT/tune-report.json" \
  --plot "$OUT/tune-frontier.svg" $TUNE_ARGS
echo "== tune: task + the task-aware patch (the safety recipe trained on top of the task adapter)"
# shellcheck disable=SC2086
resume "$OUT/patch-tune-report.json" || "$LG" tune --base "$MODEL" --task "$FIX/task-lora" --safety "$FIX/patch-lora" \
  --calibration "$CALIBRATION" -o "$OUT/patch-tuned.gguf" --report "$OUT/patch-tune-report.json" \
  --plot "$OUT/patch-tune-frontier.svg" $TUNE_ARGS
echo "== tune: the eroded case (the eroding fine-tune over base + safety merged)"
# shellcheck disable=SC2086
resume "$OUT/eroded-tune-report.json" || "$LG" tune --base "$MODEL" --base-lora "$OUT/safety.gguf" --task "$FIX/eroding-lora" \
  --safety "$FIX/safety-lora" --calibration "$CALIBRATION" -o "$OUT/eroded-tuned.gguf" \
  --report "$OUT/eroded-tune-report.json" --plot "$OUT/eroded-tune-frontier.svg" $TUNE_ARGS
echo "== tune: the eroded case with the eroded patch (the safety recipe trained on top of base + safety + eroding)"
# shellcheck disable=SC2086
resume "$OUT/eroded-patch-tune-report.json" || "$LG" tune --base "$MODEL" --base-lora "$OUT/safety.gguf" --task "$FIX/eroding-lora" \
  --safety "$FIX/eroded-patch-lora" --calibration "$CALIBRATION" -o "$OUT/eroded-patch-tuned.gguf" \
  --report "$OUT/eroded-patch-tune-report.json" --plot "$OUT/eroded-patch-tune-frontier.svg" $TUNE_ARGS
spec() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(' '.join(f.rsplit('/',1)[-1] for f in r['fuse']), r['fuse_method'])" "$1"; }

echo "== safe-lora: eroding, base, aligned = base + safety"
# shellcheck disable=SC2086
"$LG" safe-lora "$FIX/eroding-lora" --base "$MODEL" --aligned "$FIX/safety-lora" $SAFE_LORA_ARGS \
  -o "$OUT/safe-lora.gguf" --report "$OUT/safe-lora-report.json"
# shellcheck disable=SC2086
"$LG" safe-lora "$FIX/eroding-lora" --base "$MODEL" --aligned "$FIX/safety-lora" $SAFE_LORA_PARTIAL \
  -o "$OUT/safe-lora-partial.gguf" --report "$OUT/safe-lora-partial-report.json"

echo "== check"
configs="["
run() { # NAME WHAT [SAFETY_WEIGHT|-] [--lora ...]: on the suite
  local name="$1" what="$2" w="$3"
  shift 3
  check_set suite "$PROMPTS" "$name" "$what" "$w" "$@"
}
run_hs() { # NAME WHAT [--lora ...]: on the held-out set in another style
  local name="$1" what="$2"
  shift 2
  check_set heldout-style "$HELDOUT" "hs-$name" "$what" - "$@"
}
check_set() { # SET PROMPTS NAME WHAT SAFETY_WEIGHT|- [--lora ...]
  local set="$1" prompts="$2" name="$3" what="$4" w="$5"
  shift 5
  resume "$OUT/$name-markers.json" || "$LG" check --quiet --model "$MODEL" --prompts "$prompts" --max-tokens "$MAX_TOKENS" \
    --json "$OUT/$name.json" "$@"
  resume "$OUT/$name-markers.json" ||
    "$LG" -q judge "$OUT/$name.json" --judge markers --json "$OUT/$name-markers.json"
  local extra=""
  [ "$w" != "-" ] && extra=", \"safety_weight\": $w"
  [ "$configs" != "[" ] && configs+=","
  configs+="{\"set\": \"$set\", \"name\": \"$name\", \"what\": \"$what\", \"report\": \"$OUT/$name.json\", \"markers\": \"$OUT/$name-markers.json\", \"max_tokens\": $MAX_TOKENS$extra}"
  echo "  $set $name: $what"
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
run orth-1 "fuse orthogonal (task 1, safety 1)" - --lora "$OUT/orth-1.gguf"
run sel-1 "fuse selective (task 1, safety 1 in 60 of 120 shared modules)" - --lora "$OUT/sel-1.gguf"
run tuned "tune: $(spec "$OUT/tune-report.json")" - --lora "$OUT/tuned.gguf"
run patch "base + task + patch (runtime sum)" - --lora "$OUT/task.gguf" --lora "$OUT/patch.gguf"
run patch-fused "fuse cat (task 1, patch 1)" - --lora "$OUT/patch-fused.gguf"
run patch-tuned "tune: $(spec "$OUT/patch-tune-report.json")" - --lora "$OUT/patch-tuned.gguf"
run eroded "base + safety merged + eroding" - --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf"
run eroded-tuned "base + safety merged + tune(eroding): $(spec "$OUT/eroded-tune-report.json")" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/eroded-tuned.gguf"
run eroded-patch "base + safety merged + eroding + eroded patch (runtime sum)" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf" --lora "$OUT/eroded-patch.gguf"
run eroded-patch-tuned "base + safety merged + tune(eroding, eroded patch): $(spec "$OUT/eroded-patch-tune-report.json")" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/eroded-patch-tuned.gguf"
run safe-lora "base + safety merged + safe-lora(eroding; $SAFE_LORA_ARGS)" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/safe-lora.gguf"
run safe-lora-partial "base + safety merged + safe-lora(eroding; $SAFE_LORA_PARTIAL)" - \
  --lora "$OUT/safety.gguf" --lora "$OUT/safe-lora-partial.gguf"
run_hs base "base"
run_hs task "base + task" --lora "$OUT/task.gguf"
run_hs safety "base + safety" --lora "$OUT/safety.gguf"
run_hs boost-1 "fuse cat (task 1, safety 1)" --lora "$OUT/boost-1.gguf"
run_hs orth-1 "fuse orthogonal (task 1, safety 1)" --lora "$OUT/orth-1.gguf"
run_hs sel-1 "fuse selective (task 1, safety 1 in 60 of 120 shared modules)" --lora "$OUT/sel-1.gguf"
run_hs tuned "tune: $(spec "$OUT/tune-report.json")" --lora "$OUT/tuned.gguf"
run_hs patch "base + task + patch (runtime sum)" --lora "$OUT/task.gguf" --lora "$OUT/patch.gguf"
run_hs patch-fused "fuse cat (task 1, patch 1)" --lora "$OUT/patch-fused.gguf"
run_hs patch-tuned "tune: $(spec "$OUT/patch-tune-report.json")" --lora "$OUT/patch-tuned.gguf"
run_hs eroded "base + safety merged + eroding" --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf"
run_hs eroded-tuned "base + safety merged + tune(eroding)" --lora "$OUT/safety.gguf" --lora "$OUT/eroded-tuned.gguf"
run_hs eroded-patch "base + safety merged + eroding + eroded patch (runtime sum)" \
  --lora "$OUT/safety.gguf" --lora "$OUT/eroding.gguf" --lora "$OUT/eroded-patch.gguf"
run_hs eroded-patch-tuned "base + safety merged + tune(eroding, eroded patch)" \
  --lora "$OUT/safety.gguf" --lora "$OUT/eroded-patch-tuned.gguf"
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
  cp "$OUT/tune-frontier.svg" docs/tune-frontier.svg
  cp "$OUT/eroded-tune-frontier.svg" docs/eroded-tune-frontier.svg
  cp "$OUT/patch-tune-frontier.svg" docs/patch-tune-frontier.svg
  cp "$OUT/eroded-patch-tune-frontier.svg" docs/eroded-patch-tune-frontier.svg
else
  python3 scripts/suite_table.py "$OUT"
  target/release/examples/suite-plot "$OUT/results.json" "$OUT/sweep.svg"
fi
echo "refusal-suite: $(( $(date +%s) - t0 )) s; reports in $OUT"
