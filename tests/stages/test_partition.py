"""Partitioned ordering (stages.partition): hand-made embeddings, exact answers."""

import numpy as np
import pytest

from packprep.errors import PackprepError
from packprep.stages.order import cluster_order, icp_order
from packprep.stages.partition import (
    PartOrder,
    assemble,
    chain_partitions,
    join_partitions,
    order_partition,
    partition_clusters,
    partition_documents,
    partition_seed,
    partitioned_order,
    partitioned_selection,
)


def _normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _angles(degrees) -> np.ndarray:
    """float32 [n, 2]: unit vectors at the given angles (cosine = cos of the angle between)."""
    rad = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.column_stack([np.cos(rad), np.sin(rad)]).astype(np.float32)


@pytest.fixture(scope="module")
def groups() -> np.ndarray:
    """Four tight groups of 25 points in 8-d, interleaved: document i is in group i % 4."""
    rng = np.random.default_rng(0)
    centres = 5 * np.eye(8)[:4]
    return _normalised(centres[np.arange(100) % 4] + 0.05 * rng.normal(size=(100, 8))).astype(np.float16)


def test_partitions_follow_the_groups_and_hold_every_document_once(groups):
    plan = partition_documents(np.arange(100), groups, max_docs=30, seed=0)
    assert sorted(plan.members.tolist()) == list(range(100))
    assert plan.sizes().tolist() == [25, 25, 25, 25]  # k-means with 4 centroids finds the groups
    for p in range(len(plan)):
        part = plan.part(p)
        assert len(set((part % 4).tolist())) == 1  # one group each
        assert part.tolist() == sorted(part.tolist())  # ascending inside


def test_an_oversized_partition_is_split_again_until_it_fits(groups):
    plan = partition_documents(np.arange(100), groups, max_docs=10, seed=0)
    assert sorted(plan.members.tolist()) == list(range(100))
    assert plan.sizes().max() <= 10
    assert all(len(set((plan.part(p) % 4).tolist())) == 1 for p in range(len(plan)))  # splits stay inside a group


def test_identical_vectors_are_cut_by_index():
    same = np.ones((10, 4), dtype=np.float32) / 2
    plan = partition_documents(np.arange(10), same, max_docs=4, seed=0)
    assert [plan.part(p).tolist() for p in range(len(plan))] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_the_plan_is_seeded(groups):
    a = partition_documents(np.arange(100), groups, max_docs=10, seed=3)
    b = partition_documents(np.arange(100), groups, max_docs=10, seed=3)
    assert a.members.tolist() == b.members.tolist() and a.bounds.tolist() == b.bounds.tolist()


def test_partition_docs_must_be_positive(groups):
    with pytest.raises(PackprepError, match="--partition-docs must be at least 1"):
        partition_documents(np.arange(10), groups, max_docs=0, seed=0)


@pytest.mark.parametrize("strategy", ["icp", "cluster"])
def test_one_partition_is_exactly_the_global_order(groups, strategy):
    kept = np.arange(3, 100, 2)
    got = partitioned_order(kept, groups, strategy=strategy, max_docs=1000, seed=7)
    want = icp_order(kept, groups, seed=7) if strategy == "icp" else cluster_order(kept, groups, seed=7)
    assert got.tolist() == want.tolist()
    assert partition_seed(7, 0, 1) == 7 and partition_seed(7, 0, 2) != partition_seed(7, 1, 2)


@pytest.mark.parametrize("strategy", ["icp", "cluster"])
def test_partitioned_order_is_a_seeded_permutation_that_keeps_groups_together(groups, strategy):
    got = partitioned_order(np.arange(100), groups, strategy=strategy, max_docs=30, seed=1)
    assert got.dtype == np.int64 and sorted(got.tolist()) == list(range(100))
    assert got.tolist() == partitioned_order(np.arange(100), groups, strategy=strategy, max_docs=30, seed=1).tolist()
    assert int((np.diff(got % 4) != 0).sum()) == 3  # four runs of one group each: only the three seams change group


def test_chain_walks_the_centroids_and_turns_partitions_to_meet():
    # Centroids at 0, 90, 10, 80 degrees: the walk joins 0 with 10 and 90 with 80.
    centroids = _angles([0, 90, 10, 80])
    # Each partition's first and last document: 0 runs -5 -> 15, 1 runs 95 -> 85, 2 runs 20 -> 0, 3 runs 75 -> 85.
    ends = np.stack([_angles([-5, 15]), _angles([95, 85]), _angles([20, 0]), _angles([75, 85])])
    sequence, reverse = chain_partitions(centroids, ends, seed=0)
    assert sequence.tolist() == [1, 3, 2, 0]  # the best path over four centroids (Held-Karp)
    # 1 stays (its 85-deg end faces 3), 3 is turned (85 meets 85, 75 leads on), 2 stays
    # (20 deg meets 75), 0 stays (-5 deg meets 0).
    assert reverse.tolist() == [False, False, False, True]
    joined = join_partitions([np.array([0, 1]), np.array([2, 3]), np.array([4, 5]), np.array([6, 7])], sequence, reverse)
    assert joined.tolist() == [2, 3, 7, 6, 4, 5, 0, 1]


def test_chain_of_two_turns_the_first_towards_the_second():
    centroids = _angles([0, 90])
    ends = np.stack([_angles([60, -30]), _angles([80, 100])])  # partition 0 starts near 1
    sequence, reverse = chain_partitions(centroids, ends, seed=0)
    joined = join_partitions([np.array([10, 11]), np.array([20, 21])], sequence, reverse)
    # Whichever comes first, partition 0 meets partition 1 with its 60-degree end, and 1 with its 80-degree end.
    assert joined.tolist() in ([11, 10, 20, 21], [21, 20, 10, 11])


