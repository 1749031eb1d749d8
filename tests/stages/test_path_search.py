"""The local search after the ICP walk: never worse than the walk, optimal where that is computable."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from packprep.stages.communities import knn_communities
from packprep.stages.order import COMMUNITY_BONUS, icp_order, icp_walk, knn_graph
from packprep.stages.path_search import EXACT_MAX, improve_path, optimal_path, path_bound, path_value


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force_best(x: np.ndarray, communities: np.ndarray | None = None, bonus: float = 0.0) -> float:
    """The best path value over every order: what path_value sums (with the community bonus, if
    given), from the matrix of pairwise scores for all orders at once (9! orders took 5 s one
    path_value call at a time)."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    sims = x64 @ x64.T
    if communities is not None:
        c = np.asarray(communities)
        sims = sims + bonus * (c[:, None] == c[None, :])
    orders = np.array(list(itertools.permutations(range(len(x)))), dtype=np.int64)
    return float(sims[orders[:, :-1], orders[:, 1:]].sum(axis=1).max())


def _greedy(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    neighbours, sims = knn_graph(x, k=k)
    return icp_walk(neighbours, sims, seed=0), neighbours, sims


@pytest.mark.parametrize("m", [2, 3, 5, 7])
def test_optimal_path_matches_brute_force(m):
    rng = np.random.default_rng(m)
    for _ in range(5):
        x = _unit(rng.normal(size=(m, 6)))
        best = optimal_path(x)
        assert sorted(best.tolist()) == list(range(m))
        assert path_value(best, x) == pytest.approx(_brute_force_best(x), abs=1e-5)


@pytest.mark.parametrize("m", [4, 6, 8])
def test_small_paths_get_the_optimum(m):
    rng = np.random.default_rng(10 + m)
    x = _unit(rng.normal(size=(m, 6)))
    walk, neighbours, sims = _greedy(x, k=3)
    improved = improve_path(walk, x, neighbours, sims)
    assert path_value(improved, x) == pytest.approx(_brute_force_best(x), abs=1e-5)
    assert path_value(improved, x) >= path_value(walk, x) - 1e-6


def test_local_search_finds_the_optimum_on_points_along_an_arc():
    """Points on a quarter circle: the best path visits them by angle. The greedy walk,
    started in the middle, runs to one end and must jump back; the local search alone
    (exact solver off) repairs it to the brute-force optimum."""
    angles = np.array([0.50, 0.45, 0.55, 0.40, 0.60, 0.35, 0.65, 0.30, 0.70]) * np.pi / 2
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    neighbours, sims = knn_graph(x, k=4)
    walk = np.array([0, 1, 3, 5, 7, 2, 4, 6, 8])  # middle, down to one end, jump back up
    improved = improve_path(walk, x, neighbours, sims, exact_max=0)
    assert path_value(improved, x) == pytest.approx(_brute_force_best(x), abs=1e-5)
    assert np.argsort(angles[improved]).tolist() in (list(range(9)), list(range(8, -1, -1)))


@pytest.mark.parametrize("seed", range(12))
def test_local_search_is_never_worse_than_the_greedy_walk(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(EXACT_MAX + 1, 80))
    centres = rng.normal(size=(int(rng.integers(1, 6)), 8))
    x = _unit(centres[rng.integers(0, len(centres), m)] + rng.normal(scale=0.6, size=(m, 8)))
    walk, neighbours, sims = _greedy(x, k=int(rng.integers(1, 8)))
    improved = improve_path(walk, x, neighbours, sims)
    assert sorted(improved.tolist()) == list(range(m))  # every document exactly once
    assert path_value(improved, x) >= path_value(walk, x) - 1e-6
    assert improved.tolist() == improve_path(walk, x, neighbours, sims).tolist()  # deterministic


@pytest.mark.parametrize("seed", range(8))
def test_with_a_community_bonus_never_worse_than_the_greedy_walk_in_that_objective(seed):
    rng = np.random.default_rng(100 + seed)
    m = int(rng.integers(EXACT_MAX + 1, 120))
    centres = rng.normal(size=(int(rng.integers(2, 6)), 8))
    x = _unit(centres[rng.integers(0, len(centres), m)] + rng.normal(scale=0.8, size=(m, 8)))
    walk, neighbours, sims = _greedy(x, k=int(rng.integers(2, 8)))
    communities = knn_communities(neighbours, sims, seed=seed)
    bonus = float(rng.choice([0.05, 0.3]))
    improved = improve_path(walk, x, neighbours, sims, communities=communities, bonus=bonus, seed=seed)
    assert sorted(improved.tolist()) == list(range(m))  # every document exactly once
    assert path_value(improved, x, communities, bonus) >= path_value(walk, x, communities, bonus) - 1e-6
    again = improve_path(walk, x, neighbours, sims, communities=communities, bonus=bonus, seed=seed)
    assert improved.tolist() == again.tolist()  # deterministic


@pytest.mark.parametrize("m", [5, 8])
def test_small_paths_get_the_optimum_of_the_bonus_objective(m):
    rng = np.random.default_rng(20 + m)
    x = _unit(rng.normal(size=(m, 6)))
    communities = np.arange(m) % 2
    walk, neighbours, sims = _greedy(x, k=3)
    improved = improve_path(walk, x, neighbours, sims, communities=communities, bonus=0.5)
    assert path_value(improved, x, communities, 0.5) == pytest.approx(_brute_force_best(x, communities, 0.5), abs=1e-5)


def test_a_large_bonus_keeps_communities_together():
    """Communities that cut across the geometry: with a bonus larger than any cosine
    difference, the local search lines each community up in one run (one change of
    community per pair of communities at most, here 1 for 2)."""
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(60, 8)))
    communities = (np.arange(60) * 7 % 60 < 30).astype(np.int64)
    neighbours, sims = knn_graph(x, k=59)
    walk = icp_walk(neighbours, sims, seed=0)
    improved = improve_path(walk, x, neighbours, sims, communities=communities, bonus=3.0)
    assert np.count_nonzero(np.diff(communities[walk])) > 5
    assert np.count_nonzero(np.diff(communities[improved])) == 1


