"""The ``megatron`` output format: Megatron-LM's indexed dataset (``<prefix>.bin`` + ``<prefix>.idx``).

Megatron's GPTDataset packs sequences itself, so this format holds one sequence per
kept document, in packing order (the order in which documents first appear in the
packed rows), each the document's tokens plus the separator when the output has one.
The tokens are read back from the packed rows, not from the document store, so the
conversion works after ``OUT/work`` is deleted and matches the rows token for token.

Layout written by :func:`write_megatron` (format ``packprep-megatron``, version 1)::

    DEST/                          (default OUT/megatron/)
      text_document.bin            the sequences back to back, raw tokens (uint16, or int32 for larger vocabularies)
      text_document.idx            the index, below
      doc_index.npy                int64 [n]: packprep document index of sequence i (into OUT/doc_ids)
      packprep.json                format, version, source key, counts (written last)

``.idx`` layout, little-endian, as ``megatron/core/datasets/indexed_dataset.py``
(``_IndexWriter``/``_IndexReader``, NVIDIA/Megatron-LM, read at d98e8a6) writes it:

| bytes        | field                                                                 |
| ------------ | --------------------------------------------------------------------- |
| 9            | magic ``b"MMIDIDX\\x00\\x00"``                                          |
| 8  (<Q)      | version, 1                                                            |
| 1  (<B)      | dtype code (DTYPE_CODES): uint8 1, int8 2, int16 3, int32 4, int64 5, float64 6, float32 7, uint16 8 |
| 8  (<Q)      | sequence_count n                                                      |
| 8  (<Q)      | document_count: n + 1 here (entries of document_indices)              |
| 4 n          | sequence_lengths int32, in tokens                                     |
| 8 n          | sequence_pointers int64, byte offsets into ``.bin``                   |
| 8 (n+1)      | document_indices int64: sequence index where each document ends, 0 first |

One sequence per document makes ``document_indices == arange(n + 1)``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import atomic_path, save_json, save_npy
from packprep.formats import CONVERSION_MANIFEST, read_conversion_info
from packprep.formats.npy import Shard, read_manifest
from packprep.stages.pack import concat_ranges

FORMAT_NAME = "packprep-megatron"
FORMAT_VERSION = 1
MANIFEST_NAME = CONVERSION_MANIFEST
PREFIX = "text_document"  # Megatron's preprocess_data.py names outputs <prefix>_text_document
INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {
    np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
    np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8,
}  # fmt: skip
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
_CHUNK_ROWS = 4096


def megatron_dtype(dtype: np.dtype) -> np.dtype:
    """The ``.bin`` dtype for a packprep token dtype: Megatron has no uint32, so wider vocabularies use int32."""
    return np.dtype(np.uint16) if np.dtype(dtype).itemsize <= 2 else np.dtype(np.int32)


def packing_order(seg_doc: np.ndarray) -> np.ndarray:
    """int64 [n]: the documents of ``seg_doc`` (int64 [S], all pieces in row order) by first appearance."""
    docs, first = np.unique(seg_doc, return_index=True)
    return docs[np.argsort(first, kind="stable")].astype(np.int64)


def _all_segments(out: Path, shards: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """seg_doc and seg_length of every piece of the output, in row order (int64 [S] each)."""
    segs = [Shard.open(out, name) for name in shards]
    seg_doc = np.concatenate([np.asarray(s.seg_doc, dtype=np.int64) for s in segs] or [np.zeros(0, np.int64)])
    seg_length = np.concatenate([np.asarray(s.seg_length, dtype=np.int64) for s in segs] or [np.zeros(0, np.int64)])
    return seg_doc, seg_length


def write_megatron(out: Path, dest: Path, *, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the documents of the npy output ``out`` as ``dest/text_document.{bin,idx}``; return its manifest.

    Every piece of every row is scattered to its document's place in a memory-mapped
    ``.bin``: ``pointer[doc] + seg_doc_offset``. With documents in first-appearance
    order these writes run almost sequentially.
    """
    out, dest = Path(out), Path(dest)
    manifest = read_manifest(out)
    shards = [s["name"] for s in manifest["shards"]]
    seg_doc, seg_length = _all_segments(out, shards)
    order = packing_order(seg_doc)
    lengths = np.load(out / "doc_lengths.npy")[order].astype(np.int64)
    covered = np.bincount(seg_doc, weights=seg_length, minlength=int(order.max(initial=-1)) + 1)[order]
    if not np.array_equal(covered.astype(np.int64), lengths):
        raise ValueError(f"{out}: pieces do not cover their documents; the output is corrupt (run packprep verify)")
    dtype = megatron_dtype(np.dtype(manifest["dtype"]))
    starts = np.cumsum(lengths) - lengths  # in tokens
    doc_start = np.zeros(int(order.max(initial=-1)) + 1, dtype=np.int64)
    doc_start[order] = starts

    dest.mkdir(parents=True, exist_ok=True)
    bin_path = dest / f"{PREFIX}.bin"
    with atomic_path(bin_path) as tmp:
        tmp.touch()  # np.memmap cannot create an empty file
        if int(lengths.sum()):
            tokens = np.memmap(tmp, dtype=dtype, mode="w+", shape=(int(lengths.sum()),))
            for name in shards:
                _scatter_shard(Shard.open(out, name), tokens, doc_start, progress=progress)
            tokens.flush()
            del tokens
    write_index(dest / f"{PREFIX}.idx", lengths=lengths, dtype=dtype)
    save_npy(dest / "doc_index.npy", order)
    info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source_key": manifest["key"],
        "prefix": PREFIX,
        "dtype": dtype.name,
        "sep_id": manifest["sep_id"],
        "num_sequences": int(len(order)),
        "num_tokens": int(lengths.sum()),
    }
    save_json(dest / MANIFEST_NAME, info)
    return info


