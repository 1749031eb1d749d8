"""Engines: where the heavy stages (tokenize, MinHash dedup, embed) run.

``local`` runs them in this process (the default). ``ray`` runs them as Ray tasks and
actors (``packprep.engines.ray_engine``, which imports ``ray`` only when called) and
writes byte-identical files. Ordering and packing always run here, on one node, over
memory-mapped arrays (docs/distributed.md says up to what corpus size that holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from packprep.errors import PackprepError

ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"
RAY_INSTALL_HINT = "--engine ray needs ray: pip install 'packprep[ray]'"
RAY_MAX_RETRIES = 3  # Ray reruns a task (or restarts an actor) whose worker died this many times


def check_engine(engine: str, *, address: str | None = None) -> None:
    """Raise :class:`PackprepError` for an unknown engine, or a Ray address without ``--engine ray``."""
    if engine not in ENGINES:
        raise PackprepError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise PackprepError("--ray-address needs --engine ray")


@dataclass(frozen=True)
class Engine:
    """Where the heavy stages run; not part of any stage key, since outputs are identical."""

    name: str = DEFAULT_ENGINE
    address: str | None = None  # Ray: None starts a local instance, "auto" joins a running cluster

    def __post_init__(self) -> None:
        check_engine(self.name, address=self.address)

    @property
    def ray(self) -> bool:
        return self.name == "ray"


LOCAL = Engine()
