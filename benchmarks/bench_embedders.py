"""Speed and icp quality of MiniLM vs the static embedder on the labelled example corpus.

    .venv/bin/python benchmarks/bench_embedders.py [--corpus examples/corpus] [--limit N] [--fit-sizes 250,500,1000,2000] [--fresh-cache]

Both embedders see the same texts: each document's first ``--embed-tokens`` cl100k
tokens, decoded, as ``packprep embed`` gives them. Speed is documents per second of
``embed_texts`` (and of a bare ``SentenceTransformer.encode`` for MiniLM), model loading
and static distillation excluded (printed separately). Quality: ``icp_order`` on each
embedding set, then the mean cosine of adjacent documents (under both embeddings) and
the share of adjacent pairs with the same topic label, with a random order as the
floor. Prints the two ratios issue 7 asks for: static ÷ MiniLM docs/s (target ≥ 50)
and static ÷ MiniLM same-topic share (target ≥ 0.90).

The fitted static model (what ``packprep embed --embedder static`` runs) is judged on
held-out documents only: for each ``--fit-sizes`` n, a seeded sample of n documents
fits it (their MiniLM vectors, computed once for all documents, are the targets) and
icp runs on the other documents under MiniLM, the unfitted and the fitted static
vectors. Its cost for a large corpus is extrapolated to 1M documents: MiniLM on the
sample + the fit + 1M documents at the fitted model's measured docs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_semantic import topics_by_id  # noqa: E402

from packprep.pipeline import tokenize  # noqa: E402
from packprep.stages.embed import embed_texts, first_tokens_text, load_embedder  # noqa: E402
from packprep.stages.order import adjacent_cosine, icp_order, random_order  # noqa: E402
from packprep.stages.static_embed import FIT, cache_root, fit_sample, fit_static_model  # noqa: E402
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


def icp_share(vectors: np.ndarray, labels: np.ndarray, *, knn: int, seed: int) -> float:
    return same_topic_share(icp_order(np.arange(len(labels)), vectors, k=knn, seed=seed), labels)


def fit_curve(static, texts: list[str], minilm: np.ndarray, labels: np.ndarray, sizes: list[int], args) -> None:
    """Per sample size: held-out icp same-topic share of MiniLM, unfitted and fitted static, and the fit's cost."""
    unfitted = embed_texts(static, texts, batch_size=args.batch_size, dtype=np.float32)
    minilm_dps = len(texts) / args.minilm_seconds
    header = (f"{'fit on':>7} {'held out':>8} {'MiniLM':>7} {'unfitted':>9} {'fitted':>7} {'ratio':>6} "
              f"{'cos to MiniLM':>13} {'fit s':>6} {'fitted docs/s':>13} {'1M docs: static s':>17} {'MiniLM s':>9} {'speedup':>7}")
    print(header)
    print("-" * len(header))
    for size in sizes:
        sample = fit_sample(len(texts), size=size, seed=args.seed)
        held = np.setdiff1d(np.arange(len(texts)), sample)
        start = time.perf_counter()
        model = fit_static_model(static.model, [texts[i] for i in sample], minilm[sample],
                                 map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
        fit_s = time.perf_counter() - start
        fitted = replace(static, dim=model.vectors.shape[1], model=model)
        held_texts = [texts[i] for i in held]
        vectors = embed_texts(fitted, held_texts, batch_size=args.batch_size, dtype=np.float32)
        fitted_dps = len(texts) / best_seconds(
            lambda: embed_texts(fitted, texts, batch_size=args.batch_size, dtype=np.float32), 3)
        shares = [icp_share(v[held] if len(v) == len(texts) else v, labels[held], knn=args.knn, seed=args.seed)
                  for v in (minilm, unfitted, vectors)]
        cosine = float((vectors * minilm[held]).sum(axis=1).mean())
        static_1m = len(sample) / minilm_dps + fit_s + 1e6 / fitted_dps
        print(f"{len(sample):>7,} {len(held):>8,} {shares[0]:>7.3f} {shares[1]:>9.3f} {shares[2]:>7.3f} "
              f"{shares[2] / shares[0]:>6.3f} {cosine:>13.3f} {fit_s:>6.1f} {fitted_dps:>13,.0f} "
              f"{static_1m:>17,.0f} {1e6 / minilm_dps:>9,.0f} {1e6 / minilm_dps / static_1m:>6.0f}x")
    print("ratio: fitted / MiniLM same-topic share on the held-out documents (target >= 0.90); "
          "speedup: MiniLM s / static s for 1M documents, static including MiniLM on the sample and the fit (target >= 50x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("examples/corpus"))
    parser.add_argument("--limit", type=int, default=None, help="embed a random subset of N documents (default: all)")
    parser.add_argument("--embed-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--knn", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-sizes", default=f"250,500,1000,{FIT['sample']}",
                        help="comma-separated sample sizes for the fitted static model (held-out evaluation)")
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
    # Warm torch's thread pool and kernels first, then time ours and the bare encode on the
    # same texts in alternation, so neither gets the cold start or a quieter minute alone.
    minilm.model.encode(texts[:64], batch_size=args.batch_size)
    ours, bare = [], []
    for _ in range(2):
        start = time.perf_counter()
        vectors["MiniLM"] = embed_texts(minilm, texts, batch_size=args.batch_size, dtype=np.float32)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        minilm.model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        bare.append(time.perf_counter() - start)
    args.minilm_seconds = min(ours)
    speed["MiniLM embed_texts"] = len(texts) / min(ours)
    speed["MiniLM bare encode"] = len(texts) / min(bare)
    print(f"MiniLM embed_texts / bare encode: {min(bare) / min(ours):.2f} (target >= 0.90)")
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
          "(target >= 0.90)  [unfitted static, all documents]")
    print()
    print(f"fitted static (ridges {FIT['map_ridge']}, {FIT['token_ridge']}; packprep samples {FIT['sample']:,}), held-out documents:")
    sizes = [min(int(n), len(texts) - 2 * args.knn) for n in args.fit_sizes.split(",")]
    fit_curve(static, texts, vectors["MiniLM"], labels, sizes, args)


if __name__ == "__main__":
    main()
