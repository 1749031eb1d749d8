"""The tokenize stage: ``(id, text)`` pairs into flat token batches, with the text hash exact dedup reads.

The engines read the corpus (``corpus.read_source``) and give the documents to
:func:`tokenize_into`, which appends batches to a ``store.DocStoreWriter``: the same
batches, tokens and hashes on every engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from packprep.stages.dedup import normalized_text_hash

_BATCH_DOCS = 2048
_BATCH_CHARS = 8 << 20  # ~8 MB of text per tokenizer call keeps memory flat with huge documents


def tokenize_into(
    writer: Any, documents: Iterable[tuple[str, str]], tokenizer: Any, *, progress: Any = None
) -> int:
    """Tokenize ``(id, text)`` pairs batch by batch into ``writer``; return how many were empty.

    Empty documents (no text, only whitespace, or no tokens) are dropped and counted; every
    kept one is stored with the hash of its normalised text, which exact dedup uses later.
    ``writer``: anything with ``DocStoreWriter.append``'s signature. Both engines call this.
    """
    dropped_empty = 0
    for batch in _batches(documents):
        # A whitespace-only text tokenizes to a few space tokens: a document with nothing to learn from.
        batch_kept = [(doc_id, text) for doc_id, text in batch if text and not text.isspace()]
        flat, lengths = tokenizer.encode_batch([text for _, text in batch_kept])
        keep = lengths > 0
        dropped_empty += len(batch) - int(keep.sum())
        kept = list(itertools.compress(batch_kept, keep))
        hashes = np.array([normalized_text_hash(text) for _, text in kept], dtype=np.uint64)
        writer.append(flat, lengths[keep], [doc_id for doc_id, _ in kept], hashes)
        if progress is not None:
            progress(len(batch), tokens=len(flat))
    return dropped_empty


def _batches(documents: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    chars = 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc[1])
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
