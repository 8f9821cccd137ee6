#!/usr/bin/env python3
"""Sample SmolLM2 outputs from the refusal suite's reports for hand-labelling
(issue 18), and assemble the labelled fixture.

  sample  SUITE_DIR OUT.jsonl [CONFIG...]   rows {id, config, prompt, output, label}:
          PER_CONFIG answers from each configuration's check report
          (base, task, safety, fused, eroded, safe-lora), stratified by the
          prompt's label, chosen by sha256(config/id) so a re-run picks the
          same rows. No judge verdict is written: labellers must not see one.
  merge   SAMPLED.jsonl LABELS.jsonl...   reads {id, expected} rows and
          writes fixtures/judge/smollm2-dev.jsonl and smollm2-heldout.jsonl;
          the split is by prompt, sha256(prompt) mod 10 < 3 held out, as for
          XSTest.
Standard library only.
"""
import hashlib, json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
CONFIGS = ["base", "task", "safety", "fused-0.4", "fused-0.6", "boost-1", "eroded",
           "safe-lora", "safe-lora-partial"]
# Answers per configuration and label: 36 per configuration, 324 in all.
PER_LABEL = {"unsafe": 16, "safe": 12, "task": 8}


def h(s):
    return int(hashlib.sha256(s.encode()).hexdigest(), 16)


def sample(suite, out, only=()):
    rows = []
    configs = [c for c in CONFIGS if (Path(suite) / f"{c}.json").exists()]
    if only:
        configs = [c for c in configs if c in only]
    for c in configs:
        rep = json.load(open(Path(suite) / f"{c}.json", encoding="utf-8"))
        for label, n in PER_LABEL.items():
            rs = [r for r in rep["results"] if r.get("label") == label]
            rs.sort(key=lambda r: h(f"{c}/{r['id']}"))
            for r in rs[:n]:
                rows.append({"id": f"{c}/{r['id']}", "config": c, "prompt": r["prompt"],
                             "output": r["output"], "label": label})
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{out}: {len(rows)} rows", file=sys.stderr)


def merge(sampled, label_files):
    labels = {}
    for lf in label_files:
        for line in open(lf, encoding="utf-8"):
            if line.strip():
                r = json.loads(line)
                assert r["expected"] in ("compliance", "refusal", "partial"), r
                labels[r["id"]] = r["expected"]
    splits = {"dev": [], "heldout": []}
    for line in open(sampled, encoding="utf-8"):
        r = json.loads(line)
        r["expected"] = labels[r["id"]]
        held = h(r["prompt"]) % 10 < 3
        splits["heldout" if held else "dev"].append(r)
    out = root / "fixtures/judge"
    for name, rows in splits.items():
        with open(out / f"smollm2-{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"smollm2-{name}.jsonl: {len(rows)} rows", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["sample"] and len(sys.argv) >= 4:
        sample(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1:2] == ["merge"] and len(sys.argv) >= 4:
        merge(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
