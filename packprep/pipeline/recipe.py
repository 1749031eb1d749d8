"""``packprep pack --recipe FILE OUT``: several sources mixed by weight, a held-out split, decontaminated.

The chain (every store is a ``DocStore``; OUT/work holds the recipe's own):

1. each source is tokenized into its own store, cached by (resolved path, tokenize options) under
   the recipe's ``cache`` (default OUT/work/sources): sources that share a corpus share its store,
   and recipes that share ``cache`` tokenize a shared source once. A source that is a store is used as is;
2. ``pool``: every source's documents (those matching its ``id_prefix``), source by source, with
   ``sources.npy`` (int16 [N], the source of each); dedup (when on) runs over it, so a document
   present in two sources is kept once;
3. the split (``stages.mix.val_mask``) over each source's documents, before any sampling;
4. decontamination of the train candidates against the benchmarks' and the val documents' n-grams
   (``stages.decontaminate``);
5. the mixture (``stages.mix.mix``) over what is left, in tokens as packed (separator included);
6. ``train`` (and ``val``) stores: the picked documents, one document per copy, then the dropped
   ones with their reason, which this module records as the stores' dedup result so ``pipeline.pack``
   orders, packs and writes them like any store (semantic dedup stays off: repeats are meant;
   ``original.npy`` names each copy's original, so a semantic order puts copies a pass apart);
7. provenance beside each output: ``doc_sources.npy`` (int16 [N]), ``doc_benchmark.npy`` (int32 [N],
   the benchmark a decontaminated document matched, -1 otherwise) and the manifest's ``recipe``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import folder_lock, load_json, refuse_file, save_json, save_npy, sha256_file
from packprep.pipeline.folders import WORK_DIRNAME, claim_folder, is_output_file, removed_on_error
from packprep.config import DedupConfig, EmbedConfig, PackConfig, TokenizeConfig, as_dict
from packprep.engines import LOCAL, Engine
from packprep.formats import npy
from packprep.progress import Reporter, SilentReporter
from packprep.recipe import Recipe
from packprep.pipeline.run import Run
from packprep.pipeline.semantic import HeldEmbedder, with_text_hash
from packprep.stages import decontaminate as decon
from packprep.stages.dedup import REASON_DECONTAMINATED, DedupResult
from packprep.stages.mix import Mixture, mix, split_hashes, val_mask
from packprep.store import DocStore, DocStoreWriter, copy_documents, is_store

OUTPUT_FILES = ("doc_sources.npy", "doc_benchmark.npy")
VAL_OWNER = "val split"  # the "benchmark" name of a train document that shares an n-gram with a val document
SHARE_TOLERANCE, TOTAL_TOLERANCE = 0.005, 0.01  # issue 15: shares within ±0.5 points, the total within ±1 %


def pack_recipe(
    recipe: Recipe,
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
    """Pack ``recipe`` into ``out`` (or ``out/train`` and ``out/val`` with a split); see the module docstring."""
    from packprep.pipeline.packing import pack

    if config.semantic_threshold:
        raise recipe.error("semantic dedup is not available with a recipe (repeated documents are meant)",
                           table="pack", key="semantic_threshold")
    out = Path(out)
    refuse_file(out)
    with removed_on_error(out), folder_lock(out):
        claim_folder(out, overwrite=overwrite, ours=lambda p: p.name in ("train", "val") or is_output_file(p), keep={WORK_DIRNAME})
        work = out / WORK_DIRNAME
        opened: dict[Path, DocStore] = {}  # sources that share a corpus and options share one store
        stores = [_source_store(s, recipe, tokenize_config, work, workers, engine, reporter, opened) for s in recipe.sources]
        pool = _pool(recipe, stores, work / "pool", reporter)
        sources = pool.column("sources")
        reason, dup_of, val, benchmark = _decide(recipe, pool, sources, config, dedup_config, engine, reporter)
        sep_len = 0 if config.strategy == "random" else 1
        available = np.flatnonzero((reason == 0) & ~val)
        mixture = _mixture(recipe, pool, sources, available, sep_len, config.seed)
        pack_config = dataclasses.replace(config, dedup=True, semantic_threshold=0.0 if config.semantic else None)
        splits = {"train": mixture.picks}
        if recipe.has_split:
            splits["val"] = np.flatnonzero(val & (reason == 0))
            if not len(splits["val"]):
                key = "val_fraction" if recipe.val_fraction else "val_documents"
                raise recipe.error(f"{key} puts no document in val", table="split", key=key)
        owners = [_benchmark_name(recipe, p) for p in _benchmark_files(recipe)] + [VAL_OWNER]
        for name, picks in splits.items():
            side = val if name == "val" else ~val
            dropped = np.flatnonzero(side & (reason != 0))
            store = _split_store(pool, work / name, picks, dropped, reason, dup_of, benchmark, dedup_config, recipe)
            target = out / name if recipe.has_split else out
            pack(store.path, target, config=pack_config, dedup_config=dedup_config,
                 embed_config=embed_config, format=format, labels=labels,
                 overwrite=overwrite, workers=workers, engine=engine, reporter=reporter)
            _record_provenance(target, store, recipe, owners, name, mixture if name == "train" else None)
    return out


def _decide(recipe: Recipe, pool: DocStore, sources: np.ndarray, config: PackConfig, dedup_config: DedupConfig,
            engine: Engine, reporter: Reporter) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pool document: reason uint8 (0 kept, dedup's, or decontaminated), dup_of int64, val bool,
    and benchmark int32 (the benchmark file, or len(files) for the val split, a decontaminated one matched; -1)."""
    if config.run_dedup:
        from packprep.pipeline.semantic import dedup

        found = dedup(pool, config=dedup_config, engine=engine, reporter=reporter)
        reason, dup_of = found.reason.copy(), found.dup_of.copy()
    else:
        reason, dup_of = np.zeros(pool.num_documents, np.uint8), np.full(pool.num_documents, -1, np.int64)
    val = np.zeros(pool.num_documents, dtype=bool)
    ids = list(pool.doc_ids)
    for s, source in enumerate(recipe.sources):  # by hash of (source, id), before any sampling
        docs = np.flatnonzero(sources == s)
        hashes = split_hashes(source.name, [ids[d] for d in docs])
        val[docs] = val_mask(hashes, fraction=recipe.val_fraction, documents=recipe.val_documents)
    benchmark = np.full(pool.num_documents, -1, np.int32)
    against_val = val & (reason == 0) if recipe.decontaminate_val else np.zeros_like(val)
    if recipe.benchmarks or against_val.any():
        candidates = np.flatnonzero((reason == 0) & ~val)
        benchmark[candidates] = _decontaminate(recipe, pool, candidates, np.flatnonzero(against_val), reporter)
        hit = benchmark >= 0
        reason[hit], dup_of[hit] = REASON_DECONTAMINATED, -1
    return reason, dup_of, val, benchmark


