#!/usr/bin/env python3
"""Rewrite fixtures/SHA256SUMS from the files under fixtures/ (every file but
README.md files and SHA256SUMS itself), as scripts/make-fixtures.py does."""
import hashlib
from pathlib import Path

FIX = Path(__file__).resolve().parent.parent / "fixtures"
lines = [
    f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(FIX)}"
    for p in sorted(FIX.rglob("*"))
    if p.is_file() and p.name not in ("README.md", "SHA256SUMS")
]
(FIX / "SHA256SUMS").write_text("\n".join(lines) + "\n")
print(f"fixtures/SHA256SUMS: {len(lines)} files")
