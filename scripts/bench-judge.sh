#!/usr/bin/env bash
# Refusal judges against human labels (issue 18): two-way and three-way
# agreement, with the confusion matrices in the Markdown reports, of every
# model-free judge on XSTest's labelled completions (fixtures/judge/, dev
# and held-out splits), and the time to judge 10,000 answers.
# Usage: bash scripts/bench-judge.sh   (reports in ${OUT:-.cache/bench-judge})
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.cache/bench-judge}"
mkdir -p "$OUT"
cargo build --release --quiet --bin loraguard
LG=target/release/loraguard
printf '| set | judge | rows | two-way agreement [95%% CI] | three-way [95%% CI] |\n|---|---|---:|---:|---:|\n'
for set in xstest-dev xstest-heldout; do
  for judge in rules markers; do
    "$LG" -q judge "fixtures/judge/$set.jsonl" --judge "$judge" --json "$OUT/$set-$judge.json" --markdown "$OUT/$set-$judge.md"
    python3 - "$OUT/$set-$judge.json" "$set" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["summary"]["agreement"]
f = lambda x: f"{100*x['rate']:.1f}% [{100*x['ci95'][0]:.1f}, {100*x['ci95'][1]:.1f}]"
print(f"| {sys.argv[2]} | {r['judge']} | {a['n']} | {f(a['two_way'])} | {f(a['three_way'])} |")
PY
  done
done
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
