"""The tokenize stage wired to disk: a corpus into a document store (WORK), cached by key.

Reading and tokenizing run on the engine; this module decides where the store lives, whether
a finished one is reused (its key: config + corpus fingerprint + tokenizer) and what its
manifest records.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from packprep.config import DEFAULT_ID_FIELD, TokenizeConfig, as_dict, stage_key
from packprep.corpus import SUPPORTED_SUFFIXES, CorpusListing, corpus_fingerprint, scan_corpus
from packprep.engines import LOCAL, Backend, Engine
from packprep.errors import PackprepError
from packprep.io import folder_lock
from packprep.pipeline.folders import claim_folder, finished_with_key, removed_on_error
from packprep.pipeline.run import Run
from packprep.progress import Reporter, SilentReporter
from packprep.store import BLOCKS_DIRNAME, MANIFEST_NAME, DocStore, is_store_file
from packprep.version import __version__


def tokenize(
    corpus: str | Path,
    work: str | Path,
    *,
    config: TokenizeConfig = TokenizeConfig(),
    overwrite: bool = False,
    workers: int | None = None,
    engine: Engine | Backend = LOCAL,
    reporter: Reporter = SilentReporter(),
) -> DocStore:
    """Stream ``corpus`` through the tokenizer into a document store at ``work``.

    ``workers``: tokenizer workers (default: all cores); ``engine``: here or on Ray. The
    store depends on neither.
    """
    return tokenize_in(corpus, work, config=config, overwrite=overwrite, run=Run.of(engine, reporter, workers))


def tokenize_in(
    corpus: str | Path, work: str | Path, *, config: TokenizeConfig, overwrite: bool, run: Run,
    listing: CorpusListing | None = None, hash_texts: bool = True,
) -> DocStore:
    """:func:`tokenize` as a step of a larger ``run`` (``pack`` calls it with the ``listing`` of the corpus it made).

    ``hash_texts`` False (a pack without exact dedup): no ``text_hash.npy`` when the tokenizer
    ``decodes_exactly`` (hashing is ~0.15 of the tokenize work); a later dedup hashes the
    decoded store instead (``pipeline.semantic.with_text_hash``), to the same values.
    """
    listing = scan_corpus(corpus) if listing is None else listing  # fails early on a missing path or nothing to read
    warn_unread_files(listing, corpus, run.reporter)
    corpus, work = Path(corpus), Path(work)
    with removed_on_error(work), folder_lock(work):
        return _tokenize(corpus, work, listing.sources, config, overwrite, run, hash_texts)


def _tokenize(
    corpus: Path, work: Path, sources: list[Path], config: TokenizeConfig, overwrite: bool, run: Run, hash_texts: bool
) -> DocStore:
    from packprep.tokenizers import load_tokenizer

    reporter = run.reporter
    tokenizer = load_tokenizer(config.tokenizer, eos_id=config.eos_id, bos_id=config.bos_id, num_threads=run.workers)
    fingerprint = None
    # Only a finished store can be reused, and only then is the corpus fingerprint needed before
    # reading: otherwise the engine computes it while it reads, and the corpus is read once.
    if (work / MANIFEST_NAME).is_file():
        fingerprint = corpus_fingerprint(corpus, sources=sources)
        if finished_with_key(work, tokenize_key(config, tokenizer, fingerprint)):
            reporter.info(f"tokenize: reusing the document store in {work}")
            return DocStore.open(work)
    shutil.rmtree(work / BLOCKS_DIRNAME, ignore_errors=True)  # an interrupted run's blocks; claim_folder would call them foreign
    claim_folder(work, overwrite=overwrite, ours=is_store_file)

    def manifest(counts: dict[str, int], num_documents: int, fingerprint: str) -> dict[str, Any]:
        if num_documents == 0:
            raise no_documents_error(corpus, counts)
        key = tokenize_key(config, tokenizer, fingerprint)
        return store_manifest(key, config, tokenizer, corpus=corpus, fingerprint=fingerprint, counts=counts)

    store, read = run.backend.tokenize(
        corpus, work, sources=sources, config=config, tokenizer=tokenizer, fingerprint=fingerprint, manifest=manifest,
        reporter=reporter, workers=run.workers, hash_texts=hash_texts or not tokenizer.decodes_exactly,
    )
    report_read(reporter, config, read.counts, with_id=read.with_id, first_errors=read.first_errors)
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


def tokenize_key(config: TokenizeConfig, tokenizer: Any, fingerprint: str) -> str:
    """The tokenize stage's cache key, from the corpus ``fingerprint`` (``corpus.corpus_fingerprint``).

    Neither the engine nor the worker count is part of it: every engine writes the same
    store, so each reuses a store another made.
    """
    from packprep.stages.dedup import EXACT_HASH

    # EXACT_HASH names how text_hash.npy was computed: a store hashed another way is re-tokenised, not reused.
    return stage_key("tokenize", config, corpus=fingerprint, tokenizer=tokenizer.fingerprint(), text_hash=EXACT_HASH)


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
