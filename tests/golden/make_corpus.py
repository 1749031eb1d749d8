"""Rebuild tests/golden/corpus/ (checked in; the golden hashes depend on its bytes).

The first 50 records of each examples/corpus part, plus planted cases so every drop
path runs: an exact copy, a near copy (one word changed), an empty text and a record
without an id. Written once; rerun only together with updating tests/golden/hashes.json.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE.parent.parent / "examples" / "corpus"


def main() -> None:
    out = HERE / "corpus"
    out.mkdir(exist_ok=True)
    parts = sorted(SOURCE.glob("*.jsonl.gz"))
    for part in parts:
        with gzip.open(part, "rt", encoding="utf-8") as fh:
            records = [json.loads(line) for _, line in zip(range(50), fh)]
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        # mtime=0: gzip's header would otherwise record the time, and the corpus fingerprint hashes these bytes.
        (out / part.name).write_bytes(gzip.compress(data, mtime=0))
    with gzip.open(parts[0], "rt", encoding="utf-8") as fh:
        first = [json.loads(line) for _, line in zip(range(3), fh)]
    words = first[1]["text"].split(" ")
    words[len(words) // 2] = "planted"
    planted = [
        {"id": "exact-copy", "text": first[0]["text"]},
        {"id": "near-copy", "text": " ".join(words)},
        {"id": "empty", "text": "   "},
        {"text": first[2]["text"][: len(first[2]["text"]) // 2]},
    ]
    (out / "planted.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in planted), encoding="utf-8")


if __name__ == "__main__":
    main()
