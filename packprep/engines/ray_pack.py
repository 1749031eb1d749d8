"""Packing on Ray: the tasks that ``ray_engine.pack_parts_on_ray`` and ``ray_engine.write_shards_on_ray`` run.

A part task packs one part of the order (``formats.pack_parts.pack_part_files``) and a
shard task writes one shard from a part's saved plan (``formats.pack_parts.write_part_shard``):
the functions the local engine calls, so the files are the same bytes. Both read what they
need from the shared folder (the order's slice, the plan's rows, the store's token spans),
so nothing per document travels through the object store or the driver.
"""

from __future__ import annotations

from typing import Any


def pack_part_task(folder: str, part: int, first: int, end: int, store_path: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ray task: part ``part`` (positions ``first:end`` of the order) packed and its plan saved; its summary."""
    from packprep.formats.pack_parts import pack_part_files

    return pack_part_files(folder, part, first, end, store_path, params)


def write_shard_task(
    out: str, index: int, folder: str, part: int, rows: tuple[int, int], store_path: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Ray task: rows ``rows`` of part ``part``'s saved plan written into ``out`` as shard ``index``; its manifest entry."""
    from packprep.formats.pack_parts import write_part_shard

    return write_part_shard(out, index, folder, part, rows, store_path, params)
