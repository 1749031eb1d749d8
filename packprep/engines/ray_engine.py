"""The heavy stages on Ray, writing the same bytes as the local engine.

- tokenize: one Ray task per corpus source (a file, or a saved HF dataset folder) reads
  and tokenizes it into a block store ``WORK/.blocks/<i>/`` (a small document store,
  written under ``<i>.tmp`` and renamed when complete). A plain ``.jsonl`` larger than
  ``RANGE_BYTES`` is cut at newlines into byte ranges of about that size, one task each;
  the driver counts the newlines before each range (one streaming pass that stops at the
  last cut) so document ids and error lines keep their absolute line numbers. The driver
  then concatenates the blocks in corpus order by offsets: it sizes the final
  ``tokens.bin``/``doc_ids.bin`` and copy tasks write each block at its byte offset, so
  no token passes through the driver or the object store.
- dedup: MinHash signatures in tasks over document ranges (each opens the memmapped
  store itself); the same tasks hash the LSH bands and hash-partition the
  (band, key, doc) rows to reducer tasks (a shuffle), which emit candidate pairs; the
  driver verifies them and takes connected components exactly as the local stage does.
- embed: a pool of actors, each holding the model, embeds the local engine's chunks
  (4096 documents each) so every batch has the same composition and the same floats.

Workers must see the corpus and WORK at the same paths (one machine, or a shared
file system). A worker that dies is retried by Ray (``_MAX_RETRIES``); every task
writes only its own temporary folder or its own byte range, so a retry cannot corrupt
the output. Errors in the input are returned as values and re-raised on the driver as
the local engine raises them (file and line).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packprep._files import save_json, save_npy
from packprep._folders import claim_folder, finished_with_key, is_store_file, removed_on_error
from packprep.config import DedupConfig, EmbedConfig, TokenizeConfig, stage_key
from packprep.corpus import list_corpus_files
from packprep.engines import RAY_INSTALL_HINT
from packprep.errors import PackprepError
from packprep.progress import Reporter, SilentReporter
from packprep.store import MANIFEST_NAME, STORE_FORMAT, STORE_VERSION, DocStore, DocStoreWriter

BLOCKS_DIRNAME = ".blocks"
EMBED_CHUNK = 4096  # stages.embed.embed_documents' default chunk: the same chunks give the same batches
_MAX_RETRIES = 3
_COPY_CHUNK = 8 << 20
_MAX_FIRST_ERRORS = 5
# A plain .jsonl above this size becomes several tokenize tasks of about this size: large
# enough that a task's start-up (loading the tokenizer) is small beside its work.
RANGE_BYTES = 64 << 20
_COUNT_CHUNK = 8 << 20  # the driver's newline count reads this much at a time


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """The ``ray`` module, initialised: a new local instance (``address=None``), or the cluster at ``address``
    (``"auto"``: the one this machine belongs to). A Ray already initialised in this process is reused."""
    try:
        import ray
    except ImportError:
        raise PackprepError(RAY_INSTALL_HINT) from None
    if ray.is_initialized():
        return ray
    try:
        if address is None:
            ray.init(
                num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                logging_level=logging.WARNING,  # Ray's INFO start-up lines would interleave with our progress bars
            )
        else:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise PackprepError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    return ray


# ---------------------------------------------------------------------------- tokenize


def tokenize_on_ray(
    corpus: str | Path,
    work: str | Path,
    *,
    config: TokenizeConfig = TokenizeConfig(),
    overwrite: bool = False,
    address: str | None = None,
    reporter: Reporter = SilentReporter(),
    range_bytes: int = RANGE_BYTES,
) -> DocStore:
    """``pipeline.tokenize`` on Ray: the same document store, byte for byte, and the same errors.

    ``range_bytes``: a plain ``.jsonl`` larger than this is read by several tasks, one per
    byte range of about this size.
    """
    corpus, work = Path(corpus), Path(work)
    list_corpus_files(corpus)
    with removed_on_error(work):
        return _tokenize(corpus, work, config, overwrite, address, reporter, range_bytes)


def _tokenize(
    corpus: Path,
    work: Path,
    config: TokenizeConfig,
    overwrite: bool,
    address: str | None,
    reporter: Reporter,
    range_bytes: int,
) -> DocStore:
    from packprep.corpus import corpus_fingerprint
    from packprep.pipeline import no_documents_error, store_manifest
    from packprep.tokenizers import load_tokenizer, smallest_token_dtype

    tokenizer = load_tokenizer(config.tokenizer, eos_id=config.eos_id, bos_id=config.bos_id)
    fingerprint = corpus_fingerprint(corpus)
    # The key does not name the engine: both write the same store, so either reuses the other's.
    key = stage_key("tokenize", config, corpus=fingerprint, tokenizer=tokenizer.fingerprint())
    if finished_with_key(work, key):
        reporter.info(f"tokenize: reusing the document store in {work}")
        return DocStore.open(work)
    blocks = work / BLOCKS_DIRNAME
    shutil.rmtree(blocks, ignore_errors=True)  # an interrupted run's blocks; claim_folder would call them foreign
    claim_folder(work, overwrite=overwrite, ours=is_store_file)
    (work / MANIFEST_NAME).unlink(missing_ok=True)

    ray = connect(address)
    dtype = smallest_token_dtype(tokenizer.vocab_size)
    root = corpus if corpus.is_dir() else corpus.parent
    try:
        parts = _block_parts(list_corpus_files(corpus), range_bytes)
        summaries = _run_blocks(ray, parts, root, blocks, config, dtype, reporter)
        counts = {
            "records": sum(s["records"] for s in summaries),
            "dropped_empty": sum(s["dropped_empty"] for s in summaries),
            "skipped_records": sum(s["skipped"] for s in summaries),
        }
        if sum(s["num_documents"] for s in summaries) == 0:
            raise no_documents_error(corpus, counts)
        manifest = store_manifest(key, config, tokenizer, corpus=corpus, fingerprint=fingerprint, counts=counts)
        store = _concatenate(ray, blocks, summaries, work, dtype, manifest)
    finally:
        shutil.rmtree(blocks, ignore_errors=True)
    first_errors = [e for s in summaries for e in s["first_errors"]]
    if counts["skipped_records"]:
        reporter.info(f"tokenize: skipped {counts['skipped_records']} bad records, e.g. {first_errors[0]}")
    if counts["dropped_empty"]:
        reporter.info(f"tokenize: dropped {counts['dropped_empty']} empty documents")
    return store


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
    task = ray.remote(max_retries=_MAX_RETRIES)(_tokenize_block)  # looked up per call: tests wrap it
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
    summary.update(records=counters.records, skipped=counters.skipped, first_errors=counters.first_errors[:_MAX_FIRST_ERRORS])
    return summary


def _read_jsonl_range(path: Path, rel: str, reader: Any, span: tuple[int, int, int]) -> Iterator[tuple[str, str]]:
    """``corpus._read_jsonl`` of a plain ``.jsonl``, for the lines in bytes [start, end) only, numbered from
    ``first_line``: the same line splitting, parsing, ids and errors (corpus has no reader for a range).

    A range after the first is read from the newline before it: ``corpus._lines`` then starts
    with an empty line (skipped), and strips a BOM only where the file starts, as locally.
    """
    import orjson

    from packprep.corpus import _json_problem, _lines

    start, end, first_line = span
    begin = start - 1 if start else 0
    shift = first_line - 1 - (start - begin)  # _lines numbers from 1 at byte `begin`
    for lineno, line in _lines(_file_chunks(path, begin, end), reader.counters):
        if not line or line.isspace():
            continue
        lineno += shift
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            reader.bad(_json_problem(line, exc), path, lineno)
            continue
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
    copy = ray.remote(max_retries=_MAX_RETRIES)(_copy_into)  # idempotent: a retry rewrites the same bytes
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
        os.replace(work / (name + ".tmp"), work / name)
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


# ---------------------------------------------------------------------------- dedup


def dedup_on_ray(
    store: DocStore,
    *,
    config: DedupConfig = DedupConfig(),
    address: str | None = None,
    num_tasks: int | None = None,
    reporter: Reporter = SilentReporter(),
) -> Any:
    """The ``stages.dedup.DedupResult`` that ``semantic.dedup`` computes locally, with MinHash and LSH on Ray.

    Exact dedup (a sort of N uint64 hashes) stays on the driver. ``num_tasks``: document
    ranges (balanced by tokens) for the MinHash tasks, and as many shuffle reducers;
    default twice the cluster's CPUs.
    """
    from packprep.stages import dedup as stage

    n = store.num_documents
    result = stage.exact_duplicates(store.text_hash) if config.exact else _all_kept(n)
    if not config.near:
        return result
    ray = connect(address)
    ranges = _document_ranges(store.offsets, num_tasks or 2 * int(ray.cluster_resources().get("CPU", 1)))
    with reporter.track("minhash", total=n, unit="docs") as advance:
        signatures, pairs = _sign_and_shuffle(ray, store.path, ranges, config, keep=result.keep, progress=advance)
    near = _verified_components(signatures, pairs, threshold=config.minhash_threshold)
    return stage.combine(result, near)


def minhash_signatures_on_ray(
    store_path: str | Path,
    *,
    num_perm: int = 128,
    shingle: int = 5,
    seed: int = 0,
    num_tasks: int = 4,
    address: str | None = None,
) -> np.ndarray:
    """uint32 [N, num_perm]: ``stages.dedup.minhash_signatures`` of the store at ``store_path``, in Ray tasks."""
    ray = connect(address)
    store = DocStore.open(store_path)
    task = ray.remote(max_retries=_MAX_RETRIES)(_sign_range)
    params = {"num_perm": num_perm, "shingle": shingle, "seed": seed, "threshold": None}
    refs = [task.remote(str(store_path), d0, d1, params, None, 0) for d0, d1 in _document_ranges(store.offsets, num_tasks)]
    return np.concatenate(ray.get(refs)) if refs else np.zeros((0, num_perm), np.uint32)


def _document_ranges(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` consecutive, non-empty ``(first, end)`` document ranges with about equal tokens."""
    n = len(offsets) - 1
    cuts = np.searchsorted(offsets, np.linspace(0, offsets[-1], max(1, parts) + 1)[1:-1], side="left")
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n), [n]])).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _sign_and_shuffle(
    ray: Any, store_path: Path, ranges: list[tuple[int, int]], config: DedupConfig, *, keep: np.ndarray, progress: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Signatures [N, num_perm] in document order, and candidate pairs int64 [P, 2] (lower index first)."""
    partitions = len(ranges)
    params = {"num_perm": config.num_perm, "shingle": config.shingle, "seed": config.seed, "threshold": config.minhash_threshold}
    sign = ray.remote(max_retries=_MAX_RETRIES, num_returns=1 + partitions)(_sign_range)
    outputs = [sign.remote(str(store_path), d0, d1, params, keep[d0:d1], partitions) for d0, d1 in ranges]
    reduce = ray.remote(max_retries=_MAX_RETRIES)(_band_pairs)
    # Reducer p takes partition p of every range: the shuffle happens in Ray's object store.
    pair_refs = [reduce.remote(*[out[1 + p] for out in outputs]) for p in range(partitions)]
    sig_refs = [out[0] for out in outputs]
    size = {ref: d1 - d0 for ref, (d0, d1) in zip(sig_refs, ranges)}
    pending = list(sig_refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        progress(size[done[0]])
    signatures = np.concatenate(ray.get(sig_refs))
    pairs = [p for p in ray.get(pair_refs) if len(p)]
    return signatures, (np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64))


def _sign_range(store_path: str, first: int, end: int, params: dict[str, Any], keep: np.ndarray | None, partitions: int) -> Any:
    """Ray task: MinHash signatures of documents [first, end); with ``partitions``, also their LSH band keys
    as uint64 rows (band, key, document) split by ``key % partitions``.

    The band keys are ``stages.dedup._band_candidates``' (the same weights, sums and finaliser).
    """
    from packprep.stages.dedup import _EMPTY_SIGNATURE, _splitmix64, lsh_params, minhash_signatures

    store = DocStore.open(store_path)  # memory-mapped here: tokens never travel through Ray
    # Offsets need not start at 0: documents are read at their absolute positions.
    signatures = minhash_signatures(
        store.tokens, store.offsets[first : end + 1], num_perm=params["num_perm"], shingle=params["shingle"], seed=params["seed"]
    )
    if not partitions:
        return signatures
    active = np.asarray(keep, dtype=bool) & ~(signatures == _EMPTY_SIGNATURE).all(axis=1)
    docs = (np.flatnonzero(active) + first).astype(np.uint64)
    bands, rows = lsh_params(params["num_perm"], params["threshold"])
    weights = np.random.default_rng(params["seed"] + 1).integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
    sig = signatures[active]
    tables = []
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys = _splitmix64((block * weights).sum(axis=1, dtype=np.uint64) + np.uint64(band))
        tables.append(np.stack([np.full(len(docs), band, np.uint64), keys, docs], axis=1))
    table = np.concatenate(tables) if tables else np.zeros((0, 3), np.uint64)
    part = table[:, 1] % np.uint64(partitions)
    return (signatures, *[table[part == p] for p in range(partitions)])


def _band_pairs(*tables: np.ndarray) -> np.ndarray:
    """Ray task: int64 [P, 2] candidate pairs from (band, key, document) rows, as ``_band_candidates`` makes them:
    in every bucket, the lowest document with each other one, and all pairs in buckets of at most 64."""
    from packprep.stages.dedup import _MAX_FULL_PAIRS_RUN

    table = np.concatenate(tables)
    if not len(table):
        return np.zeros((0, 2), np.int64)
    table = table[np.lexsort((table[:, 2], table[:, 1], table[:, 0]))]
    docs = table[:, 2].astype(np.int64)
    new = np.ones(len(table), dtype=bool)
    new[1:] = (table[1:, 0] != table[:-1, 0]) | (table[1:, 1] != table[:-1, 1])
    run_id = np.cumsum(new) - 1
    run_start = np.flatnonzero(new)
    run_len = np.diff(np.append(run_start, len(table)))
    members = np.flatnonzero((run_len[run_id] > 1) & ~new)
    lefts, rights = [docs[run_start[run_id[members]]]], [docs[members]]
    small = (run_len > 2) & (run_len <= _MAX_FULL_PAIRS_RUN)
    for start, length in zip(run_start[small], run_len[small]):
        i, j = np.triu_indices(int(length), 1)
        lefts.append(docs[start + i])
        rights.append(docs[start + j])
    return np.stack([np.concatenate(lefts), np.concatenate(rights)], axis=1)


def _verified_components(signatures: np.ndarray, pairs: np.ndarray, *, threshold: float) -> Any:
    """``stages.dedup.near_duplicates``' last steps: keep pairs with estimated Jaccard >= threshold, lowest of each component."""
    from packprep.stages.dedup import REASON_NEAR, _lowest_in_component, _result

    n = len(signatures)
    if len(pairs):
        pairs = np.unique(pairs, axis=0)
        similar = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1) >= threshold
        pairs = pairs[similar]
    return _result(n, _lowest_in_component(n, pairs), REASON_NEAR)


