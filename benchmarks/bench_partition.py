"""Partitioned vs global ordering on labelled corpora: how much do the partitions and their seams cost?

    .venv/bin/python benchmarks/bench_partition.py [--corpus examples/corpus] [--corpus bench-data/stdlib-docstrings]
        [--partition-docs 2000 --partition-docs 1000] [--embedder minilm|static] [--work bench-data/partition]

The corpora (records with id, text, topic) are tokenized together into one store, each
corpus's topics kept apart (``corpus/topic``), embedded once, and then every document is
ordered by global icp / cluster and by the partitioned ones (``stages.partition``), on
identical inputs. Per run it prints:

- same topic: share of consecutive documents in the order with the same topic label;
- cosine: mean cosine of consecutive documents (``stages.order.adjacent_cosine``);
- seams: pairs that join two partitions, their same-topic share and mean cosine;
- parts: number of partitions and the largest; seconds of the ordering.

    .venv/bin/python benchmarks/bench_partition.py --memory 20000 --memory 50000 [--memory 60000 --exact-max 50000]

instead measures what ordering one icp partition of M documents costs (random unit
vectors, D = 384, float16 memmap like the embed stage writes; each size in a fresh
process): peak resident memory above the process's baseline after imports, per document,
and the seconds and CPU seconds it took. Above ``--exact-max`` documents (200,000, the
default of ``stages.order.icp_order``) the kNN search is IVF-Flat without kicks, below it
exact; lowering it measures the IVF regime's bytes per document at a size this machine
orders in minutes. ``--semantic-threshold T``: the partition's semantic dedup first, as a
partition task runs it with icp's default threshold (random vectors: its kNN, no drops).

    .venv/bin/python benchmarks/bench_partition.py --semantic [--source bench-data/kernel-docs.jsonl] [--docs 6000] [--copies 600]

instead compares semantic dedup inside partitions with the global one on planted near-duplicates
(``bench_partition_dedup.py`` says what it prints).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from packprep.config import EmbedConfig
from packprep.pipeline import tokenize
from packprep.pipeline.semantic import embed
from packprep.stages.order import adjacent_cosine, cluster_order, icp_order
from packprep.stages.partition import partition_documents, partitioned_order
from packprep.store import DocStore

DOCSTRINGS = Path("bench-data/stdlib-docstrings")
sys.path.insert(0, str(Path(__file__).parent))
from bench_semantic import topics_by_id  # noqa: E402


def labelled_store(corpora: list[Path], work: Path) -> tuple[DocStore, np.ndarray]:
    """One store of all ``corpora`` (copied side by side into one folder) and int labels [N]."""
    folder = work / "corpus"
    shutil.rmtree(folder, ignore_errors=True)
    topic_of = {}
    for corpus in corpora:
        shutil.copytree(corpus, folder / corpus.name)
        topic_of.update({doc_id: f"{corpus.name}/{topic}" for doc_id, topic in topics_by_id(corpus).items()})
    store = tokenize(folder, work / "work")
    names = sorted(set(topic_of.values()))
    ids = DocStore.open(store.path).doc_ids
    labels = np.array([names.index(topic_of[ids[i]]) for i in range(store.num_documents)])
    return store, labels


def row(name: str, order: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, seconds: float, seams=None) -> None:
    same = float(np.mean(labels[order[:-1]] == labels[order[1:]]))
    text = f"{name:<26} {same:>9.3f} {adjacent_cosine(order, embeddings):>7.3f}"
    if seams is not None:
        where, parts, largest = seams
        left, right = order[where], order[where + 1]
        cos = float(np.mean(np.einsum("ij,ij->i", embeddings[left].astype(np.float32), embeddings[right].astype(np.float32))))
        text += f" {len(where):>6} {float(np.mean(labels[left] == labels[right])):>10.3f} {cos:>9.3f} {parts:>6} {largest:>8}"
    else:
        text += f" {'':>6} {'':>10} {'':>9} {1:>6} {len(order):>8}"
    print(text + f" {seconds:>7.1f}")


def seams_of(order: np.ndarray, plan) -> np.ndarray:
    """Positions i where order[i] and order[i + 1] lie in different partitions."""
    part_of = np.empty(int(plan.members.max()) + 1, dtype=np.int64)
    part_of[plan.members] = np.repeat(np.arange(len(plan)), plan.sizes())
    return np.flatnonzero(part_of[order[:-1]] != part_of[order[1:]])


def measure_one(m: int, folder: Path, exact_max: int, semantic: float = 0.0) -> None:
    """Print peak RSS growth, wall and CPU seconds of ordering one icp partition of ``m`` random documents."""
    import resource

    from packprep.stages.order import icp_order
    from packprep.stages.partition import order_partition

    path = folder / f"random-{m}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(m, 384))
        for start in range(0, m, 50_000):
            x = rng.standard_normal((min(50_000, m - start), 384)).astype(np.float32)
            out[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
    embeddings = np.load(path, mmap_mode="r")
    order_partition(np.arange(64), embeddings, strategy="icp", seed=0)  # faiss, numba and their kernels loaded
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    if exact_max == 200_000:
        order_partition(np.arange(m), embeddings, strategy="icp", seed=0, semantic_threshold=semantic)
    else:  # what order_partition runs, with the exact/approximate switch moved
        icp_order(np.arange(m), embeddings, seed=0, exact_max=exact_max)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{m:>9,} {(peak - base) / 2**20:>9.0f} {(peak - base) / m:>9.0f} {seconds:>8.1f} {cpu:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, action="append", help="a labelled corpus; repeat it")
    parser.add_argument("--partition-docs", type=int, action="append")
    parser.add_argument("--embedder", choices=("minilm", "static"), default="minilm")
    parser.add_argument("--work", type=Path, default=Path("bench-data/partition"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", type=int, action="append", help="measure one icp partition of this many documents")
    parser.add_argument("--exact-max", type=int, default=200_000, help="with --memory: exact kNN up to this many documents")
    parser.add_argument("--semantic-threshold", type=float, default=0.0,
                        help="with --memory: semantic dedup inside the partition first (random vectors: its kNN, no drops)")
    parser.add_argument("--measure-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--semantic", action="store_true", help="semantic dedup in partitions vs global, planted near-duplicates")
    parser.add_argument("--source", type=Path, action="append", help="with --semantic: a .jsonl or a folder of them; repeat it")
    parser.add_argument("--docs", type=int, default=6000, help="with --semantic: documents sampled from each source")
    parser.add_argument("--copies", type=int, default=600, help="with --semantic: edited copies planted")
    args = parser.parse_args()
    if args.semantic:
        from bench_partition_dedup import compare

        for source in args.source or [Path("bench-data/kernel-docs.jsonl")]:
            compare(source, args.work, docs=args.docs, copies=args.copies, embedder=args.embedder,
                    partition_docs=args.partition_docs or [2000, 1000], seed=args.seed)
        return None
    if args.measure_one:
        return measure_one(args.measure_one, args.work, args.exact_max, args.semantic_threshold)
    if args.memory:
        args.work.mkdir(parents=True, exist_ok=True)
        print(f"{'documents':>9} {'peak MiB':>9} {'B/doc':>9} {'s':>8} {'cpu s':>8}", flush=True)
        for m in args.memory:  # a fresh process each: ru_maxrss only grows
            command = [sys.executable, __file__, "--measure-one", str(m), "--work", str(args.work), "--exact-max", str(args.exact_max),
                       "--semantic-threshold", str(args.semantic_threshold)]
            subprocess.run(command, check=True)
        return None
    corpora = args.corpus or [Path("examples/corpus"), DOCSTRINGS]
    if DOCSTRINGS in corpora and not DOCSTRINGS.exists():
        subprocess.run([sys.executable, "benchmarks/make_docstring_corpus.py", "--out", str(DOCSTRINGS / "docstrings.jsonl")], check=True)
    store, labels = labelled_store(corpora, args.work)
    embeddings = embed(store, config=EmbedConfig(model="static") if args.embedder == "static" else EmbedConfig())
    docs = np.arange(store.num_documents)
    print(f"{store.num_documents:,} documents, {labels.max() + 1} topics, {args.embedder} embeddings, seed {args.seed}")
    print(f"{'ordering':<26} {'same topic':>9} {'cosine':>7} {'seams':>6} {'seam topic':>10} {'seam cos':>9} {'parts':>6} {'largest':>8} {'s':>7}")
    for strategy, whole in (("icp", icp_order), ("cluster", cluster_order)):
        start = time.perf_counter()
        order = whole(docs, embeddings, seed=args.seed)
        row(f"{strategy} global", order, embeddings, labels, time.perf_counter() - start)
        for max_docs in args.partition_docs or [2000, 1000, 500]:
            start = time.perf_counter()
            order = partitioned_order(docs, embeddings, strategy=strategy, max_docs=max_docs, seed=args.seed)
            seconds = time.perf_counter() - start
            plan = partition_documents(docs, embeddings, max_docs=max_docs, seed=args.seed)
            row(f"{strategy} partitions <= {max_docs}", order, embeddings, labels, seconds, (seams_of(order, plan), len(plan), int(plan.sizes().max())))


if __name__ == "__main__":
    main()
