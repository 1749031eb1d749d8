"""The partition plan of a partitioned order, made in ranges with its members in a file.

``stages.partition.partition_documents`` is the reference: a coarse k-means over a sample of
the kept documents, every kept document against its centroids, oversized clusters split again.
Here the same plan is made without any array of all kept documents in this process: the kept
documents are counted per chunk of the dedup reason array and found by position
(``stages.partition.kept_docs``); the k-means trains on the sample's rows here; the pass
over every kept row runs on ``run.backend`` in ranges of whole batches, each saving its
documents grouped by cluster, then copied into the members file (``formats.partition_plan``);
an oversized cluster is read back and split here, one at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from packprep.formats.partition_plan import MEMBERS_FILE, assign_file, create_members
from packprep.io import release_pages, write_npy_rows
from packprep.pipeline.run import Run
from packprep.stages.partition import Partitions

ASSIGN_RANGE_BATCHES = 16  # batches per range task: 1 M kept documents (8 MB of them, 96 MiB of float32 rows at D = 384)


def plan_in_files(
    reason: np.ndarray, embeddings: np.ndarray, *, counts: np.ndarray, max_docs: int, seed: int, folder: Path, run: Run
) -> Partitions:
    """``partition_documents(kept, embeddings, max_docs=max_docs, seed=seed)``'s plan, ``kept`` being the
    documents whose ``reason`` (uint8 [N]) is 0, with ``members`` the memory-mapped ``folder/MEMBERS_FILE``.

    ``counts``: ``stages.partition.kept_counts(reason)``; more than ``max_docs`` kept documents.
    """
    from packprep.stages import partition as stage
    from packprep.stages.order import float32_rows, kmeans_centroids

    m = int(counts.sum())
    n = math.ceil(m / max_docs)
    sample, faiss_seed = stage.split_sample(m, n, (int(seed),))
    centroids = kmeans_centroids(float32_rows(embeddings, stage.kept_docs(reason, sample, counts)), n, faiss_seed=faiss_seed)
    del sample
    release_pages(embeddings)
    release_pages(reason)
    folder.mkdir(parents=True, exist_ok=True)
    create_members(folder / MEMBERS_FILE, m)
    step = stage.ASSIGN_BATCH * ASSIGN_RANGE_BATCHES  # read at call time: tests make it small
    jobs = [(r, first, min(first + step, m)) for r, first in enumerate(range(0, m, step))]
    params = {"counts": counts, "chunk": stage.KEPT_CHUNK, "batch": stage.ASSIGN_BATCH}
    try:
        with run.reporter.track("order: planning", total=m, unit="docs") as advance:
            sizes = run.backend.group_by_partition(embeddings, reason, centroids, jobs, params=params, folder=folder, progress=advance)
    finally:
        for r, _, _ in jobs:
            assign_file(folder, r).unlink(missing_ok=True)
    leaves = _split_oversized(folder / MEMBERS_FILE, sizes, embeddings, max_docs=max_docs, seed=seed)
    bounds = np.concatenate([[0], np.cumsum(leaves)]).astype(np.int64)
    return Partitions(members=np.load(folder / MEMBERS_FILE, mmap_mode="r"), bounds=bounds)


def _split_oversized(path: Path, sizes: np.ndarray, embeddings: np.ndarray, *, max_docs: int, seed: int) -> list[int]:
    """The partitions' sizes in plan order: each first-split child of at most ``max_docs`` as it is; a
    larger one read from the members file, split (``stages.partition.split_documents``, the seed path
    ``partition_documents`` gives it) and its span rewritten in its partitions' order."""
    from packprep.stages.partition import first_split_sizes, split_documents

    leaves: list[int] = []
    start = 0
    for i, size in enumerate(first_split_sizes(sizes, max_docs=max_docs)):
        if size > max_docs:
            members = np.array(np.load(path, mmap_mode="r")[start : start + size])
            parts = split_documents(
                members, embeddings, max_docs=max_docs, path=(int(seed), i), after_batch=lambda: release_pages(embeddings),
            )
            release_pages(embeddings)
            write_npy_rows(path, start, np.concatenate(parts))
            leaves.extend(len(part) for part in parts)
        else:
            leaves.append(size)
        start += size
    return leaves
