#!/usr/bin/env bash
# Speed and memory of `loraguard merge` against llama.cpp's llama-export-lora,
# in one run (issue 8, part 4): an r=64 F16 LoRA on every projection merged
# into a synthetic Llama-3.2-1B-shaped Q4_K GGUF (examples/synth-llama.rs).
#
# llama-export-lora is built with cmake from the very llama.cpp sources that
# llama-cpp-sys-2 vendors (and loraguard links); its driver,
# tools/export-lora/export-lora.cpp, comes from the llama-cpp-python sdist
# (scripts/fetch-anchor.sh), since the crate ships llama.cpp without its
# tools. GGML_NATIVE=OFF, as llama-cpp-sys-2 builds ggml.
#
# The two do different work: loraguard --type same requantizes every merged
# tensor to Q4_K (the output stays a Q4_K model; its Q4_K blocks are
# ggml's, byte for byte, from the ffi crate's vectorized copy of ggml's
# quantizer); llama-export-lora writes merged tensors as F16 (it cannot
# requantize). Also timed: loraguard --type f16, the same output types as
# llama-export-lora, and --type q8_0, the same pass with ggml's own Q8_0
# quantizer, against llama.cpp's two-step way to the same kind of file:
# llama-export-lora, then llama-quantize --pure --allow-requantize to Q4_K
# (which also requantizes the untouched tensors).
#
# Usage: bash scripts/bench-merge.sh     (THREADS=N, RUNS=N to override;
#        RUNS=0 builds the tools and writes the inputs only)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-$(nproc)}"
RUNS="${RUNS:-3}"
B=.cache/bench/merge
mkdir -p "$B/src"
ANCHOR="$(bash scripts/fetch-anchor.sh | tail -1)"
SYS="$(bash scripts/llama-cpp-src.sh)"
cat > "$B/src/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.14)
project(loraguard_export_lora C CXX)
set(LLAMA_BUILD_COMMON ON CACHE BOOL "" FORCE)
set(LLAMA_CURL OFF CACHE BOOL "" FORCE)
set(LLAMA_OPENSSL OFF CACHE BOOL "" FORCE)
add_subdirectory("$SYS" llama.cpp)
add_executable(llama-export-lora "$ANCHOR/tools/export-lora/export-lora.cpp")
target_link_libraries(llama-export-lora PRIVATE llama-common llama ggml)
target_compile_features(llama-export-lora PRIVATE cxx_std_17)
add_library(quantize-impl STATIC "$ANCHOR/tools/quantize/quantize.cpp")
target_include_directories(quantize-impl PUBLIC "$ANCHOR/tools/quantize")
target_link_libraries(quantize-impl PUBLIC llama-common llama)
add_executable(llama-quantize "$ANCHOR/tools/quantize/main.cpp")
target_link_libraries(llama-quantize PRIVATE quantize-impl)
target_compile_features(llama-quantize PRIVATE cxx_std_17)
CMAKE
for tool in llama-export-lora llama-quantize; do  # both from the same sources
  if [ ! -x "$B/build/$tool" ]; then
    echo "building $tool from $SYS ..." >&2
    cmake -S "$B/src" -B "$B/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
      -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
    cmake --build "$B/build" --target "$tool" -j "$(nproc)" >/dev/null
  fi
done
echo "building loraguard (release) ..." >&2
cargo build --release --quiet --bin loraguard --example synth-llama
if [ ! -f "$B/base-q4_k.gguf" ]; then
  echo "writing the synthetic base and adapter ..." >&2
  ./target/release/examples/synth-llama "$B/base-q4_k.gguf" "$B/lora-r64.gguf" 64
fi

[ "$RUNS" -gt 0 ] || exit 0

