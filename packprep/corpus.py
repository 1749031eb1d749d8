"""Corpus readers: a file, a folder or a saved Hugging Face dataset -> a stream of ``(doc_id, text)``.

This is the only module that parses raw input. Everything streams: JSONL (plain,
gzip, zstd) is read in 1 MiB binary chunks split on ``\\n`` and parsed with
``orjson.loads`` on bytes; parquet and arrow are read one record batch at a time.
Only a ``.json`` list file is loaded whole (no streaming JSON-array parser among our
dependencies). Order is deterministic: sources by relative posix path, records in
file order, so the same corpus always gives the same documents, order and ids.

Folders read as one source (the layout ``datasets`` ``save_to_disk`` writes)::

    ds/  state.json  dataset_info.json  data-00000-of-00002.arrow  data-00001-of-00002.arrow
    dd/  dataset_dict.json {"splits": [...]}   train/<as ds/>   test/<as ds/>

The ``.arrow`` files are Arrow IPC *streams*; pyarrow reads them directly, so we
do not import ``datasets`` (seconds of import time for nothing).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from packprep.io import load_json
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.json_text import JsonText, split_huge_record
from packprep.store import MANIFEST_NAME as STORE_MANIFEST, STORE_FORMAT

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".parquet", ".txt", ".md")
_CHUNK = 1 << 20  # 1 MiB: per-chunk Python overhead vanishes, memory stays flat
_COMPRESSED_CHUNK = 1 << 18  # decompressed 4-10x (JSONL), to about _CHUNK
_TABLE_BATCH_ROWS = 1024  # parquet rows per batch; bounded so 100 KB documents do not balloon memory
_MAX_FIRST_ERRORS = 5
_MISSING = object()
_SKIP_HINT = "or pass --on-error skip"
_COUNT_CHUNK = 8 << 20  # byte_ranges counts newlines this much at a time
MIN_TAIL_RANGE = 256 << 10  # iter_source_parts' shrinking ranges stop here: a range's round trip stays small beside its work
_WHOLE_JSON_MAX = 256 << 20  # a pretty-printed file is parsed whole to say what it is, up to this size


@dataclass
class ReadCounters:
    """Mutated while :func:`iter_documents` runs, so the caller can report progress and skips."""

    files: int = 0  # files opened (each .arrow file of a saved dataset counts)
    records: int = 0  # records yielded
    skipped: int = 0  # bad records skipped with on_error="skip"
    with_id: int = 0  # records yielded whose id came from id_field (the others get path:line)
    bytes_read: int = 0  # approximate raw (uncompressed) text bytes, for MB/s progress
    first_errors: list[str] = field(default_factory=list)  # first few skip messages, "path:line: why"


class _Reader:
    """Per-call settings plus the one place a bad record is either raised or counted."""

    def __init__(
        self, text_field: str, id_field: str, on_error: str, counters: ReadCounters, fingerprint: Fingerprint | None = None
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.text_field, self.id_field, self.on_error, self.counters = text_field, id_field, on_error, counters
        self.fingerprint = fingerprint  # fed the raw bytes of every file read whole
        self.huge_text_bytes: int | None = None  # see read_source

    def feed(self, data: bytes) -> None:
        if self.fingerprint is not None:
            self.fingerprint.feed(data)

    def bad(self, message: str, path: Path, line: int | None) -> None:
        error = PackprepError(message, path=path, line=line)
        if self.on_error == "raise":
            raise error
        self.counters.skipped += 1
        if len(self.counters.first_errors) < _MAX_FIRST_ERRORS:
            self.counters.first_errors.append(str(error))

    def document(self, record: Any, rel: str, index: int, path: Path) -> tuple[str, str] | None:
        """``(doc_id, text)`` for a parsed JSON record, or None after reporting why it is bad."""
        if type(record) is not dict:
            return self.bad(f"record is a JSON {_json_type(record)}, not an object like {{\"text\": ...}}", path, index)
        text = record.get(self.text_field, _MISSING)
        if type(text) is not str:
            if text is _MISSING:
                fields = ", ".join(list(record)[:8]) or "none"
                why = f"no field '{self.text_field}'; use --text-field to name the text field (fields here: {fields})"
            else:
                why = f"field '{self.text_field}' is a JSON {_json_type(text)}, not a string; use --text-field"
            return self.bad(why, path, index)
        doc_id = record.get(self.id_field)
        if doc_id is None:
            return f"{rel}:{index}", text
        self.counters.with_id += 1
        return str(doc_id), text


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if lower.endswith(s)), None)


def _is_hf_folder(names: set[str]) -> bool:
    """Whether a folder's file names are a ``save_to_disk`` layout (Dataset or DatasetDict)."""
    if "dataset_dict.json" in names:
        return True
    return bool(names & {"state.json", "dataset_info.json"}) and any(n.endswith(".arrow") for n in names)


