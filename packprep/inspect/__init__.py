"""Statistics, tables and plots over a packed output (``packprep inspect``).

All numbers come from the boundary arrays (no token matrix is read), so inspecting
a large output takes seconds; where the store has embeddings, the adjacency figures
add a k = 2 nearest-neighbour search over the packed documents (for the bound:
instant at thousands of documents, minutes at a million).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.reader import PackedDataset

_HIST_BINS = 20
_SEGMENT_COLOURS = ("cyan", "yellow", "green", "magenta", "blue", "red")


def open_output(path: Path) -> PackedDataset:
    try:
        return PackedDataset(path)
    except (FileNotFoundError, ValueError) as err:
        raise PackprepError(str(err)) from None


def compute_stats(ds: PackedDataset) -> dict[str, Any]:
    """Every figure ``inspect`` shows, as plain Python values (JSON-ready)."""
    manifest = ds.manifest
    seg_length, seg_doc, seg_per_row, row_fill, shard_rows = _concat_segments(ds)
    num_rows, seq_len = len(ds), ds.seq_len
    num_tokens = int(seg_length.sum())
    capacity = num_rows * seq_len
    pieces = np.bincount(seg_doc) if len(seg_doc) else np.zeros(0, np.int64)
    packed_docs = np.flatnonzero(pieces)
    doc_lengths = np.load(ds.path / "doc_lengths.npy", mmap_mode="r")[packed_docs]
    store_counts = manifest.get("store_counts", {})
    return {
        "num_sequences": num_rows,
        "seq_len": seq_len,
        "num_tokens": num_tokens,
        "pad_tokens": capacity - num_tokens,
        "fill_ratio": num_tokens / capacity if capacity else 0.0,
        "padded_sequences": int((row_fill < seq_len).sum()),
        "num_documents": int(len(packed_docs)),
        "num_segments": int(len(seg_length)),
        "split_documents": int((pieces > 1).sum()),
        "segments_per_sequence": _summary(seg_per_row),
        "strategy": manifest["strategy"],
        "packing": manifest["packing"],
        "seed": manifest["seed"],
        "tokenizer": manifest["tokenizer"]["name"],
        "dtype": manifest["dtype"],
        "dropped_empty_documents": int(store_counts.get("dropped_empty", 0)),
        "skipped_records": int(store_counts.get("skipped_records", 0)),
        "dedup": bool(manifest.get("dedup_config") or manifest.get("embed_config")),
        "dropped_documents": manifest.get("dropped", {}),
        "semantic_threshold": manifest.get("semantic_threshold"),  # value, source, embedder (None: no semantic dedup)
        **_adjacency(ds, seg_doc, packed_docs),
        **_sources(ds, seg_length, seg_doc),
        "document_length": _summary(doc_lengths),
        "segment_length": _summary(seg_length),
        "document_length_histogram": _histogram(doc_lengths),
        "segment_length_histogram": _histogram(seg_length),
        "shards": [
            {"name": s["name"], "rows": rows, "bytes": _shard_bytes(ds.path, s)}
            for s, rows in zip(manifest["shards"], shard_rows)
        ],
    }


def _adjacency(ds: PackedDataset, seg_doc: np.ndarray, packed_docs: np.ndarray) -> dict[str, Any]:
    """How related the documents that share a row are, next to a random order of the same documents.

    - ``adjacent_cosine``: mean cosine of documents side by side in a row (``adjacent_pairs`` pairs);
    - ``adjacent_cosine_bound``: the most any order could reach (each document's two best
      neighbour similarities, summed, halved, per adjacent pair: path_search.path_bound),
      and ``adjacent_cosine_bound_ratio`` = adjacent_cosine / bound;
    - ``row_pair_cosine``: mean cosine over all pairs of documents in the same row (``row_pairs``);
    - ``*_random``: the same figures for the same documents in a random order (the
      side-by-side one over one shuffled sequence, the in-row one over the same rows
      filled with shuffled documents).

    Needs the embeddings stored beside the output's document store (any semantic
    strategy leaves them there); the keys are absent otherwise.
    """
    from packprep.store.embeddings import load_embeddings
    from packprep.stages.order import adjacent_cosine, knn_graph, pair_cosines
    from packprep.stages.path_search import path_bound

    store_path = ds.manifest.get("source", {}).get("store")
    embedder = (ds.manifest.get("embed_config") or {}).get("model")  # the embeddings this output was ordered by
    embeddings = load_embeddings(Path(store_path), *([embedder] if embedder else [])) if store_path else None
    if embeddings is None or len(packed_docs) < 2:
        return {}
    row_starts = _row_starts(ds)
    same_row = np.ones(len(seg_doc), dtype=bool)
    same_row[row_starts] = False  # a row's first segment has no left neighbour in the row
    left, right = seg_doc[np.flatnonzero(same_row) - 1], seg_doc[same_row]
    within_rows = float(pair_cosines(embeddings, left, right).mean()) if len(left) else float("nan")
    # A stream of its own: the eos/random packing itself uses default_rng(seed), and the
    # baseline must not be that very permutation.
    rng = np.random.default_rng([int(ds.manifest["seed"]), 2])
    shuffled = rng.permutation(packed_docs)
    random_adjacent = float(adjacent_cosine(shuffled, embeddings))
    bound = path_bound(knn_graph(np.asarray(embeddings[packed_docs], dtype=np.float32), k=2)[1])
    row_of = np.repeat(np.arange(len(row_starts)), np.diff(np.append(row_starts, len(seg_doc))))
    pair_sum, pairs = _row_pair_cosine(embeddings, seg_doc, row_of)
    # the random rows: the same slots, filled with the documents in a random order
    pair_sum_random, _ = _row_pair_cosine(embeddings, seg_doc[rng.permutation(len(seg_doc))], row_of)
    return {
        "adjacent_pairs": int(len(left)),
        "adjacent_cosine": within_rows,
        "adjacent_cosine_random": random_adjacent,
        "adjacent_cosine_bound": bound,
        "adjacent_cosine_bound_ratio": within_rows / bound,
        "adjacent_cosine_random_bound_ratio": random_adjacent / bound,
        "row_pairs": pairs,
        "row_pair_cosine": pair_sum / pairs if pairs else float("nan"),
        "row_pair_cosine_random": pair_sum_random / pairs if pairs else float("nan"),
    }


def _sources(ds: PackedDataset, seg_length: np.ndarray, seg_doc: np.ndarray) -> dict[str, Any]:
    """Per source of a recipe's output (``doc_sources.npy``): documents and tokens packed (copies
    counted), share of the packed tokens, repeats (copies beyond the first, from the mixture) and
    documents dropped by reason. Absent for an output not packed from a recipe."""
    from packprep.stages.dedup import REASON_NAMES

    recipe = ds.manifest.get("recipe")
    if recipe is None:
        return {}
    codes = np.load(ds.path / "doc_sources.npy")
    reason = np.load(ds.path / "doc_dropped.npy")
    num = len(recipe["sources"])
    documents = np.bincount(codes[reason == 0], minlength=num)
    tokens = np.bincount(codes[seg_doc], weights=seg_length, minlength=num).astype(np.int64) if len(seg_doc) else np.zeros(num, np.int64)
    total = int(tokens.sum())
    sources = {}
    for s, entry in enumerate(recipe["sources"]):
        mine = reason[codes == s]
        dropped = {REASON_NAMES[int(r)]: int(n) for r, n in zip(*np.unique(mine[mine != 0], return_counts=True))}
        sources[entry["name"]] = {
            "documents": int(documents[s]), "tokens": int(tokens[s]), "share": tokens[s] / total if total else 0.0,
            "weight_share": entry["share"], "repeats": int(entry.get("repeats", 0)), "dropped": dropped,
        }
    return {"recipe": {"path": recipe["path"], "sha256": recipe["sha256"], "split": recipe["split"]}, "sources": sources}


def _row_pair_cosine(embeddings: np.ndarray, seg_doc: np.ndarray, row_of: np.ndarray, chunk: int = 65536) -> tuple[float, int]:
    """Sum of cosines over all pairs of distinct documents sharing a row, and the number of pairs.

    A row's pairs sum to (|sum of its vectors|^2 - sum of their squared norms) / 2, so no
    pair is formed; rows are taken in chunks of about ``chunk`` segments.
    """
    keep = np.ones(len(seg_doc), dtype=bool)
    order = np.lexsort((seg_doc, row_of))
    dup = (np.diff(row_of[order]) == 0) & (np.diff(seg_doc[order]) == 0)
    keep[order[1:][dup]] = False  # a document counts once per row
    docs, rows = seg_doc[keep], row_of[keep]
    counts = np.bincount(rows, minlength=int(row_of.max()) + 1 if len(row_of) else 0)
    pairs = int((counts * (counts - 1) // 2).sum())
    total = 0.0
    start = 0
    while start < len(docs):
        stop = min(len(docs), start + chunk)
        while stop < len(docs) and rows[stop] == rows[stop - 1]:
            stop += 1  # whole rows only
        vectors = np.asarray(embeddings[docs[start:stop]], dtype=np.float64)
        local = rows[start:stop] - rows[start]
        sums = np.zeros((int(local[-1]) + 1, vectors.shape[1]))
        np.add.at(sums, local, vectors)
        total += float((np.einsum("ij,ij->", sums, sums) - np.einsum("ij,ij->", vectors, vectors)) / 2)
        start = stop
    return total, pairs


def _row_starts(ds: PackedDataset) -> np.ndarray:
    """Global index of each row's first segment, over all shards."""
    starts, base = [], 0
    for k in range(len(ds.manifest["shards"])):
        row_ptr = np.asarray(ds.shard(k).row_ptr)
        starts.append(row_ptr[:-1][np.diff(row_ptr) > 0] + base)
        base += int(row_ptr[-1])
    return np.concatenate(starts) if starts else np.zeros(0, np.int64)


