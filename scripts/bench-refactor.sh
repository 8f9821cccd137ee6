#!/usr/bin/env bash
# Balanced re-factoring in `convert`: Q8_0 (and F16) error with and without,
# and truncation by rank and energy (see scripts/bench_refactor.py).
# Uses the synthetic adapter and base of scripts/bench-convert.sh (run it
# first) and the SmolLM2 fixtures with the test model.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${BENCH_DIR:-$ROOT/.cache/bench}"
[ -f "$WORK/base-q4_k.gguf" ] || { echo "run scripts/bench-convert.sh first (it makes the synthetic adapter and base)" >&2; exit 2; }
MODEL="$(bash "$ROOT/scripts/fetch-model.sh")"
(cd "$ROOT" && cargo build --release --quiet)
"$PYTHON" "$ROOT/scripts/bench_refactor.py" --work "$WORK" --root "$ROOT" --model "$MODEL" --loraguard "$ROOT/target/release/loraguard"
