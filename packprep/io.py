"""File helpers shared by the store, the writers and the reader (numpy + stdlib only): atomic
writes, JSON, hashing, string tables, and the lock a run holds on the folder it writes.

Every file packprep writes goes through :func:`atomic_path` (or :func:`replace_durably`):
it is written under a temporary name and renamed into place, so a reader (or a resumed
run) never sees a half-written file. The file is fsynced before the rename and its folder
after it: a manifest or journal entry that declares a file finished is itself written
after that file is on disk, so a power cut cannot leave a finished-looking stage or
shard whose bytes were still in the page cache. Files written together (a shard's arrays,
the store's files) go through a :class:`RenameBatch`, which keeps that rule for each file
but waits for the disk once for all of them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mmap
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError

_HASH_CHUNK = 1 << 22


@contextlib.contextmanager
def atomic_path(path: Path, *, batch: RenameBatch | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path`` (``batch``: when
    the batch commits, with the other files of that batch)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        if batch is None:
            replace_durably(tmp, path)
        else:
            batch.add(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RenameBatch:
    """Files written under temporary names that :meth:`commit` makes durable and renames together.

    The rule of :func:`replace_durably` holds for each file (its bytes on disk before its
    rename, its folder flushed after), but the waits are shared: every file is fsynced at
    once, from threads, so the file system commits them in one or a few journal transactions,
    and each folder is fsynced once. One at a time, each small file cost two journal commits
    (~2-4 ms each on our virtual disk; ~25 of them in the pack stage of `pack --strategy eos`).
    A file of the batch is under its name only after :meth:`commit`.
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []

    def add(self, tmp: Path, path: Path) -> None:
        """``tmp`` (written and closed) becomes ``path`` at :meth:`commit`."""
        self._pairs.append((Path(tmp), Path(path)))

    def commit(self) -> None:
        """Each file fsynced, then all renamed, then each folder fsynced; a file leaves the batch
        once renamed, so :meth:`discard` after a failure removes only what kept its temporary name."""
        if len(self._pairs) == 1:
            replace_durably(*self._pairs[0])
            self._pairs.clear()
            return
        if self._pairs:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(self._pairs), _FSYNC_THREADS)) as pool:  # fsync releases the GIL
                list(pool.map(fsync_path, [tmp for tmp, _ in self._pairs]))
        folders: dict[Path, None] = {}
        while self._pairs:
            tmp, path = self._pairs[0]
            os.replace(tmp, path)
            folders[path.parent] = None
            del self._pairs[0]
        for folder in folders:
            fsync_path(folder)

    def discard(self) -> None:
        for tmp, _ in self._pairs:
            tmp.unlink(missing_ok=True)
        self._pairs.clear()


_FSYNC_THREADS = 16  # a batch is a shard's or a store's few files; a larger one waits in turns


@contextlib.contextmanager
def renamed_together() -> Iterator[RenameBatch]:
    """A :class:`RenameBatch` committed when the block ends, its temporary files removed if it raises."""
    batch = RenameBatch()
    try:
        yield batch
        batch.commit()
    except BaseException:
        batch.discard()
        raise


