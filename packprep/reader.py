"""PackedDataset: what trainers import. numpy + stdlib only, everything memory-mapped.

>>> ds = PackedDataset("out/")
>>> row = ds[0]   # dict of numpy arrays, see PackedDataset.__getitem__
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import StringTable
from packprep.formats.npy import Shard, read_manifest

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy skips


class PackedDataset:
    """Random access to the packed rows of a packprep output folder.

    Opening reads only the manifest; shards are memory-mapped on first use, so
    opening a huge output is instant and a row costs one page-cache read.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self.seq_len: int = int(self.manifest["seq_len"])
        self.pad_id: int = int(self.manifest["pad_id"])
        self._shard_names = [s["name"] for s in self.manifest["shards"]]
        rows = np.array([s["rows"] for s in self.manifest["shards"]], dtype=np.int64)
        self._shard_end = np.cumsum(rows)
        self._shard_start = self._shard_end - rows
        self._shard_end_list = self._shard_end.tolist()
        self._shard_start_list = self._shard_start.tolist()
        self._arange = np.arange(self.seq_len, dtype=np.int64)
        self._shards: list[Shard | None] = [None] * len(rows)
        self._doc_ids: StringTable | None = None

    def __len__(self) -> int:
        return int(self._shard_end[-1]) if len(self._shard_end) else 0

    @property
    def doc_ids(self) -> StringTable:
        """``doc_ids[j]``: the source id of document j (``doc_index`` values index this)."""
        if self._doc_ids is None:
            self._doc_ids = StringTable(self.path / "doc_ids")
        return self._doc_ids

    def shard(self, k: int) -> Shard:
        shard = self._shards[k]
        if shard is None:
            shard = self._shards[k] = Shard.open(self.path, self._shard_names[k])
        return shard

    def locate(self, index: int) -> tuple[Shard, int]:
        """The shard holding row ``index`` and the row's position inside it."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {index} out of range for {n} rows")
        k = bisect.bisect_right(self._shard_end_list, index)
        return self.shard(k), index - self._shard_start_list[k]

    def segments(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Row ``index``'s real segments: (start, length, doc_index, doc_offset), each [S]."""
        shard, local = self.locate(index)
        p0, p1 = int(shard.row_ptr[local]), int(shard.row_ptr[local + 1])
        return (shard.seg_start[p0:p1], shard.seg_length[p0:p1], shard.seg_doc[p0:p1], shard.seg_doc_offset[p0:p1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """One row as a dict of numpy arrays (L = seq_len, S = segments incl. padding):

        - ``input_ids`` int64 [L]
        - ``cu_seqlens`` int32 [S+1]: segment starts plus the end; first 0, last L
        - ``doc_index`` int64 [S]: source document of each segment, -1 for padding
        - ``doc_offset`` int64 [S]: token offset inside that document where the piece begins
        - ``position_ids`` int64 [L]: restart at 0 at every segment
        - ``labels`` int64 [L]: input_ids with -100 at padding and at each segment's first token

        A row that is not full ends with padding, which forms its own final segment
        (doc_index -1) so that varlen attention keeps pad tokens apart from documents.
        """
        # Hot path of every training step: a dozen numpy calls on plain ndarray views
        # (not np.memmap, whose indexing is several times slower) and no searchsorted.
        shard, local = self.locate(index)
        seq_len = self.seq_len
        p0, p1 = int(shard.row_ptr[local]), int(shard.row_ptr[local + 1])
        n = p1 - p0
        fill = int(shard.seg_start[p1 - 1]) + int(shard.seg_length[p1 - 1]) if n else 0
        padded = n + (fill < seq_len)
        cu_seqlens = np.empty(padded + 1, dtype=np.int32)
        cu_seqlens[:n] = shard.seg_start[p0:p1]
        cu_seqlens[n] = fill  # the padding pseudo-segment's start; overwritten below when there is none
        cu_seqlens[-1] = seq_len
        doc_index = np.empty(padded, dtype=np.int64)
        doc_index[:n] = shard.seg_doc[p0:p1]
        doc_index[n:] = -1
        doc_offset = np.zeros(padded, dtype=np.int64)
        doc_offset[:n] = shard.seg_doc_offset[p0:p1]
        input_ids = shard.input_ids[local].astype(np.int64)
        starts = cu_seqlens[:-1]
        position_ids = self._arange - starts.astype(np.int64).repeat(cu_seqlens[1:] - starts)
        labels = input_ids.copy()
        labels[starts] = IGNORE_INDEX
        labels[fill:] = IGNORE_INDEX
        return {
            "input_ids": input_ids,
            "cu_seqlens": cu_seqlens,
            "doc_index": doc_index,
            "doc_offset": doc_offset,
            "position_ids": position_ids,
            "labels": labels,
        }

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"PackedDataset({str(self.path)!r}, rows={len(self)}, seq_len={self.seq_len})"
