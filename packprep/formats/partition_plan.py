"""The partition plan on disk: the pass over every kept document against the coarse centroids, in ranges.

While ``pack`` plans a partitioned order (``pipeline.planning``), ``OUT/order.partial/`` holds::

    plan.members.npy          int64 [M]     the kept documents grouped by coarse cluster, in cluster order,
                                            ascending inside each; an oversized cluster's span is then
                                            rewritten as its own partitions (``stages.partition.split_documents``)
    plan.assign-<r>.npy       int64 [m_r]   range r's kept documents grouped by cluster (stable: ascending
                                            inside each); removed once every range is placed

Range r is kept positions ``[first, stop)``, a whole number of ``stages.partition.ASSIGN_BATCH``
batches from position 0, so every engine compares the same rows with the centroids together.
Cluster c's documents from range r go to ``members[starts[r, c] : starts[r, c] + counts[r, c]]``
(:func:`placement_starts`): the ranges in order, so each cluster stays ascending, as the
in-process ``stages.partition.partition_documents`` groups them. Both functions here are what a
task runs (on Ray) and what the local engine calls in its own process: same inputs, same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import save_npy, write_npy_rows

MEMBERS_FILE = "plan.members.npy"


def assign_file(folder: str | Path, r: int) -> Path:
    return Path(folder) / f"plan.assign-{r:06d}.npy"


def open_source(source: Any) -> np.ndarray:
    """An array a task was given: a path (an ``.npy``, memory-mapped), an int N (a reason array of N
    zeros: nothing dropped, sent as a number), or the array itself."""
    if isinstance(source, str):
        return np.load(source, mmap_mode="r")
    if isinstance(source, int):
        return np.broadcast_to(np.uint8(0), (source,))
    return source


def assign_range(
    folder: str, r: int, first: int, stop: int, reason: Any, embeddings: Any, centroids: np.ndarray, params: dict[str, Any]
) -> tuple[int, np.ndarray]:
    """Range ``r`` (kept positions ``[first, stop)``): each kept document's nearest centroid
    (float32 [n, D]), batches of ``params["batch"]`` rows; saves the documents grouped by cluster
    in ``assign_file(folder, r)`` and returns (r, int64 [n] documents per cluster).
    ``reason``, ``embeddings``: see :func:`open_source`; ``params["counts"]``: ``stages.partition.kept_counts``."""
    from packprep.stages.order import centroid_index, float32_rows
    from packprep.stages.partition import kept_docs

    docs = kept_docs(open_source(reason), np.arange(first, stop), params["counts"], chunk=params["chunk"])
    rows, index, batch = open_source(embeddings), centroid_index(centroids), params["batch"]
    assign = np.empty(len(docs), dtype=np.int64)
    for start in range(0, len(docs), batch):
        assign[start : start + batch] = index.search(float32_rows(rows, docs[start : start + batch]), 1)[1][:, 0]
    save_npy(assign_file(folder, r), docs[np.argsort(assign, kind="stable")])
    return r, np.bincount(assign, minlength=len(centroids)).astype(np.int64)


def placement_starts(counts: np.ndarray) -> np.ndarray:
    """int64 [R, n]: where range r's cluster-c documents start in the members file (``counts`` int [R, n])."""
    before = np.cumsum(counts, axis=0) - counts  # the earlier ranges' documents of the same cluster
    cluster_start = np.concatenate([[0], np.cumsum(counts.sum(axis=0))[:-1]])
    return (before + cluster_start).astype(np.int64)


def place_range(folder: str, r: int, starts: np.ndarray, counts: np.ndarray) -> None:
    """Copy range ``r``'s grouped documents into the members file at ``starts`` (int64 [n]): a fixed
    byte range per cluster, written with file writes (a retried task writes the same bytes)."""
    grouped = np.load(assign_file(folder, r))
    ends = np.cumsum(counts)
    for c in np.flatnonzero(counts).tolist():
        write_npy_rows(Path(folder) / MEMBERS_FILE, int(starts[c]), grouped[ends[c] - counts[c] : ends[c]])


def create_members(path: Path, length: int) -> None:
    """The members file, ``length`` int64 elements, sparse: every range task fills its own spans."""
    np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(length,)).flush()


@dataclass(frozen=True)
class MemberSlice:
    """Partition members ``[start, stop)`` of the members file at ``path``: what a partition task is
    sent instead of the documents themselves (it reads them; the driver holds none)."""

    path: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self) -> np.ndarray:
        return np.array(np.load(self.path, mmap_mode="r")[self.start : self.stop])


def load_members(members: np.ndarray | MemberSlice) -> np.ndarray:
    """A partition's members (int64 [m]) as an array, whether sent as one or as a :class:`MemberSlice`."""
    return members.load() if isinstance(members, MemberSlice) else members
