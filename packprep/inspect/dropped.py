"""The documents dedup dropped from a packed output, each beside the kept twin (``packprep inspect OUT --dropped``).

The output holds the decisions (``doc_dropped.npy``, ``doc_dup_of.npy``, ``doc_ids``);
the texts and embeddings live in the document store its manifest names
(``source.store``, ``OUT/work`` for a raw corpus), so that store must still be there.
Two similarities are shown: the cosine of the store's embeddings (semantic outputs, or
any store that was embedded), and for exact and near pairs the exact Jaccard of the two
texts' normalised word shingles (``stages.dedup.text_jaccard``): what MinHash estimated
when it compared them against ``--minhash-threshold``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.reader import PackedDataset
from packprep.stages.dedup import DEFAULT_SHINGLE, REASON_NAMES, REASON_SEMANTIC, text_jaccard
from packprep.stages.order import pair_cosines

DEFAULT_LIMIT = 20
_PREVIEW_TOKENS = 64
_PREVIEW_CHARS = 100


def dropped_pairs(ds: PackedDataset, *, limit: int | None = DEFAULT_LIMIT) -> dict[str, Any]:
    """Every dropped document with its kept twin, reason and cosine, the closest calls first.

    Semantic drops come first, lowest cosine first (the pairs nearest the threshold, the
    ones worth reading), then near and exact ones. ``limit`` (None or 0: all) caps the
    listed pairs; ``not_shown`` counts the rest.
    """
    reason = np.load(ds.path / "doc_dropped.npy")
    dup_of = np.load(ds.path / "doc_dup_of.npy")
    dropped = np.flatnonzero(reason)
    store = _store_of(ds)
    embeddings, embedder = _embeddings_of(store, len(reason), (ds.manifest.get("embed_config") or {}).get("model"))
    twin = dup_of[dropped]  # -1: no twin in this output (a recipe's decontaminated document, or one whose twin is elsewhere)
    cosine = pair_cosines(embeddings, dropped, np.maximum(twin, 0)) if embeddings is not None else None
    if cosine is not None:
        cosine = np.where(twin >= 0, cosine, np.nan)
    # Semantic (3) before near (2) before exact (1); inside a reason, the lowest cosine first.
    keys = (dropped,) if cosine is None else (dropped, cosine)
    order = np.lexsort((*keys, -reason[dropped].astype(np.int64))) if len(dropped) else np.zeros(0, np.int64)
    shown = order if not limit else order[:limit]
    decode = _decoder(store)
    shingle = (ds.manifest.get("dedup_config") or {}).get("shingle", DEFAULT_SHINGLE)
    pairs = [
        {
            "reason": REASON_NAMES[int(reason[dropped[k]])],
            "cosine": None if cosine is None or twin[k] < 0 else round(float(cosine[k]), 4),
            "jaccard": _jaccard(store, decode, int(dropped[k]), int(twin[k]), shingle)
            if reason[dropped[k]] != REASON_SEMANTIC and twin[k] >= 0 else None,
            "dropped": _document(ds, store, decode, int(dropped[k])),
            "kept": _document(ds, store, decode, int(twin[k])) if twin[k] >= 0 else _elsewhere(ds, int(dropped[k])),
        }
        for k in shown
    ]
    return {
        "semantic_threshold": ds.manifest.get("semantic_threshold"),
        "embedder": embedder,
        "total": int(len(dropped)),
        "not_shown": int(len(dropped) - len(shown)),
        "pairs": pairs,
    }


def _store_of(ds: PackedDataset) -> Any:
    from packprep.store import DocStore

    source = ds.manifest.get("source", {})
    path = source.get("store")
    if not path or not (Path(path) / "store.json").is_file():
        raise PackprepError(
            f"the document store this output was packed from ({path}) is gone; --dropped reads the texts from it",
            path=ds.path,
        )
    store = DocStore.open(path)
    if store.manifest.get("key") != source.get("store_key"):
        raise PackprepError(
            f"the document store at {path} was rebuilt after this output was packed; its texts no longer match", path=ds.path
        )
    return store


def _embeddings_of(store: Any, n: int, model: str | None) -> tuple[np.ndarray | None, str | None]:
    """The embeddings the output was ordered by (``model``: its embed config's; None: MiniLM's), and their model name."""
    from packprep.config import EmbedConfig
    from packprep.store.embeddings import embed_manifest, load_embeddings

    model = model or EmbedConfig().model
    embeddings = load_embeddings(store.path, model)
    if embeddings is None or len(embeddings) != n:
        return None, None
    return embeddings, (embed_manifest(store.path, model) or {}).get("model")


def _decoder(store: Any) -> Any:
    from packprep.tokenizers import tokenizer_from_manifest

    return tokenizer_from_manifest(store.manifest["tokenizer"]).decode


def _jaccard(store: Any, decode: Any, left: int, right: int, shingle: int) -> float:
    texts = [decode(store.tokens[store.offsets[d] : store.offsets[d + 1]].tolist()) for d in (left, right)]
    return round(text_jaccard(*texts, shingle=shingle), 4)


def _document(ds: PackedDataset, store: Any, decode: Any, index: int) -> dict[str, Any]:
    start = int(store.offsets[index])
    end = min(int(store.offsets[index + 1]), start + _PREVIEW_TOKENS)
    text = " ".join(decode(store.tokens[start:end].tolist()).split())
    if len(text) > _PREVIEW_CHARS or end < int(store.offsets[index + 1]):
        text = text[:_PREVIEW_CHARS].rstrip() + "…"
    return {"index": index, "id": ds.doc_ids[index], "text": text}


def _elsewhere(ds: PackedDataset, index: int) -> dict[str, Any]:
    """The "kept" side of a drop whose twin is not in this output: the benchmark file a recipe's
    decontaminated document matched (``doc_benchmark.npy``), else a note."""
    benchmarks = (ds.manifest.get("recipe") or {}).get("benchmarks") or []
    path = ds.path / "doc_benchmark.npy"
    owner = int(np.load(path, mmap_mode="r")[index]) if path.is_file() else -1
    if 0 <= owner < len(benchmarks):
        return {"index": -1, "id": benchmarks[owner], "text": "(shares an n-gram with the dropped document)"}
    return {"index": -1, "id": "-", "text": "(its twin is not in this output)"}


def threshold_label(threshold: dict[str, Any]) -> str:
    """A manifest's ``semantic_threshold`` for people: its value to 6 digits (at 4, a calibrated
    0.999999 read as 1, a cut nothing can pass), how it was chosen, and where it was applied."""
    within = ", within partitions" if threshold.get("scope") == "partitions" else ""
    return f"{threshold['value']:.6g} ({threshold['source']}, {threshold['embedder']}{within})"


def print_dropped(listing: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    threshold = listing["semantic_threshold"]
    title = f"{listing['total']:,} dropped documents"
    if threshold and threshold.get("value"):
        title += f"; semantic threshold {threshold_label(threshold)}"
    table = Table(title=title, caption="semantic first, lowest cosine first: the closest calls", show_lines=True)
    table.add_column("reason")
    table.add_column("cosine" if not listing["embedder"] else f"cosine ({listing['embedder']})", justify="right")
    table.add_column("jaccard", justify="right")
    table.add_column("dropped: id, text", overflow="fold")
    table.add_column("kept twin: id, text", overflow="fold")
    for pair in listing["pairs"]:
        cosine = "-" if pair["cosine"] is None else f"{pair['cosine']:.4f}"
        jaccard = "-" if pair["jaccard"] is None else f"{pair['jaccard']:.4f}"
        both = (pair["dropped"], pair["kept"])
        table.add_row(pair["reason"], cosine, jaccard, *(f"[bold]{_escape(d['id'])}[/bold]: {_escape(d['text'])}" for d in both))
    console.print(table)
    if listing["not_shown"]:
        console.print(f"{listing['not_shown']:,} more not shown (--limit 0 lists all)")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
