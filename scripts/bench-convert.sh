#!/usr/bin/env bash
# Speed and memory of `loraguard convert` against its anchor, llama.cpp's
# convert_lora_to_gguf.py, and against a plain `cat` of the input, in one run.
#
# Builds a Llama-3-8B-shaped synthetic adapter (r=64 on q, k, v, o, gate, up,
# down; BF16; ~320 MiB) and a sparse base GGUF with the matching tensor table,
# then times each converter to f16 and q8_0.
#
# Needs: a release build (done here), and for the anchor the Python env of
# scripts/requirements-fixtures.txt (set PYTHON to its interpreter).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${BENCH_DIR:-$ROOT/.cache/bench}"
RUNS="${RUNS:-3}"
mkdir -p "$WORK"
(cd "$ROOT" && cargo build --release --quiet)
ANCHOR="$(bash "$ROOT/scripts/fetch-anchor.sh")"
"$PYTHON" "$ROOT/scripts/bench_convert.py" \
  --work "$WORK" --runs "$RUNS" \
  --loraguard "$ROOT/target/release/loraguard" \
  --anchor "$ANCHOR/convert_lora_to_gguf.py" \
  --anchor-path "$ANCHOR/gguf-py"
