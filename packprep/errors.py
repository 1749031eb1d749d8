"""The one error type a user can cause, and the exit codes the CLI maps it to.

Bugs raise ordinary exceptions (and show a traceback); anything the user can fix
(a bad path, a malformed record, a bad option) raises :class:`PackprepError`, which
the CLI prints as one line and turns into exit code 2.
"""

from __future__ import annotations

from os import PathLike

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class PackprepError(Exception):
    """A problem with the user's input or options, reported as ``file:line: message``.

    ``path`` and ``line`` are optional; when given they prefix the message so the
    user can open the offending record directly.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, path: str | PathLike[str] | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(self.location_prefix() + message)

    def location_prefix(self) -> str:
        if self.path is None:
            return ""
        if self.line is None:
            return f"{self.path}: "
        return f"{self.path}:{self.line}: "
