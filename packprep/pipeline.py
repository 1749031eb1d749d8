"""The stages wired to disk: what the CLI calls and what notebooks call (``packprep.pack``).

Each function loads its inputs, runs the pure stage functions and saves the result
atomically with a manifest; a stage whose manifest already records the same key
(config + input fingerprints) is skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packprep import __version__
from packprep._folders import (
    WORK_DIRNAME,
    claim_folder,
    clear_output,
    finished_with_key,
    is_output_file,
    is_store_file,
    refuse_file,
    removed_on_error,
)
from packprep.corpus import list_corpus_files
from packprep.config import PACKINGS, STRATEGIES, DedupConfig, EmbedConfig, PackConfig, TokenizeConfig, as_dict, stage_key
from packprep.engines import LOCAL, Engine
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.progress import Reporter, SilentReporter
from packprep.selection import select_documents
from packprep.stages.pack import PackPlan, pack as pack_plan, permute_rows
from packprep.store import DocStore, DocStoreWriter, is_store

_BATCH_DOCS = 2048
_BATCH_CHARS = 8 << 20  # ~8 MB of text per tokenizer call keeps memory flat with huge documents


def tokenize(
    corpus: str | Path,
    work: str | Path,
    *,
    config: TokenizeConfig = TokenizeConfig(),
    overwrite: bool = False,
    workers: int | None = None,
    engine: Engine = LOCAL,
    reporter: Reporter = SilentReporter(),
) -> DocStore:
    """Stream ``corpus`` through the tokenizer into a document store at ``work``.

    ``workers``: tokenizer workers (default: all cores); ``engine``: here or on Ray. The
    store depends on neither.
    """
    if engine.ray:
        from packprep.engines.ray_engine import tokenize_on_ray

        return tokenize_on_ray(corpus, work, config=config, overwrite=overwrite, address=engine.address, reporter=reporter)
    corpus, work = Path(corpus), Path(work)
    list_corpus_files(corpus)  # fails early and clearly on a missing path or a folder with nothing to read
    with removed_on_error(work):
        return _tokenize(corpus, work, config, overwrite, workers, reporter)


def _tokenize(
    corpus: Path, work: Path, config: TokenizeConfig, overwrite: bool, workers: int | None, reporter: Reporter
) -> DocStore:
    from packprep.corpus import ReadCounters, iter_documents
    from packprep.tokenizers import load_tokenizer, smallest_token_dtype

    tokenizer = load_tokenizer(config.tokenizer, eos_id=config.eos_id, bos_id=config.bos_id, num_threads=workers)
    key, fingerprint = tokenize_key(corpus, config, tokenizer)
    if finished_with_key(work, key):
        reporter.info(f"tokenize: reusing the document store in {work}")
        return DocStore.open(work)
    claim_folder(work, overwrite=overwrite, ours=is_store_file)

    counters = ReadCounters()
    documents = iter_documents(
        corpus, text_field=config.text_field, id_field=config.id_field, on_error=config.on_error, counters=counters
    )
    with DocStoreWriter(work, dtype=smallest_token_dtype(tokenizer.vocab_size)) as writer, reporter.track(
        "tokenize", unit="docs"
    ) as advance:
        dropped_empty = tokenize_into(writer, documents, tokenizer, progress=advance)
        counts = {"records": counters.records, "dropped_empty": dropped_empty, "skipped_records": counters.skipped}
        if writer.num_documents == 0:
            raise no_documents_error(corpus, counts)
        store = writer.finish(store_manifest(key, config, tokenizer, corpus=corpus, fingerprint=fingerprint, counts=counts))
    if counters.skipped:
        reporter.info(f"tokenize: skipped {counters.skipped} bad records, e.g. {counters.first_errors[0]}")
    if dropped_empty:
        reporter.info(f"tokenize: dropped {dropped_empty} empty documents")
    return store


def tokenize_key(corpus: Path, config: TokenizeConfig, tokenizer: Any) -> tuple[str, str]:
    """The tokenize stage's cache key and the corpus fingerprint it includes.

    Neither the engine nor the worker count is part of it: every engine writes the same
    store, so each reuses a store another made.
    """
    from packprep.corpus import corpus_fingerprint

    fingerprint = corpus_fingerprint(corpus)
    return stage_key("tokenize", config, corpus=fingerprint, tokenizer=tokenizer.fingerprint()), fingerprint


def tokenize_into(
    writer: DocStoreWriter, documents: Iterable[tuple[str, str]], tokenizer: Any, *, progress: Any = None
) -> int:
    """Tokenize ``(id, text)`` pairs batch by batch into ``writer``; return how many were empty.

    Empty documents are dropped (and counted); every kept one is stored with the hash of
    its normalised text, which exact dedup uses later. Both engines call this.
    """
    from packprep.stages.dedup import normalized_text_hash

    dropped_empty = 0
    for batch in _batches(documents):
        ids = [doc_id for doc_id, _ in batch]
        texts = [text for _, text in batch]
        flat, lengths = tokenizer.encode_batch(texts)
        keep = lengths > 0
        dropped_empty += int((~keep).sum())
        hashes = np.array([normalized_text_hash(t) for t, k in zip(texts, keep) if k], dtype=np.uint64)
        writer.append(flat, lengths[keep], list(itertools.compress(ids, keep)), hashes)
        if progress is not None:
            progress(len(batch), tokens=len(flat))
    return dropped_empty


def store_manifest(
    key: str, config: TokenizeConfig, tokenizer: Any, *, corpus: Path, fingerprint: str, counts: dict[str, int]
) -> dict[str, Any]:
    """What ``store.json`` records about a tokenize run (identical for both engines)."""
    return {
        "key": key,
        "packprep_version": __version__,
        "config": as_dict(config),
        "tokenizer": _tokenizer_info(tokenizer, config.tokenizer),
        "source": {"path": str(corpus), "fingerprint": fingerprint},
        "counts": counts,
    }


def no_documents_error(corpus: Path, counts: dict[str, int]) -> PackprepError:
    return PackprepError(
        f"no non-empty documents ({counts['records']} records read, {counts['dropped_empty']} empty, "
        f"{counts['skipped_records']} skipped)",
        path=corpus,
    )


def pack(
    source: str | Path,
    out: str | Path,
    *,
    config: PackConfig = PackConfig(),
    tokenize_config: TokenizeConfig = TokenizeConfig(),
    dedup_config: DedupConfig = DedupConfig(),
    embed_config: EmbedConfig = EmbedConfig(),
    format: str = "npy",
    labels: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    engine: Engine = LOCAL,
    reporter: Reporter = SilentReporter(),
) -> Path:
    """Pack a corpus (tokenized first, cached in ``out/work``) or a document store into shards at ``out``.

    For ``cluster``/``icp`` the chain is tokenize -> dedup -> embed -> order -> pack,
    each stage cached beside the store. The npy shards are always written (inspect and
    verify read them); ``format`` ``arrow`` or ``megatron`` adds a conversion in
    ``out/<format>`` (``labels``: an arrow labels column). ``workers``: tokenizer
    workers; ``engine``: where tokenize, dedup and embed run. The shards depend on neither.
    """
    from packprep.convert import FORMATS, convert

    _check_pack_config(config)
    if format != "npy" and format not in FORMATS:
        raise PackprepError(f"unknown format {format!r}; expected one of npy, {', '.join(FORMATS)}")
    source, out = Path(source), Path(out)
    refuse_file(out)
    with removed_on_error(out):
        _pack(source, out, config, tokenize_config, dedup_config, embed_config, overwrite, workers, engine, reporter)
        if format != "npy":
            with reporter.track(f"convert to {format}", total=npy.read_manifest(out)["counts"]["num_sequences"], unit="rows") as advance:
                convert(out, to=format, labels=labels, progress=advance)
    return out


def _pack(
    source: Path,
    out: Path,
    config: PackConfig,
    tokenize_config: TokenizeConfig,
    dedup_config: DedupConfig,
    embed_config: EmbedConfig,
    overwrite: bool,
    workers: int | None,
    engine: Engine,
    reporter: Reporter,
) -> Path:
    if is_store(source):
        store = DocStore.open(source)
    else:
        list_corpus_files(source)  # a missing or unreadable corpus fails before OUT is touched
        claim_folder(out, overwrite=overwrite, ours=is_output_file, keep={WORK_DIRNAME})
        store = tokenize(
            source, out / WORK_DIRNAME, config=tokenize_config, overwrite=overwrite, workers=workers, engine=engine,
            reporter=reporter,
        )

    inputs = {"store": store.manifest["key"]}
    if config.run_dedup:
        inputs["dedup"] = as_dict(dedup_config)
    if config.semantic:
        inputs["embed"] = as_dict(embed_config)
    key = stage_key("pack", config, **inputs)
    if finished_with_key(out, key, manifest=npy.MANIFEST_NAME):
        reporter.info(f"pack: {out} is already up to date")
        return out
    claim_folder(out, overwrite=overwrite, ours=is_output_file, keep={WORK_DIRNAME})
    if (out / npy.MANIFEST_NAME).is_file() and not overwrite:
        raise PackprepError("holds a packprep output made with other options; pass --overwrite to replace it", path=out)
    finished = npy.finished_shards(out, key)
    clear_output(out, keep={entry["files"][a]["path"] for entry in finished for a in npy.SHARD_ARRAYS} | {npy.JOURNAL_NAME})
    if finished:
        reporter.info(f"pack: resuming; {len(finished)} finished shards of an interrupted run are reused")

    tokenizer = store.manifest["tokenizer"]
    sep_id = _separator(config.strategy, tokenizer)
    sep_len = 0 if sep_id is None else 1
    pad_id = tokenizer["eos_id"] if tokenizer["eos_id"] is not None else 0
    if config.seq_len <= sep_len:
        raise PackprepError(f"--seq-len {config.seq_len} leaves no room next to the {sep_len}-token separator")

    selection = select_documents(
        store, config=config, dedup_config=dedup_config, embed_config=embed_config, engine=engine, reporter=reporter
    )
    sequence_lengths = store.lengths() + sep_len
    # A semantic order is the point of cluster/icp: bestfit then packs along it, not by length.
    plan = pack_plan(
        sequence_lengths, selection.order, seq_len=config.seq_len, packing=config.packing, keep_order=config.semantic
    )
    if config.packing == "bestfit" or config.semantic:
        # Best fit opens rows longest-document first, and semantic orders put one topic in
        # consecutive rows: shuffle rows (the documents inside a row stay together).
        plan = permute_rows(plan, np.random.default_rng([config.seed, 1]).permutation(plan.num_rows))

    rows_per_shard = config.rows_per_shard or npy.default_rows_per_shard(config.seq_len, store.tokens.dtype)
    with reporter.track("write shards", total=plan.num_rows, unit="rows") as advance:
        shards = npy.write_shards(
            out, plan, read_spans=store.read_spans, offsets=store.offsets, dtype=store.tokens.dtype,
            sep_id=sep_id, pad_id=pad_id, rows_per_shard=rows_per_shard, key=key, finished=finished, on_rows=advance,
        )
    doc_files = npy.write_doc_table(
        out, ids_from=store.path / "doc_ids", sequence_lengths=sequence_lengths, reason=selection.reason,
        dup_of=selection.dup_of,
    )
    npy.write_manifest(
        out,
        {
            "key": key,
            "packprep_version": __version__,
            "tokenize_config": store.manifest.get("config"),
            "strategy": config.strategy,
            "packing": config.packing,
            "seq_len": config.seq_len,
            "seed": config.seed,
            "dtype": store.tokens.dtype.name,
            "pad_id": int(pad_id),
            "sep_id": sep_id,
            "tokenizer": tokenizer,
            "config": as_dict(config),
            "dedup_config": as_dict(dedup_config) if config.run_dedup else None,
            "embed_config": as_dict(embed_config) if config.semantic else None,
            "source": {"store": str(store.path.resolve()), "store_key": store.manifest["key"], **store.manifest["source"]},
            "counts": plan_counts(plan, num_documents=len(selection.order)),
            "store_counts": store.manifest["counts"],
            "dropped": selection.dropped_counts(),
            "shards": shards,
            "doc_files": doc_files,
        },
    )
    (out / npy.JOURNAL_NAME).unlink(missing_ok=True)
    return out


def plan_counts(plan: PackPlan, *, num_documents: int) -> dict[str, Any]:
    """The headline numbers of a packing (the same keys ``inspect --json`` prints)."""
    num_tokens = int(plan.seg_length.sum())
    capacity = plan.num_rows * plan.seq_len
    pieces = np.bincount(plan.seg_doc) if plan.num_segments else np.zeros(0, np.int64)
    return {
        "num_sequences": plan.num_rows,
        "num_tokens": num_tokens,
        "pad_tokens": capacity - num_tokens,
        "fill_ratio": num_tokens / capacity if capacity else 0.0,
        "num_documents": num_documents,
        "num_segments": plan.num_segments,
        "split_documents": int((pieces > 1).sum()),
    }


def _separator(strategy: str, tokenizer: dict[str, Any]) -> int | None:
    if strategy == "random":
        return None
    if tokenizer["eos_id"] is None:
        raise PackprepError(f"tokenizer {tokenizer['name']} has no EOS token; pass --eos-id for --strategy {strategy}")
    return int(tokenizer["eos_id"])


def _check_pack_config(config: PackConfig) -> None:
    if config.strategy not in STRATEGIES:
        raise PackprepError(f"unknown strategy {config.strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if config.packing not in PACKINGS:
        raise PackprepError(f"unknown packing {config.packing!r}; expected one of {', '.join(PACKINGS)}")
    if config.seq_len <= 0:
        raise PackprepError(f"--seq-len must be positive, got {config.seq_len}")
    if config.rows_per_shard is not None and config.rows_per_shard <= 0:
        raise PackprepError(f"--shard-size must be positive, got {config.rows_per_shard}")
    if config.semantic_threshold is not None and not 0.0 <= config.semantic_threshold <= 1.0:
        raise PackprepError(f"--semantic-threshold must be in [0, 1] (0: off), got {config.semantic_threshold}")
    if config.clusters is not None and config.clusters < 1:
        raise PackprepError(f"--clusters must be at least 1, got {config.clusters}")
    if config.knn < 1:
        raise PackprepError(f"--knn must be at least 1, got {config.knn}")


def _tokenizer_info(tokenizer: Any, tokenizer_spec: str) -> dict[str, Any]:
    spec = Path(tokenizer_spec)
    return {
        "spec": str(spec.resolve()) if spec.exists() else tokenizer_spec,
        "name": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": tokenizer.eos_id,
        "bos_id": tokenizer.bos_id,
        "fingerprint": tokenizer.fingerprint(),
    }


def _batches(documents: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    chars = 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc[1])
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
