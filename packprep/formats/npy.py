"""The ``npy`` output format: writer and reader side by side (numpy + stdlib only).

Layout of an output folder (format ``packprep-npy``, version 1; docs/format.md)::

    OUT/
      manifest.json                    written last; lists shards with sha256 of every file
      doc_ids.bin, doc_ids.idx.npy     StringTable: source id of document j (j = doc index)
      doc_lengths.npy                  int64 [N]: length of document j's sequence (tokens + separator)
      shard-00000.input_ids.npy        [rows, seq_len] uint16|uint32 token matrix
      shard-00000.row_ptr.npy          int64 [rows+1]: segments of row r are seg_*[row_ptr[r]:row_ptr[r+1]]
      shard-00000.seg_start.npy        int32 [segments]: where the piece starts inside its row
      shard-00000.seg_length.npy       int32 [segments]: its length
      shard-00000.seg_doc.npy          int64 [segments]: its document index (into doc_ids)
      shard-00000.seg_doc_offset.npy   int64 [segments]: offset inside that document's sequence
      shard-00001.*                    ...

Positions of a row after its last segment are padding. Every array is a plain
``.npy`` so any language with a .npy reader can memory-map it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import RenameBatch, atomic_path, load_json, npy_writer, release_pages, renamed_together, save_json, save_npy, sha256_file, start_writeback
from packprep.stages.pack import PackPlan, fill_rows, piece_token_spans

FORMAT_NAME = "packprep-npy"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "manifest.partial.json"  # shards finished so far by a run that has not written its manifest
DOC_FILES = ("doc_ids.bin", "doc_ids.idx.npy", "doc_lengths.npy", "doc_dropped.npy", "doc_dup_of.npy")
SEGMENT_ARRAYS = ("row_ptr", "seg_start", "seg_length", "seg_doc", "seg_doc_offset")
SHARD_ARRAYS = ("input_ids", *SEGMENT_ARRAYS)
_SEGMENT_DTYPES = {
    "seg_start": np.int32,
    "seg_length": np.int32,
    "seg_doc": np.int64,
    "seg_doc_offset": np.int64,
}
_FILL_CHUNK_TOKENS = 1 << 19  # rows filled per chunk (~512K tokens): bounds the two row buffers and the index arrays


def default_rows_per_shard(seq_len: int, dtype: np.dtype, target_bytes: int = 256 << 20) -> int:
    return max(1, target_bytes // (seq_len * np.dtype(dtype).itemsize))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_file(out: Path, shard: str, array: str) -> Path:
    return Path(out) / f"{shard}.{array}.npy"


def write_shard(
    out: Path,
    index: int,
    plan: PackPlan,
    rows: slice,
    *,
    read_spans: Callable[[np.ndarray, np.ndarray], np.ndarray],
    offsets: np.ndarray,
    dtype: np.dtype,
    sep_id: int | None,
    pad_id: int,
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write rows ``rows`` of ``plan`` as shard ``index``; return its manifest entry.

    ``read_spans(starts, lengths)`` returns store tokens (``DocStore.read_spans``);
    ``offsets`` are the store's document offsets. The token matrix is filled a chunk of
    rows at a time (never whole in RAM), each chunk reading just the token spans its
    pieces hold, and written behind its ``.npy`` header in order; each file is written
    under a temporary name first.
    """
    name = shard_name(index)
    # The shard's files reach the disk together (io.RenameBatch): one wait for all six.
    with renamed_together() as batch:
        checksums = _write_shard_files(out, name, plan, rows, read_spans, offsets, dtype, sep_id, pad_id, on_rows, batch)
    for key in SEGMENT_ARRAYS:
        checksums[key] = sha256_file(shard_file(out, name, key))
    files = {key: {"path": shard_file(out, name, key).name, "sha256": checksums[key]} for key in SHARD_ARRAYS}
    segments = int(plan.row_ptr[rows.stop]) - int(plan.row_ptr[rows.start])
    return {"name": name, "rows": rows.stop - rows.start, "segments": segments, "files": files}


