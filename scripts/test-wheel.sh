#!/usr/bin/env bash
# Install the loraguard wheel into a fresh venv and use it with nothing else
# (issue 22): no Rust toolchain, and none of the libraries the build needed.
#
# Usage: bash scripts/test-wheel.sh [WHEEL]   (default: the newest in target/wheels)
#
# In a private mount namespace (`unshare -m`, as root) it hides ~/.cargo,
# ~/.rustup, the system's OpenBLAS, libgfortran, libquadmath and libgomp
# behind empty mounts, so the binary can only run with what the wheel
# carries; without that namespace it says so and checks `ldd` only. Then,
# with PATH holding only the venv and /usr/bin:/bin: `loraguard --version`,
# a `convert` of the bundled task adapter, and a short `check` of the
# converted adapter on SmolLM2 (scripts/fetch-model.sh's cached copy).
# Prints the wheel's size and the install time.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL="${1:-$(ls -t target/wheels/loraguard-*.whl 2>/dev/null | head -n 1)}"
[ -f "$WHEEL" ] || { echo "test-wheel: no wheel (run scripts/build-wheel.sh first)" >&2; exit 2; }
WHEEL="$(realpath "$WHEEL")"
MODEL="$(realpath "$(bash scripts/fetch-model.sh)")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/venv"
t0=$(date +%s.%N)
"$tmp/venv/bin/pip" install -q --no-index --no-deps "$WHEEL"
install_s=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
# maturin puts the binary in site-packages/loraguard.scripts/ beside the
# vendored loraguard.libs/ and a small Python launcher in the venv's bin.
bin="$(find "$tmp/venv" -path '*/loraguard.scripts/loraguard' | head -n 1)"
bin="${bin:-$tmp/venv/bin/loraguard}"
ldd "$bin" >/dev/null 2>&1 || { echo "test-wheel: $bin is not a dynamic executable" >&2; exit 1; }

# Every library the binary loads, outside glibc and the C++ runtime that
# manylinux allows, must come from the wheel.
outside="$(ldd "$bin" | awk '/=>/ {print $1, $3}' |
  grep -vE '^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^ ]*)\.so' |
  grep -v 'loraguard.libs' || true)"
if [ -n "$outside" ]; then
  echo "test-wheel: libraries from outside the wheel:" >&2
  echo "$outside" >&2
  exit 1
fi

cat > "$tmp/run.sh" <<RUN
set -euo pipefail
hide() { for p in "\$@"; do
  if [ -d "\$p" ]; then mount --bind "$tmp/empty" "\$p"; elif [ -e "\$p" ]; then mount --bind "$tmp/empty.so" "\$p"; fi
done; }
if [ "\${HIDE:-0}" = 1 ]; then
  mkdir -p "$tmp/empty"; : > "$tmp/empty.so"
  hide "\$HOME/.cargo" "\$HOME/.rustup" /usr/lib/x86_64-linux-gnu/openblas-pthread \
    /usr/lib/x86_64-linux-gnu/libgfortran.so.5 /usr/lib/x86_64-linux-gnu/libquadmath.so.0 \
    /usr/lib/x86_64-linux-gnu/libgomp.so.1 /usr/lib/x86_64-linux-gnu/libopenblas.so.0
  ! command -v cargo rustc >/dev/null
fi
export PATH="$tmp/venv/bin:/usr/bin:/bin"
loraguard --version
loraguard convert fixtures/smollm2/task-lora --base "$MODEL" -o "$tmp/task.gguf" -q
loraguard inspect "$tmp/task.gguf" | head -n 3
loraguard check --model "$MODEL" --lora "$tmp/task.gguf" --prompts fixtures/prompts/smoke.jsonl \
  --max-tokens 16 --json "$tmp/check.json" --quiet
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(len(r['results']), 'prompts checked')" "$tmp/check.json"
RUN
if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
  HIDE=1 unshare -m bash "$tmp/run.sh"
  # Control: the everyday build, which links the system's OpenBLAS, must not
  # start behind the same hiding (else the hiding proves nothing).
  if [ -x target/release/loraguard ]; then
    sed 's|^export PATH=.*|export PATH="$PWD/target/release:/usr/bin:/bin"|' "$tmp/run.sh" > "$tmp/control.sh"
    if HIDE=1 unshare -m bash "$tmp/control.sh" >/dev/null 2>&1; then
      echo "test-wheel: the system build ran with its libraries hidden: the hiding does not work" >&2
      exit 1
    fi
  fi
  hidden="Rust and the build's libraries hidden"
else
  echo "test-wheel: not root or no mount namespaces: running without hiding the system's libraries" >&2
  bash "$tmp/run.sh"
  hidden="nothing hidden"
fi
echo "test-wheel: ok ($hidden): $(basename "$WHEEL"), $(du -k "$WHEEL" | cut -f1) KiB, installed in $install_s s"
