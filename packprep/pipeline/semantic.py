"""The semantic stages wired to a document store: dedup and embed, cached beside it.

Files added to WORK (each stage's manifest is written last; a matching ``key``
means the stage is reused):

    dedup.json            manifest: config, counts by reason, key
    dedup.<name>.npy.tmp  the three arrays below while an engine fills them (store.cached.open_dedup)
    dedup.keep.npy        bool [N]   True for documents kept by exact + near dedup
    dedup.reason.npy      uint8 [N]  0 kept, 1 exact, 2 near (stages.dedup.REASON_*)
    dedup.dup_of.npy      int64 [N]  the kept document a dropped one duplicates, -1 if kept
    embeddings.npy        float16|float32 [N, D], L2-normalised, every document of the store (all-MiniLM-L6-v2)
    embed.json            manifest: config (model, embed_tokens, ...), dim, fingerprint, key; for the
                          static embedder its calibration: the threshold standing for MiniLM's
                          default (stages.static_embed.Calibration)
    embeddings.static.npy, embed.static.json    the same for --embedder static; every embedder
                          has its own pair, and a journal while it runs (packprep.store.embeddings)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from packprep.config import DedupConfig, EmbedConfig, as_dict, stage_key
from packprep.engines import LOCAL, Backend, Engine
from packprep.io import cached_manifest
from packprep.errors import PackprepError
from packprep.pipeline.run import Run
from packprep.progress import Reporter, SilentReporter
from packprep.store import DocStore
from packprep.store.cached import DEDUP_MANIFEST, Dedup, load_dedup, open_dedup, publish_dedup, save_dedup
from packprep.store.embeddings import ChunkJournal, EmbedFiles, finished_manifests

__all__ = ["Dedup", "HeldEmbedder", "dedup", "dedup_in", "embed", "embed_in", "held_embed_config", "record_dedup"]


def dedup(
    store: DocStore, *, config: DedupConfig = DedupConfig(), engine: Engine | Backend = LOCAL, reporter: Reporter = SilentReporter()
) -> Dedup:
    """Exact (normalised-text hash) and near (MinHash LSH over the decoded, normalised text) dedup of
    ``store``; cached in its folder."""
    return dedup_in(store, config=config, run=Run.of(engine, reporter))


def dedup_in(store: DocStore, *, config: DedupConfig, run: Run) -> Dedup:
    """:func:`dedup` as a step of a larger ``run``."""
    reporter = run.reporter
    cached = cached_manifest(store.path / DEDUP_MANIFEST, _dedup_key(store, config))
    if cached is not None:
        reporter.info("dedup: reusing the stored result")
        return load_dedup(store.path, cached)
    (store.path / DEDUP_MANIFEST).unlink(missing_ok=True)

    if config.exact:
        store = with_text_hash(store, run)
    out = open_dedup(store.path, store.num_documents)
    counts = run.backend.dedup(store, config=config, reporter=reporter, out=out)
    found = publish_dedup(store.path, out, {"key": _dedup_key(store, config), "config": as_dict(config), "counts": counts})
    reporter.info("dedup: " + ", ".join(f"{n} {reason}" for reason, n in counts.items()))
    return found


def with_text_hash(store: DocStore, run: Run) -> DocStore:
    """``store`` with its ``text_hash.npy``: a pack that does not dedup tokenizes without it, so a
    later dedup of the same store hashes the decoded documents once (the same hashes: only a
    tokenizer that ``decodes_exactly`` skips them at tokenize time) and keeps them in the store."""
    if store.text_hash is not None:
        return store
    run.backend.write_text_hashes(store, reporter=run.reporter)
    return DocStore.open(store.path)


def record_dedup(store: DocStore, *, config: DedupConfig, result: Any) -> Dedup:
    """Store ``result`` (a ``stages.dedup.DedupResult``) as ``store``'s dedup under ``config``: what
    :func:`dedup` then returns. A recipe records the drops it decided across sources this way."""
    (store.path / DEDUP_MANIFEST).unlink(missing_ok=True)
    manifest = {"key": _dedup_key(store, config), "config": as_dict(config), "counts": result.counts()}
    save_dedup(store.path, result, manifest)
    return load_dedup(store.path, manifest)


def _dedup_key(store: DocStore, config: DedupConfig) -> str:
    """The cache key of ``store``'s dedup under ``config`` (the text normalisation's version included)."""
    from packprep.stages.shingles import NORMALIZATION

    return stage_key("dedup", config, store=store.manifest["key"], normalization=NORMALIZATION)


def embed(
    store: DocStore, *, config: EmbedConfig = EmbedConfig(), engine: Engine | Backend = LOCAL, reporter: Reporter = SilentReporter()
) -> np.ndarray:
    """Embed every document of ``store`` (its first ``embed_tokens`` tokens); cached as a memmap.

    Each embedder has its own files (``store.embeddings``), so switching embedders keeps the
    other's vectors. Finished chunks are journaled as they are written: a killed run's
    rerun embeds only the rest and writes the same bytes.

    ``config.model == "static"``: the static model is fitted to this store first (MiniLM
    embeds a seeded sample of its documents; ``stages.static_embed.fit_static_model``)
    and embeds every document in this process, whatever the engine: it runs at
    thousands of documents per second and the fitted model exists only here.
    """
    return embed_in(store, config=config, run=Run.of(engine, reporter))


def embed_in(store: DocStore, *, config: EmbedConfig, run: Run) -> np.ndarray:
    """:func:`embed` as a step of a larger ``run``."""
    from packprep.stages import embed as stage
    from packprep.stages.static_embed import STATIC_MODEL, fitted_fingerprint
    from packprep.tokenizers import tokenizer_from_manifest

    reporter = run.reporter
    static = config.model == STATIC_MODEL
    if static:
        _report_distilling(reporter)
    embedder = stage.load_embedder(config.model)
    fingerprint = fitted_fingerprint(embedder.fingerprint) if static else embedder.fingerprint
    key = stage_key("embed", config, store=store.manifest["key"], model=fingerprint)
    files = EmbedFiles.of(store.path, config.model)
    if cached_manifest(files.manifest, key) is not None:
        reporter.info("embed: reusing the stored embeddings")
        return np.load(files.vectors, mmap_mode="r")
    files.manifest.unlink(missing_ok=True)

    journal = ChunkJournal.resume(files, key=key, chunk=stage.EMBED_CHUNK)
    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    calibration = None
    if static and store.num_documents:
        embedder, calibration = _fit_static(store, embedder, decode, config, reporter, journal=journal)
    # The static model exists only in this process (fitted just now), and runs at thousands of documents per second.
    backend = LOCAL.backend() if static else run.backend
    _embed_chunks(store, embedder, decode, config, backend, reporter, journal=journal)
    journal.publish()
    files.save_manifest(
        {"key": key, "config": as_dict(config), "model": embedder.name, "dim": embedder.dim, "fingerprint": fingerprint,
         "chunk": journal.chunk, "store_key": store.manifest["key"], "calibration": calibration},
    )
    journal.remove()
    return np.load(files.vectors, mmap_mode="r")


def _embed_chunks(
    store: DocStore, embedder: Any, decode: Any, config: EmbedConfig, backend: Backend, reporter: Reporter,
    *, journal: ChunkJournal,
) -> None:
    """Embed the chunks ``journal`` does not hold yet into its partial vectors, journaling each."""
    n = store.num_documents
    out = journal.open_vectors((n, embedder.dim), np.dtype(config.dtype))
    todo = journal.todo(n)
    reused = n - sum(min(journal.chunk, n - start) for start in todo)
    if reused:
        reporter.info(f"embed: resuming; {reused:,} documents embedded by an interrupted run are reused")
    with reporter.track(f"embed ({embedder.name})", total=n, unit="docs") as advance:
        advance(reused, resumed=True)
        backend.embed(
            store, embedder, decode, config=config, out=out, starts=todo, chunk=journal.chunk, progress=advance,
            on_chunk=journal.finish,
        )


def _report_distilling(reporter: Reporter) -> None:
    from packprep.stages.model_files import model_fingerprint, packaged_model_dir
    from packprep.stages.static_embed import is_distilled

    if not is_distilled(model_fingerprint(packaged_model_dir())):
        reporter.info("embed: distilling the static model from MiniLM (first use only, about two minutes)")


def _fit_static(
    store: DocStore, static: Any, decode: Any, config: EmbedConfig, reporter: Reporter, *, journal: ChunkJournal
) -> tuple[Any, dict[str, Any] | None]:
    """``static`` (a stages.embed.Embedder) with its model fitted to MiniLM's vectors of a sample of ``store``,
    and the static semantic threshold calibrated to MiniLM's on that sample (None for a one-document store).

    MiniLM's vectors of the sample are the costly part (up to 2,000 documents), so ``journal``
    keeps them for a rerun after a kill; the fit itself is exact and takes seconds.
    """
    from dataclasses import asdict, replace

    from packprep.stages.embed import embed_texts, first_tokens_text, load_embedder
    from packprep.stages.static_embed import FIT, calibrate_static, fit_sample, fit_static_model, fitted_fingerprint

    sample = fit_sample(store.num_documents, size=FIT["sample"], seed=FIT["seed"])
    reporter.info(f"embed: fitting static vectors on {len(sample):,} sampled documents embedded with MiniLM")
    texts = list(first_tokens_text(decode, store.tokens, store.offsets, sample, max_tokens=config.embed_tokens))
    targets = journal.fit_targets()
    if targets is None:
        teacher = load_embedder()
        with reporter.track("embed (MiniLM sample)", total=len(sample), unit="docs") as advance:
            targets = embed_texts(teacher, texts, batch_size=config.batch_size, dtype=np.float32, progress=advance)
        journal.save_fit_targets(targets)
    else:
        reporter.info("embed: the fit sample's MiniLM vectors of an interrupted run are reused")
    model = fit_static_model(static.model, texts, targets, map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
    fitted = replace(static, dim=model.vectors.shape[1], fingerprint=fitted_fingerprint(static.fingerprint), model=model)
    if len(sample) < 2:
        return fitted, None
    calibration = calibrate_static(static.model, model, texts, targets, whole_store=len(sample) == store.num_documents)
    return fitted, asdict(calibration)


@dataclass(frozen=True, kw_only=True)
class HeldEmbedder:
    """No embedder named: the one whose embeddings the store holds (MiniLM when it holds none).

    ``embed_tokens``: None keeps what those embeddings were made with.
    """

    embed_tokens: int | None = None


def held_embed_config(store: DocStore, choice: HeldEmbedder = HeldEmbedder()) -> EmbedConfig:
    """The embed config of the embeddings ``store`` holds, for a run that named no embedder.

    Raises :class:`PackprepError` when it holds the embeddings of several embedders:
    which one to use is the user's choice, and guessing would silently change the output.
    """
    from dataclasses import replace

    held = [m for m in finished_manifests(store.path) if _made_from(m, store)]
    if not held:
        return EmbedConfig() if choice.embed_tokens is None else EmbedConfig(embed_tokens=choice.embed_tokens)
    if len(held) > 1:
        names = ", ".join(_embedder_label(m["config"]["model"]) for m in held)
        raise PackprepError(f"holds the embeddings of several embedders ({names}); choose one with --embedder", path=store.path)
    config = EmbedConfig(**held[0]["config"])
    return config if choice.embed_tokens is None else replace(config, embed_tokens=choice.embed_tokens)


def _made_from(manifest: dict[str, Any], store: DocStore) -> bool:
    """Whether finished embeddings were made from this very store (older manifests: their key says so)."""
    if "store_key" in manifest:
        return manifest["store_key"] == store.manifest["key"]
    try:
        config = EmbedConfig(**manifest["config"])
    except (KeyError, TypeError):
        return False
    return manifest.get("key") == stage_key("embed", config, store=store.manifest["key"], model=manifest.get("fingerprint"))


def _embedder_label(model: str) -> str:
    from packprep.stages.embed import DEFAULT_ALIASES
    from packprep.stages.static_embed import STATIC_MODEL

    if model in DEFAULT_ALIASES:
        return "--embedder minilm"
    return "--embedder static" if model == STATIC_MODEL else f"--model {model}"
