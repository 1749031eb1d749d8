"""Decontamination speed: MB/s per core of train text checked against ~100 MB of benchmark text.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_decontaminate.py [--bench-mb 100] [--ngram 13] [--repeat 3]

Benchmark side: the running interpreter's standard-library ``.py`` files, then its installed
packages' (sorted by path, test suites left out) up to ``--bench-mb`` MB of text, one text per
file: real text, offline, the same on every machine with the same environment. Train side:
examples/corpus (7 MB, 2,923 documents) with 20 excerpts of benchmark files planted in it, so
the matches found are checked, not assumed.

Measured, as CPU seconds of this process (the machine is shared; CPU time is what a core
spends), best of ``--repeat``:

1. building the index (n-gram hashes of the benchmark text, sort, directory), once;
2. the whole train-side stage, ``stages.decontaminate.contaminated`` on batches of ~8 MB of
   text: normalise, hash words and n-grams, look up, first match per text;
3. its parts: n-gram hashing alone, and the lookup alone against a baseline run beside it:
   ``np.searchsorted`` on the same sorted hashes (what the directory replaces).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sysconfig
import time
from pathlib import Path

import numpy as np

from packprep.stages.decontaminate import NgramIndex, contaminated, ngram_hashes
from packprep.stages.shingles import normalize_text

ROOT = Path(__file__).resolve().parents[1]


def benchmark_texts(limit_bytes: int) -> list[str]:
    """``.py`` files of the standard library, then of the installed packages (site-packages),
    each folder in sorted order, test suites left out, until ``limit_bytes`` of text."""
    paths = sysconfig.get_paths()
    texts, size = [], 0
    for root in dict.fromkeys([paths["stdlib"], paths["purelib"], paths["platlib"]]):
        for path in sorted(Path(root).rglob("*.py")):
            rel = path.relative_to(root).parts
            if (root == paths["stdlib"] and "site-packages" in rel) or any(p in ("test", "tests") for p in rel):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            texts.append(text)
            size += len(text.encode("utf-8"))
            if size >= limit_bytes:
                return texts
    return texts


def train_texts(bench: list[str], planted: int) -> tuple[list[str], list[int]]:
    texts = []
    for part in sorted((ROOT / "examples" / "corpus").glob("*.jsonl.gz")):
        with gzip.open(part, "rt", encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh]
    rng = np.random.default_rng(0)
    where = sorted(rng.choice(len(texts), size=planted, replace=False).tolist())
    k = 0
    for d in where:
        while True:  # a file with at least 40 words there (not a short stub, not a base64 blob)
            source = bench[(k * 997) % len(bench)]
            k += 1
            start = source.find("\n", len(source) // 3) + 1  # a whole line, so no word is cut at the start
            excerpt = source[start : start + 800]  # ~800 characters: dozens of words of code
            if len(normalize_text(excerpt).split()) >= 40:
                break
        texts[d] = texts[d] + "\n" + excerpt
    return texts, where


def cpu(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    return best, result


def batches(texts: list[str], chars: int = 8 << 20) -> list[list[str]]:
    out, batch, size = [], [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= chars:
            out.append(batch)
            batch, size = [], 0
    return out + ([batch] if batch else [])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-mb", type=float, default=100)
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    bench = benchmark_texts(int(args.bench_mb * 1e6))
    bench_mb = sum(len(t.encode("utf-8")) for t in bench) / 1e6
    train, planted = train_texts(bench, 20)
    train_mb = sum(len(t.encode("utf-8")) for t in train) / 1e6

    def build() -> NgramIndex:
        parts, owners = [], []
        for i, batch in enumerate(batches(bench)):
            hashes, _ = ngram_hashes(batch, n=args.ngram)
            parts.append(hashes)
            owners.append(np.full(len(hashes), i, np.int32))
        return NgramIndex.build(np.concatenate(parts), np.concatenate(owners))

    build_s, index = cpu(build, 1)
    print(f"benchmark: {len(bench):,} files, {bench_mb:.1f} MB -> {len(index):,} distinct {args.ngram}-grams; "
          f"index built in {build_s:.1f} s CPU")
    train_batches = batches(train)

    def whole() -> np.ndarray:
        return np.concatenate([contaminated(b, index, n=args.ngram) for b in train_batches])

    whole_s, found = cpu(whole, args.repeat)
    hits = np.flatnonzero(found >= 0).tolist()
    missed = sorted(set(planted) - set(hits))
    print(f"train: {len(train):,} texts, {train_mb:.2f} MB; flagged {len(hits)} texts, "
          f"{len(planted) - len(missed)} of {len(planted)} planted excerpts found")
    print(f"whole stage      {whole_s:6.2f} s CPU  {train_mb / whole_s:7.1f} MB/s per core")

    hash_s, hashed = cpu(lambda: [ngram_hashes(b, n=args.ngram)[0] for b in train_batches], args.repeat)
    print(f"  n-gram hashing {hash_s:6.2f} s CPU  {train_mb / hash_s:7.1f} MB/s per core")
    queries = np.concatenate(hashed)
    lookup_s, _ = cpu(lambda: index.lookup(queries), args.repeat)
    print(f"  lookup         {lookup_s:6.2f} s CPU  {train_mb / lookup_s:7.1f} MB/s per core ({len(queries):,} n-grams)")

    def searchsorted_lookup() -> np.ndarray:
        at = np.minimum(np.searchsorted(index.hashes, queries), len(index.hashes) - 1)
        return index.hashes[at] == queries

    base_s, member = cpu(searchsorted_lookup, args.repeat)
    assert (member == (index.lookup(queries) >= 0)).all()
    print(f"  baseline: np.searchsorted {base_s:6.2f} s CPU  {train_mb / base_s:7.1f} MB/s per core "
          f"(directory lookup {base_s / lookup_s:.1f}x faster)")


if __name__ == "__main__":
    main()
