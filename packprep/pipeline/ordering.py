"""Partitioned ordering wired to disk: the journal that makes it resumable, and the run that uses it.

While ``pack`` orders a corpus partition by partition (``stages.partition``), every
finished partition is saved in ``OUT/order.partial/``::

    journal.json              the run's key, the digest of the partition plan, the semantic
                              threshold, and the sha256 of the files of every finished partition
    part-<p>.order.npy        int64 [m]     partition p's kept documents in order
    part-<p>.rows.npy         float32 [3, D]  its centroid, first and last document's rows
    part-<p>.dropped.npy      int64 [d, 2]  its semantic drops: (document, the kept one it duplicates)
    plan.members.npy          int64 [M]     the plan's documents grouped by partition (``formats.partition_plan``)
    dedup.reason.npy          uint8 [N]     the dedup arrays with every partition's semantic drops
    dedup.dup_of.npy          int64 [N]     applied (:func:`write_drops`), what the doc table is written from

A rerun with the same key and semantic threshold recomputes the plan (seeded, so the same
one), checks its digest and each listed partition's checksums, and orders only the others:
a driver killed after any partition loses nothing it had finished. The threshold is checked
apart from the key because the key holds ``--semantic-threshold`` as given, and a default one
is chosen later (the strategy's, or the static embedder's calibration). The folder is removed
when the output's manifest is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packprep.io import intact_parts, npy_writer, release_pages, save_npy, save_parts, sha256_file
from packprep.pipeline.run import Run
from packprep.stages.partition import PartOrder, Partitions


def plan_digest(plan: Partitions) -> str:
    # Through the arrays' buffers, a slice at a time: the members may be a memmap of the plan's file
    # (its pages are let go after), and ``tobytes`` would copy them (8 B per document) first.
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(plan.bounds, dtype=np.int64)).cast("B"))
    for start in range(0, len(plan.members), _DIGEST_SLICE):
        digest.update(memoryview(np.ascontiguousarray(plan.members[start : start + _DIGEST_SLICE], dtype=np.int64)).cast("B"))
    release_pages(plan.members)
    return digest.hexdigest()


_DIGEST_SLICE = 1 << 20  # members hashed at a time (8 MB)


class OrderJournal:
    """Finished partitions of one ordering run (``key``, ``plan``) in ``folder``."""

    def __init__(self, folder: Path, *, key: str, plan: Partitions, semantic_threshold: float = 0.0):
        self.folder, self.key, self.digest = Path(folder), key, plan_digest(plan)
        self.semantic_threshold = float(semantic_threshold)
        self.finished: dict[int, dict[str, str]] = {}

    @classmethod
    def resume(cls, folder: Path, *, key: str, plan: Partitions, semantic_threshold: float = 0.0) -> OrderJournal:
        """The journal of an interrupted run with this key, plan and threshold (its intact partitions), else a new one."""
        journal = cls(folder, key=key, plan=plan, semantic_threshold=semantic_threshold)
        intact = intact_parts(journal.path, journal.header, lambda files: files)
        if intact is None:
            for stale in journal.folder.glob("part-*"):  # another run's partitions
                stale.unlink()
        journal.finished = intact or {}
        journal.folder.mkdir(parents=True, exist_ok=True)
        return journal

    @property
    def path(self) -> Path:
        return self.folder / "journal.json"

    @property
    def header(self) -> dict[str, str]:
        return {"key": self.key, "plan": self.digest, "semantic_threshold": repr(self.semantic_threshold)}

    def finish(self, p: int, part: PartOrder) -> None:
        """Save partition ``p``'s result, then record it (with checksums) in the journal."""
        files = {
            f"part-{p:06d}.order.npy": part.order, f"part-{p:06d}.rows.npy": np.vstack([part.centroid, part.ends]),
            f"part-{p:06d}.dropped.npy": part.dropped,
        }
        for name, array in files.items():
            save_npy(self.folder / name, array)
        self.finished[p] = {name: sha256_file(self.folder / name) for name in files}
        save_parts(self.path, self.header, self.finished)

    def load(self, p: int) -> PartOrder:
        rows = self.load_rows(p)
        return PartOrder(order=self.load_order(p), centroid=rows[0], ends=rows[1:], dropped=self.load_dropped(p))

    def load_order(self, p: int) -> np.ndarray:
        return np.load(self.folder / f"part-{p:06d}.order.npy")

    def load_dropped(self, p: int) -> np.ndarray:
        """int64 [d, 2]: partition ``p``'s semantic drops (document, kept duplicate)."""
        return np.load(self.folder / f"part-{p:06d}.dropped.npy")

    def num_dropped(self, p: int) -> int:
        """How many documents partition ``p``'s semantic dedup dropped, from its file's header."""
        return len(np.load(self.folder / f"part-{p:06d}.dropped.npy", mmap_mode="r"))

    def load_rows(self, p: int) -> np.ndarray:
        """float32 [3, D]: partition ``p``'s centroid, first and last document's rows."""
        return np.load(self.folder / f"part-{p:06d}.rows.npy")

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class PartitionedOrder:
    """What :func:`order_by_partition` returns. ``order``: int64 [M'] the kept documents in packing
    order (maybe a memmap); ``num_dropped``: documents semantic dedup dropped inside the partitions;
    ``load_drops(p)``: partition ``p``'s drops, int64 [d_p, 2] (document, kept duplicate), from the
    journal where there is one (:meth:`drops` reads them one partition at a time)."""

    order: np.ndarray
    num_dropped: int
    num_partitions: int
    load_drops: Callable[[int], np.ndarray]

    def drops(self) -> Iterator[np.ndarray]:
        return (self.load_drops(p) for p in range(self.num_partitions))


