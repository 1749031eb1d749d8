"""Packing in parts wired to disk: the order cut into parts, each packed by a task, its shards written by tasks.

The order is cut into parts of ``--partition-docs`` consecutive documents
(``stages.pack.part_ranges``: bounds known before anything is packed). Each part is
packed on its own (``formats.pack_parts.pack_part_files``: a task on Ray, a call in
this process locally) and its plan saved in ``OUT/pack.partial/``; then its rows are cut
into shards of ``rows_per_shard``, numbered across parts in part order, each written by a
task from the saved plan. The driver holds the parts' counts and the shards' entries:
O(parts + shards), never a plan.

Resuming: every finished part is journaled in ``OUT/pack.partial/journal.json`` with the
sha256 of its plan files, under the run's key and the order's digest; every finished shard
in the shard journal (``formats.npy.journal_shard``), by name. A rerun packs only the
parts and writes only the shards that are not there intact. One part (a corpus of at
most ``--partition-docs`` documents) packs exactly as the whole corpus was packed before
parts existed (``stages.pack.row_shuffle_seed``).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.formats import npy
from packprep.formats.pack_parts import ORDER_FILE
from packprep.io import intact_parts, release_pages, save_npy, save_parts
from packprep.pipeline.run import Run
from packprep.stages.pack import part_ranges
from packprep.store import DocStore


_DIGEST_CHUNK = 1 << 21  # documents of the order hashed at a time (16 MB)


def order_digest(order: np.ndarray) -> str:
    """sha256 of the order's int64 bytes, a slice at a time: a memmapped order is never mapped whole here."""
    digest = hashlib.sha256()
    for start in range(0, len(order), _DIGEST_CHUNK):
        # Through the slice's buffer: ``tobytes`` would copy it first.
        digest.update(memoryview(np.ascontiguousarray(order[start : start + _DIGEST_CHUNK], dtype=np.int64)).cast("B"))
    release_pages(order)
    return digest.hexdigest()


class PackJournal:
    """Finished parts of one packing run (``key``, order digest) in ``folder``."""

    def __init__(self, folder: Path, *, key: str, digest: str):
        self.folder, self.key, self.digest = Path(folder), key, digest
        self.parts: dict[int, dict[str, Any]] = {}

    @classmethod
    def resume(cls, folder: Path, *, key: str, order: np.ndarray) -> PackJournal:
        """The journal of an interrupted run with this key and order (its intact parts), else a new one;
        ``folder/order.npy`` holds ``order`` on return (it may be that file already, memory-mapped:
        a partitioned order is written there partition by partition)."""
        journal = cls(folder, key=key, digest=order_digest(order))
        in_place = _is_file(order, journal.folder / ORDER_FILE)
        intact = intact_parts(journal.path, journal.header, lambda summary: summary.get("files", {}))
        if intact is None and journal.folder.is_dir():  # another run's parts (and order, unless this run wrote it)
            for stale in journal.folder.iterdir():
                if not (in_place and stale.name == ORDER_FILE):
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        journal.parts = intact or {}
        journal.folder.mkdir(parents=True, exist_ok=True)
        if not in_place:
            save_npy(journal.folder / ORDER_FILE, np.asarray(order, dtype=np.int64))  # what the parts' tasks read
        return journal

    @property
    def path(self) -> Path:
        return self.folder / "journal.json"

    @property
    def header(self) -> dict[str, str]:
        return {"key": self.key, "order": self.digest}

    def finish(self, summary: dict[str, Any]) -> None:
        """Record a packed part (``pack_part_files``' summary: its files are on disk already)."""
        self.parts[int(summary["part"])] = summary
        save_parts(self.path, self.header, self.parts)


def _is_file(order: np.ndarray, path: Path) -> bool:
    """Whether ``order`` is the memmap of the file at ``path``."""
    filename = getattr(order, "filename", None)
    return filename is not None and path.exists() and Path(filename).resolve() == path.resolve()


@dataclass(frozen=True)
class Packed:
    """``shards``: the manifest's shard entries, in order; ``counts``: the manifest's ``counts``."""

    shards: list[dict[str, Any]]
    counts: dict[str, Any]


