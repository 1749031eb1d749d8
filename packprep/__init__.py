"""packprep: offline data preparation for LLM pretraining.

The public API: :class:`PackedDataset` (what trainers import; numpy only) and the
stage functions :func:`tokenize` and :func:`pack` (what the CLI runs).
"""

from __future__ import annotations

__version__ = "0.1.0"

from packprep.reader import PackedDataset

__all__ = ["PackedDataset", "__version__", "pack", "tokenize"]


def __getattr__(name: str):
    # The pipeline pulls in tokenizers and the corpus readers; trainers that only
    # read shards should not pay for them, so load it on first use.
    if name in {"pack", "tokenize"}:
        from packprep import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'packprep' has no attribute {name!r}")
