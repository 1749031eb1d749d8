"""Partitioned ordering: icp and cluster over corpora larger than one machine orders at once.

A coarse k-means over a seeded sample splits the documents into partitions of at most
``max_docs`` (a partition that comes out larger is split again the same way, so the
bound always holds); each partition is ordered on its own with the global strategy's
steps (:func:`packprep.stages.order.icp_order` or ``cluster_order``); then the partitions
are chained by an icp walk over their centroids, and each is turned round where that
joins its first or last document more closely to its predecessor's last. Every step is
seeded, so engines that run the partitions anywhere, in any order, get the same order.
With semantic dedup on, each partition first drops the members whose cosine to an earlier
kept member of the same partition is above the threshold (:func:`partition_duplicates`,
SemDeDup's scheme: the coarse clusters bound the comparisons, as NeMo Curator's k-means
clusters do); a duplicate pair split across two partitions is not found.

Memory: ordering one partition needs its rows of the embeddings only (as float32, plus
the kNN graph and, above ``exact_max`` documents, the IVF index), so the peak per
partition is set by ``max_docs`` and not by the corpus. Planning reads a sample of
``256`` rows per partition and then streams every row once against the centroids
(``pipeline.planning`` does that pass in ranges, on the engine, with the helpers here:
:func:`split_sample`, :func:`kept_docs`, :func:`first_split_sizes`, :func:`split_documents`).

``--partition-docs`` (``config.DEFAULT_PARTITION_DOCS``, chosen from memory measurements)
sets ``max_docs`` in ``pack``. A corpus of at most ``max_docs`` documents is one partition, ordered by exactly the
global call with the same seed: turning partitioning on changes nothing below the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.stages.order import Progress, float32_rows, icp_order, kmeans_assign

_SAMPLE_PER_PARTITION = 256  # k-means training points per centroid (faiss's own subsampling figure)
# Rows compared with the centroids at a time: bounds the float32 copy. Both engines cut the pass
# over the kept documents into the same batches (positions 0, ASSIGN_BATCH, ...): faiss's search
# of a batch may round differently with another batch's size (a BLAS path from 20 rows up).
ASSIGN_BATCH = 65536
KEPT_CHUNK = 1 << 20  # documents whose dedup reason is read at a time to count or find the kept ones (1 MB)


@dataclass(frozen=True)
class Partitions:
    """``members``: int64 [M], the documents grouped by partition (ascending inside each);
    ``bounds``: int64 [P + 1], partition ``p`` is ``members[bounds[p]:bounds[p + 1]]``."""

    members: np.ndarray
    bounds: np.ndarray

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def part(self, p: int) -> np.ndarray:
        return self.members[self.bounds[p] : self.bounds[p + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.bounds)


def partition_documents(
    doc_indices: np.ndarray, embeddings: np.ndarray, *, max_docs: int, seed: int, after_batch: Callable[[], None] | None = None
) -> Partitions:
    """Split ``doc_indices`` (int [M], document rows of ``embeddings`` float [N, D]) into partitions of at most ``max_docs``.

    ``ceil(M / max_docs)`` k-means centroids are trained on a seeded sample and every
    document goes to its nearest one; a partition larger than ``max_docs`` is split again
    by the same procedure (its own sample and seed), and one that k-means cannot split
    (identical vectors) is cut into equal runs of document indices. Empty clusters are
    dropped. Partitions are numbered depth-first in centroid order. ``after_batch``: called after
    each batch of rows is compared with the centroids (the caller lets go of a memmap's pages
    there, ``io.release_pages``, so the pass over every row never maps the whole file at once).
    """
    if max_docs < 1:
        raise PackprepError(f"--partition-docs must be at least 1, got {max_docs}")
    idx = np.unique(np.asarray(doc_indices, dtype=np.int64))  # ascending: the members' canonical order
    parts = split_documents(idx, embeddings, max_docs=max_docs, path=(int(seed),), after_batch=after_batch)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return Partitions(members=np.concatenate(parts) if parts else idx, bounds=bounds)


def split_documents(
    members: np.ndarray, embeddings: np.ndarray, *, max_docs: int, path: tuple[int, ...],
    after_batch: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """``members`` (int64 [m], ascending) as :func:`partition_documents` cuts them, starting from the
    seed ``path`` (``(seed,)`` for all documents, ``(seed, i)`` for the i-th non-empty cluster of the
    first split): the partitions in depth-first order, each ascending."""
    parts: list[np.ndarray] = []
    stack = [(members, path)]
    while stack:  # depth-first, children pushed in reverse so they come out in centroid order
        members, path = stack.pop()
        if len(members) <= max_docs:
            parts.append(members)
            continue
        children = _split(members, embeddings, n=math.ceil(len(members) / max_docs), path=path, after_batch=after_batch)
        if len(children) == 1:  # k-means put everything in one cluster: cut by index instead
            children = np.array_split(members, math.ceil(len(members) / max_docs))
        stack.extend((child, (*path, i)) for i, child in reversed(list(enumerate(children))))
    return parts


def split_sample(m: int, n: int, path: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Where a split of ``m`` members into ``n`` clusters, seeded by ``path``, trains its k-means:
    (int64 [S] sorted member positions, the faiss seed)."""
    rng = np.random.default_rng(list(path))
    sample = np.sort(rng.choice(m, size=min(m, _SAMPLE_PER_PARTITION * n), replace=False))
    return sample, int(rng.integers(2**31 - 1))


