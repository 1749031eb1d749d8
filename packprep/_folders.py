"""Output and work folders: what may be written where, and what a rerun may replace."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from packprep._files import load_json, save_json
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.store import MANIFEST_NAME as STORE_MANIFEST, STORE_FORMAT

WORK_DIRNAME = "work"
LOCK_NAME = ".packprep.lock"  # flock'ed by the run writing the folder; the OS releases it when that process dies
OWNER_NAME = ".packprep.owner.json"  # who holds the lock: pid and command, for the message a second run prints
LOCK_FILES = frozenset({LOCK_NAME, OWNER_NAME})


def refuse_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise PackprepError("is a file; expected a folder (new or empty)", path=path)


def finished_with_key(folder: Path, key: str, *, manifest: str = "store.json") -> bool:
    path = folder / manifest
    if not path.is_file():
        return False
    try:
        return load_json(path).get("key") == key
    except ValueError:
        return False


def is_store_file(path: Path) -> bool:
    return path.name.split(".")[0] in {"tokens", "offsets", "text_hash", "doc_ids", "store", "dedup", "embed", "embeddings"}


CONVERTED_DIRNAMES = ("arrow", "megatron")  # packprep convert writes OUT/<format>


def is_output_file(path: Path) -> bool:
    name = path.name
    if name in CONVERTED_DIRNAMES or name.startswith(tuple(f".{d}." for d in CONVERTED_DIRNAMES)):
        return True  # a conversion, or one interrupted before its rename
    # order.partial: the partitioned ordering's journal (packprep.order_files)
    return name.startswith(("shard-", "doc_")) or name.split(".")[0] == "manifest" or name == "order.partial"


def packprep_folder_kind(folder: Path) -> str | None:
    """``"output"`` or ``"store"`` when packprep wrote ``folder`` (finished or interrupted), else None.

    Decided by what the manifest says, not by file names alone: a corpus may well hold a ``manifest.json``.
    """
    if _declares(folder / npy.MANIFEST_NAME, npy.FORMAT_NAME) or (folder / npy.JOURNAL_NAME).is_file():
        return "output"
    if _declares(folder / STORE_MANIFEST, STORE_FORMAT) or (folder / "tokens.bin.tmp").is_file():
        return "store"  # finished, or being written (DocStoreWriter's temporary token file)
    return None


def _declares(manifest: Path, format_name: str) -> bool:
    """Whether the JSON file ``manifest`` says ``"format": format_name`` near its start (where
    packprep writes it), read without parsing what may be a large file of someone else's."""
    try:
        with open(manifest, "rb") as fh:
            head = fh.read(1 << 12)
    except OSError:
        return False
    return re.search(rb'"format"\s*:\s*"' + re.escape(format_name.encode()) + rb'"', head) is not None


def claim_folder(folder: Path, *, overwrite: bool, ours: Callable[[Path], bool], keep: set[str] = frozenset()) -> None:
    """Make ``folder`` ready to be written: create it, or refuse one holding foreign files.

    Files this stage itself writes (``ours``) are allowed: they are a previous or
    interrupted run of packprep and are replaced. Anything else needs ``--overwrite``.
    """
    refuse_file(folder)
    folder.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in keep | LOCK_FILES and not ours(p))
    if foreign and not overwrite:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise PackprepError(f"is not empty ({listed}); pass --overwrite to replace its contents", path=folder)
    if overwrite:
        for name in foreign:
            _remove(folder / name)


def clear_output(out: Path, *, keep: set[str] = frozenset()) -> None:
    """Remove a previous output (manifest first, so nothing half-old looks finished).

    ``keep``: file names to leave in place (the finished shards a resumed run reuses).
    """
    (out / npy.MANIFEST_NAME).unlink(missing_ok=True)
    for path in out.iterdir():
        if path.name != WORK_DIRNAME and path.name not in keep and is_output_file(path):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def removed_on_error(folder: Path) -> Iterator[None]:
    """Remove ``folder`` if it did not exist before and the block fails on a user error.

    A bad input or a failed write (a full disk) must leave nothing behind; an
    interrupted run (Ctrl-C) keeps what it finished so that a rerun resumes.
    """
    existed = folder.exists()
    try:
        yield
    except FolderBusyError:
        raise  # the folder is another run's: never remove it
    except (PackprepError, OSError):
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise


class FolderBusyError(PackprepError):
    """Another packprep process is writing the folder."""


_held: dict[Path, int] = {}  # folders this process holds, and how many nested holds: a stage inside a run re-enters


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for this process while the block writes into it (creating the folder).

    A second packprep run into the same folder stops at once with a :class:`FolderBusyError`
    naming the first process, instead of both renaming each other's temporary files away.
    The lock is an OS file lock (``filelock``): a killed run's lock goes with its process,
    so a stale lock never blocks a rerun. The lock file stays (removing it would race with
    a run opening it); :data:`LOCK_FILES` are neither foreign files nor outputs.
    """
    from filelock import FileLock, Timeout

    key = Path(os.path.abspath(folder))
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    refuse_file(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderBusyError(f"is being written by {_owner(folder)}; wait for it to finish", path=folder) from None
    _held[key] = 1
    try:
        save_json(folder / OWNER_NAME, {"pid": os.getpid(), "command": _command()})
        yield
    finally:
        del _held[key]
        # The folder may be gone (a failed first run removes what it created): then so is the lock file.
        with contextlib.suppress(OSError):
            (folder / OWNER_NAME).unlink(missing_ok=True)
        lock.release()


def _command() -> str:
    name = Path(sys.argv[0]).name if sys.argv else "python"
    if name in ("packprep", "__main__.py", "cli.py"):
        name = "packprep"
    return " ".join([name, *sys.argv[1:]])


def _owner(folder: Path) -> str:
    """"another packprep run (pid N: command)", as far as the owner file says; the holder writes
    it right after taking the lock, so a run that lost the race by microseconds waits briefly."""
    for _ in range(20):
        try:
            owner = load_json(folder / OWNER_NAME)
            return f"another packprep run (pid {int(owner['pid'])}: {owner['command']})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "another packprep run"
