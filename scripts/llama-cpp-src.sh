#!/usr/bin/env bash
# Prints the llama.cpp source folder that llama-cpp-sys-2 vendors (the one
# loraguard links), for building llama.cpp's own tools from the same sources.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "llama-cpp-sys-2"][0]
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))'
