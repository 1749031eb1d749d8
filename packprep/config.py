"""One frozen, keyword-only config per stage. Each is written into its stage's manifest,
and its hash (with the input fingerprints) decides whether a cached stage is reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("random", "eos", "cluster", "icp")
SEMANTIC_STRATEGIES = ("cluster", "icp")
PACKINGS = ("split", "bestfit")
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    tokenizer: str = "cl100k"
    text_field: str = "text"
    id_field: str = "id"
    eos_id: int | None = None
    bos_id: int | None = None
    on_error: str = "raise"


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    # Estimated Jaccard of the documents' sets of word 3-grams of normalised text (stages.shingles).
    # Chosen with benchmarks/bench_dedup.py (docs/semantic.md): removes >= 99 % of copies with one
    # word in 60 edited, keeps >= 99.6 % of distinct documents, boilerplate-heavy ones included.
    minhash_threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3  # words per shingle
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    model: str = "all-MiniLM-L6-v2"
    embed_tokens: int = 256  # the first tokens of each document are what the model sees
    batch_size: int = 64
    dtype: str = "float16"


# Cosine above which icp drops a document as a semantic duplicate of an earlier kept one.
# Chosen on examples/corpus with MiniLM (docs/semantic.md): pairs above it are copies
# or near-copies (the same fortune reworded, a chapter repeated); below it, related texts.
DEFAULT_ICP_SEMANTIC_THRESHOLD = 0.95


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    strategy: str = "eos"
    seq_len: int = 2048
    packing: str = "split"
    seed: int = 0
    rows_per_shard: int | None = None  # None: about 256 MB of tokens per shard
    dedup: bool | None = None  # None: on for cluster/icp, off for random/eos
    semantic_threshold: float | None = None  # None: DEFAULT_ICP_SEMANTIC_THRESHOLD for icp, off otherwise
    clusters: int | None = None  # None: about sqrt(number of documents)
    knn: int = 10

    @property
    def semantic(self) -> bool:
        return self.strategy in SEMANTIC_STRATEGIES

    @property
    def run_dedup(self) -> bool:
        return self.semantic if self.dedup is None else self.dedup

    @property
    def effective_semantic_threshold(self) -> float | None:
        if self.semantic_threshold is not None:
            return self.semantic_threshold
        return DEFAULT_ICP_SEMANTIC_THRESHOLD if self.strategy == "icp" else None


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def stage_key(stage: str, config: Any, **inputs: Any) -> str:
    """Content key of a stage run: its name, config and input fingerprints."""
    payload = json.dumps({"stage": stage, "config": as_dict(config), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
