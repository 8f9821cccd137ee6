#!/usr/bin/env python3
"""Split fixtures/tiny-llama/base.gguf into two gguf-split shards
(fixtures/tiny-llama/split/base-0000{1,2}-of-00002.gguf) with gguf-py's own
split writer (the one convert_hf_to_gguf.py --split-max-tensors uses), so
`loraguard merge` is tested on a split base.

Usage: python3 scripts/make-split-fixture.py (gguf from scripts/requirements-fixtures.txt)
"""
from pathlib import Path

import gguf

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "fixtures/tiny-llama/base.gguf"
OUT = ROOT / "fixtures/tiny-llama/split/base.gguf"


def main():
    reader = gguf.GGUFReader(SRC)
    arch = reader.fields["general.architecture"].contents()
    n = len(reader.tensors)
    writer = gguf.GGUFWriter(OUT, arch, split_max_tensors=(n + 1) // 2)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        writer.add_tensor(t.name, t.data, raw_shape=shape, raw_dtype=t.tensor_type)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for p in sorted(OUT.parent.glob("*.gguf")):
        print(p.relative_to(ROOT), p.stat().st_size)


if __name__ == "__main__":
    main()
