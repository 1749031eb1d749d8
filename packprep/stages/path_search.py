"""Local search on a document path: Or-opt and 2-opt moves restricted to kNN candidates.

The greedy ICP walk strands documents: when it runs out of unvisited neighbours it
jumps, and the documents it skipped are picked up at the end, far from their topic.
Local search repairs that. A path's value is the sum of the cosine similarities of
adjacent documents; a move replaces two or three adjacent pairs by better ones:

- **Or-opt**: take a run of 1 to ``max_run`` documents ending in ``a`` out of the path
  and put it back next to ``c`` (a kNN neighbour of ``a``), oriented so ``a`` touches ``c``.
  On a doubly linked list, so a run moves any distance in O(1): this is the move that
  brings a stranded document home.
- **2-opt**: cut the path after ``a`` and after ``c`` and reverse what lies between, so
  ``a`` and ``c`` become adjacent. On the path array, so a reversal costs its length:
  reversals longer than ``max_span`` positions are skipped, and all of them together are
  capped at ``work_per_node * M`` positions (the time bound at 1M documents).

Only neighbours ``c`` more similar to ``a`` than the pair the move removes at ``a`` are
tried (the usual gain criterion), and only documents whose surroundings changed are
looked at again (a FIFO of dirty documents: Bentley's don't-look bits). A path end counts
as a pair of similarity 0 (the path is a cycle through a dummy document), so moves may
also turn or move a path's ends. Every move gains strictly, so the result is never worse
than the input; everything runs in one thread in a fixed order, so it is deterministic.

Then **kicks** (iterated local search): a stretch of 30 documents has two adjacent
pieces swapped (a double bridge, which no single 2-opt or short Or-opt move undoes),
the search runs again from the documents around it, and the change is kept only if the
path gained. A kick's work does not grow with M (only the stretch it changed is saved
and restored), so there are 8 per document, at most 50,000: at 1M documents a kick
costs about 0.3 ms (cache misses), and 250,000 of them took 80 s for +0.002 of the
bound. Where they fall comes from the seed.

Paths of at most ``EXACT_MAX`` documents are solved exactly instead (Held-Karp).

**Community bonus** (optional): given a community label per document, every move above
scores a pair in one community as its cosine plus ``bonus``, so the path keeps whole
context windows inside one community (icp passes the kNN graph's Louvain communities,
:mod:`packprep.stages.communities`). The kernels take ``x`` as the tuple (embeddings,
community, bonus), so only their pair score knows of it.

The bound (:func:`path_bound`): a document touches at most two others in a path, so no
path beats each document's two best neighbour similarities, summed over documents and
halved (each pair is counted from both ends). Divided by the ``M - 1`` pairs of a path
it is the best possible mean side-by-side cosine.
"""

from __future__ import annotations

import numpy as np

EXACT_MAX = 12  # Held-Karp is O(2^M M^2): 600k steps at 12


def path_value(path: np.ndarray, embeddings: np.ndarray, communities: np.ndarray | None = None, bonus: float = 0.0) -> float:
    """Sum of cosine similarities of adjacent documents of ``path`` (rows of ``embeddings``, float [M, D]),
    plus ``bonus`` per adjacent pair in one community (``communities``: int [M]), if given."""
    x = np.asarray(embeddings, dtype=np.float32)
    path = np.asarray(path, dtype=np.int64)
    if len(path) < 2:
        return 0.0
    value = float(np.einsum("ij,ij->", x[path[:-1]], x[path[1:]], dtype=np.float64))
    if communities is not None:
        c = np.asarray(communities)[path]
        value += bonus * int((c[:-1] == c[1:]).sum())
    return value


def path_bound(similarities: np.ndarray) -> float:
    """Upper bound on the mean cosine of adjacent documents over any path of the M rows.

    ``similarities``: float [M, k >= 2], each row's best neighbour similarities, best
    first (-inf = none). Each row's best plus its second best (at least 0: a path's two
    end documents have one neighbour only), summed over rows, halved, divided by the
    M - 1 adjacent pairs. NaN if M < 2.
    """
    m = len(similarities)
    if m < 2:
        return float("nan")
    best = np.asarray(similarities, dtype=np.float64)[:, :2]
    second = np.maximum(best[:, 1], 0.0) if best.shape[1] > 1 else np.zeros(m)
    return float((best[:, 0].sum() + second.sum()) / 2 / (m - 1))


