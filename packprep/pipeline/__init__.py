"""The stages wired to disk: load -> stage -> save, cached by key, folders claimed and locked.

The only caller of engines. ``tokenizing``: corpus -> document store (WORK);
``semantic``: the store's dedup and embeddings, cached beside it; ``selection``: which
documents are packed and in what order; ``packing``: the plan written as shards (and a
converted copy); ``folders``: what a stage may write where. What the CLI and notebooks
call: :func:`tokenize` and :func:`pack`.
"""

from __future__ import annotations

from packprep.pipeline.packing import pack
from packprep.pipeline.tokenizing import tokenize

__all__ = ["pack", "tokenize"]
