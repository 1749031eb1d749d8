"""Time the ICP ordering pieces: the greedy walk on a 1M x 10 graph, the communities and local search
after it on a 1M x 384 synthetic graph, and the kNN graph (exact vs approximate) on
synthetic clustered embeddings, with recall@10 of the approximate graph against exact
search on a 1k sample.

    python -m benchmarks.bench_icp [--walk-nodes 1000000] [--search-rows 1000000] [--knn-rows 1000000] [--dim 384]

``--knn-rows 0`` skips the kNN graph (393 s of CPU at 1M; it was ~10 minutes on two idle
cores with faiss's per-query IVF search).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from packprep.stages.communities import knn_communities
from packprep.stages.order import COMMUNITY_BONUS, adjacent_cosine, icp_walk, knn_graph, random_order
from packprep.stages.path_search import improve_path, path_bound, path_value


def clustered_embeddings(rows: int, dim: int, *, clusters: int, seed: int, labels: bool = False):
    """float32 [rows, dim], L2-normalised: a 32-d Gaussian mixture lifted to `dim` plus
    isotropic noise, so neighbourhoods are continuous (like text embeddings, nearest
    neighbour cosine ~0.8) rather than separated blobs that any index finds trivially.
    With ``labels``, also the mixture component of each row (int64 [rows])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 32)).astype(np.float32)
    component = rng.integers(0, clusters, size=rows)
    latent = centres[component] + rng.normal(scale=0.7, size=(rows, 32)).astype(np.float32)
    x = latent @ rng.normal(size=(32, dim)).astype(np.float32) + rng.normal(size=(rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x, component) if labels else x


def component_knn(x: np.ndarray, component: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A kNN graph in seconds at 1M rows: exact neighbours inside each mixture component
    (about 100 rows), which is where nearly all true neighbours are. For timing what
    runs after the graph; knn_graph itself is timed by bench_knn."""
    neighbours = np.full((len(x), k), -1, dtype=np.int64)
    sims = np.full((len(x), k), -np.inf, dtype=np.float32)
    by_component = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.diff(component[by_component])) + 1
    for rows in np.split(by_component, bounds):
        s = x[rows] @ x[rows].T
        np.fill_diagonal(s, -np.inf)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        n = top.shape[1]
        neighbours[rows, :n] = rows[top]
        sims[rows, :n] = np.take_along_axis(s, top, axis=1)
    return neighbours, np.where(neighbours >= 0, sims, -np.inf).astype(np.float32)


def bench_search(rows: int, dim: int, k: int) -> None:
    """The steps after the kNN graph, alone, at full size: the communities, the walk and
    improve_path with the community bonus (as icp_order runs them) on a synthetic graph
    (component_knn), with time, peak resident memory and the path's mean adjacent cosine
    as a share of the bound before and after."""
    import resource

    x, component = clustered_embeddings(rows, dim, clusters=max(1, rows // 100), seed=0, labels=True)
    neighbours, sims = component_knn(x, component, k)
    small = np.arange(1000)
    few = knn_communities(neighbours[:1000] % 1000, sims[:1000])  # compile (or load the numba cache) first
    improve_path(icp_walk(neighbours[:1000] % 1000, sims[:1000], seed=0), x[:1000], neighbours[:1000] % 1000, sims[:1000], communities=few, bonus=0.1)
    bound = path_bound(sims)
    walk = icp_walk(neighbours, sims, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, cpu = time.perf_counter(), time.process_time()
    communities = knn_communities(neighbours, sims, seed=0)
    t_comm, cpu_comm = time.perf_counter() - t, time.process_time() - cpu
    print(f"knn_communities {rows:,} x {k}: {t_comm:.1f} s ({cpu_comm:.1f} s CPU), {communities.max() + 1:,} communities")
    t, cpu = time.perf_counter(), time.process_time()
    # what icp_order runs above 200k documents
    path = improve_path(walk, x, neighbours, sims, max_kicks=0, communities=communities, bonus=COMMUNITY_BONUS)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert np.array_equal(np.sort(path), np.arange(rows)) and len(small)
    ratio = lambda p: path_value(p, x) / (rows - 1) / bound  # noqa: E731
    print(f"improve_path (no kicks, community bonus {COMMUNITY_BONUS}) {rows:,} x {dim}, k = {k}: {elapsed:.1f} s ({cpu:.1f} s CPU, one thread); adjacent cosine / bound {ratio(walk):.3f} "
          f"(greedy walk) -> {ratio(path):.3f}; peak RSS {before / 1e6:.2f} -> {after / 1e6:.2f} GB")


def bench_walk(nodes: int, k: int) -> None:
    rng = np.random.default_rng(0)
    neighbours = rng.integers(0, nodes, size=(nodes, k))
    sims = -np.sort(-rng.random((nodes, k), dtype=np.float32), axis=1)
    small = 1000
    icp_walk(neighbours[:small] % small, sims[:small], seed=0)  # compile (or load the numba cache) first
    t = time.perf_counter()
    path = icp_walk(neighbours, sims, seed=0)
    elapsed = time.perf_counter() - t
    assert np.array_equal(np.sort(path), np.arange(nodes))
    jumps = int(np.sum(~(neighbours[path[:-1]] == path[1:, None]).any(axis=1)))
    print(f"icp_walk  {nodes:,} x {k} random graph: {elapsed:.2f} s ({nodes / elapsed / 1e6:.2f} M nodes/s), {jumps:,} jumps")


def bench_knn(rows: int, dim: int, k: int) -> None:
    """The approximate graph over all rows (what icp uses above 200k documents), with
    recall@k against exact search for a 1k sample of queries (exact over all rows would
    take hours at 1M), then the walk over it: the icp ordering after embeddings exist."""
    import resource

    from packprep.stages.knn_lists import exact_knn

    x = clustered_embeddings(rows, dim, clusters=max(1, rows // 100), seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, cpu = time.perf_counter(), time.process_time()
    approx, sims = knn_graph(x, k=k, exact_max=rows - 1, seed=0)
    t_approx, cpu_approx = time.perf_counter() - t, time.process_time() - cpu
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample = np.random.default_rng(1).choice(rows, size=min(rows, 1000), replace=False)
    t = time.perf_counter()
    exact = exact_knn(x[sample], x, sample, k)[0]  # brute force, the query itself excluded like knn_graph does
    t_exact_sample = time.perf_counter() - t
    recall = float(np.mean([len(np.intersect1d(approx[i], e)) / k for i, e in zip(sample, exact)]))
    # How close the found neighbours are: their mean cosine over the true neighbours' mean.
    true_sims = np.array([x[e] @ x[i] for i, e in zip(sample, exact)])
    closeness = float(sims[sample].mean() / true_sims.mean())
    t = time.perf_counter()
    path = icp_walk(approx, sims, seed=0)
    t_walk = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    communities = knn_communities(approx, sims, seed=0)
    path = improve_path(path, x, approx, sims, max_kicks=0, communities=communities, bonus=COMMUNITY_BONUS)
    t_search, cpu_search = time.perf_counter() - t, time.process_time() - cpu
    assert np.array_equal(np.sort(path), np.arange(rows))
    est_exact = t_exact_sample * rows / len(sample)
    print(f"knn_graph {rows:,} x {dim} approximate (IVF lists, one sgemm per list): {t_approx:.1f} s "
          f"({cpu_approx:.1f} s CPU, user + sys); peak RSS {rss_before / 1e6:.2f} GB before it, {rss_after / 1e6:.2f} GB after; "
          f"recall@{k} vs exact on a {len(sample):,} sample: {recall:.3f}; mean neighbour cosine "
          f"{closeness:.3f} of the true neighbours'")
    print(f"  exact search for the sample: {t_exact_sample:.1f} s (all {rows:,} rows would take ~{est_exact / 60:.0f} min)")
    print(f"  icp walk on the approximate graph: {t_walk:.2f} s, communities + local search {t_search:.1f} s ({cpu_search:.1f} s CPU); "
          f"knn + walk + search {t_approx + t_walk + t_search:.1f} s "
          f"(target < 600 s); adjacent cosine {adjacent_cosine(path, x):.3f} vs random order "
          f"{adjacent_cosine(random_order(np.arange(rows), seed=0), x):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walk-nodes", type=int, default=1_000_000)
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--knn-rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    bench_walk(args.walk_nodes, args.k)
    if args.search_rows:
        bench_search(args.search_rows, args.dim, args.k)
    if args.knn_rows:
        bench_knn(args.knn_rows, args.dim, args.k)


if __name__ == "__main__":
    main()
