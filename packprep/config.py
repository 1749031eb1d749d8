"""One frozen, keyword-only config per stage. Each is written into its stage's manifest,
and its hash (with the input fingerprints) decides whether a cached stage is reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from packprep.errors import PackprepError
from packprep.stages.strategies import DEFAULT_ICP_SEMANTIC_THRESHOLD, STRATEGIES

__all__ = [
    "DEFAULT_ICP_SEMANTIC_THRESHOLD", "MAX_KNN", "MAX_SEQ_LEN", "PACKINGS", "STRATEGIES", "DedupConfig", "EmbedConfig",
    "PackConfig", "TokenizeConfig", "as_dict", "check_workers", "stage_key",
]

PACKINGS = ("split", "bestfit")
ON_ERROR = ("raise", "skip")


DEFAULT_ID_FIELD = "id"


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    tokenizer: str = "cl100k"
    text_field: str = "text"
    id_field: str = DEFAULT_ID_FIELD
    eos_id: int | None = None
    bos_id: int | None = None
    on_error: str = "raise"

    def __post_init__(self) -> None:
        _require(self.on_error in ON_ERROR, "--on-error", f"one of {', '.join(ON_ERROR)}", self.on_error)
        for option, value in (("--eos-id", self.eos_id), ("--bos-id", self.bos_id)):
            _require(value is None or value >= 0, option, "a token id (0 or more)", value)


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

    def __post_init__(self) -> None:
        # A threshold <= 0 makes every pair a duplicate (-1 dropped 86 % of a corpus); NaN matches nothing.
        _require(0.0 < self.minhash_threshold <= 1.0, "--minhash-threshold", "in (0, 1]", self.minhash_threshold)
        _require(self.num_perm >= 1, "num_perm", "at least 1", self.num_perm)
        _require(self.shingle >= 1, "shingle", "at least 1", self.shingle)
        _require(self.seed >= 0, "seed", "0 or more", self.seed)


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    model: str = "all-MiniLM-L6-v2"
    embed_tokens: int = 256  # the first tokens of each document are what the model sees
    batch_size: int = 64
    dtype: str = "float16"

    def __post_init__(self) -> None:
        _require(self.embed_tokens >= 1, "--embed-tokens", "at least 1", self.embed_tokens)
        _require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        _require(self.dtype in ("float16", "float32"), "dtype", "float16 or float32", self.dtype)


# Rows are written with int32 segment starts (formats/npy.py), so a row holds at most 2**31 - 1 tokens.
MAX_SEQ_LEN = 2**31 - 1
# The kNN graph is held as M x k int64 ids + float32 cosines (12 bytes per entry): 1024 neighbours is
# 12 KB per document, more than the icp walk and semantic dedup ever look at (they use the closest few).
MAX_KNN = 1024




# icp and cluster order corpora larger than this partition by partition (stages.partition).
# Why 1M: ordering a partition peaks at about 5 KB per document at D = 384 once the kNN search
# is IVF (float16 rows read, their float32 copy, the index's copy, the kNN graph; measured with
# benchmarks/bench_partition.py --memory, docs/semantic.md "Partitioned ordering"), so a 1M
# partition is a ~5 GB task: one per core on nodes with 5 GB per core, and about 12 minutes of
# two cores (README's 1M icp), which bounds what a lost worker costs. Larger partitions order a
# little better (fewer seams) but need bigger machines per task.
DEFAULT_PARTITION_DOCS = 1_000_000


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    strategy: str = "eos"
    seq_len: int = 2048
    packing: str = "split"
    seed: int = 0
    rows_per_shard: int | None = None  # None: about 256 MB of tokens per shard
    dedup: bool | None = None  # None: on for cluster/icp, off for random/eos
    semantic_threshold: float | None = None  # None: the strategy's default for the embedder (pipeline.selection.semantic_threshold)
    clusters: int | None = None  # None: about sqrt(number of documents)
    knn: int = 10
    # icp/cluster: order in partitions of at most this many; every strategy: pack in parts of this many (0: never)
    partition_docs: int = DEFAULT_PARTITION_DOCS

    def __post_init__(self) -> None:
        _require(self.strategy in STRATEGIES, "--strategy", f"one of {', '.join(STRATEGIES)}", self.strategy)
        _require(self.packing in PACKINGS, "--packing", f"one of {', '.join(PACKINGS)}", self.packing)
        _require(self.seq_len >= 1, "--seq-len", "at least 1", self.seq_len)
        _require(self.seq_len <= MAX_SEQ_LEN, "--seq-len", f"at most {MAX_SEQ_LEN:,}", self.seq_len)
        _require(self.seed >= 0, "--seed", "0 or more", self.seed)  # numpy's SeedSequence takes no negatives
        _require(self.rows_per_shard is None or self.rows_per_shard >= 1, "--shard-size", "at least 1", self.rows_per_shard)
        threshold = self.semantic_threshold
        _require(threshold is None or 0.0 <= threshold <= 1.0, "--semantic-threshold", "in (0, 1], or 0 for off", threshold)
        _require(self.clusters is None or self.clusters >= 1, "--clusters", "at least 1", self.clusters)
        _require(self.knn >= 1, "--knn", "at least 1", self.knn)
        _require(self.knn <= MAX_KNN, "--knn", f"at most {MAX_KNN:,}", self.knn)
        _require(self.partition_docs >= 0, "--partition-docs", "0 (never partition) or more", self.partition_docs)

    @property
    def semantic(self) -> bool:
        """Whether the strategy orders by embeddings (stages.strategies)."""
        return STRATEGIES[self.strategy].needs_embeddings

    @property
    def run_dedup(self) -> bool:
        return self.semantic if self.dedup is None else self.dedup


def check_workers(workers: int | None) -> None:
    """``workers`` is not part of any config (outputs do not depend on it), but is checked like one."""
    _require(workers is None or workers >= 1, "--workers", "at least 1", workers)


def _require(ok: bool, option: str, rule: str, value: Any) -> None:
    """Raise the one-line user error ``OPTION must be RULE, got VALUE`` unless ``ok``."""
    if not ok:
        raise PackprepError(f"{option} must be {rule}, got {value}")


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def stage_key(stage: str, config: Any, **inputs: Any) -> str:
    """Content key of a stage run: its name, config and input fingerprints."""
    payload = json.dumps({"stage": stage, "config": as_dict(config), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
