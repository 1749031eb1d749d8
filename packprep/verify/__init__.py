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
7. when the npy output is sound: the converted copies ``OUT/arrow`` and ``OUT/megatron``, when
   present, hold exactly the rows' tokens and boundaries (``check_arrow``/``check_megatron``, each
   beside its writer in ``packprep.formats``).

This module checks the structure (1-3, the boundaries of 4, and 5); the checks of what the rows hold
(tokens, padding, separators, coverage, the store) are in :mod:`packprep.verify.contents`.

Everything is vectorised per shard, and token matrices are read in chunks of rows, so memory stays
bounded by the segment arrays of the corpus (a few int64 per piece) plus one chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import load_json, sha256_file
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.store import DocStore
from packprep.verify.contents import LOAD_ERRORS, Output, Problem, coverage_problems, store_problems, token_problems

__all__ = ["Problem", "verify_output"]

# Spelled out from docs/format.md rather than imported from the writer: the format is the contract.
_ARRAY_DTYPES = {
    "row_ptr": np.int64,
    "seg_start": np.int32,
    "seg_length": np.int32,
    "seg_doc": np.int64,
    "seg_doc_offset": np.int64,
}
_TOKEN_DTYPES = ("uint16", "uint32")



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
        table_problems = store_problems(out, store, output)
        problems += table_problems
        store = None if table_problems else store
    for name, arrays, boundaries_ok in shards:
        shard_store = store if boundaries_ok else None
        problems += token_problems(name, arrays, output, boundaries_ok=boundaries_ok, store=shard_store, progress=progress)

    complete = len(shards) == len(manifest["shards"])
    if complete:
        problems += _count_problems(manifest, [arrays for _, arrays, _ in shards], output)
    # Coverage needs only OUT's own arrays (doc_lengths, doc_dropped), so it always runs:
    # a document lost or repeated by a bad boundary array is caught without the store.
    if complete and all(ok for _, _, ok in shards) and output.kept is not None:
        problems += coverage_problems(out, shards, output)
    if not problems:  # the copies are compared with the shards, so only sound shards can judge them
        problems += converted_problems(out)
    return problems


def converted_problems(out: Path) -> list[Problem]:
    """The converted copies in ``OUT/<format>`` (``formats.CONVERSIONS``, when present) against the npy shards."""
    from packprep.formats import CONVERSIONS

    problems = []
    for dirname, conversion in CONVERSIONS.items():
        dest = out / dirname
        if not dest.is_dir():
            continue
        try:
            found = conversion.check(out, dest)
        except (*LOAD_ERRORS, KeyError, TypeError, IndexError) as exc:
            found = [("", f"cannot be read ({type(exc).__name__}: {exc})")]
        problems += [Problem(f"{dirname}/{where}".rstrip("/"), message) for where, message in found]
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


def _open_doc_table(out: Path, manifest: dict[str, Any]) -> Output:
    """The document arrays, checked; ``doc_lengths`` is None when it cannot be used."""
    output = Output(
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
    except LOAD_ERRORS as exc:
        problems.append(Problem(path.name, f"cannot be read ({type(exc).__name__}: {exc})"))
        return None
    if array.ndim != 1 or array.dtype != np.dtype(dtype) or (length is not None and len(array) != length):
        expected = f"{np.dtype(dtype).name} [{'N' if length is None else length}]"
        problems.append(Problem(path.name, f"is {array.dtype.name} {list(array.shape)}; expected {expected}"))
        return None
    return array


def _open_shard(out: Path, entry: dict[str, Any], output: Output) -> tuple[dict[str, np.ndarray] | None, list[Problem]]:
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
    except LOAD_ERRORS as exc:
        problems.append(Problem(path.name, f"cannot be read ({type(exc).__name__}: {exc})"))
        return None
    if array.shape != shape or array.dtype != dtype:
        found = f"{array.dtype.name} {list(array.shape)}"
        problems.append(Problem(path.name, f"is {found}; expected {dtype.name} {list(shape)}"))
    return array


def _boundary_problems(name: str, arrays: dict[str, np.ndarray], output: Output) -> list[Problem]:
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

def _count_problems(manifest: dict[str, Any], shards: list[dict[str, np.ndarray]], output: Output) -> list[Problem]:
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
