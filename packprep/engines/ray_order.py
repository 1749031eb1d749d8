"""Partitioned ordering on Ray: the task that ``ray_engine.order_partitions_on_ray`` runs per partition.

A task opens the embeddings as a read-only memmap and gathers only its partition's rows,
so its memory is set by the partition size, not by the corpus; it returns the
partition's order, centroid and end rows (``stages.partition.PartOrder``), a few KB plus
8 bytes per document.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _order_part(p: int, embeddings: Any, members: np.ndarray, params: dict[str, Any]) -> tuple[int, Any]:
    """Ray task: (``p``, partition ``p`` ordered). ``embeddings``: the path of an ``.npy`` (opened
    memory-mapped here) or the array itself (through the object store, for in-memory embeddings)."""
    from packprep.stages.partition import order_partition

    if isinstance(embeddings, str):
        embeddings = np.load(embeddings, mmap_mode="r")
    return p, order_partition(members, embeddings, **params)
