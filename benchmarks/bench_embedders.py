"""Speed and icp quality of MiniLM vs the static embedder on the labelled example corpus.

    .venv/bin/python benchmarks/bench_embedders.py [--corpus examples/corpus] [--limit N] [--fresh-cache]

Both embedders see the same texts: each document's first ``--embed-tokens`` cl100k
tokens, decoded, as ``packprep embed`` gives them. Speed is documents per second of
``embed_texts`` (and of a bare ``SentenceTransformer.encode`` for MiniLM), model loading
and static distillation excluded (printed separately). Quality: ``icp_order`` on each
embedding set, then the mean cosine of adjacent documents (under both embeddings) and
the share of adjacent pairs with the same topic label, with a random order as the
floor. Prints the two ratios issue 7 asks for: static ÷ MiniLM docs/s (target ≥ 50)
and static ÷ MiniLM same-topic share (target ≥ 0.90).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_semantic import topics_by_id  # noqa: E402

from packprep.pipeline import tokenize  # noqa: E402
from packprep.stages.embed import embed_texts, first_tokens_text, load_embedder  # noqa: E402
from packprep.stages.order import adjacent_cosine, icp_order, random_order  # noqa: E402
from packprep.stages.static_embed import cache_root  # noqa: E402
from packprep.tokenizers import tokenizer_from_manifest  # noqa: E402


def same_topic_share(order: np.ndarray, labels: np.ndarray) -> float:
    """Share of consecutive pairs in ``order`` (int [M]) whose labels (str [N]) match."""
    ordered = labels[order]
    return float((ordered[1:] == ordered[:-1]).mean())


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls: the static embedder is quick enough for timer noise to matter."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("examples/corpus"))
    parser.add_argument("--limit", type=int, default=None, help="embed a random subset of N documents (default: all)")
    parser.add_argument("--embed-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--knn", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh-cache", action="store_true", help="distil the static model into a new cache, timed")
    args = parser.parse_args()
    if args.fresh_cache:
        os.environ["PACKPREP_CACHE"] = tempfile.mkdtemp(prefix="bench-static-cache-")

    topic_of = topics_by_id(args.corpus)
    store = tokenize(args.corpus, Path(tempfile.mkdtemp(prefix="bench-embedders-")) / "work")
    rng = np.random.default_rng(args.seed)
    n_docs = store.num_documents
    idx = np.sort(rng.choice(n_docs, size=min(args.limit or n_docs, n_docs), replace=False))
    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    start = time.perf_counter()
    texts = list(first_tokens_text(decode, store.tokens, store.offsets, idx, max_tokens=args.embed_tokens))
    decode_s = time.perf_counter() - start
    labels = np.array([topic_of[store.doc_ids[int(i)]] for i in idx])
    print(f"corpus {args.corpus}: {len(idx):,} of {n_docs:,} documents, {len(set(labels))} topics, "
          f"first {args.embed_tokens} tokens ({np.mean([len(t) for t in texts]):.0f} characters on average)")
    print(f"decode first tokens (shared by both embedders): {len(texts) / decode_s:,.0f} docs/s")

    start = time.perf_counter()
    static = load_embedder("static")
    static_load_s = time.perf_counter() - start
    static_folder = cache_root() / f"static-{static.fingerprint[:16]}"
    meta = json.loads((static_folder / "static.json").read_text())
    cache_mb = sum(p.stat().st_size for p in static_folder.iterdir()) / 1e6
    print(f"static: load {static_load_s:.1f} s (distilled in {meta['distill_seconds']} s when first made), "
          f"cache {static_folder} {cache_mb:.1f} MB, dim {static.dim}")

    minilm = load_embedder()
    speed: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    vectors["MiniLM"] = embed_texts(minilm, texts, batch_size=args.batch_size, dtype=np.float32)
    speed["MiniLM embed_texts"] = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    minilm.model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    speed["MiniLM bare encode"] = len(texts) / (time.perf_counter() - start)
    vectors["static"] = embed_texts(static, texts, batch_size=args.batch_size, dtype=np.float32)
    speed["static embed_texts"] = len(texts) / best_seconds(
        lambda: embed_texts(static, texts, batch_size=args.batch_size, dtype=np.float32), 3
    )
    print()
    for name, docs_per_s in speed.items():
        print(f"{name:<20} {docs_per_s:>10,.1f} docs/s")

    orders = {"random": random_order(np.arange(len(idx)), seed=args.seed)}
    for name, emb in vectors.items():
        start = time.perf_counter()
        orders[f"{name} icp"] = icp_order(np.arange(len(idx)), emb, k=args.knn, seed=args.seed)
        print(f"icp_order on {name}: {time.perf_counter() - start:.1f} s")
    print()
    header = f"{'order':<12} {'adj cos (MiniLM)':>16} {'adj cos (static)':>16} {'same topic':>10}"
    print(header)
    print("-" * len(header))
    share = {}
    for name, order in orders.items():
        share[name] = same_topic_share(order, labels)
        print(f"{name:<12} {adjacent_cosine(order, vectors['MiniLM']):>16.4f} "
              f"{adjacent_cosine(order, vectors['static']):>16.4f} {share[name]:>10.3f}")
    print()
    print(f"speed:   static / MiniLM embed_texts = {speed['static embed_texts'] / speed['MiniLM embed_texts']:.0f}x "
          f"(bare encode: {speed['static embed_texts'] / speed['MiniLM bare encode']:.0f}x; target >= 50x)")
    print(f"quality: static icp / MiniLM icp same-topic share = {share['static icp'] / share['MiniLM icp']:.3f} "
          "(target >= 0.90)")


if __name__ == "__main__":
    main()