def _concat_segments(ds: PackedDataset) -> tuple[np.ndarray, ...]:
    lengths, docs, per_row, fills, shard_rows = [], [], [], [], []
    for k in range(len(ds.manifest["shards"])):
        shard = ds.shard(k)
        counts = np.diff(shard.row_ptr)
        seg_length = np.asarray(shard.seg_length, dtype=np.int64)
        fill = np.add.reduceat(seg_length, shard.row_ptr[:-1]) if len(seg_length) else np.zeros(len(counts), np.int64)
        fill[counts == 0] = 0  # reduceat repeats the next value for empty ranges
        lengths.append(seg_length)
        docs.append(np.asarray(shard.seg_doc))
        per_row.append(counts)
        fills.append(fill)
        shard_rows.append(len(counts))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(lengths), cat(docs), cat(per_row), cat(fills), shard_rows


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    values = np.asarray(values)
    return {"min": int(values.min()), "mean": float(values.mean()), "median": float(np.median(values)), "max": int(values.max())}


def _histogram(values: np.ndarray) -> dict[str, list]:
    """Log-spaced bins: lengths span orders of magnitude."""
    values = np.asarray(values)
    if len(values) == 0:
        return {"edges": [], "counts": []}
    low = max(1.0, float(values.min()))
    high = max(low + 1, float(values.max()) + 1)
    edges = np.unique(np.geomspace(low, high, _HIST_BINS + 1).round().astype(np.int64))
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _shard_bytes(path: Path, shard: dict[str, Any]) -> int:
    return sum((path / f["path"]).stat().st_size for f in shard["files"].values())


