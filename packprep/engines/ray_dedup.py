"""MinHash dedup on Ray: signature tasks, the LSH band shuffle and the driver's verification
(``ray_engine.dedup_on_ray`` and ``ray_engine.minhash_signatures_on_ray`` drive them).

MinHash signatures are computed in tasks over document ranges (each opens the memmapped
store itself and decodes its documents with the store's tokenizer, as the local engine
does: ``stages.dedup.document_signatures``); the same tasks hash the LSH bands and hash-partition the (band, key, doc)
rows to reducer tasks (a shuffle), which emit candidate pairs; the driver verifies them
and takes connected components exactly as the local stage does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packprep.config import DedupConfig
from packprep.engines.base import RAY_MAX_RETRIES
from packprep.store import DocStore


def document_ranges(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` consecutive, non-empty ``(first, end)`` document ranges with about equal tokens."""
    n = len(offsets) - 1
    cuts = np.searchsorted(offsets, np.linspace(0, offsets[-1], max(1, parts) + 1)[1:-1], side="left")
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, n), [n]])).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def sign_and_shuffle(
    ray: Any, store_path: Path, ranges: list[tuple[int, int]], config: DedupConfig, *, keep: np.ndarray, progress: Any,
    signatures_path: Path,
) -> np.ndarray:
    """Verified near-duplicate pairs int64 [Q, 2] (lower index first, estimated Jaccard >= the threshold).

    Each range task writes its signatures into its rows of ``signatures_path`` (a uint32
    [N, num_perm] ``.npy`` the caller created, on the shared file system) and sends its band
    rows to the reducers; a reducer runs once every range has finished, so it reads the two
    signature rows of each of its candidate pairs from that file and returns only the pairs
    that pass. Neither the signatures nor the candidates reach the driver.
    """
    partitions = len(ranges)
    params = {"num_perm": config.num_perm, "shingle": config.shingle, "seed": config.seed, "threshold": config.minhash_threshold}
    sign = ray.remote(max_retries=RAY_MAX_RETRIES, num_returns=1 + partitions)(sign_range)
    outputs = [
        sign.remote(str(store_path), d0, d1, params, keep[d0:d1], partitions, str(signatures_path)) for d0, d1 in ranges
    ]
    reduce = ray.remote(max_retries=RAY_MAX_RETRIES)(band_pairs)
    # Reducer p takes partition p of every range: the shuffle happens in Ray's object store.
    pair_refs = [
        reduce.remote(str(signatures_path), config.minhash_threshold, *[out[1 + p] for out in outputs]) for p in range(partitions)
    ]
    sig_refs = [out[0] for out in outputs]
    pending = list(sig_refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        progress(ray.get(done[0]))
    pairs = [p for p in ray.get(pair_refs) if len(p)]
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def hash_range(store_path: str, hashes_path: str, first: int, end: int) -> int:
    """Ray task: ``stages.dedup.document_text_hashes`` of documents [first, end) into those rows of the
    uint64 ``.npy`` at ``hashes_path`` (flushed before returning: a retry rewrites the same bytes); their count."""
    from packprep.stages.dedup import document_text_hashes
    from packprep.tokenizers import tokenizer_from_manifest

    store = DocStore.open(store_path, mapped=True)
    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    shared = np.load(hashes_path, mmap_mode="r+")
    shared[first:end] = document_text_hashes(decode, store.tokens, np.asarray(store.offsets[first : end + 1]))
    shared.flush()
    return end - first


def sign_range(
    store_path: str, first: int, end: int, params: dict[str, Any], keep: np.ndarray | None, partitions: int,
    signatures_path: str | None = None,
) -> Any:
    """Ray task: MinHash signatures of documents [first, end); with ``partitions``, also their LSH band keys
    as uint64 rows (band, key, document) split by ``key % partitions``.

    The band keys are ``stages.dedup.band_keys``, as the local engine's. With ``signatures_path``
    the signatures go into rows [first, end) of that ``.npy`` (flushed before the task returns:
    a retry rewrites the same bytes) and the first output is their count instead.
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
        shared = np.load(signatures_path, mmap_mode="r+")
        shared[first:end] = signatures
        shared.flush()
        del shared
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
