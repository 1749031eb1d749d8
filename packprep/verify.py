"""``packprep verify OUT``: check a finished npy output against its manifest and, optionally, its document store.

Checks, in order (docs/format.md is the contract):

1. the manifest: readable JSON, ``packprep-npy`` version 1, the keys the reader needs;
2. the document table: ``doc_lengths``, ``doc_ids``, ``doc_dropped`` with the right shapes and dtypes;
3. per shard: every listed file exists, its sha256 matches, it loads, and its shape and dtype are
   the documented ones. A shard failing here is not checked further (its arrays cannot be trusted);
4. per shard: token ids below the vocabulary size; segment boundaries (CSR by row, contiguous from
   position 0, inside the row and inside their document's sequence) and, when those hold, padding
   after each row's last segment and the separator ending each document;
5. the manifest's counts against the arrays;
6. with ``against`` (a document store): the document table is the store's, every kept document's
   pieces tile its sequence exactly once, dropped documents have none, and the tokens in the rows
   are the store's tokens. (A piece pointed at the wrong document can only be seen here.)

Everything is vectorised per shard, and token matrices are read in chunks of rows, so memory stays
bounded by the segment arrays of the corpus (a few int64 per piece) plus one chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packprep._files import StringTable, load_json, release_pages, sha256_file
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.stages.pack import concat_ranges
from packprep.store import DocStore

_CHUNK_TOKENS = 1 << 20  # tokens read per chunk: bounds the per-token index arrays of the store comparison
# Spelled out from docs/format.md rather than imported from the writer: the format is the contract.
_ARRAY_DTYPES = {
    "row_ptr": np.int64,
    "seg_start": np.int32,
    "seg_length": np.int32,
    "seg_doc": np.int64,
    "seg_doc_offset": np.int64,
}
_TOKEN_DTYPES = ("uint16", "uint32")
_LOAD_ERRORS = (ValueError, OSError, EOFError)  # what np.load raises on truncated or garbled .npy files


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an output: ``where`` names the file (and row), ``message`` says what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class _Output:
    """What the shard checks need from the manifest and the document table."""

    seq_len: int
    dtype: np.dtype
    vocab_size: int
    pad_id: int
    sep_id: int | None
    doc_lengths: np.ndarray | None  # int64 [N], None when doc_lengths.npy is unusable
    kept: np.ndarray | None  # bool [N], None when doc_dropped.npy is unusable
    problems: list[Problem] = field(default_factory=list)


def verify_output(
    out: Path, *, against: Path | None = None, progress: Callable[[int], None] | None = None
) -> list[Problem]:
    """Every problem found in the npy output ``out`` (empty: it is sound).

    ``against``: a document store folder whose tokens the output must hold exactly.
    ``progress`` is called with the number of rows just checked, once per chunk of rows.
    Raises :class:`PackprepError` when ``out`` or its manifest does not exist (or ``against``
    is not a store); everything wrong inside the output is returned, never raised.
    """
    out = Path(out)
    if not out.is_dir():
        raise PackprepError("no such output folder", path=out)
    if not (out / npy.MANIFEST_NAME).is_file():
        raise PackprepError(f"no {npy.MANIFEST_NAME}; not a finished packprep output", path=out)
    store = DocStore.open(against) if against is not None else None
    manifest, problems = _read_manifest(out)
    if manifest is None:
        return problems
    output = _open_doc_table(out, manifest)
    problems += output.problems
    if output.doc_lengths is None:
        return problems

    shards = []
    for entry in manifest["shards"]:
        arrays, shard_problems = _open_shard(out, entry, output)
        problems += shard_problems
        if arrays is not None:
            boundary_problems = _boundary_problems(entry["name"], arrays, output)
            problems += boundary_problems
            shards.append((entry["name"], arrays, not boundary_problems))
    if store is not None:
        store_problems = _store_problems(out, store, output)
        problems += store_problems
        store = None if store_problems else store
    for name, arrays, boundaries_ok in shards:
        shard_store = store if boundaries_ok else None
        problems += _token_problems(name, arrays, output, boundaries_ok=boundaries_ok, store=shard_store, progress=progress)

    complete = len(shards) == len(manifest["shards"])
    if complete:
        problems += _count_problems(manifest, [arrays for _, arrays, _ in shards], output)
    # Coverage needs only OUT's own arrays (doc_lengths, doc_dropped), so it always runs:
    # a document lost or repeated by a bad boundary array is caught without the store.
    if complete and all(ok for _, _, ok in shards) and output.kept is not None:
        problems += _coverage_problems(out, shards, output)
    return problems


def _read_manifest(out: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    where = npy.MANIFEST_NAME
    try:
        manifest = load_json(out / where)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [Problem(where, f"not valid JSON ({exc})")]
    if not isinstance(manifest, dict):
        return None, [Problem(where, "is not a JSON object")]
    if manifest.get("format") != npy.FORMAT_NAME or manifest.get("format_version") != npy.FORMAT_VERSION:
        found = f"{manifest.get('format')!r} version {manifest.get('format_version')!r}"
        return None, [Problem(where, f"format {found}; expected {npy.FORMAT_NAME!r} version {npy.FORMAT_VERSION}")]
    problems = []
    seq_len, counts, shards = manifest.get("seq_len"), manifest.get("counts"), manifest.get("shards")
    if not isinstance(seq_len, int) or seq_len <= 0:
        problems.append(Problem(where, f"seq_len {seq_len!r} is not a positive integer"))
    if manifest.get("dtype") not in _TOKEN_DTYPES:
        problems.append(Problem(where, f"dtype {manifest.get('dtype')!r} is not one of {', '.join(_TOKEN_DTYPES)}"))
    pad_id, sep_id = manifest.get("pad_id"), manifest.get("sep_id")
    if not isinstance(pad_id, int) or not isinstance(sep_id, (int, type(None))) or "sep_id" not in manifest:
        problems.append(Problem(where, f"pad_id {pad_id!r} / sep_id {sep_id!r} are not token ids"))
    tokenizer = manifest.get("tokenizer")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("vocab_size"), int):
        problems.append(Problem(where, "tokenizer.vocab_size is missing"))
    if not isinstance(counts, dict):
        problems.append(Problem(where, "counts is missing"))
    if not isinstance(shards, list) or not all(_is_shard_entry(s) for s in shards):
        expected = "{name, rows, segments, files: {array: {path, sha256}}}"
        problems.append(Problem(where, f"shards must be a list of {expected} for the arrays {', '.join(npy.SHARD_ARRAYS)}"))
    elif len({s["name"] for s in shards}) != len(shards):
        problems.append(Problem(where, "shard names repeat"))
    return (None if problems else manifest), problems


def _is_shard_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
        return False
    files = entry["files"]
    return (
        isinstance(entry.get("name"), str)
        and isinstance(entry.get("rows"), int)
        and isinstance(entry.get("segments"), int)
        and entry["rows"] >= 0
        and entry["segments"] >= 0
        and all(isinstance(files.get(key), dict) and {"path", "sha256"} <= files[key].keys() for key in npy.SHARD_ARRAYS)
    )


def _open_doc_table(out: Path, manifest: dict[str, Any]) -> _Output:
    """The document arrays, checked; ``doc_lengths`` is None when it cannot be used."""
    output = _Output(
        seq_len=manifest["seq_len"],
        dtype=np.dtype(manifest["dtype"]),
        vocab_size=manifest["tokenizer"]["vocab_size"],
        pad_id=manifest["pad_id"],
        sep_id=manifest.get("sep_id"),
        doc_lengths=None,
        kept=None,
    )
    for name, entry in manifest.get("doc_files", {}).items():
        path = out / name
        if path.is_file() and sha256_file(path) != entry["sha256"]:
            output.problems.append(Problem(name, "sha256 does not match the manifest (the file changed after it was written)"))
    lengths = _load_checked(out / "doc_lengths.npy", np.int64, None, output.problems)
    if lengths is None:
        return output
    n = len(lengths)
    if n and int(lengths.min()) <= 0:
        j = int(np.argmin(lengths))
        output.problems.append(Problem("doc_lengths.npy", f"document {j} has length {lengths[j]}; lengths must be positive"))
    idx = _load_checked(out / "doc_ids.idx.npy", np.int64, n + 1, output.problems)
    blob = out / "doc_ids.bin"
    if not blob.is_file():
        output.problems.append(Problem(blob.name, "missing"))
    elif idx is not None and (idx[0] != 0 or (np.diff(idx) < 0).any() or idx[-1] != blob.stat().st_size):
        size = blob.stat().st_size
        output.problems.append(Problem("doc_ids.idx.npy", f"offsets do not rise from 0 to doc_ids.bin's {size} bytes"))
    dropped = _load_checked(out / "doc_dropped.npy", np.uint8, n, output.problems)
    if dropped is not None:
        # Selection.reason: 0 is kept, anything else names why the document was dropped.
        output.kept = np.asarray(dropped) == 0
        counted, kept = manifest["counts"].get("num_documents"), int(output.kept.sum())
        if counted != kept:
            message = f"counts.num_documents is {counted} but doc_dropped.npy keeps {kept}"
            output.problems.append(Problem(npy.MANIFEST_NAME, message))
    _load_checked(out / "doc_dup_of.npy", np.int64, n, output.problems)
    output.doc_lengths = np.asarray(lengths)
    return output


def _load_checked(path: Path, dtype: Any, length: int | None, problems: list[Problem]) -> np.ndarray | None:
    """A 1-D .npy of ``dtype`` (and ``length``), memory-mapped; None (and a problem) otherwise."""
    if not path.is_file():
        problems.append(Problem(path.name, "missing"))
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _LOAD_ERRORS as exc:
        problems.append(Problem(path.name, f"cannot be read ({type(exc).__name__}: {exc})"))
        return None
    if array.ndim != 1 or array.dtype != np.dtype(dtype) or (length is not None and len(array) != length):
        expected = f"{np.dtype(dtype).name} [{'N' if length is None else length}]"
        problems.append(Problem(path.name, f"is {array.dtype.name} {list(array.shape)}; expected {expected}"))
        return None
    return array


def _open_shard(out: Path, entry: dict[str, Any], output: _Output) -> tuple[dict[str, np.ndarray] | None, list[Problem]]:
    """The shard's arrays when every file is present, intact and of the documented shape and dtype."""
    name, rows, segments = entry["name"], entry["rows"], entry["segments"]
    problems: list[Problem] = []
    arrays: dict[str, np.ndarray] = {}
    for key in npy.SHARD_ARRAYS:
        if key == "input_ids":
            shape, dtype = (rows, output.seq_len), output.dtype
        else:
            shape, dtype = ((rows + 1,) if key == "row_ptr" else (segments,)), np.dtype(_ARRAY_DTYPES[key])
        array = _open_shard_file(out, name, key, entry["files"][key], shape, dtype, problems)
        if array is not None:
            arrays[key] = array
    if problems:
        return None, problems
    row_ptr = np.asarray(arrays["row_ptr"])
    if row_ptr[0] != 0 or row_ptr[-1] != segments or (np.diff(row_ptr) < 0).any():
        falls = np.flatnonzero(np.diff(row_ptr) < 0)
        at = f"; it falls after row {int(falls[0])}" if len(falls) else ""
        runs = f"runs {int(row_ptr[0])}..{int(row_ptr[-1])}{at}"
        return None, [Problem(f"{name}.row_ptr.npy", f"must rise from 0 to the {segments} segments, {runs}")]
    return arrays, problems


