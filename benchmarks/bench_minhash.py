"""MinHash speed: documents per second per core of the whole near-dedup signing step
(decode the stored tokens, normalise, hash words, 128 permutations), vs datasketch.MinHash
on the same normalised word shingles.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_minhash.py [--tokens 500] [--num-perm 128]

Documents are examples/corpus cut into pieces of ``--tokens`` cl100k tokens. "Per core"
is measured in CPU seconds of this process (everything here runs on one thread), so a
busy machine does not deflate it; the wall-clock rate is printed beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from packprep.stages.dedup import DEFAULT_SHINGLE, document_signatures
from packprep.stages.shingles import normalize_text
from packprep.tokenizers import load_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "corpus"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle", type=int, default=DEFAULT_SHINGLE)
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for path in sorted(EXAMPLES.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]
    tokenizer = load_tokenizer("cl100k", num_threads=1)
    tokens, _ = tokenizer.encode_batch(texts)
    n = len(tokens) // args.tokens
    offsets = np.arange(0, n * args.tokens + 1, args.tokens, dtype=np.int64)

    def sign() -> None:
        document_signatures(tokenizer.decode, tokens, offsets, num_perm=args.num_perm, shingle=args.shingle)

    document_signatures(tokenizer.decode, tokens, offsets[:10])  # first use builds the character table
    cpu, wall = min(_timed(sign) for _ in range(3))

    from datasketch import MinHash

    sample = min(n, 500)  # datasketch is slow: time a sample and scale (decoding and normalising included)

    def theirs() -> None:
        for d in range(sample):
            words = normalize_text(tokenizer.decode(tokens[offsets[d] : offsets[d + 1]])).split()
            shingles = [" ".join(words[i : i + args.shingle]).encode() for i in range(max(1, len(words) - args.shingle + 1))]
            m = MinHash(num_perm=args.num_perm)
            m.update_batch(shingles)

    their_cpu, _ = _timed(theirs)
    their_cpu *= n / sample
    print(f"{n:,} documents x {args.tokens} tokens of examples/corpus, {args.num_perm} permutations, word {args.shingle}-grams")
    print(f"packprep   : {n / cpu:10,.0f} documents/s per core ({n / wall:,.0f}/s of wall time on this machine now)")
    print(f"datasketch : {n / their_cpu:10,.0f} documents/s per core (update_batch, timed on {sample} documents)")
    print(f"ratio      : {their_cpu / cpu:.1f}x")


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


if __name__ == "__main__":
    main()
