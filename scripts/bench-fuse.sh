#!/usr/bin/env bash
# Speed of `loraguard fuse --method svd` against PEFT's dense svd path, in
# one run (see scripts/bench_fuse.py). Needs the Python env of
# scripts/requirements-fixtures.txt (PYTHON=...).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${BENCH_DIR:-$ROOT/.cache/bench}"
mkdir -p "$WORK"
(cd "$ROOT" && cargo build --release --quiet)
"$PYTHON" "$ROOT/scripts/bench_fuse.py" --work "$WORK" --loraguard "$ROOT/target/release/loraguard" --runs "${RUNS:-3}"