def _scatter_shard(
    shard: Shard, tokens: np.ndarray, doc_start: np.ndarray, *, progress: Callable[[int], None] | None
) -> None:
    num_rows = shard.input_ids.shape[0]
    for r0 in range(0, num_rows, _CHUNK_ROWS):
        r1 = min(r0 + _CHUNK_ROWS, num_rows)
        src, dst, _ = _piece_positions(shard, r0, r1, doc_start)
        tokens[dst] = np.asarray(shard.input_ids[r0:r1]).reshape(-1)[src]
        if progress:
            progress(r1 - r0)


def write_index(path: Path, *, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Write a Megatron ``.idx`` for one sequence per document (``lengths`` int64 [n], in tokens)."""
    n = len(lengths)
    pointers = (np.cumsum(lengths) - lengths) * np.dtype(dtype).itemsize
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, DTYPE_CODES[np.dtype(dtype)], n, n + 1))
        fh.write(np.asarray(lengths, dtype="<i4").tobytes())
        fh.write(np.asarray(pointers, dtype="<i8").tobytes())
        fh.write(np.arange(n + 1, dtype="<i8").tobytes())


@dataclass(frozen=True)
class MegatronDataset:
    """A Megatron indexed dataset opened by :func:`read_megatron`; arrays are memory-mapped."""

    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32 [n]
    sequence_pointers: np.ndarray  # int64 [n], bytes
    document_indices: np.ndarray  # int64 [d]
    tokens: np.ndarray  # dtype [T], the whole .bin

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(self.sequence_pointers[index]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sequence_lengths[index])]


def read_megatron(prefix: str | Path) -> MegatronDataset:
    """Open ``<prefix>.idx`` + ``<prefix>.bin`` (any Megatron indexed dataset without sequence modes)."""
    idx_path, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    with open(idx_path, "rb") as fh:
        head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ValueError(f"{idx_path}: too short for a Megatron index header")
    magic, version, code, n, d = _HEADER.unpack(head)
    if magic != INDEX_MAGIC or version != INDEX_VERSION:
        raise ValueError(f"{idx_path}: not a Megatron index (magic {magic!r}, version {version})")
    dtype = {c: t for t, c in DTYPE_CODES.items()}[code]
    index = np.memmap(idx_path, dtype=np.uint8, mode="r")
    off = _HEADER.size
    lengths = index[off : off + 4 * n].view("<i4")
    pointers = index[off + 4 * n : off + 12 * n].view("<i8")
    documents = index[off + 12 * n : off + 12 * n + 8 * d].view("<i8")
    size = bin_path.stat().st_size
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
    return MegatronDataset(dtype, lengths, pointers, documents, tokens)


def check_megatron(out: Path, dest: Path) -> list[tuple[str, str]]:
    """``(where, what)`` for everything in the conversion ``dest`` that is not the npy output ``out``.

    Re-derives what :func:`write_megatron` would write from ``out``'s shards (which the
    caller has verified): the metadata, the document order, the index (lengths, pointers,
    document indices, dtype) and every token of ``.bin``, read in chunks of rows.
    """
    out, dest = Path(out), Path(dest)
    manifest = read_manifest(out)
    problems = read_conversion_info(dest, manifest["key"], format_name=FORMAT_NAME, format_version=FORMAT_VERSION)[1]
    if problems:
        return problems
    prefix = dest / PREFIX
    try:
        data = read_megatron(prefix)
    except (OSError, ValueError, KeyError) as exc:
        return [(f"{PREFIX}.idx", f"cannot be read ({type(exc).__name__}: {exc})")]
    shards = [s["name"] for s in manifest["shards"]]
    seg_doc, _ = _all_segments(out, shards)
    order = packing_order(seg_doc)
    lengths = np.load(out / "doc_lengths.npy")[order].astype(np.int64)
    dtype = megatron_dtype(np.dtype(manifest["dtype"]))
    problems += _check_index(dest, data, order, lengths, dtype)
    if problems:
        return problems
    if data.tokens.size != int(lengths.sum()):
        return [(f"{PREFIX}.bin", f"holds {data.tokens.size} tokens; the rows hold {int(lengths.sum())} (truncated or padded)")]
    doc_start = np.zeros(int(order.max(initial=-1)) + 1, dtype=np.int64)
    doc_start[order] = np.cumsum(lengths) - lengths
    sequence_of = np.zeros(len(doc_start), dtype=np.int64)
    sequence_of[order] = np.arange(len(order))
    differ, first = 0, None
    for name in shards:
        shard = Shard.open(out, name)
        for r0 in range(0, len(shard.row_ptr) - 1, _CHUNK_ROWS):
            src, dst, doc = _piece_positions(shard, r0, min(r0 + _CHUNK_ROWS, len(shard.row_ptr) - 1), doc_start)
            rows = np.asarray(shard.input_ids[r0 : r0 + _CHUNK_ROWS]).reshape(-1)[src]
            bad = np.flatnonzero(np.asarray(data.tokens[dst]) != rows)
            differ += len(bad)
            if len(bad) and first is None:
                i, j = int(bad[0]), int(doc[bad[0]])
                first = (
                    f"sequence {sequence_of[j]} (document {j}) has token {data.tokens[dst[i]]} at offset "
                    f"{dst[i] - doc_start[j]}; the rows hold {rows[i]}"
                )
    if first is not None:
        problems.append((f"{PREFIX}.bin", first + (f" ({differ} tokens differ)" if differ > 1 else "")))
    return problems


def _check_index(
    dest: Path, data: MegatronDataset, order: np.ndarray, lengths: np.ndarray, dtype: np.dtype
) -> list[tuple[str, str]]:
    """The ``.idx`` and ``doc_index.npy`` against what the rows imply; first difference of each."""
    idx = f"{PREFIX}.idx"
    if data.dtype != dtype:
        return [(idx, f"dtype {data.dtype.name}; the output's tokens convert to {dtype.name}")]
    if len(data) != len(order):
        return [(idx, f"{len(data)} sequences; the rows hold {len(order)} documents")]
    problems = []
    try:
        doc_index = np.load(dest / "doc_index.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        doc_index = None
        problems.append(("doc_index.npy", f"cannot be read ({type(exc).__name__})"))
    pointers = (np.cumsum(lengths) - lengths) * dtype.itemsize
    for where, name, found, expected in [
        ("doc_index.npy", "document", doc_index, order),
        (idx, "sequence_lengths", data.sequence_lengths, lengths),
        (idx, "sequence_pointers", data.sequence_pointers, pointers),
        (idx, "document_indices", data.document_indices, np.arange(len(order) + 1)),
    ]:
        if found is None:
            continue
        if len(found) != len(expected):
            problems.append((where, f"{len(found)} {name} entries; expected {len(expected)}"))
            continue
        bad = np.flatnonzero(np.asarray(found, dtype=np.int64) != expected)
        if len(bad):
            i = int(bad[0])
            more = f" ({len(bad)} entries differ)" if len(bad) > 1 else ""
            problems.append((where, f"{name} of sequence {i} is {found[i]}; the rows imply {expected[i]}{more}"))
    return problems


def _piece_positions(
    shard: Shard, r0: int, r1: int, doc_start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every token of rows r0..r1's pieces: its index in those rows' flat tokens, its index in ``.bin``, its document."""
    seq_len = shard.input_ids.shape[1]
    p0, p1 = int(shard.row_ptr[r0]), int(shard.row_ptr[r1])
    seg_rows = np.repeat(np.arange(r1 - r0), np.diff(shard.row_ptr[r0 : r1 + 1]))
    length = np.asarray(shard.seg_length[p0:p1], dtype=np.int64)
    doc = np.asarray(shard.seg_doc[p0:p1], dtype=np.int64)
    src = concat_ranges(seg_rows * seq_len + shard.seg_start[p0:p1], length)
    dst = concat_ranges(doc_start[doc] + shard.seg_doc_offset[p0:p1], length)
    return src, dst, np.repeat(doc, length)


def write(out: Path, dest: Path, *, labels: bool, progress: Callable[[int], None] | None = None) -> None:
    """The registry's writer (``formats.CONVERSIONS``): :func:`write_megatron` (Megatron derives labels itself: ``labels`` is unused)."""
    write_megatron(out, dest, progress=progress)


def check(out: Path, dest: Path) -> list[tuple[str, str]]:
    """The registry's checker (``formats.CONVERSIONS``): :func:`check_megatron`."""
    return check_megatron(out, dest)
