#!/usr/bin/env bash
# Randomized top-64 subspace of a 4096×14336 weight: time and accuracy
# against the dense SVD, in one run. Needs the Python env of
# scripts/requirements-fixtures.txt (PYTHON=...).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${BENCH_DIR:-$ROOT/.cache/bench}"
mkdir -p "$WORK"
(cd "$ROOT" && cargo build --release --quiet --example rsvd)
"$PYTHON" "$ROOT/scripts/bench_rsvd.py" --work "$WORK" --example "$ROOT/target/release/examples/rsvd" --runs "${RUNS:-3}"
