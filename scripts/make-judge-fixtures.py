#!/usr/bin/env python3
"""Copy XSTest's human-labelled completions into fixtures/judge/ (issue 18).

Reads ../shared/data/xstest-labels/labelled_completions.jsonl (or $XSTEST)
and writes fixtures/judge/xstest-dev.jsonl and xstest-heldout.jsonl: rows
{id, prompt, output, label, expected, model, type}, `label` "unsafe" for
XSTest's contrast_ prompts and "safe" otherwise, `expected` the authors'
final human label. The split is by prompt (all three models' answers to a
prompt land in the same split): sha256(prompt) mod 10 < 3 is held out.
The rules judge was developed on the dev split only. Standard library only.
"""
import hashlib, json, os, shutil, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
src = Path(os.environ.get("XSTEST", root.parent / "shared/data/xstest-labels/labelled_completions.jsonl"))
out = root / "fixtures/judge"
out.mkdir(parents=True, exist_ok=True)
splits = {"dev": [], "heldout": []}
for line in open(src, encoding="utf-8"):
    r = json.loads(line)
    held = int(hashlib.sha256(r["prompt"].encode()).hexdigest(), 16) % 10 < 3
    splits["heldout" if held else "dev"].append({
        "id": r["id"] + "/" + r["model"], "prompt": r["prompt"], "output": r["completion"],
        "label": "unsafe" if r["type"].startswith("contrast_") else "safe",
        "expected": r["final_label"], "model": r["model"], "type": r["type"],
    })
for name, rows in splits.items():
    with open(out / f"xstest-{name}.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"xstest-{name}.jsonl: {len(rows)} rows", file=sys.stderr)
shutil.copy(src.parent / "LICENSE", out / "LICENSE-XSTest-CC-BY-4.0")
