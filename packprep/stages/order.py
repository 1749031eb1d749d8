"""Ordering: which document follows which before packing. Returns int64 permutations.

- ``random``: a seeded shuffle.
- ``cluster``: k-means clusters, clusters and their members each in seeded random order.
- ``icp``: In-Context Pretraining (Shi et al. 2023): a kNN graph over document
  embeddings, then a greedy walk that always steps to the most similar unvisited
  neighbour, so related documents end up in the same context window; then local search
  on the walk (:mod:`packprep.stages.path_search`) brings back the documents the greedy
  walk stranded, and a bonus for pairs in one community of the kNN graph
  (:mod:`packprep.stages.communities`) keeps whole windows, not just neighbours, on one topic.

Embeddings are float16/float32 ``[N, D]``, L2-normalised, indexed by document index
(a read-only memmap is fine: rows are gathered in chunks). faiss and numba are imported
inside the functions that need them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from packprep.errors import PackprepError

Progress = Callable[[int], None] | None

_BATCH = 8192  # query rows per faiss search: bounds the [batch, k] result buffers
_TARGET_RECALL = 0.95  # recall@k the approximate search is tuned to reach on a sample
_CALIBRATION_QUERIES = 1000
_MAX_SCANNED = 10_000  # vectors one approximate query may scan (nprobe x list size)
# What the local search adds to the cosine of two documents in one kNN-graph community.
# Measured on three labelled corpora at ~10 documents per row (docs/semantic.md): 0.05 took
# the in-row same-topic share up by 0.018-0.022 for 0.0013-0.0024 of the bound; 0.1 gained
# more in-row but cost up to 0.0065 and took the docstrings below 0.95 of the bound.
COMMUNITY_BONUS = 0.05


def random_order(doc_indices: np.ndarray, *, seed: int) -> np.ndarray:
    """int64 [M]: ``doc_indices`` (int [M]) shuffled with ``default_rng(seed)``."""
    return np.random.default_rng(seed).permutation(_as_indices(doc_indices))


def cluster_order(
    doc_indices: np.ndarray, embeddings: np.ndarray, *, n_clusters: int | None = None, seed: int, progress: Progress = None
) -> np.ndarray:
    """int64 [M]: ``doc_indices`` grouped by k-means cluster of their embeddings.

    ``n_clusters`` defaults to ``round(sqrt(M))`` and is clipped to ``[1, M]``. Clusters
    are visited in a seeded random order, documents inside a cluster likewise.
    ``progress`` is advanced by the number of documents assigned to a centroid.
    """
    idx = _as_indices(doc_indices)
    m = len(idx)
    if n_clusters is not None and n_clusters < 1:
        raise PackprepError(f"n_clusters must be at least 1, got {n_clusters}")
    n = min(max(round(np.sqrt(m)) if n_clusters is None else n_clusters, 1), max(m, 1))
    _check_rows(embeddings, idx)
    rng = np.random.default_rng(seed)
    if n == 1:
        assign = np.zeros(m, dtype=np.int64)
    else:
        # k-means does not need every point: faiss itself would subsample to 256 per
        # centroid, and sampling here means only the sample is converted to float32.
        sample = np.sort(rng.choice(m, size=min(m, 256 * n), replace=False))
        assign = kmeans_assign(embeddings, idx, sample, n, faiss_seed=_faiss_seed(seed), progress=progress)
    cluster_rank = rng.permutation(n)
    within = rng.random(m)
    return idx[np.lexsort((within, cluster_rank[assign]))]


def kmeans_assign(
    embeddings: np.ndarray, idx: np.ndarray, sample: np.ndarray, n: int, *, faiss_seed: int, batch: int = _BATCH,
    progress: Progress = None,
) -> np.ndarray:
    """int64 [len(idx)]: for each row ``idx[i]`` of ``embeddings``, the nearest of ``n`` centroids
    that faiss's k-means (20 iterations, ``faiss_seed``) trains on the rows ``idx[sample]``;
    rows are compared ``batch`` at a time (the float32 copy is bounded by it)."""
    index = centroid_index(kmeans_centroids(float32_rows(embeddings, idx[sample]), n, faiss_seed=faiss_seed))
    assign = np.empty(len(idx), dtype=np.int64)
    for start in range(0, len(idx), batch):
        stop = min(start + batch, len(idx))
        assign[start:stop] = index.search(float32_rows(embeddings, idx[start:stop]), 1)[1][:, 0]
        if progress is not None:
            progress(stop - start)
    return assign


def kmeans_centroids(rows: np.ndarray, n: int, *, faiss_seed: int) -> np.ndarray:
    """float32 [n, D]: the centroids faiss's k-means (20 iterations, ``faiss_seed``) trains on ``rows`` (float32 [S, D])."""
    import faiss

    kmeans = faiss.Kmeans(rows.shape[1], n, niter=20, seed=faiss_seed, min_points_per_centroid=1, verbose=False)
    kmeans.train(rows)
    return kmeans.centroids


