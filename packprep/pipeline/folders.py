"""Output and work folders: what may be written where, and what a rerun may replace (the pipeline's folder claiming)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from packprep.errors import PackprepError
from packprep.formats import CONVERSIONS, npy
from packprep.io import LOCK_FILES, FolderBusyError, load_json, refuse_file

WORK_DIRNAME = "work"


def finished_with_key(folder: Path, key: str, *, manifest: str = "store.json") -> bool:
    path = folder / manifest
    if not path.is_file():
        return False
    try:
        return load_json(path).get("key") == key
    except ValueError:
        return False


CONVERTED_DIRNAMES = tuple(CONVERSIONS)  # packprep convert writes OUT/<format>


ORDER_JOURNAL_DIRNAME = "order.partial"  # OUT/order.partial/: partitions a killed run finished ordering
PACK_JOURNAL_DIRNAME = "pack.partial"  # OUT/pack.partial/: the order and the parts' pack plans (formats.pack_parts)


def is_output_file(path: Path) -> bool:
    name = path.name
    if name in CONVERTED_DIRNAMES or name.startswith(tuple(f".{d}." for d in CONVERTED_DIRNAMES)):
        return True  # a conversion, or one interrupted before its rename
    # the partitioned ordering's journal (pipeline.ordering) and the pack parts' (pipeline.pack_parts)
    return name.startswith(("shard-", "doc_")) or name.split(".")[0] == "manifest" or name in (ORDER_JOURNAL_DIRNAME, PACK_JOURNAL_DIRNAME)


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
