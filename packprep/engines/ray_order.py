"""Partitioned ordering on Ray: the task that ``ray_engine.order_partitions_on_ray`` runs per partition.

A task reads its members (a slice of the plan's members file, ``formats.partition_plan.MemberSlice``),
opens the embeddings as a read-only memmap and gathers only its partition's rows,
so its memory is set by the partition size, not by the corpus; with a semantic threshold in
its params it first drops the partition's semantic duplicates (``stages.partition.partition_duplicates``:
a kNN over the same rows, finished before the ordering's starts). It returns the partition's
order, centroid, end rows and drops (``stages.partition.PartOrder``), a few KB plus 8 bytes per
kept document and 16 per dropped one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Peak bytes per document of ordering one partition at D = 384 (benchmarks/bench_partition.py
# --memory: 3.6-3.9 KB with exact kNN, 5.0 KB with the IVF index); scaled by D, plus a floor
# for the process's own arrays. Ray schedules by it; it limits nothing.
_BYTES_PER_DOC_AT_384 = 5_000
_TASK_FLOOR = 64 << 20
# The partition's semantic kNN first (icp's default) raised that peak by 7 % at 20,000 and 12 % at
# 50,000 documents (bench_partition.py --memory --semantic-threshold 0.97; exact kNN, not measured with IVF).
_SEMANTIC_PERCENT = 12


def partition_bytes(num_docs: int, dim: int, *, semantic: bool = False) -> int:
    """The memory (bytes) a Ray task ordering ``num_docs`` documents of ``dim`` dimensions reserves
    (``semantic``: after its semantic dedup)."""
    per_doc = _BYTES_PER_DOC_AT_384 * (100 + (_SEMANTIC_PERCENT if semantic else 0)) // 100
    return _TASK_FLOOR + num_docs * per_doc * max(dim, 1) // 384



def order_part(p: int, embeddings: Any, members: Any, params: dict[str, Any]) -> tuple[int, Any]:
    """Ray task: (``p``, partition ``p`` ordered). ``embeddings``: the path of an ``.npy`` (opened
    memory-mapped here) or the array itself (through the object store, for in-memory embeddings).
    ``members``: int64 [m], or a ``formats.partition_plan.MemberSlice`` of the plan's members file (read here)."""
    from packprep.formats.partition_plan import load_members
    from packprep.stages.partition import order_partition

    if isinstance(embeddings, str):
        embeddings = np.load(embeddings, mmap_mode="r")
    return p, order_partition(load_members(members), embeddings, **params)
