"""Approximate kNN graph: IVF-Flat's search done list by list as matrix products.

Like IVF-Flat, rows are k-means'd into lists and every row is compared with the rows of
the ``nprobe`` lists whose centroids are nearest to it. Unlike faiss's IVF search, which
scans the probed lists once per query, the work is turned around: for each list, all the
queries that probe it are gathered and multiplied with its rows in one sgemm, and each
query's best k are merged in. At 1M x 384 a query scan streams ~12 MB from memory per
query (faiss reached ~10 GFLOP/s there on our two cores), while the product reads a list
once per ~8,000 queries and runs at the sgemm's speed (60-190 GFLOP/s here, with load).

The neighbours found are IVF-Flat's for the same lists and nprobe: a true neighbour is
found exactly when its list is among the query's ``nprobe`` nearest centroids. So recall
on a sample is computed for every ``nprobe`` at once from one exact search of the
sample, and the smallest ``nprobe`` reaching the target is chosen without trial searches.
Then :func:`refine` lets each row take in its neighbours' neighbours, which only adds
recall (the 1M benchmark: 0.963, where faiss's IVF-Flat stopped at 0.89 at the scan cap).

Arrays: ``x`` float32 [M, D], L2-normalised. Import this module only where it is needed
(it loads numba, which takes a while).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the stage usable without it
    njit, prange = None, range

_REFINE_ROUNDS = 2  # neighbour-of-neighbour rounds after the list search (see refine)

_SCORES = 2**24  # float32 scores per matrix product (64 MB): bounds every [queries, rows] block
_MIN_TRAINING = 39  # sampled rows per list for k-means: faiss's minimum, which bought the same recall as 64


@dataclass(frozen=True, kw_only=True)
class ListPlan:
    """How the search will run: ``centroids`` float32 [nlist, D] (unit rows), ``nprobe``,
    and the sample's calibration: ``recall_by_nprobe`` float64 [nlist] (recall@k with
    nprobe = 1, 2, ...) and ``recall`` at the chosen ``nprobe``."""

    centroids: np.ndarray
    nprobe: int
    recall: float
    recall_by_nprobe: np.ndarray

    @property
    def nlist(self) -> int:
        return len(self.centroids)


def plan_lists(
    x: np.ndarray, *, k: int, seed: int, target_recall: float, max_scanned: int, sample: int, lists_per_sqrt: float = 4.0
) -> ListPlan:
    """k-means ``x`` (float32 [M, D]) into ``lists_per_sqrt * sqrt(M)`` lists, then choose the
    smallest ``nprobe`` whose recall@k on ``sample`` seeded rows reaches ``target_recall``,
    or the largest for which ``nprobe * M / nlist`` (rows a query scans) stays within
    ``max_scanned``."""
    m = len(x)
    nlist = max(1, min(round(lists_per_sqrt * np.sqrt(m)), m // _MIN_TRAINING))
    rng = np.random.default_rng(seed)
    training = x[np.sort(rng.choice(m, size=min(m, _MIN_TRAINING * nlist), replace=False))]
    centroids = spherical_kmeans(training, nlist, seed=seed)
    del training
    rows = np.sort(rng.choice(m, size=min(m, sample), replace=False))
    truth = exact_knn(x[rows], x, rows, k)[0]
    known = truth >= 0
    # Where each true neighbour's list ranks among its query's centroids: found iff below nprobe.
    ranked = np.argsort(-(x[rows] @ centroids.T), axis=1, kind="stable")
    rank = np.empty_like(ranked)
    np.put_along_axis(rank, ranked, np.arange(nlist)[None, :], axis=1)
    lists = nearest_centroids(x[np.where(known, truth, 0).ravel()], centroids, 1)[:, 0].reshape(truth.shape)
    places = np.take_along_axis(rank, lists, axis=1)[known]
    found = np.cumsum(np.bincount(places, minlength=nlist)) / max(1, len(places))
    allowed = max(1, min(nlist, int(max_scanned * nlist // m)))
    nprobe = min(allowed, int(np.searchsorted(found, target_recall)) + 1)
    return ListPlan(centroids=centroids, nprobe=nprobe, recall=float(found[nprobe - 1]), recall_by_nprobe=found)


def list_search(x: np.ndarray, plan: ListPlan, *, k: int, progress: Callable[[int], None] | None = None):
    """Every row's k best neighbours among the rows of its ``plan.nprobe`` nearest lists
    (self excluded): ``neighbours`` int64 [M, k] (-1 where fewer exist) and ``similarities``
    float32 [M, k] (-inf there), best first. Lists are merged in list order and equal
    scores keep the one met first, so the result does not depend on thread count.
    ``progress`` is advanced by each list's rows as it finishes (M in all)."""
    m, p, nlist = len(x), plan.nprobe, plan.nlist
    flat = nearest_centroids(x, plan.centroids, p).ravel()  # int32 [M * nprobe]: each row's own list first
    ask_bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=nlist))])
    askers = np.argsort(flat, kind="stable")  # (row, probe) pairs grouped by list, rows ascending
    np.floor_divide(askers, p, out=askers)  # -> the rows that probe each list
    own = flat[::p].copy()
    del flat
    members = np.argsort(own, kind="stable")
    member_bounds = np.searchsorted(own[members], np.arange(nlist + 1))
    del own
    neighbours = np.full((m, k), -1, dtype=np.int64)
    similarities = np.full((m, k), -np.inf, dtype=np.float32)
    update = _topk_kernel()
    for c in range(nlist):
        rows = members[member_bounds[c] : member_bounds[c + 1]]
        if len(rows) == 0:
            continue
        data = x[rows]
        queries = askers[ask_bounds[c] : ask_bounds[c + 1]]
        step = max(1, _SCORES // len(rows))
        for start in range(0, len(queries), step):
            q = queries[start : start + step]
            update(x[q] @ data.T, rows, q, q, neighbours, similarities)
        if progress is not None:
            progress(len(rows))
    return neighbours, similarities


def exact_knn(queries: np.ndarray, x: np.ndarray, query_ids: np.ndarray, k: int):
    """Brute force: the k best rows of ``x`` (float32 [M, D]) for each of ``queries``
    (float32 [Q, D]; their row ids ``query_ids`` int64 [Q] are skipped), as int64 / float32
    [Q, k] with -1 / -inf padding, best first; ``x`` is read in chunks."""
    best = np.full((len(queries), k), -1, dtype=np.int64)
    best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    update, out_rows = _topk_kernel(), np.arange(len(queries))
    step = max(1, _SCORES // max(1, len(queries)))
    for start in range(0, len(x), step):
        stop = min(start + step, len(x))
        update(queries @ x[start:stop].T, np.arange(start, stop), query_ids, out_rows, best, best_sims)
    return best, best_sims


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, p: int) -> np.ndarray:
    """int32 [M, p]: for each row of ``x``, the ``p`` most similar rows of ``centroids``
    (float32 [C, D]), most similar first (the lower index on ties)."""
    best = np.full((len(x), p), -1, dtype=np.int32)
    update, ids = _topk_kernel(), np.arange(len(centroids), dtype=np.int32)
    step = max(1, _SCORES // max(1, len(centroids)))
    for start in range(0, len(x), step):
        stop = min(start + step, len(x))
        sims = np.full((stop - start, p), -np.inf, dtype=np.float32)  # per chunk: only the ids are kept
        rows = np.arange(stop - start)
        update(x[start:stop] @ centroids.T, ids, np.full(stop - start, -1, dtype=np.int32), rows, best[start:stop], sims)
    return best


def refine(x: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, *, rounds: int = _REFINE_ROUNDS):
    """The kNN graph after ``rounds`` rounds of "a neighbour's neighbour may be mine": each
    row scores the k x k neighbours of its neighbours and keeps the best k (NN-descent's
    step). Returns new ``neighbours`` int64 [M, k] and ``similarities`` float32 [M, k]; a
    row's list only gains, so recall never drops below the list search's.

    Why: the list search misses neighbours whose list its row did not probe; their
    neighbours often did. On the 200k synthetic mixture of ``bench_icp.py`` recall@10 went
    0.945 -> 0.964 for 7.5 s of CPU (search: 18 s); with 2·sqrt(M) lists and nprobe 8,
    0.890 -> 0.940 -> 0.955 in two rounds for ~5 s, where doubling nprobe cost more than
    the whole search. Each round reads the
    previous graph only, and a row's products run in a fixed order in one thread, so the
    result does not depend on thread count.
    """
    kernel = _refine_kernel()
    for _ in range(rounds):
        neighbours, similarities = kernel(x, neighbours, similarities)
    return neighbours, similarities


def spherical_kmeans(x: np.ndarray, n: int, *, seed: int, iterations: int = 10) -> np.ndarray:
    """float32 [n, D], unit rows: k-means by cosine of ``x`` (float32 [M, D], M >= n),
    started from ``n`` seeded rows; an empty cluster keeps its centroid.

    Ours rather than ``faiss.Kmeans``: faiss assigns points with its heap-based search, ~28
    GFLOP/s here (35 s for 1,789 lists on 70k points x 384), where a product and argmax
    run at the sgemm's speed; and summing members in sorted order (``reduceat``) makes
    the centroids independent of thread count.
    """
    centroids = x[np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))].copy()
    step = max(1, _SCORES // n)
    for _ in range(iterations):
        assign = np.concatenate([np.argmax(x[s : s + step] @ centroids.T, axis=1) for s in range(0, len(x), step)])
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=n)
        filled = np.flatnonzero(counts)
        sums = np.add.reduceat(x[order], (np.cumsum(counts) - counts)[filled], axis=0)
        centroids[filled] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centroids


