"""Louvain communities of a kNN graph: the split a reader would draw on tiny graphs, the same labels every run."""

from __future__ import annotations

import numpy as np
import pytest

from packprep.stages.communities import knn_communities


def _cliques(count: int, size: int, bridges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """kNN lists of ``count`` cliques of ``size`` nodes (similarity 0.9 inside), plus
    ``bridges`` (similarity 0.9 too, listed from their first end), padded with -1."""
    m, k = count * size, size
    neighbours = np.full((m, k), -1, dtype=np.int64)
    sims = np.full((m, k), -np.inf, dtype=np.float32)
    for v in range(m):
        base = v // size * size
        others = [u for u in range(base, base + size) if u != v]
        neighbours[v, : len(others)] = others
        sims[v, : len(others)] = 0.9
    for a, b in bridges:
        neighbours[a, size - 1], sims[a, size - 1] = b, 0.9
    return neighbours, sims


def test_two_cliques_joined_by_one_edge_split_in_two():
    neighbours, sims = _cliques(2, 5, [(0, 5)])
    assert knn_communities(neighbours, sims).tolist() == [0] * 5 + [1] * 5


def test_a_ring_of_cliques_gives_one_community_per_clique():
    neighbours, sims = _cliques(6, 4, [(4 * c, 4 * ((c + 1) % 6) + 1) for c in range(6)])
    labels = knn_communities(neighbours, sims)
    assert labels.tolist() == np.repeat(np.arange(6), 4).tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_are_deterministic_and_find_planted_groups(seed):
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(8, 16))
    x = np.repeat(centres, 40, axis=0) + 0.6 * rng.normal(size=(320, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    top = np.take_along_axis(sims, neighbours, axis=1)
    first = knn_communities(neighbours, top, seed=seed)
    assert first.tolist() == knn_communities(neighbours.copy(), top.copy(), seed=seed).tolist()
    assert first[0] == 0 and set(first.tolist()) == set(range(first.max() + 1))  # numbered by first row
    # the planted groups come back: nearly every pair of a group shares a community
    group = np.repeat(np.arange(8), 40)
    same_group = group[:, None] == group[None, :]
    assert (first[:, None] == first[None, :])[same_group].mean() > 0.9


def test_edge_cases():
    assert knn_communities(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32)).tolist() == []
    # no usable edges (missing or negative): every row alone
    neighbours = np.array([[-1], [0], [-1]])
    sims = np.array([[-np.inf], [-0.5], [-np.inf]], dtype=np.float32)
    assert knn_communities(neighbours, sims).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="must be equal"):
        knn_communities(np.zeros((3, 2), np.int64), np.zeros((3, 1), np.float32))