def _write_shard_files(
    out: Path, name: str, plan: PackPlan, rows: slice, read_spans: Callable[[np.ndarray, np.ndarray], np.ndarray],
    offsets: np.ndarray, dtype: Any, sep_id: int | None, pad_id: int, on_rows: Callable[[int], None] | None, batch: RenameBatch,
) -> dict[str, str]:
    """:func:`write_shard`'s files under temporary names in ``batch``; returns the token matrix's sha256."""
    num_rows = rows.stop - rows.start
    path = shard_file(out, name, "input_ids")
    chunk = max(1, _FILL_CHUNK_TOKENS // plan.seq_len)
    # Rows are filled into two buffers in turn while a thread writes and hashes the other
    # (file writes and sha256 release the GIL): no memory map to flush chunk by chunk, and
    # no reading the matrix back for its checksum (together ~0.4 s per 100 MB, on one core).
    buffers = [np.empty((min(chunk, num_rows), plan.seq_len), dtype=dtype) for _ in range(2)]
    header = _npy_header(dtype, (num_rows, plan.seq_len))
    digest = hashlib.sha256(header)
    with atomic_path(path, batch=batch) as tmp, open(tmp, "wb") as fh, ThreadPoolExecutor(1) as thread:
        fh.write(header)
        _reserve(fh, len(header) + num_rows * plan.seq_len * np.dtype(dtype).itemsize, tmp)
        written: list[Future | None] = [None, None]
        for turn, r in enumerate(range(rows.start, rows.stop, chunk)):
            r_end = min(r + chunk, rows.stop)
            if written[turn % 2] is not None:
                written[turn % 2].result()  # that buffer is free again
            block = buffers[turn % 2][: r_end - r]
            pieces, tokens, piece_offsets = _chunk_pieces(plan, r, r_end, read_spans=read_spans, offsets=offsets)
            fill_rows(pieces, slice(0, r_end - r), tokens=tokens, offsets=piece_offsets, sep_id=sep_id, pad_id=pad_id, out=block)
            written[turn % 2] = thread.submit(_write_and_hash, fh, digest, block)
            if on_rows:
                on_rows(r_end - r)
        for future in written:
            if future is not None:
                future.result()
        fh.flush()
    s0, s1 = int(plan.row_ptr[rows.start]), int(plan.row_ptr[rows.stop])
    arrays = {"row_ptr": plan.row_ptr[rows.start : rows.stop + 1] - s0}
    for key, dt in _SEGMENT_DTYPES.items():
        arrays[key] = getattr(plan, key)[s0:s1].astype(dt)
    for key, array in arrays.items():
        save_npy(shard_file(out, name, key), array, batch=batch)
    return {"input_ids": digest.hexdigest()}


def _chunk_pieces(
    plan: PackPlan, r0: int, r1: int, *, read_spans: Callable[[np.ndarray, np.ndarray], np.ndarray], offsets: np.ndarray
) -> tuple[PackPlan, np.ndarray, np.ndarray]:
    """Rows ``r0:r1`` as a plan of their own in which every piece is a document of its own.

    Returns that plan, the tokens of the pieces back to back, and their offsets: the
    piece's real tokens only, so positions past them are the separator, exactly as in
    the full plan. Only the tokens these rows need are read.
    """
    s0, s1 = int(plan.row_ptr[r0]), int(plan.row_ptr[r1])
    doc, doc_offset, length = plan.seg_doc[s0:s1], plan.seg_doc_offset[s0:s1], plan.seg_length[s0:s1]
    span_start, real = piece_token_spans(doc, doc_offset, length, offsets)  # the rest of a piece is the separator
    tokens = read_spans(span_start, real)
    piece_offsets = np.zeros(len(real) + 1, dtype=np.int64)
    np.cumsum(real, out=piece_offsets[1:])
    pieces = PackPlan(
        seq_len=plan.seq_len,
        row_ptr=plan.row_ptr[r0 : r1 + 1] - s0,
        seg_start=plan.seg_start[s0:s1],
        seg_length=length,
        seg_doc=np.arange(s1 - s0, dtype=np.int64),
        seg_doc_offset=np.zeros(s1 - s0, dtype=np.int64),
    )
    return pieces, tokens, piece_offsets


def _write_and_hash(fh: Any, digest: Any, block: np.ndarray) -> None:
    data = memoryview(block).cast("B")
    start = fh.tell()
    fh.write(data)
    start_writeback(fh, start)  # the fsync before the rename then waits for the last block only
    digest.update(data)


def _npy_header(dtype: np.dtype, shape: tuple[int, int]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-order array of ``shape`` and ``dtype``."""
    header = io.BytesIO()
    format_1_0 = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(header, format_1_0)
    return header.getvalue()


def _reserve(fh: Any, size: int, path: Path) -> None:
    """Allocate the file's ``size`` bytes now: on a full disk this raises ENOSPC here, before
    any row is filled."""
    if hasattr(os, "posix_fallocate"):
        fh.flush()
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
            # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; writes stay lazy.


def save_journal(out: Path, key: str, shards: list[dict[str, Any]]) -> None:
    """Start the shard journal of a run with ``key``, listing ``shards`` (entries of finished shards, any order).

    The journal is JSON lines: the key, then one shard entry per line, appended by
    :func:`journal_shard` as each shard finishes (an append per shard, not a rewrite of
    every entry: thousands of shards would make rewriting quadratic).
    """
    with atomic_path(Path(out) / JOURNAL_NAME) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in [{"key": key}, *shards]))


def journal_shard(out: Path, entry: dict[str, Any]) -> None:
    """Append a finished shard's ``entry`` to the journal :func:`save_journal` started, on disk before returning."""
    with open(Path(out) / JOURNAL_NAME, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def finished_shards(out: Path, key: str) -> list[dict[str, Any]]:
    """Shards that an interrupted run with the same ``key`` finished, each re-checked against its sha256.

    Every intact shard is reused, wherever it lies: shards are written in parallel, so the
    finished ones need not be a prefix (a gap is a shard that was still being written).
    A shard whose files were touched since (checksum mismatch) is left out and written again.
    """
    path = Path(out) / JOURNAL_NAME
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break  # a line torn by a kill mid-append: the ones before it stand
    if not entries or entries[0].get("key") != key:
        return []
    intact = []
    for entry in entries[1:]:
        try:
            files = [Path(out) / entry["files"][a]["path"] for a in SHARD_ARRAYS]
        except (KeyError, TypeError):
            continue
        if not all(f.is_file() for f in files):
            continue
        if any(sha256_file(f) != entry["files"][a]["sha256"] for f, a in zip(files, SHARD_ARRAYS)):
            continue
        intact.append(entry)
    return intact


# Documents per slice when the per-document files are written: 8 MB of int64, then the sources' mapped pages are let go.
_DOC_CHUNK = 1 << 20


def write_doc_table(
    out: Path, *, ids_from: Path, offsets: np.ndarray, sep_len: int, reason: np.ndarray, dup_of: np.ndarray
) -> dict[str, Any]:
    """Write the per-document files; return their manifest entries (name -> sha256).

    ``ids_from``: the StringTable stem of the store's ids (``WORK/doc_ids``), copied as is.
    ``offsets`` (int64 [N+1], the store's): ``doc_lengths`` is each document's tokens plus
    ``sep_len``. ``reason`` (uint8 [N]) and ``dup_of`` (int64 [N]) are written as they are.
    Each file is written a slice at a time from its sources (memmaps, or broadcast constants),
    whose pages are let go after each slice: no array of all N documents is made here.
    """
    out = Path(out)
    with renamed_together() as batch:  # the five files reach the disk together (io.RenameBatch)
        for suffix in (".bin", ".idx.npy"):
            with atomic_path(out / f"doc_ids{suffix}", batch=batch) as tmp:
                shutil.copyfile(f"{ids_from}{suffix}", tmp)
        n = len(offsets) - 1
        columns: dict[str, tuple[np.ndarray, Any, Callable[[int, int], np.ndarray]]] = {
            "doc_lengths.npy": (offsets, np.int64, lambda a, b: np.diff(offsets[a : b + 1]) + sep_len),
            "doc_dropped.npy": (reason, reason.dtype, lambda a, b: reason[a:b]),
            "doc_dup_of.npy": (dup_of, dup_of.dtype, lambda a, b: dup_of[a:b]),
        }
        for name, (source, dtype, piece) in columns.items():
            with npy_writer(out / name, dtype=dtype, length=n, batch=batch) as write:
                for start in range(0, n, _DOC_CHUNK):
                    write(piece(start, min(start + _DOC_CHUNK, n)))
                    release_pages(source)
    return {name: {"sha256": sha256_file(out / name)} for name in DOC_FILES}


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    save_json(Path(out) / MANIFEST_NAME, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest})


def read_manifest(out: Path) -> dict[str, Any]:
    """Load and check the manifest; ``ValueError`` for anything this version cannot read."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {MANIFEST_NAME}; not a finished packprep output")
    manifest = load_json(path)
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {manifest.get('format_version')!r} is not supported "
            f"(this packprep reads version {FORMAT_VERSION}); upgrade packprep"
        )
    return manifest


@dataclass(frozen=True)
class Shard:
    """One shard's arrays, memory-mapped."""

    input_ids: np.ndarray
    row_ptr: np.ndarray
    seg_start: np.ndarray
    seg_length: np.ndarray
    seg_doc: np.ndarray
    seg_doc_offset: np.ndarray

    @classmethod
    def open(cls, out: Path, name: str) -> Shard:
        # Plain ndarray views of the maps (the mapping stays alive as their base): indexing
        # an np.memmap pays for its subclass hooks on every access.
        return cls(**{key: np.load(shard_file(out, name, key), mmap_mode="r").view(np.ndarray) for key in SHARD_ARRAYS})
