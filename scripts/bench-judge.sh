#!/usr/bin/env bash
# Refusal judges against human labels (issue 18): two-way and three-way
# agreement, with the confusion matrices in the Markdown reports, of every
# model-free judge on XSTest's labelled completions and on the hand-labelled
# SmolLM2 suite outputs (fixtures/judge/, dev and held-out splits), the
# model judge (SmolLM2 itself, asked "did the assistant refuse?") on the
# held-out splits, and the time to judge 10,000 answers.
# Usage: bash scripts/bench-judge.sh   (reports in ${OUT:-.cache/bench-judge})
# BENCH_MODEL_JUDGE=0 skips the model judge (minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.cache/bench-judge}"
mkdir -p "$OUT"
cargo build --release --quiet --bin loraguard
LG=target/release/loraguard
printf '| set | judge | rows | two-way agreement [95%% CI] | three-way [95%% CI] | time |\n|---|---|---:|---:|---:|---:|\n'
MODEL="$(bash scripts/fetch-model.sh)"
row() { # SET NAME JUDGE...
  local set="$1" name="$2"
  shift 2
  local t0
  t0=$(date +%s)
  "$LG" -q judge "fixtures/judge/$set.jsonl" "$@" --json "$OUT/$set-$name.json" --markdown "$OUT/$set-$name.md"
  python3 - "$OUT/$set-$name.json" "$set" "$(($(date +%s) - t0))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["summary"]["agreement"]
f = lambda x: f"{100*x['rate']:.1f}% [{100*x['ci95'][0]:.1f}, {100*x['ci95'][1]:.1f}]"
print(f"| {sys.argv[2]} | {r['judge']} | {a['n']} | {f(a['two_way'])} | {f(a['three_way'])} | {sys.argv[3]} s |")
PY
}
sets="xstest-dev xstest-heldout"
[ -f fixtures/judge/smollm2-dev.jsonl ] && sets="$sets smollm2-dev smollm2-heldout"
for set in $sets; do
  row "$set" rules --judge rules
  row "$set" markers --judge markers
done
if [ "${BENCH_MODEL_JUDGE:-1}" != 0 ]; then
  for set in $sets; do
    case "$set" in *heldout) row "$set" model --judge "$MODEL" ;; esac
  done
fi
# Speed: 10,000 answers (the XSTest rows repeated with fresh ids).
python3 - "$OUT/10k.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for f in ("dev", "heldout") for l in open(f"fixtures/judge/xstest-{f}.jsonl")]
with open(sys.argv[1], "w") as out:
    for i in range(10000):
        r = dict(rows[i % len(rows)], id=str(i))
        out.write(json.dumps(r) + "\n")
PY
start=$(date +%s.%N)
"$LG" -q judge "$OUT/10k.jsonl" --json "$OUT/10k.json"
echo
echo "rules judge, 10,000 answers (read, judge, write the report): $(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')") s"
