#!/usr/bin/env bash
# The project's test command: fetch (and cache) the SmolLM2 test model, then
# run every test. Needs cmake, clang, libclang-dev, libopenblas-dev and
# pkg-config (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
LORAGUARD_TEST_MODEL="$(bash scripts/fetch-model.sh)"
export LORAGUARD_TEST_MODEL
cargo test --workspace "$@"