def stats_json(stats: dict[str, Any]) -> str:
    return json.dumps(stats, indent=2)


def print_stats(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overview = Table(title="packed output", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value", justify="right")
    rows = [
        ("strategy / packing", f"{stats['strategy']} / {stats['packing']} (seed {stats['seed']})"),
        ("tokenizer", f"{stats['tokenizer']} ({stats['dtype']})"),
        ("sequences x seq_len", f"{stats['num_sequences']:,} x {stats['seq_len']:,}"),
        ("tokens (non-pad)", f"{stats['num_tokens']:,}"),
        ("padding tokens", f"{stats['pad_tokens']:,} in {stats['padded_sequences']:,} sequences"),
        ("fill ratio", f"{stats['fill_ratio']:.4f}"),
        ("documents", f"{stats['num_documents']:,}"),
        ("segments", f"{stats['num_segments']:,}"),
        ("split documents", f"{stats['split_documents']:,}"),
        ("segments per sequence", _fmt_summary(stats["segments_per_sequence"])),
        ("document length", _fmt_summary(stats["document_length"])),
        ("segment length", _fmt_summary(stats["segment_length"])),
        ("empty documents dropped", f"{stats['dropped_empty_documents']:,}"),
        ("bad records skipped", f"{stats['skipped_records']:,}"),
    ]
    dropped = stats["dropped_documents"]
    if stats["dedup"]:
        rows.append(("duplicates dropped", ", ".join(f"{n:,} {why}" for why, n in dropped.items())))
        if (threshold := stats["semantic_threshold"]) and threshold["value"]:
            from packprep.inspect.dropped import threshold_label

            rows.append(("semantic threshold", threshold_label(threshold)))
    else:
        rows.append(("duplicates dropped", "dedup off"))
    if "adjacent_cosine" in stats:
        rows.append(("adjacent cosine (in rows)", f"{stats['adjacent_cosine']:.4f} over {stats['adjacent_pairs']:,} pairs"))
        rows.append(("adjacent cosine (random order)", f"{stats['adjacent_cosine_random']:.4f}"))
        rows.append((
            "adjacent cosine bound / ratio",
            f"{stats['adjacent_cosine_bound']:.4f} / {stats['adjacent_cosine_bound_ratio']:.3f} "
            f"(random {stats['adjacent_cosine_random_bound_ratio']:.3f})",
        ))
        rows.append((
            "in-row pair cosine",
            f"{stats['row_pair_cosine']:.4f} over {stats['row_pairs']:,} pairs (random {stats['row_pair_cosine_random']:.4f})",
        ))
    for what, value in rows:
        overview.add_row(what, value)
    console.print(overview)
    for key, title in (("document_length_histogram", "document length"), ("segment_length_histogram", "segment length")):
        console.print(_histogram_table(stats[key], title))
    if "sources" in stats:
        console.print(_sources_table(stats))
    shards = Table(title="shards")
    for col in ("shard", "rows", "MB"):
        shards.add_column(col, justify="right")
    for shard in stats["shards"]:
        shards.add_row(shard["name"], f"{shard['rows']:,}", f"{shard['bytes'] / 1e6:,.1f}")
    console.print(shards)


def _sources_table(stats: dict[str, Any]):
    from rich.table import Table

    recipe = stats["recipe"]
    table = Table(title=f"sources ({recipe['split']} split of {recipe['path']}, sha256 {recipe['sha256'][:12]})")
    for col in ("source", "documents", "tokens", "share", "weight", "repeats", "dropped"):
        table.add_column(col, justify="left" if col in ("source", "dropped") else "right")
    for name, entry in stats["sources"].items():
        dropped = ", ".join(f"{n:,} {why}" for why, n in entry["dropped"].items()) or "-"
        table.add_row(name, f"{entry['documents']:,}", f"{entry['tokens']:,}", f"{entry['share']:.2%}",
                      f"{entry['weight_share']:.2%}", f"{entry['repeats']:,}", dropped)
    return table


def _fmt_summary(summary: dict[str, float]) -> str:
    return f"min {summary['min']:,}  mean {summary['mean']:,.1f}  median {summary['median']:,.0f}  max {summary['max']:,}"


def _histogram_table(hist: dict[str, list], title: str):
    from rich.table import Table

    table = Table(title=f"{title} histogram (tokens)")
    table.add_column("range", justify="right")
    table.add_column("count", justify="right")
    table.add_column("")
    peak = max(hist["counts"], default=0) or 1
    for lo, hi, count in zip(hist["edges"][:-1], hist["edges"][1:], hist["counts"]):
        table.add_row(f"{lo:,}–{hi - 1:,}", f"{count:,}", "█" * round(30 * count / peak))
    return table


def plot_histograms(stats: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(
        axes, ("document_length_histogram", "segment_length_histogram"), ("document length", "segment length")
    ):
        hist = stats[key]
        if hist["edges"]:
            ax.stairs(hist["counts"], hist["edges"], fill=True)
            ax.set_xscale("log")
        ax.set_title(f"{title} (tokens)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("count")
    fig.suptitle(
        f"{stats['strategy']}/{stats['packing']}: {stats['num_sequences']:,} x {stats['seq_len']} "
        f"fill {stats['fill_ratio']:.3f}, {stats['split_documents']:,} split documents"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_row(ds: PackedDataset, index: int) -> None:
    """A row decoded, each document piece in its own colour with its id and offset."""
    from rich.console import Console
    from rich.text import Text

    from packprep.tokenizers import tokenizer_from_manifest

    if not -len(ds) <= index < len(ds):
        raise PackprepError(f"--row {index} is out of range: the output has {len(ds)} rows")
    tokenizer = tokenizer_from_manifest(ds.manifest["tokenizer"])
    item = ds[index]
    console = Console()
    text = Text()
    for k, (start, end) in enumerate(zip(item["cu_seqlens"][:-1], item["cu_seqlens"][1:])):
        doc = int(item["doc_index"][k])
        colour = _SEGMENT_COLOURS[k % len(_SEGMENT_COLOURS)]
        label = "padding" if doc < 0 else f"{ds.doc_ids[doc]} @ {int(item['doc_offset'][k])}"
        text.append(f"[{k}: {label}, {end - start} tokens]", style=f"bold reverse {colour}")
        if doc >= 0:
            text.append(tokenizer.decode(item["input_ids"][start:end]), style=colour)
    console.print(f"row {index} of {len(ds)}", style="bold")
    console.print(text)
