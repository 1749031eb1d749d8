"""Tokenize on Ray: blocks, byte ranges and their concatenation (``ray_engine.tokenize_on_ray`` drives them).

One Ray task per corpus source (a file, or a saved HF dataset folder) reads and tokenizes
it into a block store ``WORK/.blocks/<i>/`` (a small document store, written under
``<i>.tmp`` and renamed when complete). A plain ``.jsonl`` larger than ``RANGE_BYTES`` is
cut at newlines into byte ranges of about that size, one task each; the driver counts the
newlines before each range (one streaming pass that stops at the last cut) so document ids
and error lines keep their absolute line numbers. The driver then concatenates the blocks
in corpus order by offsets: it sizes the final ``tokens.bin``/``doc_ids.bin`` and copy
tasks write each block at its byte offset, so no token passes through the driver or the
object store.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packprep._files import replace_durably, save_json, save_npy
from packprep.config import TokenizeConfig
from packprep.engines import RAY_MAX_RETRIES
from packprep.errors import PackprepError
from packprep.progress import Reporter
from packprep.store import MANIFEST_NAME, STORE_FORMAT, STORE_VERSION, DocStore, DocStoreWriter

BLOCKS_DIRNAME = ".blocks"
_COPY_CHUNK = 8 << 20
_MAX_FIRST_ERRORS = 5
# A plain .jsonl above this size becomes several tokenize tasks of about this size: large
# enough that a task's start-up (loading the tokenizer) is small beside its work.
RANGE_BYTES = 64 << 20
_COUNT_CHUNK = 8 << 20  # the driver's newline count reads this much at a time


def _block_parts(sources: list[Path], range_bytes: int) -> list[tuple[Path, tuple[int, int, int] | None]]:
    """The blocks in corpus order: ``(source, None)`` for a whole source, ``(source, (start, end, first_line))``
    for each byte range of a plain ``.jsonl`` larger than ``range_bytes``."""
    from packprep.corpus import _suffix

    parts: list[tuple[Path, tuple[int, int, int] | None]] = []
    for source in sources:
        big = source.is_file() and _suffix(source.name) == ".jsonl" and source.stat().st_size > range_bytes
        ranges = _byte_ranges(source, range_bytes) if big else []
        parts += [(source, span) for span in ranges] if len(ranges) > 1 else [(source, None)]
    return parts


def _byte_ranges(path: Path, range_bytes: int) -> list[tuple[int, int, int]]:
    """``(start, end, first_line)``: consecutive byte ranges covering ``path``, about ``range_bytes`` each (sizes
    evened out), every one but the last ending just after a newline; ``first_line`` is the 1-based line number
    of the range's first line. Reads the file up to its last cut, counting newlines."""
    size = path.stat().st_size
    step = -(-size // max(1, -(-size // max(1, range_bytes))))  # ceil(size / number of ranges)
    cuts, lines_before = [0], [0]
    target, pos, newlines = step, 0, 0
    with open(path, "rb") as fh:
        while target < size and (chunk := fh.read(_COUNT_CHUNK)):
            while target < size and (at := chunk.find(b"\n", max(target - 1 - pos, 0))) >= 0:
                cuts.append(pos + at + 1)
                lines_before.append(newlines + chunk.count(b"\n", 0, at + 1))
                target = cuts[-1] + step
            newlines += chunk.count(b"\n")
            pos += len(chunk)
    if cuts[-1] >= size:  # the file ends with the newline of the last cut: no empty range after it
        cuts.pop()
        lines_before.pop()
    return [(start, end, lines + 1) for start, end, lines in zip(cuts, cuts[1:] + [size], lines_before)]


def _run_blocks(
    ray: Any,
    parts: list[tuple[Path, tuple[int, int, int] | None]],
    root: Path,
    blocks: Path,
    config: TokenizeConfig,
    dtype: np.dtype,
    reporter: Reporter,
) -> list[dict[str, Any]]:
    """Block summaries in corpus order; the error of the first failing block (in corpus order) is raised."""
    task = ray.remote(max_retries=RAY_MAX_RETRIES)(_tokenize_block)  # looked up per call: tests wrap it
    refs = [
        task.remote(i, str(source), str(root), str(blocks), config, dtype.name, span)
        for i, (source, span) in enumerate(parts)
    ]
    index_of = {ref: i for i, ref in enumerate(refs)}
    summaries: list[dict[str, Any] | None] = [None] * len(refs)
    first_failed = len(refs)
    pending = list(refs)
    with reporter.track("tokenize", unit="docs") as advance:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            summary = ray.get(done[0])
            i = index_of[done[0]]
            summaries[i] = summary
            advance(summary["records"], tokens=summary["num_tokens"])
            if summary["error"] is not None and i < first_failed:
                # The local engine stops at the first bad record: later sources no longer matter.
                first_failed = i
                later = [ref for ref in pending if index_of[ref] > i]
                for ref in later:
                    ray.cancel(ref)
                if later:
                    ray.wait(later, num_returns=len(later))  # cancelled tasks stop writing before blocks/ goes
                pending = [ref for ref in pending if index_of[ref] < i]
    if first_failed < len(refs):
        raise PackprepError(**summaries[first_failed]["error"])
    return summaries  # type: ignore[return-value]


def _tokenize_block(
    index: int,
    source: str,
    root: str,
    blocks: str,
    config: TokenizeConfig,
    dtype: str,
    span: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Ray task: tokenize one corpus source, or its byte range ``span`` (see ``_byte_ranges``), into the block
    store ``blocks/<index>``; returns its counts.

    Reading and tokenizing are the local engine's (``corpus``'s reader, the same batches
    rule and hashes). A PackprepError is returned, not raised, so Ray neither retries it
    nor wraps it: the driver re-raises it unchanged.
    """
    from packprep.corpus import ReadCounters, _Reader, _read_source
    from packprep.pipeline import tokenize_into
    from packprep.tokenizers import load_tokenizer

    final = Path(blocks) / f"{index:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what an earlier, killed attempt of this task left
    counters = ReadCounters()
    summary: dict[str, Any] = {"error": None, "dropped_empty": 0, "num_documents": 0, "num_tokens": 0}
    try:
        tokenizer = load_tokenizer(config.tokenizer, eos_id=config.eos_id, bos_id=config.bos_id)
        reader = _Reader(config.text_field, config.id_field, config.on_error, counters)
        with DocStoreWriter(tmp, dtype=np.dtype(dtype)) as writer:
            if span is None:
                documents = _counted(_read_source(Path(source), Path(root), reader), counters)
            else:
                rel = Path(source).relative_to(root).as_posix()
                documents = _counted(_read_jsonl_range(Path(source), rel, reader, span), counters)
            summary["dropped_empty"] = tokenize_into(writer, documents, tokenizer)
            writer.finish({})
            summary.update(num_documents=writer.num_documents, num_tokens=writer.num_tokens)
        shutil.rmtree(final, ignore_errors=True)  # a finished attempt whose result Ray lost
        os.replace(tmp, final)
    except PackprepError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        summary["error"] = {"message": exc.message, "path": exc.path, "line": exc.line}
    summary.update(
        records=counters.records, skipped=counters.skipped, with_id=counters.with_id,
        first_errors=counters.first_errors[:_MAX_FIRST_ERRORS],
    )
    return summary


def _read_jsonl_range(path: Path, rel: str, reader: Any, span: tuple[int, int, int]) -> Iterator[tuple[str, str]]:
    """``corpus._read_jsonl`` of a plain ``.jsonl``, for the lines in bytes [start, end) only, numbered from
    ``first_line``: the same line splitting, parsing, ids and errors (corpus has no reader for a range).

    A range after the first is read from the newline before it: ``corpus._lines`` then starts
    with an empty line (skipped), and strips a BOM only where the file starts, as locally.
    """
    import orjson

    from packprep.corpus import _json_problem, _lines, refuse_spread_json

    start, end, first_line = span
    first = start == 0  # the file's first record: where a pretty-printed file fails
    begin = start - 1 if start else 0
    shift = first_line - 1 - (start - begin)  # _lines numbers from 1 at byte `begin`
    for lineno, line in _lines(_file_chunks(path, begin, end), reader.counters):
        if not line or line.isspace():
            continue
        lineno += shift
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if first:
                refuse_spread_json(path, ".jsonl", line, text_field=reader.text_field)
            first = False
            reader.bad(_json_problem(line, exc), path, lineno)
            continue
        first = False
        doc = reader.document(record, rel, lineno, path)
        if doc is not None:
            yield doc


def _file_chunks(path: Path, begin: int, end: int) -> Iterator[bytes]:
    """Bytes [begin, end) of ``path`` in chunks of ``corpus._CHUNK``."""
    from packprep.corpus import _CHUNK

    with open(path, "rb") as fh:
        fh.seek(begin)
        while begin < end and (chunk := fh.read(min(_CHUNK, end - begin))):
            begin += len(chunk)
            yield chunk


def _counted(documents: Any, counters: Any) -> Any:
    for doc in documents:  # iter_documents counts records the same way
        counters.records += 1
        yield doc


def _concatenate(
    ray: Any, blocks: Path, summaries: list[dict[str, Any]], work: Path, dtype: np.dtype, manifest: dict[str, Any]
) -> DocStore:
    """Write WORK's store from the block stores in order, in the files and order ``DocStoreWriter`` uses."""
    parts = [DocStore.open(blocks / f"{i:06d}") for i in range(len(summaries))]
    copy = ray.remote(max_retries=RAY_MAX_RETRIES)(_copy_into)  # idempotent: a retry rewrites the same bytes
    copies = []
    for name in ("tokens.bin", "doc_ids.bin"):
        sizes = [(p.path / name).stat().st_size for p in parts]
        tmp = work / (name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.truncate(sum(sizes))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        copies += [copy.remote(str(p.path / name), str(tmp), start) for p, start, size in zip(parts, starts, sizes) if size]
    ray.get(copies)
    for name in ("tokens.bin", "doc_ids.bin"):
        replace_durably(work / (name + ".tmp"), work / name)
    save_npy(work / "doc_ids.idx.npy", _stack_offsets([np.load(p.path / "doc_ids.idx.npy") for p in parts]))
    offsets = _stack_offsets([p.offsets for p in parts])
    save_npy(work / "offsets.npy", offsets)
    save_npy(work / "text_hash.npy", np.concatenate([p.text_hash for p in parts]))
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "dtype": dtype.name}
    sizes = {"num_documents": len(offsets) - 1, "num_tokens": int(offsets[-1])}
    save_json(work / MANIFEST_NAME, {**header, **sizes, **manifest})
    return DocStore.open(work)


def _stack_offsets(parts: list[np.ndarray]) -> np.ndarray:
    """int64 [sum(N_i)+1]: the [N_i+1] offset arrays of consecutive blocks as one."""
    lengths = [np.diff(p) for p in parts]
    return np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)


def _copy_into(source: str, target: str, start: int) -> None:
    """Ray task: write the bytes of ``source`` into ``target`` at byte ``start``."""
    with open(source, "rb") as src, open(target, "r+b") as dst:
        dst.seek(start)
        while chunk := src.read(_COPY_CHUNK):
            dst.write(chunk)

