"""Dedup on Ray: the exact-hash shuffle, MinHash signature tasks, the LSH band shuffle and the
tasks that write the result (``ray_engine.dedup_on_ray`` and ``ray_engine.minhash_signatures_on_ray``
drive them).

Exact dedup is a shuffle: range tasks read their documents' text hashes from the
memmapped store and hash-partition (hash, document) rows; a reducer holds every document
of its hashes, runs ``stages.dedup.exact_duplicates`` on them (in document order, so the
lowest index of each hash is kept, as the local sort keeps it) and returns only the
dropped ones, (document, first), split by the range they lie in. A writer task per range
then writes its rows of the three result arrays. MinHash signatures are computed in
tasks over the same ranges (each opens the memmapped store itself and decodes its
documents with the store's tokenizer, as the local engine does:
``stages.dedup.document_signatures``); the same tasks hash the LSH bands and
hash-partition the (band, key, doc) rows to reducer tasks (a second shuffle), which emit
candidate pairs and verify them; the driver takes connected components over the
documents that occur in verified pairs, and the writer tasks mark the near drops of
their ranges. No array of all N documents is ever in the driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packprep.config import DedupConfig
from packprep.engines.base import RAY_MAX_RETRIES, as_finished
from packprep.io import write_npy_rows
from packprep.store import DocStore


def document_ranges(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` consecutive, non-empty ``(first, end)`` document ranges with about equal tokens."""
    n = len(offsets) - 1
    cuts = np.searchsorted(offsets, np.linspace(0, offsets[-1], max(1, parts) + 1)[1:-1], side="left")
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n), [n]])).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def one_or_many(values: list[Any]) -> Any:
    """A task's return for ``num_returns=len(values)``: Ray wants the value itself when there is one."""
    return values[0] if len(values) == 1 else tuple(values)


def exact_shuffle(ray: Any, store_path: Path, ranges: list[tuple[int, int]]) -> list[list[Any]]:
    """Per range, the refs of its exact drops (int64 [D, 2] rows (document, first document of its hash))
    from every reducer: the shuffle of (hash, document) rows, with as many reducers as ranges."""
    parts = len(ranges)
    hashed = ray.remote(max_retries=RAY_MAX_RETRIES, num_returns=parts)(hash_rows)
    outputs = [hashed.remote(str(store_path), d0, d1, parts) for d0, d1 in ranges]
    outputs = [out if parts > 1 else [out] for out in outputs]
    starts = [d0 for d0, _ in ranges]
    reduce = ray.remote(max_retries=RAY_MAX_RETRIES, num_returns=parts)(exact_drops)
    drops = [reduce.remote(starts, *[out[p] for out in outputs]) for p in range(parts)]
    drops = [out if parts > 1 else [out] for out in drops]
    return [[out[r] for out in drops] for r in range(parts)]


def hash_rows(store_path: str, first: int, end: int, partitions: int) -> Any:
    """Ray task: uint64 rows (text hash, document) of documents [first, end), split by ``hash % partitions``
    (the hashes are blake2b: uniform)."""
    hashes = np.asarray(DocStore.open(store_path, mapped=True).text_hash[first:end], dtype=np.uint64)
    table = np.stack([hashes, np.arange(first, end, dtype=np.uint64)], axis=1)
    part = hashes % np.uint64(partitions)
    return one_or_many([table[part == p] for p in range(partitions)])


def exact_drops(starts: list[int], *tables: np.ndarray) -> Any:
    """Ray task (a shuffle reducer): ``stages.dedup.exact_duplicates`` of every document whose hash falls in
    this partition; the dropped ones as int64 rows (document, first document with its hash), split by the
    range (of those beginning at ``starts``) the document lies in."""
    from packprep.stages.dedup import exact_duplicates

    table = np.concatenate(tables)
    table = table[np.argsort(table[:, 1], kind="stable")]  # document order: the lowest index of a hash is kept
    dup_of = exact_duplicates(table[:, 0]).dup_of
    dropped = np.flatnonzero(dup_of >= 0)
    rows = np.stack([table[dropped, 1], table[dup_of[dropped], 1]], axis=1).astype(np.int64)
    where = np.searchsorted(np.asarray(starts, dtype=np.int64), rows[:, 0], side="right") - 1
    return one_or_many([rows[where == r] for r in range(len(starts))])