def _open_shard_file(
    out: Path, name: str, key: str, listed: dict[str, Any], shape: tuple[int, ...], dtype: np.dtype, problems: list[Problem]
) -> np.ndarray | None:
    # The reader opens the documented name, whatever the manifest's path says, so that file is the one checked.
    path = npy.shard_file(out, name, key)
    if listed["path"] != path.name:
        problems.append(Problem(npy.MANIFEST_NAME, f"{name} lists {listed['path']!r} for {key}; readers open {path.name}"))
    if not path.is_file():
        problems.append(Problem(path.name, "missing"))
        return None
    digest = sha256_file(path)
    if digest != listed["sha256"]:
        listed_digest = str(listed["sha256"])[:16]
        problems.append(Problem(path.name, f"sha256 {digest[:16]}... does not match the manifest's {listed_digest}..."))
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _LOAD_ERRORS as exc:
        problems.append(Problem(path.name, f"cannot be read ({type(exc).__name__}: {exc})"))
        return None
    if array.shape != shape or array.dtype != dtype:
        found = f"{array.dtype.name} {list(array.shape)}"
        problems.append(Problem(path.name, f"is {found}; expected {dtype.name} {list(shape)}"))
    return array


def _boundary_problems(name: str, arrays: dict[str, np.ndarray], output: _Output) -> list[Problem]:
    """Segments of each row: contiguous from position 0, inside the row and inside their document."""
    row_ptr = np.asarray(arrays["row_ptr"])
    start = np.asarray(arrays["seg_start"], dtype=np.int64)
    length = np.asarray(arrays["seg_length"], dtype=np.int64)
    doc, offset = np.asarray(arrays["seg_doc"]), np.asarray(arrays["seg_doc_offset"])
    n, seq_len = len(output.doc_lengths), output.seq_len
    first = np.zeros(len(start), dtype=bool)
    first[row_ptr[:-1][np.diff(row_ptr) > 0]] = True
    prev_end = np.zeros(len(start), dtype=np.int64)
    prev_end[1:] = start[:-1] + length[:-1]
    prev_end[first] = 0
    known = (doc >= 0) & (doc < n)
    doc_length = np.zeros(len(doc), dtype=np.int64)
    doc_length[known] = output.doc_lengths[doc[known]]

    def placement(i: int) -> str:
        if first[i]:
            return f"the row's first segment ({i}) starts at {start[i]} instead of 0"
        how = "out of order or overlapping" if start[i] < prev_end[i] else "leaving a gap"
        return f"segment {i} starts at {start[i]} but the previous one ends at {prev_end[i]} ({how})"

    def beyond_document(i: int) -> str:
        covers = f"{offset[i]}..{offset[i] + length[i]}"
        return f"segment {i} covers {covers} of document {doc[i]}, whose sequence has {doc_length[i]} tokens"

    checks = [
        ("seg_start", start < 0, lambda i: f"segment {i} starts at {start[i]}, before the row"),
        ("seg_length", length <= 0, lambda i: f"segment {i} has length {length[i]}"),
        ("seg_length", start + length > seq_len, lambda i: f"segment {i} ends at {start[i] + length[i]} > seq_len {seq_len}"),
        ("seg_start", (start >= 0) & (start != prev_end), placement),
        ("seg_doc", ~known, lambda i: f"segment {i} points at document {doc[i]}, outside [0, {n})"),
        ("seg_doc_offset", offset < 0, lambda i: f"segment {i} has offset {offset[i]} inside its document"),
        ("seg_doc_offset", known & (offset >= 0) & (offset + length > doc_length), beyond_document),
    ]
    problems = []
    for array, broken, describe in checks:
        bad = np.flatnonzero(broken)
        if len(bad):
            i = int(bad[0])
            row = int(np.searchsorted(row_ptr, i, side="right")) - 1
            more = f" ({len(bad)} segments of this shard)" if len(bad) > 1 else ""
            problems.append(Problem(f"{name}.{array}.npy row {row}", describe(i) + more))
    return problems


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


