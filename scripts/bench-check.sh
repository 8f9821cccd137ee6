#!/usr/bin/env bash
# Throughput of `loraguard check` against llama.cpp's own llama-batched-bench,
# in one run, on SmolLM2-135M-Instruct: 64 prompts x 64 new tokens, 64
# parallel sequences, the same threads, batch (2048) and micro-batch (512).
#
# llama-batched-bench is built with cmake from the very llama.cpp sources that
# llama-cpp-sys-2 vendors (and loraguard links); its driver program,
# tools/batched-bench/batched-bench.cpp, is taken from the llama-cpp-python
# sdist (scripts/fetch-anchor.sh) because the crate ships llama.cpp without
# its tools. Two builds:
#   same-flags: GGML_NATIVE=OFF, as llama-cpp-sys-2 builds ggml for loraguard;
#   native:     GGML_NATIVE=ON, llama.cpp's own cmake default on this CPU.
#
# Usage: bash scripts/bench-check.sh      (THREADS=N to override nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
NPL=64
NTG=64
RUNS=3
MODEL="$(bash scripts/fetch-model.sh)"
ANCHOR="$(bash scripts/fetch-anchor.sh | tail -1)"
SYS="$(bash scripts/llama-cpp-src.sh)"
SYS_VERSION="$(cargo metadata --format-version 1 | python3 -c '
import json, sys
print([p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "llama-cpp-sys-2"][0])')"
B=.cache/bench/batched-bench
mkdir -p "$B/src"
cat > "$B/src/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.14)
project(loraguard_batched_bench C CXX)
set(LLAMA_BUILD_COMMON ON CACHE BOOL "" FORCE)
set(LLAMA_CURL OFF CACHE BOOL "" FORCE)
set(LLAMA_OPENSSL OFF CACHE BOOL "" FORCE)
add_subdirectory("$SYS" llama.cpp)
add_library(batched-bench-impl STATIC "$ANCHOR/tools/batched-bench/batched-bench.cpp")
target_link_libraries(batched-bench-impl PUBLIC llama-common llama)
add_executable(llama-batched-bench "$ANCHOR/tools/batched-bench/main.cpp")
target_link_libraries(llama-batched-bench PRIVATE batched-bench-impl)
target_compile_features(llama-batched-bench PRIVATE cxx_std_17)
CMAKE
for flavor in same-flags native; do
  native=OFF
  [ "$flavor" = native ] && native=ON
  if [ ! -x "$B/build-$flavor/llama-batched-bench" ]; then
    echo "building llama-batched-bench ($flavor) from $SYS ..." >&2
    cmake -S "$B/src" -B "$B/build-$flavor" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE="$native" \
      -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
    cmake --build "$B/build-$flavor" --target llama-batched-bench -j "$(nproc)" >/dev/null
  fi
done
echo "building loraguard (release) ..." >&2
cargo build --release --quiet

# 64 distinct chat prompts.
PROMPTS="$B/prompts.txt"
python3 - "$PROMPTS" "$NPL" <<'PY'
import sys
animals = ["fox", "owl", "whale", "tiger", "ant", "horse", "crow", "otter"]
skills = ["sing", "swim", "read maps", "bake bread", "fly kites", "count stars", "build boats", "tell jokes"]
out = [f"Write a short story about a {a} who learns to {s}, in three sentences." for a in animals for s in skills]
open(sys.argv[1], "w").write("\n".join(out[: int(sys.argv[2])]) + "\n")
PY

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Prompt tokens per sequence, for llama-batched-bench's -npp.
ptok="$(./target/release/loraguard --threads "$THREADS" check --model "$MODEL" --prompts "$PROMPTS" \
  --max-tokens 1 --parallel "$NPL" 2>&1 >/dev/null | sed -nE 's/.*: ([0-9]+) prompt \+.*/\1/p')"
