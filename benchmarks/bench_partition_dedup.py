"""``bench_partition.py --semantic``: semantic dedup inside partitions against the global one, on planted near-duplicates.

    .venv/bin/python benchmarks/bench_partition.py --semantic [--source bench-data/kernel-docs.jsonl --source examples/corpus]
        [--docs 6000] [--copies 600] [--embedder static --embedder minilm] [--partition-docs 2000 --partition-docs 1000]

Per source (a ``.jsonl`` file or a folder of ``.jsonl``/``.jsonl.gz``; records with ``id`` and
``text``): a seeded sample of ``--docs`` documents, plus ``--copies`` lightly edited copies of
other sampled documents (one edit each, in turn: the sentences of the first 2,000 characters
shuffled, one word in 20 dropped, a line put before the text, a line put after it; a text of
one sentence gets two neighbouring words swapped instead, one of under 20 words one word
dropped), all shuffled
together, tokenized and embedded into a store of their own. With icp's default threshold for
the embedder (MiniLM's 0.97, the static embedder's calibration: ``pipeline.selection.semantic_threshold``)
it compares ``stages.dedup.semantic_duplicates`` over every document (what ``pack`` runs below
``--partition-docs``) with ``stages.partition.partition_duplicates`` inside each partition of
``stages.partition.partition_documents`` (what each partition task runs above it), and prints:

- global / partitioned: documents each drops; both: documents both drop;
- recall: both / global (the share of the global drops the partitioned run also makes);
  missed: global drops the partitioned run keeps; extra: partitioned drops the global run keeps;
- planted: the copies each drops (of ``--copies``), and planted pairs whose two documents fall
  into different partitions (a pair split so can only be dropped through a third document).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np

EDITS = ("shuffle", "drop", "prefix", "suffix")
PREFIXES = ("Archived copy, retrieved from the project mirror.", "Note: this page was imported from the old wiki.",
            "[draft] Please review before publishing.")
SUFFIXES = ("Last updated by the documentation team.", "Copyright the authors. All rights reserved.",
            "See the changelog for what changed in this release.")


def read_records(source: Path) -> list[dict]:
    files = [source] if source.is_file() else sorted(source.rglob("*.jsonl*"))
    records = []
    for path in files:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as fh:
            records += [{"id": str(r["id"]), "text": r["text"]} for r in map(json.loads, fh) if r.get("text", "").strip()]
    return records


def edited(text: str, edit: str, rng: random.Random) -> str:
    words = text.split(" ")
    if edit == "shuffle":  # the sentences of the head (what the embedder reads) in another order
        head, tail = text[:2000], text[2000:]
        sentences = re.split(r"(?<=[.!?])\s+", head)
        if len(sentences) < 2 and len(words) >= 2:  # one sentence (a short text): two neighbouring words swapped
            at = rng.randrange(len(words) - 1)
            words[at], words[at + 1] = words[at + 1], words[at]
            return " ".join(words)
        rng.shuffle(sentences)
        return " ".join(sentences) + tail
    if edit == "drop":
        if len(words) < 20:  # a short text: one word dropped, where it has three or more
            if len(words) >= 3:
                del words[rng.randrange(len(words))]
            return " ".join(words)
        return " ".join(w for i, w in enumerate(words) if i % 20 != rng.randrange(20))
    if edit == "prefix":
        return rng.choice(PREFIXES) + "\n\n" + text
    return text + "\n\n" + rng.choice(SUFFIXES)


def planted_corpus(source: Path, folder: Path, *, docs: int, copies: int, seed: int) -> dict[str, str]:
    """Write ``folder/docs.jsonl``; returns copy id -> original id."""
    rng = random.Random(seed)
    records = read_records(source)
    sample = rng.sample(records, min(docs, len(records)))
    originals = rng.sample(sample, min(copies, len(sample)))
    planted = {}
    out = list(sample)
    for i, record in enumerate(originals):
        copy_id = f"copy-{i}-of-{record['id']}"
        out.append({"id": copy_id, "text": edited(record["text"], EDITS[i % len(EDITS)], rng)})
        planted[copy_id] = record["id"]
    rng.shuffle(out)  # a copy may come before its original: the rule keeps whichever comes first
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    return planted


def compare(source: Path, work: Path, *, docs: int, copies: int, embedder: str, partition_docs: list[int], seed: int) -> None:
    from packprep.config import EmbedConfig, PackConfig
    from packprep.pipeline import tokenize
    from packprep.pipeline.selection import semantic_threshold
    from packprep.pipeline.semantic import embed
    from packprep.stages.dedup import semantic_duplicates
    from packprep.stages.partition import partition_documents, partition_duplicates
    from packprep.store import DocStore
    from packprep.store.embeddings import embed_manifest

    folder = work / f"semantic-{source.stem.split('.')[0]}-{docs}-{copies}"
    planted = planted_corpus(source, folder / "corpus", docs=docs, copies=copies, seed=seed)
    store = tokenize(folder / "corpus", folder / "store")
    config = EmbedConfig(model="static") if embedder == "static" else EmbedConfig()
    embeddings = embed(store, config=config)
    calibration = (embed_manifest(store.path, config.model) or {}).get("calibration")
    chosen = semantic_threshold(PackConfig(strategy="icp"), config.model, calibration)
    threshold = chosen["value"]
    ids = DocStore.open(store.path).doc_ids
    position = {ids[i]: i for i in range(store.num_documents)}
    pairs = np.array([[position[original], position[copy]] for copy, original in planted.items()])
    n = store.num_documents
    whole = set(np.flatnonzero(~semantic_duplicates(embeddings, threshold=threshold, k=10).keep).tolist())
    print(f"{source}: {n:,} documents ({len(planted)} planted copies), {embedder}, threshold {threshold:.4g} ({chosen['source']})")
    print(f"{'partitions':>12} {'global':>7} {'partitioned':>11} {'both':>6} {'recall':>7} {'missed':>7} {'extra':>6} "
          f"{'planted: global':>15} {'partitioned':>11} {'pairs split':>11}")
    copy_rows = set(pairs[:, 1].tolist()) | set(pairs[:, 0].tolist())
    for max_docs in partition_docs:
        plan = partition_documents(np.arange(n), embeddings, max_docs=max_docs, seed=seed)
        parted: set[int] = set()
        for p in range(len(plan)):
            parted |= set(partition_duplicates(plan.part(p), embeddings, threshold=threshold, k=10)[1][:, 0].tolist())
        part_of = np.empty(n, dtype=np.int64)
        part_of[plan.members] = np.repeat(np.arange(len(plan)), plan.sizes())
        split = int((part_of[pairs[:, 0]] != part_of[pairs[:, 1]]).sum())
        both = whole & parted
        recall = len(both) / len(whole) if whole else float("nan")
        planted_whole, planted_parted = len(whole & copy_rows), len(parted & copy_rows)  # one of each pair, whichever came later
        print(f"{len(plan):>4} x <={max_docs:<5,} {len(whole):>7} {len(parted):>11} {len(both):>6} {recall:>7.3f} "
              f"{len(whole - parted):>7} {len(parted - whole):>6} {planted_whole:>15} {planted_parted:>11} {split:>11}", flush=True)