def centroid_index(centroids: np.ndarray):  # -> faiss.IndexFlatL2 (faiss is imported here only)
    """The flat L2 index over ``centroids`` (float32 [n, D]) that faiss's k-means searches with: its
    ``search(rows, 1)`` gives each row's nearest centroid, in this process or in a task that was sent the centroids."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index


def knn_graph(
    embeddings_subset: np.ndarray, *, k: int = 10, exact_max: int = 200_000, seed: int = 0, progress: Progress = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours (inner product) of every row among the other rows.

    ``embeddings_subset``: float [M, D], L2-normalised. Returns ``neighbours`` int64
    [M, k] (row positions, self excluded, best first, -1 where fewer than k exist) and
    ``similarities`` float32 [M, k] (-inf where the neighbour is -1). Exact search for
    ``M <= exact_max``, else IVF-Flat's neighbours (k-means lists, each row compared with the
    rows of its ``nprobe`` nearest lists) with the smallest nprobe whose recall@k on a sample
    reaches 0.95, or the largest for which a query scans at most 10,000 vectors; then two
    rounds of neighbours' neighbours. The same result for any thread count.
    ``progress`` is advanced by the number of rows searched.
    """
    if k < 1:
        raise PackprepError(f"k must be at least 1, got {k}")
    x = np.ascontiguousarray(embeddings_subset, dtype=np.float32)
    m = len(x)
    neighbours = np.full((m, k), -1, dtype=np.int64)
    similarities = np.full((m, k), -np.inf, dtype=np.float32)
    if m == 0:
        return neighbours, similarities
    if m > exact_max:
        return _approximate_knn(x, k=k, seed=seed, progress=progress)
    search = _exact_search(x)
    for start in range(0, m, _BATCH):
        stop = min(start + _BATCH, m)
        rows = np.arange(start, stop)
        neighbours[start:stop], similarities[start:stop] = _search(search, x[start:stop], rows, k)
        if progress is not None:
            progress(stop - start)
    return neighbours, similarities


def icp_walk(neighbours: np.ndarray, similarities: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """int64 [M]: the greedy ICP path over a kNN graph, every position 0..M-1 once.

    ``neighbours`` int [M, k] (-1 = none) and ``similarities`` float [M, k]. From the
    current document, step to its most similar unvisited neighbour; when there is none,
    jump to the unvisited document with the fewest unvisited in-edges (ties: the one
    whose count dropped most recently, then a seeded random order).
    """
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int64)
    similarities = np.ascontiguousarray(similarities, dtype=np.float32)
    if neighbours.ndim != 2 or neighbours.shape != similarities.shape:
        raise ValueError(f"neighbours {neighbours.shape} and similarities {similarities.shape} must be equal [M, k]")
    m = len(neighbours)
    if m == 0:
        return np.empty(0, dtype=np.int64)
    if neighbours.max(initial=-1) >= m or neighbours.min(initial=-1) < -1:
        raise ValueError("neighbours must be positions in 0..M-1 or -1")
    in_degrees, walk = _kernels()
    tie_order = np.random.default_rng(seed).permutation(m)
    return walk(neighbours, similarities, in_degrees(neighbours), tie_order)


