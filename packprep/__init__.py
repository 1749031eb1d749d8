"""packprep: offline data preparation for LLM pretraining.

The public API: :class:`PackedDataset` (what trainers import; numpy only), the
stage functions :func:`tokenize` and :func:`pack` (what the CLI runs) and
:func:`verify_output` (what ``packprep verify`` checks). Conversions:
``packprep.convert.convert``.
"""

from __future__ import annotations

from packprep.version import __version__

from packprep.reader import PackedDataset

__all__ = ["PackedDataset", "__version__", "pack", "tokenize", "verify_output"]
_LAZY = {"pack": "pipeline", "tokenize": "pipeline", "verify_output": "verify"}


def __getattr__(name: str):
    # The pipeline pulls in tokenizers and the corpus readers; trainers that only
    # read shards should not pay for them, so load it on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"packprep.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'packprep' has no attribute {name!r}")
