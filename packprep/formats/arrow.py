"""The ``arrow`` output format: the packed rows as Parquet (and a ``save_to_disk`` copy) for 🤗 datasets.

Layout written by :func:`write_arrow` (format ``packprep-arrow``, version 1)::

    DEST/                                   (default OUT/arrow/)
      data/train-00000-of-00002.parquet     one Parquet file per npy shard, row groups of ROW_GROUP rows:
      data/train-00001-of-00002.parquet     load_dataset(DEST) or load_dataset("parquet", data_files=...)
      save_to_disk/                         only with save_to_disk=True (the default):
        data-00000-of-00002.arrow           the same rows as Arrow IPC streams, as Dataset.save_to_disk
        data-00001-of-00002.arrow           writes them: load_from_disk(DEST / "save_to_disk") maps them
        dataset_info.json, state.json       the save_to_disk metadata (mirrors datasets 5.2)
      packprep.json                         format, version, source key, columns, rows (written last)

The IPC copy sits in a subfolder because ``load_dataset(DEST)`` refuses a folder that
holds a ``state.json`` ("saved using save_to_disk").

Columns, one row per packed row of length L (all ``list<int32>``):

| column         | per row                                                            |
| -------------- | ------------------------------------------------------------------ |
| ``input_ids``    | [L] the tokens                                                     |
| ``position_ids`` | [L] restart at 0 at every segment (PackedDataset's position_ids)   |
| ``seq_lengths``  | [S] segment lengths incl. a final padding segment: np.diff(cu_seqlens) |
| ``labels``       | [L] unless ``labels=False``: -100 at padding and segment starts     |

``seq_lengths`` is trl's column name (``trl.pack_dataset``); its collator rebuilds the
same position ids from it. Parquet is the portable copy (compressed, Hub-ready,
``load_dataset("parquet", ...)``); the IPC copy costs 4 bytes per token per column but
opens without the conversion into the datasets cache that ``load_dataset`` does.

``labels`` is written by default although a trainer could derive most of it: Trainer
drops every column its model's ``forward`` does not take (``seq_lengths`` among them), so
a collator sees only ``input_ids`` and ``position_ids``, and from those the padding
segment cannot be told from a real last segment. Written labels are exact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import fsync_path, save_json
from packprep.formats import CONVERSION_MANIFEST, read_conversion_info
from packprep.formats.npy import Shard, read_manifest
from packprep.reader import IGNORE_INDEX

FORMAT_NAME = "packprep-arrow"
FORMAT_VERSION = 1
MANIFEST_NAME = CONVERSION_MANIFEST
SAVE_TO_DISK_DIR = "save_to_disk"
ROW_GROUP = 1000  # rows per Parquet row group and per Arrow record batch (~8 MB per column at L=2048)
COLUMNS = ("input_ids", "position_ids", "seq_lengths")


def packed_columns(
    input_ids: np.ndarray, row_ptr: np.ndarray, seg_length: np.ndarray, *, labels: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Flat list columns for R rows: ``{name: (values int32 [n], offsets int32 [R+1])}``.

    ``input_ids`` [R, L] (any integer dtype); ``row_ptr`` int64 [R+1] (any base: the
    segments of row r are ``seg_length[row_ptr[r]-row_ptr[0] : ...]``); ``seg_length``
    the real segments of these rows, in row order. Pure numpy, no loop over rows.
    """
    num_rows, seq_len = input_ids.shape
    num_segments = np.diff(np.asarray(row_ptr, dtype=np.int64))
    seg_length = np.asarray(seg_length, dtype=np.int64)
    seg_rows = np.repeat(np.arange(num_rows), num_segments)
    # Segments are contiguous from position 0, so the row's fill is their total length.
    fill = np.bincount(seg_rows, weights=seg_length, minlength=num_rows).astype(np.int64)
    has_pad = fill < seq_len
    pads_before = np.cumsum(has_pad) - has_pad
    seq_ptr = np.concatenate([[0], np.cumsum(num_segments + has_pad)])
    lengths = np.empty(int(seq_ptr[-1]), dtype=np.int64)
    lengths[np.arange(len(seg_length)) + pads_before[seg_rows]] = seg_length
    pad_slots = seq_ptr[1:][has_pad] - 1  # padding is the last segment of its row
    lengths[pad_slots] = seq_len - fill[has_pad]

    # Rows are contiguous in the flat token buffer and each sums to L, so global segment
    # starts give per-row position ids directly.
    starts = np.cumsum(lengths) - lengths
    tokens = np.asarray(input_ids).reshape(-1).astype(np.int32)
    position_ids = np.arange(tokens.size, dtype=np.int64) - np.repeat(starts, lengths)
    token_offsets = (np.arange(num_rows + 1, dtype=np.int64) * seq_len).astype(np.int32)
    columns = {
        "input_ids": (tokens, token_offsets),
        "position_ids": (position_ids.astype(np.int32), token_offsets),
        "seq_lengths": (lengths.astype(np.int32), seq_ptr.astype(np.int32)),
    }
    if labels:
        is_pad = np.zeros(len(lengths), dtype=bool)
        is_pad[pad_slots] = True
        label_values = tokens.copy()
        label_values[starts] = IGNORE_INDEX
        label_values[np.repeat(is_pad, lengths)] = IGNORE_INDEX
        columns["labels"] = (label_values, token_offsets)
    return columns