def order_by_partition(
    reason: np.ndarray,
    embeddings: np.ndarray,
    *,
    strategy: str,
    max_docs: int,
    seed: int,
    k: int,
    n_clusters: int | None,
    journal_folder: Path | None,
    key: str,
    run: Run,
    order_path: Path | None = None,
    semantic_threshold: float = 0.0,
    counts: np.ndarray | None = None,
) -> PartitionedOrder:
    """``stages.partition.partitioned_selection`` of the documents whose ``reason`` (uint8 [N],
    maybe a memmap) is 0, each partition journaled, on ``run.backend``.

    With a journal, the plan is made in ranges and its members kept in a file there
    (``pipeline.planning.plan_in_files``), and each partition's task reads its slice of it: no
    array of all kept documents is built in this process. Both engines run the same plan and
    the same per-partition function with the same seeds and ``semantic_threshold`` (above 0: each
    partition's semantic dedup, ``stages.partition.partition_duplicates``), so the order and the
    drops (and every byte packed from them) do not depend on the engine.
    ``journal_folder`` None: nothing is journaled (a notebook call without an output folder).
    ``counts``: ``stages.partition.kept_counts(reason)`` when the caller has it (None: counted here).
    ``order_path`` (with a journal): the joined order is written there partition by partition,
    each read back from the journal, and returned memory-mapped: no partition's order stays in
    memory once journaled, and the whole order never is.
    """
    from packprep.formats.partition_plan import MemberSlice
    from packprep.stages.partition import (
        assemble, kept_counts, kept_docs, partition_clusters, partition_documents, partition_seed,
    )

    reporter = run.reporter
    reporter.info(f"order: planning partitions of at most {max_docs:,} documents")
    if counts is None:
        counts = kept_counts(reason)
        release_pages(reason)
    if journal_folder is not None and int(counts.sum()) > max_docs:
        from packprep.pipeline.planning import plan_in_files

        plan = plan_in_files(reason, embeddings, counts=counts, max_docs=max_docs, seed=seed, folder=journal_folder, run=run)

        def members(p: int) -> MemberSlice:  # what partition p's task reads: its slice of the members file
            return MemberSlice(str(plan.members.filename), int(plan.bounds[p]), int(plan.bounds[p + 1]))
    else:  # a notebook call (nothing on disk) or a single partition: the plan in memory
        plan = partition_documents(
            kept_docs(reason, np.arange(int(counts.sum())), counts), embeddings, max_docs=max_docs, seed=seed,
            after_batch=lambda: release_pages(embeddings),  # mapped pages would count as ours: let go after each batch
        )
        members = plan.part
    release_pages(embeddings)  # the k-means samples' rows
    total = len(plan.members)
    journal = None
    if journal_folder is not None:
        journal = OrderJournal.resume(journal_folder, key=key, plan=plan, semantic_threshold=semantic_threshold)
    # Journaled partitions keep only their centroid and end rows here (their orders and drops are on disk),
    # and how many documents each dropped.
    done: dict[int, PartOrder] = {p: _rows_only(journal.load_rows(p)) for p in journal.finished} if journal else {}
    dropped: dict[int, int] = {p: journal.num_dropped(p) for p in done} if journal else {}
    sizes = plan.sizes()
    reporter.info(f"order: {len(plan):,} partitions of {int(sizes.min()):,} to {int(sizes.max()):,} documents"
                  + (f"; {len(done)} finished by an interrupted run are reused" if done else ""))
    todo = [p for p in range(len(plan)) if p not in done]
    tasks = [
        (p, members(p), {"strategy": strategy, "seed": partition_seed(seed, p, len(plan)), "k": k,
                           "n_clusters": partition_clusters(n_clusters, int(sizes[p]), total),
                           "semantic_threshold": float(semantic_threshold)})
        for p in todo
    ]

    def finished(p: int, part: PartOrder) -> None:
        dropped[p] = len(part.dropped)
        if journal is not None:
            journal.finish(p, part)
            part = _rows_only(np.vstack([part.centroid, part.ends]))
        done[p] = part

    with reporter.track(f"order ({strategy}, {len(plan)} partitions)", total=total, unit="docs") as advance:
        advance(int(sum(sizes[p] for p in done)), resumed=True)
        run.backend.order_partitions(embeddings, tasks, on_part=finished, progress=advance)
    parts = [done[p] for p in range(len(plan))]
    num_dropped = sum(dropped.values())
    if journal is None:
        return PartitionedOrder(assemble(parts, seed=seed, k=k), num_dropped, len(parts), lambda p: parts[p].dropped)
    if order_path is None:
        joined = [PartOrder(journal.load_order(p), part.centroid, part.ends) for p, part in enumerate(parts)]
        order = assemble(joined, seed=seed, k=k)
    else:
        order = write_joined_order(order_path, journal, parts, length=total - num_dropped, seed=seed, k=k)
    return PartitionedOrder(order, num_dropped, len(parts), journal.load_dropped)


