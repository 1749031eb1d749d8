"""The tokenize stage: ``(id, text)`` pairs into flat token batches, with the text hash exact dedup reads.

The engines read the corpus (``corpus.read_source``) and give the documents to
:func:`tokenize_into`, which appends batches to a ``store.DocStoreWriter``: the same
batches, tokens and hashes on every engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from packprep.stages.dedup import NormalizedTextHasher, normalized_text_hash

_BATCH_DOCS = 2048
_BATCH_CHARS = 8 << 20  # ~8 MB of text per tokenizer call keeps memory flat with huge documents


def tokenize_into(
    writer: Any, documents: Iterable[tuple[str, Any]], tokenizer: Any, *, hash_texts: bool = True, progress: Any = None,
    encode_stream: Callable[[Iterable[str]], Iterable[np.ndarray]] | None = None,
) -> int:
    """Tokenize ``(id, text)`` pairs batch by batch into ``writer``; return how many were empty.

    ``writer``: anything with ``DocStoreWriter.append``'s signature. Every engine's batches
    go through :func:`tokenize_batch`, so the store is the same whoever ran it. A text that
    is not a str (a huge one read piece by piece) goes through :func:`tokenize_pieces` with
    ``encode_stream``, its tokens to ``writer.append_tokens`` as they come.
    """
    dropped_empty = 0
    for batch in batches(documents):
        flat, lengths, ids, hashes, dropped = tokenize_listed(
            batch, tokenizer.encode_batch, encode_stream=encode_stream, emit=writer.append_tokens, hash_texts=hash_texts
        )
        dropped_empty += dropped
        writer.append(flat, lengths, ids, hashes)
        if progress is not None:
            progress(len(batch), tokens=len(flat))
    return dropped_empty


def tokenize_listed(
    batch: list[tuple[str, Any]], encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]], *,
    encode_stream: Callable[[Iterable[str]], Iterable[np.ndarray]] | None, emit: Callable[[np.ndarray], None],
    hash_texts: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, int]:
    """A list from :func:`batches`: :func:`tokenize_batch`, or :func:`tokenize_pieces` (tokens to
    ``emit``) for the huge text that comes alone in its list. Every engine's lists go through here."""
    if len(batch) == 1 and not isinstance(batch[0][1], str):
        (doc_id, text), = batch
        return tokenize_pieces(doc_id, text, encode_stream, emit, hash_texts=hash_texts)
    return tokenize_batch(batch, encode, hash_texts=hash_texts)


def tokenize_batch(
    batch: list[tuple[str, str]], encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]], *, hash_texts: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, int]:
    """One batch of ``(id, text)`` as the store keeps it: ``(tokens, lengths, ids, text_hash, dropped)``.

    ``encode``: a tokenizer's ``encode_batch`` (flat uint32 ids, int64 lengths). Empty documents
    (no text, only whitespace, or no tokens) are dropped and counted in ``dropped``; the kept
    ones give flat uint32 ``tokens`` [T], int64 ``lengths`` [K], ``ids`` [K] and the uint64
    ``text_hash`` [K] of their normalised text, which exact dedup uses later (None unless
    ``hash_texts``: ~0.15 of the tokenize work, spent only when a dedup will read it).
    """
    # A whitespace-only text tokenizes to a few space tokens: a document with nothing to learn from.
    kept = [(doc_id, text) for doc_id, text in batch if text and not text.isspace()]
    flat, lengths = encode([text for _, text in kept])
    keep = lengths > 0
    kept = list(itertools.compress(kept, keep))
    hashes = None
    if hash_texts:
        hashes = np.fromiter((normalized_text_hash(text) for _, text in kept), dtype=np.uint64, count=len(kept))
    return flat, lengths[keep], [doc_id for doc_id, _ in kept], hashes, len(batch) - len(kept)


def batches(documents: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """``documents`` in lists of at most _BATCH_DOCS documents or about _BATCH_CHARS characters;
    a text that is not a str (``json_text.JsonText``) comes alone in its list."""
    batch: list[tuple[str, str]] = []
    chars = 0
    for doc in documents:
        if not isinstance(doc[1], str):  # a huge text read piece by piece: alone, for tokenize_pieces
            if batch:
                yield batch
                batch, chars = [], 0
            yield [doc]
            continue
        batch.append(doc)
        chars += len(doc[1])
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenize_pieces(
    doc_id: str,
    text: Any,
    encode_stream: Callable[[Iterable[str]], Iterable[np.ndarray]],
    emit: Callable[[np.ndarray], None],
    *,
    hash_texts: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None, int]:
    """:func:`tokenize_batch` of one document too big to hold as one str, its tokens given to ``emit`` as they come.

    ``text``: ``pieces()`` (str, in order), ``isspace()`` and ``len()`` of the whole text
    (``json_text.JsonText``). ``encode_stream``: pieces in, flat uint32 ids out, together the
    ids of the whole text (``tokenizers.text_cuts.encode_stream``). Each array goes to
    ``emit`` (``DocStoreWriter.append_tokens``) before the next is made, so no process
    holds the document's ids whole. Returns the batch that ends the document: no tokens,
    its length, id and hash (None unless ``hash_texts``); or nothing kept (``dropped`` 1)
    for a blank text, before any ``emit``.
    """
    no_tokens = np.zeros(0, dtype=np.uint32)
    nothing = no_tokens, np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.uint64) if hash_texts else None, 1
    if not len(text) or text.isspace():
        return nothing
    hasher = NormalizedTextHasher() if hash_texts else None

    def hashed() -> Iterator[str]:
        for piece in text.pieces():
            if hasher is not None:
                hasher.update(piece)
            yield piece

    total = 0
    for tokens in encode_stream(hashed()):
        emit(tokens)
        total += len(tokens)
    if total == 0:  # as tokenize_batch drops a text without tokens (none was emitted)
        return nothing
    hashes = np.array([hasher.intdigest()], dtype=np.uint64) if hasher is not None else None
    return no_tokens, np.array([total], dtype=np.int64), [doc_id], hashes, 0
