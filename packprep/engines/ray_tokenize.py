"""Tokenize on Ray: one task per block (``RayEngine.tokenize`` drives them).

One Ray task per corpus source (a file, or a saved HF dataset folder) reads and tokenizes
it into a block store ``WORK/.blocks/<i>/`` (a small document store, written under
``<i>.tmp`` and renamed when complete). A plain ``.jsonl`` larger than ``RANGE_BYTES`` is
cut at newlines into byte ranges of at most that size (``ray_engine.part_bytes``: two per
core of the cluster, 4 MB at least), one task each (``corpus.source_parts``:
the driver counts the newlines before each range, so document ids and error lines keep their
absolute line numbers). The driver then concatenates the blocks in corpus order
(``store.concatenate``): it sizes the final ``tokens.bin``/``doc_ids.bin`` and copy tasks
write each block at its byte offset, so no token passes through the driver or the object store.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from packprep import json_text
from packprep.config import TokenizeConfig
from packprep.engines.base import RAY_MAX_RETRIES
from packprep.errors import PackprepError
from packprep.progress import Reporter
from packprep.store import DocStoreWriter

_MAX_FIRST_ERRORS = 5
# A plain .jsonl above this size becomes several tokenize tasks of at most this size (fewer
# cores than parts: large enough that a task's start-up is small beside its work).
RANGE_BYTES = 64 << 20


def run_blocks(
    ray: Any,
    parts: list[tuple[Path, tuple[int, int, int] | None]],
    root: Path,
    blocks: Path,
    config: TokenizeConfig,
    dtype: np.dtype,
    reporter: Reporter,
    hash_texts: bool = True,
) -> list[dict[str, Any]]:
    """Block summaries in corpus order; the error of the first failing block (in corpus order) is raised."""
    task = ray.remote(max_retries=RAY_MAX_RETRIES)(_tokenize_block)  # looked up per call: tests wrap it
    refs = [
        task.remote(i, str(source), str(root), str(blocks), config, dtype.name, span, hash_texts, json_text.HUGE_TEXT_BYTES)
        for i, (source, span) in enumerate(parts)
    ]
    index_of = {ref: i for i, ref in enumerate(refs)}
    summaries: list[dict[str, Any] | None] = [None] * len(refs)
    first_failed = len(refs)
    pending = list(refs)
    with reporter.track("tokenize", unit="docs") as advance:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            summary = ray.get(done[0])
            i = index_of[done[0]]
            summaries[i] = summary
            advance(summary["records"], tokens=summary["num_tokens"])
            if summary["error"] is not None and i < first_failed:
                # The local engine stops at the first bad record: later sources no longer matter.
                first_failed = i
                later = [ref for ref in pending if index_of[ref] > i]
                for ref in later:
                    ray.cancel(ref)
                if later:
                    ray.wait(later, num_returns=len(later))  # cancelled tasks stop writing before blocks/ goes
                pending = [ref for ref in pending if index_of[ref] < i]
    if first_failed < len(refs):
        raise PackprepError(**summaries[first_failed]["error"])
    return summaries  # type: ignore[return-value]


def _tokenize_block(
    index: int,
    source: str,
    root: str,
    blocks: str,
    config: TokenizeConfig,
    dtype: str,
    span: tuple[int, int, int] | None = None,
    hash_texts: bool = True,
    huge_text_bytes: int | None = None,
) -> dict[str, Any]:
    """Ray task: tokenize one corpus source, or its byte range ``span`` (``corpus.source_parts``), into the block
    store ``blocks/<index>``; returns its counts.

    Reading and tokenizing are the local engine's (``corpus.read_source``,
    ``stages.tokenize.tokenize_into``). A PackprepError is returned, not raised, so Ray neither retries it
    nor wraps it: the driver re-raises it unchanged.
    """
    from packprep.corpus import ReadCounters, read_source
    from packprep.stages.tokenize import tokenize_into
    from packprep.tokenizers import load_tokenizer, stream_encoder

    final = Path(blocks) / f"{index:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what an earlier, killed attempt of this task left
    counters = ReadCounters()
    summary: dict[str, Any] = {"error": None, "dropped_empty": 0, "num_documents": 0, "num_tokens": 0}
    try:
        # One process: Ray gives this task one CPU and runs one task per CPU (bpe-openai would
        # otherwise start encoder processes of its own inside every task).
        tokenizer = load_tokenizer(config.tokenizer, eos_id=config.eos_id, bos_id=config.bos_id, num_threads=1)
        stream = stream_encoder(tokenizer)  # a huge text read and encoded in pieces where the tokenizer allows, as locally
        documents = read_source(
            Path(source), Path(root), text_field=config.text_field, id_field=config.id_field, on_error=config.on_error,
            counters=counters, byte_range=span, huge_text_bytes=huge_text_bytes if stream else None,
        )
        with DocStoreWriter(tmp, dtype=np.dtype(dtype)) as writer:
            summary["dropped_empty"] = tokenize_into(writer, documents, tokenizer, hash_texts=hash_texts, encode_stream=stream)
            writer.finish({})
            summary.update(num_documents=writer.num_documents, num_tokens=writer.num_tokens)
        shutil.rmtree(final, ignore_errors=True)  # a finished attempt whose result Ray lost
        os.replace(tmp, final)
    except PackprepError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        summary["error"] = {"message": exc.message, "path": exc.path, "line": exc.line}
    summary.update(
        records=counters.records, skipped=counters.skipped, with_id=counters.with_id,
        first_errors=counters.first_errors[:_MAX_FIRST_ERRORS],
    )
    return summary