def _update_topk(scores, candidate_ids, query_ids, out_rows, best, best_sims):
    """Merge ``scores`` (float32 [Q, C]: query i against candidate j) into the best lists
    ``best[out_rows[i]]`` (int64 [., k]) and ``best_sims`` (float32 [., k]), best first, in
    place, skipping candidates equal to ``query_ids[i]``. A candidate enters only when
    strictly better than the k-th, behind equal ones; rows are independent, so running
    them in parallel cannot change a result (``out_rows`` must be distinct)."""
    q, c = scores.shape
    k = best.shape[1]
    for i in prange(q):
        r, me = out_rows[i], query_ids[i]
        worst = best_sims[r, k - 1]
        for j in range(c):
            s = scores[i, j]
            if s > worst and candidate_ids[j] != me:
                pos = k - 1
                while pos > 0 and best_sims[r, pos - 1] < s:
                    best_sims[r, pos] = best_sims[r, pos - 1]
                    best[r, pos] = best[r, pos - 1]
                    pos -= 1
                best_sims[r, pos] = s
                best[r, pos] = candidate_ids[j]
                worst = best_sims[r, k - 1]


def _refine_round(x, neighbours, similarities):
    """One round of :func:`refine`: new arrays, row i merging the neighbours of its neighbours."""
    m, k = neighbours.shape
    out, out_sims = neighbours.copy(), similarities.copy()
    for i in prange(m):
        for a in range(k):
            j = neighbours[i, a]
            if j < 0:
                continue
            for b in range(k):
                c = neighbours[j, b]
                if c < 0 or c == i:
                    continue
                listed = False
                for v in range(k):
                    listed = listed or out[i, v] == c
                if listed:
                    continue
                s = np.float32(0.0)
                for t in range(x.shape[1]):
                    s += x[i, t] * x[c, t]
                if s > out_sims[i, k - 1]:
                    pos = k - 1
                    while pos > 0 and out_sims[i, pos - 1] < s:
                        out_sims[i, pos], out[i, pos] = out_sims[i, pos - 1], out[i, pos - 1]
                        pos -= 1
                    out_sims[i, pos], out[i, pos] = s, c
    return out, out_sims


@functools.cache
def _refine_kernel():
    """``_refine_round`` compiled with numba (rows in parallel; the dot product vectorised,
    its lane order fixed at compile time), or pure Python without numba."""
    return _refine_round if njit is None else njit(parallel=True, fastmath=True, cache=True)(_refine_round)


@functools.cache
def _topk_kernel():
    """``_update_topk`` compiled with numba, rows in parallel; pure Python without numba."""
    return _update_topk if njit is None else njit(cache=True)(_update_topk)
