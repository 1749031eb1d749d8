"""The dedup stage's files beside a document store (written by ``pipeline.semantic.dedup``)::

    dedup.json            manifest: config, counts by reason, key (written last)
    dedup.keep.npy        bool [N]   True for documents kept by exact + near dedup
    dedup.reason.npy      uint8 [N]  0 kept, 1 exact, 2 near (stages.dedup.REASON_*)
    dedup.dup_of.npy      int64 [N]  the kept document a dropped one duplicates, -1 if kept

While an engine computes them, the arrays are ``dedup.<name>.npy.tmp`` (:func:`open_dedup`):
created sparse, filled by the engine (the Ray engine's tasks each write their range of
documents, so the arrays are never whole in the driver) and renamed by :func:`publish_dedup`.
They are read back memory-mapped. The embeddings' files are ``store.embeddings``'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import renamed_together, save_json, save_npy

DEDUP_MANIFEST = "dedup.json"
_DEDUP_DTYPES = {"keep": np.bool_, "reason": np.uint8, "dup_of": np.int64}
_DEDUP_ARRAYS = tuple(_DEDUP_DTYPES)


@dataclass(frozen=True)
class Dedup:
    """A stored dedup result: the arrays of ``stages.dedup.DedupResult`` plus its manifest."""

    keep: np.ndarray
    reason: np.ndarray
    dup_of: np.ndarray
    manifest: dict[str, Any]


def save_dedup(folder: Path, result: Any, manifest: dict[str, Any]) -> None:
    """The arrays of ``result`` (a ``stages.dedup.DedupResult``), then ``manifest``: finished once it exists."""
    with renamed_together() as batch:  # the three reach the disk together (io.RenameBatch), before the manifest
        for name in _DEDUP_ARRAYS:
            save_npy(folder / f"dedup.{name}.npy", getattr(result, name), batch=batch)
    save_json(folder / DEDUP_MANIFEST, manifest)


def open_dedup(folder: Path, n: int) -> dict[str, np.memmap]:
    """The dedup arrays of ``n`` documents as ``.npy.tmp`` memmaps for an engine to fill (``Backend.dedup``'s
    ``out``): sparse files, so creating them touches no page; the engine writes every element."""
    return {
        name: np.lib.format.open_memmap(_partial(folder, name), mode="w+", dtype=dtype, shape=(n,))
        for name, dtype in _DEDUP_DTYPES.items()
    }


def publish_dedup(folder: Path, out: dict[str, np.memmap], manifest: dict[str, Any]) -> Dedup:
    """The arrays of :func:`open_dedup`, filled, renamed into place, then ``manifest``: finished once it exists."""
    with renamed_together() as batch:  # the three reach the disk together (io.RenameBatch), before the manifest
        for name in _DEDUP_ARRAYS:
            out[name].flush()
            batch.add(_partial(folder, name), folder / f"dedup.{name}.npy")
    save_json(folder / DEDUP_MANIFEST, manifest)
    return load_dedup(folder, manifest)


def _partial(folder: Path, name: str) -> Path:
    return Path(folder) / f"dedup.{name}.npy.tmp"


def load_dedup(folder: Path, manifest: dict[str, Any]) -> Dedup:
    """The stored arrays, memory-mapped (read-only): a caller reads the slices it needs, not N whole."""
    arrays = {name: np.load(folder / f"dedup.{name}.npy", mmap_mode="r") for name in _DEDUP_ARRAYS}
    return Dedup(manifest=manifest, **arrays)
