"""Shard writing on Ray: the task that ``ray_engine.write_shards_on_ray`` runs per shard.

A task opens the document store memory-mapped, reads only the token spans its rows hold
and writes one shard with ``formats.npy.write_shard``, the function the local engine
calls, so the files are the same bytes. Each task gets only its rows of the pack plan
(:func:`plan_rows`), so the object store carries the plan once in all, not once per node.
"""

from __future__ import annotations

from typing import Any

from packprep.stages.pack import PackPlan


def plan_rows(plan: PackPlan, start: int, stop: int) -> PackPlan:
    """Rows ``start:stop`` of ``plan`` as a plan of their own (``row_ptr`` rebased to 0): what
    ``write_shard`` writes for those rows of ``plan`` it writes for all rows of this one."""
    s0, s1 = int(plan.row_ptr[start]), int(plan.row_ptr[stop])
    return PackPlan(
        seq_len=plan.seq_len, row_ptr=plan.row_ptr[start : stop + 1] - s0, seg_start=plan.seg_start[s0:s1],
        seg_length=plan.seg_length[s0:s1], seg_doc=plan.seg_doc[s0:s1], seg_doc_offset=plan.seg_doc_offset[s0:s1],
    )


def write_shard_task(out: str, index: int, rows: PackPlan, store_path: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ray task: ``rows`` (a plan's rows, :func:`plan_rows`) written into ``out`` as shard ``index``; its manifest entry."""
    from packprep.formats.npy import write_shard
    from packprep.store import DocStore

    store = DocStore.open(store_path)
    return write_shard(out, index, rows, slice(0, rows.num_rows), read_spans=store.read_spans, offsets=store.offsets, **params)