def test_order_partition_returns_centroid_and_ends(groups):
    members = np.arange(0, 100, 4)  # group 0 only
    part = order_partition(members, groups, strategy="icp", seed=0)
    assert sorted(part.order.tolist()) == members.tolist()
    assert np.allclose(part.ends, groups[part.order[[0, -1]]].astype(np.float32))
    assert part.centroid.dtype == np.float32 and abs(float(np.linalg.norm(part.centroid)) - 1) < 1e-5
    assert float(part.centroid @ groups[0].astype(np.float32)) > 0.99
    with pytest.raises(ValueError, match="embedding strategies"):
        order_partition(members, groups, strategy="random", seed=0)


def test_a_partition_drops_members_close_to_an_earlier_kept_member_then_orders_the_rest():
    # Documents 0, 1 and 4 lie within 0.5 degrees of each other (cosine > 0.9999), 5 is at 90 degrees.
    embeddings = _angles([0, 0.5, 30, 60, 0.3, 90])
    part = order_partition(np.array([5, 1, 0, 4]), embeddings, strategy="icp", seed=0, semantic_threshold=0.999)
    # In document order: 0 is kept; 1 and 4 are close to it (4 is closer to 1, but 1 was dropped).
    assert part.dropped.tolist() == [[1, 0], [4, 0]]
    assert sorted(part.order.tolist()) == [0, 5]
    assert np.allclose(part.ends, embeddings[part.order[[0, -1]]])
    off = order_partition(np.array([5, 1, 0, 4]), embeddings, strategy="icp", seed=0)
    assert off.dropped.shape == (0, 2) and sorted(off.order.tolist()) == [0, 1, 4, 5]


def test_each_partitions_drops_are_semantic_dedup_of_its_members_alone(groups):
    from packprep.stages.dedup import semantic_duplicates

    plan = partition_documents(np.arange(100), groups, max_docs=30, seed=1)
    order, dropped = partitioned_selection(np.arange(100), groups, strategy="icp", max_docs=30, seed=1, semantic_threshold=0.995)
    want = []
    for p in range(len(plan)):
        members = np.sort(plan.part(p))
        close = semantic_duplicates(groups[members].astype(np.float32), threshold=0.995)
        want += [[int(members[i]), int(members[close.dup_of[i]])] for i in np.flatnonzero(~close.keep)]
    assert len(plan) > 1 and 0 < len(want) < 100 - len(plan)
    assert dropped.tolist() == sorted(want)
    assert sorted(order.tolist() + dropped[:, 0].tolist()) == list(range(100))


@pytest.mark.parametrize("strategy", ["icp", "cluster"])
def test_one_partition_with_semantic_dedup_is_the_global_dedup_and_order(groups, strategy):
    from packprep.stages.dedup import semantic_duplicates

    keep = np.zeros(100, bool)
    keep[3::2] = True
    close = semantic_duplicates(groups, threshold=0.995, keep=keep)
    survivors = np.flatnonzero(keep & close.keep)
    got, dropped = partitioned_selection(np.flatnonzero(keep), groups, strategy=strategy, max_docs=1000, seed=7, semantic_threshold=0.995)
    want = icp_order(survivors, groups, seed=7) if strategy == "icp" else cluster_order(survivors, groups, seed=7)
    assert len(dropped) > 0 and got.tolist() == want.tolist()
    gone = np.flatnonzero(keep & ~close.keep)
    assert dropped.tolist() == np.column_stack([gone, close.dup_of[gone]]).tolist()


def test_assemble_of_one_part_is_its_order():
    part = PartOrder(order=np.array([3, 1, 2]), centroid=np.zeros(2, np.float32), ends=np.zeros((2, 2), np.float32))
    assert assemble([part], seed=0).tolist() == [3, 1, 2]


def test_cluster_share_is_proportional_and_at_least_one():
    assert partition_clusters(None, 10, 100) is None
    assert partition_clusters(40, 25, 100) == 10
    assert partition_clusters(3, 1, 100) == 1


def test_kept_documents_are_counted_per_chunk_and_found_by_position():
    from packprep.stages.partition import kept_counts, kept_docs

    reason = np.array([0, 1, 0, 2, 0, 0, 1, 1, 0, 0], dtype=np.uint8)  # kept: 0 2 4 5 8 9
    counts = kept_counts(reason, chunk=3)
    assert counts.tolist() == [2, 2, 1, 1]
    assert kept_docs(reason, np.arange(6), counts, chunk=3).tolist() == [0, 2, 4, 5, 8, 9]
    assert kept_docs(reason, np.array([1, 3, 4]), counts, chunk=3).tolist() == [2, 5, 8]
    assert kept_docs(reason, np.zeros(0, np.int64), counts, chunk=3).tolist() == []


def test_the_first_split_children_are_the_non_empty_clusters_or_equal_runs():
    from packprep.stages.partition import first_split_sizes

    assert first_split_sizes(np.array([3, 0, 12, 5]), max_docs=4) == [3, 12, 5]
    assert first_split_sizes(np.array([0, 10, 0]), max_docs=4) == [4, 3, 3]  # np.array_split(10 docs, 3)


def test_split_documents_from_the_root_path_is_partition_documents(groups):
    from packprep.stages.partition import split_documents

    plan = partition_documents(np.arange(100), groups, max_docs=10, seed=4)
    parts = split_documents(np.arange(100), groups, max_docs=10, path=(4,))
    assert np.concatenate(parts).tolist() == plan.members.tolist()
    assert [len(p) for p in parts] == plan.sizes().tolist()
