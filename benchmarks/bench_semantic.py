"""Quality and stage times of random vs cluster vs icp on the labelled example corpus.

    .venv/bin/python benchmarks/bench_semantic.py [--corpus examples/corpus] [--seq-len 2048]

Prints, per strategy: the mean cosine of documents side by side in a row, the share of
side-by-side pairs with the same topic label, and the seconds each stage took. All
strategies share one document store and one set of embeddings (made first, timed
once), so the orderings are compared on identical inputs in the same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from packprep import PackedDataset
from packprep.config import DedupConfig, EmbedConfig, PackConfig
from packprep.inspect import compute_stats
from packprep.pipeline import pack, tokenize
from packprep.semantic import dedup, embed


def topics_by_id(corpus: Path) -> dict[str, str]:
    topics = {}
    for path in sorted(corpus.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                topics[str(record["id"])] = record["topic"]
    return topics


def same_topic_share(ds: PackedDataset, topic_of: dict[str, str]) -> tuple[float, int]:
    same = total = 0
    for k in range(len(ds.manifest["shards"])):
        shard = ds.shard(k)
        docs = np.asarray(shard.seg_doc)
        row_ptr = np.asarray(shard.row_ptr)
        labels = np.array([topic_of[ds.doc_ids[int(d)]] for d in docs])
        inside = np.ones(len(docs), dtype=bool)
        inside[row_ptr[:-1][np.diff(row_ptr) > 0]] = False
        right = np.flatnonzero(inside)
        same += int((labels[right] == labels[right - 1]).sum())
        total += len(right)
    return (same / total if total else float("nan")), total


def timed(label: str, times: dict[str, float], fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    times[label] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("examples/corpus"))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=None, help="reuse a work folder across runs (default: temporary)")
    args = parser.parse_args()
    topic_of = topics_by_id(args.corpus)
    root = args.work or Path(tempfile.mkdtemp(prefix="bench-semantic-"))

    shared: dict[str, float] = {}
    store = timed("tokenize", shared, tokenize, args.corpus, root / "work")
    timed("dedup", shared, dedup, store, config=DedupConfig())
    timed("embed", shared, embed, store, config=EmbedConfig())
    print(f"corpus {args.corpus}: {store.num_documents:,} documents, {store.num_tokens:,} tokens, {len(set(topic_of.values()))} topics")
    print("shared stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in shared.items()))
    print()
    header = f"{'strategy':<9} {'adj cosine':>10} {'random':>8} {'same topic':>10} {'pairs':>7} {'pack s':>7}"
    print(header)
    print("-" * len(header))
    for strategy in ("random", "cluster", "icp"):
        times: dict[str, float] = {}
        config = PackConfig(strategy="eos" if strategy == "random" else strategy, seq_len=args.seq_len, dedup=True)
        out = timed("pack", times, pack, store.path, root / strategy, config=config, overwrite=True)
        ds = PackedDataset(out)
        stats = compute_stats(ds)
        share, pairs = same_topic_share(ds, topic_of)
        print(
            f"{strategy:<9} {stats['adjacent_cosine']:>10.4f} {stats['adjacent_cosine_random']:>8.4f} "
            f"{share:>10.3f} {pairs:>7,} {times['pack']:>7.1f}"
        )
    print()
    print("adj cosine: mean cosine of documents side by side in a row; random: the same documents in a random order;")
    print("same topic: share of side-by-side pairs whose topic labels match; pack s: dedup lookup + order + pack + write.")


if __name__ == "__main__":
    main()
