"""What every stage of one pipeline call shares, passed down as one value instead of three parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from packprep.config import check_workers
from packprep.engines import LOCAL, Backend, Engine
from packprep.progress import Reporter, SilentReporter


@dataclass(frozen=True)
class Run:
    """``backend``: where the heavy stages compute (``Engine.backend()``, resolved once); ``reporter``:
    who hears about progress; ``workers``: tokenizer workers (None: all cores). No output depends on them."""

    backend: Backend = field(default_factory=LOCAL.backend)
    reporter: Reporter = field(default_factory=SilentReporter)
    workers: int | None = None

    @classmethod
    def of(cls, engine: Engine | Backend = LOCAL, reporter: Reporter | None = None, workers: int | None = None) -> Run:
        """The run the public functions' ``engine``, ``reporter`` and ``workers`` arguments describe."""
        check_workers(workers)
        return cls(engine.backend(), reporter if reporter is not None else SilentReporter(), workers)
