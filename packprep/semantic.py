"""The semantic stages wired to a document store: dedup and embed, cached beside it.

Files added to WORK (each stage's manifest is written last; a matching ``key``
means the stage is reused):

    dedup.json            manifest: config, counts by reason, key
    dedup.keep.npy        bool [N]   True for documents kept by exact + near dedup
    dedup.reason.npy      uint8 [N]  0 kept, 1 exact, 2 near (stages.dedup.REASON_*)
    dedup.dup_of.npy      int64 [N]  the kept document a dropped one duplicates, -1 if kept
    embeddings.npy        float16|float32 [N, D], L2-normalised, every document of the store
    embed.json            manifest: model, dim, embed_tokens, key; for the static embedder its
                          calibration: the threshold standing for MiniLM's default (stages.static_embed.Calibration)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packprep._files import load_json, save_json, save_npy
from packprep.config import DedupConfig, EmbedConfig, as_dict, stage_key
from packprep.engines import LOCAL, Engine
from packprep.errors import PackprepError
from packprep.progress import Reporter, SilentReporter
from packprep.store import DocStore

DEDUP_MANIFEST = "dedup.json"
EMBED_MANIFEST = "embed.json"
_DEDUP_ARRAYS = ("keep", "reason", "dup_of")


@dataclass(frozen=True)
class Dedup:
    """A stored dedup result: the arrays of ``stages.dedup.DedupResult`` plus its manifest."""

    keep: np.ndarray
    reason: np.ndarray
    dup_of: np.ndarray
    manifest: dict[str, Any]


def dedup(
    store: DocStore, *, config: DedupConfig = DedupConfig(), engine: Engine = LOCAL, reporter: Reporter = SilentReporter()
) -> Dedup:
    """Exact (normalised-text hash) and near (MinHash LSH) dedup of ``store``; cached in its folder."""
    key = stage_key("dedup", config, store=store.manifest["key"])
    cached = _cached(store.path / DEDUP_MANIFEST, key)
    if cached is not None:
        reporter.info("dedup: reusing the stored result")
        return _load_dedup(store.path, cached)
    (store.path / DEDUP_MANIFEST).unlink(missing_ok=True)

    if engine.ray:
        from packprep.engines.ray_engine import dedup_on_ray

        result = dedup_on_ray(store, config=config, address=engine.address, reporter=reporter)
    else:
        result = _dedup_here(store, config, reporter)
    for name in _DEDUP_ARRAYS:
        save_npy(store.path / f"dedup.{name}.npy", getattr(result, name))
    manifest = {"key": key, "config": as_dict(config), "counts": result.counts()}
    save_json(store.path / DEDUP_MANIFEST, manifest)
    reporter.info("dedup: " + ", ".join(f"{n} {reason}" for reason, n in result.counts().items()))
    return _load_dedup(store.path, manifest)


def _dedup_here(store: DocStore, config: DedupConfig, reporter: Reporter) -> Any:
    """The dedup stage in this process: a ``stages.dedup.DedupResult``."""
    from packprep.stages import dedup as stage

    result = stage.exact_duplicates(store.text_hash) if config.exact else stage.DedupResult.all_kept(store.num_documents)
    if config.near:
        with reporter.track("minhash", total=store.num_documents, unit="docs") as advance:
            signatures = stage.minhash_signatures(
                store.tokens, store.offsets, num_perm=config.num_perm, shingle=config.shingle, seed=config.seed,
                progress=advance,
            )
        near = stage.near_duplicates(signatures, threshold=config.minhash_threshold, seed=config.seed, keep=result.keep)
        result = stage.combine(result, near)
    return result


def embed(
    store: DocStore, *, config: EmbedConfig = EmbedConfig(), engine: Engine = LOCAL, reporter: Reporter = SilentReporter()
) -> np.ndarray:
    """Embed every document of ``store`` (its first ``embed_tokens`` tokens); cached as a memmap.

    ``config.model == "static"``: the static model is fitted to this store first (MiniLM
    embeds a seeded sample of its documents; ``stages.static_embed.fit_static_model``)
    and embeds every document in this process, whatever the engine: it runs at
    thousands of documents per second and the fitted model exists only here.
    """
    from packprep.stages.embed import embed_documents, load_embedder
    from packprep.stages.static_embed import STATIC_MODEL, fitted_fingerprint
    from packprep.tokenizers import tokenizer_from_manifest

    static = config.model == STATIC_MODEL
    if static:
        _report_distilling(reporter)
    embedder = load_embedder(config.model)
    fingerprint = fitted_fingerprint(embedder.fingerprint) if static else embedder.fingerprint
    key = stage_key("embed", config, store=store.manifest["key"], model=fingerprint)
    path = store.path / "embeddings.npy"
    if _cached(store.path / EMBED_MANIFEST, key) is not None:
        reporter.info("embed: reusing the stored embeddings")
        return np.load(path, mmap_mode="r")
    (store.path / EMBED_MANIFEST).unlink(missing_ok=True)

    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    calibration = None
    if static and store.num_documents:
        embedder, calibration = _fit_static(store, embedder, decode, config, reporter)
    tmp = path.with_name(path.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(config.dtype), shape=(store.num_documents, embedder.dim))
    with reporter.track(f"embed ({embedder.name})", total=store.num_documents, unit="docs") as advance:
        if engine.ray and not static:
            from packprep.engines.ray_engine import embed_on_ray

            embed_on_ray(store, config=config, out=out, address=engine.address, progress=advance)
        else:
            embed_documents(
                embedder, decode, store.tokens, store.offsets, np.arange(store.num_documents),
                out=out, max_tokens=config.embed_tokens, batch_size=config.batch_size, progress=advance,
            )
    out.flush()
    del out
    tmp.replace(path)
    save_json(
        store.path / EMBED_MANIFEST,
        {"key": key, "config": as_dict(config), "model": embedder.name, "dim": embedder.dim, "fingerprint": fingerprint,
         "calibration": calibration},
    )
    return np.load(path, mmap_mode="r")


def _report_distilling(reporter: Reporter) -> None:
    from packprep.stages.embed import _fingerprint, _packaged_model_dir
    from packprep.stages.static_embed import is_distilled

    if not is_distilled(_fingerprint(_packaged_model_dir())):
        reporter.info("embed: distilling the static model from MiniLM (first use only, about a minute)")


def _fit_static(
    store: DocStore, static: Any, decode: Any, config: EmbedConfig, reporter: Reporter
) -> tuple[Any, dict[str, Any] | None]:
    """``static`` (a stages.embed.Embedder) with its model fitted to MiniLM's vectors of a sample of ``store``,
    and the static semantic threshold calibrated to MiniLM's on that sample (None for a one-document store)."""
    from dataclasses import asdict, replace

    from packprep.stages.embed import embed_texts, first_tokens_text, load_embedder
    from packprep.stages.static_embed import FIT, calibrate_static, fit_sample, fit_static_model, fitted_fingerprint

    sample = fit_sample(store.num_documents, size=FIT["sample"], seed=FIT["seed"])
    reporter.info(f"embed: fitting static vectors on {len(sample):,} sampled documents embedded with MiniLM")
    texts = list(first_tokens_text(decode, store.tokens, store.offsets, sample, max_tokens=config.embed_tokens))
    teacher = load_embedder()
    with reporter.track("embed (MiniLM sample)", total=len(sample), unit="docs") as advance:
        targets = embed_texts(teacher, texts, batch_size=config.batch_size, dtype=np.float32, progress=advance)
    model = fit_static_model(static.model, texts, targets, map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
    fitted = replace(static, dim=model.vectors.shape[1], fingerprint=fitted_fingerprint(static.fingerprint), model=model)
    if len(sample) < 2:
        return fitted, None
    calibration = calibrate_static(static.model, model, texts, targets, whole_store=len(sample) == store.num_documents)
    return fitted, asdict(calibration)


def embed_manifest(store: DocStore) -> dict[str, Any] | None:
    """What the embed stage recorded beside ``store`` (model, calibration), or None before it ran."""
    path = store.path / EMBED_MANIFEST
    return load_json(path) if path.is_file() else None


def load_embeddings(store_path: Path) -> np.ndarray | None:
    """The embeddings stored beside a document store, or None when it has none."""
    path = Path(store_path) / "embeddings.npy"
    return np.load(path, mmap_mode="r") if (Path(store_path) / EMBED_MANIFEST).is_file() and path.is_file() else None


def _cached(manifest_path: Path, key: str) -> dict[str, Any] | None:
    if not manifest_path.is_file():
        return None
    try:
        manifest = load_json(manifest_path)
    except json.JSONDecodeError:
        return None
    return manifest if manifest.get("key") == key else None


def _load_dedup(folder: Path, manifest: dict[str, Any]) -> Dedup:
    arrays = {name: np.load(folder / f"dedup.{name}.npy") for name in _DEDUP_ARRAYS}
    return Dedup(manifest=manifest, **arrays)


def check_threshold(name: str, value: float | None) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise PackprepError(f"{name} must be in (0, 1], got {value}")