def _all_kept(n: int) -> Any:
    from packprep.stages.dedup import REASON_KEPT, DedupResult

    return DedupResult(keep=np.ones(n, bool), reason=np.full(n, REASON_KEPT, np.uint8), dup_of=np.full(n, -1, np.int64))


# ---------------------------------------------------------------------------- embed


def embed_on_ray(
    store: DocStore,
    *,
    config: EmbedConfig = EmbedConfig(),
    out: np.ndarray,
    address: str | None = None,
    num_actors: int | None = None,
    threads: int | None = None,
    chunk: int = EMBED_CHUNK,
    progress: Any = None,
) -> None:
    """Fill ``out`` (``config.dtype`` [N, D], e.g. the memmap ``semantic.embed`` opens) as the local engine does.

    A pool of actors each loads the model once; chunk i is documents [i*chunk, (i+1)*chunk),
    embedded exactly as ``stages.embed.embed_documents`` embeds that chunk. torch's
    results depend on its thread count too (CPU matmuls split their sums by thread), so
    each actor runs ``threads`` torch threads (default: this process's, as the local
    engine would) and reserves that many CPUs, at most a node's. ``num_actors``: default
    as many as the cluster's CPUs hold, at most one per chunk.
    """
    import torch

    ray = connect(address)
    from ray.util import ActorPool

    n = store.num_documents
    starts = list(range(0, n, chunk))
    if not starts:
        return
    threads = threads or torch.get_num_threads()
    node_cpus = max(int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node["Alive"])
    actor_cpus = min(threads, node_cpus)
    fit = max(1, int(ray.cluster_resources().get("CPU", 1)) // actor_cpus)  # more would wait for CPUs forever
    worker = ray.remote(num_cpus=actor_cpus, max_restarts=_MAX_RETRIES, max_task_retries=_MAX_RETRIES)(_EmbedWorker)
    actors = [worker.remote(str(store.path), config, threads) for _ in range(min(num_actors or fit, fit, len(starts)))]
    try:
        pool = ActorPool(actors)
        for start, vectors in pool.map_unordered(lambda actor, s: actor.embed.remote(s, min(s + chunk, n)), starts):
            out[start : start + len(vectors)] = vectors
            if progress is not None:
                progress(len(vectors))
    finally:
        for actor in actors:
            ray.kill(actor)


class _EmbedWorker:
    """Ray actor: the model and the memmapped store, loaded once per worker."""

    def __init__(self, store_path: str, config: EmbedConfig, threads: int):
        import torch

        from packprep.stages.embed import load_embedder
        from packprep.tokenizers import tokenizer_from_manifest

        torch.set_num_threads(threads)
        self.store = DocStore.open(store_path)
        self.embedder = load_embedder(config.model)
        self.decode = tokenizer_from_manifest(self.store.manifest["tokenizer"]).decode
        self.config = config

    def embed(self, first: int, end: int) -> tuple[int, np.ndarray]:
        from packprep.stages.embed import embed_documents

        vectors = np.empty((end - first, self.embedder.dim), dtype=np.dtype(self.config.dtype))
        embed_documents(
            self.embedder, self.decode, self.store.tokens, self.store.offsets, np.arange(first, end),
            out=vectors, max_tokens=self.config.embed_tokens, batch_size=self.config.batch_size, chunk=end - first,
        )
        return first, vectors