def hf_features(names: tuple[str, ...]) -> dict[str, Any]:
    """The datasets ``Features`` JSON for our columns (every column ``List(Value("int32"))``)."""
    return {name: {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"} for name in names}


def arrow_schema(names: tuple[str, ...]) -> Any:
    import pyarrow as pa

    # The "huggingface" metadata is how datasets recovers Features from Parquet and IPC files.
    metadata = {"huggingface": json.dumps({"info": {"features": hf_features(names)}})}
    return pa.schema([(name, pa.list_(pa.int32())) for name in names], metadata=metadata)


def shard_batches(shard: Shard, *, labels: bool, rows: int = ROW_GROUP) -> Iterator[Any]:
    """The shard's rows as ``pyarrow.RecordBatch``es of up to ``rows`` rows."""
    import pyarrow as pa

    names = (*COLUMNS, "labels") if labels else COLUMNS
    schema = arrow_schema(names)
    for r0 in range(0, len(shard.row_ptr) - 1, rows):
        r1 = min(r0 + rows, len(shard.row_ptr) - 1)
        row_ptr = shard.row_ptr[r0 : r1 + 1]
        seg_length = shard.seg_length[int(row_ptr[0]) : int(row_ptr[-1])]
        columns = packed_columns(shard.input_ids[r0:r1], row_ptr, seg_length, labels=labels)
        arrays = [pa.ListArray.from_arrays(columns[n][1], columns[n][0]) for n in names]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_arrow(
    out: Path,
    dest: Path,
    *,
    labels: bool = True,
    save_to_disk: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the rows of the npy output ``out`` into the empty folder ``dest``; return its manifest.

    Each shard is streamed in ROW_GROUP-row batches into its Parquet file and its IPC
    file at once, so memory stays at a few batches whatever the shard size.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, dest = Path(out), Path(dest)
    manifest = read_manifest(out)
    names = (*COLUMNS, "labels") if labels else COLUMNS
    schema = arrow_schema(names)
    shards = [s["name"] for s in manifest["shards"]]
    disk = dest / SAVE_TO_DISK_DIR
    (dest / "data").mkdir(parents=True, exist_ok=True)
    if save_to_disk:
        disk.mkdir()
    parquet_files, arrow_files = [], []
    for k, name in enumerate(shards):
        of = f"{k:05d}-of-{len(shards):05d}"
        parquet_files.append(f"data/train-{of}.parquet")
        arrow_files.append(f"data-{of}.arrow")
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(pq.ParquetWriter(str(dest / parquet_files[-1]), schema, compression="zstd"))]
            if save_to_disk:
                writers.append(stack.enter_context(pa.ipc.new_stream(str(disk / arrow_files[-1]), schema)))
            for batch in shard_batches(Shard.open(out, name), labels=labels):
                for writer in writers:
                    writer.write_batch(batch)
                if progress:
                    progress(batch.num_rows)
    for written in [dest / f for f in parquet_files] + ([disk / f for f in arrow_files] if save_to_disk else []):
        fsync_path(written)  # on disk before the manifest below declares them finished
    if save_to_disk:
        _write_save_to_disk_metadata(disk, names, arrow_files, fingerprint=manifest["key"][:16])
    info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source_key": manifest["key"],
        "seq_len": manifest["seq_len"],
        "rows": sum(s["rows"] for s in manifest["shards"]),
        "columns": list(names),
        "parquet_files": parquet_files,
        "save_to_disk": SAVE_TO_DISK_DIR if save_to_disk else None,
    }
    save_json(dest / MANIFEST_NAME, info)
    return info


def _write_save_to_disk_metadata(
    dest: Path, names: tuple[str, ...], arrow_files: list[str], *, fingerprint: str
) -> None:
    # Mirrors what Dataset.save_to_disk writes in datasets 5.2 (checked against a real call).
    info = {"citation": "", "description": "", "features": hf_features(names), "homepage": "", "license": ""}
    state = {
        "_data_files": [{"filename": f} for f in arrow_files],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": "train",
    }
    save_json(dest / "dataset_info.json", info)
    save_json(dest / "state.json", state)


def check_arrow(out: Path, dest: Path) -> list[tuple[str, str]]:
    """``(where, what)`` for everything in the conversion ``dest`` that is not the npy output ``out``.

    Every Parquet file and every ``save_to_disk`` IPC file is read back batch by batch and
    compared, column by column (tokens, position ids, segment lengths, labels), with the
    columns :func:`packed_columns` makes from the same rows of ``out``'s shards (which the
    caller has verified); the first differing row of each file is reported.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, dest = Path(out), Path(dest)
    manifest = read_manifest(out)
    info, problems = read_conversion_info(dest, manifest["key"], format_name=FORMAT_NAME, format_version=FORMAT_VERSION)
    if info is None:
        return problems
    shards = [s["name"] for s in manifest["shards"]]
    names = tuple(info.get("columns") or ())
    if set(names) - {*COLUMNS, "labels"} or not set(COLUMNS) <= set(names):
        return [(MANIFEST_NAME, f"columns {list(names)}; expected {list(COLUMNS)} (and labels)")]
    files = [(name, pq.ParquetFile) for name in info.get("parquet_files") or []]
    if info.get("save_to_disk"):
        disk = dest / info["save_to_disk"]
        files += [(f"{info['save_to_disk']}/{e['filename']}", _ipc_batches) for e in _state_files(disk)]
    problems = []
    by_kind: dict[Any, int] = {}
    for name, opener in files:
        by_kind[opener] = by_kind.get(opener, 0) + 1
        k = by_kind[opener] - 1
        if k >= len(shards):
            problems.append((name, f"one file more than the {len(shards)} shards"))
            continue
        try:
            batches = opener(str(dest / name)).iter_batches(batch_size=ROW_GROUP) if opener is pq.ParquetFile else opener(dest / name)
            problem = _compare_batches(batches, Shard.open(out, shards[k]), names)
        except (OSError, ValueError, pa.ArrowException) as exc:
            problem = f"cannot be read ({type(exc).__name__}: {exc})"
        if problem:
            problems.append((name, problem))
    for opener, what in [(pq.ParquetFile, "Parquet"), (_ipc_batches, "save_to_disk")]:
        if opener is _ipc_batches and not info.get("save_to_disk"):
            continue
        if by_kind.get(opener, 0) < len(shards):
            problems.append((MANIFEST_NAME if opener is pq.ParquetFile else str(info["save_to_disk"]),
                             f"{by_kind.get(opener, 0)} {what} files for {len(shards)} shards"))
    return problems


def _state_files(disk: Path) -> list[dict[str, Any]]:
    from packprep.io import load_json

    return load_json(disk / "state.json")["_data_files"]


def _ipc_batches(path: Path) -> Iterator[Any]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def _compare_batches(batches: Iterator[Any], shard: Shard, names: tuple[str, ...]) -> str | None:
    """The first difference between a file's batches and the shard's rows, or None."""
    rows = len(shard.row_ptr) - 1
    r0 = 0
    for batch in batches:
        if tuple(batch.schema.names) != names:
            return f"columns {batch.schema.names}; packprep.json lists {list(names)}"
        r1 = r0 + batch.num_rows
        if r1 > rows:
            return f"holds more than the shard's {rows} rows"
        row_ptr = shard.row_ptr[r0 : r1 + 1]
        seg_length = shard.seg_length[int(row_ptr[0]) : int(row_ptr[-1])]
        expected = packed_columns(shard.input_ids[r0:r1], row_ptr, seg_length, labels="labels" in names)
        for name in names:
            column = batch.column(name)
            offsets = np.asarray(column.offsets, dtype=np.int64)
            values = np.asarray(column.flatten())
            want_values, want_offsets = expected[name]
            lengths, want_lengths = np.diff(offsets), np.diff(want_offsets.astype(np.int64))
            same_shape = np.array_equal(lengths, want_lengths)
            if same_shape and np.array_equal(values, want_values):
                continue
            if not same_shape:
                row = int(np.flatnonzero(lengths != want_lengths)[0])
            else:
                row = int(np.searchsorted(offsets - offsets[0], np.flatnonzero(values != want_values)[0], side="right")) - 1
            return f"row {r0 + row}: {name} differs from the npy shard's"
        r0 = r1
    if r0 != rows:
        return f"holds {r0} rows; the shard has {rows}"
    return None


def write(out: Path, dest: Path, *, labels: bool, progress: Callable[[int], None] | None = None) -> None:
    """The registry's writer (``formats.CONVERSIONS``): :func:`write_arrow`."""
    write_arrow(out, dest, labels=labels, progress=progress)


def check(out: Path, dest: Path) -> list[tuple[str, str]]:
    """The registry's checker (``formats.CONVERSIONS``): :func:`check_arrow`."""
    return check_arrow(out, dest)
