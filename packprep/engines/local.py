"""The local engine: tokenize, dedup and embed on this machine.

From POOL_MIN_BYTES of corpus on, tokenize runs on worker processes (``engines.local_tokenize``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packprep.config import DedupConfig, EmbedConfig, TokenizeConfig
from packprep.engines.base import ReadSummary
from packprep.progress import Reporter
from packprep.store import TEXT_HASH_FILE, DocStore, DocStoreWriter


class LocalEngine:
    """:class:`packprep.engines.Backend` in this process; the reference the other engines match byte for byte."""

    name = "local"

    def backend(self) -> LocalEngine:
        return self

    def tokenize(
        self, corpus: Path, work: Path, *, sources: list[Path], config: TokenizeConfig, tokenizer: Any,
        fingerprint: str | None, manifest: Callable[[dict[str, int], int, str], dict[str, Any]], reporter: Reporter,
        workers: int | None = None, hash_texts: bool = True,
    ) -> tuple[DocStore, ReadSummary]:
        from packprep.tokenizers import smallest_token_dtype

        workers = workers or os.cpu_count() or 1
        # Worker processes pay ~0.25 s of start-up each: below POOL_MIN_BYTES this process is quicker.
        pooled = workers > 1 and sum(_size(source) for source in sources) >= POOL_MIN_BYTES
        with DocStoreWriter(work, dtype=smallest_token_dtype(tokenizer.vocab_size)) as writer, reporter.track(
            "tokenize", unit="docs"
        ) as advance:
            if pooled:
                read, fingerprint = _tokenize_pooled(
                    corpus, sources, writer, config, tokenizer, fingerprint, workers, advance, hash_texts
                )
            else:
                read, fingerprint = _tokenize_here(corpus, sources, writer, config, tokenizer, fingerprint, advance, hash_texts)
            store = writer.finish(manifest(read.counts, writer.num_documents, fingerprint))
        return store, read

    def write_text_hashes(self, store: DocStore, *, reporter: Reporter) -> None:
        from packprep.io import save_npy
        from packprep.stages.dedup import document_text_hashes
        from packprep.tokenizers import tokenizer_from_manifest

        decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
        with reporter.track("text hashes", total=store.num_documents, unit="docs") as advance:
            save_npy(store.path / TEXT_HASH_FILE, document_text_hashes(decode, store.tokens, store.offsets, progress=advance))

    def dedup(self, store: DocStore, *, config: DedupConfig, reporter: Reporter, out: dict[str, np.ndarray]) -> dict[str, int]:
        result = self.dedup_result(store, config=config, reporter=reporter)
        for name in ("keep", "reason", "dup_of"):
            out[name][:] = getattr(result, name)
        return result.counts()

    def dedup_result(self, store: DocStore, *, config: DedupConfig, reporter: Reporter) -> Any:
        """The ``stages.dedup.DedupResult`` of ``store``, whole in this process (:meth:`dedup` stores it)."""
        from packprep.stages import dedup as stage
        from packprep.tokenizers import tokenizer_from_manifest

        result = stage.exact_duplicates(store.text_hash) if config.exact else stage.DedupResult.all_kept(store.num_documents)
        if config.near:
            decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
            with reporter.track("minhash", total=store.num_documents, unit="docs") as advance:
                signatures = stage.document_signatures(
                    decode, store.tokens, store.offsets, num_perm=config.num_perm, shingle=config.shingle,
                    seed=config.seed, progress=advance,
                )
            near = stage.near_duplicates(signatures, threshold=config.minhash_threshold, seed=config.seed, keep=result.keep)
            result = stage.combine(result, near)
        return result

    def embed(
        self, store: DocStore, embedder: Any, decode: Callable[[Any], str], *, config: EmbedConfig, out: np.ndarray,
        starts: list[int], chunk: int, progress: Callable[..., None], on_chunk: Callable[[int], None],
    ) -> None:
        from packprep.stages.embed import embed_documents

        n = store.num_documents
        for start in starts:
            end = min(start + chunk, n)
            embed_documents(
                embedder, decode, store.tokens, store.offsets, np.arange(start, end), out=out[start:end],
                max_tokens=config.embed_tokens, batch_size=config.batch_size, chunk=chunk, progress=progress,
            )
            on_chunk(start)

    def group_by_partition(
        self, embeddings: np.ndarray, reason: np.ndarray, centroids: np.ndarray, jobs: list[tuple[int, int, int]], *,
        params: dict[str, Any], folder: Path, progress: Callable[..., None],
    ) -> np.ndarray:
        from packprep.formats.partition_plan import assign_range, place_range, placement_starts

        counts = np.zeros((len(jobs), len(centroids)), dtype=np.int64)
        for r, first, stop in jobs:  # one range after another, as the Ray tasks would run them
            counts[r] = assign_range(str(folder), r, first, stop, reason, embeddings, centroids, params)[1]
            progress(stop - first)
        starts = placement_starts(counts)
        for r, _, _ in jobs:
            place_range(str(folder), r, starts[r], counts[r])
        return counts.sum(axis=0)

    def order_partitions(
        self, embeddings: np.ndarray, tasks: list[tuple[int, Any, dict[str, Any]]], *,
        on_part: Callable[[int, Any], None], progress: Callable[..., None],
    ) -> None:
        from packprep.formats.partition_plan import load_members
        from packprep.stages.partition import order_partition

        for p, members, params in tasks:  # one after another: the peak is one partition's
            on_part(p, order_partition(load_members(members), embeddings, **params))
            progress(len(members))

    def pack_parts(
        self, folder: Path, store: DocStore, parts: list[tuple[int, int, int]], *, params: dict[str, Any],
        on_part: Callable[[dict[str, Any]], None],
    ) -> None:
        from packprep.formats.pack_parts import pack_part_files

        for part, first, end in parts:
            on_part(pack_part_files(str(folder), part, first, end, str(store.path), params))

    def write_shards(
        self, out: Path, folder: Path, store: DocStore, jobs: list[tuple[int, int, tuple[int, int]]], *,
        params: dict[str, Any], on_shard: Callable[[int, dict[str, Any]], None], on_rows: Callable[..., None],
    ) -> None:
        from packprep.formats.pack_parts import write_part_shard

        for index, part, rows in jobs:
            on_shard(index, write_part_shard(str(out), index, str(folder), part, rows, str(store.path), params, on_rows=on_rows))

# The local engine tokenizes on worker processes (engines.local_tokenize) from this much corpus on.
POOL_MIN_BYTES = 4 << 20


def _size(source: Path) -> int:
    return source.stat().st_size if source.is_file() else sum(f.stat().st_size for f in source.rglob("*") if f.is_file())


def _tokenize_here(
    corpus: Path, sources: list[Path], writer: DocStoreWriter, config: TokenizeConfig, tokenizer: Any, fingerprint: str | None,
    advance: Any, hash_texts: bool,
) -> tuple[ReadSummary, str]:
    from packprep.corpus import Fingerprint, ReadCounters, corpus_root, iter_documents
    from packprep import json_text
    from packprep.stages.tokenize import tokenize_into
    from packprep.tokenizers import stream_encoder

    counters = ReadCounters()
    reading = Fingerprint(corpus_root(corpus)) if fingerprint is None else None  # one pass: hashed as read
    stream = stream_encoder(tokenizer)  # a huge text read and encoded in pieces, where the tokenizer allows (as in the workers)
    documents = iter_documents(
        corpus, text_field=config.text_field, id_field=config.id_field, on_error=config.on_error, counters=counters,
        fingerprint=reading, sources=sources, huge_text_bytes=json_text.HUGE_TEXT_BYTES if stream else None,
    )
    dropped_empty = tokenize_into(writer, documents, tokenizer, hash_texts=hash_texts, progress=advance, encode_stream=stream)
    counts = {"records": counters.records, "dropped_empty": dropped_empty, "skipped_records": counters.skipped}
    fingerprint = reading.hexdigest() if reading is not None else fingerprint
    return ReadSummary(counts, with_id=counters.with_id, first_errors=counters.first_errors), fingerprint


def _tokenize_pooled(
    corpus: Path, sources: list[Path], writer: DocStoreWriter, config: TokenizeConfig, tokenizer: Any,
    fingerprint: str | None, workers: int, advance: Any, hash_texts: bool,
) -> tuple[ReadSummary, str]:
    from concurrent.futures import ThreadPoolExecutor

    from packprep.corpus import corpus_fingerprint, corpus_root, iter_source_parts
    from packprep.engines.local_tokenize import RANGE_BYTES, tokenize_parts, worker_recipe

    # The workers read the corpus; this process, idle while they encode, digests it in a
    # thread of its own (hashlib and file reads release the GIL) for the store's key.
    with ThreadPoolExecutor(1) as thread:
        digest = thread.submit(corpus_fingerprint, corpus, sources=sources) if fingerprint is None else None
        read = tokenize_parts(
            iter_source_parts(sources, RANGE_BYTES, tail_ranges=2 * workers), corpus_root(corpus), writer, config=config,
            recipe=worker_recipe(tokenizer, config), workers=workers, progress=advance, hash_texts=hash_texts,
        )
        fingerprint = digest.result() if digest is not None else fingerprint
    counts = {"records": read["records"], "dropped_empty": read["dropped_empty"], "skipped_records": read["skipped"]}
    return ReadSummary(counts, with_id=read["with_id"], first_errors=read["first_errors"]), fingerprint
