"""Which documents are packed, and in what order: dedup, then the strategy's ordering."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.config import DedupConfig, EmbedConfig, PackConfig
from packprep.io import release_pages
from packprep.pipeline.run import Run
from packprep.stages.dedup import REASON_NAMES, counted_reasons
from packprep.stages.strategies import STRATEGIES
from packprep.store import DocStore
from packprep.store.embeddings import embed_manifest


@dataclass(frozen=True)
class Selection:
    """``order``: int64 [M] document indices in packing order (the kept ones).
    ``reason``: uint8 [N] why each document was dropped (0: kept). ``dup_of``: int64 [N] (-1: kept).
    Any of them may be a read-only memmap (the stored dedup arrays, the order a partitioned run wrote)."""

    order: np.ndarray
    reason: np.ndarray
    dup_of: np.ndarray
    semantic_threshold: dict[str, Any] | None = None  # see :func:`semantic_threshold`; manifest.json records it

    def dropped_counts(self) -> dict[str, int]:
        counts = sum(
            (np.bincount(self.reason[start : start + _REASON_CHUNK], minlength=len(REASON_NAMES))
             for start in range(0, len(self.reason), _REASON_CHUNK)),
            np.zeros(len(REASON_NAMES), np.int64),
        )  # a slice at a time, like kept_indices
        release_pages(self.reason)
        return {name: n for name, n in counted_reasons(counts).items() if name != REASON_NAMES[0]}


def select_documents(
    store: DocStore,
    *,
    config: PackConfig,
    dedup_config: DedupConfig = DedupConfig(),
    embed_config: EmbedConfig = EmbedConfig(),
    run: Run = Run(),
    order_journal: Path | None = None,
    key: str = "",
    order_file: Path | None = None,
) -> Selection:
    """Dedup, then order the kept documents by ``config.strategy``.

    icp/cluster over more than ``config.partition_docs`` documents (after exact and near dedup)
    are ordered partition by partition (``pipeline.ordering.order_by_partition``; on Ray, one task
    each), semantic dedup running inside each partition, every finished partition journaled in
    ``order_journal`` under ``key`` so a rerun resumes, and the joined order written to
    ``order_file`` partition by partition (``pipeline.ordering.write_joined_order``). Otherwise
    semantic dedup runs over all kept documents here, then the global order. The dedup arrays
    stay memory-mapped (the stored ones, or a partitioned run's marked copies) except after a
    global semantic dedup or a partitioned one without a journal.
    """
    from packprep.pipeline import semantic

    reporter = run.reporter
    n = store.num_documents
    # Without dedup: constants broadcast to N (read-only, no memory), read a slice at a time like the stored arrays.
    reason: np.ndarray = np.broadcast_to(np.uint8(0), (n,))
    dup_of: np.ndarray = np.broadcast_to(np.int64(-1), (n,))
    if config.run_dedup:
        found = semantic.dedup_in(store, config=dedup_config, run=run)
        reason, dup_of = found.reason, found.dup_of
    strategy = STRATEGIES[config.strategy]
    if not strategy.needs_embeddings:
        return Selection(order=strategy.order(kept_indices(reason), None, config, None), reason=reason, dup_of=dup_of)

    embeddings = semantic.embed_in(store, config=embed_config, run=run)
    calibration = (embed_manifest(store.path, embed_config.model) or {}).get("calibration")
    chosen = semantic_threshold(config, embed_config.model, calibration)
    threshold = chosen["value"] if chosen else 0.0
    from packprep.stages.partition import kept_counts

    counts = kept_counts(reason)  # per slice of reason: the partitioned order finds kept documents by them
    release_pages(reason)
    if 0 < config.partition_docs < int(counts.sum()):
        return _partitioned(reason, dup_of, embeddings, counts, config=config, chosen=chosen, run=run,
                            order_journal=order_journal, key=key, order_file=order_file)
    if threshold:
        from packprep.stages.dedup import semantic_duplicates

        close = semantic_duplicates(embeddings, threshold=threshold, keep=reason == 0, k=config.knn)
        reason, dup_of = np.array(reason), np.array(dup_of)  # changed here: no longer the stored dedup's
        newly = (reason == 0) & ~close.keep
        reason[newly], dup_of[newly] = close.reason[newly], close.dup_of[newly]
        reporter.info(f"semantic dedup: dropped {int(newly.sum())} documents with cosine > {threshold:.6g} ({chosen['source']})")
    kept = kept_indices(reason)
    with reporter.track(f"order ({config.strategy})", total=len(kept), unit="docs") as advance:
        order = strategy.order(kept, embeddings, config, advance)
    original = store.column("original")
    if original is not None:  # a recipe's repeated documents: a pass apart, not side by side
        from packprep.stages.mix import spread_copies

        order = spread_copies(order, original)
    return Selection(order=order, reason=reason, dup_of=dup_of, semantic_threshold=chosen)


def _partitioned(
    reason: np.ndarray, dup_of: np.ndarray, embeddings: np.ndarray, counts: np.ndarray, *, config: PackConfig,
    chosen: dict[str, Any] | None, run: Run, order_journal: Path | None, key: str, order_file: Path | None,
) -> Selection:
    """icp/cluster over more than ``config.partition_docs`` kept documents: ordered partition by partition,
    semantic dedup (``chosen``) inside each partition, not over all documents here
    (``stages.partition.partition_duplicates``). With a journal the drops are marked in files beside it
    (``pipeline.ordering.write_drops``), so ``reason``/``dup_of`` stay memory-mapped; without one (a
    notebook call), in copies in memory."""
    from packprep.pipeline.ordering import order_by_partition, write_drops
    from packprep.stages.dedup import REASON_SEMANTIC

    threshold = chosen["value"] if chosen else 0.0
    ordered = order_by_partition(  # finds the kept documents in ranges: no array of them here
        reason, embeddings, strategy=config.strategy, max_docs=config.partition_docs, seed=config.seed, k=config.knn,
        n_clusters=config.clusters, journal_folder=order_journal, key=key, run=run, order_path=order_file,
        semantic_threshold=threshold, counts=counts,
    )
    if threshold:
        if order_journal is not None:
            reason, dup_of = write_drops(order_journal, reason, dup_of, ordered.drops())
        else:
            reason, dup_of = np.array(reason), np.array(dup_of)
            for drop in ordered.drops():
                reason[drop[:, 0]], dup_of[drop[:, 0]] = REASON_SEMANTIC, drop[:, 1]
        run.reporter.info(
            f"semantic dedup: dropped {ordered.num_dropped} documents with cosine > {threshold:.6g} ({chosen['source']}) "
            f"within partitions of at most {config.partition_docs:,}"
        )
        chosen = {**chosen, "scope": "partitions"}
    return Selection(order=ordered.order, reason=reason, dup_of=dup_of, semantic_threshold=chosen)


# Reason codes compared at a time by kept_indices: 16 MB of a memmap, then its pages are let go.
_REASON_CHUNK = 1 << 24


def kept_indices(reason: np.ndarray) -> np.ndarray:
    """int64 [M]: the documents whose ``reason`` (uint8 [N], maybe a memmap) is 0 (kept), ascending.

    Read a slice at a time, so a stored reason array is never mapped whole into this process."""
    pieces = [
        np.flatnonzero(reason[start : start + _REASON_CHUNK] == 0) + start for start in range(0, len(reason), _REASON_CHUNK)
    ]
    release_pages(reason)
    return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)


def semantic_threshold(config: PackConfig, model: str, calibration: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cosine above which semantic dedup drops a document, and how it was chosen; None: no semantic dedup.

    ``--semantic-threshold`` wins as given (0: off). Otherwise the strategy's default
    (``stages.strategies``; icp: DEFAULT_ICP_SEMANTIC_THRESHOLD), measured on MiniLM's scale; for the static embedder
    that is the ``calibration`` its embed stage measured (``stages.static_embed.calibrate_threshold``),
    the static cosine that reproduces MiniLM's decisions at the default on the fit sample.
    """
    from packprep.stages.static_embed import STATIC_MODEL

    if config.semantic_threshold is not None:
        return {"value": config.semantic_threshold, "source": "--semantic-threshold", "embedder": model}
    default = STRATEGIES[config.strategy].semantic_threshold
    if default is None:
        return None
    if model == STATIC_MODEL and calibration is not None:
        return {"value": calibration["threshold"], "source": f"calibrated to MiniLM's {calibration['reference']}",
                "embedder": model, "calibration": calibration}
    return {"value": default, "source": "default", "embedder": model}