@dataclass
class CorpusListing:
    """What a corpus path holds: the sources read, in order, and what the walk passed over."""

    sources: list[Path]
    unsupported: list[Path]  # files of a type we do not read, sorted
    packprep_folders: list[Path]  # outputs and document stores of packprep inside the corpus: never corpus


def _walk(folder: Path, listing: CorpusListing, seen: set[str]) -> None:
    real = os.path.realpath(folder)
    if real in seen:  # a symlink loop: we follow links so a corpus can be assembled from symlinks
        return
    seen.add(real)
    with os.scandir(folder) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    if _is_hf_folder({e.name for e in entries}):
        listing.sources.append(folder)
        return
    for entry in entries:
        if entry.is_dir():
            # `packprep pack corpus corpus/out` puts OUT (and OUT/work) inside the corpus: its manifests
            # and arrow copy are not records, and the corpus fingerprint must not change when they appear.
            if packprep_folder_kind(Path(entry.path)):
                listing.packprep_folders.append(Path(entry.path))
            else:
                _walk(Path(entry.path), listing, seen)
        elif entry.is_file():
            (listing.sources if _suffix(entry.name) else listing.unsupported).append(Path(entry.path))


def corpus_root(path: Path) -> Path:
    """The folder that ids and fingerprints are relative to: the corpus folder, or a single file's parent."""
    return path if path.is_dir() else path.parent


def list_corpus_files(path: str | Path) -> list[Path]:
    """Every source under ``path``, sorted by relative posix path; a saved HF dataset folder is one entry."""
    return scan_corpus(path).sources


def scan_corpus(path: str | Path) -> CorpusListing:
    """:func:`list_corpus_files` with what it passed over; raises on a path that holds no corpus."""
    path = Path(path)
    if path.is_file():
        if not _suffix(path.name):
            raise PackprepError(f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}", path=path)
        return CorpusListing(sources=[path], unsupported=[], packprep_folders=[])
    if not path.is_dir():
        raise PackprepError("no such file or folder", path=path)
    _refuse_packprep_folder(path)
    listing = CorpusListing(sources=[], unsupported=[], packprep_folders=[])
    _walk(path, listing, set())
    for found in (listing.sources, listing.unsupported, listing.packprep_folders):
        found.sort(key=lambda p: p.relative_to(path).as_posix())
    if not listing.sources:
        skipped = ", ".join(map(str, listing.packprep_folders))
        passed = f"; passed over packprep's own {skipped}" if skipped else ""
        raise PackprepError(
            f"folder has no corpus files ({', '.join(SUPPORTED_SUFFIXES)} or a datasets save_to_disk folder){passed}",
            path=path,
        )
    return listing