def _source_store(source: Any, recipe: Recipe, config: TokenizeConfig, work: Path, workers: int | None,
                  engine: Engine, reporter: Reporter, opened: dict[Path, DocStore]) -> DocStore:
    """The source's document store: the source itself when it is one, else tokenized into the cache
    (a folder named by the resolved path and the tokenize options)."""
    from packprep.pipeline.tokenizing import tokenize

    if is_store(source.path):
        folder = source.path
    else:
        config = dataclasses.replace(config, text_field=source.text_field or config.text_field,
                                     id_field=source.id_field or config.id_field)
        named = json.dumps({"path": str(source.path.resolve()), "config": as_dict(config)}, sort_keys=True)
        folder = (recipe.cache or work / "sources") / f"{source.path.name}-{hashlib.sha256(named.encode()).hexdigest()[:12]}"
    if folder not in opened:
        if folder == source.path:  # hashed if a pack tokenized it without: the pool copies every store's hashes
            opened[folder] = with_text_hash(DocStore.open(folder), Run.of(engine, reporter, workers))
        else:
            opened[folder] = tokenize(source.path, folder, config=config, workers=workers, engine=engine, reporter=reporter)
    return opened[folder]


def _pool(recipe: Recipe, stores: list[DocStore], folder: Path, reporter: Reporter) -> DocStore:
    """Every source's matching documents in one store, cached by the source stores' keys and prefixes."""
    fingerprints = {store.manifest["tokenizer"]["fingerprint"] for store in stores}
    if len(fingerprints) > 1:
        raise recipe.error("the sources were tokenized with different tokenizers; use one for all", table="source", key="path")
    parts = [{"name": s.name, "store": st.manifest["key"], "id_prefix": list(s.id_prefix)} for s, st in zip(recipe.sources, stores)]
    key = hashlib.sha256(json.dumps({"stage": "recipe-pool", "parts": parts}, sort_keys=True).encode()).hexdigest()
    if is_store(folder) and DocStore.open(folder).manifest.get("key") == key:
        return DocStore.open(folder)
    claim_folder(folder, overwrite=True, ours=lambda p: True)  # OUT/work/pool is this module's alone
    picked = []
    for s, (source, store) in enumerate(zip(recipe.sources, stores)):
        docs = np.arange(store.num_documents)
        if source.id_prefix:
            docs = np.array([d for d, i in enumerate(store.doc_ids) if i.startswith(source.id_prefix)], dtype=np.int64)
        if not len(docs):
            raise recipe.error(f"source {source.name!r} has no documents" + (" whose id starts with " + " or ".join(
                map(repr, source.id_prefix)) if source.id_prefix else ""), table="source", key="id_prefix" if source.id_prefix else "path", index=s)
        picked.append((store, docs))
    with DocStoreWriter(folder, dtype=stores[0].tokens.dtype) as writer:
        for store, docs in picked:
            copy_documents(writer, store, docs)
        writer.add_column("sources", np.repeat(np.arange(len(picked), dtype=np.int16), [len(d) for _, d in picked]))
        first = stores[0].manifest
        counts = {name: sum(st.manifest["counts"].get(name, 0) for st in stores) for name in first["counts"]}
        pool = writer.finish({"key": key, "config": first["config"], "tokenizer": first["tokenizer"],
                              "source": {"path": str(recipe.path), "fingerprint": recipe.sha256, "parts": parts}, "counts": counts})
    reporter.info(f"recipe: {pool.num_documents:,} documents from {len(stores)} sources")
    return pool


