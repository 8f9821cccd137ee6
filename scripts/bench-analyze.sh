#!/usr/bin/env bash
# Speed of `loraguard analyze` (spectra of a Llama-3-8B-shaped r=64 adapter)
# against forming each ΔW and running a dense SVD with torch, in one run.
# Needs the Python env of scripts/requirements-fixtures.txt (PYTHON=...).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${BENCH_DIR:-$ROOT/.cache/bench}"
mkdir -p "$WORK"
(cd "$ROOT" && cargo build --release --quiet)
"$PYTHON" "$ROOT/scripts/bench_analyze.py" --work "$WORK" --loraguard "$ROOT/target/release/loraguard" --runs "${RUNS:-3}"
