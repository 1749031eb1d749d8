"""How related the documents that share a context window are: random vs cluster vs icp, on labelled corpora.

    .venv/bin/python benchmarks/bench_semantic.py [--corpus examples/corpus --seq-len 6144]
        [--corpus bench-data/stdlib-docstrings --seq-len 1024] [--work bench-data/semantic]

Default: three labelled corpora, each at a window that holds about 10 documents:
examples/corpus (24 topic labels), the stdlib docstring corpus (12 topics; built by
benchmarks/make_docstring_corpus.py when missing) and Debian package synopses (12
archive sections; built by benchmarks/make_debian_corpus.py from the apt index when
missing, skipped where there is none). Per strategy and packing it prints:

- side by side: share of pairs of documents side by side in a row with the same topic label;
- in-row pairs: share of all pairs of documents in the same row with the same label
  (the figure a model reading the whole window sees);
- cosine: mean cosine of documents side by side in a row (``inspect``'s adjacent_cosine);
- bound: that cosine over the most any order could reach (``adjacent_cosine_bound_ratio``);
- padding: share of the output's tokens that are padding.

All strategies share one document store and one set of embeddings per corpus (made
first, cached under --work), so the orderings are compared on identical inputs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from packprep import PackedDataset
from packprep.config import DedupConfig, EmbedConfig, PackConfig
from packprep.inspect import compute_stats
from packprep.pipeline import pack, tokenize
from packprep.pipeline.semantic import dedup, embed

DOCSTRINGS = Path("bench-data/stdlib-docstrings")
DEBIAN = Path("bench-data/debian-descriptions")
DEFAULTS = ((Path("examples/corpus"), 6144), (DOCSTRINGS, 1024), (DEBIAN, 100))
RUNS = (("random", "split"), ("cluster", "split"), ("icp", "split"), ("cluster", "bestfit"), ("icp", "bestfit"))


def topics_by_id(corpus: Path) -> dict[str, str]:
    topics = {}
    for path in sorted(corpus.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                topics[str(record["id"])] = record["topic"]
    return topics


def same_topic_shares(ds: PackedDataset, topic_of: dict[str, str]) -> tuple[float, float]:
    """(side by side, all pairs in a row): shares of document pairs whose topic labels match."""
    names = sorted(set(topic_of.values()))
    label = np.array([names.index(topic_of[doc_id]) for doc_id in ds.doc_ids])
    side = side_total = pairs_same = pairs_total = 0
    for k in range(len(ds.manifest["shards"])):
        shard = ds.shard(k)
        row_ptr = np.asarray(shard.row_ptr)
        labels = label[np.asarray(shard.seg_doc)]
        inside = np.ones(len(labels), dtype=bool)
        inside[row_ptr[:-1][np.diff(row_ptr) > 0]] = False
        right = np.flatnonzero(inside)
        side += int((labels[right] == labels[right - 1]).sum())
        side_total += len(right)
        docs = np.asarray(shard.seg_doc)
        for r in range(len(row_ptr) - 1):
            counts = np.bincount(label[np.unique(docs[row_ptr[r] : row_ptr[r + 1]])])
            pairs_same += int((counts * (counts - 1) // 2).sum())
            pairs_total += int(counts.sum() * (counts.sum() - 1) // 2)
    return side / max(side_total, 1), pairs_same / max(pairs_total, 1)


def bench_corpus(corpus: Path, seq_len: int, work: Path, embed_config: EmbedConfig) -> None:
    topic_of = topics_by_id(corpus)
    store = tokenize(corpus, work / "work")
    dedup(store, config=DedupConfig())
    start = time.perf_counter()
    embed(store, config=embed_config)
    per_row = seq_len / (store.num_tokens / store.num_documents + 1)
    print(f"\n{corpus}: {store.num_documents:,} documents, {len(set(topic_of.values()))} topics, seq-len {seq_len} "
          f"(~{per_row:.0f} mean-length documents per row), embeddings {time.perf_counter() - start:.0f} s")
    header = f"{'strategy':<9} {'packing':<8} {'side by side':>12} {'in-row pairs':>12} {'cosine':>7} {'bound':>6} {'padding':>8} {'docs/row':>8} {'pack s':>7}"
    print(header)
    print("-" * len(header))
    for strategy, packing in RUNS:
        config = PackConfig(strategy="eos" if strategy == "random" else strategy, seq_len=seq_len, packing=packing, dedup=True)
        out = work / f"{strategy}-{packing}"
        shutil.rmtree(out, ignore_errors=True)  # an output with the same options would be reused, whatever the code
        start = time.perf_counter()
        pack(store.path, out, config=config, embed_config=embed_config)
        seconds = time.perf_counter() - start
        ds = PackedDataset(out)
        stats = compute_stats(ds)
        side, in_row = same_topic_shares(ds, topic_of)
        print(
            f"{strategy:<9} {packing:<8} {side:>12.3f} {in_row:>12.3f} {stats['adjacent_cosine']:>7.3f} "
            f"{stats['adjacent_cosine_bound_ratio']:>6.3f} {stats['pad_tokens'] / (stats['num_sequences'] * seq_len):>8.4f} "
            f"{stats['num_segments'] / stats['num_sequences']:>8.1f} {seconds:>7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, action="append", help="a labelled corpus (records with id, text, topic); repeat it")
    parser.add_argument("--seq-len", type=int, action="append", help="one per --corpus")
    parser.add_argument("--work", type=Path, default=Path("bench-data/semantic"), help="stores and outputs, reused across runs")
    parser.add_argument("--embedder", choices=("minilm", "static"), default="minilm")
    args = parser.parse_args()
    runs = list(zip(args.corpus, args.seq_len, strict=True)) if args.corpus else list(DEFAULTS)
    if any(corpus == DOCSTRINGS for corpus, _ in runs) and not DOCSTRINGS.exists():
        subprocess.run([sys.executable, "benchmarks/make_docstring_corpus.py", "--out", str(DOCSTRINGS / "docstrings.jsonl")], check=True)
    if any(corpus == DEBIAN for corpus, _ in runs) and not DEBIAN.exists():
        if not list(Path("/var/lib/apt/lists").glob("*_main_binary-amd64_Packages*")):
            print(f"no apt Packages index under /var/lib/apt/lists: {DEBIAN} skipped")
            runs = [(corpus, seq_len) for corpus, seq_len in runs if corpus != DEBIAN]
        else:
            subprocess.run([sys.executable, "benchmarks/make_debian_corpus.py", "--out", str(DEBIAN / "descriptions.jsonl")], check=True)
    embed_config = EmbedConfig(model="static") if args.embedder == "static" else EmbedConfig()
    for corpus, seq_len in runs:
        bench_corpus(corpus, seq_len, args.work / corpus.name, embed_config)
    print("\nside by side / in-row pairs: shares of document pairs with the same topic label; cosine: mean cosine of")
    print("documents side by side; bound: that cosine over the most any order could reach (inspect's bound ratio).")


if __name__ == "__main__":
    main()
