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
    minhash_threshold: float = 0.8  # estimated Jaccard of token 5-gram shingles
    num_perm: int = 128
    shingle: int = 5
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    model: str = "all-MiniLM-L6-v2"
    embed_tokens: int = 256  # the first tokens of each document are what the model sees
    batch_size: int = 64
    dtype: str = "float16"


# MiniLM cosine above which icp drops a document as a semantic duplicate of an earlier kept
# one (docs/semantic.md, benchmarks/bench_semantic_dedup.py): 97 % of copies with one word
# in 60 edited score above it, while sibling documents that share a template (boto3 S3/SES
# stubs, KVM VGICv2/v3 pages) sit at 0.95-0.97. Other embedders get their own number
# standing for this one (stages.static_embed.calibrate_threshold for the static one).
DEFAULT_ICP_SEMANTIC_THRESHOLD = 0.97


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    strategy: str = "eos"
    seq_len: int = 2048
    packing: str = "split"
    seed: int = 0
    rows_per_shard: int | None = None  # None: about 256 MB of tokens per shard
    dedup: bool | None = None  # None: on for cluster/icp, off for random/eos
    semantic_threshold: float | None = None  # None: icp's default for the embedder (selection.semantic_threshold), off otherwise
    clusters: int | None = None  # None: about sqrt(number of documents)
    knn: int = 10

    @property
    def semantic(self) -> bool:
        return self.strategy in SEMANTIC_STRATEGIES

    @property
    def run_dedup(self) -> bool:
        return self.semantic if self.dedup is None else self.dedup


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def stage_key(stage: str, config: Any, **inputs: Any) -> str:
    """Content key of a stage run: its name, config and input fingerprints."""
    payload = json.dumps({"stage": stage, "config": as_dict(config), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