def test_local_search_brings_the_path_close_to_the_bound():
    """40 topics x 25 documents: the greedy walk strands documents; the search recovers most of the gap."""
    rng = np.random.default_rng(0)
    x = _unit((rng.normal(size=(40, 1, 32)) + 0.5 * rng.normal(size=(40, 25, 32))).reshape(-1, 32))
    walk, neighbours, sims = _greedy(x, k=10)
    bound = path_bound(sims) * (len(x) - 1)
    improved = improve_path(walk, x, neighbours, sims)
    assert path_value(improved, x) / bound >= 0.95
    assert path_value(improved, x) / bound >= path_value(walk, x) / bound + 0.02


def test_path_bound_on_hand_made_similarities():
    sims = np.array([[0.9, 0.5], [0.9, -0.2], [0.5, -np.inf]], dtype=np.float32)
    # (0.9 + 0.5 + 0.9 + 0 + 0.5 + 0) / 2 / 2 pairs: a second best below 0 counts as 0 (a path end)
    assert path_bound(sims) == pytest.approx(0.7)
    assert np.isnan(path_bound(sims[:1]))


@pytest.mark.parametrize("m", [2, 3, 4, 6])
def test_path_bound_is_never_below_the_best_path(m):
    rng = np.random.default_rng(m)
    for _ in range(10):
        x = _unit(rng.normal(size=(m, 3)))
        _, sims = knn_graph(x, k=2)
        assert _brute_force_best(x) / (m - 1) <= path_bound(sims) + 1e-6


def test_icp_order_is_the_improved_walk():
    rng = np.random.default_rng(1)
    x = _unit((rng.normal(size=(10, 1, 16)) + 0.4 * rng.normal(size=(10, 20, 16))).reshape(-1, 16))
    walk, neighbours, sims = _greedy(x, k=10)
    given = np.arange(1000, 1200)  # positions in a larger store: the order maps back to them
    store = np.zeros((1200, 16), dtype=np.float32)
    store[given] = x
    communities = knn_communities(neighbours, sims, seed=0)
    expected = improve_path(walk, x, neighbours, sims, communities=communities, bonus=COMMUNITY_BONUS)
    assert icp_order(given, store, k=10, seed=0).tolist() == given[expected].tolist()
    plain = improve_path(walk, x, neighbours, sims)
    assert icp_order(given, store, k=10, seed=0, community_bonus=0.0).tolist() == given[plain].tolist()
