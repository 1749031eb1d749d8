"""DocStore: the on-disk document store every stage reads and the tokenizer writes.

Layout of a WORK folder (format ``packprep-docstore``, version 1)::

    WORK/
      tokens.bin          all tokens of all kept documents, back to back (uint16 or uint32, raw, memmapped)
      offsets.npy         int64 [N+1]; document i is tokens[offsets[i]:offsets[i+1]], offsets[0] == 0
      text_hash.npy       uint64 [N]; hash of the normalised text (exact dedup reads it); written at
                          tokenize time when a dedup will read it, else (exactly decoding tokenizers
                          only) computed from the decoded documents when a dedup first needs it
      doc_ids.bin         UTF-8 ids, back to back      } a StringTable: id of document i
      doc_ids.idx.npy     int64 [N+1] byte offsets     }
      store.json          manifest, written last: a store is complete when it exists

A store a recipe assembles (pipeline/recipe.py) also has per-document columns, one value
per document, written by :meth:`DocStoreWriter.add_column` before the manifest and read by
:meth:`DocStore.column`::

      sources.npy         int16 [N]; which of the recipe's sources the document came from
      benchmark.npy       int32 [N]; the benchmark file a decontaminated document matched, else -1
      original.npy        int64 [N]; the first copy of the same pool document in this store

Tokens are raw rather than ``.npy`` because the count is unknown until the corpus
has streamed through; the dtype lives in the manifest (as nanoGPT and Megatron do).
Later stages (dedup, embed) add their own files and manifests beside these.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import StringTable, StringTableWriter, load_json, renamed_together, replace_durably, save_json, save_npy, start_writeback
from packprep.errors import PackprepError

STORE_FORMAT = "packprep-docstore"
STORE_VERSION = 1
MANIFEST_NAME = "store.json"
# Scratch of an engine that writes the store in blocks (the Ray engine): removed once they are
# concatenated, and by the next run when a killed one left them.
BLOCKS_DIRNAME = ".blocks"
_COPY_CHUNK = 8 << 20
_COPY_TOKENS = 1 << 22  # copy_documents reads this many tokens at a time
_WRITEBACK_BYTES = 8 << 20  # tokens.bin's writeback is started every this many bytes (io.start_writeback)
TEXT_HASH_FILE = "text_hash.npy"
STORE_FILES = ("tokens.bin", "offsets.npy", TEXT_HASH_FILE, "doc_ids.bin", "doc_ids.idx.npy", MANIFEST_NAME)
COLUMNS = ("sources", "benchmark", "original")  # optional per-document columns (see the layout above)


@dataclass(frozen=True)
class DocStore:
    """A finished document store, memory-mapped. Open with :meth:`open`."""

    path: Path
    tokens: np.ndarray  # uint16/uint32 [T], memmap
    offsets: np.ndarray  # int64 [N+1], memmap unless opened with mapped=False
    text_hash: np.ndarray | None  # uint64 [N], likewise; None until hashed (see the layout above)
    doc_ids: StringTable
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mapped: bool = True) -> DocStore:
        """``mapped``: offsets and text hashes memory-mapped too (read-only), not read whole, so a process
        (the pipeline's driver, a task) that reads slices of a large store holds those, not the corpus's
        16 B per document; ``io.release_pages`` lets go of what a pass over all of them mapped. False:
        read whole into memory."""
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise PackprepError("not a finished document store (no store.json); run `packprep tokenize` first", path=path)
        manifest = load_json(manifest_path)
        if manifest.get("format") != STORE_FORMAT or manifest.get("version") != STORE_VERSION:
            raise PackprepError(
                f"unsupported store format {manifest.get('format')!r} version {manifest.get('version')!r}",
                path=manifest_path,
            )
        dtype = np.dtype(manifest["dtype"])
        size = (path / "tokens.bin").stat().st_size
        tokens = np.memmap(path / "tokens.bin", dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        return cls(
            path=path,
            tokens=tokens,
            offsets=np.load(path / "offsets.npy", mmap_mode="r" if mapped else None),
            text_hash=np.load(hashes, mmap_mode="r" if mapped else None) if (hashes := path / TEXT_HASH_FILE).is_file() else None,
            doc_ids=StringTable(path / "doc_ids"),
            manifest=manifest,
        )

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        """int64 [N]: tokens per document."""
        return np.diff(self.offsets)

    def column(self, name: str) -> np.ndarray | None:
        """The per-document column ``name`` (one of :data:`COLUMNS`), or None when this store has none."""
        if name not in COLUMNS:
            raise ValueError(f"unknown store column {name!r}")
        path = self.path / f"{name}.npy"
        return np.load(path) if path.is_file() else None

    def document(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

    def read_spans(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Tokens ``[starts[i], starts[i] + lengths[i])`` for each i, back to back, read with pread.

        Reading (not indexing the memmap) keeps the store's pages out of this process:
        scattered reads through a mapping fault in ~1 MB per touch on Linux, so gathering
        shuffled documents would map nearly the whole file and RSS would grow with the
        corpus. Adjacent spans are read with one call.
        """
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        out = np.empty(int(lengths.sum()), dtype=self.tokens.dtype)
        if not len(out):
            return out
        nonempty = lengths > 0
        starts, lengths = starts[nonempty], lengths[nonempty]
        ends = starts + lengths
        first = np.flatnonzero(np.r_[True, starts[1:] != ends[:-1]])  # a run starts where a span does not continue the last
        run_start, run_end = starts[first], ends[np.r_[first[1:], len(starts)] - 1]
        itemsize = out.itemsize
        buffer = memoryview(out).cast("B")
        position = 0
        with open(self.path / "tokens.bin", "rb", buffering=0) as fh:
            for a, b in zip(run_start.tolist(), run_end.tolist()):
                size = (b - a) * itemsize
                _pread_into(fh.fileno(), buffer[position : position + size], a * itemsize)
                position += size
        return out


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        read = os.preadv(fd, [view], offset)
        if read == 0:
            raise OSError(f"unexpected end of tokens.bin at byte {offset}: the store is truncated")
        view, offset = view[read:], offset + read


def is_store(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


class DocStoreWriter:
    """Streams documents into a new store; :meth:`finish` writes the manifest last.

    Use as a context manager: leaving it with an exception removes the partial
    files, so a killed or failed run never leaves something that looks finished.
    """

    def __init__(self, path: Path, *, dtype: np.dtype):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MANIFEST_NAME).unlink(missing_ok=True)
        (self.path / TEXT_HASH_FILE).unlink(missing_ok=True)  # an earlier store's: this one may have none
        self.dtype = np.dtype(dtype)
        self._tokens_tmp = self.path / "tokens.bin.tmp"
        self._tokens = open(self._tokens_tmp, "wb")
        self._written_back = 0  # bytes of tokens.bin.tmp whose writeback has been started
        self._ids = StringTableWriter(self.path / "doc_ids")
        self._lengths: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._unhashed = False
        self._columns: dict[str, np.ndarray] = {}
        self.num_documents = 0
        self.num_tokens = 0

    def __enter__(self) -> DocStoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def append(self, tokens: np.ndarray, lengths: np.ndarray, ids: list[str], text_hash: np.ndarray | None) -> None:
        """Add a batch: flat ``tokens`` with int64 ``lengths`` [B], ``ids`` [B], uint64 ``text_hash`` [B]
        (None in every batch: a store without ``text_hash.npy``)."""
        if (text_hash is None) != self._unhashed and self.num_documents:
            raise ValueError("every batch of a store has text hashes, or none has")
        self._unhashed = text_hash is None
        self._write_tokens(tokens)
        self._ids.extend(ids)
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        if text_hash is not None:
            self._hashes.append(np.asarray(text_hash, dtype=np.uint64))
        self.num_documents += len(ids)

    def append_tokens(self, tokens: np.ndarray) -> None:
        """Write the first tokens of a document still arriving (a huge one, in pieces): the next
        :meth:`append`'s first length counts them, so its ``lengths`` sum to them plus its own tokens."""
        self._write_tokens(tokens)

    def _write_tokens(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        # ids of a dtype no wider than the store's fit by construction: no pass over the batch to check them
        if len(tokens) and np.iinfo(tokens.dtype).max > np.iinfo(self.dtype).max and int(tokens.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(tokens.max())} does not fit {self.dtype}")
        self._tokens.write(memoryview(np.ascontiguousarray(tokens, dtype=self.dtype)).cast("B"))  # no bytes copy
        self.num_tokens += int(len(tokens))
        if self.num_tokens * self.dtype.itemsize - self._written_back >= _WRITEBACK_BYTES:
            self._written_back = start_writeback(self._tokens, self._written_back)  # finish's fsync then waits for little

    def add_column(self, name: str, values: np.ndarray) -> None:
        """A per-document column (one of :data:`COLUMNS`), written by :meth:`finish` before the manifest."""
        if name not in COLUMNS:
            raise ValueError(f"unknown store column {name!r}")
        self._columns[name] = np.asarray(values)

    def finish(self, manifest: dict[str, Any]) -> DocStore:
        # The files reach the disk together (io.RenameBatch), all before the manifest.
        with renamed_together() as batch:
            for name, values in self._columns.items():
                if len(values) != self.num_documents:
                    raise ValueError(f"column {name!r} has {len(values)} values for {self.num_documents} documents")
                save_npy(self.path / f"{name}.npy", values, batch=batch)
            self._tokens.close()
            batch.add(self._tokens_tmp, self.path / "tokens.bin")
            self._ids.close(batch=batch)
            lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
            if int(lengths.sum()) != self.num_tokens:  # e.g. a document begun by append_tokens and never ended
                raise ValueError(f"the documents' lengths sum to {int(lengths.sum())}, not the {self.num_tokens} tokens written")
            save_npy(self.path / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), batch=batch)
            if not self._unhashed:
                hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)
                save_npy(self.path / TEXT_HASH_FILE, hashes, batch=batch)
        _write_manifest(self.path, self.dtype, self.num_documents, self.num_tokens, manifest)
        return DocStore.open(self.path)

    def abort(self) -> None:
        self._tokens.close()
        self._ids.abort()
        for name in STORE_FILES:
            (self.path / (name + ".tmp")).unlink(missing_ok=True)
        self._tokens_tmp.unlink(missing_ok=True)