NPP=$(( (ptok + NPL / 2) / NPL ))
# Runs alternate between the runners, so drift in the machine's speed
# (±5% here) hits all of them alike.
ours_total=(); ours_tg=()
declare -A tot tg failed
for i in $(seq "$RUNS"); do
  line="$(./target/release/loraguard --threads "$THREADS" check --model "$MODEL" --prompts "$PROMPTS" \
    --max-tokens "$NTG" --ignore-eos --parallel "$NPL" 2>&1 >/dev/null | grep ' prompts: ')"
  echo "loraguard: $line" >&2
  # "64 prompts: P prompt + G generated tokens in T s (...)"
  read -r ptok gtok secs < <(echo "$line" | sed -E 's/.*: ([0-9]+) prompt \+ ([0-9]+) generated tokens in ([0-9.]+) s.*/\1 \2 \3/')
  # Tokens decoded: every prompt token, and every generated token but each
  # prompt's last (sampled, never fed back). llama-batched-bench decodes
  # npl*npp + npl*ntg tokens; counting ours this way favours neither.
  ours_total+=("$(python3 -c "print(($ptok + $gtok - $NPL) / $secs)")")
  ours_tg+=("$(python3 -c "print($gtok / $secs)")")
  for flavor in same-flags native; do
    # A runner that crashes (the GGML_NATIVE=ON build segfaults on some
    # CPUs here) is reported as such, not allowed to end the run.
    row="$("$B/build-$flavor/llama-batched-bench" -m "$MODEL" -c $((NPL * 256)) -b 2048 -ub 512 \
      -npp "$NPP" -ntg "$NTG" -npl "$NPL" -t "$THREADS" -tb "$THREADS" 2>/dev/null | grep -E '^\|\s+[0-9]' | tail -1 || true)"
    echo "llama-batched-bench ($flavor): ${row:-crashed or printed no result}" >&2
    [ -n "$row" ] || { failed[$flavor]=1; continue; }
    # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    tg[$flavor]+="$(echo "$row" | awk -F'|' '{gsub(/ /,"",$9); print $9}') "
    tot[$flavor]+="$(echo "$row" | awk -F'|' '{gsub(/ /,"",$11); print $11}') "
  done
done
declare -A ref_total ref_tg
for flavor in same-flags native; do
  [ -z "${failed[$flavor]:-}" ] || continue
  ref_total[$flavor]="$(printf '%s\n' ${tot[$flavor]} | median)"
  ref_tg[$flavor]="$(printf '%s\n' ${tg[$flavor]} | median)"
done
ot="$(printf '%s\n' "${ours_total[@]}" | median)"
og="$(printf '%s\n' "${ours_tg[@]}" | median)"
echo
echo "SmolLM2-135M-Instruct Q4_1, $NPL prompts x $NTG new tokens (~$NPP prompt tokens each), $NPL parallel, $THREADS threads, llama-cpp-sys-2 $SYS_VERSION; median of $RUNS"
echo
echo "| runner | decoded tokens/s (prompts + generation) | loraguard / runner |"
echo "|---|---:|---:|"
printf '| loraguard check | %.1f | |\n' "$ot"
for flavor in same-flags native; do
  if [ -n "${failed[$flavor]:-}" ]; then
    printf '| llama-batched-bench (%s) | crashed | |\n' "$flavor"
    continue
  fi
  printf '| llama-batched-bench (%s) | %.1f | %.0f%% |\n' "$flavor" "${ref_total[$flavor]}" \
    "$(python3 -c "print(100 * $ot / ${ref_total[$flavor]})")"
done
printf '\nloraguard generated %.1f tokens/s over the whole run (sampling, detokenizing and refusal matching included);\n' "$og"
printf 'llama-batched-bench decodes random tokens and samples nothing (S_TG, generation phase only: same-flags %s, native %s).\n' \
  "${ref_tg[same-flags]:-crashed}" "${ref_tg[native]:-crashed}"

# A 500-prompt suite in CI: AdvBench's 520 harmful instructions (outside the
# repository: ../shared/data/advbench), default settings but 64 in parallel.
ADV="${ADVBENCH:-../shared/data/advbench/harmful_behaviors.csv}"
if [ -f "$ADV" ]; then
  start=$(date +%s.%N)
  line="$(./target/release/loraguard --threads "$THREADS" check --model "$MODEL" --prompts "$ADV" --column goal \
    --parallel "$NPL" --json "$B/advbench.json" 2>&1 >/dev/null | grep ' prompts: ')"
  end=$(date +%s.%N)
  rate="$(python3 -c "import json; print(json.load(open('$B/advbench.json'))['summary']['refusal_rate'])")"
  echo
  printf 'AdvBench (520 prompts, up to 64 new tokens, greedy): %.1f s wall; %s; refusal rate %s\n' \
    "$(python3 -c "print($end - $start)")" "$line" "$rate"
fi