def icp_order(
    doc_indices: np.ndarray,
    embeddings: np.ndarray,
    *,
    k: int = 10,
    seed: int,
    exact_max: int = 200_000,
    community_bonus: float = COMMUNITY_BONUS,
    progress: Progress = None,
) -> np.ndarray:
    """int64 [M]: ``doc_indices`` in In-Context-Pretraining order (kNN graph, greedy walk,
    local search that adds ``community_bonus`` to the cosine of pairs in one community of
    the kNN graph; 0: plain cosine, no community step)."""
    from packprep.stages.communities import knn_communities
    from packprep.stages.path_search import improve_path

    idx = _as_indices(doc_indices)
    if len(idx) <= 1:
        return idx
    _check_rows(embeddings, idx)
    x = float32_rows(embeddings, idx)  # float32: knn_graph searches it and the local search reads it, one copy
    neighbours, similarities = knn_graph(x, k=k, exact_max=exact_max, seed=seed, progress=progress)
    # Kicks cost ~0.3 ms each at 1M documents for +0.001 of the bound there (50,000 took
    # 47 s of CPU, docs/semantic.md): not worth a 600 s budget, so only below exact_max.
    max_kicks = 50_000 if len(idx) <= exact_max else 0
    communities = knn_communities(neighbours, similarities, seed=seed) if community_bonus else None
    walk = icp_walk(neighbours, similarities, seed=seed)
    path = improve_path(
        walk, x, neighbours, similarities, seed=seed, max_kicks=max_kicks, communities=communities, bonus=community_bonus
    )
    return idx[path]