def pack_in_parts(
    out: Path,
    store: DocStore,
    order: np.ndarray,
    *,
    part_docs: int,
    params: dict[str, Any],
    shard_params: dict[str, Any],
    rows_per_shard: int,
    key: str,
    finished: list[dict[str, Any]],
    run: Run,
    folder_name: str,
) -> Packed:
    """Pack ``order`` part by part and write its shards into ``out`` on ``run.backend``.

    ``params``: ``formats.pack_parts.pack_part_files``' (``num_parts`` is added here);
    ``shard_params``: ``write_part_shard``'s; ``finished``: the intact entries of the shard
    journal (``npy.finished_shards``), reused where their name and rows match.
    """
    reporter = run.reporter
    folder = out / folder_name
    ranges = part_ranges(len(order), part_docs)
    journal = PackJournal.resume(folder, key=key, order=order)
    params = {**params, "num_parts": len(ranges)}
    todo = [(p, first, end) for p, (first, end) in enumerate(ranges) if p not in journal.parts]
    if len(ranges) > 1 or journal.parts:
        reporter.info(f"pack: {len(ranges):,} parts of at most {ranges[0][1] - ranges[0][0]:,} documents"
                      + (f"; {len(journal.parts)} packed by an interrupted run are reused" if journal.parts else ""))

    with reporter.track("pack plan", total=len(order), unit="docs") as advance:
        advance(sum(s["documents"] for s in journal.parts.values()), resumed=True)

        def packed(summary: dict[str, Any]) -> None:
            journal.finish(summary)
            advance(summary["documents"])

        run.backend.pack_parts(folder, store, todo, params=params, on_part=packed)

    layout = shard_layout([journal.parts[p]["rows"] for p in range(len(ranges))], rows_per_shard)
    reusable = {entry["name"]: entry for entry in finished}
    done = {}
    for index, part, (start, stop) in layout:
        entry = reusable.get(npy.shard_name(index))
        if entry is not None and entry["rows"] == stop - start:
            done[index] = entry
    npy.save_journal(out, key, [done[i] for i in sorted(done)])
    jobs = [job for job in layout if job[0] not in done]
    total_rows = sum(stop - start for _, _, (start, stop) in layout)
    with reporter.track("write shards", total=total_rows, unit="rows") as advance:
        advance(sum(done[i]["rows"] for i in done), resumed=True)

        def written(index: int, entry: dict[str, Any]) -> None:
            done[index] = entry
            npy.journal_shard(out, entry)

        run.backend.write_shards(out, folder, store, jobs, params={**shard_params, "seq_len": params["seq_len"]},
                                 on_shard=written, on_rows=advance)
    summaries = [journal.parts[p] for p in range(len(ranges))]
    return Packed(shards=[done[i] for i in range(len(layout))], counts=parts_counts(summaries, params["seq_len"], len(order)))


def shard_layout(part_rows: list[int], rows_per_shard: int) -> list[tuple[int, int, tuple[int, int]]]:
    """``(shard index, part, (first row, end row))`` for every shard: each part's rows cut every
    ``rows_per_shard`` (its last shard may be short), numbered across parts in part order."""
    layout = []
    for part, rows in enumerate(part_rows):
        for start in range(0, rows, rows_per_shard):
            layout.append((len(layout), part, (start, min(start + rows_per_shard, rows))))
    return layout


def parts_counts(summaries: list[dict[str, Any]], seq_len: int, num_documents: int) -> dict[str, Any]:
    """The headline numbers of a packing (the same keys ``inspect --json`` prints), summed over its parts
    (a document's pieces all lie in its part)."""
    rows = sum(s["rows"] for s in summaries)
    num_tokens = sum(s["tokens"] for s in summaries)
    capacity = rows * seq_len
    return {
        "num_sequences": rows,
        "num_tokens": num_tokens,
        "pad_tokens": capacity - num_tokens,
        "fill_ratio": num_tokens / capacity if capacity else 0.0,
        "num_documents": num_documents,
        "num_segments": sum(s["segments"] for s in summaries),
        "split_documents": sum(s["split_documents"] for s in summaries),
    }

