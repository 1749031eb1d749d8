"""The stages wired to disk: what the CLI calls and what notebooks call (``packprep.pack``).

Each function loads its inputs, runs the pure stage functions and saves the result
atomically with a manifest; a stage whose manifest already records the same key
(config + input fingerprints) is skipped.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packprep import __version__
from packprep._files import load_json
from packprep.config import PACKINGS, STRATEGIES, PackConfig, TokenizeConfig, as_dict, stage_key
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.progress import Reporter, SilentReporter
from packprep.stages.pack import PackPlan, pack as pack_plan, permute_rows
from packprep.store import DocStore, DocStoreWriter, is_store

WORK_DIRNAME = "work"
_BATCH_DOCS = 2048
_BATCH_CHARS = 8 << 20  # ~8 MB of text per tokenizer call keeps memory flat with huge documents


def tokenize(
    corpus: str | Path,
    work: str | Path,
    *,
    config: TokenizeConfig = TokenizeConfig(),
    overwrite: bool = False,
    reporter: Reporter = SilentReporter(),
) -> DocStore:
    """Stream ``corpus`` through the tokenizer into a document store at ``work``."""
    from packprep.corpus import ReadCounters, corpus_fingerprint, iter_documents, list_corpus_files
    from packprep.stages.dedup import normalized_text_hash
    from packprep.tokenizers import load_tokenizer, smallest_token_dtype

    corpus, work = Path(corpus), Path(work)
    list_corpus_files(corpus)  # fails early and clearly on a missing path or a folder with nothing to read
    tokenizer = load_tokenizer(config.tokenizer, eos_id=config.eos_id, bos_id=config.bos_id)
    fingerprint = corpus_fingerprint(corpus)
    key = stage_key("tokenize", config, corpus=fingerprint, tokenizer=tokenizer.fingerprint())
    if _finished_with_key(work, key):
        reporter.info(f"tokenize: reusing the document store in {work}")
        return DocStore.open(work)
    _claim_folder(work, overwrite=overwrite, ours=_is_store_file)

    counters = ReadCounters()
    dropped_empty = 0
    documents = iter_documents(
        corpus, text_field=config.text_field, id_field=config.id_field, on_error=config.on_error, counters=counters
    )
    with DocStoreWriter(work, dtype=smallest_token_dtype(tokenizer.vocab_size)) as writer, reporter.track(
        "tokenize", unit="docs"
    ) as advance:
        for batch in _batches(documents):
            ids = [doc_id for doc_id, _ in batch]
            texts = [text for _, text in batch]
            flat, lengths = tokenizer.encode_batch(texts)
            keep = lengths > 0
            dropped_empty += int((~keep).sum())
            hashes = np.array([normalized_text_hash(t) for t, k in zip(texts, keep) if k], dtype=np.uint64)
            writer.append(flat, lengths[keep], list(itertools.compress(ids, keep)), hashes)
            advance(len(batch), tokens=len(flat))
        if writer.num_documents == 0:
            raise PackprepError(
                f"no non-empty documents ({counters.records} records read, {dropped_empty} empty, "
                f"{counters.skipped} skipped)",
                path=corpus,
            )
        store = writer.finish(
            {
                "key": key,
                "packprep_version": __version__,
                "config": as_dict(config),
                "tokenizer": _tokenizer_info(tokenizer, config.tokenizer),
                "source": {"path": str(corpus), "fingerprint": fingerprint},
                "counts": {
                    "records": counters.records,
                    "dropped_empty": dropped_empty,
                    "skipped_records": counters.skipped,
                },
            }
        )
    if counters.skipped:
        reporter.info(f"tokenize: skipped {counters.skipped} bad records, e.g. {counters.first_errors[0]}")
    if dropped_empty:
        reporter.info(f"tokenize: dropped {dropped_empty} empty documents")
    return store


def pack(
    source: str | Path,
    out: str | Path,
    *,
    config: PackConfig = PackConfig(),
    tokenize_config: TokenizeConfig = TokenizeConfig(),
    overwrite: bool = False,
    reporter: Reporter = SilentReporter(),
) -> Path:
    """Pack a corpus (tokenized first, cached in ``out/work``) or a document store into shards at ``out``."""
    _check_pack_config(config)
    source, out = Path(source), Path(out)
    _refuse_file(out)
    if is_store(source):
        store = DocStore.open(source)
    else:
        _claim_folder(out, overwrite=overwrite, ours=_is_output_file, keep={WORK_DIRNAME})
        store = tokenize(source, out / WORK_DIRNAME, config=tokenize_config, overwrite=overwrite, reporter=reporter)

    key = stage_key("pack", config, store=store.manifest["key"])
    if _finished_with_key(out, key, manifest=npy.MANIFEST_NAME):
        reporter.info(f"pack: {out} is already up to date")
        return out
    _claim_folder(out, overwrite=overwrite, ours=_is_output_file, keep={WORK_DIRNAME})
    if (out / npy.MANIFEST_NAME).is_file() and not overwrite:
        raise PackprepError("holds a packprep output made with other options; pass --overwrite to replace it", path=out)
    _clear_output(out)

    tokenizer = store.manifest["tokenizer"]
    sep_id = _separator(config.strategy, tokenizer)
    sep_len = 0 if sep_id is None else 1
    pad_id = tokenizer["eos_id"] if tokenizer["eos_id"] is not None else 0
    if config.seq_len <= sep_len:
        raise PackprepError(f"--seq-len {config.seq_len} leaves no room next to the {sep_len}-token separator")

    from packprep.stages.order import random_order

    doc_indices = np.arange(store.num_documents, dtype=np.int64)
    order = random_order(doc_indices, seed=config.seed)
    sequence_lengths = store.lengths() + sep_len
    plan = pack_plan(sequence_lengths, order, seq_len=config.seq_len, packing=config.packing)
    if config.packing == "bestfit":
        # Best fit opens rows longest-document first; shuffle them so training does not see all long documents first.
        plan = permute_rows(plan, np.random.default_rng([config.seed, 1]).permutation(plan.num_rows))

    shards = _write_shards(out, plan, store, sep_id=sep_id, pad_id=pad_id, config=config, reporter=reporter)
    _write_doc_table(out, store, sequence_lengths)
    npy.write_manifest(
        out,
        {
            "key": key,
            "packprep_version": __version__,
            "strategy": config.strategy,
            "packing": config.packing,
            "seq_len": config.seq_len,
            "seed": config.seed,
            "dtype": store.tokens.dtype.name,
            "pad_id": int(pad_id),
            "sep_id": sep_id,
            "tokenizer": tokenizer,
            "config": as_dict(config),
            "source": {"store": str(store.path), "store_key": store.manifest["key"], **store.manifest["source"]},
            "counts": plan_counts(plan, num_documents=len(order)),
            "store_counts": store.manifest["counts"],
            "shards": shards,
        },
    )
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


def _write_shards(
    out: Path, plan: PackPlan, store: DocStore, *, sep_id: int | None, pad_id: int, config: PackConfig, reporter: Reporter
) -> list[dict[str, Any]]:
    rows_per_shard = config.rows_per_shard or npy.default_rows_per_shard(config.seq_len, store.tokens.dtype)
    shards = []
    with reporter.track("write shards", total=plan.num_rows, unit="rows") as advance:
        for index, start in enumerate(range(0, plan.num_rows, rows_per_shard)):
            rows = slice(start, min(start + rows_per_shard, plan.num_rows))
            shards.append(
                npy.write_shard(
                    out, index, plan, rows,
                    tokens=store.tokens, offsets=store.offsets, dtype=store.tokens.dtype,
                    sep_id=sep_id, pad_id=pad_id, on_rows=advance,
                )
            )
    return shards


def _write_doc_table(out: Path, store: DocStore, sequence_lengths: np.ndarray) -> None:
    for name in ("doc_ids.bin", "doc_ids.idx.npy"):
        tmp = out / (name + ".tmp")
        shutil.copyfile(store.path / name, tmp)
        tmp.replace(out / name)
    npy.save_npy(out / "doc_lengths.npy", sequence_lengths.astype(np.int64))


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


# --- output folders -------------------------------------------------------------------------------


def _refuse_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise PackprepError("is a file; expected a folder (new or empty)", path=path)


def _finished_with_key(folder: Path, key: str, *, manifest: str = "store.json") -> bool:
    path = folder / manifest
    if not path.is_file():
        return False
    try:
        return load_json(path).get("key") == key
    except ValueError:
        return False


def _is_store_file(path: Path) -> bool:
    return path.name.split(".")[0] in {"tokens", "offsets", "text_hash", "doc_ids", "store"}


def _is_output_file(path: Path) -> bool:
    name = path.name
    return name.startswith("shard-") or name.split(".")[0] in {"doc_ids", "doc_lengths", "manifest"}


def _claim_folder(folder: Path, *, overwrite: bool, ours: Any, keep: set[str] = frozenset()) -> None:
    """Make ``folder`` ready to be written: create it, or refuse one holding foreign files.

    Files this stage itself writes (``ours``) are allowed: they are a previous or
    interrupted run of packprep and are replaced. Anything else needs ``--overwrite``.
    """
    _refuse_file(folder)
    folder.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in keep and not ours(p))
    if foreign and not overwrite:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise PackprepError(f"is not empty ({listed}); pass --overwrite to replace its contents", path=folder)
    if overwrite:
        for name in foreign:
            _remove(folder / name)


def _clear_output(out: Path) -> None:
    """Remove a previous output (manifest first, so nothing half-old looks finished)."""
    (out / npy.MANIFEST_NAME).unlink(missing_ok=True)
    for path in out.iterdir():
        if path.name != WORK_DIRNAME and _is_output_file(path):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
