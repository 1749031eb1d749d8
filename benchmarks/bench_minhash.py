"""MinHash: our vectorised numpy signatures vs datasketch.MinHash, same documents.

    .venv/bin/python benchmarks/bench_minhash.py [--docs 5000] [--tokens 500]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from packprep.stages.dedup import minhash_signatures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--num-perm", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 100_000, size=args.docs * args.tokens).astype(np.uint32)
    offsets = np.arange(0, len(tokens) + 1, args.tokens, dtype=np.int64)

    start = time.perf_counter()
    minhash_signatures(tokens, offsets, num_perm=args.num_perm)
    ours = time.perf_counter() - start

    from datasketch import MinHash

    sample = min(args.docs, 500)  # datasketch is slow: time a sample and scale
    start = time.perf_counter()
    for d in range(sample):
        doc = tokens[offsets[d] : offsets[d + 1]]
        shingles = [doc[i : i + 5].tobytes() for i in range(len(doc) - 4)]
        m = MinHash(num_perm=args.num_perm)
        m.update_batch(shingles)
    theirs = (time.perf_counter() - start) * args.docs / sample
    print(f"{args.docs} docs x {args.tokens} tokens, {args.num_perm} permutations, 5-gram shingles")
    print(f"packprep numpy : {args.docs / ours:10,.0f} docs/s")
    print(f"datasketch     : {args.docs / theirs:10,.0f} docs/s (update_batch, timed on {sample} docs)")
    print(f"ratio          : {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