def improve_path(
    path: np.ndarray,
    embeddings: np.ndarray,
    neighbours: np.ndarray,
    similarities: np.ndarray,
    *,
    rounds: int = 1,
    max_run: int = 10,
    max_span: int = 1000,
    work_per_node: int = 200,
    kicks_per_node: int = 8,
    max_kicks: int = 50_000,
    seed: int = 0,
    exact_max: int = EXACT_MAX,
    communities: np.ndarray | None = None,
    bonus: float = 0.0,
) -> np.ndarray:
    """int64 [M]: ``path`` (a permutation of 0..M-1) after Or-opt and 2-opt local search.

    ``embeddings``: float [M, D] L2-normalised rows, indexed by path entry (similarity =
    dot product). ``neighbours``: int [M, k], candidate partners of each row (-1 = none),
    best first, with their ``similarities`` (float [M, k], -inf = none): they order and
    prune the candidates, the moves are scored with dot products of ``embeddings``. Each round runs Or-opt, then 2-opt with Or-opt, to a local optimum (or the
    work cap); ``rounds`` of them, fewer if one finds nothing; then
    ``min(kicks_per_node * M, max_kicks)`` kicks placed by ``seed``. Paths of at most
    ``exact_max`` documents get the optimum instead (``optimal_path``).

    With ``communities`` (int [M], a label per row, e.g. :func:`packprep.stages.communities.knn_communities`)
    every move scores a pair in one community as its cosine plus ``bonus``: the objective
    is :func:`path_value` with the same arguments. The candidates are re-sorted by that score.

    Why these settings: on the stdlib docstring corpus and examples/corpus, runs of up
    to 10 documents reached 0.943 / 0.933 of :func:`path_bound` against 0.940 / 0.927 with
    runs of 3. A second round adds about 0.002 for as much time again, and 2-opt without
    the span cap under 0.002 but turns quadratic at 1M documents: both left out to keep
    the search within a minute at 1M (benchmarks/bench_icp.py). The kicks took the
    docstring corpus from 0.943 to 0.951 (5,000 kicks) and 0.954 (20,000).
    """
    path = np.array(path, dtype=np.int64)
    m = len(path)
    if m <= 2:
        return path
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    community = np.zeros(m, dtype=np.int64) if communities is None else np.ascontiguousarray(communities, dtype=np.int64)
    bonus = float(bonus) if communities is not None else 0.0
    if m <= exact_max:
        return optimal_path(x, community, bonus)
    neighbours = np.ascontiguousarray(neighbours, dtype=np.int64)
    similarities = np.ascontiguousarray(similarities, dtype=np.float32)
    if bonus != 0.0:
        neighbours, similarities = _with_bonus(neighbours, similarities, community, bonus)
    x = (x, community, bonus)  # what the kernels score pairs with (_path_kernels._sim)
    from packprep.stages._path_kernels import kicked_search, local_search, or_opt_linked

    for _ in range(rounds):
        moves = or_opt_linked(path, x, neighbours, similarities, max_run)
        moves += local_search(path, x, neighbours, max_span, work_per_node * m)
        if moves == 0:
            break
    kicked_search(path, x, neighbours, max_span, _kicks(m, min(kicks_per_node * m, max_kicks), seed), _KICK_WIDTH)
    return path


_KICK_WIDTH = 30  # documents a kick reshuffles: about three windows' worth


def _kicks(m: int, count: int, seed: int) -> np.ndarray:
    """int64 [count, 4]: a stretch start and three sorted cut points inside it, per kick (none if M is too short)."""
    if m < _KICK_WIDTH + 2:
        return np.zeros((0, 4), dtype=np.int64)
    rng = np.random.default_rng([seed, 3])
    cuts = np.sort(rng.random((count, _KICK_WIDTH - 1)).argsort(axis=1)[:, :3] + 1, axis=1)
    return np.column_stack([rng.integers(0, m - _KICK_WIDTH + 1, count), cuts]).astype(np.int64)


def optimal_path(embeddings: np.ndarray, communities: np.ndarray | None = None, bonus: float = 0.0) -> np.ndarray:
    """int64 [M]: a path through all rows with the largest sum of adjacent dot products
    (plus ``bonus`` per pair in one of ``communities``, int [M]) (Held-Karp dynamic
    programme; ties resolved towards lower indices). For small M only."""
    x = np.asarray(embeddings, dtype=np.float64)
    m = len(x)
    if m <= 1:
        return np.arange(m, dtype=np.int64)
    from packprep.stages._path_kernels import held_karp

    sim = x @ x.T
    if communities is not None:
        c = np.asarray(communities)
        sim += bonus * (c[:, None] == c[None, :])
    return held_karp(sim)


def _with_bonus(
    neighbours: np.ndarray, similarities: np.ndarray, community: np.ndarray, bonus: float
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN lists with ``bonus`` added to same-community pairs, re-sorted best first:
    the kernels stop scanning a list at the first candidate below the pair it would replace."""
    same = (neighbours >= 0) & (community[np.maximum(neighbours, 0)] == community[:, None])
    scored = np.where(same, similarities + np.float32(bonus), similarities).astype(np.float32)
    order = np.argsort(-scored, axis=1, kind="stable")
    return np.take_along_axis(neighbours, order, axis=1), np.take_along_axis(scored, order, axis=1)
