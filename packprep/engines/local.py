"""The local engine: tokenize, dedup and embed in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packprep.config import DedupConfig, EmbedConfig, TokenizeConfig
from packprep.engines.base import ReadSummary
from packprep.progress import Reporter
from packprep.store import DocStore, DocStoreWriter


class LocalEngine:
    """:class:`packprep.engines.Backend` in this process; the reference the other engines match byte for byte."""

    name = "local"

    def backend(self) -> LocalEngine:
        return self

    def tokenize(
        self, corpus: Path, work: Path, *, sources: list[Path], config: TokenizeConfig, tokenizer: Any,
        fingerprint: str | None, manifest: Callable[[dict[str, int], int, str], dict[str, Any]], reporter: Reporter,
    ) -> tuple[DocStore, ReadSummary]:
        from packprep.corpus import Fingerprint, ReadCounters, corpus_root, iter_documents
        from packprep.stages.tokenize import tokenize_into
        from packprep.tokenizers import smallest_token_dtype

        counters = ReadCounters()
        reading = Fingerprint(corpus_root(corpus)) if fingerprint is None else None  # one pass: hashed as read
        documents = iter_documents(
            corpus, text_field=config.text_field, id_field=config.id_field, on_error=config.on_error, counters=counters,
            fingerprint=reading, sources=sources,
        )
        with DocStoreWriter(work, dtype=smallest_token_dtype(tokenizer.vocab_size)) as writer, reporter.track(
            "tokenize", unit="docs"
        ) as advance:
            dropped_empty = tokenize_into(writer, documents, tokenizer, progress=advance)
            counts = {"records": counters.records, "dropped_empty": dropped_empty, "skipped_records": counters.skipped}
            fingerprint = reading.hexdigest() if reading is not None else fingerprint
            store = writer.finish(manifest(counts, writer.num_documents, fingerprint))
        return store, ReadSummary(counts, with_id=counters.with_id, first_errors=counters.first_errors)

    def dedup(self, store: DocStore, *, config: DedupConfig, reporter: Reporter) -> Any:
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