def _refuse_packprep_folder(path: Path) -> None:
    """A packprep output or document store given as the corpus: say what it is and what to pass."""
    kind = packprep_folder_kind(path)
    if kind is None:
        return
    manifest = path / ("manifest.json" if kind == "output" else "store.json")
    try:
        source = load_json(manifest).get("source", {})
    except (OSError, ValueError, AttributeError):
        source = {}
    made_from = f" ({source['path']})" if isinstance(source.get("path"), str) else ""
    if kind == "output":
        why = (
            f"is a packprep output, not a corpus: pass the corpus it was made from{made_from}, "
            f"or {source.get('store') or path / 'work'} to reuse its document store"
        )
    elif manifest.is_file():
        why = (
            f"is a packprep document store, not a corpus: `packprep pack {path} OUT` packs it as it is; "
            f"to tokenize again, pass the corpus it was made from{made_from}"
        )
    else:
        why = "is an unfinished packprep document store (its run was interrupted), not a corpus: pass the corpus"
    raise PackprepError(why, path=path)


def iter_documents(
    path: str | Path,
    *,
    text_field: str = "text",
    id_field: str = "id",
    on_error: Literal["raise", "skip"] = "raise",
    counters: ReadCounters | None = None,
    fingerprint: Fingerprint | None = None,
    sources: list[Path] | None = None,
    huge_text_bytes: int | None = None,
) -> Iterator[tuple[str, str | JsonText]]:
    """Stream ``(doc_id, text)`` from a file or folder in a deterministic order; empty texts included.

    ``doc_id`` is the record's ``id_field`` as ``str`` when present, else ``"rel/path:line"``
    (1-based line for JSONL, 1-based record/row index for .json lists, parquet and arrow);
    a .txt/.md file is one document whose id is its relative path. Record-level problems
    raise :class:`PackprepError` (``path:line: why``) or, with ``on_error="skip"``, are
    counted in ``counters``; file-level problems (missing path, corrupt archive, a .json
    that does not parse, a table without the text column) always raise. ``fingerprint``
    (``Fingerprint(corpus_root(path))``) is fed the files as they are read: once the
    documents are exhausted, its digest is ``corpus_fingerprint(path)``. ``sources``:
    ``list_corpus_files(path)`` when the caller has listed the corpus already.
    ``huge_text_bytes``: see :func:`read_source`.
    """
    path = Path(path)
    sources = list_corpus_files(path) if sources is None else sources
    root = corpus_root(path)
    counters = counters if counters is not None else ReadCounters()
    for source in sources:
        yield from read_source(
            source, root, text_field=text_field, id_field=id_field, on_error=on_error, counters=counters,
            fingerprint=fingerprint, huge_text_bytes=huge_text_bytes,
        )


def read_source(
    source: Path,
    root: Path,
    *,
    text_field: str = "text",
    id_field: str = "id",
    on_error: Literal["raise", "skip"] = "raise",
    counters: ReadCounters | None = None,
    byte_range: tuple[int, int, int] | None = None,
    fingerprint: Fingerprint | None = None,
    huge_text_bytes: int | None = None,
) -> Iterator[tuple[str, str | JsonText]]:
    """``(doc_id, text)`` of one corpus source (a file, or a saved dataset folder) as :func:`iter_documents`
    reads it; ids are relative to ``root`` (:func:`corpus_root`). Both engines read through this.

    ``byte_range``: ``(start, end, first_line)`` from :func:`source_parts`: only the lines of a plain
    ``.jsonl`` in bytes [start, end), numbered from ``first_line``, with the same parsing, ids and errors.
    ``fingerprint``: see :func:`iter_documents` (whole sources only).
    ``huge_text_bytes``: a JSONL line of at least this many bytes whose text is a string of at
    least half of them gives its text as a ``json_text.JsonText`` (decoded piece by piece when
    asked) rather than a str: same characters, same errors, a fraction of the memory.
    """
    assert fingerprint is None or byte_range is None, "a fingerprint covers whole files"
    reader = _Reader(text_field, id_field, on_error, counters if counters is not None else ReadCounters(), fingerprint)
    reader.huge_text_bytes = huge_text_bytes
    for doc in _read_source(source, root, reader, byte_range):
        reader.counters.records += 1
        yield doc


