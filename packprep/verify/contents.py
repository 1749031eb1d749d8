"""The content checks of ``packprep verify``: what the rows hold, against the document table and the store.

``verify`` (this package's ``__init__``) checks the structure (manifest, document table, shard files, segment boundaries) and
calls these once it holds:

- :func:`token_problems`, per shard and per chunk of rows: token ids below the vocabulary and, with
  sound boundaries, padding after each row's last segment, the separator ending each document and,
  with a store, the store's tokens at every document position;
- :func:`store_problems`: the document table is the store's (same documents, ids and lengths);
- :func:`coverage_problems`: every kept document's pieces tile its sequence exactly once and dropped
  documents have none.

:class:`Problem` and :class:`Output` live here, below ``verify/__init__.py``, so that the two modules do not
import each other; ``packprep.verify`` re-exports ``Problem``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import StringTable, release_pages, sha256_file
from packprep.stages.pack import concat_ranges, piece_token_spans
from packprep.store import DocStore

_CHUNK_TOKENS = 1 << 20  # tokens read per chunk: bounds the per-token index arrays of the store comparison
LOAD_ERRORS = (ValueError, OSError, EOFError)  # what np.load raises on truncated or garbled .npy files

@dataclass(frozen=True)
class Problem:
    """One thing wrong with an output: ``where`` names the file (and row), ``message`` says what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Output:
    """What the shard checks need from the manifest and the document table."""

    seq_len: int
    dtype: np.dtype
    vocab_size: int
    pad_id: int
    sep_id: int | None
    doc_lengths: np.ndarray | None  # int64 [N], None when doc_lengths.npy is unusable
    kept: np.ndarray | None  # bool [N], None when doc_dropped.npy is unusable
    problems: list[Problem] = field(default_factory=list)


class _RowTally:
    """The first row and the number of rows failing each token check, across chunks."""

    def __init__(self) -> None:
        self.found: dict[str, list[Any]] = {}

    def add(self, check: str, rows: np.ndarray, describe: Callable[[int], str]) -> None:
        if not len(rows):
            return
        entry = self.found.setdefault(check, [None, None, 0])
        if entry[0] is None:
            entry[0], entry[1] = int(rows[0]), describe(0)
        entry[2] += len(np.unique(rows))

    def problems(self, where: str) -> list[Problem]:
        return [
            Problem(f"{where} row {row}", message + (f" ({count} rows of this shard)" if count > 1 else ""))
            for row, message, count in self.found.values()
        ]