def _rows_only(rows: np.ndarray) -> PartOrder:
    return PartOrder(order=np.zeros(0, np.int64), centroid=rows[0], ends=rows[1:])


def write_joined_order(path: Path, journal: OrderJournal, parts: list[PartOrder], *, length: int, seed: int, k: int) -> np.ndarray:
    """``stages.partition.assemble``'s order (``length``: the partitions' kept documents), written to ``path``
    one partition at a time (each read from ``journal``, reversed where the chain says) and returned memory-mapped."""
    from packprep.stages.partition import chain_sequence

    sequence, reverse = chain_sequence(parts, seed=seed, k=k)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with npy_writer(path, dtype=np.int64, length=length) as write:
        for p in sequence.tolist():
            order = journal.load_order(p)
            write(order[::-1] if reverse[p] else order)
    return np.load(path, mmap_mode="r")


REASON_FILE, DUP_OF_FILE = "dedup.reason.npy", "dedup.dup_of.npy"
_COPY_SLICE = 1 << 20  # documents of the dedup arrays copied at a time (9 MB)
# Drops marked before the maps' pages are let go: each may dirty a page of both maps (at most
# 2 x 256 MB), and letting go walks the whole N-document maps, so not once per small partition.
_MARK_SLICE = 1 << 16


def write_drops(folder: Path, reason: np.ndarray, dup_of: np.ndarray, drops: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The dedup arrays ``reason`` (uint8 [N]) and ``dup_of`` (int64 [N]) (the stored memmaps, or broadcast
    constants) with the partitions' semantic ``drops`` (each int64 [d, 2]: document, kept duplicate) marked
    ``REASON_SEMANTIC``, in ``folder/REASON_FILE`` and ``folder/DUP_OF_FILE``; returned memory-mapped, read-only.

    Copied a slice at a time, then marked ``_MARK_SLICE`` drops at a time, the pages let go after each
    slice: no array of all N documents is made here. A rerun writes both files afresh.
    """
    from packprep.stages.dedup import REASON_SEMANTIC

    folder.mkdir(parents=True, exist_ok=True)
    for name, source in ((REASON_FILE, reason), (DUP_OF_FILE, dup_of)):
        with npy_writer(folder / name, dtype=source.dtype, length=len(source)) as write:
            for start in range(0, len(source), _COPY_SLICE):
                write(source[start : start + _COPY_SLICE])
                release_pages(source)
    marked_reason, marked_dup_of = np.load(folder / REASON_FILE, mmap_mode="r+"), np.load(folder / DUP_OF_FILE, mmap_mode="r+")
    unreleased = 0
    for drop in drops:
        for start in range(0, len(drop), _MARK_SLICE):
            rows = drop[start : start + _MARK_SLICE]
            marked_reason[rows[:, 0]] = REASON_SEMANTIC
            marked_dup_of[rows[:, 0]] = rows[:, 1]
            unreleased += len(rows)
            if unreleased >= _MARK_SLICE:  # written back, and the pages let go: not after every small partition
                release_pages(marked_reason)
                release_pages(marked_dup_of)
                unreleased = 0
    release_pages(marked_reason)
    release_pages(marked_dup_of)
    del marked_reason, marked_dup_of
    return np.load(folder / REASON_FILE, mmap_mode="r"), np.load(folder / DUP_OF_FILE, mmap_mode="r")
