"""Engines: where the heavy stages (tokenize, MinHash dedup, embed, partitions, shards) compute.

An engine computes and returns arrays (or fills the store writer or array it is given);
it decides no folder, cache or key: ``pipeline`` does, and is the only caller. Every
engine implements :class:`Backend`:

- ``local`` (``engines.local.LocalEngine``): in this process (the default).
- ``ray`` (``engines.ray_engine.RayEngine``): as Ray tasks and actors, importing ``ray``
  only when called, writing byte-identical files.

A new engine is one class implementing :class:`Backend` plus its name in ``ENGINES`` and
:meth:`Engine.backend`. Besides tokenize, dedup and embed, an engine orders the partitions
of a partitioned icp/cluster order and writes shards; the partition plan, the chaining of
partitions and the pack plan stay here (docs/distributed.md says what that costs).
"""

from __future__ import annotations

from dataclasses import dataclass

from packprep.engines.base import RAY_INSTALL_HINT, RAY_MAX_RETRIES, Backend, ReadSummary
from packprep.errors import PackprepError

__all__ = [
    "DEFAULT_ENGINE", "ENGINES", "LOCAL", "RAY_INSTALL_HINT", "RAY_MAX_RETRIES", "Backend", "Engine", "ReadSummary",
    "check_engine",
]

ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"


def check_engine(engine: str, *, address: str | None = None) -> None:
    """Raise :class:`PackprepError` for an unknown engine, or a Ray address without ``--engine ray``."""
    if engine not in ENGINES:
        raise PackprepError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise PackprepError("--ray-address needs --engine ray")


@dataclass(frozen=True)
class Engine:
    """Which engine a run asked for (the CLI's ``--engine``/``--ray-address``); not part of any
    stage key, since outputs are identical. :meth:`backend` is the one place it is resolved."""

    name: str = DEFAULT_ENGINE
    address: str | None = None  # Ray: None starts a local instance, "auto" joins a running cluster

    def __post_init__(self) -> None:
        check_engine(self.name, address=self.address)

    @property
    def ray(self) -> bool:
        return self.name == "ray"

    def backend(self) -> Backend:
        if self.ray:
            from packprep.engines.ray_engine import RayEngine

            return RayEngine(address=self.address)
        from packprep.engines.local import LocalEngine

        return LocalEngine()


LOCAL = Engine()