def is_store_file(path: Path) -> bool:
    """Whether ``path`` in WORK is one of the files the store and its cached stages write."""
    return path.name.split(".")[0] in {"tokens", "offsets", "text_hash", "doc_ids", "store", "dedup", "embed", "embeddings", *COLUMNS}


def _write_manifest(path: Path, dtype: np.dtype, num_documents: int, num_tokens: int, manifest: dict[str, Any]) -> None:
    """``store.json``, written last: the format header, the sizes, then what the caller records."""
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "dtype": np.dtype(dtype).name}
    save_json(path / MANIFEST_NAME, {**header, "num_documents": num_documents, "num_tokens": num_tokens, **manifest})


def concatenate(
    blocks: list[Path],
    work: Path,
    *,
    dtype: np.dtype,
    manifest: dict[str, Any],
    copy: Callable[[list[tuple[str, str, int]]], None] | None = None,
) -> DocStore:
    """Write WORK's store from finished block stores (``DocStoreWriter`` outputs) in order: the files,
    bytes and manifest one ``DocStoreWriter`` would write from all their documents.

    ``copy``: runs the byte copies ``(source, target, start)`` (default: here, one after another);
    the Ray engine runs them as tasks, so no token passes through its driver.
    """
    parts = [DocStore.open(b) for b in blocks]
    (work / MANIFEST_NAME).unlink(missing_ok=True)
    copies = []
    for name in ("tokens.bin", "doc_ids.bin"):
        sizes = [(p.path / name).stat().st_size for p in parts]
        tmp = work / (name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.truncate(sum(sizes))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        copies += [(str(p.path / name), str(tmp), start) for p, start, size in zip(parts, starts, sizes) if size]
    (copy or _copy_here)(copies)
    for name in ("tokens.bin", "doc_ids.bin"):
        replace_durably(work / (name + ".tmp"), work / name)
    save_npy(work / "doc_ids.idx.npy", _stack_offsets([np.load(p.path / "doc_ids.idx.npy") for p in parts]))
    offsets = _stack_offsets([p.offsets for p in parts])
    save_npy(work / "offsets.npy", offsets)
    hashed = [p.text_hash is not None for p in parts]
    if any(hashed) and not all(hashed):
        raise ValueError("every block of a store has text hashes, or none has")
    (work / TEXT_HASH_FILE).unlink(missing_ok=True)  # an earlier store's
    if all(hashed):
        save_npy(work / TEXT_HASH_FILE, np.concatenate([p.text_hash for p in parts]))
    _write_manifest(work, dtype, len(offsets) - 1, int(offsets[-1]), manifest)
    return DocStore.open(work)


def copy_documents(writer: DocStoreWriter, store: DocStore, docs: np.ndarray) -> None:
    """Append ``store``'s documents ``docs`` (int64 [M], repeats allowed) to ``writer``, ~4M tokens at a time
    (a recipe's pool and split stores are such copies)."""
    lengths = store.lengths()[docs]
    ends = np.cumsum(lengths)
    start = 0
    while start < len(docs):
        stop = max(int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _COPY_TOKENS, side="right")), start + 1)
        batch = docs[start:stop]
        tokens = store.read_spans(store.offsets[batch], lengths[start:stop])
        hashes = None if store.text_hash is None else store.text_hash[batch]
        writer.append(tokens, lengths[start:stop], [store.doc_ids[int(d)] for d in batch], hashes)
        start = stop


def copy_range(source: str, target: str, start: int) -> None:
    """Write the bytes of ``source`` into ``target`` at byte ``start`` (idempotent: a retry writes the same bytes)."""
    with open(source, "rb") as src, open(target, "r+b") as dst:
        dst.seek(start)
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)


def _copy_here(copies: list[tuple[str, str, int]]) -> None:
    for source, target, start in copies:
        copy_range(source, target, start)


def _stack_offsets(parts: list[np.ndarray]) -> np.ndarray:
    """int64 [sum(N_i)+1]: the [N_i+1] offset arrays of consecutive blocks as one."""
    lengths = [np.diff(p) for p in parts]
    return np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