def _benchmark_files(recipe: Recipe) -> list[Path]:
    from packprep.corpus import list_corpus_files

    return [f for p in recipe.benchmarks for f in list_corpus_files(p)]


def _benchmark_name(recipe: Recipe, path: Path) -> str:
    try:
        return path.relative_to(recipe.path.resolve().parent).as_posix()
    except ValueError:
        return str(path)


def _decontaminate(recipe: Recipe, pool: DocStore, candidates: np.ndarray, val_docs: np.ndarray, reporter: Reporter) -> np.ndarray:
    """int32 [len(candidates)]: the benchmark (index into the files, then the val split) each candidate
    shares a ``recipe.ngram``-gram with, -1 for none."""
    from packprep.corpus import iter_documents
    from packprep.tokenizers import tokenizer_from_manifest

    n = recipe.ngram
    files = _benchmark_files(recipe)
    hashes, owners = [np.zeros(0, np.uint64)], [np.zeros(0, np.int32)]
    for i, path in enumerate(files):
        texts = [text for _, text in iter_documents(path)]
        found, _ = decon.ngram_hashes(texts, n=n)
        hashes.append(found)
        owners.append(np.full(len(found), i, np.int32))
    decode = tokenizer_from_manifest(pool.manifest["tokenizer"]).decode
    for batch in np.array_split(val_docs, max(1, len(val_docs) // 2048)):
        found, _ = decon.ngram_hashes([decode(pool.document(int(d))) for d in batch], n=n)
        hashes.append(found)
        owners.append(np.full(len(found), len(files), np.int32))
    index = decon.NgramIndex.build(np.concatenate(hashes), np.concatenate(owners))
    result = np.full(len(candidates), -1, np.int32)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    with reporter.track("decontaminate", total=len(candidates), unit="docs") as advance:
        for start in range(0, len(candidates), 2048):
            texts = [decode(pool.document(int(d))) for d in candidates[start : start + 2048]]
            if recipe.max_ngram_documents is None:
                result[start : start + len(texts)] = decon.contaminated(texts, index, n=n)
            else:  # every match is kept until all train documents are seen: how many share an n-gram decides
                text, position = decon.match_pairs(texts, index, n=n)
                pairs.append((text + start, position))
            advance(len(texts))
    if recipe.max_ngram_documents is not None and pairs:
        text, position = (np.concatenate(p) for p in zip(*pairs))
        result = decon.first_common_free_matches(text, position, index, num_texts=len(candidates),
                                                 max_texts=recipe.max_ngram_documents)
    if (result >= 0).any():
        reporter.info(f"decontaminate: dropped {int((result >= 0).sum())} train documents sharing a {n}-gram with a benchmark or val document")
    return result


def _mixture(recipe: Recipe, pool: DocStore, sources: np.ndarray, available: np.ndarray, sep_len: int, seed: int) -> Mixture:
    """The mixture over ``available`` pool documents; picks are pool indices. Unmeetable targets raise."""
    counts = np.bincount(sources[available], minlength=len(recipe.sources))
    for s, source in enumerate(recipe.sources):
        if not counts[s]:
            raise recipe.error(f"source {source.name!r} has no documents left for train (after the split, dedup and "
                               f"decontamination)", table="source", key="weight", index=s)
    weights = [s.weight for s in recipe.sources]
    lengths = pool.lengths()[available] + sep_len
    found = mix(lengths, sources[available], weights, tokens=recipe.tokens, seed=seed)
    found = dataclasses.replace(found, picks=available[found.picks])
    off = np.abs(found.shares - np.array(list(recipe.shares.values())))
    total_off = abs(int(found.tokens.sum()) - recipe.tokens) / recipe.tokens if recipe.tokens else 0.0
    if off.max() > SHARE_TOLERANCE or total_off > TOTAL_TOLERANCE:
        worst = int(np.argmax(off))
        got = f"source {recipe.sources[worst].name!r} gets {found.shares[worst]:.2%} for a weight of {list(recipe.shares.values())[worst]:.2%}"
        if recipe.tokens:
            raise recipe.error(f"tokens = {recipe.tokens:,} cannot be met with whole documents within ±0.5 % shares and "
                               f"±1 % total ({got}; {int(found.tokens.sum()):,} tokens)", table="mix", key="tokens")
        raise recipe.error(f"the weights cannot be met with whole documents within ±0.5 % ({got})", table="source",
                           key="weight", index=worst)
    return found


def _split_store(pool: DocStore, folder: Path, picks: np.ndarray, dropped: np.ndarray, reason: np.ndarray,
                 dup_of: np.ndarray, benchmark: np.ndarray, dedup_config: DedupConfig, recipe: Recipe) -> DocStore:
    """A store of ``picks`` (one document per copy) then ``dropped`` (pool indices), with the drops recorded
    as its dedup result; cached by the pool's key and the selection."""
    from packprep.pipeline.semantic import record_dedup

    docs = np.concatenate([picks, dropped]).astype(np.int64)
    key = hashlib.sha256(pool.manifest["key"].encode() + docs.tobytes() + reason[docs].tobytes() + benchmark[docs].tobytes()
                         + dup_of[docs].tobytes() + recipe.sha256.encode()).hexdigest()
    if not (is_store(folder) and DocStore.open(folder).manifest.get("key") == key):
        claim_folder(folder, overwrite=True, ours=lambda p: True)  # OUT/work/<split> is this module's alone
        with DocStoreWriter(folder, dtype=pool.tokens.dtype) as writer:
            copy_documents(writer, pool, docs)
            writer.add_column("sources", pool.column("sources")[docs])
            writer.add_column("benchmark", benchmark[docs])
            first = np.full(len(reason), -1, np.int64)
            first[docs[::-1]] = np.arange(len(docs))[::-1]  # each pool document's first place in this store
            writer.add_column("original", first[docs])
            manifest = {k: pool.manifest[k] for k in ("config", "tokenizer", "source", "counts")}
            writer.finish({**manifest, "key": key})
    store = DocStore.open(folder)
    # Where a dropped document's twin is packed here, point at its first copy; otherwise -1.
    first_copy = np.full(len(reason), -1, np.int64)
    first_copy[picks[::-1]] = np.arange(len(picks))[::-1]
    n = len(docs)
    store_reason = np.zeros(n, np.uint8)
    store_reason[len(picks):] = reason[dropped]
    store_dup_of = np.full(n, -1, np.int64)
    twin = dup_of[dropped]
    store_dup_of[len(picks):] = np.where(twin >= 0, first_copy[np.maximum(twin, 0)], -1)
    record_dedup(store, config=dedup_config, result=DedupResult(keep=store_reason == 0, reason=store_reason, dup_of=store_dup_of))
    return store


def _record_provenance(out: Path, store: DocStore, recipe: Recipe, owners: list[str], split: str, mixture: Mixture | None) -> None:
    """Write doc_sources.npy and doc_benchmark.npy beside the output and the recipe into its manifest."""
    save_npy(out / "doc_sources.npy", store.column("sources"))
    save_npy(out / "doc_benchmark.npy", store.column("benchmark"))
    manifest = load_json(out / npy.MANIFEST_NAME)
    sources = [{"name": s.name, "path": str(s.path), "weight": s.weight, "share": recipe.shares[s.name],
                "id_prefix": list(s.id_prefix)} for s in recipe.sources]
    if mixture is not None:
        for entry, *figures in zip(sources, *(getattr(mixture, f).tolist() for f in ("target", "tokens", "available", "documents", "unique", "passes"))):
            entry.update(dict(zip(("target_tokens", "tokens", "available_tokens", "documents", "unique_documents", "passes"), figures)))
            entry["repeats"] = entry["documents"] - entry["unique_documents"]
    manifest["recipe"] = {
        "path": str(recipe.path), "sha256": recipe.sha256, "text": recipe.text, "split": split, "tokens": recipe.tokens,
        "val_fraction": recipe.val_fraction, "val_documents": recipe.val_documents, "ngram": recipe.ngram,
        "sources": sources, "benchmarks": owners,
    }
    manifest["doc_files"].update({name: {"sha256": sha256_file(out / name)} for name in OUTPUT_FILES})
    save_json(out / npy.MANIFEST_NAME, manifest)
