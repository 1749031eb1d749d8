"""How much of the simple path bound any path can reach: an LP upper bound on a store's kept documents.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_path_bound.py WORK [WORK ...]

WORK: a document store with embeddings and a dedup result (bench_semantic.py leaves
them under --work/<corpus>/work). For the kept documents it prints the simple bound
(``path_search.path_bound``), the LP bound over it, the icp path (``order.icp_order``,
seeds 0-2) over both, and how concentrated the top-2 neighbour lists are (hubs).

The LP bound: the relaxation of the best path as a fractional 2-matching with M - 1
edges (each document at most two) over the exact 10-NN pairs; any other pair is worth at
most the mean of its two documents' 10th-best similarities, so each document may also
spend degree on such a pair at half its own 10th-best similarity. Every path is a
feasible point, so no path beats it. Exact kNN (``knn_graph`` below 200k rows), so
up to a few hundred thousand documents (scipy's HiGHS solves 6k documents in seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from packprep.stages.order import float32_rows, icp_order, knn_graph
from packprep.stages.path_search import path_bound
from packprep.store.embeddings import load_embeddings


def lp_bound(x: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray) -> float:
    """Upper bound on the mean adjacent cosine of any path through the rows of ``x`` (see the module docstring)."""
    m, k = neighbours.shape
    u, v = np.repeat(np.arange(m), k), neighbours.ravel()
    ok = v >= 0
    pairs = np.unique(np.minimum(u[ok], v[ok]) * m + np.maximum(u[ok], v[ok]))
    a, b = pairs // m, pairs % m
    w = np.einsum("ij,ij->i", x[a], x[b]).astype(np.float64)
    e = len(w)
    outside = similarities[:, -1].astype(np.float64) / 2  # per degree spent on a pair outside the kNN lists
    degree = coo_matrix(
        (np.ones(2 * e + m), (np.concatenate([a, b, np.arange(m)]), np.concatenate([np.arange(e), np.arange(e), e + np.arange(m)]))),
        shape=(m, e + m),
    )
    edges = np.concatenate([np.ones(e), np.full(m, 0.5)])[None, :]  # an outside pair has two ends
    result = linprog(
        -np.concatenate([w, outside]), A_ub=degree.tocsr(), b_ub=np.full(m, 2.0), A_eq=edges, b_eq=[m - 1],
        bounds=[(0, 1)] * e + [(0, 2)] * m, method="highs",
    )
    if result.status != 0:
        raise RuntimeError(result.message)
    return -result.fun / (m - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, nargs="+")
    args = parser.parse_args()
    for work in args.work:
        embeddings = load_embeddings(work)
        kept = np.flatnonzero(np.load(work / "dedup.keep.npy"))
        x = float32_rows(embeddings, kept)
        neighbours, similarities = knn_graph(x, k=10, seed=0)
        simple, lp = path_bound(similarities), lp_bound(x, neighbours, similarities)
        ratios = []
        for seed in (0, 1, 2):
            path = np.searchsorted(kept, icp_order(kept, embeddings, seed=seed))
            ratios.append(float(np.einsum("ij,ij->", x[path[:-1]], x[path[1:]], dtype=np.float64)) / (len(kept) - 1) / simple)
        indegree = np.bincount(neighbours[:, :2].ravel(), minlength=len(kept))
        hubs = indegree > 2
        print(
            f"{work}: {len(kept):,} documents; LP bound / simple bound {lp / simple:.4f}; icp path / simple bound "
            f"{np.mean(ratios):.4f} (seeds 0-2: {' '.join(f'{r:.4f}' for r in ratios)}), / LP bound {np.mean(ratios) * simple / lp:.4f}; "
            f"in more than two top-2 lists {hubs.mean():.3f} of the documents, taking {indegree[hubs].sum() / indegree.sum():.3f} "
            f"of the top-2 slots; in none {(indegree == 0).mean():.3f}; largest top-2 in-degree {indegree.max()}"
        )


if __name__ == "__main__":
    main()