def _split(
    members: np.ndarray, embeddings: np.ndarray, *, n: int, path: tuple[int, ...], after_batch: Callable[[], None] | None
) -> list[np.ndarray]:
    """The non-empty k-means clusters (``n`` centroids, seeded by ``path``) of ``members``, each ascending."""
    sample, faiss_seed = split_sample(len(members), n, path)
    assign = kmeans_assign(
        embeddings, members, sample, n, faiss_seed=faiss_seed, batch=ASSIGN_BATCH,
        progress=None if after_batch is None else lambda _rows: after_batch(),
    )
    grouped = members[np.argsort(assign, kind="stable")]  # stable: ascending inside each cluster
    cuts = np.cumsum(np.bincount(assign, minlength=n))[:-1]
    return [part for part in np.split(grouped, cuts) if len(part)]


def first_split_sizes(cluster_sizes: np.ndarray, *, max_docs: int) -> list[int]:
    """The sizes of the first split's children (``cluster_sizes`` int [n]: documents per coarse
    cluster, empty ones included), as :func:`split_documents` numbers them: the non-empty clusters,
    or, when k-means put every document in one, the equal runs it is cut into instead."""
    sizes = [int(s) for s in cluster_sizes if s]
    if len(sizes) == 1:
        runs = math.ceil(sizes[0] / max_docs)
        q, r = divmod(sizes[0], runs)
        sizes = [q + 1] * r + [q] * (runs - r)  # np.array_split's sizes
    return sizes


