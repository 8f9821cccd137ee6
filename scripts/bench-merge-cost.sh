#!/usr/bin/env bash
# The measured cost of a merge (issue 21): SmolLM2's task adapter merged into
# the Q4_1 base at every --type, each measured with `merge --measure` against
# the base with the adapter applied at run time (KL divergence of next-token
# distributions, top-1 agreement, perplexity), on fixtures/text/merge-sample.txt.
# Prints a markdown table (the README's merge table).
#
# Usage: bash scripts/bench-merge-cost.sh [TEXT_FILE]
#   PROFILE=dev uses the debug build (same numbers, no release build).
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT="${1:-fixtures/text/merge-sample.txt}"
MODEL="$(bash scripts/fetch-model.sh)"
if [ "${PROFILE:-release}" = dev ]; then
  cargo build --quiet --bin loraguard
  BIN=./target/debug/loraguard
else
  cargo build --release --quiet --bin loraguard
  BIN=./target/release/loraguard
fi
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
"$BIN" -q convert fixtures/smollm2/task-lora --base "$MODEL" --outtype f32 -o "$T/task.gguf"
echo "| --type | size (MiB) | update kept | KL mean | KL p99 | top-1 agreement | perplexity merged (runtime $(basename "$MODEL")) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for ty in f32 f16 q8_0 same; do
  "$BIN" -q merge --base "$MODEL" --lora "$T/task.gguf" --type "$ty" --allow-lossy \
    --measure "$TEXT" -o "$T/m.gguf" --json "$T/m.json"
  python3 - "$ty" "$T/m.json" <<'PY'
import json, sys
ty, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
m = r["measure"]
print(f"| {ty} | {r['output_bytes'] / 2**20:.1f} | {100 * r['update_kept']:.1f}% | "
      f"{m['kl_mean']:.2e} | {m['kl_p99']:.2e} | {100 * m['top1_agreement']:.1f}% | "
      f"{m['ppl_merged']:.2f} ({m['ppl_reference']:.2f}; base {m['ppl_base']:.2f}) |")
PY
done
echo
echo "$(python3 -c "import json;print(json.load(open('$T/m.json'))['measure']['positions'])") positions of $TEXT; task-lora (F32 GGUF) at scale 1."