def _token_problems(
    name: str,
    arrays: dict[str, np.ndarray],
    output: _Output,
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
    store_lengths = np.diff(store.offsets) if store is not None else None
    for r0 in range(0, rows, chunk_rows):
        r1 = min(r0 + chunk_rows, rows)
        ids = np.asarray(input_ids[r0:r1])
        row_max = ids.max(axis=1)
        too_big = np.flatnonzero(row_max >= output.vocab_size)
        tally.add("vocab", r0 + too_big, lambda k: f"token id {int(row_max[too_big[k]])} >= vocab_size {output.vocab_size}")
        if boundaries_ok:
            _check_chunk(ids, r0, arrays, output, tally, store, store_lengths)
        release_pages(input_ids)
        if progress is not None:
            progress(r1 - r0)
    return tally.problems(f"{name}.input_ids.npy")


def _check_chunk(
    ids: np.ndarray,
    r0: int,
    arrays: dict[str, np.ndarray],
    output: _Output,
    tally: _RowTally,
    store: DocStore | None,
    store_lengths: np.ndarray | None,
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
        _compare_with_store(flat, r0, seq_len, (seg_row, start, length, doc, offset), store, store_lengths, tally)


def _compare_with_store(
    flat: np.ndarray,
    r0: int,
    seq_len: int,
    segments: tuple[np.ndarray, ...],
    store: DocStore,
    store_lengths: np.ndarray,
    tally: _RowTally,
) -> None:
    """Every document token of the chunk (``flat``: its rows back to back) against the store's."""
    seg_row, start, length, doc, offset = segments
    position_in_doc = concat_ranges(offset, length)
    dst = concat_ranges(seg_row * seq_len + start, length)
    piece_doc = np.repeat(doc, length)
    # Positions past the document's tokens are its separator, checked on its own above.
    is_token = position_in_doc < store_lengths[piece_doc]
    dst, piece_doc, position_in_doc = dst[is_token], piece_doc[is_token], position_in_doc[is_token]
    expected = store.tokens[store.offsets[piece_doc] + position_in_doc]
    release_pages(store.tokens)
    actual = flat[dst]
    differ = np.flatnonzero(actual != expected)
    tally.add(
        "store",
        r0 + dst[differ] // seq_len,
        lambda k: f"token {actual[differ[k]]} at position {dst[differ[k]] % seq_len} is not the store's "
        f"{expected[differ[k]]} (document {piece_doc[differ[k]]}, offset {position_in_doc[differ[k]]})",
    )


def _store_problems(out: Path, store: DocStore, output: _Output) -> list[Problem]:
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


def _count_problems(manifest: dict[str, Any], shards: list[dict[str, np.ndarray]], output: _Output) -> list[Problem]:
    rows = sum(len(arrays["input_ids"]) for arrays in shards)
    tokens = sum(int(np.asarray(arrays["seg_length"], dtype=np.int64).sum()) for arrays in shards)
    actual = {
        "num_sequences": rows,
        "num_tokens": tokens,
        "num_segments": sum(len(arrays["seg_start"]) for arrays in shards),
        "pad_tokens": rows * output.seq_len - tokens,
    }
    counts = manifest["counts"]
    return [
        Problem(npy.MANIFEST_NAME, f"counts.{key} is {counts.get(key)!r} but the shards hold {value}")
        for key, value in actual.items()
        if counts.get(key) != value and (key in counts or key != "pad_tokens")
    ]


def _coverage_problems(out: Path, shards: list[tuple[str, dict[str, np.ndarray], bool]], output: _Output) -> list[Problem]:
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
        except _LOAD_ERRORS:
            self.table = None

    def __call__(self, j: int) -> str:
        try:
            return f"{j} ({self.table[j]!r})" if self.table is not None else str(j)
        except (IndexError, UnicodeDecodeError):
            return str(j)