def _read_source(source: Path, root: Path, reader: _Reader, byte_range: tuple[int, int, int] | None) -> Iterator[tuple[str, str]]:
    if byte_range is not None:
        yield from _read_jsonl(source, source.relative_to(root).as_posix(), reader, suffix=".jsonl", byte_range=byte_range)
        return
    if source.is_dir():
        for arrow in _hf_arrow_files(source):
            yield from _fingerprinted(arrow, reader, _read_arrow(arrow, arrow.relative_to(root).as_posix(), reader))
        return
    yield from _fingerprinted(source, reader, _read_file(source, root, reader))


def _fingerprinted(file: Path, reader: _Reader, documents: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    if reader.fingerprint is None:
        yield from documents
        return
    reader.fingerprint.start(file)
    yield from documents
    reader.fingerprint.end()


def _read_file(source: Path, root: Path, reader: _Reader) -> Iterator[tuple[str, str]]:
    rel, suffix = source.relative_to(root).as_posix(), _suffix(source.name)
    reader.counters.files += 1
    if suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst"):
        yield from _read_jsonl(source, rel, reader, suffix=suffix)
    elif suffix == ".json":
        yield from _read_json(source, rel, reader)
    elif suffix == ".parquet":
        yield from _read_parquet(source, rel, reader)
    else:
        yield from _read_text(source, rel, reader)


def _chunks(path: Path, suffix: str, feed: Callable[[bytes], None] | None = None) -> Iterator[bytes]:
    """Decompressed bytes of ``path`` in chunks of roughly a MiB; ``feed`` gets the raw bytes as they are read."""
    if suffix == ".jsonl":
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                if feed is not None:
                    feed(chunk)
                yield chunk
        return
    if suffix == ".jsonl.zst":
        import zstandard

        dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)  # also reads `zstd --long=31` files
        yield from _decompress(path, dctx.decompressobj, feed)
    else:
        yield from _decompress(path, lambda: zlib.decompressobj(wbits=31), feed)  # 31: gzip header and trailer


def _file_range(path: Path, begin: int, end: int) -> Iterator[bytes]:
    """Bytes [begin, end) of ``path`` in chunks of about a MiB."""
    with open(path, "rb") as fh:
        fh.seek(begin)
        while begin < end and (chunk := fh.read(min(_CHUNK, end - begin))):
            begin += len(chunk)
            yield chunk


def source_parts(sources: list[Path], range_bytes: int) -> list[tuple[Path, tuple[int, int, int] | None]]:
    """The reads that cover ``sources`` in corpus order: ``(source, None)`` for a whole source, and
    ``(source, (start, end, first_line))`` for each byte range of a plain ``.jsonl`` larger than
    ``range_bytes`` (:func:`read_source` reads either). The Ray engine runs one task per part."""
    return list(iter_source_parts(sources, range_bytes))


def iter_source_parts(
    sources: list[Path], range_bytes: int, *, tail_ranges: int = 0
) -> Iterator[tuple[Path, tuple[int, int, int] | None]]:
    """:func:`source_parts` one at a time: a range is known as soon as the file is counted up to
    its end, so the first part can be read while the rest of the file is still being cut.

    ``tail_ranges`` (the local pool: twice its workers): ranges shrink towards the corpus's end so
    that what is left always makes at least that many (down to MIN_TAIL_RANGE bytes): workers
    that take the next range when they finish one then finish within a small range of each other.
    """
    sizes = [source.stat().st_size if source.is_file() else 0 for source in sources]  # a folder: 0, never cut
    bytes_after = sum(sizes)
    for source, size in zip(sources, sizes):
        bytes_after -= size  # the bytes of the sources after this one
        big = size > range_bytes and _suffix(source.name) == ".jsonl"
        ranges = iter_byte_ranges(source, range_bytes, tail_ranges=tail_ranges, bytes_after=bytes_after) if big else iter(())
        first = next(ranges, None)
        second = next(ranges, None)
        if second is None:  # one range: the whole source
            yield source, None
            continue
        yield source, first
        yield source, second
        for span in ranges:
            yield source, span