def pair_cosines(embeddings: np.ndarray, left: np.ndarray, right: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """float64 [P]: the dot product of rows ``left[p]`` and ``right[p]`` of ``embeddings``
    (their cosine: the embeddings are L2-normalised), gathered ``chunk`` pairs at a time so a
    memmap of any size is read in bounded pieces."""
    out = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), chunk):
        a = np.asarray(embeddings[left[start : start + chunk]], dtype=np.float64)
        b = np.asarray(embeddings[right[start : start + chunk]], dtype=np.float64)
        out[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def adjacent_cosine(order: np.ndarray, embeddings: np.ndarray) -> float:
    """Mean cosine similarity of consecutive documents in ``order`` (NaN if fewer than 2)."""
    order = _as_indices(order)
    if len(order) < 2:
        return float("nan")
    _check_rows(embeddings, order)
    total = 0.0
    for start in range(0, len(order) - 1, 65536):
        rows = float32_rows(embeddings, order[start : start + 65537])  # one overlap row joins the chunks
        norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
        total += float(np.einsum("ij,ij->i", rows[:-1], rows[1:]) @ (1.0 / (norms[:-1] * norms[1:])))
    return total / (len(order) - 1)


# --- helpers -----------------------------------------------------------------------


def _as_indices(doc_indices: np.ndarray) -> np.ndarray:
    idx = np.asarray(doc_indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"document indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    return idx.astype(np.int64, copy=True)


def _check_rows(embeddings: np.ndarray, idx: np.ndarray) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
    bad = idx[(idx < 0) | (idx >= len(embeddings))]
    if len(bad):
        # Embeddings from another (or an older) document store: the user can fix it.
        raise PackprepError(f"document index {int(bad[0])} out of range: embeddings have {len(embeddings)} rows")


def float32_rows(embeddings: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float32 [len(idx), D], contiguous (what faiss accepts)."""
    return np.ascontiguousarray(embeddings[idx], dtype=np.float32)


def _faiss_seed(seed: int) -> int:
    return int(seed) % (2**31 - 1)  # faiss seeds are C ints


def _exact_search(x: np.ndarray) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """Brute-force inner-product search over ``x``: faiss.knn is IndexFlatIP's search
    without the index's own copy of ``x`` (1.5 GB at 1M x 384)."""
    import faiss

    return lambda queries, n: faiss.knn(queries, x, n, metric=faiss.METRIC_INNER_PRODUCT)


def _approximate_knn(x: np.ndarray, *, k: int, seed: int, progress: Progress):
    """The kNN graph of ``x`` by IVF-Flat's rule, nprobe calibrated to recall@k 0.95 on a sample
    (or the scan cap), searched list by list as matrix products (:mod:`packprep.stages.knn_lists`).

    Why IVF-Flat's rule rather than HNSW: it builds with one k-means on a sample plus one
    assignment pass, where HNSW insertion is slow on few cores; it is deterministic for a
    seed whereas a multi-threaded HNSW build is not; it stores nothing but the vectors; and
    its recall is tuned after the build with ``nprobe``, which we calibrate against exact
    search instead of guessing. No PQ (the paper's pipeline used IVF+PQ256): we hold the
    float vectors anyway, and PQ costs recall. Why not faiss's IVF search itself: at 1M x 384
    it streamed 8,000 vectors from memory per query, 567-673 s of a 717 s ordering, for
    recall@10 0.89 (the scan cap). One sgemm per list reads a list once for all the queries
    that probe it: 393 s of CPU in all (so at most that long even on one core) for recall 0.963
    with the refinement rounds (``benchmarks/bench_icp.py``, README "Performance").
    """
    from packprep.stages.knn_lists import list_search, plan_lists, refine

    plan = plan_lists(
        x, k=k, seed=seed, target_recall=_TARGET_RECALL, max_scanned=_MAX_SCANNED, sample=_CALIBRATION_QUERIES
    )
    return refine(x, *list_search(x, plan, k=k, progress=progress))


def _search(search: Callable, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries, k + 1)``, then drop each query's own row (by id, not by rank: exact duplicates
    may rank above it), keep the best k, and mark missing ones -1 / -inf."""
    sims, found = search(queries, k + 1)
    is_self = found == rows[:, None]
    keep = np.argsort(is_self | (found < 0), axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(found, keep, axis=1)
    sims = np.take_along_axis(sims, keep, axis=1)
    missing = (found < 0) | (found == rows[:, None])
    return np.where(missing, -1, found), np.where(missing, -np.inf, sims).astype(np.float32)


@functools.cache
def _kernels():
    """The walk kernels, compiled with numba on first use (pure Python if numba is absent)."""
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - numba is a dependency; this keeps the stage usable without it
        return _in_degrees, _greedy_walk
    return njit(cache=True)(_in_degrees), njit(cache=True)(_greedy_walk)


def _in_degrees(neighbours: np.ndarray) -> np.ndarray:
    """int64 [M]: how many rows list each node as a neighbour (self-loops not counted)."""
    degrees = np.zeros(neighbours.shape[0], dtype=np.int64)
    for u in range(neighbours.shape[0]):
        for j in range(neighbours.shape[1]):
            w = neighbours[u, j]
            if w >= 0 and w != u:
                degrees[w] += 1
    return degrees


def _greedy_walk(neighbours, similarities, unvisited_in, tie_order):  # noqa: PLR0912 - one tight numba loop
    """The ICP walk. Unvisited nodes sit in a bucket queue keyed by unvisited in-degree
    (doubly linked lists ``head``/``nxt``/``prv``), so each jump and each decrement is O(1)
    amortised and the whole walk is O(M*k).

    Why jump to the fewest unvisited in-edges: that is the paper's rule (start each path at
    a minimum-degree document). A node nobody unvisited points to can no longer be reached
    by a greedy step, only by a jump; jumping to it while its own neighbours are still
    unvisited lets it start a path instead of ending up a stranded singleton at the end.
    A node whose count just dropped moves to the front of its bucket, so among equals we
    jump to one next to the path we just finished: locality at no extra cost.
    """
    m, k = neighbours.shape
    head = np.full(unvisited_in.max() + 1, -1, dtype=np.int64)
    nxt = np.full(m, -1, dtype=np.int64)
    prv = np.full(m, -1, dtype=np.int64)
    for i in range(m - 1, -1, -1):  # push in reverse so each bucket starts in tie_order
        v = tie_order[i]
        nxt[v] = head[unvisited_in[v]]
        if nxt[v] >= 0:
            prv[nxt[v]] = v
        head[unvisited_in[v]] = v
    visited = np.zeros(m, dtype=np.bool_)
    path = np.empty(m, dtype=np.int64)
    low = 0  # every bucket below `low` is empty
    cur = -1
    for step in range(m):
        if cur < 0:
            while head[low] < 0:
                low += 1
            cur = head[low]
        path[step] = cur
        visited[cur] = True
        if prv[cur] >= 0:  # unlink cur from its bucket
            nxt[prv[cur]] = nxt[cur]
        else:
            head[unvisited_in[cur]] = nxt[cur]
        if nxt[cur] >= 0:
            prv[nxt[cur]] = prv[cur]
        best, best_sim = -1, -np.inf
        for j in range(k):
            w = neighbours[cur, j]
            if w < 0 or visited[w]:
                continue
            # cur -> w was an unvisited in-edge of w: move w one bucket down, to the front.
            if prv[w] >= 0:
                nxt[prv[w]] = nxt[w]
            else:
                head[unvisited_in[w]] = nxt[w]
            if nxt[w] >= 0:
                prv[nxt[w]] = prv[w]
            unvisited_in[w] -= 1
            prv[w], nxt[w] = -1, head[unvisited_in[w]]
            if nxt[w] >= 0:
                prv[nxt[w]] = w
            head[unvisited_in[w]] = w
            low = min(low, unvisited_in[w])
            if best < 0 or similarities[cur, j] > best_sim:
                best, best_sim = w, similarities[cur, j]
        cur = best
    return path
