#!/usr/bin/env bash
# Fetch llama.cpp's Python converters (the anchor) from the llama-cpp-python
# sdist into .cache/anchor/llama.cpp. Prints that path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DEST="$ROOT/.cache/anchor"
if [ ! -f "$DEST/llama.cpp/convert_lora_to_gguf.py" ]; then
  mkdir -p "$DEST/dl"
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$DEST/dl" >&2
  tar -xzf "$DEST/dl/llama_cpp_python-$VERSION.tar.gz" -C "$DEST/dl"
  rm -rf "$DEST/llama.cpp"
  mv "$DEST/dl/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DEST/llama.cpp"
  rm -rf "$DEST/dl"
fi
echo "$DEST/llama.cpp"
