#!/usr/bin/env bash
# Speed and memory of `loraguard safe-lora` on Llama-3.2-1B-shaped synthetic
# models against reading them and against the reference algorithm (see
# scripts/bench_safe_lora.py). Writes ~5 GB under $BENCH_DIR (not committed).
# Needs the Python env of scripts/requirements-fixtures.txt (PYTHON=...).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${BENCH_DIR:-$ROOT/.cache/bench}/safe-lora"
(cd "$ROOT" && cargo build --release --quiet)
"$PYTHON" "$ROOT/scripts/bench_safe_lora.py" --work "$WORK" --loraguard "$ROOT/target/release/loraguard" --runs "${RUNS:-3}"