def kept_counts(reason: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
    """int64 [ceil(N / chunk)]: how many documents of each ``chunk`` (default KEPT_CHUNK) of ``reason`` (uint8 [N],
    maybe a memmap) are kept (reason 0): what :func:`kept_docs` needs to find a kept position's document."""
    chunk = chunk or KEPT_CHUNK
    return np.array([np.count_nonzero(reason[s : s + chunk] == 0) for s in range(0, len(reason), chunk)], dtype=np.int64)


def kept_docs(reason: np.ndarray, positions: np.ndarray, counts: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
    """int64 [len(positions)]: the documents at ``positions`` (int [S], ascending) of the kept ones
    (``reason`` uint8 [N] == 0, in document order), ``counts`` being :func:`kept_counts` with this ``chunk``.
    Reads only the chunks that hold a position, one at a time."""
    chunk = chunk or KEPT_CHUNK
    positions = np.asarray(positions, dtype=np.int64)
    prefix = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lo, hi = np.searchsorted(positions, prefix[:-1]), np.searchsorted(positions, prefix[1:])
    docs = np.empty(len(positions), dtype=np.int64)
    for c in np.flatnonzero(hi > lo).tolist():
        kept = np.flatnonzero(reason[c * chunk : (c + 1) * chunk] == 0)
        docs[lo[c] : hi[c]] = kept[positions[lo[c] : hi[c]] - prefix[c]] + c * chunk
    return docs


def partition_seed(seed: int, p: int, num_partitions: int) -> int:
    """The seed partition ``p`` is ordered with: ``seed`` itself when there is one partition
    (so the order is the global one), else one drawn from ``(seed, p)``."""
    return int(seed) if num_partitions == 1 else int(np.random.default_rng([int(seed), p]).integers(2**31 - 1))


@dataclass(frozen=True)
class _PartitionParams:
    """What a strategy's order reads (``stages.strategies.OrderParams``), for one partition."""

    seed: int
    clusters: int | None
    knn: int


def _no_drops() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class PartOrder:
    """One ordered partition: ``order`` int64 [m] (document indices), ``centroid`` float32 [D]
    (the normalised mean of its rows), ``ends`` float32 [2, D] (the rows of its first and last documents),
    ``dropped`` int64 [d, 2]: (document, the kept document it duplicates) for each member semantic
    dedup dropped, ascending by document (empty without semantic dedup); ``order`` holds the others."""

    order: np.ndarray
    centroid: np.ndarray
    ends: np.ndarray
    dropped: np.ndarray = field(default_factory=_no_drops)


def order_partition(
    members: np.ndarray,
    embeddings: np.ndarray,
    *,
    strategy: str,
    seed: int,
    k: int = 10,
    n_clusters: int | None = None,
    semantic_threshold: float = 0.0,
    progress: Progress = None,
) -> PartOrder:
    """Order one partition's ``members`` (int [m]) as the global ``strategy`` (``icp`` or ``cluster``:
    its ``stages.strategies`` entry) would, after semantic dedup inside the partition.

    Reads only the ``members`` rows of ``embeddings``. ``seed``: :func:`partition_seed`;
    ``n_clusters``: this partition's share of ``--clusters`` (None: about ``sqrt(m)``).
    ``semantic_threshold`` above 0: first :func:`partition_duplicates`, and only the members it
    keeps are ordered (the global rule, restricted to the partition).
    """
    from packprep.stages.strategies import STRATEGIES

    if strategy not in STRATEGIES or not STRATEGIES[strategy].needs_embeddings:
        raise ValueError(f"partitioned ordering is for the embedding strategies (icp, cluster), not {strategy!r}")
    dropped = _no_drops()
    if semantic_threshold > 0:
        members, dropped = partition_duplicates(members, embeddings, threshold=semantic_threshold, k=k)
    params = _PartitionParams(seed=seed, clusters=n_clusters, knn=k)
    order = STRATEGIES[strategy].order(members, embeddings, params, progress)
    total = np.zeros(embeddings.shape[1], dtype=np.float64)
    for start in range(0, len(order), ASSIGN_BATCH):
        total += float32_rows(embeddings, np.sort(order[start : start + ASSIGN_BATCH])).sum(axis=0, dtype=np.float64)
    centroid = (total / max(np.linalg.norm(total), 1e-12)).astype(np.float32)
    ends = float32_rows(embeddings, order[[0, -1]]) if len(order) else np.zeros((2, embeddings.shape[1]), np.float32)
    return PartOrder(order=order, centroid=centroid, ends=ends, dropped=dropped)


def partition_duplicates(members: np.ndarray, embeddings: np.ndarray, *, threshold: float, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Semantic dedup of one partition: ``stages.dedup.semantic_duplicates`` over the rows of
    ``members`` (int [m]) in ascending document order, so a member is dropped when its cosine to an
    earlier kept member is above ``threshold`` (the global rule, with the partition for the corpus).

    Returns (int64 [m - d] the kept members, ascending; int64 [d, 2] (dropped document, the kept
    member it duplicates), ascending). The float32 copy of the rows and the kNN graph are let go
    before the partition is ordered (measured: the partition task's peak grows 7-12 %, not 2x:
    ``bench_partition.py --memory --semantic-threshold``, docs/semantic.md).
    """
    from packprep.stages.dedup import semantic_duplicates

    members = np.unique(np.asarray(members, dtype=np.int64))
    close = semantic_duplicates(float32_rows(embeddings, members), threshold=threshold, k=k)
    gone = ~close.keep
    dropped = np.stack([members[gone], members[close.dup_of[gone]]], axis=1).astype(np.int64).reshape(-1, 2)
    return members[close.keep], dropped


def partition_clusters(n_clusters: int | None, size: int, total: int) -> int | None:
    """Partition's share of ``--clusters`` (proportional to its size, at least 1); None stays None."""
    return None if n_clusters is None else max(1, round(n_clusters * size / max(total, 1)))


def chain_partitions(centroids: np.ndarray, ends: np.ndarray, *, seed: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """In which sequence, and which way round, the ordered partitions follow each other.

    ``centroids`` float [P, D], ``ends`` float [P, 2, D] (first and last row of each
    partition's order). The sequence is an icp order of the centroids (kNN + walk + local
    search, seeded). Then each partition is reversed (bool [P]) where that puts a closer
    document next to the previous partition's last one; the first is reversed where its
    last document is then the closer one to the next partition's centroid. Returns
    (int64 [P] partition numbers in sequence, bool [P] reversed, indexed by partition).
    """
    p = len(centroids)
    if p == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    sequence = icp_order(np.arange(p), c, k=min(k, max(p - 1, 1)), seed=seed) if p > 1 else np.zeros(1, np.int64)
    e = np.asarray(ends, dtype=np.float64)
    reverse = np.zeros(p, dtype=bool)
    if p > 1:
        first, following = sequence[0], c[sequence[1]]
        reverse[first] = e[first, 0] @ following > e[first, 1] @ following
    for prev, cur in zip(sequence[:-1], sequence[1:], strict=True):
        tail = e[prev, 0] if reverse[prev] else e[prev, 1]
        reverse[cur] = tail @ e[cur, 1] > tail @ e[cur, 0]
    return sequence, reverse


def join_partitions(orders: list[np.ndarray], sequence: np.ndarray, reverse: np.ndarray) -> np.ndarray:
    """int64 [M]: the partitions' orders one after another in ``sequence``, reversed where ``reverse`` says."""
    pieces = [orders[p][::-1] if reverse[p] else orders[p] for p in sequence]
    return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)


def partitioned_order(doc_indices: np.ndarray, embeddings: np.ndarray, **options: Any) -> np.ndarray:
    """int64 [M']: :func:`partitioned_selection`'s order alone (``options``: its keyword arguments)."""
    return partitioned_selection(doc_indices, embeddings, **options)[0]


def partitioned_selection(
    doc_indices: np.ndarray,
    embeddings: np.ndarray,
    *,
    strategy: str,
    max_docs: int,
    seed: int,
    k: int = 10,
    n_clusters: int | None = None,
    semantic_threshold: float = 0.0,
    progress: Progress = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [M'] the order, int64 [d, 2] the semantic drops: (document, kept duplicate), ascending by document).

    The reference the engines must reproduce: plan (:func:`partition_documents`), dedup and
    order each partition (:func:`order_partition`), chain (:func:`chain_partitions`), join.
    """
    plan = partition_documents(doc_indices, embeddings, max_docs=max_docs, seed=seed)
    parts = [
        order_partition(
            plan.part(p), embeddings, strategy=strategy, seed=partition_seed(seed, p, len(plan)), k=k,
            n_clusters=partition_clusters(n_clusters, len(plan.part(p)), len(plan.members)),
            semantic_threshold=semantic_threshold, progress=progress,
        )
        for p in range(len(plan))
    ]
    return assemble(parts, seed=seed, k=k), joined_drops([part.dropped for part in parts])


def joined_drops(drops: list[np.ndarray]) -> np.ndarray:
    """int64 [d, 2]: every partition's drops (int64 [d_p, 2] each), ascending by document."""
    joined = np.concatenate([_no_drops(), *drops]).astype(np.int64)
    return joined[np.argsort(joined[:, 0], kind="stable")]


def assemble(parts: list[PartOrder], *, seed: int, k: int = 10) -> np.ndarray:
    """int64 [M]: the ordered partitions chained and joined (what every engine ends with)."""
    if len(parts) == 1:
        return parts[0].order
    return join_partitions([part.order for part in parts], *chain_sequence(parts, seed=seed, k=k))


def chain_sequence(parts: list[PartOrder], *, seed: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [P] the partitions in joined order, bool [P] which are turned round): :func:`chain_partitions`
    of their centroids and end rows; a single partition as it is."""
    if len(parts) == 1:
        return np.zeros(1, np.int64), np.zeros(1, bool)
    centroids = np.stack([part.centroid for part in parts]) if parts else np.zeros((0, 1), np.float32)
    ends = np.stack([part.ends for part in parts]) if parts else np.zeros((0, 2, 1), np.float32)
    return chain_partitions(centroids, ends, seed=seed, k=k)
