"""The heavy stages on Ray, writing the same bytes as the local engine.

This module is the entry point: ``RayEngine`` (the ``engines.Backend`` the pipeline calls),
``connect``, and one function per stage. Each stage's tasks and actors live in a module of
their own, importable on the workers:

- tokenize (``ray_tokenize``): one task per corpus source, or per byte range of a large
  ``.jsonl``, writes a block store; copy tasks concatenate the blocks into WORK's store.
- dedup (``ray_dedup``): exact dedup as a shuffle of (text hash, document) rows from tasks
  over document ranges to reducer tasks; MinHash signatures and LSH band keys in tasks over
  the same ranges (signatures written to a shared file), shuffled to reducer tasks that emit
  candidate pairs and verify them against that file; the driver takes the components of the
  verified pairs; a writer task per range writes its rows of the result files.
- embed (``ray_embed``): a pool of actors, each holding the model, embeds the local
  engine's chunks (4096 documents each) so every batch has the same composition and the
  same floats.
- order: one task per range of kept documents assigns them to the plan's coarse centroids
  and saves them grouped, then copies them into the plan's members file
  (``formats.partition_plan``); one task per partition (``ray_order``) reads its slice of that
  file and only its rows of the embeddings memmap.
- pack and shards (``ray_pack``): one task per part of the order packs it and saves its
  plan; one task per shard writes it from its rows of that plan.

Workers must see the corpus and WORK at the same paths (one machine, or a shared
file system). A worker that dies is retried by Ray (``RAY_MAX_RETRIES``); every task
writes only its own temporary folder or its own byte range, so a retry cannot corrupt
the output. Errors in the input are returned as values and re-raised on the driver as
the local engine raises them (file and line).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packprep.config import DedupConfig, EmbedConfig, TokenizeConfig
from packprep.engines.base import RAY_INSTALL_HINT, RAY_MAX_RETRIES, ReadSummary, as_finished
from packprep.engines.ray_dedup import document_ranges, hash_range, sign_and_shuffle, sign_range
from packprep.engines.ray_embed import EmbedWorker
from packprep.engines.ray_tokenize import RANGE_BYTES, run_blocks
from packprep.errors import PackprepError
from packprep.progress import Reporter, SilentReporter
from packprep.io import replace_durably
from packprep.store import BLOCKS_DIRNAME, TEXT_HASH_FILE, DocStore, concatenate, copy_range


class RayEngine:
    """:class:`packprep.engines.Backend` on Ray: the local engine's bytes, computed in tasks and actors.

    ``address``: None starts a local Ray, ``"auto"`` joins the running cluster. ``range_bytes``:
    a plain ``.jsonl`` larger than this is read by several tasks, one per byte range of at most
    this size (smaller where the cluster's cores would otherwise not get two each: ``part_bytes``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, range_bytes: int = RANGE_BYTES):
        self.address = address
        self.range_bytes = range_bytes

    def backend(self) -> RayEngine:
        return self

    def tokenize(
        self, corpus: Path, work: Path, *, sources: list[Path], config: TokenizeConfig, tokenizer: Any,
        fingerprint: str | None, manifest: Callable[[dict[str, int], int, str], dict[str, Any]], reporter: Reporter,
        workers: int | None = None, hash_texts: bool = True,
    ) -> tuple[DocStore, ReadSummary]:
        # ``workers`` is the local engine's: Ray places its tasks on the cluster's cores.
        from concurrent.futures import ThreadPoolExecutor

        from packprep.corpus import corpus_fingerprint, corpus_root, source_parts
        from packprep.tokenizers import smallest_token_dtype

        ray = connect(self.address)
        dtype = smallest_token_dtype(tokenizer.vocab_size)
        blocks = work / BLOCKS_DIRNAME
        try:
            parts = source_parts(sources, part_bytes(sources, self.range_bytes, cpus=ray.cluster_resources().get("CPU", 1)))
            # The tasks read the corpus on Ray's workers: the digest (a stream over every file in
            # order) is taken here meanwhile, in a thread (hashlib and file reads release the GIL).
            with ThreadPoolExecutor(1) as thread:
                digest = thread.submit(corpus_fingerprint, corpus, sources=sources) if fingerprint is None else None
                summaries = run_blocks(ray, parts, corpus_root(corpus), blocks, config, dtype, reporter, hash_texts)
                fingerprint = digest.result() if digest is not None else fingerprint
            counts = {
                "records": sum(s["records"] for s in summaries),
                "dropped_empty": sum(s["dropped_empty"] for s in summaries),
                "skipped_records": sum(s["skipped"] for s in summaries),
            }
            recorded = manifest(counts, sum(s["num_documents"] for s in summaries), fingerprint)
            copy = ray.remote(max_retries=RAY_MAX_RETRIES)(copy_range)  # idempotent: a retry rewrites the same bytes

            def copy_in_tasks(copies: list[tuple[str, str, int]]) -> None:
                ray.get([copy.remote(*job) for job in copies])

            block_paths = [blocks / f"{i:06d}" for i in range(len(summaries))]
            store = concatenate(block_paths, work, dtype=dtype, manifest=recorded, copy=copy_in_tasks)
        finally:
            shutil.rmtree(blocks, ignore_errors=True)
        first_errors = [e for s in summaries for e in s["first_errors"]]
        return store, ReadSummary(counts, with_id=sum(s["with_id"] for s in summaries), first_errors=first_errors)

    def write_text_hashes(self, store: DocStore, *, reporter: Reporter) -> None:
        ray = connect(self.address)
        ranges = document_ranges(store.offsets, 2 * int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(max_retries=RAY_MAX_RETRIES)(hash_range)
        tmp = store.path / (TEXT_HASH_FILE + ".tmp")
        # The tasks write their rows of the file: no hash passes through the driver.
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint64, shape=(store.num_documents,)).flush()
        try:
            with reporter.track("text hashes", total=store.num_documents, unit="docs") as advance:
                pending = [task.remote(str(store.path), str(tmp), first, end) for first, end in ranges]
                for hashed in as_finished(ray, pending):
                    advance(hashed)
            replace_durably(tmp, store.path / TEXT_HASH_FILE)
        finally:
            tmp.unlink(missing_ok=True)

    def dedup(self, store: DocStore, *, config: DedupConfig, reporter: Reporter, out: dict[str, np.ndarray]) -> dict[str, int]:
        return dedup_into_on_ray(store, out, config=config, address=self.address, reporter=reporter)

    def embed(
        self, store: DocStore, embedder: Any, decode: Callable[[Any], str], *, config: EmbedConfig, out: np.ndarray,
        starts: list[int], chunk: int, progress: Callable[..., None], on_chunk: Callable[[int], None],
    ) -> None:
        # Each actor loads its own copy of the model (``embedder`` and ``decode`` stay on the driver).
        embed_on_ray(store, config=config, out=out, starts=starts, chunk=chunk, address=self.address, progress=progress, on_chunk=on_chunk)

    def group_by_partition(
        self, embeddings: np.ndarray, reason: np.ndarray, centroids: np.ndarray, jobs: list[tuple[int, int, int]], *,
        params: dict[str, Any], folder: Path, progress: Callable[..., None],
    ) -> np.ndarray:
        return group_by_partition_on_ray(
            embeddings, reason, centroids, jobs, params=params, folder=folder, address=self.address, progress=progress
        )

    def order_partitions(
        self, embeddings: np.ndarray, tasks: list[tuple[int, Any, dict[str, Any]]], *,
        on_part: Callable[[int, Any], None], progress: Callable[..., None],
    ) -> None:
        order_partitions_on_ray(embeddings, tasks, address=self.address, on_part=on_part, progress=progress)

    def pack_parts(
        self, folder: Path, store: DocStore, parts: list[tuple[int, int, int]], *, params: dict[str, Any],
        on_part: Callable[[dict[str, Any]], None],
    ) -> None:
        pack_parts_on_ray(folder, store, parts, params=params, on_part=on_part, address=self.address)

    def write_shards(
        self, out: Path, folder: Path, store: DocStore, jobs: list[tuple[int, int, tuple[int, int]]], *,
        params: dict[str, Any], on_shard: Callable[[int, dict[str, Any]], None], on_rows: Callable[..., None],
    ) -> None:
        write_shards_on_ray(out, folder, store, jobs, params=params, on_shard=on_shard, address=self.address, on_rows=on_rows)


# The smallest byte range part_bytes makes: the local engine's parts, whose start-up is alike.
MIN_PART_BYTES = 4 << 20


def part_bytes(sources: list[Path], range_bytes: int, *, cpus: float) -> int:
    """The byte-range size for tokenize tasks: ``range_bytes`` at most, and small enough that each
    of the cluster's ``cpus`` gets two ranges of the corpus (so a 55 MB file is not one task on
    one core of many), but not under MIN_PART_BYTES, below which a task's start-up would show."""
    total = sum(source.stat().st_size for source in sources if source.is_file())
    return min(range_bytes, max(MIN_PART_BYTES, -(-total // max(1, int(2 * cpus)))))


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


# ---------------------------------------------------------------------------- dedup


SIGNATURES_FILE = "dedup.signatures.partial.npy"  # MinHash signatures while dedup runs on Ray (in the store's folder)


def dedup_on_ray(
    store: DocStore,
    *,
    config: DedupConfig = DedupConfig(),
    address: str | None = None,
    num_tasks: int | None = None,
    reporter: Reporter = SilentReporter(),
) -> Any:
    """The ``stages.dedup.DedupResult`` that the local engine computes, computed on Ray (:func:`dedup_into_on_ray`)
    into scratch files beside the store and read back whole: for a caller that wants the arrays."""
    import tempfile

    from packprep.stages.dedup import DedupResult
    from packprep.store.cached import open_dedup

    with tempfile.TemporaryDirectory(prefix="dedup.scratch-", dir=store.path) as scratch:  # "dedup.": the store's
        out = open_dedup(Path(scratch), store.num_documents)
        dedup_into_on_ray(store, out, config=config, address=address, num_tasks=num_tasks, reporter=reporter)
        return DedupResult(**{name: np.array(array) for name, array in out.items()})


def dedup_into_on_ray(
    store: DocStore,
    out: dict[str, np.ndarray],
    *,
    config: DedupConfig = DedupConfig(),
    address: str | None = None,
    num_tasks: int | None = None,
    reporter: Reporter = SilentReporter(),
) -> dict[str, int]:
    """Fill ``out`` (``keep``, ``reason``, ``dup_of``: [N] ``.npy`` memmaps, ``store.cached.open_dedup``) with the
    local engine's dedup result, in Ray tasks; return its counts by reason.

    ``num_tasks``: document ranges (balanced by tokens), and as many reducers in each shuffle;
    default twice the cluster's CPUs. Tasks write the files by path, each its own range, so the
    driver never touches their pages; it holds the verified near pairs (and their components)
    and per-range refs, nothing of all N documents (``ray_dedup``'s docstring has the flow).
    """
    from packprep.engines.ray_dedup import exact_shuffle, mark_range, near_drops
    from packprep.stages.dedup import REASON_EXACT, REASON_NAMES, REASON_NEAR, counted_reasons

    n = store.num_documents
    ray = connect(address)
    ranges = document_ranges(store.offsets, num_tasks or 2 * int(ray.cluster_resources().get("CPU", 1))) if n else []
    paths = {name: str(array.filename) for name, array in out.items()}
    drops = exact_shuffle(ray, store.path, ranges) if config.exact else [[] for _ in ranges]
    mark = ray.remote(max_retries=RAY_MAX_RETRIES, num_returns=2)(mark_range)
    marked = [mark.remote(paths, d0, d1, REASON_EXACT, True, *pieces) for (d0, d1), pieces in zip(ranges, drops)]
    counted = [counts for counts, _ in marked]
    if config.near and n:
        # The range tasks write the signatures here and the reducers read their pairs' rows.
        # "dedup." marks it as the store's.
        signatures_path = store.path / SIGNATURES_FILE
        np.lib.format.open_memmap(signatures_path, mode="w+", dtype=np.uint32, shape=(n, config.num_perm)).flush()  # sparse: no page touched
        try:
            with reporter.track("minhash", total=n, unit="docs") as advance:
                pairs = sign_and_shuffle(
                    ray, store.path, ranges, config, keeps=[keep for _, keep in marked], progress=advance,
                    signatures_path=signatures_path,
                )
        finally:
            signatures_path.unlink(missing_ok=True)
        # Every exact writer has finished (the signature tasks waited for their keep), so these rewrite after them.
        near = near_drops(pairs)
        where = np.searchsorted(np.array([d0 for d0, _ in ranges]), near[:, 0], side="right") - 1
        counted = [
            mark.remote(paths, d0, d1, REASON_NEAR, False, near[where == r])[0] for r, (d0, d1) in enumerate(ranges)
        ]
    total = sum(ray.get(counted), np.zeros(len(REASON_NAMES), np.int64))
    return counted_reasons(total)


def minhash_signatures_on_ray(
    store_path: str | Path,
    *,
    num_perm: int = 128,
    shingle: int = 3,
    seed: int = 0,
    num_tasks: int = 4,
    address: str | None = None,
) -> np.ndarray:
    """uint32 [N, num_perm]: ``stages.dedup.document_signatures`` of the store at ``store_path``, in Ray tasks."""
    ray = connect(address)
    store = DocStore.open(store_path)
    task = ray.remote(max_retries=RAY_MAX_RETRIES)(sign_range)
    params = {"num_perm": num_perm, "shingle": shingle, "seed": seed, "threshold": None}
    refs = [task.remote(str(store_path), d0, d1, params, None, 0) for d0, d1 in document_ranges(store.offsets, num_tasks)]
    return np.concatenate(ray.get(refs)) if refs else np.zeros((0, num_perm), np.uint32)


# ---------------------------------------------------------------------------- embed


def embed_on_ray(
    store: DocStore,
    *,
    config: EmbedConfig = EmbedConfig(),
    out: np.ndarray,
    address: str | None = None,
    num_actors: int | None = None,
    threads: int | None = None,
    chunk: int | None = None,
    starts: list[int] | None = None,
    progress: Any = None,
    on_chunk: Any = None,
) -> None:
    """Fill ``out`` (``config.dtype`` [N, D], e.g. the memmap ``pipeline.semantic.embed`` opens) as the local engine does.

    A pool of actors each loads the model once; chunk i is documents [i*chunk, (i+1)*chunk)
    (default ``stages.embed.EMBED_CHUNK``), embedded exactly as ``stages.embed.embed_documents``
    embeds that chunk. ``starts``: the first documents of the chunks to embed (default:
    all); ``on_chunk(start)`` is called once a chunk's vectors are in ``out``. torch's
    results depend on its thread count too (CPU matmuls split their sums by thread), so
    each actor runs ``threads`` torch threads (default: this process's, as the local
    engine would) and reserves that many CPUs, at most a node's. ``num_actors``: default
    as many as the cluster's CPUs hold, at most one per chunk.
    """
    import torch

    ray = connect(address)
    from ray.util import ActorPool

    from packprep.stages.embed import EMBED_CHUNK

    n = store.num_documents
    chunk = chunk or EMBED_CHUNK
    starts = list(range(0, n, chunk)) if starts is None else list(starts)
    if not starts:
        return
    threads = threads or torch.get_num_threads()
    node_cpus = max(int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node["Alive"])
    actor_cpus = min(threads, node_cpus)
    fit = max(1, int(ray.cluster_resources().get("CPU", 1)) // actor_cpus)  # more would wait for CPUs forever
    worker = ray.remote(num_cpus=actor_cpus, max_restarts=RAY_MAX_RETRIES, max_task_retries=RAY_MAX_RETRIES)(EmbedWorker)
    actors = [worker.remote(str(store.path), config, threads) for _ in range(min(num_actors or fit, fit, len(starts)))]
    try:
        pool = ActorPool(actors)
        for start, vectors in pool.map_unordered(lambda actor, s: actor.embed.remote(s, min(s + chunk, n)), starts):
            out[start : start + len(vectors)] = vectors
            if on_chunk is not None:
                on_chunk(start)
            if progress is not None:
                progress(len(vectors))
    finally:
        for actor in actors:
            ray.kill(actor)


# ---------------------------------------------------------------------------- order


def group_by_partition_on_ray(
    embeddings: np.ndarray,
    reason: np.ndarray,
    centroids: np.ndarray,
    jobs: list[tuple[int, int, int]],
    *,
    params: dict[str, Any],
    folder: Path,
    address: str | None = None,
    progress: Any = None,
) -> np.ndarray:
    """``engines.base.Backend.group_by_partition`` as Ray tasks: one per range of kept positions
    (``formats.partition_plan.assign_range``), then one per range copying its grouped documents into
    the members file (``place_range``). The embeddings and the dedup reason go by path where they are
    memmaps (a reason of zeros, nothing dropped, as its length), so the driver reads no row; only
    each range's counts per centroid come back."""
    from packprep.formats import partition_plan

    ray = connect(address)
    rows = _by_path(ray, embeddings)
    nothing_dropped = reason.strides == (0,) and not (len(reason) and reason[0])  # np.broadcast_to of 0
    dropped = len(reason) if nothing_dropped else _by_path(ray, reason)
    assign = ray.remote(max_retries=RAY_MAX_RETRIES)(partition_plan.assign_range)
    shared = ray.put(centroids), ray.put(params)
    pending = [assign.remote(str(folder), r, first, stop, dropped, rows, *shared) for r, first, stop in jobs]
    kept = {r: stop - first for r, first, stop in jobs}
    counts = np.zeros((len(jobs), len(centroids)), dtype=np.int64)
    for r, range_counts in as_finished(ray, pending):
        counts[r] = range_counts
        if progress is not None:
            progress(kept[r])
    starts = partition_plan.placement_starts(counts)
    place = ray.remote(max_retries=RAY_MAX_RETRIES)(partition_plan.place_range)
    ray.get([place.remote(str(folder), r, starts[r], counts[r]) for r, _, _ in jobs])
    return counts.sum(axis=0)


def _by_path(ray: Any, array: np.ndarray) -> Any:
    """What a task is sent for an array: a memmap's path (the task maps it), else the array through the object store."""
    return str(array.filename) if isinstance(array, np.memmap) and array.filename else ray.put(np.asarray(array))


def order_partitions_on_ray(
    embeddings: np.ndarray,
    tasks: list[tuple[int, Any, dict[str, Any]]],
    *,
    address: str | None = None,
    on_part: Any,
    progress: Any = None,
) -> None:
    """Order partitions as Ray tasks: ``tasks`` are ``(p, members, params)`` for ``stages.partition.order_partition``;
    ``on_part(p, PartOrder)`` is called here as each finishes (in finishing order).

    A memmapped ``embeddings`` (what ``semantic.embed`` returns) is passed by path: each
    task reads only its partition's rows. faiss and numba run single-threaded in a task
    with one CPU; their results do not depend on the thread count (checked by the tests,
    which compare with the local engine's multi-threaded order). Each task declares the
    memory its partition needs (``ray_order.partition_bytes``), so Ray places it on a node
    where it fits instead of running out of memory there.
    """
    from packprep.engines import ray_order

    if not tasks:
        return
    ray = connect(address)
    source = _by_path(ray, embeddings)
    task = ray.remote(max_retries=RAY_MAX_RETRIES)(ray_order.order_part)
    dim = int(embeddings.shape[1])
    pending = [
        task.options(memory=ray_order.partition_bytes(len(members), dim, semantic=params.get("semantic_threshold", 0) > 0))
        .remote(p, source, members, params)
        for p, members, params in tasks
    ]
    sizes = {p: len(members) for p, members, _ in tasks}
    for p, part in as_finished(ray, pending):
        on_part(p, part)
        if progress is not None:
            progress(sizes[p])


# ---------------------------------------------------------------------------- shards


def pack_parts_on_ray(
    folder: Path, store: DocStore, parts: list[tuple[int, int, int]], *, params: dict[str, Any], on_part: Any,
    address: str | None = None,
) -> None:
    """One Ray task per part (``ray_pack.pack_part_task``): each reads its slice of ``folder/order.npy``
    and its documents' offsets, packs them and saves the plan in ``folder``; ``on_part(summary)`` is
    called here as each finishes. Only the summaries (a few numbers and checksums) come back."""
    from packprep.engines import ray_pack

    if not parts:
        return
    ray = connect(address)
    task = ray.remote(max_retries=RAY_MAX_RETRIES)(ray_pack.pack_part_task)
    pending = [task.remote(str(folder), part, first, end, str(store.path), params) for part, first, end in parts]
    for summary in as_finished(ray, pending):
        on_part(summary)


def write_shards_on_ray(
    out: Path,
    folder: Path,
    store: DocStore,
    jobs: list[tuple[int, int, tuple[int, int]]],
    *,
    params: dict[str, Any],
    on_shard: Any,
    address: str | None = None,
    on_rows: Any = None,
) -> None:
    """One Ray task per shard (``ray_pack.write_shard_task``): ``(index, part, rows)`` in ``jobs``, rows of
    part ``part``'s plan saved in ``folder``, written as shard ``index``; ``on_shard(index, entry)`` is
    called here as each finishes (in finishing order). Each task reads only its rows of the plan."""
    from packprep.engines import ray_pack

    if not jobs:
        return
    ray = connect(address)
    task = ray.remote(max_retries=RAY_MAX_RETRIES)(ray_pack.write_shard_task)
    pending = {
        task.remote(str(out), index, str(folder), part, rows, str(store.path), params): (index, rows[1] - rows[0])
        for index, part, rows in jobs
    }
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index, rows = pending.pop(ready[0])
        on_shard(index, ray.get(ready[0]))
        if on_rows:
            on_rows(rows)
