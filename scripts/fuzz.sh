#!/usr/bin/env bash
# Fuzz loraguard's parsers (issue 9) with cargo-fuzz (libFuzzer), each target
# for SECONDS (default 600), seeded from the fixtures:
#   safetensors_peft      the safetensors header plus PEFT pairing
#   adapter_config        adapter_config.json parsing
#   gguf_header           the capped GGUF scan and the GGUF reader
#   gguf_lora_validation  the GGUF LoRA checks made before llama.cpp sees a file
# A crash, a timeout (10 s per input) or an allocation beyond the limits below
# fails the run and leaves the input under fuzz/artifacts/.
#
# Needs the nightly toolchain (for the fuzz crate only; the main build stays
# on stable) and installs cargo-fuzz if it is missing. Rust code is safe code
# here, so the targets run without a sanitizer (faster); libFuzzer's own RSS
# and malloc limits catch unbounded allocation.
#
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-600}"
shift || true
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(safetensors_peft adapter_config gguf_header gguf_lora_validation)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Seed corpora from the fixtures (small files only), and GGUF LoRAs
# converted from the tiny fixture adapters.
C=fuzz/corpus
mkdir -p "$C"/{safetensors_peft,adapter_config,gguf_header,gguf_lora_validation}
find fixtures -name adapter_model.safetensors -size -512k -exec sh -c \
  'cp "$1" "$2/$(echo "$1" | tr / _)"' _ {} "$C/safetensors_peft" \;
find fixtures -name adapter_config.json -exec sh -c \
  'cp "$1" "$2/$(echo "$1" | tr / _)"' _ {} "$C/adapter_config" \;
cp fixtures/tiny-llama/base.gguf "$C/gguf_header/"
cargo build --quiet --bin loraguard
for a in plain gqa-k-only embed-head; do
  for t in f16 q8_0 q4_0; do
    ./target/debug/loraguard -q convert "fixtures/tiny-llama/adapters/$a" \
      --base fixtures/tiny-llama/base.gguf --outtype "$t" -o "$C/gguf_lora_validation/$a-$t.gguf"
  done
done
cp "$C"/gguf_lora_validation/*.gguf "$C/gguf_header/"

cd fuzz
for t in "${TARGETS[@]}"; do
  echo "fuzz: $t for $SECS s" >&2
  cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len=1048576 -print_final_stats=1 2>&1 | tail -25
  echo "fuzz: $t: no crash, timeout or out-of-memory in $SECS s" >&2
done