# Wall seconds and peak RSS (MiB) of one command, from GNU time.
measure() {
  local log="$B/time.log"
  /usr/bin/time -f '%e %M' -o "$log" "$@" >/dev/null 2>"$B/last.err" || {
    cat "$B/last.err" >&2
    return 1
  }
  awk '{printf "%s %.0f\n", $1, $2 / 1024}' "$log"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A wall rss
# Runs alternate between the tools, so drift in the machine's speed hits
# all of them alike. Outputs are removed between runs (page cache aside,
# each run writes a new file).
for i in $(seq "$RUNS"); do
  for tool in loraguard-same loraguard-q8_0 loraguard-f16 export-lora export-quantize; do
    out="$B/out-$tool.gguf"
    rm -f "$out"
    if [ "$tool" = export-quantize ]; then
      # export-lora's F16 output of this run, requantized.
      read -r w r < <(measure "$B/build/llama-quantize" --allow-requantize --pure \
        "$B/out-export-lora.gguf" "$out" Q4_K_M "$THREADS")
      w="$(python3 -c "print(round($w + $last_export, 2))")"
      echo "$tool run $i: $w s (export-lora included), peak RSS $r MiB, output $(du -m "$out" | cut -f1) MiB" >&2
      wall[$tool]+="$w "
      rss[$tool]+="$r "
      continue
    fi
    case "$tool" in
      loraguard-same) cmd=(./target/release/loraguard --threads "$THREADS" merge --model "$B/base-q4_k.gguf"
        --lora "$B/lora-r64.gguf" -o "$out" --type same --allow-lossy --report "$B/report-same.json") ;;
      loraguard-q8_0) cmd=(./target/release/loraguard --threads "$THREADS" merge --model "$B/base-q4_k.gguf"
        --lora "$B/lora-r64.gguf" -o "$out" --type q8_0) ;;
      loraguard-f16) cmd=(./target/release/loraguard --threads "$THREADS" merge --model "$B/base-q4_k.gguf"
        --lora "$B/lora-r64.gguf" -o "$out" --type f16) ;;
      export-lora) cmd=("$B/build/llama-export-lora" -m "$B/base-q4_k.gguf" --lora "$B/lora-r64.gguf"
        -o "$out" -t "$THREADS") ;;
    esac
    read -r w r < <(measure "${cmd[@]}")
    [ "$tool" = export-lora ] && last_export="$w"
    echo "$tool run $i: $w s, peak RSS $r MiB, output $(du -m "$out" | cut -f1) MiB" >&2
    wall[$tool]+="$w "
    rss[$tool]+="$r "
  done
done
tensor_mib="$(python3 -c "print(f'{2048 * 8192 * 4 / 2**20:.0f}')")"
echo
echo "r=64 F16 LoRA on all 112 projections merged into a synthetic Llama-3.2-1B-shaped Q4_K GGUF ($(du -m "$B/base-q4_k.gguf" | cut -f1) MiB), $THREADS threads, median of $RUNS"
echo
echo "| command | merged tensors written as | wall (s) | peak RSS (MiB) | speed-up over llama-export-lora |"
echo "|---|---|---:|---:|---:|"
we="$(printf '%s\n' ${wall[export-lora]} | median)"
for tool in loraguard-same loraguard-q8_0 loraguard-f16 export-lora export-quantize; do
  w="$(printf '%s\n' ${wall[$tool]} | median)"
  r="$(printf '%s\n' ${rss[$tool]} | median)"
  case "$tool" in
    loraguard-same) label='`loraguard merge --type same`'; ty=Q4_K ;;
    loraguard-q8_0) label='`loraguard merge --type q8_0`'; ty=Q8_0 ;;
    loraguard-f16) label='`loraguard merge --type f16`'; ty=F16 ;;
    export-lora) label='`llama-export-lora`'; ty=F16 ;;
    export-quantize) label='`llama-export-lora` + `llama-quantize --pure` (Q4_K)'; ty=Q4_K ;;
  esac
  printf '| %s | %s | %s | %s | %s |\n' "$label" "$ty" "$w" "$r" \
    "$(python3 -c "print(f'{$we / $w:.2f}x')")"
done
echo
echo "The largest merged tensor (ffn, 2048 x 8192) is $tensor_mib MiB in F32."
rm -f "$B"/out-*.gguf
