"""Time the ICP ordering pieces: the greedy walk on a 1M x 10 graph, and the kNN graph
(exact vs approximate) on synthetic clustered embeddings, with recall@10 of the
approximate graph against exact search on a 1k sample.

    python -m benchmarks.bench_icp [--walk-nodes 1000000] [--knn-rows 1000000] [--dim 384]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from packprep.stages.order import adjacent_cosine, icp_walk, knn_graph, random_order


def clustered_embeddings(rows: int, dim: int, *, clusters: int, seed: int) -> np.ndarray:
    """float32 [rows, dim], L2-normalised: a 32-d Gaussian mixture lifted to `dim` plus
    isotropic noise, so neighbourhoods are continuous (like text embeddings, nearest
    neighbour cosine ~0.8) rather than separated blobs that any index finds trivially."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 32)).astype(np.float32)
    latent = centres[rng.integers(0, clusters, size=rows)] + rng.normal(scale=0.7, size=(rows, 32)).astype(np.float32)
    x = latent @ rng.normal(size=(32, dim)).astype(np.float32) + rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
    import faiss

    x = clustered_embeddings(rows, dim, clusters=max(1, rows // 100), seed=0)
    t = time.perf_counter()
    approx, sims = knn_graph(x, k=k, exact_max=rows - 1, seed=0)
    t_approx = time.perf_counter() - t
    sample = np.random.default_rng(1).choice(rows, size=min(rows, 1000), replace=False)
    index = faiss.IndexFlatIP(dim)
    index.add(x)
    t = time.perf_counter()
    _, exact = index.search(x[sample], k + 1)
    t_exact_sample = time.perf_counter() - t
    # Exact neighbours minus the query itself (knn_graph excludes self-loops too).
    exact = [row[row != i][:k] for row, i in zip(exact, sample)]
    recall = float(np.mean([len(np.intersect1d(approx[i], e)) / k for i, e in zip(sample, exact)]))
    # How close the found neighbours are: their mean cosine over the true neighbours' mean.
    true_sims = np.array([x[e] @ x[i] for i, e in zip(sample, exact)])
    closeness = float(sims[sample].mean() / true_sims.mean())
    t = time.perf_counter()
    path = icp_walk(approx, sims, seed=0)
    t_walk = time.perf_counter() - t
    assert np.array_equal(np.sort(path), np.arange(rows))
    est_exact = t_exact_sample * rows / len(sample)
    print(f"knn_graph {rows:,} x {dim} approximate (IVF-Flat): {t_approx:.1f} s; "
          f"recall@{k} vs exact on a {len(sample):,} sample: {recall:.3f}; mean neighbour cosine "
          f"{closeness:.3f} of the true neighbours'")
    print(f"  exact search for the sample: {t_exact_sample:.1f} s (all {rows:,} rows would take ~{est_exact / 60:.0f} min)")
    print(f"  icp walk on the approximate graph: {t_walk:.2f} s; knn + walk {t_approx + t_walk:.1f} s "
          f"(target < 600 s); adjacent cosine {adjacent_cosine(path, x):.3f} vs random order "
          f"{adjacent_cosine(random_order(np.arange(rows), seed=0), x):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walk-nodes", type=int, default=1_000_000)
    parser.add_argument("--knn-rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    bench_walk(args.walk_nodes, args.k)
    bench_knn(args.knn_rows, args.dim, args.k)


if __name__ == "__main__":
    main()
