"""What every engine implements (:class:`Backend`) and returns, and the Ray constants its modules share.

Apart from ``packprep.engines`` (the choice, :class:`packprep.engines.Engine`) so that the
engine modules import this and the package imports them, without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: engines import the store and stages when they compute
    import numpy as np

    from packprep.config import DedupConfig, EmbedConfig, TokenizeConfig
    from packprep.progress import Reporter
    from packprep.store import DocStore

RAY_INSTALL_HINT = "--engine ray needs ray: pip install 'packprep[ray]'"
RAY_MAX_RETRIES = 3  # Ray reruns a task (or restarts an actor) whose worker died this many times


def as_finished(ray: Any, refs: list[Any]) -> Iterator[Any]:
    """The results of Ray tasks ``refs``, each as soon as its task finishes (in finishing order)."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


@dataclass(frozen=True)
class ReadSummary:
    """What a tokenize run read: ``counts`` (records, dropped_empty, skipped_records, as ``store.json``
    records them), records that had an id, and the first skip messages."""

    counts: dict[str, int]
    with_id: int = 0
    first_errors: list[str] = field(default_factory=list)


class Backend(Protocol):
    """The compute an engine offers the pipeline; every method gives the same bytes on every engine."""

    def tokenize(
        self, corpus: Path, work: Path, *, sources: list[Path], config: TokenizeConfig, tokenizer: Any,
        fingerprint: str | None, manifest: Callable[[dict[str, int], int, str], dict[str, Any]], reporter: Reporter,
        workers: int | None = None, hash_texts: bool = True,
    ) -> tuple[DocStore, ReadSummary]:
        """Read ``corpus`` (its ``sources``: ``corpus.list_corpus_files``) and write its document store into ``work`` (claimed by the pipeline);
        ``manifest(counts, num_documents, fingerprint)`` gives what ``store.json`` records (and
        raises when nothing was read). ``fingerprint``: ``corpus.corpus_fingerprint(corpus)``,
        or None for the engine to compute (the local engine does while it reads). ``workers``:
        processes on this machine (None: all cores). ``hash_texts``: write ``text_hash.npy``."""

    def write_text_hashes(self, store: DocStore, *, reporter: Reporter) -> None:
        """Write ``text_hash.npy`` into ``store``, a store tokenized without it whose tokenizer
        ``decodes_exactly``: ``stages.dedup.document_text_hashes`` of its documents."""

    def dedup(self, store: DocStore, *, config: DedupConfig, reporter: Reporter, out: dict[str, np.ndarray]) -> dict[str, int]:
        """Exact and near dedup of ``store``: fill ``out`` (``keep``, ``reason``, ``dup_of``: the arrays of a
        ``stages.dedup.DedupResult``, [N] memmaps that ``store.cached.open_dedup`` created) and return the
        counts by reason (``DedupResult.counts``)."""

    def embed(
        self, store: DocStore, embedder: Any, decode: Callable[[Any], str], *, config: EmbedConfig, out: np.ndarray,
        starts: list[int], chunk: int, progress: Callable[..., None], on_chunk: Callable[[int], None],
    ) -> None:
        """Fill ``out[start : start + chunk]`` for each of ``starts``, calling ``on_chunk(start)`` as each lands."""

    def group_by_partition(
        self, embeddings: np.ndarray, reason: np.ndarray, centroids: np.ndarray, jobs: list[tuple[int, int, int]], *,
        params: dict[str, Any], folder: Path, progress: Callable[..., None],
    ) -> np.ndarray:
        """The pass of a partition plan over every kept document (``reason`` uint8 [N] == 0): for each range
        ``(r, first, stop)`` of kept positions, ``formats.partition_plan.assign_range`` against ``centroids``
        (float32 [n, D]); then each range's documents placed into ``folder``'s members file
        (``place_range``). Returns int64 [n]: documents per centroid."""

    def order_partitions(
        self, embeddings: np.ndarray, tasks: list[tuple[int, Any, dict[str, Any]]], *,
        on_part: Callable[[int, Any], None], progress: Callable[..., None],
    ) -> None:
        """Order each partition ``(p, members, params)`` with ``stages.partition.order_partition(members,
        embeddings, **params)``, calling ``on_part(p, PartOrder)`` as each finishes (in any order).
        ``members``: an int64 array or a ``formats.partition_plan.MemberSlice`` of a members file."""

    def pack_parts(
        self, folder: Path, store: DocStore, parts: list[tuple[int, int, int]], *, params: dict[str, Any],
        on_part: Callable[[dict[str, Any]], None],
    ) -> None:
        """``formats.pack_parts.pack_part_files(folder, part, first, end, store.path, params)`` for each
        ``(part, first, end)``, calling ``on_part(summary)`` as each finishes (in any order)."""

    def write_shards(
        self, out: Path, folder: Path, store: DocStore, jobs: list[tuple[int, int, tuple[int, int]]], *,
        params: dict[str, Any], on_shard: Callable[[int, dict[str, Any]], None], on_rows: Callable[..., None],
    ) -> None:
        """``formats.pack_parts.write_part_shard`` of each ``(index, part, rows)`` into ``out`` (parts' plans saved
        in ``folder``), calling ``on_shard(index, entry)`` as each finishes (in any order)."""