def token_problems(
    name: str,
    arrays: dict[str, np.ndarray],
    output: Output,
    *,
    boundaries_ok: bool,
    store: DocStore | None,
    progress: Callable[[int], None] | None,
) -> list[Problem]:
    """Token ids below the vocabulary; with sound boundaries also padding, separators and the store's tokens."""
    input_ids = arrays["input_ids"]
    rows, seq_len = input_ids.shape
    tally = _RowTally()
    chunk_rows = max(1, _CHUNK_TOKENS // seq_len)
    for r0 in range(0, rows, chunk_rows):
        r1 = min(r0 + chunk_rows, rows)
        ids = np.asarray(input_ids[r0:r1])
        row_max = ids.max(axis=1)
        too_big = np.flatnonzero(row_max >= output.vocab_size)
        tally.add("vocab", r0 + too_big, lambda k: f"token id {int(row_max[too_big[k]])} >= vocab_size {output.vocab_size}")
        if boundaries_ok:
            _check_chunk(ids, r0, arrays, output, tally, store)
        release_pages(input_ids)
        if progress is not None:
            progress(r1 - r0)
    return tally.problems(f"{name}.input_ids.npy")


def _check_chunk(
    ids: np.ndarray,
    r0: int,
    arrays: dict[str, np.ndarray],
    output: Output,
    tally: _RowTally,
    store: DocStore | None,
) -> None:
    """Padding after each row's last segment, a separator ending each document, the store's tokens."""
    num_rows, seq_len = ids.shape
    row_ptr = np.asarray(arrays["row_ptr"][r0 : r0 + num_rows + 1])
    s0, s1 = int(row_ptr[0]), int(row_ptr[-1])
    start = np.asarray(arrays["seg_start"][s0:s1], dtype=np.int64)
    length = np.asarray(arrays["seg_length"][s0:s1], dtype=np.int64)
    doc, offset = np.asarray(arrays["seg_doc"][s0:s1]), np.asarray(arrays["seg_doc_offset"][s0:s1])
    seg_row = np.repeat(np.arange(num_rows), np.diff(row_ptr))
    flat = ids.reshape(-1)

    fill = np.zeros(num_rows, dtype=np.int64)
    has_segments = np.diff(row_ptr) > 0
    fill[has_segments] = (start + length)[row_ptr[1:][has_segments] - 1 - s0]
    bad_pad = np.flatnonzero(((ids != output.pad_id) & (np.arange(seq_len) >= fill[:, None])).any(axis=1))
    tally.add("padding", r0 + bad_pad, lambda k: f"positions from {fill[bad_pad[k]]} on should be padding ({output.pad_id})")

    if output.sep_id is not None:
        ends = np.flatnonzero(offset + length == output.doc_lengths[doc])
        at = seg_row[ends] * seq_len + start[ends] + length[ends] - 1
        wrong = np.flatnonzero(flat[at] != output.sep_id)
        tally.add(
            "separator",
            r0 + at[wrong] // seq_len,
            lambda k: f"document {doc[ends[wrong[k]]]} ends with token {flat[at[wrong[k]]]} at position "
            f"{at[wrong[k]] % seq_len}, not the separator {output.sep_id}",
        )
    if store is not None:
        _compare_with_store(flat, r0, seq_len, (seg_row, start, length, doc, offset), store, tally)


def _compare_with_store(
    flat: np.ndarray,
    r0: int,
    seq_len: int,
    segments: tuple[np.ndarray, ...],
    store: DocStore,
    tally: _RowTally,
) -> None:
    """Every document token of the chunk (``flat``: its rows back to back) against the store's.

    Only the pieces' real tokens are read (with pread, like the shard writer); the
    separator part of a piece is checked on its own above.
    """
    seg_row, start, length, doc, offset = segments
    span_start, real = piece_token_spans(doc, offset, length, store.offsets)
    expected = store.read_spans(span_start, real)
    dst = concat_ranges(seg_row * seq_len + start, real)
    piece_doc = np.repeat(doc, real)
    position_in_doc = concat_ranges(offset, real)
    actual = flat[dst]
    differ = np.flatnonzero(actual != expected)
    tally.add(
        "store",
        r0 + dst[differ] // seq_len,
        lambda k: f"token {actual[differ[k]]} at position {dst[differ[k]] % seq_len} is not the store's "
        f"{expected[differ[k]]} (document {piece_doc[differ[k]]}, offset {position_in_doc[differ[k]]})",
    )


def store_problems(out: Path, store: DocStore, output: Output) -> list[Problem]:
    """The document table must be the store's: same documents, same ids, lengths = tokens + separator."""
    n = len(output.doc_lengths)
    if store.num_documents != n:
        return [Problem("doc_lengths.npy", f"{n} documents, but the store at {store.path} has {store.num_documents}")]
    problems = []
    expected = store.lengths() + (0 if output.sep_id is None else 1)
    differ = np.flatnonzero(expected != output.doc_lengths)
    if len(differ):
        j = int(differ[0])
        problems.append(
            Problem(
                "doc_lengths.npy",
                f"document {j} has length {output.doc_lengths[j]}, the store's tokens plus separator make "
                f"{expected[j]} ({len(differ)} documents differ)",
            )
        )
    for name in ("doc_ids.bin", "doc_ids.idx.npy"):
        if (out / name).is_file() and sha256_file(out / name) != sha256_file(store.path / name):
            problems.append(Problem(name, f"differs from the store's {store.path / name}"))
    return problems



def coverage_problems(out: Path, shards: list[tuple[str, dict[str, np.ndarray], bool]], output: Output) -> list[Problem]:
    """Every kept document's pieces tile [0, doc_lengths[j]) exactly once; dropped documents have none."""
    doc, offset, length, shard, row = _pieces_by_document([arrays for _, arrays, _ in shards])
    first = np.ones(len(doc), dtype=bool)
    first[1:] = doc[1:] != doc[:-1]
    last = np.ones(len(doc), dtype=bool)
    last[:-1] = first[1:]
    prev_end = np.zeros(len(doc), dtype=np.int64)
    prev_end[1:] = offset[:-1] + length[:-1]
    prev_end[first] = 0
    end = offset + length
    pieces = np.bincount(doc, minlength=len(output.doc_lengths))
    names = _DocNames(out)

    def at(i: int) -> str:
        return f"{shards[shard[i]][0]} row {row[i]}"

    problems = []
    missing = np.flatnonzero(output.kept & (pieces == 0))
    if len(missing):
        message = f"kept but in no row ({len(missing)} kept documents missing)"
        problems.append(Problem(f"document {names(int(missing[0]))}", message))
    dropped = np.flatnonzero(~output.kept & (pieces > 0))
    if len(dropped):
        j = int(dropped[0])
        message = f"dropped but has {pieces[j]} pieces in the rows ({len(dropped)} such documents)"
        problems.append(Problem(f"document {names(j)}", message))
    def repeated(i: int) -> str:
        return f"repeats offsets {offset[i]}..{min(prev_end[i], end[i])} held in {at(i - 1)} too: it appears more than once"

    def short(i: int) -> str:
        return f"pieces end at offset {end[i]} of {output.doc_lengths[doc[i]]}: the tail is missing"

    for broken, describe in [
        (offset < prev_end, repeated),
        (offset > prev_end, lambda i: f"no piece holds offsets {prev_end[i]}..{offset[i]}"),
        (last & (end < output.doc_lengths[doc]), short),
    ]:
        bad = np.flatnonzero(broken)
        if len(bad):
            i = int(bad[0])
            more = f" ({len(np.unique(doc[bad]))} documents)" if len(bad) > 1 else ""
            problems.append(Problem(at(i), f"document {names(int(doc[i]))} {describe(i)}{more}"))
    return problems


def _pieces_by_document(shards: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """(doc, offset, length, shard, row) of every segment, int64 [S] each, sorted by document then offset."""
    columns: list[list[np.ndarray]] = [[], [], [], [], []]
    for k, arrays in enumerate(shards):
        row_ptr = np.asarray(arrays["row_ptr"])
        seg_row = np.repeat(np.arange(len(row_ptr) - 1), np.diff(row_ptr))
        values = (arrays["seg_doc"], arrays["seg_doc_offset"], arrays["seg_length"], np.full(len(seg_row), k), seg_row)
        for column, value in zip(columns, values):
            column.append(np.asarray(value, dtype=np.int64))
    flat = [np.concatenate(column) if column else np.zeros(0, np.int64) for column in columns]
    order = np.lexsort((flat[1], flat[0]))
    return tuple(column[order] for column in flat)


class _DocNames:
    """``names(j)``: "document j ('source id')", or just the index when the id table is unreadable."""

    def __init__(self, out: Path) -> None:
        try:
            self.table: StringTable | None = StringTable(out / "doc_ids")
        except LOAD_ERRORS:
            self.table = None

    def __call__(self, j: int) -> str:
        try:
            return f"{j} ({self.table[j]!r})" if self.table is not None else str(j)
        except (IndexError, UnicodeDecodeError):
            return str(j)
