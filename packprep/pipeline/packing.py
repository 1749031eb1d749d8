"""The pack stage wired to disk: a corpus or document store into shards (what ``packprep.pack`` runs).

Each function loads its inputs, runs the pure stage functions and saves the result
atomically with a manifest; a stage whose manifest already records the same key
(config + input fingerprints) is skipped.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from packprep.config import DedupConfig, EmbedConfig, PackConfig, TokenizeConfig, as_dict, stage_key
from packprep.corpus import scan_corpus
from packprep.engines import LOCAL, Backend, Engine
from packprep.errors import PackprepError
from packprep.formats import FORMATS, labels_ignored, npy
from packprep.formats.pack_parts import ORDER_FILE
from packprep.io import folder_lock, refuse_file
from packprep.pipeline.folders import ORDER_JOURNAL_DIRNAME, PACK_JOURNAL_DIRNAME, WORK_DIRNAME, claim_folder, clear_output, finished_with_key, is_output_file, removed_on_error
from packprep.pipeline.pack_parts import pack_in_parts
from packprep.pipeline.selection import select_documents
from packprep.pipeline.semantic import HeldEmbedder, held_embed_config
from packprep.pipeline.run import Run
from packprep.pipeline.tokenizing import tokenize_in
from packprep.progress import Reporter, SilentReporter
from packprep.stages.strategies import STRATEGIES
from packprep.store import DocStore, is_store
from packprep.version import __version__


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
    engine: Engine | Backend = LOCAL,
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
    from packprep.formats.convert import convert

    run = Run.of(engine, reporter, workers)
    if format not in FORMATS:
        raise PackprepError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if warning := labels_ignored(format, labels, "--format"):
        reporter.warn(warning)
    source, out = Path(source), Path(out)
    refuse_file(out)
    # A store given as the source gets its dedup and embeddings written into it: hold it too.
    writes_store = is_store(source) and (config.run_dedup or config.semantic)
    with removed_on_error(out), folder_lock(out), folder_lock(source) if writes_store else contextlib.nullcontext():
        _pack(source, out, config, tokenize_config, dedup_config, embed_config, overwrite, run)
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
    run: Run,
) -> Path:
    reporter = run.reporter
    from_store = is_store(source)
    if from_store:
        store = DocStore.open(source)
    else:
        listing = scan_corpus(source)  # a missing or unreadable corpus fails before OUT is touched
        claim_folder(out, overwrite=overwrite, ours=is_output_file, keep={WORK_DIRNAME})
        store = tokenize_in(
            source, out / WORK_DIRNAME, config=tokenize_config, overwrite=overwrite, run=run, listing=listing,
            hash_texts=config.run_dedup and dedup_config.exact,
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
    clear_output(out, keep=finished_files | {npy.JOURNAL_NAME, ORDER_JOURNAL_DIRNAME, PACK_JOURNAL_DIRNAME})
    if finished:
        reporter.info(f"pack: resuming; {len(finished)} finished shards of an interrupted run are reused")

    tokenizer = store.manifest["tokenizer"]
    sep_id = _separator(config.strategy, tokenizer)
    sep_len = 0 if sep_id is None else 1
    pad_id = tokenizer["eos_id"] if tokenizer["eos_id"] is not None else 0
    if config.seq_len <= sep_len:
        raise PackprepError(f"--seq-len {config.seq_len} leaves no room next to the {sep_len}-token separator")

    selection = select_documents(
        store, config=config, dedup_config=dedup_config, embed_config=embed_config, run=run,
        order_journal=out / ORDER_JOURNAL_DIRNAME, key=key, order_file=out / PACK_JOURNAL_DIRNAME / ORDER_FILE,
    )
    rows_per_shard = config.rows_per_shard or npy.default_rows_per_shard(config.seq_len, store.tokens.dtype)
    # A semantic order is the point of cluster/icp: bestfit then packs along it, not by length. Best fit
    # opens rows longest-document first, and semantic orders put one topic in consecutive rows: rows
    # are shuffled (inside each part; the documents inside a row stay together).
    packed = pack_in_parts(
        out, store, selection.order, part_docs=config.partition_docs, rows_per_shard=rows_per_shard, key=key,
        params={"seq_len": config.seq_len, "packing": config.packing, "keep_order": config.semantic, "sep_len": sep_len,
                "shuffle": config.packing == "bestfit" or config.semantic, "seed": config.seed},
        shard_params={"dtype": store.tokens.dtype, "sep_id": sep_id, "pad_id": pad_id},
        finished=finished, run=run, folder_name=PACK_JOURNAL_DIRNAME,
    )
    doc_files = npy.write_doc_table(
        out, ids_from=store.path / "doc_ids", offsets=store.offsets, sep_len=sep_len, reason=selection.reason,
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
            "counts": packed.counts,
            "store_counts": store.manifest["counts"],
            "dropped": selection.dropped_counts(),
            "semantic_threshold": selection.semantic_threshold,
            "shards": packed.shards,
            "doc_files": doc_files,
        },
    )
    (out / npy.JOURNAL_NAME).unlink(missing_ok=True)
    shutil.rmtree(out / ORDER_JOURNAL_DIRNAME, ignore_errors=True)
    shutil.rmtree(out / PACK_JOURNAL_DIRNAME, ignore_errors=True)
    return out


def _separator(strategy: str, tokenizer: dict[str, Any]) -> int | None:
    if not STRATEGIES[strategy].separator:
        return None
    if tokenizer["eos_id"] is None:
        raise PackprepError(f"tokenizer {tokenizer['name']} has no EOS token; pass --eos-id for --strategy {strategy}")
    return int(tokenizer["eos_id"])