def mark_range(
    paths: dict[str, str], first: int, end: int, reason_code: int, fresh: bool, *pieces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ray task: write documents [first, end) of the dedup arrays at ``paths`` (``keep``, ``reason``,
    ``dup_of``: ``.npy`` files of N elements) with the drops in ``pieces`` (int64 rows (document,
    the kept document it duplicates)) marked ``reason_code``. ``fresh``: the rows start as all kept,
    else as the files hold them. Returns (documents per reason code in the range, the range's keep).

    A retry writes the same bytes. Each task writes its own byte range of each file.
    """
    from packprep.stages.dedup import REASON_KEPT, REASON_NAMES

    n = end - first
    if fresh:
        keep, reason, dup_of = np.ones(n, bool), np.full(n, REASON_KEPT, np.uint8), np.full(n, -1, np.int64)
    else:
        keep, reason, dup_of = (np.array(np.load(paths[name], mmap_mode="r")[first:end]) for name in ("keep", "reason", "dup_of"))
    rows = np.concatenate(pieces) if pieces else np.zeros((0, 2), np.int64)
    local = rows[:, 0] - first
    keep[local], reason[local], dup_of[local] = False, reason_code, rows[:, 1]
    for name, values in (("keep", keep), ("reason", reason), ("dup_of", dup_of)):
        write_npy_rows(paths[name], first, values)
    return np.bincount(reason, minlength=len(REASON_NAMES)), keep


def near_drops(pairs: np.ndarray) -> np.ndarray:
    """int64 [D, 2] (document, the lowest document of its group): ``stages.dedup.near_groups`` of the
    verified ``pairs``, over the documents that occur in them only (the lowest of a group is the same
    after renumbering them in order), so its size follows the pairs, not the store."""
    from packprep.stages.dedup import near_groups

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    nodes, inverse = np.unique(pairs.ravel(), return_inverse=True)
    dup_of = near_groups(len(nodes), inverse.reshape(-1, 2)).dup_of
    dropped = np.flatnonzero(dup_of >= 0)
    return np.stack([nodes[dropped], nodes[dup_of[dropped]]], axis=1)


def sign_and_shuffle(
    ray: Any, store_path: Path, ranges: list[tuple[int, int]], config: DedupConfig, *, keeps: list[Any], progress: Any,
    signatures_path: Path,
) -> np.ndarray:
    """Verified near-duplicate pairs int64 [Q, 2] (lower index first, estimated Jaccard >= the threshold).

    ``keeps``: per range, which of its documents exact dedup kept (bool arrays, or the refs of the
    writer tasks that return them). Each range task writes its signatures into its rows of ``signatures_path`` (a uint32
    [N, num_perm] ``.npy`` the caller created, on the shared file system) and sends its band
    rows to the reducers; a reducer runs once every range has finished, so it reads the two
    signature rows of each of its candidate pairs from that file and returns only the pairs
    that pass. Neither the signatures nor the candidates reach the driver.
    """
    partitions = len(ranges)
    params = {"num_perm": config.num_perm, "shingle": config.shingle, "seed": config.seed, "threshold": config.minhash_threshold}
    sign = ray.remote(max_retries=RAY_MAX_RETRIES, num_returns=1 + partitions)(sign_range)
    outputs = [
        sign.remote(str(store_path), d0, d1, params, keep, partitions, str(signatures_path)) for (d0, d1), keep in zip(ranges, keeps)
    ]
    reduce = ray.remote(max_retries=RAY_MAX_RETRIES)(band_pairs)
    # Reducer p takes partition p of every range: the shuffle happens in Ray's object store.
    pair_refs = [
        reduce.remote(str(signatures_path), config.minhash_threshold, *[out[1 + p] for out in outputs]) for p in range(partitions)
    ]
    for signed in as_finished(ray, [out[0] for out in outputs]):
        progress(signed)
    pairs = [p for p in ray.get(pair_refs) if len(p)]
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def hash_range(store_path: str, hashes_path: str, first: int, end: int) -> int:
    """Ray task: ``stages.dedup.document_text_hashes`` of documents [first, end) into those rows of the
    uint64 ``.npy`` at ``hashes_path`` (``io.write_npy_rows``: a retry rewrites the same bytes); their count."""
    from packprep.stages.dedup import document_text_hashes
    from packprep.tokenizers import tokenizer_from_manifest

    store = DocStore.open(store_path, mapped=True)
    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    write_npy_rows(Path(hashes_path), first, document_text_hashes(decode, store.tokens, np.asarray(store.offsets[first : end + 1])))
    return end - first


def sign_range(
    store_path: str, first: int, end: int, params: dict[str, Any], keep: np.ndarray | None, partitions: int,
    signatures_path: str | None = None,
) -> Any:
    """Ray task: MinHash signatures of documents [first, end); with ``partitions``, also their LSH band keys
    as uint64 rows (band, key, document) split by ``key % partitions``.

    The band keys are ``stages.dedup.band_keys``, as the local engine's. With ``signatures_path``
    the signatures go into rows [first, end) of that ``.npy`` (``io.write_npy_rows``: written, not
    mapped, before the task returns; a retry rewrites the same bytes) and the first output is their
    count instead.
    """
    from packprep.stages.dedup import EMPTY_SIGNATURE, band_keys, document_signatures, lsh_params
    from packprep.tokenizers import tokenizer_from_manifest

    store = DocStore.open(store_path, mapped=True)  # memory-mapped here: tokens never travel through Ray
    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    # Offsets need not start at 0: documents are read at their absolute positions.
    signatures = document_signatures(
        decode, store.tokens, np.asarray(store.offsets[first : end + 1]), num_perm=params["num_perm"],
        shingle=params["shingle"], seed=params["seed"],
    )
    if not partitions:
        return signatures
    first_output: Any = signatures
    if signatures_path is not None:
        write_npy_rows(Path(signatures_path), first, signatures)
        first_output = end - first
    active = np.asarray(keep, dtype=bool) & ~(signatures == EMPTY_SIGNATURE).all(axis=1)
    docs = (np.flatnonzero(active) + first).astype(np.uint64)
    bands, rows = lsh_params(params["num_perm"], params["threshold"])
    sig = signatures[active]
    tables = []
    for band in range(bands):
        keys = band_keys(sig, band, rows, params["seed"])
        tables.append(np.stack([np.full(len(docs), band, np.uint64), keys, docs], axis=1))
    table = np.concatenate(tables) if tables else np.zeros((0, 3), np.uint64)
    part = table[:, 1] % np.uint64(partitions)
    return (first_output, *[table[part == p] for p in range(partitions)])


def band_pairs(signatures_path: str | None, threshold: float, *tables: np.ndarray) -> np.ndarray:
    """Ray task (a shuffle reducer): ``stages.dedup.bucket_pairs`` of the rows every range sent to this
    partition; with ``signatures_path``, only those whose signatures (read from that file) pass ``threshold``
    (``stages.dedup.similar_pairs``)."""
    from packprep.stages.dedup import bucket_pairs, similar_pairs

    pairs = bucket_pairs(np.concatenate(tables))
    if signatures_path is None:
        return pairs
    return similar_pairs(np.load(signatures_path, mmap_mode="r"), pairs, threshold=threshold)
