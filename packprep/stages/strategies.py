"""The packing strategies: one registry entry each (name -> how documents are ordered, what that needs).

A strategy decides the order of the kept documents, whether it needs their embeddings
(and so dedup and embed run first by default, ``--packing bestfit`` keeps its order, and
rows are shuffled after packing), whether an EOS separates documents, and whether it drops
semantic duplicates by default. A new strategy is one function and one entry in
``STRATEGIES``: ``config``, the CLI's ``--strategy`` choices and the pipeline read them here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# MiniLM cosine above which icp drops a document as a semantic duplicate of an earlier kept
# one (docs/semantic.md, benchmarks/bench_semantic_dedup.py): 97 % of copies with one word
# in 60 edited score above it, while sibling documents that share a template (boto3 S3/SES
# stubs, KVM VGICv2/v3 pages) sit at 0.95-0.97. Other embedders get their own number
# standing for this one (stages.static_embed.calibrate_threshold for the static one).
DEFAULT_ICP_SEMANTIC_THRESHOLD = 0.97


class OrderParams(Protocol):
    """What an ordering reads from the pack config (``config.PackConfig``)."""

    seed: int
    clusters: int | None
    knn: int


# (kept document indices int64 [M], embeddings [N, D] or None, params, progress or None) -> int64 [M]
Order = Callable[[Any, Any, OrderParams, Any], Any]


@dataclass(frozen=True)
class Strategy:
    name: str
    order: Order
    needs_embeddings: bool  # a semantic order: dedup + embed run first, bestfit keeps the order, rows are shuffled
    separator: bool  # an EOS token after every document
    semantic_threshold: float | None = None  # default cosine for semantic dedup (MiniLM's scale); None: off


def _shuffled(kept: Any, embeddings: Any, params: OrderParams, progress: Any) -> Any:
    from packprep.stages.order import random_order

    return random_order(kept, seed=params.seed)


def _clustered(kept: Any, embeddings: Any, params: OrderParams, progress: Any) -> Any:
    from packprep.stages.order import cluster_order

    return cluster_order(kept, embeddings, n_clusters=params.clusters, seed=params.seed, progress=progress)


def _in_context(kept: Any, embeddings: Any, params: OrderParams, progress: Any) -> Any:
    from packprep.stages.order import icp_order

    return icp_order(kept, embeddings, k=params.knn, seed=params.seed, progress=progress)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("random", _shuffled, needs_embeddings=False, separator=False),
        Strategy("eos", _shuffled, needs_embeddings=False, separator=True),
        Strategy("cluster", _clustered, needs_embeddings=True, separator=True),
        Strategy("icp", _in_context, needs_embeddings=True, separator=True, semantic_threshold=DEFAULT_ICP_SEMANTIC_THRESHOLD),
    )
}
