import numpy as np
import pytest

from packprep.stages.knn_lists import exact_knn, list_search, nearest_centroids, plan_lists, spherical_kmeans
from tests.helpers import REPO_ROOT


def _normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _mixture(m: int, d: int, *, seed: int) -> np.ndarray:
    """float32 [m, d]: 20 overlapping Gaussian clusters, so neighbours cross list borders."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 1, d))
    return _normalised((centres + 0.8 * rng.normal(size=(20, m // 20, d))).reshape(-1, d))


def test_exact_knn_on_hand_made_points():
    x = _normalised(np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]]))
    best, sims = exact_knn(x, x, np.arange(4), 2)
    assert best.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert sims[0, 0] == pytest.approx(float(x[0] @ x[1]))
    best, sims = exact_knn(x[:1], x[:2], np.array([0]), 3)  # fewer candidates than k: padded
    assert best.tolist() == [[1, -1, -1]] and np.isneginf(sims[0, 1:]).all()


def test_equal_scores_keep_the_candidate_met_first():
    x = _normalised(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert exact_knn(x[3:], x, np.array([3]), 2)[0].tolist() == [[0, 1]]
    assert exact_knn(x[:1], x, np.array([0]), 2)[0].tolist() == [[1, 2]]  # itself skipped, not its twins
    assert nearest_centroids(x[3:], x, 2).tolist() == [[3, 0]]


def test_list_search_with_every_list_probed_is_exact():
    x = _mixture(1000, 8, seed=0)
    plan = plan_lists(x, k=5, seed=0, target_recall=1.01, max_scanned=len(x), sample=100)
    assert plan.nprobe == plan.nlist > 1
    found, sims = list_search(x, plan, k=5)
    truth, truth_sims = exact_knn(x, x, np.arange(len(x)), 5)
    np.testing.assert_allclose(sims, truth_sims, atol=1e-6)
    assert np.mean(found == truth) > 0.99  # only ties between equally close rows may swap


def test_calibrated_recall_is_the_recall_the_search_gets():
    # Calibrating on every row: the recall plan_lists predicts for its nprobe is what
    # list_search then finds, because a neighbour is found exactly when its list is probed.
    x = _mixture(2000, 8, seed=1)
    plan = plan_lists(x, k=10, seed=2, target_recall=0.9, max_scanned=len(x), sample=len(x))
    assert 1 < plan.nprobe < plan.nlist and plan.recall >= 0.9 > plan.recall_by_nprobe[plan.nprobe - 2]
    found, _ = list_search(x, plan, k=10)
    truth, _ = exact_knn(x, x, np.arange(len(x)), 10)
    recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall == pytest.approx(plan.recall, abs=2e-3)


def test_spherical_kmeans_is_seeded_and_gives_unit_centroids():
    x = _mixture(600, 8, seed=3)
    a, b = spherical_kmeans(x, 20, seed=4), spherical_kmeans(x, 20, seed=4)
    assert a.tobytes() == b.tobytes()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert len(np.unique(nearest_centroids(x, a, 1))) == 20


@pytest.mark.slow  # two Python processes, each loading numpy, faiss and numba
def test_same_graph_for_any_thread_count():
    # --workers sets these variables before numpy, faiss and numba load; the products and
    # the merges must give the same bytes whatever the pool sizes (1 vs 2 threads).
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, numpy as np\n"
        "from packprep.stages.order import knn_graph\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.normal(size=(20, 1, 32)) + 0.8 * rng.normal(size=(20, 150, 32))\n"
        "x = (x.reshape(-1, 32) / np.linalg.norm(x.reshape(-1, 32), axis=1, keepdims=True)).astype(np.float32)\n"
        "n, s = knn_graph(x, k=10, exact_max=100, seed=1)\n"
        "print(hashlib.sha1(n.tobytes() + s.tobytes()).hexdigest())\n"
    )
    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, **{v: threads for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}}
        env["PYTHONPATH"] = str(REPO_ROOT)  # this checkout, not an installed copy
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=True)
        digests.append(run.stdout.strip())
    assert len(digests[0]) == 40 and digests[0] == digests[1]
