#!/usr/bin/env bash
# The project's test command: fetch (and cache) the SmolLM2 test model, then
# run every test, and close with one summary line over all test binaries.
# scripts/setup.sh installs what the build needs (cmake, libclang, OpenBLAS...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LORAGUARD_TEST_MODEL="$(bash scripts/fetch-model.sh)"
export LORAGUARD_TEST_MODEL
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
