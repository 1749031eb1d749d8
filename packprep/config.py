"""One frozen, keyword-only config per stage. Each is written into its stage's manifest,
and its hash (with the input fingerprints) decides whether a cached stage is reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("random", "eos")
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
class PackConfig:
    strategy: str = "eos"
    seq_len: int = 2048
    packing: str = "split"
    seed: int = 0
    rows_per_shard: int | None = None  # None: about 256 MB of tokens per shard


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def stage_key(stage: str, config: Any, **inputs: Any) -> str:
    """Content key of a stage run: its name, config and input fingerprints."""
    payload = json.dumps({"stage": stage, "config": as_dict(config), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