def byte_ranges(path: Path, range_bytes: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_line)``: consecutive byte ranges covering ``path``, about ``range_bytes`` each (sizes
    evened out), every one but the last ending just after a newline; ``first_line`` is the 1-based line number
    of the range's first line. Reads the file up to its last cut, counting newlines."""
    return list(iter_byte_ranges(path, range_bytes))


def iter_byte_ranges(
    path: Path, range_bytes: int, *, tail_ranges: int = 0, bytes_after: int = 0
) -> Iterator[tuple[int, int, int]]:
    """:func:`byte_ranges` one at a time, each given as soon as the file is counted up to its end.

    ``tail_ranges``, ``bytes_after`` (the bytes of the sources after this one): see :func:`iter_source_parts`.
    """
    size = path.stat().st_size
    step = -(-size // max(1, -(-size // max(1, range_bytes))))  # ceil(size / number of ranges)

    def next_step(start: int) -> int:
        if not tail_ranges:
            return step
        return min(step, max(MIN_TAIL_RANGE, (size - start + bytes_after) // tail_ranges))

    start, first_line = 0, 1
    target, pos, newlines = next_step(0), 0, 0
    with open(path, "rb") as fh:
        while target < size and (chunk := fh.read(_COUNT_CHUNK)):
            counted = 0  # the newlines of chunk[:counted] are in `newlines`: each byte is counted once
            while target < size and (at := chunk.find(b"\n", max(target - 1 - pos, 0))) >= 0:
                cut = pos + at + 1
                if cut >= size:  # the file ends with this newline: no empty range after it
                    target = size
                    break
                yield start, cut, first_line
                newlines += chunk.count(b"\n", counted, at + 1)
                counted = at + 1
                start, first_line = cut, newlines + 1
                target = cut + next_step(cut)
            newlines += chunk.count(b"\n", counted)
            pos += len(chunk)
    yield start, size, first_line


def _decompress(path: Path, new_stream: Callable[[], Any], feed: Callable[[bytes], None] | None = None) -> Iterator[bytes]:
    # Our own loop instead of gzip.open / zstd stream_reader: GzipFile.read(n) drops the lines it
    # had decoded when it hits a truncated end, and zstandard's stream_reader ends silently at a
    # truncated frame (and by default after the first frame). Here every frame must reach its end.
    stream, in_frame = new_stream(), False
    with open(path, "rb") as fh:
        while raw := fh.read(_COMPRESSED_CHUNK):
            if feed is not None:
                feed(raw)
            while raw:
                if out := stream.decompress(raw):
                    yield out
                in_frame = not stream.eof
                raw = b"" if in_frame else stream.unused_data
                if not in_frame:
                    stream = new_stream()  # the next member/frame of a concatenated file
    if in_frame:
        raise EOFError("the compressed stream ends mid-frame")


def _stream_errors(suffix: str) -> tuple[type[BaseException], ...]:
    """What a broken compressed stream raises while we read it (nothing expected for plain files)."""
    if suffix == ".jsonl.gz":
        return (EOFError, zlib.error)
    if suffix == ".jsonl.zst":
        import zstandard

        return (EOFError, zstandard.ZstdError)
    return ()


def _read_jsonl(
    path: Path, rel: str, reader: _Reader, *, suffix: str, byte_range: tuple[int, int, int] | None = None
) -> Iterator[tuple[str, str | JsonText]]:
    loads, decode_error, document = orjson.loads, orjson.JSONDecodeError, reader.document
    huge = reader.huge_text_bytes
    lineno, first, shift = 0, True, 0
    chunks = _chunks(path, suffix, reader.feed)
    if byte_range is not None:
        start, end, first_line = byte_range
        # A range after the first is read from the newline before it: _lines then starts with an
        # empty line (skipped), and strips a BOM only where the file starts, as a whole-file read.
        begin = start - 1 if start else 0
        chunks, first, shift = _file_range(path, begin, end), start == 0, first_line - 1 - (start - begin)
    try:
        for lineno, line in _lines(chunks, reader.counters):
            if not line or line.isspace():
                continue
            lineno += shift
            if huge is not None and len(line) >= huge:
                if (split := split_huge_record(line, reader.text_field, min_bytes=huge // 2)) is not None:
                    first = False
                    doc = document(split[0], rel, lineno, path)
                    if doc is not None:
                        yield doc[0], split[1]  # the JsonText holds the line
                    continue
            try:
                record = loads(line)
            except decode_error as exc:
                if first:  # a pretty-printed file fails here, at its opening brace
                    refuse_spread_json(path, suffix, line, text_field=reader.text_field)
                first = False
                reader.bad(_json_problem(line, exc), path, lineno)
                continue
            first = False
            doc = document(record, rel, lineno, path)
            del line, record  # `doc` holds the text: a huge line's bytes go before it is tokenized
            if doc is not None:
                yield doc
    except _stream_errors(suffix) as exc:
        where = f"after line {lineno}, the last good line" if lineno else "before the first line"
        raise PackprepError(
            f"{suffix[7:]} data is truncated or corrupt {where} ({exc}); re-download or re-compress the file",
            path=path,
            line=lineno or None,
        ) from None


def _lines(chunks: Iterable[bytes], counters: ReadCounters) -> Iterator[tuple[int, bytes | bytearray]]:
    """``(1-based line number, line without \\n)``; a last line without \\n is included.

    A line that spans chunks grows in one bytearray (orjson reads it as it is): joining
    bytes per chunk would copy a 100 MB line a hundred times and hold it twice. Nothing
    here refers to a line while the caller has it, so its bytes go once the caller parsed them.
    """
    pending: list[bytearray] = []  # at most one: the start of a line that no chunk has ended yet
    lineno, first = 0, True
    for chunk in chunks:
        counters.bytes_read += len(chunk)
        if first and chunk.startswith(codecs.BOM_UTF8):  # orjson rejects a BOM; Windows editors add one
            chunk = chunk[3:]
        first = False
        end = chunk.find(b"\n")
        if end < 0:
            if pending:
                pending[0] += chunk
            else:
                pending.append(bytearray(chunk))
            continue
        if pending:
            pending[0] += memoryview(chunk)[:end]
            chunk = chunk[end + 1 :]
            lineno += 1
            yield lineno, pending.pop()
        lines = chunk.split(b"\n")
        if tail := lines.pop():
            pending.append(bytearray(tail))
        lines.reverse()
        while lines:
            lineno += 1
            yield lineno, lines.pop()
    if pending and pending[0]:
        yield lineno + 1, pending.pop()


def _utf8_problem(data: bytes) -> tuple[int, str] | None:
    """``(1-based line, why)`` for the first undecodable byte in ``data``, or None when it is valid UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        column = bad.start - (data.rfind(b"\n", 0, bad.start) + 1) + 1
        why = f"bytes are not valid UTF-8 (byte 0x{data[bad.start]:02x} at column {column})"
        return data.count(b"\n", 0, bad.start) + 1, f"{why}; re-encode the file as UTF-8"
    return None


def _json_problem(line: bytes, exc: orjson.JSONDecodeError) -> str:
    # orjson reports a UTF-8 problem as a JSON error at column 1; find the real byte instead.
    if utf8 := _utf8_problem(line):
        return f"{utf8[1]} {_SKIP_HINT}"
    return f"invalid JSON ({exc.msg} at column {exc.colno}); fix the record {_SKIP_HINT}"


def refuse_spread_json(path: Path, suffix: str, first_line: bytes, *, text_field: str) -> None:
    """Raise a file-level error when a JSON-lines file's first record does not parse because the
    file is one JSON value spread over lines (pretty-printed): not a bad record to skip."""
    head = first_line.strip()
    if not head.startswith((b"{", b"[")):
        return
    whole = _whole_json(path, suffix)
    if isinstance(whole, dict):
        raise PackprepError(f"a JSON object, not a list of records or JSON lines; {_records_hint(whole, text_field)}", path=path)
    if isinstance(whole, list):
        rename = "name it .json" if suffix == ".jsonl" else "decompress it and name it .json"
        raise PackprepError(f"a JSON list spread over lines, not JSON lines; {rename} to read it as a list of records", path=path)
    if head in (b"{", b"["):  # what pretty-printers write first; the rest is several values, or too big to parse here
        raise PackprepError(
            "pretty-printed JSON spread over lines, not JSON lines (one record per line); "
            f"write one record per line, e.g. `jq -c . {path}`",
            path=path,
        )


def _whole_json(path: Path, suffix: str) -> Any:
    """The file parsed as one JSON value, or None when it is not one (or is too big to hold here)."""
    data = b""
    for chunk in _chunks(path, suffix):
        data += chunk
        if len(data) > _WHOLE_JSON_MAX:
            return None
    try:
        return orjson.loads(data.removeprefix(codecs.BOM_UTF8))
    except orjson.JSONDecodeError:
        return None


def _records_hint(value: dict[str, Any], text_field: str) -> str:
    """What to do with a JSON object: extract the list of records it holds, if it holds one."""
    if text_field in value:
        return "if it is one record, write it on one line (JSON lines: one record per line)"
    for name, field_value in value.items():
        if isinstance(field_value, list) and field_value and all(type(r) is dict for r in field_value[:100]):
            return f"its field '{name}' holds {len(field_value):,} records: extract them, e.g. `jq -c '.{name}[]'`"
    return "write one record per line (JSON lines) or a JSON list of records"


def _read_json(path: Path, rel: str, reader: _Reader) -> Iterator[tuple[str, str]]:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16).lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
    if head != b"[":  # many ".json" downloads are really JSON lines: read those streaming
        yield from _read_jsonl(path, rel, reader, suffix=".jsonl")
        return
    data = path.read_bytes()
    reader.feed(data)
    reader.counters.bytes_read += len(data)
    try:
        records = orjson.loads(data.removeprefix(codecs.BOM_UTF8))
    except orjson.JSONDecodeError as exc:
        # The list as a whole does not parse, so there is no record to skip: a file-level error.
        line, why = _utf8_problem(data) or (exc.lineno, f"invalid JSON ({exc.msg}); fix the file")
        raise PackprepError(why, path=path, line=line) from None
    del data
    for index, record in enumerate(records, start=1):
        doc = reader.document(record, rel, index, path)
        if doc is not None:
            yield doc


def _read_text(path: Path, rel: str, reader: _Reader) -> Iterator[tuple[str, str]]:
    data = path.read_bytes()  # one document per file, so it is held whole anyway
    reader.feed(data)
    reader.counters.bytes_read += len(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        line, why = _utf8_problem(data)  # type: ignore[misc]  # it failed to decode, so there is a problem
        return reader.bad(f"{why} {_SKIP_HINT}", path, line)
    yield rel, text


def _read_parquet(path: Path, rel: str, reader: _Reader) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError with a useful text
        raise PackprepError(f"cannot read parquet file ({exc}); is it complete?", path=path) from None
    columns = _table_columns(parquet.schema_arrow, path, reader)
    batches = parquet.iter_batches(batch_size=_TABLE_BATCH_ROWS, columns=columns)
    yield from _table_documents(batches, columns, path, rel, reader)


def _read_arrow(path: Path, rel: str, reader: _Reader) -> Iterator[tuple[str, str]]:
    import pyarrow as pa

    reader.counters.files += 1
    try:
        stream = pa.ipc.open_stream(pa.memory_map(str(path)))  # memory-mapped: batches are zero-copy
    except Exception as exc:
        raise PackprepError(f"cannot read arrow stream ({exc}); save it again with save_to_disk", path=path) from None
    columns = _table_columns(stream.schema, path, reader)
    yield from _table_documents(stream, columns, path, rel, reader)


def _table_columns(schema: Any, path: Path, reader: _Reader) -> list[str]:
    """The columns to read: the text column (checked to hold strings) and the id column when present."""
    import pyarrow as pa

    if reader.text_field not in schema.names:
        raise PackprepError(
            f"no column '{reader.text_field}' (columns: {', '.join(schema.names)}); use --text-field", path=path
        )
    kind = schema.field(reader.text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"):
        raise PackprepError(f"column '{reader.text_field}' holds {kind}, not strings; use --text-field", path=path)
    return [reader.text_field] + ([reader.id_field] if reader.id_field in schema.names else [])


def _table_documents(
    batches: Iterable[Any], columns: list[str], path: Path, rel: str, reader: _Reader
) -> Iterator[tuple[str, str]]:
    row = 0
    for batch in batches:
        texts = batch.column(columns[0])
        reader.counters.bytes_read += texts.nbytes
        ids = batch.column(columns[1]).to_pylist() if len(columns) > 1 else [None] * len(texts)
        for text, doc_id in zip(texts.to_pylist(), ids):
            row += 1
            if text is None:
                reader.bad(f"column '{columns[0]}' is null; fill it {_SKIP_HINT}", path, row)
            elif doc_id is None:
                yield f"{rel}:{row}", text
            else:
                reader.counters.with_id += 1
                yield str(doc_id), text


def _hf_arrow_files(folder: Path) -> list[Path]:
    """A saved Dataset's .arrow files in datasets' own order; a DatasetDict's, split by sorted split."""
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", []))
        for split in splits:
            if not (folder / split).is_dir():
                raise PackprepError(f"split '{split}' listed in dataset_dict.json has no folder", path=folder)
        return [arrow for split in splits for arrow in _hf_arrow_files(folder / split)]
    state = folder / "state.json"
    if state.is_file():
        names = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
    else:
        names = sorted(p.name for p in folder.glob("*.arrow"))
    for name in names:
        if not (folder / name).is_file():
            raise PackprepError(f"state.json lists '{name}', which is missing", path=folder)
    return [folder / name for name in names]


def corpus_fingerprint(path: str | Path, *, sources: list[Path] | None = None) -> str:
    """Hex blake2b digest over the sorted relative paths and the contents of every corpus file.

    Contents rather than mtimes: a copied or re-downloaded corpus keeps its cached stages, an edited one does not.
    ``sources``: ``list_corpus_files(path)`` when the caller has listed the corpus already.
    """
    path = Path(path)
    fingerprint = Fingerprint(corpus_root(path))
    for source in list_corpus_files(path) if sources is None else sources:
        # Of a saved dataset, only the shards it lists: `datasets` drops cache-*.arrow files beside them.
        for file in [source] if source.is_file() else _hf_arrow_files(source):
            fingerprint.start(file)
            fingerprint.end()
    return fingerprint.hexdigest()


class Fingerprint:
    """:func:`corpus_fingerprint`, fed by the readers as they read, so a tokenize run reads the corpus once.

    For each file in corpus order: :meth:`start`, :meth:`feed` with its raw bytes from the
    start as the reader reads them, :meth:`end`, which reads whatever was not fed (a parquet
    or arrow file, read by pyarrow, is read a second time here).
    """

    def __init__(self, root: Path):
        self.root = root
        self._digest = hashlib.blake2b(digest_size=16)
        self._digest.update(b"packprep-corpus-v1\0")
        self._file: Path | None = None
        self._fed = 0

    def start(self, file: Path) -> None:
        rel = file.relative_to(self.root).as_posix().encode("utf-8")
        # Length prefixes keep (name, content) boundaries unambiguous.
        self._digest.update(len(rel).to_bytes(8, "little") + rel + file.stat().st_size.to_bytes(8, "little"))
        self._file, self._fed = file, 0

    def feed(self, data: bytes) -> None:
        self._digest.update(data)
        self._fed += len(data)

    def end(self) -> None:
        assert self._file is not None, "end() without start()"
        with open(self._file, "rb") as fh:
            fh.seek(self._fed)
            while chunk := fh.read(1 << 22):
                self._digest.update(chunk)
        self._file = None

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


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
