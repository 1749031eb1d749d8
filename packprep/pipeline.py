"""The stages wired to disk: what the CLI calls and what notebooks call (``packprep.pack``).

Each function loads its inputs, runs the pure stage functions and saves the result
atomically with a manifest; a stage whose manifest already records the same key
(config + input fingerprints) is skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packprep import __version__
from packprep._files import save_json
from packprep._folders import (
    WORK_DIRNAME,
    claim_folder,
    clear_output,
    finished_with_key,
    folder_lock,
    is_output_file,
    is_store_file,
    refuse_file,
    removed_on_error,
)
from packprep.corpus import SUPPORTED_SUFFIXES, CorpusListing, list_corpus_files, scan_corpus
from packprep.config import (
    DEFAULT_ID_FIELD,
    DedupConfig,
    EmbedConfig,
    PackConfig,
    TokenizeConfig,
    as_dict,
    check_workers,
    stage_key,
)
from packprep.engines import LOCAL, Engine
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.order_files import ORDER_JOURNAL_DIRNAME
from packprep.progress import Reporter, SilentReporter
from packprep.selection import select_documents
from packprep.semantic import HeldEmbedder, held_embed_config
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
    check_workers(workers)
    warn_unread_files(scan_corpus(corpus), corpus, reporter)  # fails early on a missing path or nothing to read
    corpus, work = Path(corpus), Path(work)
    if engine.ray:
        from packprep.engines.ray_engine import tokenize_on_ray

        with removed_on_error(work), folder_lock(work):
            return tokenize_on_ray(corpus, work, config=config, overwrite=overwrite, address=engine.address, reporter=reporter)
    with removed_on_error(work), folder_lock(work):
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
    report_read(reporter, config, counts, with_id=counters.with_id, first_errors=counters.first_errors)
    return store


def warn_unread_files(listing: CorpusListing, corpus: str | Path, reporter: Reporter) -> None:
    if listing.unsupported:
        n, example = len(listing.unsupported), listing.unsupported[0]
        reporter.warn(
            f"{corpus}: {n} file{'s' if n > 1 else ''} of other types not read (e.g. {example}); "
            f"corpus files are {', '.join(SUPPORTED_SUFFIXES)}"
        )


def report_read(
    reporter: Reporter, config: TokenizeConfig, counts: dict[str, int], *, with_id: int, first_errors: list[str]
) -> None:
    """What a tokenize run passed over (both engines say the same)."""
    if counts["skipped_records"]:
        reporter.info(f"tokenize: skipped {counts['skipped_records']} bad records, e.g. {first_errors[0]}")
    if counts["dropped_empty"]:
        reporter.info(f"tokenize: dropped {counts['dropped_empty']} empty or whitespace-only documents")
    # Only a field the user named: without ids, path:line is the documented default for "id".
    if counts["records"] and not with_id and config.id_field != DEFAULT_ID_FIELD:
        reporter.warn(f"--id-field '{config.id_field}': no record has this field; ids are path:line instead")


def tokenize_key(corpus: Path, config: TokenizeConfig, tokenizer: Any) -> tuple[str, str]:
    """The tokenize stage's cache key and the corpus fingerprint it includes.

    Neither the engine nor the worker count is part of it: every engine writes the same
    store, so each reuses a store another made.
    """
    from packprep.corpus import corpus_fingerprint
    from packprep.stages.dedup import EXACT_HASH

    fingerprint = corpus_fingerprint(corpus)
    # EXACT_HASH names how text_hash.npy was computed: a store hashed another way is re-tokenised, not reused.
    key = stage_key("tokenize", config, corpus=fingerprint, tokenizer=tokenizer.fingerprint(), text_hash=EXACT_HASH)
    return key, fingerprint


def tokenize_into(
    writer: DocStoreWriter, documents: Iterable[tuple[str, str]], tokenizer: Any, *, progress: Any = None
) -> int:
    """Tokenize ``(id, text)`` pairs batch by batch into ``writer``; return how many were empty.

    Empty documents (no text, only whitespace, or no tokens) are dropped and counted; every
    kept one is stored with the hash of its normalised text, which exact dedup uses later.
    Both engines call this.
    """
    from packprep.stages.dedup import normalized_text_hash

    dropped_empty = 0
    for batch in _batches(documents):
        # A whitespace-only text tokenizes to a few space tokens: a document with nothing to learn from.
        batch_kept = [(doc_id, text) for doc_id, text in batch if text and not text.isspace()]
        flat, lengths = tokenizer.encode_batch([text for _, text in batch_kept])
        keep = lengths > 0
        dropped_empty += len(batch) - int(keep.sum())
        kept = list(itertools.compress(batch_kept, keep))
        hashes = np.array([normalized_text_hash(text) for _, text in kept], dtype=np.uint64)
        writer.append(flat, lengths[keep], [doc_id for doc_id, _ in kept], hashes)
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
    embed_config: EmbedConfig | HeldEmbedder = HeldEmbedder(),
    format: str = "npy",
    labels: bool | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    engine: Engine = LOCAL,
    reporter: Reporter = SilentReporter(),
) -> Path:
    """Pack a corpus (tokenized first, cached in ``out/work``) or a document store into shards at ``out``.

    For ``cluster``/``icp`` the chain is tokenize -> dedup -> embed -> order -> pack,
    each stage cached beside the store. The npy shards are always written (inspect and
    verify read them); ``format`` ``arrow`` or ``megatron`` adds a conversion in
    ``out/<format>`` (``labels``: the arrow copy's labels column; None, the default, means on). ``workers``: tokenizer
    workers; ``engine``: where tokenize, dedup and embed run. The shards depend on neither.
    ``embed_config``: by default (``HeldEmbedder``) a document store's own embeddings, so a
    pack never re-embeds a store with an embedder other than the one it was embedded with;
    a raw corpus gets the default MiniLM.
    """
    from packprep.convert import FORMATS, convert

    check_workers(workers)
    if format != "npy" and format not in FORMATS:
        raise PackprepError(f"unknown format {format!r}; expected one of npy, {', '.join(FORMATS)}")
    if labels and format != "arrow":
        reporter.warn(f"--labels adds a column to the arrow copy only; ignored with --format {format}")
    source, out = Path(source), Path(out)
    refuse_file(out)
    # A store given as the source gets its dedup and embeddings written into it: hold it too.
    writes_store = is_store(source) and (config.run_dedup or config.semantic)
    with removed_on_error(out), folder_lock(out), folder_lock(source) if writes_store else contextlib.nullcontext():
        _pack(source, out, config, tokenize_config, dedup_config, embed_config, overwrite, workers, engine, reporter)
        if format != "npy":
            with reporter.track(f"convert to {format}", total=npy.read_manifest(out)["counts"]["num_sequences"], unit="rows") as advance:
                convert(out, to=format, labels=labels is not False, progress=advance)
    return out


def _pack(
    source: Path,
    out: Path,
    config: PackConfig,
    tokenize_config: TokenizeConfig,
    dedup_config: DedupConfig,
    embed_config: EmbedConfig | HeldEmbedder,
    overwrite: bool,
    workers: int | None,
    engine: Engine,
    reporter: Reporter,
) -> Path:
    from_store = is_store(source)
    if from_store:
        store = DocStore.open(source)
    else:
        list_corpus_files(source)  # a missing or unreadable corpus fails before OUT is touched
        claim_folder(out, overwrite=overwrite, ours=is_output_file, keep={WORK_DIRNAME})
        store = tokenize(
            source, out / WORK_DIRNAME, config=tokenize_config, overwrite=overwrite, workers=workers, engine=engine,
            reporter=reporter,
        )

    if isinstance(embed_config, HeldEmbedder):
        if from_store and config.semantic:
            embed_config = held_embed_config(store, embed_config)
        else:
            embed_config = EmbedConfig(**({} if embed_config.embed_tokens is None else {"embed_tokens": embed_config.embed_tokens}))
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
    finished_files = {entry["files"][a]["path"] for entry in finished for a in npy.SHARD_ARRAYS}
    clear_output(out, keep=finished_files | {npy.JOURNAL_NAME, ORDER_JOURNAL_DIRNAME})
    if finished:
        reporter.info(f"pack: resuming; {len(finished)} finished shards of an interrupted run are reused")

    tokenizer = store.manifest["tokenizer"]
    sep_id = _separator(config.strategy, tokenizer)
    sep_len = 0 if sep_id is None else 1
    pad_id = tokenizer["eos_id"] if tokenizer["eos_id"] is not None else 0
    if config.seq_len <= sep_len:
        raise PackprepError(f"--seq-len {config.seq_len} leaves no room next to the {sep_len}-token separator")

    selection = select_documents(
        store, config=config, dedup_config=dedup_config, embed_config=embed_config, engine=engine, reporter=reporter,
        order_journal=out / ORDER_JOURNAL_DIRNAME, key=key,
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
        if engine.ray:  # one task per shard, the same write_shard: the same files
            from packprep.engines.ray_engine import write_shards_on_ray

            shards = write_shards_on_ray(
                out, plan, store, rows_per_shard=rows_per_shard, finished=finished, address=engine.address, on_rows=advance,
                params={"dtype": store.tokens.dtype, "sep_id": sep_id, "pad_id": pad_id},
                on_shard=lambda prefix: save_json(out / npy.JOURNAL_NAME, {"key": key, "shards": prefix}),
            )
        else:
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
            "semantic_threshold": selection.semantic_threshold,
            "shards": shards,
            "doc_files": doc_files,
        },
    )
    (out / npy.JOURNAL_NAME).unlink(missing_ok=True)
    shutil.rmtree(out / ORDER_JOURNAL_DIRNAME, ignore_errors=True)
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
