"""Convert a finished npy output into the formats trainers read (``packprep convert OUT --to ...``).

The writers live in ``packprep.formats.arrow`` and ``packprep.formats.megatron``; this
module adds what every conversion needs: a temporary sibling folder renamed into place
when complete (so ``DEST`` is either the old conversion or the new one, never half of
one), a skip when ``DEST`` already holds this output converted with the same options,
and user errors as :class:`PackprepError`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packprep.io import fsync_path, load_json
from packprep.io import folder_lock
from packprep.errors import PackprepError
from packprep.formats import CONVERSIONS, npy

_MANIFEST_NAME = "packprep.json"  # the same name in both formats


def convert(
    out: Path,
    *,
    to: str,
    dest: Path | None = None,
    labels: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Convert the npy output ``out`` to format ``to`` in ``dest`` (default ``out/<to>``); return ``dest``.

    ``labels`` writes the ``labels`` column (arrow only, on by default: the Hugging Face
    recipe's ``collate_position_ids`` needs it; Megatron derives labels itself).
    ``progress`` is called with the number of rows converted, once per batch.
    """
    if to not in CONVERSIONS:
        raise PackprepError(f"unknown format {to!r}; expected one of {', '.join(CONVERSIONS)}")
    out = Path(out)
    dest = out / to if dest is None else Path(dest)
    manifest = _source_manifest(out)
    # Writing into ``out``, hold it: a pack rewriting it (or another convert) must not run meanwhile.
    # A --dest elsewhere leaves ``out`` untouched, so a read-only output converts too.
    inside = dest.resolve().is_relative_to(out.resolve())
    with folder_lock(out) if inside else contextlib.nullcontext():
        return _convert(out, manifest, to=to, dest=dest, labels=labels, progress=progress)


def _convert(
    out: Path, manifest: dict[str, Any], *, to: str, dest: Path, labels: bool, progress: Callable[[int], None] | None
) -> Path:
    if _up_to_date(dest, to=to, key=manifest["key"], labels=labels):
        return dest
    _check_replaceable(dest)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        CONVERSIONS[to].write(out, tmp, labels=labels, progress=progress)
        _replace_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _source_manifest(out: Path) -> dict[str, Any]:
    try:
        return npy.read_manifest(out)
    except FileNotFoundError:
        raise PackprepError(
            "is not a finished packprep output (no manifest.json); run `packprep pack` first", path=out
        ) from None
    except ValueError as err:
        raise PackprepError(str(err)) from None


def _up_to_date(dest: Path, *, to: str, key: str, labels: bool) -> bool:
    """Whether ``dest`` already holds output ``key`` converted to ``to`` with these options."""
    path = dest / _MANIFEST_NAME
    if not path.is_file():
        return False
    info = load_json(path)
    same = info.get("format") == f"packprep-{to}" and info.get("source_key") == key
    return same and (not CONVERSIONS[to].takes_labels or ("labels" in info["columns"]) == labels)


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace a file, or a non-empty folder that is not an earlier conversion."""
    if dest.exists() and not dest.is_dir():
        raise PackprepError("is a file; expected a folder for the converted output", path=dest)
    if dest.is_dir() and any(dest.iterdir()) and not (dest / _MANIFEST_NAME).is_file():
        raise PackprepError("is not empty and is not a packprep conversion; choose another --dest", path=dest)


def _replace_folder(new: Path, dest: Path) -> None:
    # A folder cannot be renamed over a non-empty one: move the old one aside first, so
    # at every moment DEST is either complete-old, absent, or complete-new.
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    new.rename(dest)
    fsync_path(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
