"""Communities of a kNN graph (Louvain modularity), for keeping icp's context windows on one topic.

The ICP path optimises side-by-side similarity only, so over a window of ~10 documents
it drifts from topic to topic. Communities of the kNN graph are regions the path should
stay inside for a whole window: :func:`packprep.stages.path_search.improve_path` adds a
bonus to pairs in the same community, so a row boundary is where a path changes community.

Louvain (Blondel et al. 2008): each node in turn moves to the neighbouring community
that raises modularity most (local moving, a few passes over the nodes), then each
community becomes one node of a smaller graph (aggregation) and the same runs again,
until a level moves nothing. A pass costs O(edges): at 1M rows x k = 10 the graph has
20M directed entries and all levels together take seconds. Why not networkx or igraph:
networkx's Louvain is pure Python (minutes at 100k nodes), igraph's C one is a new
dependency and not promised to be the same across versions; this one is ~100 lines of
numba in one thread, in a fixed node order, so the labels are the same bytes on every run.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit

    jit = njit(cache=True)
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the stage usable without it
    def jit(fn):
        return fn


def knn_communities(
    neighbours: np.ndarray,
    similarities: np.ndarray,
    *,
    resolution: float = 1.0,
    max_passes: int = 8,
    max_levels: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """int64 [M]: a community label (0..C-1, numbered by first row) per row of a kNN graph.

    ``neighbours`` int [M, k] (-1 = none) and ``similarities`` float [M, k] as
    :func:`packprep.stages.order.knn_graph` returns them. The graph is undirected: each
    listed pair is an edge weighted by its similarity (negative ones dropped), a pair
    listed from both ends counts twice. Louvain with modularity ``resolution`` (larger:
    smaller communities); at most ``max_passes`` local-moving passes per level and
    ``max_levels`` aggregation levels. Nodes are visited in an order drawn from ``seed``.
    """
    neighbours = np.asarray(neighbours)
    similarities = np.asarray(similarities)
    if neighbours.ndim != 2 or neighbours.shape != similarities.shape:
        raise ValueError(f"neighbours {neighbours.shape} and similarities {similarities.shape} must be equal [M, k]")
    m, k = neighbours.shape
    if m == 0:
        return np.empty(0, dtype=np.int64)
    if m >= 2**31:
        raise ValueError(f"{m:,} rows: more than int32 node ids hold")
    # int32 / float32 on the first level: its 2 x M x k entries are the step's peak memory
    # (+0.5 GB resident measured at 1M x 10); the aggregated levels are small and sum in float64.
    src = np.repeat(np.arange(m, dtype=np.int32), k)
    dst = neighbours.ravel().astype(np.int32)
    weight = np.where(dst >= 0, similarities.ravel(), 0.0).astype(np.float32)
    keep = (dst >= 0) & (weight > 0) & (dst != src)
    src, dst, weight = src[keep], dst[keep], weight[keep]
    indptr, indices, weights = _csr(np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([weight, weight]), m)
    del src, dst, weight, keep
    label = np.arange(m, dtype=np.int64)
    rng = np.random.default_rng([seed, 13])
    for _ in range(max_levels):
        nodes = len(indptr) - 1
        community = _local_moving(indptr, indices, weights, rng.permutation(nodes), resolution, max_passes)
        community = _first_seen_labels(community)
        count = int(community.max()) + 1
        label = community[label]
        if count == nodes:
            break
        indptr, indices, weights = _aggregate(indptr, indices, weights, community, count)
    return _first_seen_labels(label)


def _first_seen_labels(label: np.ndarray) -> np.ndarray:
    """int64 [M]: ``label`` renumbered 0..C-1 in order of first appearance (so it does not depend on label values)."""
    _, first, inverse = np.unique(label, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


@jit
def _csr(src, dst, weight, nodes):
    """Compressed rows of the directed entries (src -> dst, weight), in input order within a row."""
    indptr = np.zeros(nodes + 1, dtype=np.int64)
    for s in src:
        indptr[s + 1] += 1
    for v in range(nodes):
        indptr[v + 1] += indptr[v]
    fill = indptr[:-1].copy()
    indices = np.empty_like(dst)
    weights = np.empty_like(weight)
    for e in range(len(src)):
        t = fill[src[e]]
        indices[t] = dst[e]
        weights[t] = weight[e]
        fill[src[e]] += 1
    return indptr, indices, weights


@jit
def _local_moving(indptr, indices, weights, order, resolution, max_passes):  # noqa: PLR0912 - one numba loop
    """int64 [nodes]: community per node after Louvain's local moving, starting from singletons.

    Moving node i from its community to community C changes modularity by a positive
    multiple of ``w(i, C) - resolution * k_i * tot(C) / 2m`` (w(i, C): weight of i's edges
    into C, k_i: i's weighted degree, tot(C): the degrees of C's members, 2m: all degrees),
    so i goes where that is largest; it stays unless another community is strictly better."""
    nodes = len(indptr) - 1
    degree = np.zeros(nodes)
    for v in range(nodes):
        for e in range(indptr[v], indptr[v + 1]):
            degree[v] += weights[e]
    two_m = degree.sum()
    community = np.arange(nodes)
    tot = degree.copy()
    if two_m <= 0:
        return community
    link = np.zeros(nodes)  # w(i, C) of the communities next to i, reset after each node
    seen = np.empty(nodes, dtype=np.int64)
    for _ in range(max_passes):
        moved = 0
        for i in order:
            own = community[i]
            count = 0
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                if j == i:
                    continue  # a self-loop (an aggregated community's inside) moves with i
                c = community[j]
                if link[c] == 0.0:
                    seen[count] = c
                    count += 1
                link[c] += weights[e]
            tot[own] -= degree[i]
            scale = resolution * degree[i] / two_m
            best, best_gain = own, link[own] - scale * tot[own]
            for t in range(count):
                c = seen[t]
                gain = link[c] - scale * tot[c]
                if gain > best_gain + 1e-12:  # ties: stay, else the first community seen
                    best, best_gain = c, gain
            for t in range(count):
                link[seen[t]] = 0.0
            link[own] = 0.0
            tot[best] += degree[i]
            if best != own:
                community[i] = best
                moved += 1
        if moved == 0:
            break
    return community


@jit
def _aggregate(indptr, indices, weights, community, count):
    """The graph of communities: one node per community, an entry per pair of communities
    that share an edge, weighted by the sum of those edges (a community's inside becomes its self-loop)."""
    nodes = len(indptr) - 1
    members_ptr = np.zeros(count + 1, dtype=np.int64)
    for v in range(nodes):
        members_ptr[community[v] + 1] += 1
    for c in range(count):
        members_ptr[c + 1] += members_ptr[c]
    fill = members_ptr[:-1].copy()
    members = np.empty(nodes, dtype=np.int64)
    for v in range(nodes):
        members[fill[community[v]]] = v
        fill[community[v]] += 1
    acc = np.zeros(count)
    seen = np.empty(count, dtype=np.int64)
    out_ptr = np.zeros(count + 1, dtype=np.int64)
    out_idx = np.empty(len(indices), dtype=np.int64)  # never more entries than the finer graph
    out_w = np.empty(len(indices))
    size = 0
    for c in range(count):
        n = 0
        for t in range(members_ptr[c], members_ptr[c + 1]):
            v = members[t]
            for e in range(indptr[v], indptr[v + 1]):
                d = community[indices[e]]
                if acc[d] == 0.0:
                    seen[n] = d
                    n += 1
                acc[d] += weights[e]
        for t in range(n):
            out_idx[size] = seen[t]
            out_w[size] = acc[seen[t]]
            acc[seen[t]] = 0.0
            size += 1
        out_ptr[c + 1] = size
    return out_ptr, out_idx[:size].copy(), out_w[:size].copy()
