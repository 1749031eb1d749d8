"""The dedup stage's files beside a document store (written by ``pipeline.semantic.dedup``)::

    dedup.json            manifest: config, counts by reason, key (written last)
    dedup.keep.npy        bool [N]   True for documents kept by exact + near dedup
    dedup.reason.npy      uint8 [N]  0 kept, 1 exact, 2 near (stages.dedup.REASON_*)
    dedup.dup_of.npy      int64 [N]  the kept document a dropped one duplicates, -1 if kept

The embeddings' files are ``store.embeddings``'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import save_json, save_npy

DEDUP_MANIFEST = "dedup.json"
_DEDUP_ARRAYS = ("keep", "reason", "dup_of")


@dataclass(frozen=True)
class Dedup:
    """A stored dedup result: the arrays of ``stages.dedup.DedupResult`` plus its manifest."""

    keep: np.ndarray
    reason: np.ndarray
    dup_of: np.ndarray
    manifest: dict[str, Any]


def save_dedup(folder: Path, result: Any, manifest: dict[str, Any]) -> None:
    """The arrays of ``result`` (a ``stages.dedup.DedupResult``), then ``manifest``: finished once it exists."""
    for name in _DEDUP_ARRAYS:
        save_npy(folder / f"dedup.{name}.npy", getattr(result, name))
    save_json(folder / DEDUP_MANIFEST, manifest)


def load_dedup(folder: Path, manifest: dict[str, Any]) -> Dedup:
    arrays = {name: np.load(folder / f"dedup.{name}.npy") for name in _DEDUP_ARRAYS}
    return Dedup(manifest=manifest, **arrays)
