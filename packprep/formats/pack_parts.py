"""Pack parts on disk: the order cut into contiguous parts, each packed on its own, its plan saved for its shards.

What a pack keeps in ``OUT/pack.partial/`` while it runs (the pipeline removes the folder
when ``manifest.json`` is written; ``pipeline.pack_journal`` records what is finished)::

    order.npy                     int64 [M]       the documents in packing order
    part-<p>.row_ptr.npy          int64 [R_p+1]   part p's pack plan (``stages.pack.PackPlan``),
    part-<p>.seg_start.npy        int64 [S_p]     rows already shuffled, seg_doc as document
    part-<p>.seg_length.npy       int64 [S_p]     indices into the store
    part-<p>.seg_doc.npy          int64 [S_p]
    part-<p>.seg_doc_offset.npy   int64 [S_p]
    journal.json                  the run's key, the order's digest, finished parts (counts, sha256)

Part p is positions ``stages.pack.part_ranges(M, part_docs)[p]`` of the order: the bounds
follow from the number of documents alone, so every engine cuts the same parts before
anything is packed. Shards are cut from each part's rows (a part's last shard may be
short) and numbered across parts in part order. Both functions here are what a task runs
(on Ray) and what the local engine calls in its own process: same inputs, same files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import renamed_together, save_npy, sha256_file
from packprep.stages.pack import PackPlan, pack_part, row_shuffle_seed

ORDER_FILE = "order.npy"
PLAN_ARRAYS = ("row_ptr", "seg_start", "seg_length", "seg_doc", "seg_doc_offset")


def plan_file(folder: Path, part: int, array: str) -> Path:
    return Path(folder) / f"part-{part:06d}.{array}.npy"


def pack_part_files(folder: str, part: int, first: int, end: int, store_path: str, params: dict[str, Any]) -> dict[str, Any]:
    """Pack part ``part`` (positions ``first:end`` of ``folder/order.npy``) and save its plan in ``folder``.

    ``params``: ``seq_len``, ``packing``, ``keep_order``, ``sep_len`` (separator tokens per
    document), ``shuffle`` (whether rows are shuffled), ``seed``, ``num_parts``. Reads only the
    part's slice of the order and its documents' offsets (memory-mapped): memory follows the
    part. Returns the part's counts and its files' sha256 (what the journal records).
    """
    from packprep.store import DocStore

    docs = np.array(np.load(Path(folder) / ORDER_FILE, mmap_mode="r")[first:end], dtype=np.int64)
    offsets = DocStore.open(store_path, mapped=True).offsets
    lengths = np.asarray(offsets[docs + 1] - offsets[docs], dtype=np.int64) + params["sep_len"]
    seed = row_shuffle_seed(params["seed"], part, params["num_parts"]) if params["shuffle"] else None
    plan = pack_part(lengths, seq_len=params["seq_len"], packing=params["packing"], keep_order=params["keep_order"], shuffle_seed=seed)
    arrays = {name: getattr(plan, name) for name in PLAN_ARRAYS}
    arrays["seg_doc"] = docs[plan.seg_doc]  # positions in the part -> documents
    with renamed_together() as batch:  # the part's files reach the disk together (io.RenameBatch)
        for name, array in arrays.items():
            save_npy(plan_file(folder, part, name), np.asarray(array, dtype=np.int64), batch=batch)
    files = {plan_file(folder, part, name).name: sha256_file(plan_file(folder, part, name)) for name in arrays}
    pieces = np.bincount(plan.seg_doc, minlength=len(docs)) if plan.num_segments else np.zeros(0, np.int64)
    return {
        "part": part, "rows": plan.num_rows, "segments": plan.num_segments, "tokens": int(plan.seg_length.sum()),
        "documents": len(docs), "split_documents": int((pieces > 1).sum()), "files": files,
    }


def load_part_rows(folder: Path, part: int, start: int, stop: int, seq_len: int) -> PackPlan:
    """Rows ``start:stop`` of part ``part``'s saved plan as a plan of their own (``row_ptr`` rebased to 0),
    reading only those rows' segments."""
    maps = {name: np.load(plan_file(folder, part, name), mmap_mode="r") for name in PLAN_ARRAYS}
    row_ptr = np.array(maps["row_ptr"][start : stop + 1], dtype=np.int64)
    s0, s1 = int(row_ptr[0]), int(row_ptr[-1])
    segments = {name: np.array(maps[name][s0:s1], dtype=np.int64) for name in PLAN_ARRAYS if name != "row_ptr"}
    return PackPlan(seq_len=seq_len, row_ptr=row_ptr - s0, **segments)


def write_part_shard(
    out: str, index: int, folder: str, part: int, rows: tuple[int, int], store_path: str, params: dict[str, Any],
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write rows ``rows`` of part ``part``'s saved plan into ``out`` as shard ``index`` (``formats.npy.write_shard``;
    ``params``: ``seq_len`` and write_shard's ``dtype``, ``sep_id``, ``pad_id``); the shard's manifest entry."""
    from packprep.formats.npy import write_shard
    from packprep.store import DocStore

    plan = load_part_rows(Path(folder), part, rows[0], rows[1], params["seq_len"])
    store = DocStore.open(store_path, mapped=True)
    return write_shard(
        Path(out), index, plan, slice(0, plan.num_rows), read_spans=store.read_spans, offsets=store.offsets,
        dtype=params["dtype"], sep_id=params["sep_id"], pad_id=params["pad_id"], on_rows=on_rows,
    )