def replace_durably(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, with ``tmp``'s bytes and then the rename flushed to disk.

    Without the first fsync a power cut can leave ``path`` renamed but empty (ext4 and
    xfs delay allocation); without the second, the rename itself can be lost.
    """
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def start_writeback(fh: Any, start: int) -> int:
    """Flush ``fh`` and ask the kernel to start writing its bytes from ``start`` to its position to
    disk, without waiting (Linux ``sync_file_range``; elsewhere nothing); returns that position,
    the next call's ``start``.

    Called as a large file grows, so the fsync before its rename finds little left to write:
    the store's tokens are written while the workers encode, a shard's rows while the next
    rows are filled, and their fsyncs had ~30-80 ms of writing to wait for at the end.
    """
    fh.flush()
    end = fh.tell()
    if end > start and (call := _sync_file_range()) is not None:
        call(fh.fileno(), start, end - start, _SYNC_FILE_RANGE_WRITE)  # a failure only leaves it to the fsync
    return end


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)  # a read-only descriptor may fsync a file or a folder on POSIX
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def release_pages(array: np.ndarray) -> None:
    """Drop a memmap's pages from this process (the OS page cache keeps them).

    Gathering documents in a shuffled order touches every page of the token store;
    without this, the mapped pages count towards our resident memory and peak RSS
    grows with the corpus even though nothing is held on purpose.
    """
    backing = getattr(array, "_mmap", None)
    if backing is not None and hasattr(backing, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        if isinstance(array, np.memmap):
            array.flush()
        backing.madvise(mmap.MADV_DONTNEED)


def cache_root() -> Path:
    """``$PACKPREP_CACHE``, else ``$XDG_CACHE_HOME/packprep``, else ``~/.cache/packprep``: facts worth keeping across runs."""
    if os.environ.get("PACKPREP_CACHE"):
        return Path(os.environ["PACKPREP_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "packprep"


def save_npy(path: Path, array: np.ndarray, *, batch: RenameBatch | None = None) -> None:
    """``np.save`` atomically (the ``.npy`` suffix is kept as given); ``batch``: see :func:`atomic_path`."""
    with atomic_path(path, batch=batch) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def save_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def cached_manifest(path: Path, key: str) -> dict[str, Any] | None:
    """The JSON manifest at ``path`` when it records ``key`` (a finished stage to reuse), else None."""
    if not path.is_file():
        return None
    try:
        manifest = load_json(path)
    except json.JSONDecodeError:
        return None
    return manifest if manifest.get("key") == key else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class StringTable:
    """Read-only table of UTF-8 strings stored as one blob plus int64 offsets.

    On disk: ``<stem>.bin`` (the strings concatenated) and ``<stem>.idx.npy``
    (int64 [N+1], ``idx[0] == 0``). Both are memory-mapped, so a table of millions
    of ids opens instantly and costs nothing until an entry is read.
    """

    def __init__(self, stem: Path):
        stem = Path(stem)
        self._offsets = np.load(stem.with_name(stem.name + ".idx.npy"), mmap_mode="r")
        blob_path = stem.with_name(stem.name + ".bin")
        # np.memmap refuses empty files; an empty table has an empty blob.
        self._blob = (
            np.memmap(blob_path, dtype=np.uint8, mode="r") if blob_path.stat().st_size else np.zeros(0, np.uint8)
        )

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"string table index {index} out of range for {n} entries")
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return bytes(self._blob[start:end]).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class StringTableWriter:
    """Append strings one batch at a time; :meth:`close` finishes both files atomically."""

    def __init__(self, stem: Path):
        self._stem = Path(stem)
        self._blob_final = self._stem.with_name(self._stem.name + ".bin")
        self._blob_tmp = self._blob_final.with_name(self._blob_final.name + ".tmp")
        self._fh = open(self._blob_tmp, "wb")
        self._offsets: list[int] = [0]
        self._size = 0

    def extend(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        for item in encoded:
            self._size += len(item)
            self._offsets.append(self._size)
        self._fh.write(b"".join(encoded))

    def close(self, *, batch: RenameBatch | None = None) -> None:
        """Finish both files (``batch``: renamed when it commits)."""
        self._fh.close()
        with contextlib.ExitStack() as stack:
            if batch is None:
                batch = stack.enter_context(renamed_together())
            batch.add(self._blob_tmp, self._blob_final)
            save_npy(self._stem.with_name(self._stem.name + ".idx.npy"), np.asarray(self._offsets, dtype=np.int64), batch=batch)

    def abort(self) -> None:
        self._fh.close()
        self._blob_tmp.unlink(missing_ok=True)


LOCK_NAME = ".packprep.lock"  # flock'ed by the run writing the folder; the OS releases it when that process dies
OWNER_NAME = ".packprep.owner.json"  # who holds the lock: pid and command, for the message a second run prints
LOCK_FILES = frozenset({LOCK_NAME, OWNER_NAME})




def intact_parts(path: Path, header: dict[str, str], files_of: Callable[[Any], dict[str, str]]) -> dict[int, Any] | None:
    """The parts a journal at ``path`` (``save_parts``) lists under this ``header`` (a run's key and
    digests) whose files, beside the journal, still have their sha256 (``files_of(entry)``: name ->
    sha256); None when there is no journal or it is another run's."""
    try:
        saved = load_json(path)
    except (OSError, ValueError):
        return None
    if any(saved.get(name) != value for name, value in header.items()):
        return None
    folder = Path(path).parent
    return {
        int(p): entry
        for p, entry in saved.get("parts", {}).items()
        if all((folder / name).is_file() and sha256_file(folder / name) == sha for name, sha in files_of(entry).items())
    }


def save_parts(path: Path, header: dict[str, str], parts: dict[int, Any]) -> None:
    """Journal the finished ``parts`` (part number -> entry) of the run ``header`` names, atomically."""
    save_json(path, {**header, "parts": {str(p): entry for p, entry in sorted(parts.items())}})


def refuse_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise PackprepError("is a file; expected a folder (new or empty)", path=path)




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


def write_npy_rows(path: Path, first: int, values: np.ndarray) -> None:
    """Write ``values`` over rows ``first:first + len(values)`` of the (C-ordered) ``.npy`` at ``path``, in place.

    With a file write, not through a memory map: tasks on several machines write
    neighbouring ranges of one file on a shared file system, and a mapped page is written
    back whole (a neighbour's bytes in it included), whereas a write sends its own bytes only.
    """
    mapped = np.load(path, mmap_mode="r")
    offset, dtype, row_bytes = mapped.offset, mapped.dtype, mapped.dtype.itemsize * int(np.prod(mapped.shape[1:]))
    del mapped
    data = np.ascontiguousarray(values, dtype=dtype)
    with open(path, "r+b") as fh:
        fh.seek(offset + int(first) * row_bytes)
        fh.write(memoryview(data).cast("B"))


@contextlib.contextmanager
def npy_writer(path: Path, *, dtype: Any, length: int, batch: RenameBatch | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Write the 1-D ``.npy`` of ``length`` elements at ``path`` front to back, piece by piece: the
    context gives ``write(values)``; the file is ``np.save``'s bytes for the joined pieces, written
    to a temporary sibling and renamed when all ``length`` elements are in (removed on error).
    Only one piece is in memory at a time, and no page of the file is mapped here. ``batch``: see :func:`atomic_path`."""
    dtype = np.dtype(dtype)
    with atomic_path(path, batch=batch) as tmp:
        offset = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(length,)).offset  # the header, sized
        written = 0
        with open(tmp, "r+b") as fh:
            fh.seek(offset)

            def write(values: np.ndarray) -> None:
                nonlocal written
                data = np.ascontiguousarray(values, dtype=dtype)
                fh.write(memoryview(data).cast("B"))
                written += len(data)

            yield write
        if written != length:
            raise ValueError(f"{path}: {written} elements written of {length}")
